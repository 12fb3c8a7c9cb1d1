//! The NBD server against hostile and raw clients: seeded random malformed
//! handshakes and requests from many concurrent TCP clients (truncated
//! messages, wrong magics, huge lengths, random option codes and commands,
//! requests before the handshake ends, garbage after `NBD_CMD_DISC`), after
//! which the server task must still run, nothing may have panicked, and a
//! well-behaved client must still write and read. Also the protocol's error
//! replies, pipelining beyond the in-flight bound, old-style
//! `NBD_OPT_EXPORT_NAME` and concurrent sub-block writes, with a raw client.
//!
//! Seed: `METRO_NBD_FUZZ_SEED` (decimal) or a fixed default; printed.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use metro_node::nbd::proto::*;
use metro_node::nbd::{MemBackend, NbdServer, NbdStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const MIB: u64 = 1024 * 1024;
const EXPORT: &str = "vol";
const EXPORT_SIZE: u64 = 16 * MIB;
const CLIENTS: u64 = 48;
const ROUNDS: u64 = 24;
const DEFAULT_SEED: u64 = 0x6e62_6466_757a_7a01;
/// How long a hostile client waits for anything from the server.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

static PANICS: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();

/// The name of the storm's runtime threads: only panics on them count
/// (the other tests of this binary share the process under `cargo test`).
const STORM_THREAD: &str = "nbd-fuzz-storm";

/// Counts panics on the storm's threads (server tasks included) on top of
/// the default report.
fn count_panics() {
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(STORM_THREAD) {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

/// splitmix64: small, seeded, good enough for fuzzing.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// `min + below(spread)` random bytes.
    fn junk(&mut self, min: usize, spread: u64) -> Vec<u8> {
        let n = min + self.below(spread) as usize;
        self.bytes(n)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

async fn start() -> (std::net::SocketAddr, Arc<MemBackend>, JoinHandle<()>) {
    let (addr, backend, server, _) = start_with_stats().await;
    (addr, backend, server)
}

async fn start_with_stats() -> (
    std::net::SocketAddr,
    Arc<MemBackend>,
    JoinHandle<()>,
    Arc<NbdStats>,
) {
    count_panics();
    let backend = Arc::new(MemBackend::new());
    backend.add_export(EXPORT, EXPORT_SIZE);
    let server = NbdServer::bind("127.0.0.1:0".parse().unwrap(), backend.clone())
        .await
        .expect("bind");
    let addr = server.local_addr().unwrap();
    let stats = server.stats();
    (addr, backend, tokio::spawn(server.serve()), stats)
}

// ---- a minimal well-behaved client ----

async fn greet(s: &mut TcpStream, client_flags: u32) -> io::Result<()> {
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).await?;
    assert_eq!(
        u64::from_be_bytes(greeting[0..8].try_into().unwrap()),
        NBD_MAGIC
    );
    assert_eq!(
        u64::from_be_bytes(greeting[8..16].try_into().unwrap()),
        IHAVEOPT
    );
    s.write_all(&client_flags.to_be_bytes()).await
}

async fn send_option(s: &mut TcpStream, option: u32, data: &[u8]) -> io::Result<()> {
    let mut msg = IHAVEOPT.to_be_bytes().to_vec();
    msg.extend_from_slice(&option.to_be_bytes());
    msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
    msg.extend_from_slice(data);
    s.write_all(&msg).await
}

/// (option, reply type, data)
async fn read_option_reply(s: &mut TcpStream) -> io::Result<(u32, u32, Vec<u8>)> {
    assert_eq!(s.read_u64().await?, OPTION_REPLY_MAGIC);
    let option = s.read_u32().await?;
    let kind = s.read_u32().await?;
    let mut data = vec![0u8; s.read_u32().await? as usize];
    s.read_exact(&mut data).await?;
    Ok((option, kind, data))
}

fn info_request(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut data = (name.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        data.extend_from_slice(&i.to_be_bytes());
    }
    data
}

/// Connects and selects `name` with `NBD_OPT_GO`; the export size.
async fn connect_go(addr: std::net::SocketAddr, name: &str) -> io::Result<(TcpStream, u64)> {
    let mut s = TcpStream::connect(addr).await?;
    greet(&mut s, CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES).await?;
    send_option(&mut s, OPT_GO, &info_request(name, &[INFO_BLOCK_SIZE])).await?;
    let mut size = None;
    loop {
        let (option, kind, data) = read_option_reply(&mut s).await?;
        assert_eq!(option, OPT_GO);
        match kind {
            REP_ACK => break,
            REP_INFO if data[0..2] == INFO_EXPORT.to_be_bytes() => {
                size = Some(u64::from_be_bytes(data[2..10].try_into().unwrap()));
                let flags = u16::from_be_bytes(data[10..12].try_into().unwrap());
                assert_eq!(flags, TRANSMISSION_FLAGS);
            }
            REP_INFO => {}
            other => return Err(io::Error::other(format!("GO refused: {other:#x}"))),
        }
    }
    Ok((s, size.expect("NBD_INFO_EXPORT")))
}

async fn send_request(
    s: &mut TcpStream,
    kind: u16,
    flags: u16,
    cookie: u64,
    offset: u64,
    length: u32,
    payload: &[u8],
) -> io::Result<()> {
    let header = RequestHeader {
        flags,
        kind,
        cookie,
        offset,
        length,
    };
    let mut msg = header.encode().to_vec();
    msg.extend_from_slice(payload);
    s.write_all(&msg).await
}

/// Reads one simple reply: (error, cookie).
async fn read_reply(s: &mut TcpStream) -> io::Result<(u32, u64)> {
    let mut header = [0u8; SIMPLE_REPLY_LEN];
    s.read_exact(&mut header).await?;
    assert_eq!(
        u32::from_be_bytes(header[0..4].try_into().unwrap()),
        SIMPLE_REPLY_MAGIC
    );
    let error = u32::from_be_bytes(header[4..8].try_into().unwrap());
    Ok((error, u64::from_be_bytes(header[8..16].try_into().unwrap())))
}

/// One request and its reply; (error, read data).
async fn call(
    s: &mut TcpStream,
    kind: u16,
    offset: u64,
    length: u32,
    payload: &[u8],
) -> io::Result<(u32, Vec<u8>)> {
    send_request(s, kind, 0, 42, offset, length, payload).await?;
    let (error, cookie) = read_reply(s).await?;
    assert_eq!(cookie, 42);
    let mut data = Vec::new();
    if kind == CMD_READ && error == 0 {
        data = vec![0u8; length as usize];
        s.read_exact(&mut data).await?;
    }
    Ok((error, data))
}

/// A well-behaved client writes and reads back (unaligned on purpose).
async fn well_behaved_round_trip(addr: std::net::SocketAddr, seed: u64) {
    let (mut s, size) = connect_go(addr, EXPORT).await.expect("GO");
    assert_eq!(size, EXPORT_SIZE);
    let data = Rng(seed).bytes(70_000);
    let (err, _) = call(&mut s, CMD_WRITE, 4096 + 17, 70_000, &data)
        .await
        .unwrap();
    assert_eq!(err, 0);
    let (err, back) = call(&mut s, CMD_READ, 4096 + 17, 70_000, &[])
        .await
        .unwrap();
    assert_eq!(err, 0);
    assert!(back == data, "read-back differs");
    assert_eq!(call(&mut s, CMD_FLUSH, 0, 0, &[]).await.unwrap().0, 0);
    send_request(&mut s, CMD_DISC, 0, 1, 0, 0, &[])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "no reply to DISC");
}

// ---- hostile clients ----

/// A random valid-or-invalid request header (and payload for writes).
fn random_request(rng: &mut Rng, cookie: u64) -> (RequestHeader, Vec<u8>) {
    let kinds = [
        CMD_READ,
        CMD_WRITE,
        CMD_FLUSH,
        CMD_TRIM,
        CMD_WRITE_ZEROES,
        5,
        7,
        9,
        0x7fff,
    ];
    let kind = kinds[rng.below(kinds.len() as u64) as usize];
    let flags = if rng.below(4) == 0 {
        rng.next() as u16
    } else {
        0
    };
    let offset = match rng.below(4) {
        0 => rng.next(),
        1 => EXPORT_SIZE - rng.below(8192),
        _ => rng.below(EXPORT_SIZE),
    };
    let length = match rng.below(6) {
        0 => 0,
        1 => (MAX_PAYLOAD_BYTES_FOR_TESTS + 1 + rng.below(1000)) as u32,
        _ => rng.below(65_536) as u32 + 1,
    };
    let length = if kind == CMD_WRITE {
        length.min(65_536)
    } else {
        length
    };
    let payload = if kind == CMD_WRITE {
        rng.bytes(length as usize)
    } else {
        Vec::new()
    };
    (
        RequestHeader {
            flags,
            kind,
            cookie,
            offset,
            length,
        },
        payload,
    )
}

const MAX_PAYLOAD_BYTES_FOR_TESTS: u64 = metro_node::limits::NBD_PAYLOAD_BYTES_MAX as u64;

/// Random requests, pipelined, then DISC and garbage; every reply must
/// match a request and carry a protocol error value.
async fn random_session(addr: std::net::SocketAddr, rng: &mut Rng) -> io::Result<()> {
    let (mut s, _) = connect_go(addr, EXPORT).await?;
    let mut sent = BTreeMap::new();
    let n = rng.below(40) + 1;
    for cookie in 0..n {
        let (req, payload) = random_request(rng, cookie);
        send_request(
            &mut s, req.kind, req.flags, cookie, req.offset, req.length, &payload,
        )
        .await?;
        sent.insert(cookie, req);
    }
    send_request(&mut s, CMD_DISC, 0, u64::MAX, 0, 0, &[]).await?;
    let garbage = rng.junk(0, 300);
    let _ = s.write_all(&garbage).await;
    for _ in 0..n {
        let (error, cookie) = read_reply(&mut s).await?;
        let req = sent
            .remove(&cookie)
            .expect("reply to an unknown or answered cookie");
        assert!([0, EINVAL, ENOSPC, EIO].contains(&error), "error {error}");
        if req.kind == CMD_READ && error == 0 {
            let mut data = vec![0u8; req.length as usize];
            s.read_exact(&mut data).await?;
        }
        let in_range = req
            .offset
            .checked_add(u64::from(req.length))
            .is_some_and(|e| e <= EXPORT_SIZE);
        // FLUSH ignores its (reserved) offset and length.
        if !in_range && req.kind != CMD_FLUSH {
            assert_ne!(error, 0, "out-of-range request {req:?} succeeded");
        }
    }
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await?;
    assert!(rest.is_empty(), "bytes after the last reply");
    Ok(())
}

/// One hostile connection; which abuse depends on `rng`. Errors (the server
/// closing on us) are expected and ignored by the caller.
async fn hostile(addr: std::net::SocketAddr, rng: &mut Rng) -> io::Result<()> {
    let scenario = rng.below(15);
    if scenario >= 11 {
        return after_go(addr, scenario, rng).await;
    }
    let mut s = TcpStream::connect(addr).await?;
    if scenario == 0 {
        return Ok(()); // connect and close
    }
    if scenario == 1 {
        let mut part = vec![0u8; rng.below(18) as usize];
        s.read_exact(&mut part).await?;
        return s.write_all(&rng.junk(0, 64)).await;
    }
    if scenario == 2 {
        return s.write_all(&rng.junk(1, 200)).await;
    }
    let flags = if scenario == 3 {
        rng.next() as u32 | 4
    } else {
        CLIENT_FLAG_FIXED_NEWSTYLE
    };
    greet(&mut s, flags).await?;
    match scenario {
        3 => {}
        4 => {
            let mut msg = rng.next().to_be_bytes().to_vec();
            msg.extend_from_slice(&rng.bytes(12));
            s.write_all(&msg).await?;
        }
        5 => {
            let mut msg = IHAVEOPT.to_be_bytes().to_vec();
            msg.extend_from_slice(&(rng.next() as u32).to_be_bytes());
            msg.extend_from_slice(&(u32::MAX - rng.below(1 << 20) as u32).to_be_bytes());
            msg.extend_from_slice(&rng.junk(0, 100));
            s.write_all(&msg).await?;
        }
        6 => random_options(&mut s, rng).await?,
        7 => malformed_info(&mut s, rng).await?,
        8 => {
            // A transmission request in the middle of option haggling.
            let (req, payload) = random_request(rng, 1);
            let mut msg = req.encode().to_vec();
            msg.extend_from_slice(&payload);
            s.write_all(&msg).await?;
        }
        9 => {
            let name = String::from_utf8_lossy(&rng.junk(1, 20)).into_owned();
            send_option(&mut s, OPT_EXPORT_NAME, name.as_bytes()).await?;
        }
        10 => {
            for _ in 0..80 {
                send_option(&mut s, OPT_LIST, &[]).await?;
            }
        }
        _ => unreachable!("scenarios 11.. run after GO"),
    }
    // Half-close so a server waiting for more bytes sees EOF, then drain.
    s.shutdown().await?;
    let mut sink = vec![0u8; 4096];
    while s.read(&mut sink).await? > 0 {}
    Ok(())
}

/// Random option codes with consistent lengths; each must be answered.
async fn random_options(s: &mut TcpStream, rng: &mut Rng) -> io::Result<()> {
    for _ in 0..rng.below(8) + 1 {
        let option = match rng.below(3) {
            0 => rng.next() as u32,
            _ => rng.below(16) as u32,
        };
        if [OPT_EXPORT_NAME, OPT_ABORT, OPT_GO].contains(&option) {
            continue;
        }
        let data = rng.junk(0, 64);
        send_option(s, option, &data).await?;
        loop {
            let (echo, kind, _) = read_option_reply(s).await?;
            assert_eq!(echo, option);
            if kind == REP_ACK || kind & REP_FLAG_ERROR != 0 {
                break;
            }
        }
    }
    send_option(s, OPT_ABORT, &[]).await
}

/// INFO/GO whose inner lengths do not add up: `NBD_REP_ERR_INVALID`.
async fn malformed_info(s: &mut TcpStream, rng: &mut Rng) -> io::Result<()> {
    let mut data = info_request(EXPORT, &[INFO_NAME]);
    match rng.below(3) {
        0 => data[0..4].copy_from_slice(&(rng.next() as u32 | 0x100).to_be_bytes()),
        1 => data.truncate(rng.below(data.len() as u64) as usize),
        _ => data.extend_from_slice(&rng.junk(1, 5)),
    }
    let option = if rng.below(2) == 0 { OPT_INFO } else { OPT_GO };
    send_option(s, option, &data).await?;
    let (echo, kind, _) = read_option_reply(s).await?;
    assert_eq!((echo, kind), (option, REP_ERR_INVALID));
    Ok(())
}

/// Abuse after a successful GO.
async fn after_go(addr: std::net::SocketAddr, scenario: u64, rng: &mut Rng) -> io::Result<()> {
    if scenario == 14 {
        if let Err(e) = random_session(addr, rng).await {
            panic!("well-formed random requests were not all answered: {e}");
        }
        return Ok(());
    }
    let (mut s, _) = connect_go(addr, EXPORT).await?;
    match scenario {
        11 => {
            let (req, _) = random_request(rng, 9);
            let mut msg = req.encode();
            msg[0] ^= 0x80; // wrong magic
            s.write_all(&msg).await?;
        }
        12 => {
            let huge = rng.below(2) == 0;
            let len = if huge {
                u32::MAX - rng.below(1000) as u32
            } else {
                8192
            };
            let header = RequestHeader {
                flags: 0,
                kind: CMD_WRITE,
                cookie: 3,
                offset: 0,
                length: len,
            };
            s.write_all(&header.encode()).await?;
            s.write_all(&rng.junk(0, 4096)).await?;
            if !huge {
                return Ok(()); // truncated payload, then close
            }
        }
        _ => s.write_all(&rng.junk(1, 500)).await?,
    }
    // Half-close so a server waiting for more bytes sees EOF, then drain.
    s.shutdown().await?;
    let mut sink = vec![0u8; 4096];
    while s.read(&mut sink).await? > 0 {}
    Ok(())
}

#[test]
fn hostile_clients_do_not_hurt_the_server() {
    let storm = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(STORM_THREAD)
        .enable_all()
        .build()
        .expect("runtime");
    // On the storm's threads, so that a panic anywhere in it counts.
    storm.block_on(async { tokio::spawn(storm_scenario()).await.expect("the storm") });
}

async fn storm_scenario() {
    let seed = std::env::var("METRO_NBD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    println!("METRO_NBD_FUZZ_SEED={seed}");
    let (addr, _backend, server, stats) = start_with_stats().await;
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        clients.push(tokio::spawn(async move {
            let mut rng = Rng(seed ^ (c + 1).wrapping_mul(0xd134_2543_de82_ef95));
            for _ in 0..ROUNDS {
                // The server closing on us, or making us wait, is fine.
                let _ = timeout(IO_TIMEOUT, hostile(addr, &mut rng)).await;
            }
        }));
    }
    for client in clients {
        client
            .await
            .expect("a hostile client saw a wrong reply (see its panic)");
    }
    assert!(!server.is_finished(), "the server task ended");
    well_behaved_round_trip(addr, seed).await;
    assert!(!server.is_finished(), "the server task ended");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
    let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    println!("server stats after the storm: {stats:?}");
    assert!(count(&stats.connections) > CLIENTS * ROUNDS);
    assert!(count(&stats.sessions) > CLIENTS);
    assert!(count(&stats.connection_errors) > CLIENTS);
    assert!(count(&stats.error_replies) > CLIENTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_replies_follow_the_protocol() {
    let (addr, backend, server) = start().await;
    let (mut s, size) = connect_go(addr, EXPORT).await.unwrap();
    let big = metro_node::limits::NBD_PAYLOAD_BYTES_MAX + 1;
    assert_eq!(
        call(&mut s, CMD_READ, size, 1, &[]).await.unwrap().0,
        EINVAL
    );
    assert_eq!(
        call(&mut s, CMD_READ, size - 512, 1024, &[])
            .await
            .unwrap()
            .0,
        EINVAL
    );
    assert_eq!(
        call(&mut s, CMD_READ, u64::MAX - 1, 4096, &[])
            .await
            .unwrap()
            .0,
        EINVAL
    );
    assert_eq!(call(&mut s, CMD_READ, 0, big, &[]).await.unwrap().0, EINVAL);
    let block = vec![7u8; 4096];
    assert_eq!(
        call(&mut s, CMD_WRITE, size - 2048, 4096, &block)
            .await
            .unwrap()
            .0,
        ENOSPC
    );
    assert_eq!(
        call(&mut s, CMD_WRITE_ZEROES, size, 4096, &[])
            .await
            .unwrap()
            .0,
        ENOSPC
    );
    assert_eq!(
        call(&mut s, CMD_TRIM, size, 4096, &[]).await.unwrap().0,
        EINVAL
    );
    assert_eq!(call(&mut s, 5, 0, 4096, &[]).await.unwrap().0, EINVAL);
    assert_eq!(call(&mut s, 0x1234, 0, 4096, &[]).await.unwrap().0, EINVAL);
    send_request(&mut s, CMD_READ, 1 << 4, 9, 0, 512, &[])
        .await
        .unwrap();
    assert_eq!(read_reply(&mut s).await.unwrap(), (EINVAL, 9));
    assert!(!server.is_finished());
    drop(backend);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_failures_fua_and_oversized_writes() {
    let (addr, backend, server) = start().await;
    let (mut s, size) = connect_go(addr, EXPORT).await.unwrap();
    let big = metro_node::limits::NBD_PAYLOAD_BYTES_MAX + 1;
    let block = vec![7u8; 4096];
    // Backend failures are EIO; the connection survives them.
    let vol = backend.volume(EXPORT).unwrap();
    vol.set_failing(true);
    assert_eq!(
        call(&mut s, CMD_WRITE, 0, 4096, &block).await.unwrap().0,
        EIO
    );
    assert_eq!(call(&mut s, CMD_READ, 0, 4096, &[]).await.unwrap().0, EIO);
    assert_eq!(call(&mut s, CMD_FLUSH, 0, 0, &[]).await.unwrap().0, EIO);
    vol.set_failing(false);
    assert_eq!(
        call(&mut s, CMD_WRITE, size - 4096, 4096, &block)
            .await
            .unwrap()
            .0,
        0
    );
    let (err, data) = call(&mut s, CMD_READ, size - 4096, 4096, &[])
        .await
        .unwrap();
    assert_eq!((err, data), (0, block));
    // FUA writes and zero-length requests succeed.
    send_request(&mut s, CMD_WRITE, CMD_FLAG_FUA, 5, 0, 3, b"abc")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut s).await.unwrap(), (0, 5));
    assert_eq!(
        call(&mut s, CMD_READ, 0, 0, &[]).await.unwrap(),
        (0, Vec::new())
    );
    assert_eq!(vol.read_bytes(0, 4), b"abc\0");
    // An oversized write payload ends the connection (cannot resync).
    send_request(&mut s, CMD_WRITE, 0, 6, 0, big, &[])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    assert!(rest.is_empty());
    assert!(!server.is_finished());
    well_behaved_round_trip(addr, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_list_info_unsupported_abort() {
    let (addr, _backend, _server) = start().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    greet(&mut s, CLIENT_FLAG_FIXED_NEWSTYLE).await.unwrap();
    send_option(&mut s, OPT_LIST, &[]).await.unwrap();
    let (_, kind, data) = read_option_reply(&mut s).await.unwrap();
    assert_eq!(kind, REP_SERVER);
    assert_eq!(&data[4..], EXPORT.as_bytes());
    assert_eq!(read_option_reply(&mut s).await.unwrap().1, REP_ACK);
    send_option(&mut s, OPT_INFO, &info_request("nope", &[]))
        .await
        .unwrap();
    assert_eq!(read_option_reply(&mut s).await.unwrap().1, REP_ERR_UNKNOWN);
    for unsupported in [5u32, 8, 9, 10, 11, 0xdead_beef] {
        send_option(&mut s, unsupported, b"xyz").await.unwrap();
        assert_eq!(
            read_option_reply(&mut s).await.unwrap(),
            (unsupported, REP_ERR_UNSUP, b"option not supported".to_vec())
        );
    }
    send_option(&mut s, OPT_INFO, &info_request(EXPORT, &[INFO_NAME]))
        .await
        .unwrap();
    let mut infos = Vec::new();
    loop {
        let (_, kind, data) = read_option_reply(&mut s).await.unwrap();
        if kind == REP_ACK {
            break;
        }
        assert_eq!(kind, REP_INFO);
        infos.push(data);
    }
    assert_eq!(infos.len(), 3, "EXPORT, NAME and BLOCK_SIZE");
    assert_eq!(&infos[1][2..], EXPORT.as_bytes());
    assert_eq!(&infos[2][2..6], &4096u32.to_be_bytes());
    send_option(&mut s, OPT_ABORT, &[]).await.unwrap();
    assert_eq!(read_option_reply(&mut s).await.unwrap().1, REP_ACK);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_style_export_name() {
    let (addr, _backend, _server) = start().await;
    for no_zeroes in [false, true] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let flags = CLIENT_FLAG_FIXED_NEWSTYLE | if no_zeroes { CLIENT_FLAG_NO_ZEROES } else { 0 };
        greet(&mut s, flags).await.unwrap();
        send_option(&mut s, OPT_EXPORT_NAME, EXPORT.as_bytes())
            .await
            .unwrap();
        assert_eq!(s.read_u64().await.unwrap(), EXPORT_SIZE);
        assert_eq!(s.read_u16().await.unwrap(), TRANSMISSION_FLAGS);
        if !no_zeroes {
            let mut pad = [1u8; 124];
            s.read_exact(&mut pad).await.unwrap();
            assert_eq!(pad, [0u8; 124]);
        }
        assert_eq!(
            call(&mut s, CMD_WRITE, 512, 5, b"hello").await.unwrap().0,
            0
        );
        assert_eq!(
            call(&mut s, CMD_READ, 510, 9, &[]).await.unwrap(),
            (0, b"\0\0hello\0\0".to_vec())
        );
    }
    // An unknown name has no error reply: the server hangs up.
    let mut s = TcpStream::connect(addr).await.unwrap();
    greet(&mut s, CLIENT_FLAG_FIXED_NEWSTYLE).await.unwrap();
    send_option(&mut s, OPT_EXPORT_NAME, b"nope").await.unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    assert!(rest.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_beyond_the_in_flight_bound() {
    let (addr, _backend, _server) = start().await;
    let (s, _) = connect_go(addr, EXPORT).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let n = 4 * metro_node::limits::NBD_IN_FLIGHT_MAX as u64;
    let writer = tokio::spawn(async move {
        for i in 0..n {
            let data = vec![i as u8; 8192];
            let header = RequestHeader {
                flags: 0,
                kind: CMD_WRITE,
                cookie: i,
                offset: i * 8192,
                length: 8192,
            };
            wr.write_all(&header.encode()).await.unwrap();
            wr.write_all(&data).await.unwrap();
        }
        for i in 0..n {
            let header = RequestHeader {
                flags: 0,
                kind: CMD_READ,
                cookie: n + i,
                offset: i * 8192 + 100,
                length: 4000,
            };
            wr.write_all(&header.encode()).await.unwrap();
        }
        wr
    });
    let mut seen = std::collections::BTreeSet::new();
    let mut writes_done = 0;
    while seen.len() < 2 * n as usize {
        let mut header = [0u8; SIMPLE_REPLY_LEN];
        rd.read_exact(&mut header).await.unwrap();
        let error = u32::from_be_bytes(header[4..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(header[8..16].try_into().unwrap());
        assert_eq!(error, 0);
        assert!(seen.insert(cookie), "cookie {cookie} answered twice");
        if cookie < n {
            writes_done += 1;
            continue;
        }
        // Reads were sent after every write, but replies come as they finish.
        let mut data = vec![0u8; 4000];
        rd.read_exact(&mut data).await.unwrap();
        let i = cookie - n;
        if writes_done == n {
            assert!(data.iter().all(|&b| b == i as u8), "read {i}");
        }
    }
    let _ = writer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sub_block_writes_keep_each_other() {
    let (addr, backend, _server) = start().await;
    let mut tasks = Vec::new();
    for c in 0..8u64 {
        tasks.push(tokio::spawn(async move {
            let (mut s, _) = connect_go(addr, EXPORT).await.unwrap();
            for round in 0..50u64 {
                let offset = round * 4096 + c * 512;
                let data = vec![(c * 16 + round % 16) as u8 + 1; 512];
                assert_eq!(
                    call(&mut s, CMD_WRITE, offset, 512, &data).await.unwrap().0,
                    0
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let vol = backend.volume(EXPORT).unwrap();
    for round in 0..50u64 {
        for c in 0..8u64 {
            let got = vol.read_bytes(round * 4096 + c * 512, 512);
            let want = (c * 16 + round % 16) as u8 + 1;
            assert!(
                got.iter().all(|&b| b == want),
                "block {round} slot {c} lost its write"
            );
        }
    }
}
