//! [`MemMetaStore`]: the in-memory model of the [`MetaStore`] contract, used
//! by `metro demo`, unit tests and the simulator.
//!
//! Time is the runtime's (`RT::Instant`, `RT::sleep_until`), so it runs on
//! virtual time under the simulator. Nothing runs in the background: lease
//! expiry is applied lazily at the start of every operation, and a waiting
//! watch (or campaign) sleeps until the next lease deadline, so expiry
//! deletions reach watchers on time even when nobody else calls the store.
//! [`MemMetaStore::tick`] applies expiry explicitly.
//!
//! Differences from etcd, all within the contract: lease expiry is exact
//! (etcd: up to ~500 ms late); history is trimmed to [`HISTORY_EVENTS_MAX`]
//! events rather than by a compaction policy; [`MemMetaStore::compact`]
//! stands in for etcd's compaction. The outage switch
//! ([`MemMetaStore::set_available`]) stands in for a down etcd: every call
//! fails as unreachable and open watches end; when it comes back, every
//! lease's TTL restarts (etcd does the same when it restarts).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::future::{self, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use openraft::{AsyncRuntime, Instant as _};
use parking_lot::Mutex;

use super::{
    Compare, ElectionStore, EventKind, KeyValue, KvStore, LEASE_TTL_MIN, Leadership, Lease,
    LeaseId, LeaseStore, MetaError, RangeResult, Result, Revision, TxnOp, TxnResult, WatchEvent,
    WatchStore, WatchStream, WriteResult, election_key, election_prefix,
};
use crate::limits::{HISTORY_EVENTS_MAX, TXN_OPS_MAX, WATCH_BATCH_MAX};

/// The first lease id granted (any nonzero value would do).
const LEASE_ID_FIRST: LeaseId = 0x1000;

/// The revision of a fresh store (as in etcd).
const REVISION_INITIAL: Revision = 1;

fn unreachable_error(reason: &str) -> MetaError {
    MetaError::Unreachable {
        reason: reason.to_owned(),
    }
}

fn failed(reason: String) -> MetaError {
    MetaError::Failed { reason }
}

/// One live lease.
struct LeaseEntry<I> {
    ttl: Duration,
    deadline: I,
    keys: BTreeSet<Vec<u8>>,
}

/// Where a candidate stands in its election.
enum Standing {
    Leading,
    Waiting,
    /// The candidate key is gone (lease expired, revoked or resigned).
    Lost,
}

/// The whole store, behind one mutex: that is what makes it linearizable.
struct State<I> {
    available: bool,
    /// Count of outages so far: a watch opened before an outage ends with it.
    outages: u64,
    revision: Revision,
    /// The oldest revision whose events are still in `history`.
    oldest: Revision,
    kvs: BTreeMap<Vec<u8>, KeyValue>,
    history: VecDeque<WatchEvent>,
    leases: BTreeMap<LeaseId, LeaseEntry<I>>,
    next_lease: LeaseId,
    /// Waiting watches, woken on every change and outage.
    wakers: Vec<Waker>,
}

impl<I: openraft::Instant> State<I> {
    fn new() -> Self {
        Self {
            available: true,
            outages: 0,
            revision: REVISION_INITIAL,
            oldest: 0,
            kvs: BTreeMap::new(),
            history: VecDeque::new(),
            leases: BTreeMap::new(),
            next_lease: LEASE_ID_FIRST,
            wakers: Vec::new(),
        }
    }

    /// Revokes every lease whose deadline has passed, earliest first.
    fn expire(&mut self, now: I) {
        loop {
            let due = self
                .leases
                .iter()
                .filter(|(_, lease)| lease.deadline <= now)
                .min_by_key(|(id, lease)| (lease.deadline, **id))
                .map(|(id, _)| *id);
            let Some(id) = due else { return };
            // Cannot fail: the lease was just found.
            let _ = self.revoke(id);
        }
    }

    fn next_deadline(&self) -> Option<I> {
        self.leases.values().map(|lease| lease.deadline).min()
    }

