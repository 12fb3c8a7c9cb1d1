//! `metro node run`: one node process.
//!
//! Start-up, in order: load the trust root and this node's identity (from
//! `metro cluster init`), open the kvstore in the data directory (recovering
//! it) and start its writer thread, bind the QUIC transport with
//! the [`HostHandler`], reopen every replica in the host's catalogue, then
//! attach the host so the transport starts serving. Until then requests are
//! refused and callers retry. Last, the [`ControlPlane`] starts (domain
//! record, registration, coordinator; see [`control_plane`]); the node
//! serves whether or not the store is reachable.
//!
//! With an NBD listener, [`run_daemon`] also exports every placed volume of
//! the store by its name (re-read every [`EXPORT_SYNC_INTERVAL_MS`]). With
//! `admin_listen` it serves the admin HTTP API and `/metrics`
//! ([`crate::admin`]) over the same store, with the NBD I/O metrics.
//!
//! Shutdown ([`run`]'s `shutdown` future: SIGTERM or SIGINT in the binary):
//! stop the control plane (deregistering), stop every group, close the
//! transport. Nothing needs flushing: every
//! acknowledged write is already durable on a majority and every local
//! write is in the kvstore's log. The writer threads exit with the process.
//!
//! Who may call: the peers of the configuration (nodes) on every lane, and
//! the identities of the reserved client range ([`crate::pki`]) on the
//! client lane only (checked by the host).

pub mod config;
pub mod control_plane;
pub mod etcd_meta;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use metro_fabric::control::{DomainRole, NodeInfo};
use metro_fabric::host::{HostConfig, HostError, HostHandler, VolumeHost};

use crate::transport::hold_forwards::{
    HoldForwards, hold_from_env, ignore_request_numbers_from_env, promotion_hold_from_env,
};
use metro_fabric::limits::WITNESS_DUTY_INTERVAL_MS;
use metro_fabric::storage::NodeStorage;
use metro_fabric::volume::VolumeId;
use metro_kvstore::{FileDisk, Options, Store, StoreError};
use openraft_rt_tokio::TokioRuntime;

use crate::admin::{AdminServer, AdminService, AdminState, NodeMetrics, NodeSlot};
use crate::daemon::config::{DaemonConfig, NodeConfig};
use crate::daemon::control_plane::{ControlPlane, EmbeddedStore, NodeMetaStore};
use crate::daemon::etcd_meta::{EtcdConfig, EtcdMetaStore};
use crate::limits::EXPORT_SYNC_INTERVAL_MS;
use crate::nbd::host::{HostBackend, NbdListener};
use crate::pki::{CertError, client_ids, load_identity, load_trust};
use crate::transport::{QuicConfig, QuicError, QuicTransport};

