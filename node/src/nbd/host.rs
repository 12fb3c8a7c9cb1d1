//! [`HostBackend`]: the NBD frontend's [`BlockBackend`] over a node's
//! [`VolumeHost`](metro_fabric::host::VolumeHost), so that unmodified NBD
//! clients (qemu, nbd-client, fio) read and write replicated volumes.
//!
//! # Exports
//! - Named exports come from a registry the node keeps (filled by the
//!   daemon or the demo): [`HostBackend::with_export`] maps a name to a
//!   [`VolumeId`] and its size. A registered volume need not have a replica
//!   on this node: every export is readable and writable from any node,
//!   because the host forwards each operation to the volume's leader.
//! - Every volume with a replica here is also exported under its canonical
//!   name (`vol-<id>`, [`VolumeId`]'s `Display`) unless the registry already
//!   names it.
//!
//! # Contract
//! - Writes, trims and write-zeroes resolve once the volume's Raft group has
//!   committed them on a majority of its voters (fsynced there) and applied
//!   them; reads are linearizable (the leader confirms its leadership and
//!   reads at or after that index). So **FLUSH is a no-op by construction**:
//!   every acknowledged write is already durable on a majority of replicas.
//! - Transient failures (no leader during an election, an unreachable peer)
//!   are retried with backoff for up to [`IO_RETRY_BUDGET_MS`], like a disk
//!   that stalls during a path failover; then the request fails with
//!   [`BackendError::Unavailable`].
//! - Writes, trims and write-zeroes are exactly-once: each NBD connection
//!   holds a client session on the volume ([`SessionSlot`]) and every
//!   retry of a request carries the request's id, so a delivery that
//!   arrives late (after the retry was acknowledged and the block was
//!   overwritten) is not applied again (`storage/sessions.rs` in fabric).
//! - Errors map by what the client should do: [`HostError::Invalid`] and
//!   refusals are [`BackendError::Invalid`], a full host is
//!   [`BackendError::NoSpace`], storage failures are [`BackendError::Io`],
//!   everything retryable is [`BackendError::Unavailable`].
//! - Reads are split at [`READ_BLOCKS_MAX`] and writes at
//!   [`WRITE_BLOCKS_MAX`] blocks (the NBD server already bounds requests to
//!   [`VOLUME_IO_BYTES_MAX`](crate::limits::VOLUME_IO_BYTES_MAX)).
//! - Every read and write is recorded in the backend's
//!   [`NodeMetrics`] (operations, bytes, errors, latency as the client saw
//!   it, retries included) for `/metrics`.
//! - [`HostBackend::close`] (when the node stops) makes every later
//!   operation fail at once with [`BackendError::Unavailable`], so open NBD
//!   connections never touch a stopped node's host again.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metro_fabric::backoff::Backoff;
use metro_fabric::host::HostError;
use metro_fabric::limits::{READ_BLOCKS_MAX, WRITE_BLOCKS_MAX};
use metro_fabric::volume::{BLOCK_BYTES_U64, BlockData, VolumeCommand, VolumeId, VolumeResponse};
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use crate::admin::metrics::{NodeMetrics, VolumeIo};
use crate::client::session::{Sent, SessionSlot};
use crate::daemon::NodeHost;
use crate::limits::{
    EXPORTS_MAX, IO_RETRY_BACKOFF_MAX_MS, IO_RETRY_BACKOFF_MIN_MS, IO_RETRY_BUDGET_MS,
};
use crate::nbd::{BackendError, BlockBackend, BoxFuture, ExportInfo, NbdServer, Volume};

/// One registered export.
#[derive(Debug, Clone, Copy)]
struct Export {
    volume: VolumeId,
    size_bytes: u64,
}

impl Export {
    /// The export of `volume` as `name`, if the name and size are valid.
    fn checked(name: &str, volume: VolumeId, size_bytes: u64) -> Result<Self, ExportError> {
        if name.is_empty() || name.len() > crate::limits::EXPORT_NAME_BYTES_MAX {
            return Err(ExportError::BadName(name.to_owned()));
        }
        if size_bytes == 0 || !size_bytes.is_multiple_of(BLOCK_BYTES_U64) {
            return Err(ExportError::BadSize(size_bytes));
        }
        Ok(Self { volume, size_bytes })
    }
}