    fn grant(&mut self, ttl: Duration, now: I) -> Lease {
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let ttl = Duration::from_secs(secs).max(LEASE_TTL_MIN);
        let id = self.next_lease;
        self.next_lease += 1;
        let entry = LeaseEntry {
            ttl,
            deadline: now + ttl,
            keys: BTreeSet::new(),
        };
        self.leases.insert(id, entry);
        Lease { id, ttl }
    }

    fn keep_alive(&mut self, id: LeaseId, now: I) -> Result<()> {
        let lease = self
            .leases
            .get_mut(&id)
            .ok_or(MetaError::LeaseNotFound { lease: id })?;
        lease.deadline = now + lease.ttl;
        Ok(())
    }

    /// Ends lease `id`, deleting its keys at one new revision.
    fn revoke(&mut self, id: LeaseId) -> Result<()> {
        let lease = self
            .leases
            .remove(&id)
            .ok_or(MetaError::LeaseNotFound { lease: id })?;
        if !lease.keys.is_empty() {
            let revision = self.revision + 1;
            for key in &lease.keys {
                self.delete_at(key, revision);
            }
            self.revision = revision;
        }
        Ok(())
    }

    fn detach(&mut self, lease: LeaseId, key: &[u8]) {
        if let Some(entry) = self.leases.get_mut(&lease) {
            entry.keys.remove(key);
        }
    }

