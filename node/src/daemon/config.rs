//! The node daemon's configuration: a TOML file, overridden field by field
//! by command-line flags.
//!
//! ```toml
//! node_id = 1
//! data_dir = "/var/lib/metro/node-1"   # kvstore files (created if missing)
//! certs_dir = "/etc/metro/certs"       # from `metro cluster init`
//! listen = "127.0.0.1:7001"            # QUIC (UDP) address
//! log_level = "info"                   # error|warn|info|debug|trace
//! nbd_listen = "127.0.0.1:10809"       # optional NBD (TCP) address
//! admin_listen = "127.0.0.1:7080"      # optional admin HTTP address
//! cluster = "metro"                    # the cluster's name (its etcd keys)
//! domain = "site-a"                    # this node's failure domain
//! domain_role = "data"                 # data|witness (when creating the domain)
//! etcd = ["http://127.0.0.1:2379"]     # etcd endpoints; none: embedded store
//! node_lease_ttl_s = 10                # seen down this long after it stops
//! repair_delay_s = 60                  # down this long: replicas are moved
//!
//! [peers]                              # every other node: id = "address"
//! 2 = "127.0.0.1:7002"
//! 3 = "127.0.0.1:7003"
//!
//! [delay_ms]                           # optional injected one-way delay
//! 2 = 20
//! ```
//!
//! Contract: [`NodeConfig::load`] either returns a complete, checked
//! configuration or a [`ConfigError`] naming the file, field and value at
//! fault: unknown fields, a missing file or field, unparsable addresses,
//! node ids of 0 or in the client range, the node itself among its peers,
//! and delays for nodes that are not peers are all refused.
//! [`DaemonConfig::load`] does the same and adds the node's frontends
//! (`nbd_listen`, `admin_listen`), which [`NodeConfig::load`] accepts in the
//! file but does not return. Without `etcd` endpoints the node runs the
//! embedded in-memory control-plane store, which only its own process sees:
//! fine for one node, wrong for a multi-process cluster (logged as a warning).

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use metro_fabric::control::DomainRole;
use metro_fabric::env::NodeId;
use serde::Deserialize;

use crate::daemon::control_plane::{ControlConfig, ControlTiming};
use crate::limits::{DELAY_MAX_MS, PEERS_MAX, TIMING_MAX_S};
use crate::pki::CLIENT_ID_MIN;

/// The cluster name when none is configured.
pub const DEFAULT_CLUSTER: &str = "metro";
/// The domain when none is configured.
pub const DEFAULT_DOMAIN: &str = "default";

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("missing `{0}`: set it in the config file or with --{flag}", flag = .0.replace('_', "-"))]
    Missing(&'static str),
    #[error("bad {what} {value:?}: {reason}")]
    BadValue {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("delay given for node {0}, which is not a peer")]
    UnknownPeer(NodeId),
    #[error("node {0} lists itself as a peer")]
    SelfPeer(NodeId),
    #[error("{count} peers exceed the limit of {PEERS_MAX}")]
    TooManyPeers { count: usize },
}

/// The file's shape; every field optional so that flags can fill it in.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<NodeId>,
    data_dir: Option<PathBuf>,
    certs_dir: Option<PathBuf>,
    listen: Option<String>,
    log_level: Option<String>,
    nbd_listen: Option<String>,
    admin_listen: Option<String>,
    cluster: Option<String>,
    domain: Option<String>,
    domain_role: Option<String>,
    #[serde(default)]
    etcd: Vec<String>,
    node_lease_ttl_s: Option<u64>,
    repair_delay_s: Option<u64>,
    #[serde(default)]
    peers: BTreeMap<String, String>,
    #[serde(default)]
    delay_ms: BTreeMap<String, u64>,
}

/// Command-line values that override the file (flags of `metro node run`).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub node_id: Option<NodeId>,
    pub data_dir: Option<PathBuf>,
    pub certs_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub log_level: Option<String>,
    /// `ID=ADDRESS`, added to (or replacing) the file's peers.
    pub peers: Vec<String>,
    /// `ID=MS`, added to (or replacing) the file's delays.
    pub delays: Vec<String>,
    /// NBD (TCP) listen address, `host:port`.
    pub nbd_listen: Option<String>,
    /// Admin HTTP listen address, `host:port`.
    pub admin_listen: Option<String>,
    pub cluster: Option<String>,
    pub domain: Option<String>,
    /// `data` or `witness`.
    pub domain_role: Option<String>,
    /// etcd endpoints; replace the file's when any are given.
    pub etcd: Vec<String>,
    pub node_lease_ttl_s: Option<u64>,
    pub repair_delay_s: Option<u64>,
}

