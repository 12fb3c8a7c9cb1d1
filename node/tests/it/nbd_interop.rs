//! The NBD server against real clients from Debian's qemu-utils (`qemu-io`,
//! `qemu-img`, `qemu-nbd --list`) and, when installed, libnbd's `nbdinfo`.
//! The server runs in-process on an ephemeral loopback port with a
//! `MemBackend`; the tests check what the clients report and what the
//! backend holds. A missing qemu tool fails the test, naming the package.

use crate::qemu::{qemu_io, random_bytes, run};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use metro_node::nbd::{MemBackend, NbdServer};

const MIB: u64 = 1024 * 1024;
/// A server on its own runtime; dropped at the end of the test.
struct Harness {
    _rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    backend: Arc<MemBackend>,
    server: tokio::task::JoinHandle<()>,
}

impl Harness {
    fn start(exports: &[(&str, u64)]) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let backend = Arc::new(MemBackend::new());
        for (name, size) in exports {
            backend.add_export(name, *size);
        }
        let server = rt
            .block_on(NbdServer::bind(
                "127.0.0.1:0".parse().unwrap(),
                backend.clone(),
            ))
            .expect("bind");
        let addr = server.local_addr().expect("local addr");
        let server = rt.spawn(server.serve());
        Self {
            _rt: rt,
            addr,
            backend,
            server,
        }
    }

    fn uri(&self, export: &str) -> String {
        format!("nbd://{}/{export}", self.addr)
    }

    fn assert_alive(&self) {
        assert!(!self.server.is_finished(), "the NBD server task ended");
    }
}

/// (offset, length, pattern) written by `qemu_io_patterns`: aligned,
/// unaligned, at the end, large.
fn pattern_cases(size: u64) -> Vec<(u64, u64, u8)> {
    vec![
        (0, 64 * 1024, 0xab),
        (MIB, 4096, 0x11),
        (4 * MIB + 4096, 128 * 1024, 0x22),
        (size - 64 * 1024, 64 * 1024, 0x33),
        (10 * MIB + 100, 1000, 0x44),
        (12 * MIB + 4000, 8300, 0x55),
        (20 * MIB + 512, 512, 0x66),
        (30 * MIB, 4 * MIB, 0x77),
        (40 * MIB + 1, 3 * MIB + 5, 0x88),
    ]
}

#[test]
fn qemu_io_patterns_at_many_offsets() {
    let size = 64 * MIB;
    let h = Harness::start(&[("vol", size)]);
    let cases = pattern_cases(size);
    let writes: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, (off, len, pat))| {
            let fua = if i % 2 == 0 { "-f " } else { "" };
            format!("write {fua}-P {pat:#x} {off} {len}")
        })
        .collect();
    let out = qemu_io(&h.uri("vol"), &writes);
    assert_eq!(out.matches("wrote ").count(), cases.len(), "{out}");
    let mut reads: Vec<String> = cases
        .iter()
        .map(|(off, len, pat)| format!("read -P {pat:#x} {off} {len}"))
        .collect();
    // The bytes around unaligned writes are untouched (still zero).
    reads.push(format!("read -P 0 {} 100", 10 * MIB));
    reads.push(format!("read -P 0 {} 3000", 10 * MIB + 1100));
    reads.push(format!("read -P 0 {} 512", 20 * MIB));
    let out = qemu_io(&h.uri("vol"), &reads);
    assert_eq!(out.matches("read ").count(), reads.len(), "{out}");
    let vol = h.backend.volume("vol").unwrap();
    for (off, len, pat) in &cases {
        let data = vol.read_bytes(*off, *len as usize);
        assert!(
            data.iter().all(|b| b == pat),
            "backend bytes at {off}+{len}"
        );
    }
    h.assert_alive();
}

#[test]
fn qemu_io_zeroes_discard_flush_and_aio() {
    let size = 32 * MIB;
    let h = Harness::start(&[("vol", size)]);
    qemu_io(&h.uri("vol"), &["write -P 0x5a 0 8M".into()]);
    let cmds: Vec<String> = [
        "write -z 4096 8192",
        "write -z 100000 5000",
        "discard 1M 1M",
        "flush",
        "read -P 0x5a 0 4096",
        "read -P 0 4096 8192",
        "read -P 0x5a 12288 87712",
        "read -P 0 100000 5000",
        "read -P 0x5a 105000 943576",
        "read -P 0x5a 2M 6M",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    qemu_io(&h.uri("vol"), &cmds);
    // Pipelined requests: many AIO writes in flight, then read back.
    let mut aio: Vec<String> = (0..48u64)
        .map(|i| format!("aio_write -P {:#x} {} 64k", i + 1, 16 * MIB + i * 65536))
        .collect();
    aio.push("aio_flush".into());
    qemu_io(&h.uri("vol"), &aio);
    let mut check: Vec<String> = (0..48u64)
        .map(|i| format!("aio_read -P {:#x} {} 64k", i + 1, 16 * MIB + i * 65536))
        .collect();
    check.push("aio_flush".into());
    let out = qemu_io(&h.uri("vol"), &check);
    assert_eq!(out.matches("read 65536/65536").count(), 48, "{out}");
    h.assert_alive();
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("metro-nbd-{}-{name}", std::process::id()))
}