    /// Writes `key` at `revision` (the caller validated the lease); returns
    /// the previous value.
    fn put_at(
        &mut self,
        key: &[u8],
        value: &[u8],
        lease: Option<LeaseId>,
        revision: Revision,
    ) -> Option<KeyValue> {
        let prev = self.kvs.get(key).cloned();
        if let Some(old) = prev.as_ref().and_then(|prev| prev.lease) {
            self.detach(old, key);
        }
        if let Some(entry) = lease.and_then(|lease| self.leases.get_mut(&lease)) {
            entry.keys.insert(key.to_vec());
        }
        let kv = KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: prev.as_ref().map_or(revision, |prev| prev.create_revision),
            mod_revision: revision,
            version: prev.as_ref().map_or(1, |prev| prev.version + 1),
            lease,
        };
        self.kvs.insert(key.to_vec(), kv.clone());
        self.record(WatchEvent {
            kind: EventKind::Put,
            kv,
            prev: prev.clone(),
        });
        prev
    }

    /// Deletes `key` at `revision` if it exists; returns the previous value.
    fn delete_at(&mut self, key: &[u8], revision: Revision) -> Option<KeyValue> {
        let prev = self.kvs.remove(key)?;
        if let Some(lease) = prev.lease {
            self.detach(lease, key);
        }
        let kv = KeyValue {
            key: key.to_vec(),
            value: Vec::new(),
            create_revision: 0,
            mod_revision: revision,
            version: 0,
            lease: None,
        };
        self.record(WatchEvent {
            kind: EventKind::Delete,
            kv,
            prev: Some(prev.clone()),
        });
        Some(prev)
    }

    fn record(&mut self, event: WatchEvent) {
        let revision = event.revision();
        assert!(
            self.history
                .back()
                .is_none_or(|last| last.revision() <= revision),
            "history events come in revision order"
        );
        self.history.push_back(event);
        if self.history.len() > HISTORY_EVENTS_MAX
            && let Some(front) = self.history.front().map(WatchEvent::revision)
            && front < revision
        {
            self.compact(front + 1);
        }
    }

    /// Drops the events of revisions before `revision`.
    fn compact(&mut self, revision: Revision) {
        while self
            .history
            .front()
            .is_some_and(|event| event.revision() < revision)
        {
            self.history.pop_front();
        }
        self.oldest = self.oldest.max(revision);
    }

    fn range(&self, prefix: &[u8]) -> Vec<KeyValue> {
        self.kvs
            .range(prefix.to_vec()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect()
    }

    fn check_ops(&self, compares: &[Compare], ops: &[TxnOp]) -> Result<()> {
        if compares.len() > TXN_OPS_MAX || ops.len() > TXN_OPS_MAX {
            return Err(failed(format!("more than {TXN_OPS_MAX} compares or ops")));
        }
        let mut keys = BTreeSet::new();
        for op in ops {
            if op.key().is_empty() {
                return Err(failed("empty key".to_owned()));
            }
            if !keys.insert(op.key()) {
                return Err(failed("duplicate key in transaction".to_owned()));
            }
            if let TxnOp::Put {
                lease: Some(lease), ..
            } = op
                && !self.leases.contains_key(lease)
            {
                return Err(MetaError::LeaseNotFound { lease: *lease });
            }
        }
        Ok(())
    }

    /// Applies validated `ops` at one revision (bumped only if something
    /// changed); returns each op's previous value.
    fn apply(&mut self, ops: &[TxnOp]) -> Vec<Option<KeyValue>> {
        let revision = self.revision + 1;
        let mut changed = false;
        let mut prevs = Vec::with_capacity(ops.len());
        for op in ops {
            let prev = match op {
                TxnOp::Put { key, value, lease } => {
                    changed = true;
                    self.put_at(key, value, *lease, revision)
                }
                TxnOp::Delete { key } => {
                    let prev = self.delete_at(key, revision);
                    changed |= prev.is_some();
                    prev
                }
            };
            prevs.push(prev);
        }
        if changed {
            self.revision = revision;
        }
        prevs
    }

    fn write(&mut self, op: TxnOp) -> Result<WriteResult> {
        let ops = [op];
        self.check_ops(&[], &ops)?;
        let prev = self.apply(&ops).pop().flatten();
        Ok(WriteResult {
            revision: self.revision,
            prev,
        })
    }

    fn txn(&mut self, compares: &[Compare], ops: &[TxnOp]) -> Result<TxnResult> {
        self.check_ops(compares, ops)?;
        let current: Vec<Option<KeyValue>> = compares
            .iter()
            .map(|compare| self.kvs.get(&compare.key).cloned())
            .collect();
        let succeeded = compares
            .iter()
            .zip(&current)
            .all(|(compare, kv)| compare.holds(kv.as_ref()));
        if !succeeded {
            return Ok(TxnResult {
                succeeded,
                revision: self.revision,
                current,
            });
        }
        self.apply(ops);
        Ok(TxnResult {
            succeeded,
            revision: self.revision,
            current: Vec::new(),
        })
    }

    /// Appends the events under `prefix` from revision `from` on to `out`
    /// (up to [`WATCH_BATCH_MAX`], never splitting a revision); returns the
    /// revision to continue from.
    fn collect_events(
        &self,
        prefix: &[u8],
        from: Revision,
        out: &mut VecDeque<WatchEvent>,
    ) -> Revision {
        let start = self
            .history
            .partition_point(|event| event.revision() < from);
        let mut last = None;
        for event in self.history.range(start..) {
            if out.len() >= WATCH_BATCH_MAX && last != Some(event.revision()) {
                return event.revision();
            }
            if event.kv.key.starts_with(prefix) {
                out.push_back(event.clone());
            }
            last = Some(event.revision());
        }
        from.max(self.revision + 1)
    }

    fn register(&mut self, waker: &Waker) {
        if !self.wakers.iter().any(|known| known.will_wake(waker)) {
            self.wakers.push(waker.clone());
        }
    }

    /// Writes (or reuses) the candidate key; returns its create revision.
    fn campaign_enter(&mut self, key: &[u8], value: &[u8], lease: LeaseId) -> Result<Revision> {
        if let Some(kv) = self.kvs.get(key)
            && kv.value == value
        {
            return Ok(kv.create_revision);
        }
        let lease = Some(lease);
        self.write(TxnOp::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
        })?;
        Ok(self.kvs.get(key).map_or(0, |kv| kv.create_revision))
    }

    fn standing(&self, prefix: &[u8], key: &[u8], revision: Revision) -> Standing {
        if self.kvs.get(key).map(|kv| kv.create_revision) != Some(revision) {
            return Standing::Lost;
        }
        let older = self
            .range(prefix)
            .iter()
            .any(|kv| kv.create_revision < revision);
        if older {
            Standing::Waiting
        } else {
            Standing::Leading
        }
    }

    fn resign(&mut self, key: &[u8], revision: Revision) {
        if self
            .kvs
            .get(key)
            .is_some_and(|kv| kv.create_revision == revision)
        {
            let revision = self.revision + 1;
            self.delete_at(key, revision);
            self.revision = revision;
        }
    }
}