/// A complete, checked node configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub certs_dir: PathBuf,
    pub listen: SocketAddr,
    pub peers: BTreeMap<NodeId, SocketAddr>,
    pub delays: BTreeMap<NodeId, Duration>,
    pub log_level: tracing::Level,
    /// The control plane: cluster, domain, store.
    pub control: ControlConfig,
}

fn bad(what: &'static str, value: &str, reason: impl ToString) -> ConfigError {
    ConfigError::BadValue {
        what,
        value: value.to_owned(),
        reason: reason.to_string(),
    }
}

/// A node id: 1.., below the client range.
pub fn parse_node_id(what: &'static str, text: &str) -> Result<NodeId, ConfigError> {
    let id: NodeId = text.trim().parse().map_err(|e| bad(what, text, e))?;
    check_node_id(what, id)
}

fn check_node_id(what: &'static str, id: NodeId) -> Result<NodeId, ConfigError> {
    if id == 0 || id >= CLIENT_ID_MIN {
        return Err(bad(
            what,
            &id.to_string(),
            format!("node ids are 1..{CLIENT_ID_MIN}"),
        ));
    }
    Ok(id)
}

/// An address `host:port` (names are resolved once, now).
pub fn parse_address(what: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let mut resolved = text.to_socket_addrs().map_err(|e| bad(what, text, e))?;
    resolved
        .next()
        .ok_or_else(|| bad(what, text, "resolves to no address"))
}

fn split_pair<'a>(what: &'static str, text: &'a str) -> Result<(&'a str, &'a str), ConfigError> {
    text.split_once('=')
        .ok_or_else(|| bad(what, text, "expected ID=VALUE"))
}

fn parse_role(text: &str) -> Result<DomainRole, ConfigError> {
    match text.trim() {
        "data" => Ok(DomainRole::Data),
        "witness" => Ok(DomainRole::Witness),
        _ => Err(bad("domain role", text, "expected data or witness")),
    }
}

/// A name (cluster, domain): 1..=64 of `[A-Za-z0-9._-]`.
fn parse_name(what: &'static str, text: String) -> Result<String, ConfigError> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        return Err(bad(what, &text, "expected 1-64 of A-Z a-z 0-9 . _ -"));
    }
    Ok(text)
}

fn parse_seconds(what: &'static str, value: u64, min: u64) -> Result<Duration, ConfigError> {
    if !(min..=TIMING_MAX_S).contains(&value) {
        return Err(bad(
            what,
            &value.to_string(),
            format!("expected {min}..={TIMING_MAX_S} seconds"),
        ));
    }
    Ok(Duration::from_secs(value))
}

fn control_config(file: &FileConfig, overrides: &Overrides) -> Result<ControlConfig, ConfigError> {
    let cluster = overrides.cluster.clone().or(file.cluster.clone());
    let domain = overrides.domain.clone().or(file.domain.clone());
    let role = overrides.domain_role.clone().or(file.domain_role.clone());
    let etcd = if overrides.etcd.is_empty() {
        file.etcd.clone()
    } else {
        overrides.etcd.clone()
    };
    for endpoint in &etcd {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(bad("etcd endpoint", endpoint, "expected http://HOST:PORT"));
        }
    }
    let mut timing = ControlTiming::default();
    if let Some(s) = overrides.node_lease_ttl_s.or(file.node_lease_ttl_s) {
        timing.node_lease_ttl = parse_seconds("node lease TTL", s, 2)?;
    }
    if let Some(s) = overrides.repair_delay_s.or(file.repair_delay_s) {
        timing.repair_delay = parse_seconds("repair delay", s, 0)?;
    }
    Ok(ControlConfig {
        cluster: parse_name("cluster", cluster.unwrap_or_else(|| DEFAULT_CLUSTER.into()))?,
        domain: parse_name("domain", domain.unwrap_or_else(|| DEFAULT_DOMAIN.into()))?,
        domain_role: role.as_deref().map_or(Ok(DomainRole::Data), parse_role)?,
        etcd_endpoints: etcd,
        timing,
    })
}

fn parse_level(text: &str) -> Result<tracing::Level, ConfigError> {
    text.parse().map_err(|_| {
        bad(
            "log level",
            text,
            "expected error, warn, info, debug or trace",
        )
    })
}

