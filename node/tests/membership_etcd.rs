//! `EtcdMembership` against a real etcd, through the shared `Membership`
//! conformance suite (fabric/tests/conformance/membership.rs). The test
//! starts its own etcd on 127.0.0.1 with free ports and a temporary data
//! directory, kills and restarts it for the outage scenario, and kills it on
//! drop. It fails (never skips) when the `etcd` binary is missing: install
//! the Debian package `etcd-server` (scripts/test does).

#[path = "../../fabric/tests/conformance/membership.rs"]
mod conformance;

use std::fs::{self, File};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use metro_fabric::membership::{Membership, MembershipError, WatchStream};
use metro_node::etcd_membership::{EtcdConfig, EtcdMembership};

/// The etcd binary (Debian package `etcd-server`).
const ETCD_BINARY: &str = "etcd";
/// How long etcd may take to start accepting clients.
const STARTUP_MAX: Duration = Duration::from_secs(30);
/// Per-request bound of the client under test: short, so that the outage
/// scenario sees failures quickly.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// One single-member etcd cluster, killed (and its data removed) on drop.
struct EtcdServer {
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdServer {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("metro-etcd-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the etcd test directory");
        let mut server = Self {
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
        };
        server.spawn();
        server
    }

    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"));
        let log = log.expect("open the etcd log");
        let child = Command::new(ETCD_BINARY)
            .arg("--name=metro-test")
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={}", self.client_url()))
            .arg(format!("--advertise-client-urls={}", self.client_url()))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=metro-test={peer_url}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
                "`{ETCD_BINARY}` is not installed: this test needs a real etcd. Install the \
                 Debian package etcd-server (apt-get install etcd-server; scripts/test does it)"
            ),
            Err(error) => panic!("cannot start {ETCD_BINARY}: {error}"),
        };
        self.child = Some(child);
        self.wait_listening();
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + STARTUP_MAX;
        while TcpStream::connect(("127.0.0.1", self.client_port)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log = fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
                panic!("etcd exited with {status} during startup; its log:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not listen within {STARTUP_MAX:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

struct EtcdHarness {
    server: EtcdServer,
    membership: EtcdMembership,
}

impl conformance::Harness for EtcdHarness {
    type M = EtcdMembership;

    fn membership(&self) -> EtcdMembership {
        self.membership.clone()
    }

    async fn interrupt(&mut self) {
        self.server.kill();
    }

    async fn restore(&mut self) {
        self.server.spawn();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_conformance_suite() {
    let started = Instant::now();
    let server = EtcdServer::start();
    let config = EtcdConfig {
        endpoints: vec![server.client_url()],
        request_timeout: REQUEST_TIMEOUT,
        connect_timeout: CONNECT_TIMEOUT,
    };
    let membership = EtcdMembership::connect(config)
        .await
        .expect("connect to the test etcd");
    let mut harness = EtcdHarness { server, membership };
    conformance::run_all(&mut harness).await;
    compacted_watch(&harness).await;
    println!("etcd conformance suite took {:?}", started.elapsed());
}

/// A watch from a compacted revision fails with `Compacted` (etcd reports it
/// right after confirming the watch, so either call may carry it).
async fn compacted_watch(harness: &EtcdHarness) {
    let m = &harness.membership;
    let first = m.put(b"/compact/k", b"1", None).await.unwrap().revision;
    let latest = m.put(b"/compact/k", b"2", None).await.unwrap().revision;
    let raw = etcd_client::Client::connect([harness.server.client_url()], None).await;
    raw.expect("raw etcd client")
        .compact(latest, None)
        .await
        .expect("compact");
    let error = match m.watch(b"/compact/", Some(first)).await {
        Err(error) => error,
        Ok(mut watch) => watch.next().await.expect_err("a compacted start revision"),
    };
    assert_eq!(error, MembershipError::Compacted { revision: latest });
    let mut watch = m.watch(b"/compact/", Some(latest)).await.unwrap();
    assert_eq!(watch.next().await.unwrap().kv.value, b"2");
}