/// The in-memory [`MetaStore`] model on runtime `RT`'s clock. Clones share
/// one store (like clients of one etcd).
pub struct MemMetaStore<RT: AsyncRuntime> {
    state: Arc<Mutex<State<RT::Instant>>>,
}

impl<RT: AsyncRuntime> Clone for MemMetaStore<RT> {
    fn clone(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
        }
    }
}

impl<RT: AsyncRuntime> fmt::Debug for MemMetaStore<RT> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("MemMetaStore")
            .field("available", &state.available)
            .field("revision", &state.revision)
            .field("keys", &state.kvs.len())
            .field("leases", &state.leases.len())
            .finish_non_exhaustive()
    }
}

impl<RT: AsyncRuntime> Default for MemMetaStore<RT> {
    fn default() -> Self {
        Self::new()
    }
}

impl<RT: AsyncRuntime> MemMetaStore<RT> {
    /// An empty, available store at revision 1.
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(State::new())),
        }
    }

    /// Runs `f` on the store after applying lease expiry, failing as
    /// unreachable during an outage; wakes waiting watches if the revision
    /// moved.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut State<RT::Instant>, RT::Instant) -> Result<T>,
    ) -> Result<T> {
        let now = RT::Instant::now();
        let mut state = self.state.lock();
        if !state.available {
            return Err(unreachable_error("membership store outage (switched off)"));
        }
        let before = state.revision;
        state.expire(now);
        let out = f(&mut state, now);
        let wakers = if state.revision != before {
            std::mem::take(&mut state.wakers)
        } else {
            Vec::new()
        };
        drop(state);
        wakers.into_iter().for_each(Waker::wake);
        out
    }

    /// The outage switch: while off, every call fails with
    /// [`MetaError::Unreachable`] and open watches end. Switching back
    /// on restarts every lease's TTL, as an etcd restart does.
    pub fn set_available(&self, available: bool) {
        let now = RT::Instant::now();
        let mut state = self.state.lock();
        if state.available == available {
            return;
        }
        state.available = available;
        if available {
            for lease in state.leases.values_mut() {
                lease.deadline = now + lease.ttl;
            }
        } else {
            state.outages += 1;
        }
        let wakers = std::mem::take(&mut state.wakers);
        drop(state);
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Whether the outage switch is on (the store is reachable).
    pub fn is_available(&self) -> bool {
        self.state.lock().available
    }

    /// Applies lease expiry now (operations also do it on their own).
    pub fn tick(&self) {
        let _ = self.with(|_, _| Ok(()));
    }

    /// The current revision, regardless of the outage switch.
    pub fn revision(&self) -> Revision {
        self.state.lock().revision
    }

    /// Forgets the history before `revision` (etcd's compaction): watches
    /// starting earlier fail with [`MetaError::Compacted`].
    pub fn compact(&self, revision: Revision) {
        let mut state = self.state.lock();
        let revision = revision.min(state.revision + 1);
        state.compact(revision);
    }

    fn open_watch(&self, prefix: &[u8], start: Option<Revision>) -> Result<MemWatch<RT>> {
        let (outages, next_revision) = self.with(|state, _| {
            let next = start.unwrap_or(state.revision + 1);
            if next < state.oldest {
                return Err(MetaError::Compacted {
                    revision: state.oldest,
                });
            }
            Ok((state.outages, next.max(1)))
        })?;
        Ok(MemWatch {
            membership: self.clone(),
            prefix: prefix.to_vec(),
            next_revision,
            outages,
            pending: VecDeque::new(),
            ended: None,
            timer: None,
        })
    }

    async fn campaign_inner(
        &self,
        election: &str,
        value: &[u8],
        lease: LeaseId,
    ) -> Result<Leadership> {
        let prefix = election_prefix(election);
        let key = election_key(election, lease);
        let (revision, current) =
            self.with(|state, _| Ok((state.campaign_enter(&key, value, lease)?, state.revision)))?;
        let mut candidacy = Candidacy {
            membership: self.clone(),
            key,
            revision,
            won: false,
        };
        let mut watch = self.open_watch(&prefix, Some(current + 1))?;
        loop {
            match self.with(|state, _| Ok(state.standing(&prefix, &candidacy.key, revision)))? {
                Standing::Leading => break,
                Standing::Waiting => {}
                Standing::Lost => return Err(MetaError::LeaseNotFound { lease }),
            }
            watch.next().await?;
        }
        candidacy.won = true;
        Ok(Leadership {
            election: election.to_owned(),
            key: candidacy.key.clone(),
            revision,
            lease,
        })
    }
}