/// What the backend and its open volumes share.
#[derive(Debug)]
struct Shared {
    host: Arc<NodeHost>,
    closed: AtomicBool,
    metrics: Arc<NodeMetrics>,
}

/// NBD exports backed by a node's volume host. See the module docs.
#[derive(Debug)]
pub struct HostBackend {
    shared: Arc<Shared>,
    exports: Mutex<BTreeMap<String, Export>>,
}

/// Why an export could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("export name {0:?} must be 1..={max} bytes", max = crate::limits::EXPORT_NAME_BYTES_MAX)]
    BadName(String),
    #[error("export size {0} is not a positive multiple of {BLOCK_BYTES_U64} bytes")]
    BadSize(u64),
    #[error("at most {EXPORTS_MAX} exports")]
    TooMany,
}

impl HostBackend {
    /// A backend exporting the volumes hosted on `host` (see the module docs).
    pub fn new(host: Arc<NodeHost>) -> Self {
        Self {
            shared: Arc::new(Shared {
                host,
                closed: AtomicBool::new(false),
                metrics: NodeMetrics::new(),
            }),
            exports: Mutex::new(BTreeMap::new()),
        }
    }

    /// The same backend recording its I/O into `metrics` (shared with the
    /// node's admin endpoint); call before serving.
    pub fn with_metrics(mut self, metrics: Arc<NodeMetrics>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.metrics = metrics;
        }
        self
    }

    /// The metrics this backend records its I/O into.
    pub fn metrics(&self) -> &Arc<NodeMetrics> {
        &self.shared.metrics
    }

    /// Builder form of [`Self::add_export`]; panics on an invalid export
    /// (a programming error in the caller's constants).
    pub fn with_export(self, name: &str, volume: VolumeId, size_bytes: u64) -> Self {
        if let Err(err) = self.add_export(name, volume, size_bytes) {
            panic!("registering export {name:?}: {err}");
        }
        self
    }

    /// Exports `volume` (of `size_bytes`, whole blocks) as `name`,
    /// replacing any export of that name.
    pub fn add_export(
        &self,
        name: &str,
        volume: VolumeId,
        size_bytes: u64,
    ) -> Result<(), ExportError> {
        let export = Export::checked(name, volume, size_bytes)?;
        let mut exports = self.exports.lock();
        if exports.len() >= EXPORTS_MAX && !exports.contains_key(name) {
            return Err(ExportError::TooMany);
        }
        exports.insert(name.to_owned(), export);
        Ok(())
    }

    /// Makes the registry exactly `exports` (name, volume, size in bytes):
    /// adds and updates those, drops the others. Invalid entries are
    /// skipped with a warning (a foreign record must not stop the rest).
    pub fn sync_exports(&self, exports: impl IntoIterator<Item = (String, VolumeId, u64)>) {
        let mut wanted = BTreeMap::new();
        for (name, volume, size_bytes) in exports {
            let checked = match wanted.len() < EXPORTS_MAX {
                true => Export::checked(&name, volume, size_bytes),
                false => Err(ExportError::TooMany),
            };
            match checked {
                Ok(export) => {
                    wanted.insert(name, export);
                }
                Err(error) => tracing::warn!(%name, %error, "not exporting this volume"),
            }
        }
        *self.exports.lock() = wanted;
    }

    /// Fails every later operation at once (the node is stopping).
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
    }

    /// The size of this node's replica of `volume`, if it has one.
    async fn hosted_size_bytes(&self, volume: VolumeId) -> Option<u64> {
        let handle = self.shared.host.replica_handle(volume).await.ok()?;
        Some(handle.size_blocks() * BLOCK_BYTES_U64)
    }

    /// The registry plus the hosted volumes it does not name.
    async fn all_exports(&self) -> BTreeMap<String, Export> {
        let mut all = self.exports.lock().clone();
        for volume in self.shared.host.volumes() {
            if all.values().any(|e| e.volume == volume) {
                continue;
            }
            if let Some(size_bytes) = self.hosted_size_bytes(volume).await {
                all.insert(volume.to_string(), Export { volume, size_bytes });
            }
        }
        all
    }
}

