//! [`LogStore`]: openraft's `RaftLogStorage` for one group, in kvstore.
//!
//! Layout: entry `i` under key `i` of the group's
//! [`KIND_RAFT_LOG`](super::namespaces::KIND_RAFT_LOG) namespace
//! (`codec::encode_entry`); vote, committed and last purged log id under
//! [`KIND_RAFT_META`](super::namespaces::KIND_RAFT_META).
//!
//! Operations, their atomicity and durability:
//! - `append`: all entries of one call are one batch (atomic). The call
//!   returns once they are queued (it waits, without blocking a thread,
//!   while kvstore's queue is full) and kept in an in-memory tail, so a
//!   [`LogReader`] sees them at once; openraft's `IOFlushed` callback runs
//!   from the kvstore completion, after the fdatasync that made them
//!   durable. When its batch is durable a tail entry moves to the *recent*
//!   cache: the last durable entries (at most [`RECENT_ENTRIES_MAX`] and
//!   about [`RECENT_BYTES_MAX`] bytes), which the state machine's apply and
//!   the replication streams read without going back to kvstore (no scan,
//!   `pread`, CRC check and decode per entry). The tail and the cache
//!   together always hold a contiguous run of the log's last entries.
//! - `truncate_after`: one `delete_range` batch; durable on return. Until
//!   it is, readers hide the truncated entries still visible in kvstore.
//! - `purge`: one batch deleting the prefix and recording the last purged
//!   log id; durable on return.
//! - `save_vote`: one batch; durable on return (openraft requires it).
//! - `save_committed`: kept in memory and written with the next write of
//!   this log (openraft treats it as optional). So the committed log id
//!   read back after a crash may lag: a restarted leader must campaign
//!   again instead of resuming its term (`host::base_raft_config`).
//!
//! Every write carries the state machine's pending apply changes in front
//! of it (see [`ApplyRider`]): a replicated batch costs one fdatasync.
//!
//! A failed write poisons the kvstore; this store then fails every call.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use metro_kvstore::{Store, WriteBatch};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{AsyncRuntime, OptionalSend, RaftLogReader};
use parking_lot::{Mutex, MutexGuard};

use super::StorageError;
use super::codec::{decode_entry, decode_log_id, decode_vote, encode_entry};
use super::codec::{encode_log_id, encode_vote};
use super::durable::{Durable, submit_then};
use super::namespaces::{GroupNamespaces, RAFT_KEY_COMMITTED, RAFT_KEY_LAST_PURGED, RAFT_KEY_VOTE};
use super::state_machine::ApplyRider;
use crate::limits::{
    LOG_READ_BYTES_MAX, LOG_SCAN_PAGE_ENTRIES, RECENT_BYTES_MAX, RECENT_ENTRIES_MAX,
};
use crate::raft::types::{Entry, LogId, TypeConfig, Vote};
use crate::volume::VolumeId;

/// An entry held in memory, with its encoded size.
#[derive(Debug, Clone)]
struct Held {
    entry: Entry,
    bytes: u64,
}

/// What the group's log looks like now, beyond kvstore's durable view.
#[derive(Debug, Default)]
struct LogMemory {
    /// Appended entries whose batch is not durable yet, by index, with the
    /// ticket of that batch.
    tail: BTreeMap<u64, (u64, Held)>,
    /// The last durable entries, by index; contiguous, and followed by the
    /// tail's first entry when both are non-empty.
    recent: BTreeMap<u64, Held>,
    /// Encoded bytes held in `recent`.
    recent_bytes: u64,
    next_ticket: u64,
    /// The last entry in the log (not counting purged ones).
    last: Option<LogId>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    /// A truncation not yet durable: (ticket, entries above this index are
    /// gone even if kvstore still shows them).
    hide_above: Option<(u64, u64)>,
    /// A committed log id not yet written: it goes with the next write.
    unsaved_committed: Option<Option<LogId>>,
    /// Why an earlier write failed.
    failure: Option<String>,
}

