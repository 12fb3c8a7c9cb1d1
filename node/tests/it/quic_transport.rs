//! Integration tests of the QUIC transport and the cluster CA: real quinn
//! endpoints on 127.0.0.1 with ephemeral ports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::common::scratch_dir;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use metro_fabric::env::{Lane, NodeId, RequestHandler, Transport, TransportError};
use metro_fabric::limits::FRAME_BYTES_MAX;
use metro_node::pki::{ClusterCa, NodeIdentity, node_dns_name};
use metro_node::transport::frame::{FRAME_VERSION, Status, decode_response_header};
use metro_node::transport::tls::client_config;
use metro_node::transport::{QuicConfig, QuicTransport};
use quinn::{Connection, Endpoint};

const CLUSTER: &str = "test";
/// Generous bound on any single test, so a hang fails instead of blocking.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Generous bound on waiting for a server-side counter to move.
const WAIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Echoes `[from u64 LE][lane u8][request]`, fails on `b"fail"`, never
/// answers `b"hang"`.
#[derive(Debug, Default)]
struct Echo {
    calls: AtomicU64,
}

impl RequestHandler for Echo {
    async fn handle(&self, from: NodeId, lane: Lane, request: Vec<u8>) -> Result<Vec<u8>, String> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if request == b"fail" {
            return Err("boom".into());
        }
        if request == b"hang" {
            std::future::pending::<()>().await;
        }
        let mut response = from.to_le_bytes().to_vec();
        response.push(lane as u8);
        response.extend_from_slice(&request);
        Ok(response)
    }
}

fn expected(from: NodeId, lane: Lane, request: &[u8]) -> Vec<u8> {
    let mut response = from.to_le_bytes().to_vec();
    response.push(lane as u8);
    response.extend_from_slice(request);
    response
}

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_max_level(tracing::Level::INFO)
        .try_init();
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Binds a node with the given identity, allowing `allowed`.
fn node(
    ca: &ClusterCa,
    identity: NodeIdentity,
    allowed: &[NodeId],
) -> anyhow::Result<Arc<QuicTransport>> {
    let mut config = QuicConfig::new(identity, ca.cert_der().clone(), localhost());
    config.allowed = allowed.iter().copied().collect();
    Ok(Arc::new(QuicTransport::bind(
        config,
        Arc::new(Echo::default()),
    )?))
}