impl BlockBackend for HostBackend {
    fn exports(&self) -> BoxFuture<'_, Vec<ExportInfo>> {
        Box::pin(async move {
            let all = self.all_exports().await;
            all.into_iter()
                .map(|(name, e)| ExportInfo {
                    name,
                    size_bytes: e.size_bytes,
                })
                .collect()
        })
    }

    fn open<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<Arc<dyn Volume>>> {
        Box::pin(async move {
            if self.shared.closed.load(Ordering::Acquire) {
                return None;
            }
            let registered = self.exports.lock().get(name).copied();
            let export = match registered {
                Some(export) => export,
                None => *self.all_exports().await.get(name)?,
            };
            let volume = HostVolume {
                io: self.shared.metrics.volume(export.volume),
                shared: Arc::clone(&self.shared),
                volume: export.volume,
                size_bytes: export.size_bytes,
                session: SessionSlot::new(),
            };
            Some(Arc::new(volume) as Arc<dyn Volume>)
        })
    }
}

/// One open export: I/O forwarded to the volume's leader by the host.
#[derive(Debug)]
struct HostVolume {
    shared: Arc<Shared>,
    io: Arc<VolumeIo>,
    volume: VolumeId,
    size_bytes: u64,
    /// This connection's exactly-once session on the volume.
    session: SessionSlot,
}

/// Whether `err` may go away by itself (retry) or will not (fail now).
fn is_transient(err: &HostError) -> bool {
    matches!(
        err,
        HostError::NoLeader(_)
            | HostError::Peer { .. }
            | HostError::Failed { .. }
            | HostError::UnknownVolume(_)
    )
}

/// Maps a host error to what the NBD server reports.
pub fn backend_error(err: HostError) -> BackendError {
    match err {
        HostError::Invalid(reason) => BackendError::Invalid(reason),
        HostError::Refused { .. } => BackendError::Invalid(err.to_string()),
        HostError::Full => BackendError::NoSpace,
        HostError::Storage(_) | HostError::Catalogue { .. } => BackendError::Io(err.to_string()),
        HostError::NoLeader(_)
        | HostError::Peer { .. }
        | HostError::Failed { .. }
        | HostError::UnknownVolume(_) => BackendError::Unavailable(err.to_string()),
    }
}

/// Byte offsets and lengths to whole blocks (the server guarantees
/// alignment; a violation is a server bug, reported as `Invalid`).
fn blocks(offset: u64, len: u64) -> Result<(u64, u64), BackendError> {
    if !offset.is_multiple_of(BLOCK_BYTES_U64) || !len.is_multiple_of(BLOCK_BYTES_U64) {
        return Err(BackendError::Invalid(format!(
            "unaligned request: {len} bytes at {offset}"
        )));
    }
    Ok((offset / BLOCK_BYTES_U64, len / BLOCK_BYTES_U64))
}

/// A jitter seed per retry loop: the volume mixed with a process-wide
/// counter, so concurrent requests do not retry in lockstep.
fn retry_seed(volume: VolumeId) -> u64 {
    static LOOPS: AtomicU64 = AtomicU64::new(0);
    volume.0.rotate_left(32) ^ LOOPS.fetch_add(1, Ordering::Relaxed)
}