impl NodeConfig {
    /// Reads `path` (if given), applies `overrides` and checks the result.
    pub fn load(path: Option<&Path>, overrides: Overrides) -> Result<Self, ConfigError> {
        let file = match path {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::from_file(file, overrides)
    }

    /// The checked configuration of `file` with `overrides` applied.
    fn from_file(file: FileConfig, overrides: Overrides) -> Result<Self, ConfigError> {
        let (peers, delays_ms) = peers_and_delays(&file, &overrides)?;
        let control = control_config(&file, &overrides)?;
        let node_id = overrides
            .node_id
            .or(file.node_id)
            .ok_or(ConfigError::Missing("node_id"))?;
        let node_id = check_node_id("node id", node_id)?;
        let listen = overrides
            .listen
            .or(file.listen)
            .ok_or(ConfigError::Missing("listen"))?;
        let level = overrides.log_level.or(file.log_level);
        let config = Self {
            node_id,
            data_dir: overrides
                .data_dir
                .or(file.data_dir)
                .ok_or(ConfigError::Missing("data_dir"))?,
            certs_dir: overrides
                .certs_dir
                .or(file.certs_dir)
                .ok_or(ConfigError::Missing("certs_dir"))?,
            listen: parse_address("listen address", &listen)?,
            delays: check_delays(&peers, delays_ms)?,
            peers,
            log_level: level
                .as_deref()
                .map_or(Ok(tracing::Level::INFO), parse_level)?,
            control,
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.peers.contains_key(&self.node_id) {
            return Err(ConfigError::SelfPeer(self.node_id));
        }
        if self.peers.len() > PEERS_MAX {
            return Err(ConfigError::TooManyPeers {
                count: self.peers.len(),
            });
        }
        Ok(())
    }
}

/// The daemon's whole configuration: the node and its frontends.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub node: NodeConfig,
    /// Where to serve NBD (TCP); none when not configured.
    pub nbd_listen: Option<SocketAddr>,
    /// Where to serve the admin HTTP API; none when not configured.
    pub admin_listen: Option<SocketAddr>,
}

impl DaemonConfig {
    /// Like [`NodeConfig::load`], plus `nbd_listen` (file or flag).
    pub fn load(path: Option<&Path>, mut overrides: Overrides) -> Result<Self, ConfigError> {
        let mut file = match path {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let nbd_listen = overrides.nbd_listen.take().or(file.nbd_listen.take());
        let admin_listen = overrides.admin_listen.take().or(file.admin_listen.take());
        let node = NodeConfig::from_file(file, overrides)?;
        let nbd_listen = nbd_listen
            .map(|text| parse_address("NBD listen address", &text))
            .transpose()?;
        let admin_listen = admin_listen
            .map(|text| parse_address("admin listen address", &text))
            .transpose()?;
        Ok(Self {
            node,
            nbd_listen,
            admin_listen,
        })
    }
}

type PeersAndDelays = (BTreeMap<NodeId, SocketAddr>, BTreeMap<NodeId, u64>);

/// The file's peers and delays with the flags' on top.
fn peers_and_delays(
    file: &FileConfig,
    overrides: &Overrides,
) -> Result<PeersAndDelays, ConfigError> {
    let peer = |id: &str, addr: &str| -> Result<_, ConfigError> {
        Ok((
            parse_node_id("peer id", id)?,
            parse_address("peer address", addr)?,
        ))
    };
    let mut peers = BTreeMap::new();
    for (id, addr) in &file.peers {
        let (id, addr) = peer(id, addr)?;
        peers.insert(id, addr);
    }
    for pair in &overrides.peers {
        let (id, addr) = split_pair("--peer", pair)?;
        let (id, addr) = peer(id, addr)?;
        peers.insert(id, addr);
    }
    let mut delays_ms = BTreeMap::new();
    for (id, ms) in &file.delay_ms {
        delays_ms.insert(parse_node_id("delay node id", id)?, *ms);
    }
    for pair in &overrides.delays {
        let (id, ms) = split_pair("--delay", pair)?;
        let ms: u64 = ms.trim().parse().map_err(|e| bad("delay", pair, e))?;
        delays_ms.insert(parse_node_id("delay node id", id)?, ms);
    }
    Ok((peers, delays_ms))
}

fn check_delays(
    peers: &BTreeMap<NodeId, SocketAddr>,
    delays_ms: BTreeMap<NodeId, u64>,
) -> Result<BTreeMap<NodeId, Duration>, ConfigError> {
    let mut delays = BTreeMap::new();
    for (id, ms) in delays_ms {
        if !peers.contains_key(&id) {
            return Err(ConfigError::UnknownPeer(id));
        }
        if ms > DELAY_MAX_MS {
            return Err(bad(
                "delay",
                &ms.to_string(),
                format!("at most {DELAY_MAX_MS} ms"),
            ));
        }
        delays.insert(id, Duration::from_millis(ms));
    }
    Ok(delays)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("metro-config-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).expect("temp file");
        path
    }

    const GOOD: &str = r#"
node_id = 1
data_dir = "d"
certs_dir = "c"
listen = "127.0.0.1:7001"
[peers]
2 = "127.0.0.1:7002"
3 = "127.0.0.1:7003"
[delay_ms]
2 = 5
"#;

    #[test]
    fn file_and_overrides() {
        let path = write(GOOD);
        let config = NodeConfig::load(Some(&path), Overrides::default()).expect("valid");
        assert_eq!(config.node_id, 1);
        assert_eq!(config.peers.len(), 2);
        assert_eq!(config.delays[&2], Duration::from_millis(5));
        let overrides = Overrides {
            listen: Some("127.0.0.1:9000".into()),
            peers: vec!["4=127.0.0.1:7004".into()],
            log_level: Some("debug".into()),
            ..Overrides::default()
        };
        let config = NodeConfig::load(Some(&path), overrides).expect("valid");
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.peers.len(), 3);
        assert_eq!(config.log_level, tracing::Level::DEBUG);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn nbd_listen_from_file_or_flag() {
        let path = write(GOOD);
        let config = DaemonConfig::load(Some(&path), Overrides::default()).expect("valid");
        assert_eq!(config.nbd_listen, None);
        let text = GOOD.replace(
            "node_id = 1\n",
            "node_id = 1\nnbd_listen = \"127.0.0.1:10809\"\n",
        );
        let _ = std::fs::write(&path, text);
        let config = DaemonConfig::load(Some(&path), Overrides::default()).expect("valid");
        assert_eq!(config.nbd_listen.map(|a| a.port()), Some(10809));
        let overrides = Overrides {
            nbd_listen: Some("127.0.0.1:10900".into()),
            ..Overrides::default()
        };
        let config = DaemonConfig::load(Some(&path), overrides).expect("valid");
        assert_eq!(config.nbd_listen.map(|a| a.port()), Some(10900));
        assert!(NodeConfig::load(Some(&path), Overrides::default()).is_ok());
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn control_plane_settings() {
        let path = write(GOOD);
        let config = NodeConfig::load(Some(&path), Overrides::default()).expect("valid");
        assert_eq!(config.control.cluster, DEFAULT_CLUSTER);
        assert_eq!(config.control.domain, DEFAULT_DOMAIN);
        assert_eq!(config.control.domain_role, DomainRole::Data);
        assert!(config.control.etcd_endpoints.is_empty());
        let text = format!(
            "cluster = \"east\"\ndomain = \"w\"\ndomain_role = \"witness\"\n\
             etcd = [\"http://127.0.0.1:2379\"]\nrepair_delay_s = 5\n{GOOD}"
        );
        let _ = std::fs::write(&path, text);
        let overrides = Overrides {
            domain: Some("site-b".into()),
            ..Overrides::default()
        };
        let config = NodeConfig::load(Some(&path), overrides).expect("valid");
        assert_eq!(config.control.cluster, "east");
        assert_eq!(config.control.domain, "site-b");
        assert_eq!(config.control.domain_role, DomainRole::Witness);
        assert_eq!(config.control.etcd_endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(config.control.timing.repair_delay, Duration::from_secs(5));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn bad_configs_are_refused_clearly() {
        let missing = NodeConfig::load(
            Some(Path::new("/nonexistent/node.toml")),
            Overrides::default(),
        );
        assert!(matches!(missing, Err(ConfigError::Read { .. })));
        let cases = [
            (GOOD.replace("127.0.0.1:7001", "nowhere"), "listen address"),
            (GOOD.replace("2 = 5", "4 = 5"), "not a peer"),
            (GOOD.replace("3 = \"127", "1 = \"127"), "itself"),
            (GOOD.replace("node_id = 1", "node_id = 0"), "node ids"),
            (GOOD.replace("node_id = 1", "nod_id = 1"), "unknown field"),
            (GOOD.replace("node_id = 1\n", ""), "node_id"),
            (format!("domain = \"a b\"\n{GOOD}"), "domain"),
            (format!("domain_role = \"boss\"\n{GOOD}"), "data or witness"),
            (format!("etcd = [\"127.0.0.1:2379\"]\n{GOOD}"), "http://"),
            (format!("repair_delay_s = 999999\n{GOOD}"), "repair delay"),
        ];
        for (text, expected) in cases {
            let path = write(&text);
            let err = NodeConfig::load(Some(&path), Overrides::default()).expect_err(expected);
            assert!(
                err.to_string().contains(expected),
                "{err} lacks {expected:?}"
            );
            let _ = std::fs::remove_file(path);
        }
    }
}
