//! A cluster of real `metro node run` processes on loopback, registered in
//! a real etcd: certificates from `metro cluster init`, one data directory
//! and log file per node, QUIC addresses chosen up front, an admin API on
//! the nodes asked for (and an NBD listener on those). Nodes are started,
//! SIGKILLed and restarted one by one; all are killed on drop (the
//! directory is kept when the test fails).
//! Also the `metro cluster status` probe the scenarios check steps with.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use metro_fabric::env::NodeId;
use metro_fabric::volume::{BlockData, VolumeId};
use metro_node::admin::api::ClusterStatus;
use metro_node::client::{ClientConfig, MetroClient};
use metro_node::pki::CLIENT_ID_MIN;

/// One node of the cluster: its domain, the domain's role, whether it
/// serves the admin API.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub id: NodeId,
    pub domain: &'static str,
    pub role: &'static str,
    pub admin: bool,
}

/// One data node per domain: `ids[i]` in domain `domains[i]` (with the
/// admin API and NBD when `admin`).
pub fn data_nodes(ids: &[NodeId], domains: &[&'static str], admin: bool) -> Vec<NodeSpec> {
    assert_eq!(ids.len(), domains.len(), "one domain per node");
    ids.iter()
        .zip(domains)
        .map(|(&id, &domain)| NodeSpec {
            id,
            domain,
            role: "data",
            admin,
        })
        .collect()
}

/// The node processes (see the module docs).
pub struct ProcessCluster {
    pub dir: PathBuf,
    pub name: String,
    pub etcd: String,
    pub specs: Vec<NodeSpec>,
    pub addrs: BTreeMap<NodeId, SocketAddr>,
    /// Admin API URLs of the nodes that serve one.
    pub admin: BTreeMap<NodeId, String>,
    /// NBD listen addresses (the nodes that serve the admin API serve NBD
    /// too).
    pub nbd: BTreeMap<NodeId, SocketAddr>,
    /// Flags every node gets (timings).
    pub extra_args: Vec<String>,
    /// Environment variables every node gets (test faults).
    pub envs: Vec<(String, String)>,
    children: BTreeMap<NodeId, Child>,
    pub keep: bool,
}

impl ProcessCluster {
    /// Certificates and addresses for `specs` in cluster `name`; nothing
    /// runs yet.
    pub fn create(
        name: &str,
        etcd: String,
        specs: Vec<NodeSpec>,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let dir = super::scratch_dir(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        cluster_init(&dir, name, specs.len())?;
        let addrs = loopback_udp_addrs(specs.iter().map(|s| s.id))?;
        let mut admin = BTreeMap::new();
        let mut nbd = BTreeMap::new();
        for spec in specs.iter().filter(|s| s.admin) {
            let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            admin.insert(spec.id, format!("http://{addr}"));
            nbd.insert(spec.id, TcpListener::bind("127.0.0.1:0")?.local_addr()?);
        }
        Ok(Self {
            dir,
            name: name.to_owned(),
            etcd,
            specs,
            addrs,
            admin,
            nbd,
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
            envs: Vec::new(),
            children: BTreeMap::new(),
            keep: false,
        })
    }

    /// Starts (or restarts) node `id` from its data directory.
    pub fn start(&mut self, id: NodeId) -> anyhow::Result<()> {
        let spec = self
            .specs
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| anyhow!("no node {id}"))?
            .clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{id}.log")))?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_metro"));
        command
            .args(["node", "run", "--log-level", "info"])
            .args(["--node-id", &id.to_string()])
            .arg("--data-dir")
            .arg(self.dir.join(format!("data-{id}")))
            .arg("--certs-dir")
            .arg(self.dir.join("certs"))
            .args(["--listen", &self.addrs[&id].to_string()])
            .args(["--cluster", &self.name, "--domain", spec.domain])
            .args(["--domain-role", spec.role, "--etcd", &self.etcd])
            .args(&self.extra_args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)));
        for (peer, addr) in self.addrs.iter().filter(|(p, _)| **p != id) {
            command.arg("--peer").arg(format!("{peer}={addr}"));
        }
        if let Some(url) = self.admin.get(&id) {
            command.args(["--admin-listen", url.trim_start_matches("http://")]);
        }
        if let Some(addr) = self.nbd.get(&id) {
            command.args(["--nbd-listen", &addr.to_string()]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {id}"))?;
        self.children.insert(id, child);
        Ok(())
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self, id: NodeId) -> anyhow::Result<()> {
        let mut child = self
            .children
            .remove(&id)
            .ok_or_else(|| anyhow!("node {id} not running"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// A QUIC-lane client (the client certificate) knowing every node.
    pub fn client(&self) -> anyhow::Result<MetroClient> {
        let config = ClientConfig::new(self.dir.join("certs"), CLIENT_ID_MIN, self.addrs.clone());
        Ok(MetroClient::connect(config)?)
    }

    /// The result of a scenario run under `tokio::time::timeout(limit, ..)`:
    /// on failure or timeout, prints the node logs and keeps the directory.
    pub fn conclude(
        &mut self,
        limit: Duration,
        outcome: Result<anyhow::Result<()>, tokio::time::error::Elapsed>,
    ) -> anyhow::Result<()> {
        let outcome =
            outcome.unwrap_or_else(|_| Err(anyhow!("the scenario took longer than {limit:?}")));
        if outcome.is_err() {
            self.print_logs();
            self.keep = true;
        }
        outcome
    }

    /// Prints the last lines of every node's log (for a failed test).
    pub fn print_logs(&self) {
        for spec in &self.specs {
            let path = self.dir.join(format!("node-{}.log", spec.id));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(25).collect();
            eprintln!("--- {} (last lines) ---", path.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.keep || std::thread::panicking() {
            eprintln!("node logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `metro cluster init` (the binary): the CA and `nodes` node certificates
/// plus one client certificate under `dir/certs`.
pub fn cluster_init(dir: &std::path::Path, name: &str, nodes: usize) -> anyhow::Result<()> {
    let status = Command::new(env!("CARGO_BIN_EXE_metro"))
        .args(["cluster", "init", "--name", name])
        .args(["--nodes", &nodes.to_string(), "--clients", "1", "--dir"])
        .arg(dir.join("certs"))
        .stdout(Stdio::null())
        .status()
        .context("running metro cluster init")?;
    ensure!(status.success(), "metro cluster init failed: {status}");
    Ok(())
}

/// A free loopback UDP address per node (bound, noted, released: the
/// nodes bind them next).
pub fn loopback_udp_addrs(
    ids: impl IntoIterator<Item = NodeId>,
) -> anyhow::Result<BTreeMap<NodeId, SocketAddr>> {
    let ids: Vec<NodeId> = ids.into_iter().collect();
    let sockets: Vec<UdpSocket> = ids
        .iter()
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    ids.iter()
        .zip(&sockets)
        .map(|(id, s)| Ok((*id, s.local_addr()?)))
        .collect()
}

/// `metro cluster status` (the binary) against `admin`, polled until
/// `check` holds (bounded by `timeout`); prints the human table once it does.
pub async fn cluster_status(
    admin: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&ClusterStatus) -> bool,
) -> anyhow::Result<ClusterStatus> {
    let metro = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_metro"))
            .args(["cluster", "status", "--admin", admin])
            .args(args)
            .output()
    };
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        let output = metro(&["--output", "json"])?;
        last = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        if output.status.success()
            && let Ok(status) = serde_json::from_slice::<ClusterStatus>(&output.stdout)
            && check(&status)
        {
            let table = metro(&[])?;
            println!(
                "metro cluster status:\n{}",
                String::from_utf8_lossy(&table.stdout)
            );
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(anyhow!(
        "`metro cluster status` never showed {what}; last:\n{last}"
    ))
}

/// Whether `node` is listed up (`None`: not listed).
pub fn node_up(status: &ClusterStatus, node: NodeId) -> Option<bool> {
    status.nodes.iter().find(|n| n.id == node).map(|n| n.up)
}

/// The listed health of volume `name`.
pub fn volume_health<'a>(status: &'a ClusterStatus, name: &str) -> Option<&'a str> {
    status
        .volumes
        .iter()
        .find(|v| v.name == name)
        .map(|v| v.health.as_str())
}

/// The demo workload's content of block `index`.
pub fn pattern(index: u64) -> BlockData {
    BlockData::new(metro_node::demo::workload::pattern(index)).expect("one block")
}

/// Writes [`pattern`]`(index)` to block `index` of `volume`, retrying any
/// failure for up to `within`.
pub async fn write_retrying(
    client: &MetroClient,
    volume: VolumeId,
    index: u64,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        match client.write(volume, index, pattern(index)).await {
            Ok(_) => return Ok(()),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => return Err(err).context(format!("writing block {index}")),
        }
    }
}