/// Withdraws a candidacy whose campaign ended without winning (failed or
/// dropped), as etcd's server does when the campaign call is cancelled.
struct Candidacy<RT: AsyncRuntime> {
    membership: MemMetaStore<RT>,
    key: Vec<u8>,
    revision: Revision,
    won: bool,
}

impl<RT: AsyncRuntime> Drop for Candidacy<RT> {
    fn drop(&mut self) {
        if !self.won {
            let _ = self.membership.with(|state, _| {
                state.resign(&self.key, self.revision);
                Ok(())
            });
        }
    }
}

impl<RT: AsyncRuntime> KvStore for MemMetaStore<RT> {
    fn get(&self, key: &[u8]) -> impl Future<Output = Result<Option<KeyValue>>> + Send {
        future::ready(self.with(|state, _| Ok(state.kvs.get(key).cloned())))
    }

    fn range(&self, prefix: &[u8]) -> impl Future<Output = Result<RangeResult>> + Send {
        let result = self.with(|state, _| {
            Ok(RangeResult {
                kvs: state.range(prefix),
                revision: state.revision,
            })
        });
        future::ready(result)
    }

    fn put(
        &self,
        key: &[u8],
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> impl Future<Output = Result<WriteResult>> + Send {
        let op = TxnOp::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
        };
        future::ready(self.with(|state, _| state.write(op)))
    }

    fn delete(&self, key: &[u8]) -> impl Future<Output = Result<WriteResult>> + Send {
        let op = TxnOp::Delete { key: key.to_vec() };
        future::ready(self.with(|state, _| state.write(op)))
    }

    fn txn(
        &self,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> impl Future<Output = Result<TxnResult>> + Send {
        future::ready(self.with(|state, _| state.txn(&compares, &ops)))
    }
}

impl<RT: AsyncRuntime> LeaseStore for MemMetaStore<RT> {
    fn grant(&self, ttl: Duration) -> impl Future<Output = Result<Lease>> + Send {
        future::ready(self.with(|state, now| Ok(state.grant(ttl, now))))
    }

    fn keep_alive_once(&self, lease: LeaseId) -> impl Future<Output = Result<()>> + Send {
        future::ready(self.with(|state, now| state.keep_alive(lease, now)))
    }

    fn revoke(&self, lease: LeaseId) -> impl Future<Output = Result<()>> + Send {
        future::ready(self.with(|state, _| state.revoke(lease)))
    }
}

impl<RT: AsyncRuntime> WatchStore for MemMetaStore<RT> {
    type Watch = MemWatch<RT>;