impl HostVolume {
    /// Runs `op` until it succeeds, fails for good, or the retry budget
    /// is spent.
    async fn retry<T, F, Fut>(&self, mut op: F) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, HostError>>,
    {
        let deadline = Instant::now() + Duration::from_millis(IO_RETRY_BUDGET_MS);
        let mut backoff = Backoff::new(
            Duration::from_millis(IO_RETRY_BACKOFF_MIN_MS),
            Duration::from_millis(IO_RETRY_BACKOFF_MAX_MS),
            retry_seed(self.volume),
        );
        loop {
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(BackendError::Unavailable("the node is stopped".into()));
            }
            match op().await {
                Ok(value) => return Ok(value),
                Err(err) if is_transient(&err) => {
                    let delay = backoff.next_delay();
                    if Instant::now() + delay >= deadline {
                        return Err(backend_error(err));
                    }
                    tracing::debug!(volume = %self.volume, "retrying: {err}");
                    tokio::time::sleep(delay).await;
                }
                Err(err) => return Err(backend_error(err)),
            }
        }
    }

    async fn read_blocks(&self, offset: u64, len: u32) -> Result<Vec<u8>, BackendError> {
        let (mut block, count) = blocks(offset, u64::from(len))?;
        let mut out = Vec::with_capacity(len as usize);
        let end = block + count;
        while block < end {
            let step = (end - block).min(u64::from(READ_BLOCKS_MAX)) as u32;
            let host = &self.shared.host;
            let data = self.retry(|| host.read(self.volume, block, step)).await?;
            out.extend_from_slice(data.as_bytes());
            block += u64::from(step);
        }
        Ok(out)
    }

    async fn write_blocks(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let (first, _) = blocks(offset, data.len() as u64)?;
        let chunk_bytes = WRITE_BLOCKS_MAX as usize * BLOCK_BYTES_U64 as usize;
        for (i, chunk) in data.chunks(chunk_bytes).enumerate() {
            let block = first + (i * chunk_bytes) as u64 / BLOCK_BYTES_U64;
            let payload = BlockData::new(chunk.to_vec())
                .map_err(|err| BackendError::Invalid(err.to_string()))?;
            self.run_once(|| VolumeCommand::Write {
                offset_blocks: block,
                data: payload.clone(),
            })
            .await?;
        }
        Ok(())
    }

    /// Runs the block command `make` builds exactly once: one request id of
    /// this connection's session for every retry (see `client::session`).
    async fn run_once(&self, make: impl Fn() -> VolumeCommand) -> Result<(), BackendError> {
        let host = &self.shared.host;
        let register = || self.retry(|| host.register_session(self.volume));
        let make = &make;
        let send = |id| {
            self.retry(move || async move {
                match host.command_once(self.volume, id, make()).await {
                    Err(HostError::Refused {
                        response: VolumeResponse::SessionExpired { session },
                        ..
                    }) => Ok(Sent::Expired { session }),
                    Ok(_) => Ok(Sent::Done(())),
                    Err(err) => Err(err),
                }
            })
        };
        let renewed_too_often = |session, renewals| {
            BackendError::Unavailable(format!(
                "{}: session {session} expired {renewals} times in a row",
                self.volume
            ))
        };
        self.session.run(register, send, renewed_too_often).await
    }
}

impl Volume for HostVolume {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn read(&self, offset: u64, len: u32) -> BoxFuture<'_, Result<Vec<u8>, BackendError>> {
        Box::pin(async move {
            let start = Instant::now();
            let result = self.read_blocks(offset, len).await;
            let io = &self.io.reads;
            io.record(u64::from(len), start.elapsed(), result.is_ok());
            result
        })
    }

    fn write<'a>(&'a self, offset: u64, data: &'a [u8]) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let start = Instant::now();
            let result = self.write_blocks(offset, data).await;
            let io = &self.io.writes;
            io.record(data.len() as u64, start.elapsed(), result.is_ok());
            result
        })
    }

    fn trim(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let (block, count) = blocks(offset, len)?;
            self.run_once(|| VolumeCommand::Trim {
                offset_blocks: block,
                len_blocks: count,
            })
            .await
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let (block, count) = blocks(offset, len)?;
            self.run_once(|| VolumeCommand::WriteZeroes {
                offset_blocks: block,
                len_blocks: count,
            })
            .await
        })
    }

    /// A no-op: every acknowledged write is already durable on a majority.
    fn flush(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A running NBD listener over a [`HostBackend`]; stop it with
/// [`Self::stop`] (or by dropping it).
#[derive(Debug)]
pub struct NbdListener {
    /// The bound address (`nbd://ADDR/<export>`).
    pub addr: SocketAddr,
    /// The backend, to register exports while serving.
    pub backend: Arc<HostBackend>,
    task: JoinHandle<()>,
}

impl NbdListener {
    /// Binds `addr` and serves `backend` on a task.
    pub async fn start(addr: SocketAddr, backend: Arc<HostBackend>) -> io::Result<Self> {
        let server = NbdServer::bind(addr, Arc::clone(&backend) as Arc<dyn BlockBackend>)
            .await?
            .with_stats(backend.metrics().nbd());
        let addr = server.local_addr()?;
        let task = tokio::spawn(server.serve());
        tracing::info!(%addr, "NBD listening");
        Ok(Self {
            addr,
            backend,
            task,
        })
    }

    /// The URI of `export` on this listener.
    pub fn uri(&self, export: &str) -> String {
        format!("nbd://{}/{export}", self.addr)
    }

    /// Stops accepting and fails every later operation of open
    /// connections (see [`HostBackend::close`]).
    pub fn stop(&self) {
        self.backend.close();
        self.task.abort();
    }
}

impl Drop for NbdListener {
    fn drop(&mut self) {
        self.stop();
    }
}