/// Nodes 1 and 2 of a fresh cluster, each knowing and allowing the other.
fn pair() -> anyhow::Result<(ClusterCa, Arc<QuicTransport>, Arc<QuicTransport>)> {
    let ca = ClusterCa::generate(CLUSTER)?;
    let a = node(&ca, ca.issue_node(1, &[])?, &[2])?;
    let b = node(&ca, ca.issue_node(2, &[])?, &[1])?;
    a.set_address(2, b.local_addr());
    b.set_address(1, a.local_addr());
    Ok((ca, a, b))
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT_TIMEOUT;
    while !condition() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn bounded<F: Future<Output = anyhow::Result<()>>>(test: F) -> anyhow::Result<()> {
    init_logging();
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .map_err(|_| anyhow!("test timed out"))?
}

/// A bare quinn client endpoint using `identity` (or none), trusting `ca`.
fn raw_client(identity: Option<&NodeIdentity>, ca: &ClusterCa) -> anyhow::Result<Endpoint> {
    let mut endpoint = Endpoint::client(localhost())?;
    endpoint.set_default_client_config(client_config(identity, ca.cert_der())?);
    Ok(endpoint)
}

async fn raw_connect(endpoint: &Endpoint, server: &QuicTransport) -> anyhow::Result<Connection> {
    let name = node_dns_name(CLUSTER, server.node());
    Ok(endpoint.connect(server.local_addr(), &name)?.await?)
}

/// Sends `bytes` as a whole stream and returns the whole response stream.
async fn raw_exchange(conn: &Connection, bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(bytes).await?;
    send.finish()?;
    Ok(recv.read_to_end(FRAME_BYTES_MAX + 64).await?)
}

fn request_frame(lane: u8, declared_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![FRAME_VERSION, lane];
    frame.extend_from_slice(&declared_len.to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Connects with `identity` and expects a request to be refused.
async fn expect_refused(
    identity: Option<&NodeIdentity>,
    ca: &ClusterCa,
    server: &QuicTransport,
) -> anyhow::Result<()> {
    let endpoint = raw_client(identity, ca)?;
    let frame = request_frame(Lane::Raft as u8, 2, b"hi");
    let outcome = async {
        let conn = raw_connect(&endpoint, server).await?;
        raw_exchange(&conn, &frame).await
    }
    .await;
    ensure!(
        outcome.is_err(),
        "refused client got a response: {outcome:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_round_trips_carry_the_caller_identity() -> anyhow::Result<()> {
    bounded(async {
        let (_ca, a, b) = pair()?;
        let sizes = [0usize, 1, 4096, 65_536, 1 << 20];
        let lanes = [Lane::Raft, Lane::Client, Lane::Bulk];
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..60usize {
            let (client, server_id, from) = if i % 4 == 0 { (b.clone(), 1, 2) } else { (a.clone(), 2, 1) };
            let lane = lanes[i % lanes.len()];
            let request: Vec<u8> = (0..sizes[i % sizes.len()]).map(|j| (i + j) as u8).collect();
            tasks.spawn(async move {
                let response = client.call(server_id, lane, request.clone()).await?;
                ensure!(response == expected(from, lane, &request), "bad response to request {i}");
                Ok::<_, anyhow::Error>(())
            });
        }
        while let Some(result) = tasks.join_next().await {
            result??;
        }
        ensure!(b.stats().requests_served == 45 && a.stats().requests_served == 15);
        let err = a.call(2, Lane::Client, b"fail".to_vec()).await;
        ensure!(matches!(&err, Err(TransportError::Failed { peer: 2, reason }) if reason.contains("boom")), "{err:?}");
        let err = a.call(2, Lane::Bulk, vec![0; FRAME_BYTES_MAX + 1]).await;
        ensure!(matches!(err, Err(TransportError::TooLarge { .. })), "{err:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_cluster_certificate_are_refused() -> anyhow::Result<()> {
    bounded(async {
        let (ca, a, b) = pair()?;
        // Same cluster name, same node id, but signed by another CA.
        let rogue_ca = ClusterCa::generate(CLUSTER)?;
        let rogue = rogue_ca.issue_node(1, &[])?;
        expect_refused(Some(&rogue), &ca, &b).await?;
        wait_until("the foreign-CA refusal", || {
            b.stats().rejected_connections >= 1
        })
        .await?;
        expect_refused(None, &ca, &b).await?;
        wait_until("the no-certificate refusal", || {
            b.stats().rejected_connections >= 2
        })
        .await?;
        ensure!(b.stats().requests_served == 0);
        // A whole transport under the rogue CA cannot call either.
        let rogue_node = node(&rogue_ca, rogue_ca.issue_node(1, &[])?, &[2])?;
        rogue_node.set_address(2, b.local_addr());
        let err = rogue_node.call(2, Lane::Raft, b"x".to_vec()).await;
        ensure!(
            matches!(err, Err(TransportError::Unreachable { .. })),
            "{err:?}"
        );
        // The legitimate node still works.
        ensure!(a.call(2, Lane::Raft, b"ok".to_vec()).await? == expected(1, Lane::Raft, b"ok"));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_outside_the_allowed_set_are_refused() -> anyhow::Result<()> {
    bounded(async {
        let (ca, a, b) = pair()?;
        // Node 3 holds a valid certificate but node 2 does not allow it.
        let c = node(&ca, ca.issue_node(3, &[])?, &[2])?;
        c.set_address(2, b.local_addr());
        let err = c.call(2, Lane::Raft, b"x".to_vec()).await;
        ensure!(
            matches!(err, Err(TransportError::Unreachable { .. })),
            "{err:?}"
        );
        wait_until("the disallowed-node refusal", || {
            b.stats().rejected_connections >= 1
        })
        .await?;
        // A client refuses a server whose identity is not the node it dialed.
        a.allow(3);
        a.set_address(3, b.local_addr());
        let err = a.call(3, Lane::Raft, b"x".to_vec()).await;
        ensure!(
            matches!(err, Err(TransportError::Unreachable { .. })),
            "{err:?}"
        );
        // Revoking an allowed node cuts its existing connections too.
        a.call(2, Lane::Raft, b"warm".to_vec()).await?;
        b.disallow(1);
        let err = a.call(2, Lane::Raft, b"x".to_vec()).await;
        ensure!(
            matches!(err, Err(TransportError::Unreachable { .. })),
            "{err:?}"
        );
        // Calls to a node this side does not allow are never sent.
        a.disallow(2);
        let err = a.call(2, Lane::Raft, b"x".to_vec()).await;
        ensure!(
            matches!(err, Err(TransportError::Unreachable { .. })),
            "{err:?}"
        );
        // Re-allowing on both sides reconnects.
        a.allow(2);
        b.allow(1);
        ensure!(a.call(2, Lane::Raft, b"back".to_vec()).await? == expected(1, Lane::Raft, b"back"));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_rejected_without_harming_others() -> anyhow::Result<()> {
    bounded(async {
        let (ca, a, b) = pair()?;
        a.call(2, Lane::Raft, b"before".to_vec()).await?;
        let endpoint = raw_client(Some(&ca.issue_node(1, &[])?), &ca)?;
        let oversize = u32::try_from(FRAME_BYTES_MAX + 1)?;
        // Protocol violations: the connection is closed.
        let violations = [
            vec![FRAME_VERSION + 1, 0, 0, 0, 0, 0],
            request_frame(9, 0, b""),
            request_frame(Lane::Bulk as u8, oversize, b"abc"),
            request_frame(Lane::Bulk as u8, u32::MAX, b""),
            request_frame(Lane::Raft as u8, 3, &[7; 10]),
        ];
        let mut rejected = 0;
        for frame in &violations {
            let conn = raw_connect(&endpoint, &b).await?;
            let outcome = raw_exchange(&conn, frame).await;
            ensure!(
                outcome.is_err(),
                "violation {frame:?} answered: {outcome:?}"
            );
            rejected += 1;
            wait_until("the violation to be counted", || {
                b.stats().rejected_frames >= rejected
            })
            .await?;
            wait_until("the connection to close", || conn.close_reason().is_some()).await?;
        }
        // Truncated frames: only the stream is reset.
        let conn = raw_connect(&endpoint, &b).await?;
        let broken = [
            vec![FRAME_VERSION, 0, 5],
            request_frame(Lane::Raft as u8, 100, &[7; 10]),
        ];
        for frame in &broken {
            let outcome = raw_exchange(&conn, frame).await;
            ensure!(outcome.is_err(), "broken {frame:?} answered: {outcome:?}");
            rejected += 1;
            wait_until("the broken frame to be counted", || {
                b.stats().rejected_frames >= rejected
            })
            .await?;
        }
        // The same connection still serves a good frame.
        let response = raw_exchange(&conn, &request_frame(Lane::Client as u8, 2, b"ok")).await?;
        let header: [u8; 6] = response.get(..6).context("short response")?.try_into()?;
        ensure!(decode_response_header(&header)? == (Status::Ok, response.len() - 6));
        ensure!(response[6..] == expected(1, Lane::Client, b"ok"));
        // The well-behaved node's pooled connections were never touched.
        ensure!(
            a.call(2, Lane::Raft, b"after".to_vec()).await? == expected(1, Lane::Raft, b"after")
        );
        ensure!(b.stats().rejected_frames == rejected);
        Ok(())
    })
    .await
}

/// Past the node-wide bound on requests in flight a request is answered
/// "busy" at once; the place frees when the request holding it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_node_bound_are_answered_busy() -> anyhow::Result<()> {
    bounded(async {
        let ca = ClusterCa::generate(CLUSTER)?;
        let a = node(&ca, ca.issue_node(1, &[])?, &[2])?;
        let mut config =
            QuicConfig::new(ca.issue_node(2, &[])?, ca.cert_der().clone(), localhost());
        config.allowed = [1].into_iter().collect();
        config.requests_in_flight_max = 1;
        let b = Arc::new(QuicTransport::bind(config, Arc::new(Echo::default()))?);
        a.set_address(2, b.local_addr());
        let hanging = {
            let a = Arc::clone(&a);
            tokio::spawn(async move { a.call(2, Lane::Client, b"hang".to_vec()).await })
        };
        wait_until("the hanging request admitted", || {
            b.stats().requests_in_flight == 1
        })
        .await?;
        let refused = a.call(2, Lane::Client, b"second".to_vec()).await;
        ensure!(
            matches!(&refused, Err(e) if e.to_string().contains("busy")),
            "a second request past the bound: {refused:?}"
        );
        ensure!(b.stats().rejected_busy == 1);
        // Raft between nodes is never refused.
        let raft = a.call(2, Lane::Raft, b"vote".to_vec()).await?;
        ensure!(raft == expected(1, Lane::Raft, b"vote"));
        hanging.abort();
        wait_until("the place freed", || {
            b.stats().handlers_cancelled == 1 && b.stats().requests_in_flight == 0
        })
        .await?;
        let echo = a.call(2, Lane::Client, b"after".to_vec()).await?;
        ensure!(echo == expected(1, Lane::Client, b"after"));
        Ok(())
    })
    .await
}

/// A caller that gives up (drops its call) cancels the handler serving it,
/// instead of leaving it to run (a relay forwarding for nobody).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_giving_up_cancels_its_handler() -> anyhow::Result<()> {
    bounded(async {
        let (_ca, a, b) = pair()?;
        a.call(2, Lane::Client, b"warm".to_vec()).await?;
        ensure!(b.stats().handlers_cancelled == 0);
        let call = a.call(2, Lane::Client, b"hang".to_vec());
        let gave_up = tokio::time::timeout(Duration::from_millis(200), call).await;
        ensure!(gave_up.is_err(), "a hanging handler answered: {gave_up:?}");
        wait_until("the handler's cancellation", || {
            b.stats().handlers_cancelled == 1
        })
        .await?;
        // The connection still serves.
        let echo = a.call(2, Lane::Client, b"after".to_vec()).await?;
        ensure!(echo == expected(1, Lane::Client, b"after"));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_delay_is_observable() -> anyhow::Result<()> {
    bounded(async {
        let (_ca, a, b) = pair()?;
        a.call(2, Lane::Raft, b"warm".to_vec()).await?;
        let one_way = Duration::from_millis(2);
        a.set_delay(2, one_way);
        b.set_delay(1, one_way);
        for _ in 0..10 {
            let start = Instant::now();
            a.call(2, Lane::Raft, b"ping".to_vec()).await?;
            let rtt = start.elapsed();
            ensure!(
                rtt >= 2 * one_way,
                "round trip {rtt:?} shorter than {:?}",
                2 * one_way
            );
        }
        // A longer delay on the responding side alone shows up too.
        a.set_delay(2, Duration::ZERO);
        b.set_delay(1, Duration::from_millis(30));
        let start = Instant::now();
        a.call(2, Lane::Raft, b"ping".to_vec()).await?;
        ensure!(start.elapsed() >= Duration::from_millis(30));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_loaded_from_disk_issues_working_certificates() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    bounded(async {
        let dir = scratch_dir("ca");
        let ca = ClusterCa::generate(CLUSTER)?;
        ca.save(&dir)?;
        ensure!(ca.save(&dir).is_err(), "second save overwrote the CA");
        let mode = std::fs::metadata(dir.join("ca.key"))?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "ca.key mode {mode:o}");
        let loaded = ClusterCa::load(&dir)?;
        ensure!(loaded.cluster() == CLUSTER && loaded.cert_der() == ca.cert_der());
        // Node 1 issued by the original CA, node 2 by the reloaded one.
        ca.issue_node(1, &["127.0.0.1".into()])?.save(&dir)?;
        loaded.issue_node(2, &["localhost".into()])?.save(&dir)?;
        let mode = std::fs::metadata(dir.join("node-2.key"))?
            .permissions()
            .mode()
            & 0o777;
        ensure!(mode == 0o600, "node-2.key mode {mode:o}");
        let a = node(&loaded, NodeIdentity::load(&dir, CLUSTER, 1)?, &[2])?;
        let b = node(&ca, NodeIdentity::load(&dir, CLUSTER, 2)?, &[1])?;
        ensure!(NodeIdentity::load(&dir, "other", 1).is_err());
        a.set_address(2, b.local_addr());
        b.set_address(1, a.local_addr());
        ensure!(a.call(2, Lane::Raft, b"x".to_vec()).await? == expected(1, Lane::Raft, b"x"));
        ensure!(b.call(1, Lane::Raft, b"y".to_vec()).await? == expected(2, Lane::Raft, b"y"));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    })
    .await
}

#[test]
fn cluster_init_writes_certificates_and_refuses_to_overwrite() -> anyhow::Result<()> {
    let dir = scratch_dir("init");
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_metro"))
            .args(["cluster", "init", "--name", "east", "--nodes", "3"])
            .args(["--ip", "10.0.0.1", "--ip", "10.0.0.2", "--ip", "10.0.0.3"])
            .arg("--dir")
            .arg(&dir)
            .output()
    };
    let first = run()?;
    ensure!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    for file in [
        "ca.pem",
        "ca.key",
        "node-1.pem",
        "node-1.key",
        "node-3.pem",
        "node-3.key",
    ] {
        ensure!(dir.join(file).exists(), "{file} missing");
        ensure!(
            String::from_utf8_lossy(&first.stdout).contains(file),
            "{file} not reported"
        );
    }
    NodeIdentity::load(&dir, "east", 3)?;
    let second = run()?;
    ensure!(!second.status.success(), "second init succeeded");
    ensure!(String::from_utf8_lossy(&second.stderr).contains("refusing to overwrite"));
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