    fn watch(
        &self,
        prefix: &[u8],
        start: Option<Revision>,
    ) -> impl Future<Output = Result<Self::Watch>> + Send {
        future::ready(self.open_watch(prefix, start))
    }
}

impl<RT: AsyncRuntime> ElectionStore for MemMetaStore<RT> {
    fn campaign(
        &self,
        election: &str,
        value: &[u8],
        lease: LeaseId,
    ) -> impl Future<Output = Result<Leadership>> + Send {
        self.campaign_inner(election, value, lease)
    }

    fn resign(&self, leadership: &Leadership) -> impl Future<Output = Result<()>> + Send {
        let result = self.with(|state, _| {
            state.resign(&leadership.key, leadership.revision);
            Ok(())
        });
        future::ready(result)
    }

    fn leader(&self, election: &str) -> impl Future<Output = Result<Option<KeyValue>>> + Send {
        let prefix = election_prefix(election);
        let result = self.with(|state, _| {
            Ok(state
                .range(&prefix)
                .into_iter()
                .min_by_key(|kv| kv.create_revision))
        });
        future::ready(result)
    }
}

/// A sleep until a lease deadline, with that deadline.
type Timer<RT> = (
    <RT as AsyncRuntime>::Instant,
    Pin<Box<<RT as AsyncRuntime>::Sleep>>,
);

/// A watch on a [`MemMetaStore`]: a cursor over the store's history.
pub struct MemWatch<RT: AsyncRuntime> {
    membership: MemMetaStore<RT>,
    prefix: Vec<u8>,
    /// The revision to continue reading history from.
    next_revision: Revision,
    /// The store's outage count when the watch opened.
    outages: u64,
    pending: VecDeque<WatchEvent>,
    ended: Option<MetaError>,
    /// Sleeps until the next lease deadline, when expiry may produce events.
    timer: Option<Timer<RT>>,
}

impl<RT: AsyncRuntime> fmt::Debug for MemWatch<RT> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemWatch")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("next_revision", &self.next_revision)
            .field("pending", &self.pending.len())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl<RT: AsyncRuntime> MemWatch<RT> {
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Result<WatchEvent>> {
        if let Some(event) = self.pending.pop_front() {
            return Poll::Ready(Ok(event));
        }
        if let Some(error) = &self.ended {
            return Poll::Ready(Err(error.clone()));
        }
        let polled = self.membership.with(|state, _| {
            if state.outages != self.outages {
                return Err(unreachable_error(
                    "watch ended by a membership store outage",
                ));
            }
            if self.next_revision < state.oldest {
                return Err(MetaError::Compacted {
                    revision: state.oldest,
                });
            }
            self.next_revision =
                state.collect_events(&self.prefix, self.next_revision, &mut self.pending);
            if self.pending.is_empty() {
                state.register(cx.waker());
            }
            Ok(state.next_deadline())
        });
        match polled {
            Err(error) => {
                self.ended = Some(error.clone());
                Poll::Ready(Err(error))
            }
            Ok(deadline) => match self.pending.pop_front() {
                Some(event) => Poll::Ready(Ok(event)),
                None => {
                    self.arm_timer(deadline, cx);
                    Poll::Pending
                }
            },
        }
    }

    /// Makes sure this task is woken at the next lease deadline.
    fn arm_timer(&mut self, deadline: Option<RT::Instant>, cx: &mut Context<'_>) {
        let Some(deadline) = deadline else {
            self.timer = None;
            return;
        };
        if self
            .timer
            .as_ref()
            .is_none_or(|(armed, _)| *armed != deadline)
        {
            self.timer = Some((deadline, Box::pin(RT::sleep_until(deadline))));
        }
        if let Some((_, sleep)) = &mut self.timer
            && sleep.as_mut().poll(cx).is_ready()
        {
            self.timer = None;
            cx.waker().wake_by_ref();
        }
    }
}

impl<RT: AsyncRuntime> WatchStream for MemWatch<RT> {
    fn next(&mut self) -> impl Future<Output = Result<WatchEvent>> + Send {
        future::poll_fn(|cx| self.poll_event(cx))
    }
}
