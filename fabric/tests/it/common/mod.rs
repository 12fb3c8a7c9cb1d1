//! Shared pieces of the Raft integration tests: an in-memory `Transport` (a
//! map of request handlers, with nodes that can be cut off) and the real
//! kvstore-backed storage opened on an in-memory `FaultyDisk` or a `FileDisk`
//! in a temporary directory, its writer driven by a thread as in production.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use metro_fabric::env::{Disk, Lane, NodeId, RequestHandler, Transport, TransportError};
use metro_fabric::raft::types::TypeConfig;
use metro_fabric::storage::NodeStorage;
use metro_kvstore::{Options, Store, Writer};

pub type Rt = openraft_rt_tokio::TokioRuntime;
pub type C = TypeConfig<Rt>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The in-memory network: every node's handler, by node id.
pub struct MemNet<H> {
    handlers: RwLock<BTreeMap<NodeId, Arc<H>>>,
    cut_off: Mutex<BTreeSet<NodeId>>,
}

impl<H: RequestHandler> MemNet<H> {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            handlers: RwLock::new(BTreeMap::new()),
            cut_off: Mutex::new(BTreeSet::new()),
        })
    }

    pub fn register(&self, node: NodeId, handler: Arc<H>) {
        let mut handlers = self
            .handlers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        handlers.insert(node, handler);
    }

    /// Isolates (or reconnects) `node`: calls from or to it are unreachable.
    pub fn set_cut_off(&self, node: NodeId, cut_off: bool) {
        let mut set = lock(&self.cut_off);
        if cut_off {
            set.insert(node);
        } else {
            set.remove(&node);
        }
    }
}

/// One node's view of the [`MemNet`].
pub struct MemTransport<H> {
    pub node: NodeId,
    pub net: Arc<MemNet<H>>,
}

impl<H: RequestHandler> Transport for MemTransport<H> {
    async fn call(
        &self,
        peer: NodeId,
        lane: Lane,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError> {
        let unreachable = |reason: &str| TransportError::Unreachable {
            peer,
            reason: reason.to_string(),
        };
        {
            let cut_off = lock(&self.net.cut_off);
            if cut_off.contains(&peer) || cut_off.contains(&self.node) {
                return Err(unreachable("partitioned"));
            }
        }
        let handler = {
            let handlers = self
                .net
                .handlers
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            handlers.get(&peer).cloned()
        };
        let handler = handler.ok_or_else(|| unreachable("no such node"))?;
        handler
            .handle(self.node, lane, request)
            .await
            .map_err(|reason| TransportError::Failed { peer, reason })
    }
}

/// The size of every test volume.
pub const VOLUME_BLOCKS: u64 = 1 << 16;

/// Store options small enough for in-memory disks.
pub fn store_options() -> Options {
    Options {
        segment_bytes: 8 << 20,
        checkpoint_log_bytes: 32 << 20,
        ..Options::default()
    }
}

/// Opens (recovering) a store on `disk` and starts its writer thread.
pub fn open_storage(disk: Arc<dyn Disk>) -> Arc<NodeStorage> {
    let (store, writer) = Store::open(disk, store_options()).expect("store opens");
    spawn_writer(writer);
    NodeStorage::new(store)
}

// Tests drive the kvstore writer on a thread, as production does; the
// writer exits once every `Store` handle is dropped.
#[allow(clippy::disallowed_methods)]
fn spawn_writer(writer: Writer) {
    std::thread::spawn(move || writer.run());
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("metro-fabric-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A [`VolumeHost`](metro_fabric::host::VolumeHost) on the in-memory network.
pub type TestHost = metro_fabric::host::VolumeHost<Rt, MemTransport<HostSlot>>;

/// The in-memory network's handler for a host: the host behind a
/// `OnceLock`, its future boxed (a host forwarding over the in-memory
/// transport awaits another host's handler, which would make the future
/// type recursive).
#[derive(Default)]
pub struct HostSlot(pub std::sync::OnceLock<Arc<TestHost>>);

impl RequestHandler for HostSlot {
    fn handle(
        &self,
        from: NodeId,
        lane: Lane,
        request: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, String>> + Send {
        let host = self.0.get().cloned();
        let future: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> =
            Box::pin(async move {
                match host {
                    Some(host) => host.serve(from, lane, request).await,
                    None => Err("no host".to_string()),
                }
            });
        future
    }
}

/// Starts host `id` on `disk`, registered on `net`, knowing `nodes`.
pub fn start_host(
    net: &Arc<MemNet<HostSlot>>,
    id: NodeId,
    disk: &metro_kvstore::FaultyDisk,
    nodes: impl IntoIterator<Item = NodeId>,
) -> Arc<TestHost> {
    let config = metro_fabric::host::HostConfig::new(id, nodes).expect("host config");
    start_host_with(net, id, disk, config)
}

/// Starts host `id` on `disk` with `config` (a witness's storage when the
/// config is a witness's), registered on `net`.
pub fn start_host_with(
    net: &Arc<MemNet<HostSlot>>,
    id: NodeId,
    disk: &metro_kvstore::FaultyDisk,
    config: metro_fabric::host::HostConfig,
) -> Arc<TestHost> {
    let slot = Arc::new(HostSlot::default());
    net.register(id, Arc::clone(&slot));
    let transport = Arc::new(MemTransport {
        node: id,
        net: Arc::clone(net),
    });
    let storage = open_storage(Arc::new(disk.clone()));
    let storage = if config.witness {
        NodeStorage::new_witness(storage.store().clone())
    } else {
        storage
    };
    let host = metro_fabric::host::VolumeHost::new(config, storage, transport);
    let _ = slot.0.set(Arc::clone(&host));
    host
}

/// Polls `probe` every 50 ms until it answers; panics naming `what` after
/// `wait`.
pub async fn eventually<T, F, Fut>(what: &str, wait: std::time::Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {wait:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A host configuration for `id` among `nodes` whose groups snapshot every
/// `every` entries and keep only 5 entries behind a snapshot, so that a
/// host that falls behind catches up from an installed snapshot.
pub fn snapshotting_config(
    id: NodeId,
    nodes: impl IntoIterator<Item = NodeId>,
    every: u64,
) -> metro_fabric::host::HostConfig {
    let mut config = metro_fabric::host::HostConfig::new(id, nodes).expect("host config");
    let mut raft = (*config.raft).clone();
    raft.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(every);
    raft.max_in_snapshot_log_to_keep = 5;
    raft.purge_batch_size = 1;
    config.raft = Arc::new(raft.validate().expect("raft config"));
    config
}

/// Retries `op` for up to `wait` while it fails with what passes (no
/// leader yet, a peer unreachable, a failed try); panics naming `what`
/// on any other error or when the time is up.
pub async fn retry_host<V, F, Fut>(what: &str, wait: std::time::Duration, mut op: F) -> V
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<V, metro_fabric::host::HostError>>,
{
    use metro_fabric::host::HostError;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match op().await {
            Ok(value) => return value,
            Err(
                err @ (HostError::NoLeader(_) | HostError::Peer { .. } | HostError::Failed { .. }),
            ) if tokio::time::Instant::now() < deadline => {
                eprintln!("{what}: retrying: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(err) => panic!("{what}: {err}"),
        }
    }
}
