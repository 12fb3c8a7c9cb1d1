//! Shared pieces of node's integration tests: a real single-member etcd
//! started on free local ports in a temporary directory (copied from
//! membership_etcd.rs), killed and its data removed on drop. It fails
//! (never skips) when the `etcd` binary is missing: install the Debian
//! package `etcd-server` (scripts/test does).

use std::fs::{self, File};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metro_node::daemon::etcd_meta::{EtcdConfig, EtcdMetaStore};

/// The etcd binary (Debian package `etcd-server`).
const ETCD_BINARY: &str = "etcd";
/// How long etcd may take to start accepting clients.
const STARTUP_MAX: Duration = Duration::from_secs(30);
/// Per-request bound of the client under test: short, so that the outage
/// scenario sees failures quickly.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A path under the temporary directory for `tag`, not used before by this
/// process: the process id and a counter keep apart the tests sharing
/// this binary (`cargo test` runs them all in one process).
pub fn scratch_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("metro-{tag}-{}-{n}", std::process::id()))
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// One single-member etcd cluster, killed (and its data removed) on drop.
pub struct EtcdServer {
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdServer {
    /// Starts etcd in a fresh directory named after `tag` and this process.
    pub fn start(tag: &str) -> Self {
        let dir = scratch_dir(&format!("etcd-{tag}"));
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

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Starts (or restarts) the process on the same data directory.
    pub fn spawn(&mut self) {
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

    /// Kills the process, keeping its data.
    pub fn kill(&mut self) {
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

impl EtcdServer {
    /// A client of this etcd with the tests' short timeouts.
    pub async fn connect(&self) -> EtcdMetaStore {
        let config = EtcdConfig {
            endpoints: vec![self.client_url()],
            request_timeout: REQUEST_TIMEOUT,
            connect_timeout: CONNECT_TIMEOUT,
        };
        EtcdMetaStore::connect(config)
            .await
            .expect("connect to the test etcd")
    }
}
pub mod inproc;
pub mod processes;
