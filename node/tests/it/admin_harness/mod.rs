//! A small in-process cluster for the admin tests: three nodes
//! (`daemon::start_with`: QUIC with certificates, kvstore in a temporary
//! directory, the control plane — registration, domain record, coordinator
//! — on one shared embedded membership store), one data domain per node,
//! node 1's NBD listener and its admin server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metro_fabric::control::{ClusterKeys, DomainInfo, DomainRole, DomainState, encode};
use metro_fabric::env::NodeId;
use metro_fabric::meta::KvStore as _;
use metro_node::admin::{AdminServer, NodeMetrics};
use metro_node::daemon::config::NodeConfig;
use metro_node::daemon::control_plane::{ControlTiming, EmbeddedStore};
use metro_node::daemon::{self, Frontends, Node, NodeHost};
use metro_node::nbd::host::{HostBackend, NbdListener};

pub type Mem = EmbeddedStore;

pub const CLUSTER: &str = "admintest";
pub const NODES: [NodeId; 3] = [1, 2, 3];
pub const DOMAINS: [&str; 3] = ["a", "b", "c"];
pub const MIB: u64 = 1 << 20;

pub fn temp_dir() -> PathBuf {
    let dir = crate::common::scratch_dir("admin");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn configs(dir: &Path) -> Vec<NodeConfig> {
    let timing = ControlTiming {
        interval: Duration::from_millis(200),
        lease_ttl: Duration::from_secs(2),
        node_lease_ttl: Duration::from_secs(2),
        ..ControlTiming::default()
    };
    let nodes: Vec<(NodeId, &str)> = NODES.iter().copied().zip(DOMAINS).collect();
    crate::common::inproc::node_configs(dir, CLUSTER, &nodes, |c| c.timing = timing)
        .expect("node configurations")
}

/// Data-domain records of `cluster` (for a second cluster without nodes).
pub async fn seed_domains(mem: &Mem, cluster: &str) {
    let keys = ClusterKeys::new(cluster);
    for name in DOMAINS {
        let domain = DomainInfo {
            name: name.into(),
            role: DomainRole::Data,
            state: DomainState::Active,
        };
        mem.put(keys.domain(name).as_bytes(), &encode(&domain), None)
            .await
            .unwrap();
    }
}

pub async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One run of the `metro` binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `metro ARGS` (without `METRO_ADMIN` unless `env` sets it) off
/// the runtime's threads; echoes the output for the test log.
pub async fn metro(args: &[&str], env: Option<(&str, &str)>) -> Run {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env = env.map(|(k, v)| (k.to_owned(), v.to_owned()));
    tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_metro"));
        command.args(&args).env_remove("METRO_ADMIN");
        if let Some((key, value)) = env {
            command.env(key, value);
        }
        let out = command.output().expect("run metro");
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        println!("$ metro {}\n{}{}", args.join(" "), run.stdout, run.stderr);
        run
    })
    .await
    .unwrap()
}

/// `metro ARGS --admin ADMIN`, which must succeed; its stdout.
pub async fn metro_ok(args: &[&str], admin: &str) -> String {
    let mut all = args.to_vec();
    all.extend(["--admin", admin]);
    let run = metro(&all, None).await;
    assert_eq!(run.code, 0, "metro {args:?} failed: {}", run.stderr);
    run.stdout
}

/// The running cluster; [`Self::stop`] it at the end.
pub struct Cluster {
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    pub mem: Mem,
    pub backend: Arc<HostBackend>,
    pub nbd: NbdListener,
    pub server: AdminServer,
}

impl Cluster {
    pub async fn start() -> Self {
        let dir = temp_dir();
        let mem = Mem::new();
        let mut nodes = Vec::new();
        for config in configs(&dir) {
            let store = mem.clone();
            let node = daemon::start_with(&config, store, &Frontends::default())
                .await
                .expect("node starts");
            nodes.push(node);
        }
        let host = Arc::clone(&nodes[0].host);
        let metrics = NodeMetrics::new();
        let backend =
            Arc::new(HostBackend::new(Arc::clone(&host)).with_metrics(Arc::clone(&metrics)));
        let nbd = NbdListener::start("127.0.0.1:0".parse().unwrap(), Arc::clone(&backend))
            .await
            .unwrap();
        let server = daemon::start_admin(
            &nodes[0],
            "127.0.0.1:0".parse().unwrap(),
            Arc::clone(&metrics),
        )
        .await
        .unwrap();
        Self {
            dir,
            nodes,
            mem,
            backend,
            nbd,
            server,
        }
    }

    pub fn host(&self) -> &Arc<NodeHost> {
        &self.nodes[0].host
    }

    pub async fn stop(self) {
        self.server.stop();
        self.nbd.stop();
        for node in &self.nodes {
            node.stop().await;
        }
        let dir = self.dir.clone();
        drop(self);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
