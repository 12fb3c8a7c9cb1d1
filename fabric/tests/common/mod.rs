//! Hand-written fakes for the Raft integration tests: an in-memory
//! `Transport` (a map of request handlers, with nodes that can be cut off),
//! a minimal in-memory Raft log and a block-map state machine. The real
//! kvstore-backed storage replaces the last two later.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use futures_util::TryStreamExt;
use metro_fabric::env::{Lane, NodeId, RequestHandler, Transport, TransportError};
use metro_fabric::raft::router::VolumeRead;
use metro_fabric::raft::types::{
    Entry, EntryPayload, LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
    Vote,
};
use metro_fabric::volume::{BLOCK_BYTES, BlockData, VolumeCommand, VolumeResponse};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder};

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

/// A minimal in-memory Raft log.
#[derive(Clone, Default)]
pub struct MemLog {
    inner: Arc<Mutex<LogInner>>,
}

#[derive(Default)]
struct LogInner {
    last_purged: Option<LogId>,
    log: BTreeMap<u64, Entry>,
    committed: Option<LogId>,
    vote: Option<Vote>,
}

impl RaftLogReader<C> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(lock(&self.inner)
            .log
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(lock(&self.inner).vote)
    }
}

impl RaftLogStorage<C> for MemLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let inner = lock(&self.inner);
        let last = inner.log.values().next_back().map(|e| e.log_id());
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last.or(inner.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        lock(&self.inner).vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        lock(&self.inner).committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(lock(&self.inner).committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut inner = lock(&self.inner);
            for entry in entries {
                inner.log.insert(entry.log_id.index, entry);
            }
        }
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), io::Error> {
        let start = last.map_or(0, |id| id.index + 1);
        lock(&self.inner).log.split_off(&start);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut inner = lock(&self.inner);
        inner.log = inner.log.split_off(&(log_id.index + 1));
        inner.last_purged = Some(log_id);
        Ok(())
    }
}

/// A block-map state machine: block index -> 4 KiB block.
#[derive(Clone, Default)]
pub struct MemVolume {
    inner: Arc<Mutex<VolumeInner>>,
}

#[derive(Default)]
struct VolumeInner {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    blocks: BTreeMap<u64, Vec<u8>>,
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
}

/// The size of every test volume.
pub const VOLUME_BLOCKS: u64 = 1 << 16;

impl VolumeInner {
    fn apply(&mut self, command: &VolumeCommand) -> VolumeResponse {
        if let Some((offset, len)) = command.block_range()
            && offset
                .checked_add(len)
                .is_none_or(|end| end > VOLUME_BLOCKS)
        {
            return VolumeResponse::OutOfRange {
                size_blocks: VOLUME_BLOCKS,
            };
        }
        match command {
            VolumeCommand::Write {
                offset_blocks,
                data,
            } => {
                for (i, block) in data.blocks().enumerate() {
                    self.blocks.insert(offset_blocks + i as u64, block.to_vec());
                }
            }
            VolumeCommand::Trim {
                offset_blocks,
                len_blocks,
            }
            | VolumeCommand::WriteZeroes {
                offset_blocks,
                len_blocks,
            } => {
                let range = *offset_blocks..offset_blocks + len_blocks;
                self.blocks.retain(|index, _| !range.contains(index));
            }
            _ => {}
        }
        VolumeResponse::Applied
    }

    fn encode_blocks(&self) -> Vec<u8> {
        let mut data = Vec::new();
        for (index, block) in &self.blocks {
            data.extend_from_slice(&index.to_le_bytes());
            data.extend_from_slice(block);
        }
        data
    }

    fn decode_blocks(data: &[u8]) -> Result<BTreeMap<u64, Vec<u8>>, io::Error> {
        let record = 8 + BLOCK_BYTES;
        if !data.len().is_multiple_of(record) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "torn snapshot"));
        }
        let mut blocks = BTreeMap::new();
        for chunk in data.chunks_exact(record) {
            let mut index = [0u8; 8];
            index.copy_from_slice(&chunk[..8]);
            blocks.insert(u64::from_le_bytes(index), chunk[8..].to_vec());
        }
        Ok(blocks)
    }
}

impl MemVolume {
    /// The block at `index` as applied here (zeroes if never written).
    pub fn block(&self, index: u64) -> Vec<u8> {
        let inner = lock(&self.inner);
        inner
            .blocks
            .get(&index)
            .cloned()
            .unwrap_or_else(|| vec![0; BLOCK_BYTES])
    }
}

impl VolumeRead for MemVolume {
    async fn read_blocks(
        &mut self,
        offset_blocks: u64,
        len_blocks: u32,
    ) -> Result<BlockData, String> {
        let mut data = Vec::with_capacity(len_blocks as usize * BLOCK_BYTES);
        for index in offset_blocks..offset_blocks + u64::from(len_blocks) {
            data.extend_from_slice(&self.block(index));
        }
        BlockData::new(data).map_err(|err| err.to_string())
    }
}

impl RaftSnapshotBuilder<C> for MemVolume {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let mut inner = lock(&self.inner);
        let meta = SnapshotMeta {
            last_log_id: inner.last_applied,
            last_membership: inner.membership.clone(),
        };
        let data = inner.encode_blocks();
        inner.snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Cursor::new(data),
        })
    }
}

impl RaftStateMachine<C> for MemVolume {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let inner = lock(&self.inner);
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: futures_util::Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let mut inner = lock(&self.inner);
            inner.last_applied = Some(entry.log_id);
            let response = match &entry.payload {
                EntryPayload::Normal(command) => inner.apply(command),
                EntryPayload::Membership(membership) => {
                    inner.membership =
                        StoredMembership::new(Some(entry.log_id), membership.clone());
                    VolumeResponse::Applied
                }
                EntryPayload::Blank => VolumeResponse::Applied,
            };
            drop(inner);
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        let blocks = VolumeInner::decode_blocks(&data)?;
        let mut inner = lock(&self.inner);
        inner.blocks = blocks;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let inner = lock(&self.inner);
        Ok(inner.snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Cursor::new(data.clone()),
        }))
    }
}