#[test]
fn qemu_img_convert_round_trip() {
    let size = 16 * MIB;
    let h = Harness::start(&[("img", size)]);
    let image = random_bytes(size as usize, 0x5eed);
    let (src, dst) = (temp_path("src.raw"), temp_path("dst.raw"));
    std::fs::write(&src, &image).unwrap();
    let src_arg = src.display().to_string();
    let dst_arg = dst.display().to_string();
    let raw = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    run(
        "qemu-img",
        &raw(&[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            &src_arg,
            &h.uri("img"),
        ]),
    );
    let stored = h
        .backend
        .volume("img")
        .unwrap()
        .read_bytes(0, size as usize);
    assert!(stored == image, "the export differs from the source image");
    run(
        "qemu-img",
        &raw(&["convert", "-f", "raw", "-O", "raw", &h.uri("img"), &dst_arg]),
    );
    let copied = std::fs::read(&dst).unwrap();
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_file(&dst);
    assert_eq!(copied.len(), image.len());
    assert!(
        copied == image,
        "the copy out of the export differs from the source"
    );
    h.assert_alive();
}

/// Runs `qemu-img bench` and returns its run time in seconds.
fn bench(h: &Harness, write: bool, depth: u32, count: u32) -> f64 {
    let mut args: Vec<String> = Vec::new();
    if write {
        args.push("-w".into());
    }
    for a in [
        "-t",
        "none",
        "-s",
        "4k",
        "-d",
        &depth.to_string(),
        "-c",
        &count.to_string(),
    ] {
        args.push(a.into());
    }
    args.extend(["-f".into(), "raw".into(), h.uri("vol")]);
    let mut full = vec!["bench".to_string()];
    full.extend(args);
    let out = run("qemu-img", &full);
    let secs = out
        .split("Run completed in ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no run time in qemu-img bench output:\n{out}"));
    let mode = if write { "write" } else { "read" };
    println!(
        "qemu-img bench {mode} 4k depth {depth} x{count}: {secs:.3} s = {:.0} IOPS",
        f64::from(count) / secs
    );
    secs
}

#[test]
fn qemu_img_bench_runs_clean() {
    let h = Harness::start(&[("vol", 256 * MIB)]);
    bench(&h, true, 16, 20_000);
    bench(&h, false, 16, 20_000);
    bench(&h, true, 1, 5_000);
    h.assert_alive();
}

#[test]
fn export_listing_and_info() {
    let h = Harness::start(&[("alpha", 8 * MIB), ("beta", 3 * MIB + 12345)]);
    let info = run(
        "qemu-img",
        &["info".into(), "-f".into(), "raw".into(), h.uri("alpha")],
    );
    assert!(info.contains("virtual size: 8 MiB"), "{info}");
    let port = h.addr.port().to_string();
    let list = run(
        "qemu-nbd",
        &[
            "--list".into(),
            "--bind=127.0.0.1".into(),
            format!("--port={port}"),
        ],
    );
    assert!(list.contains("exports available: 2"), "{list}");
    assert!(
        list.contains("export: 'alpha'") && list.contains("export: 'beta'"),
        "{list}"
    );
    // beta's size is rounded down to whole 4 KiB blocks.
    assert!(
        list.contains(&format!("size:  {}", 3 * MIB + 12288)),
        "{list}"
    );
    assert!(list.contains("min block: 4096"), "{list}");
    match Command::new("nbdinfo")
        .arg("--list")
        .arg(format!("nbd://{}", h.addr))
        .output()
    {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "nbdinfo failed: {text}");
            assert!(text.contains("alpha") && text.contains("beta"), "{text}");
        }
        Err(_) => println!(
            "nbdinfo not installed (Debian libnbd-bin): listing checked with qemu-nbd only"
        ),
    }
    // An unknown export is refused without harming the server.
    let out = Command::new("qemu-io")
        .args(["-f", "raw", &h.uri("nope"), "-c", "read 0 4k"])
        .output()
        .expect("qemu-io (qemu-utils)");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() || text.contains("export"), "{text}");
    qemu_io(
        &h.uri("alpha"),
        &["write -P 1 0 4k".into(), "read -P 1 0 4k".into()],
    );
    h.assert_alive();
}