impl LogMemory {
    /// Moves the entries of batch `ticket` from the tail to the recent
    /// cache (the batch is durable), then trims the cache to its bounds.
    fn made_durable(&mut self, ticket: u64) {
        let durable: Vec<u64> = self
            .tail
            .iter()
            .filter(|(_, (t, _))| *t == ticket)
            .map(|(index, _)| *index)
            .collect();
        for index in durable {
            if let Some((_, held)) = self.tail.remove(&index) {
                // Batches complete in submission order and entries are
                // appended in index order: the cache only grows at its end.
                debug_assert!(
                    self.recent
                        .keys()
                        .next_back()
                        .is_none_or(|last| *last < index)
                );
                self.recent_bytes += held.bytes;
                if let Some(old) = self.recent.insert(index, held) {
                    self.recent_bytes -= old.bytes;
                }
            }
        }
        assert!(
            self.tail.values().all(|(t, _)| *t != ticket),
            "a durable batch leaves the tail"
        );
        while self.recent.len() > RECENT_ENTRIES_MAX
            || (self.recent_bytes > RECENT_BYTES_MAX && self.recent.len() > 1)
        {
            if let Some((_, held)) = self.recent.pop_first() {
                self.recent_bytes -= held.bytes;
            }
        }
    }

    /// Drops every held entry (tail and cache) whose index fails `keep`.
    fn retain_held(&mut self, keep: impl Fn(u64) -> bool) {
        self.tail.retain(|index, _| keep(*index));
        let mut freed = 0;
        self.recent.retain(|index, held| {
            let kept = keep(*index);
            if !kept {
                freed += held.bytes;
            }
            kept
        });
        self.recent_bytes -= freed;
        assert!(
            self.recent.len() <= RECENT_ENTRIES_MAX,
            "the recent cache stays bounded"
        );
    }

    /// The first index from which every entry up to the log's end is held
    /// in memory (`u64::MAX` if none is), and the held entries in
    /// `start..end`.
    fn held_range(&self, start: u64, end: u64) -> (u64, Vec<(u64, Entry)>) {
        let first = self
            .recent
            .keys()
            .next()
            .or_else(|| self.tail.keys().next())
            .copied()
            .unwrap_or(u64::MAX);
        let mut entries: Vec<(u64, Entry)> = self
            .recent
            .range(start..end)
            .map(|(index, held)| (*index, held.entry.clone()))
            .collect();
        entries.extend(
            self.tail
                .range(start..end)
                .map(|(index, (_, held))| (*index, held.entry.clone())),
        );
        (first, entries)
    }
}

#[derive(Debug)]
struct LogShared {
    store: Store,
    ns: GroupNamespaces,
    memory: Mutex<LogMemory>,
    /// The group's state machine's pending apply changes, if attached.
    rider: Option<ApplyRider>,
}

impl LogShared {
    fn memory(&self) -> MutexGuard<'_, LogMemory> {
        self.memory.lock()
    }

    /// Submits the ops `fill` adds (about `fill_bytes` bytes) in one batch,
    /// after the pending committed id and the state machine's pending apply
    /// changes; `hook` runs on completion.
    fn submit(
        &self,
        fill_bytes: usize,
        fill: impl FnOnce(&mut WriteBatch),
        hook: impl FnOnce(&Result<u64, metro_kvstore::StoreError>) + Send + 'static,
    ) -> Durable {
        let committed = self.memory().unsaved_committed.take();
        let ns = self.ns.raft_meta();
        let fill = move |batch: &mut WriteBatch| {
            match committed {
                Some(Some(id)) => batch.put(ns, RAFT_KEY_COMMITTED, encode_log_id(&id)),
                Some(None) => batch.delete(ns, RAFT_KEY_COMMITTED),
                None => batch,
            };
            fill(batch);
        };
        match &self.rider {
            Some(rider) => rider.submit(fill_bytes, fill, hook),
            None => {
                let mut batch = WriteBatch::new();
                fill(&mut batch);
                submit_then(&self.store, batch, hook)
            }
        }
    }

    fn check(&self) -> Result<(), StorageError> {
        match &self.memory().failure {
            Some(why) => Err(StorageError::Failed(why.clone())),
            None => Ok(()),
        }
    }
}

/// The Raft log of one volume group. Cheap to clone (shared state).
pub struct LogStore<RT> {
    shared: Arc<LogShared>,
    _runtime: PhantomData<fn() -> RT>,
}