/// The host type of a production node.
pub type NodeHost = VolumeHost<TokioRuntime, QuicTransport>;

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Certs(#[from] CertError),
    #[error("data directory {path}: {reason}")]
    DataDir { path: PathBuf, reason: String },
    #[error("opening the kvstore in {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error("starting a kvstore thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Quic(#[from] QuicError),
    #[error("volume host: {0}")]
    Host(#[from] HostError),
    #[error("test fault: {0}")]
    Fault(String),
    #[error("control-plane store: {0}")]
    Meta(#[from] metro_fabric::meta::MetaError),
    #[error("admin listener on {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("NBD listener on {addr}: {source}")]
    Nbd {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Opens the kvstore in `dir` and starts its writer thread.
fn open_store(dir: &PathBuf) -> Result<Store, DaemonError> {
    let data_dir = |reason: String| DaemonError::DataDir {
        path: dir.clone(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| data_dir(e.to_string()))?;
    let disk = FileDisk::open_dir(dir).map_err(|e| data_dir(e.to_string()))?;
    let (store, writer) =
        Store::open(Arc::new(disk), Options::default()).map_err(|source| DaemonError::Store {
            path: dir.clone(),
            source,
        })?;
    std::thread::Builder::new()
        .name("metro-kv-writer".into())
        .spawn(move || writer.run())
        .map_err(DaemonError::Thread)?;
    Ok(store)
}

/// A running node: its host, transport and control plane.
#[derive(Debug)]
pub struct Node<M: NodeMetaStore = EmbeddedStore> {
    pub host: Arc<NodeHost>,
    pub transport: Arc<QuicTransport>,
    pub control: Arc<ControlPlane<M>>,
}

/// The frontend addresses a node announces in its registration.
#[derive(Clone, Debug, Default)]
pub struct Frontends {
    pub nbd: Option<std::net::SocketAddr>,
    pub admin: Option<std::net::SocketAddr>,
}

/// Starts the node described by `config` (inside a tokio runtime) with an
/// embedded control-plane store of its own (tests; [`run_daemon`] connects
/// to the configured etcd).
pub async fn start(config: &NodeConfig) -> Result<Node, DaemonError> {
    start_with(config, EmbeddedStore::new(), &Frontends::default()).await
}

/// Starts the node described by `config` on the control-plane store
/// `membership` (the demo shares one embedded store among its in-process
/// nodes).
pub async fn start_with<M: NodeMetaStore>(
    config: &NodeConfig,
    membership: M,
    frontends: &Frontends,
) -> Result<Node<M>, DaemonError> {
    let trust = load_trust(&config.certs_dir)?;
    let identity = load_identity(&config.certs_dir, &trust, config.node_id)?;
    let store = open_store(&config.data_dir)?;
    let witness = config.control.domain_role == DomainRole::Witness;
    let storage = if witness {
        NodeStorage::new_witness(store)
    } else {
        NodeStorage::new(store)
    };
    if ignore_request_numbers_from_env() {
        tracing::warn!("TEST FAULT: duplicate session requests are applied again");
        storage.plant_ignore_request_numbers();
    }
    let handler = HostHandler::<TokioRuntime, QuicTransport>::new();
    let mut quic = QuicConfig::new(identity, trust.ca.clone(), config.listen);
    for (peer, addr) in &config.peers {
        quic = quic.with_peer(*peer, *addr);
    }
    quic.allowed.extend(client_ids());
    quic.delays = config.delays.clone();
    let transport = match hold_from_env().map_err(DaemonError::Fault)? {
        None => Arc::new(QuicTransport::bind(quic, Arc::clone(&handler))?),
        Some(hold) => {
            tracing::warn!(?hold, "TEST FAULT: forwarded volume commands are held");
            let held = HoldForwards::new(Arc::clone(&handler), hold);
            Arc::new(QuicTransport::bind(quic, Arc::new(held))?)
        }
    };
    let mut host_config = HostConfig::new(config.node_id, config.peers.keys().copied())?;
    if witness {
        host_config = host_config.into_witness()?;
    }
    if let Some(hold) = promotion_hold_from_env().map_err(DaemonError::Fault)? {
        tracing::warn!(
            ?hold,
            "TEST FAULT: repairs wait before promoting their learner"
        );
        host_config.promotion_hold_ms = hold.as_millis() as u64;
    }
    let host = VolumeHost::new(host_config, storage, Arc::clone(&transport));
    let reopened = host.open_existing().await?;
    handler.attach(Arc::clone(&host));
    let info = NodeInfo {
        id: config.node_id,
        domain: config.control.domain.clone(),
        quic_addr: transport.local_addr().to_string(),
        nbd_addr: frontends.nbd.map(|a| a.to_string()).unwrap_or_default(),
        admin_addr: frontends.admin.map(|a| a.to_string()).unwrap_or_default(),
        capacity_bytes: 0,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    tokio::spawn(leader_duties_forever(Arc::downgrade(&host)));
    let control = Arc::new(ControlPlane::start(
        membership,
        config.control.clone(),
        info,
        Arc::clone(&host),
    ));
    tracing::info!(
        node = config.node_id,
        listen = %transport.local_addr(),
        peers = config.peers.len(),
        reopened,
        "node ready"
    );
    Ok(Node {
        host,
        transport,
        control,
    })
}

impl<M: NodeMetaStore> Node<M> {
    /// Stops the control plane and every group, and closes the transport.
    pub async fn stop(&self) {
        self.control.stop().await;
        self.host.shutdown().await;
        self.transport.close();
        tracing::info!(node = self.host.node(), "node stopped");
    }
}

/// Runs the node and its frontends (an NBD listener exporting the hosted
/// volumes when `config.nbd_listen` is set, see [`crate::nbd::host`]) until
/// `shutdown` resolves; then stops the listener and the node.
pub async fn run_daemon(
    config: DaemonConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let endpoints = &config.node.control.etcd_endpoints;
    if endpoints.is_empty() {
        tracing::warn!(
            "no etcd endpoints: using the embedded control-plane store, \
             which no other process sees"
        );
        return run_daemon_with(config, EmbeddedStore::new(), shutdown).await;
    }
    let etcd = EtcdMetaStore::connect(EtcdConfig::new(endpoints.clone())).await?;
    run_daemon_with(config, etcd, shutdown).await
}

/// [`run_daemon`] on the control-plane store `membership`.
async fn run_daemon_with<M: NodeMetaStore>(
    config: DaemonConfig,
    membership: M,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let frontends = Frontends {
        nbd: config.nbd_listen,
        admin: config.admin_listen,
    };
    let node = start_with(&config.node, membership, &frontends).await?;
    let metrics = NodeMetrics::new();
    let mut nbd = None;
    let mut export_sync = None;
    if let Some(addr) = config.nbd_listen {
        let backend = HostBackend::new(Arc::clone(&node.host)).with_metrics(Arc::clone(&metrics));
        let backend = Arc::new(backend);
        match NbdListener::start(addr, Arc::clone(&backend)).await {
            Ok(listener) => nbd = Some(listener),
            Err(source) => {
                node.stop().await;
                return Err(DaemonError::Nbd { addr, source });
            }
        }
        export_sync = Some(tokio::spawn(sync_exports_forever(
            Arc::clone(&node.control),
            backend,
        )));
    }
    let admin = match config.admin_listen {
        Some(addr) => match start_admin(&node, addr, metrics).await {
            Ok(server) => Some(server),
            Err(source) => {
                node.stop().await;
                return Err(DaemonError::Admin { addr, source });
            }
        },
        None => None,
    };
    shutdown.await;
    if let Some(server) = &admin {
        server.stop();
    }
    if let Some(task) = &export_sync {
        task.abort();
    }
    if let Some(listener) = &nbd {
        listener.stop();
    }
    node.stop().await;
    Ok(())
}

/// Serves `node`'s admin API on `addr` (see [`crate::admin`]).
pub async fn start_admin<M: NodeMetaStore>(
    node: &Node<M>,
    addr: std::net::SocketAddr,
    metrics: Arc<NodeMetrics>,
) -> std::io::Result<AdminServer> {
    let control = &node.control;
    let slot = NodeSlot::of(node);
    let service = AdminService::new(control.membership.clone(), &control.config.cluster, slot);
    let state = Arc::new(AdminState { service, metrics });
    AdminServer::start(addr, state).await
}

/// Exports every placed volume of the store by name, every
/// [`EXPORT_SYNC_INTERVAL_MS`], forever (store errors are retried next time).
pub async fn sync_exports_forever<M: NodeMetaStore>(
    control: Arc<ControlPlane<M>>,
    backend: Arc<HostBackend>,
) {
    loop {
        match control.volumes().await {
            Ok(records) => {
                let exports = records
                    .iter()
                    .filter(|r| r.placement.is_some())
                    .map(|r| (r.spec.name.clone(), VolumeId(r.spec.id), r.spec.size_bytes));
                backend.sync_exports(exports);
            }
            Err(error) => tracing::debug!(%error, "export sync: store unreachable"),
        }
        tokio::time::sleep(Duration::from_millis(EXPORT_SYNC_INTERVAL_MS)).await;
    }
}

/// Runs the duties of a host that may not serve I/O (a witness, or a node
/// of an inactive domain: see `metro_fabric::host`'s witness docs) every
/// [`WITNESS_DUTY_INTERVAL_MS`] until the host is gone.
async fn leader_duties_forever(host: std::sync::Weak<NodeHost>) {
    let interval = Duration::from_millis(WITNESS_DUTY_INTERVAL_MS);
    loop {
        tokio::time::sleep(interval).await;
        let Some(host) = host.upgrade() else {
            return;
        };
        let pass = host.witness_duties().await;
        if pass.transfers > 0 {
            tracing::info!(
                groups = pass.transfers,
                "handed leadership on (no I/O here)"
            );
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn termination_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        biased;
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
    }
    Ok(())
}