/// A reader of the same log, for openraft's replication tasks.
pub struct LogReader<RT> {
    shared: Arc<LogShared>,
    _runtime: PhantomData<fn() -> RT>,
}

impl<RT> Clone for LogStore<RT> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            _runtime: PhantomData,
        }
    }
}

impl<RT> Debug for LogStore<RT> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogStore({})", self.shared.ns.volume)
    }
}

impl<RT> Debug for LogReader<RT> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogReader({})", self.shared.ns.volume)
    }
}

fn meta_value(
    store: &Store,
    ns: &GroupNamespaces,
    key: u64,
) -> Result<Option<Vec<u8>>, StorageError> {
    Ok(store.get(ns.raft_meta(), key)?)
}

impl<RT: AsyncRuntime> LogStore<RT> {
    /// Opens `volume`'s log from `store`: reads the vote, committed and last
    /// purged log ids and finds the last entry (a binary search of
    /// one-entry scans: the log is contiguous).
    pub fn open(store: Store, volume: VolumeId) -> Result<Self, StorageError> {
        Self::open_with(store, volume, None)
    }

    /// Like [`Self::open`], its writes carrying `rider`'s pending changes.
    pub(crate) fn open_with(
        store: Store,
        volume: VolumeId,
        rider: Option<ApplyRider>,
    ) -> Result<Self, StorageError> {
        let ns = GroupNamespaces::new(volume);
        let vote = meta_value(&store, &ns, RAFT_KEY_VOTE)?
            .map(|bytes| decode_vote(RAFT_KEY_VOTE, &bytes))
            .transpose()?;
        let committed = meta_value(&store, &ns, RAFT_KEY_COMMITTED)?
            .map(|bytes| decode_log_id(RAFT_KEY_COMMITTED, &bytes))
            .transpose()?;
        let last_purged = meta_value(&store, &ns, RAFT_KEY_LAST_PURGED)?
            .map(|bytes| decode_log_id(RAFT_KEY_LAST_PURGED, &bytes))
            .transpose()?;
        let last = find_last::<RT>(&store, &ns)?;
        let memory = LogMemory {
            last,
            last_purged,
            vote,
            committed,
            ..LogMemory::default()
        };
        let shared = LogShared {
            store,
            ns,
            memory: Mutex::new(memory),
            rider,
        };
        Ok(Self {
            shared: Arc::new(shared),
            _runtime: PhantomData,
        })
    }

    fn reader(&self) -> LogReader<RT> {
        LogReader {
            shared: Arc::clone(&self.shared),
            _runtime: PhantomData,
        }
    }
}

/// The last entry of the log in kvstore, if any.
fn find_last<RT: AsyncRuntime>(
    store: &Store,
    ns: &GroupNamespaces,
) -> Result<Option<LogId>, StorageError> {
    let first_at = |from: u64| -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        Ok(store.scan(ns.raft_log(), from..u64::MAX, 1)?.pop())
    };
    let Some((mut low, mut value)) = first_at(0)? else {
        return Ok(None);
    };
    // Invariant: key `low` exists (its value in `value`); no key >= `high`.
    let mut high = u64::MAX;
    while high - low > 1 {
        assert!(low < high, "the search interval is never empty");
        let mid = low + (high - low) / 2;
        match first_at(mid)? {
            Some((key, found)) => {
                low = key;
                value = found;
            }
            None => high = mid,
        }
    }
    Ok(Some(decode_entry::<RT>(ns.volume, low, &value)?.log_id))
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl LogShared {
    /// Entries in `start..end`, stopping early after about `bytes_max`
    /// bytes: those held in memory (tail and recent cache), and the older
    /// ones from kvstore.
    fn read<RT: AsyncRuntime>(
        &self,
        start: u64,
        end: u64,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let (held_from, held, hide_above, purged) = {
            let memory = self.memory();
            if let Some(why) = &memory.failure {
                return Err(StorageError::Failed(why.clone()));
            }
            let (held_from, held) = memory.held_range(start, end);
            (
                held_from,
                held,
                memory.hide_above.map(|(_, above)| above),
                memory.last_purged,
            )
        };
        let start = purged.map_or(start, |p| start.max(p.index.saturating_add(1)));
        let mut entries = BTreeMap::new();
        let mut bytes = 0u64;
        let mut from = start;
        // Everything from `held_from` on is in memory: kvstore is read only
        // below it.
        let end_scan = end.min(held_from);
        while from < end_scan && bytes <= bytes_max {
            let page =
                self.store
                    .scan(self.ns.raft_log(), from..end_scan, LOG_SCAN_PAGE_ENTRIES)?;
            let full = page.len() == LOG_SCAN_PAGE_ENTRIES;
            for (index, value) in page {
                from = index + 1;
                if hide_above.is_some_and(|above| index > above) {
                    continue;
                }
                bytes += value.len() as u64;
                entries.insert(index, decode_entry::<RT>(self.ns.volume, index, &value)?);
            }
            if !full {
                break;
            }
        }
        entries.extend(held.into_iter().filter(|(index, _)| *index >= start));
        let mut out = Vec::with_capacity(entries.len());
        // No holes: from the first entry found, stop at the first gap.
        let first = entries.keys().next().copied().unwrap_or(start);
        for (expected, (index, entry)) in (first..).zip(entries) {
            if index != expected {
                break;
            }
            assert_eq!(entry.log_id.index, index, "an entry sits at its own index");
            out.push(entry);
        }
        Ok(out)
    }
}

impl<RT: AsyncRuntime> RaftLogReader<TypeConfig<RT>> for LogReader<RT> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = bounds(&range);
        Ok(self.shared.read::<RT>(start, end, u64::MAX)?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.shared.check()?;
        Ok(self.shared.memory().vote)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self.shared.read::<RT>(start, end, LOG_READ_BYTES_MAX)?)
    }
}

impl<RT: AsyncRuntime> RaftLogReader<TypeConfig<RT>> for LogStore<RT> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.reader().try_get_log_entries(range).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.reader().read_vote().await
    }
}

/// Records a failed write so that every later call fails too.
fn note_failure(shared: &LogShared, result: &Result<u64, metro_kvstore::StoreError>) {
    if let Err(err) = result {
        shared
            .memory()
            .failure
            .get_or_insert_with(|| err.to_string());
    }
}

impl<RT: AsyncRuntime> RaftLogStorage<TypeConfig<RT>> for LogStore<RT> {
    type LogReader = LogReader<RT>;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig<RT>>, io::Error> {
        self.shared.check()?;
        let memory = self.shared.memory();
        Ok(LogState {
            last_purged_log_id: memory.last_purged,
            last_log_id: memory.last.or(memory.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.shared.check()?;
        let ns = self.shared.ns.raft_meta();
        let value = encode_vote(vote);
        let shared = Arc::clone(&self.shared);
        self.shared
            .submit(
                value.len() + 64,
                |batch| {
                    batch.put(ns, RAFT_KEY_VOTE, value);
                },
                move |r| note_failure(&shared, r),
            )
            .await
            .map_err(StorageError::from)?;
        let mut memory = self.shared.memory();
        assert!(
            memory
                .vote
                .is_none_or(|old| old.leader_id().term <= vote.leader_id().term),
            "vote terms never decrease"
        );
        memory.vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.shared.check()?;
        // Written with the next write: see the module docs.
        let mut memory = self.shared.memory();
        assert!(
            memory
                .committed
                .is_none_or(|old| committed.is_some_and(|c| old.index <= c.index)),
            "committed never moves back"
        );
        let end = memory.last.or(memory.last_purged);
        assert!(
            committed.is_none_or(|c| end.is_some_and(|e| c.index <= e.index)),
            "committed within the log"
        );
        assert!(
            memory
                .last_purged
                .is_none_or(|p| committed.is_some_and(|c| p.index <= c.index)),
            "purged entries are committed"
        );
        memory.unsaved_committed = Some(committed);
        memory.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        self.shared.check()?;
        Ok(self.shared.memory().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig<RT>>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.shared.check()?;
        let ns = self.shared.ns;
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        let mut encoded = Vec::with_capacity(entries.len());
        let mut sizes = Vec::with_capacity(entries.len());
        let mut bytes = 0;
        for entry in &entries {
            let value = encode_entry::<RT>(ns.volume, entry)?;
            bytes += value.len() + 64;
            sizes.push(value.len() as u64);
            encoded.push((entry.log_id.index, value));
        }
        let fill = move |batch: &mut WriteBatch| {
            for (index, value) in encoded {
                batch.put(ns.raft_log(), index, value);
            }
        };
        let ticket = {
            let mut memory = self.shared.memory();
            let ticket = memory.next_ticket;
            memory.next_ticket += 1;
            let mut prev = memory.last.or(memory.last_purged);
            for (entry, bytes) in entries.into_iter().zip(sizes) {
                let id = entry.log_id;
                if let Some(prev) = prev {
                    assert_eq!(id.index, prev.index + 1, "log appends are contiguous");
                    assert!(id.leader_id >= prev.leader_id, "log terms never decrease");
                }
                assert!(
                    memory.committed.is_none_or(|c| c.index < id.index),
                    "an append never rewrites a committed entry"
                );
                prev = Some(id);
                let held = Held { entry, bytes };
                memory.tail.insert(held.entry.log_id.index, (ticket, held));
            }
            assert_eq!(prev, Some(last), "the batch ends at its last entry");
            memory.last = Some(last);
            ticket
        };
        let shared = Arc::clone(&self.shared);
        let durable = self.shared.submit(bytes, fill, move |result| {
            note_failure(&shared, result);
            {
                let mut memory = shared.memory();
                if result.is_ok() {
                    memory.made_durable(ticket);
                } else {
                    memory.tail.retain(|_, (t, _)| *t != ticket);
                }
            }
            let flushed = match result {
                Ok(_) => Ok(()),
                Err(err) => Err(io::Error::other(err.to_string())),
            };
            callback.io_completed(flushed);
        });
        // The callback reports durability; wait only while the batch is in
        // line behind kvstore's full queue (backpressure, never a blocked
        // thread).
        durable.queued().await;
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), io::Error> {
        self.shared.check()?;
        let from = last.map_or(0, |id| id.index + 1);
        let ticket = {
            let mut memory = self.shared.memory();
            assert!(
                memory.committed.is_none_or(|c| c.index < from),
                "truncation never removes a committed entry"
            );
            let ticket = memory.next_ticket;
            memory.next_ticket += 1;
            memory.retain_held(|index| index < from);
            memory.hide_above = Some((ticket, from.saturating_sub(1)));
            let purged = memory.last_purged;
            // Only a log reaching past `last` changes its end.
            if memory.last.is_some_and(|cur| cur.index >= from) {
                memory.last = last.filter(|id| purged.is_none_or(|p| id.index > p.index));
            }
            ticket
        };
        let log_ns = self.shared.ns.raft_log();
        let fill = move |batch: &mut WriteBatch| {
            batch.delete_range(log_ns, from, u64::MAX);
        };
        let shared = Arc::clone(&self.shared);
        self.shared
            .submit(64, fill, move |result| {
                note_failure(&shared, result);
                let mut memory = shared.memory();
                if memory.hide_above.is_some_and(|(t, _)| t == ticket) && result.is_ok() {
                    memory.hide_above = None;
                }
            })
            .await
            .map_err(StorageError::from)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.shared.check()?;
        let ns = self.shared.ns;
        let fill = move |batch: &mut WriteBatch| {
            batch
                .delete_range(ns.raft_log(), 0, log_id.index.saturating_add(1))
                .put(ns.raft_meta(), RAFT_KEY_LAST_PURGED, encode_log_id(&log_id));
        };
        {
            let mut memory = self.shared.memory();
            assert!(
                memory.last_purged.is_none_or(|p| p.index <= log_id.index),
                "purges move forward"
            );
            memory.retain_held(|index| index > log_id.index);
            memory.last_purged = Some(log_id);
            if memory.last.is_some_and(|last| last.index <= log_id.index) {
                memory.last = None;
            }
        }
        let shared = Arc::clone(&self.shared);
        self.shared
            .submit(128, fill, move |r| note_failure(&shared, r))
            .await
            .map_err(StorageError::from)?;
        Ok(())
    }
}
