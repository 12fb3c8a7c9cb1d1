//! The control plane's store seam: [`MetaStore`], an etcd-shaped store of the
//! cluster's desired state, with revisions, leases, watches, compare-and-swap
//! transactions and leader election. (Not Raft's voter set: that lives in
//! each group's log.) It is four small traits, each a role a caller may need
//! alone: [`KvStore`] (reads, writes, transactions), [`LeaseStore`],
//! [`WatchStore`] and [`ElectionStore`]; [`MetaStore`] is all four. Callers
//! generic over the store type use static dispatch: there is no forwarding
//! enum. Production uses etcd (`metro_node::daemon::etcd_meta`); the
//! demo, unit tests and the simulator use [`MemMetaStore`], an in-memory
//! model with the same semantics on the runtime's clock.
//!
//! # Contract
//!
//! * **Revisions.** The store has one revision counter. Every change (a put,
//!   a delete of an existing key, a transaction that changed something, a
//!   lease revoked or expired with keys attached) increments it by exactly
//!   one; all keys written by one change share that revision as their
//!   `mod_revision`. A fresh store is at revision 1.
//! * **Linearizable.** Every call that returns `Ok` took effect atomically at
//!   one point between its start and its return, reads included. A call that
//!   fails with [`MetaError::Unreachable`] may or may not have taken
//!   effect: re-read before retrying a non-idempotent write, or make it a
//!   [`MetaStore::txn`] guarded on a revision.
//! * **Transactions.** [`MetaStore::txn`] evaluates all [`Compare`]s and, if
//!   every one holds, applies its [`TxnOp`]s at one revision. A failed
//!   comparison is a normal result (`succeeded == false`, with the compared
//!   keys' current values), never an error. A key may appear in at most one
//!   op of a transaction; at most [`TXN_OPS_MAX`](crate::limits::TXN_OPS_MAX) compares and ops.
//! * **Leases.** A lease's TTL is whole seconds, at least [`LEASE_TTL_MIN`]
//!   (shorter requests are rounded up; the granted TTL is returned). A lease
//!   expires no earlier than its TTL after its grant or last successful
//!   keep-alive, possibly somewhat later (etcd checks every 500 ms and renews
//!   every lease's TTL when it restarts or changes leader). Expiry or
//!   revocation deletes every key attached to the lease, all at one revision,
//!   visible to watches as delete events. A put without a lease detaches the
//!   key from any lease it had.
//! * **Watches.** [`MetaStore::watch`] delivers every change to keys under a
//!   prefix from a start revision (inclusive) on, in revision order (within
//!   one revision in the order the transaction wrote them), each exactly once,
//!   with the previous value when it is still in history. Delivery is pulled
//!   by [`WatchStream::next`], so a slow consumer holds back its own stream
//!   only; at most [`WATCH_BATCH_MAX`](crate::limits::WATCH_BATCH_MAX) events (plus the rest of one revision)
//!   are buffered per stream. Any error ends the stream for good: reconnect by
//!   watching again from the last revision seen + 1, which loses and repeats
//!   nothing, unless that revision was compacted
//!   ([`MetaError::Compacted`], from `watch` or from the stream's first
//!   `next`): then re-read with [`MetaStore::range`] and watch from its
//!   revision + 1.
//! * **Election.** [`MetaStore::campaign`] writes the candidate key
//!   `{election}/{lease:x}` attached to the lease and waits until no key under
//!   `{election}/` was created before it (etcd's `v3election` layout, so
//!   `etcdctl elect` interoperates). The leader is the oldest such key,
//!   [`MetaStore::leader`]. Leadership ends when the key is deleted: by
//!   [`MetaStore::resign`], or when the lease expires, without notice to the
//!   holder. Writes that must only happen under leadership use
//!   [`Leadership::fence`] as a transaction compare. If campaign fails, the
//!   candidate key may remain until its lease ends; campaigning again with the
//!   same lease resumes it.
//! * **Errors.** [`MetaError::Unreachable`] means "back off and retry";
//!   the other variants are definite answers.

mod mem;

use crate::limits::LEASE_TTL_MIN_MS;
use std::future::Future;
use std::time::Duration;

pub use mem::{MemMetaStore, MemWatch};

/// A revision of the store (etcd's `int64` revision). Zero means "none": an
/// absent key has `create_revision == mod_revision == 0`.
pub type Revision = i64;

/// A lease id, never zero (etcd uses 0 for "no lease").
pub type LeaseId = i64;

/// [`LEASE_TTL_MIN_MS`] as a `Duration`, for the lease APIs.
pub const LEASE_TTL_MIN: Duration = Duration::from_millis(LEASE_TTL_MIN_MS);

/// One key's current value and metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Revision of the put that created the key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last change to the key.
    pub mod_revision: Revision,
    /// Number of puts since creation, starting at 1.
    pub version: i64,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// The result of [`MetaStore::range`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResult {
    /// The keys under the prefix, in key order.
    pub kvs: Vec<KeyValue>,
    /// The store revision the read was served at.
    pub revision: Revision,
}

/// The result of [`MetaStore::put`] and [`MetaStore::delete`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteResult {
    /// The store revision after the write (unchanged by deleting an absent key).
    pub revision: Revision,
    /// The key's value before the write, if it existed.
    pub prev: Option<KeyValue>,
}

/// What a [`Compare`] looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    CreateRevision,
    ModRevision,
}

/// A transaction guard: `key`'s `target` revision equals `revision` (0 for an
/// absent key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub target: CompareTarget,
    pub revision: Revision,
}

impl Compare {
    /// Holds when `key` does not exist.
    pub fn absent(key: impl Into<Vec<u8>>) -> Self {
        Self::create_revision(key, 0)
    }

    /// Holds when `key` was last changed at `revision`.
    pub fn mod_revision(key: impl Into<Vec<u8>>, revision: Revision) -> Self {
        let key = key.into();
        Self {
            key,
            target: CompareTarget::ModRevision,
            revision,
        }
    }

    /// Holds when `key` was created at `revision` (and not deleted since).
    pub fn create_revision(key: impl Into<Vec<u8>>, revision: Revision) -> Self {
        let key = key.into();
        Self {
            key,
            target: CompareTarget::CreateRevision,
            revision,
        }
    }

    /// Whether this compare holds for `kv` (`None`: the key is absent).
    pub fn holds(&self, kv: Option<&KeyValue>) -> bool {
        let actual = kv.map_or(0, |kv| match self.target {
            CompareTarget::CreateRevision => kv.create_revision,
            CompareTarget::ModRevision => kv.mod_revision,
        });
        actual == self.revision
    }
}

/// A write inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: Vec<u8>,
    },
}

impl TxnOp {
    /// The key this op writes.
    pub fn key(&self) -> &[u8] {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } => key,
        }
    }
}

/// The result of [`MetaStore::txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every compare held and the ops were applied.
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: Revision,
    /// When `succeeded` is false: the compared keys' current values, one per
    /// compare in order, read atomically with the comparison. Empty otherwise.
    pub current: Vec<Option<KeyValue>>,
}

/// A granted lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    /// The granted TTL (whole seconds, at least [`LEASE_TTL_MIN`]).
    pub ttl: Duration,
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// The key after the change. For a delete only `key` and `mod_revision`
    /// (the deletion's revision) are set; the rest is zero/empty/`None`.
    pub kv: KeyValue,
    /// The key before the change, if it existed and is still in history.
    pub prev: Option<KeyValue>,
}

impl WatchEvent {
    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// A won election: identifies the leader key while it lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leadership {
    pub election: String,
    /// The leader key, `{election}/{lease:x}`.
    pub key: Vec<u8>,
    /// The leader key's create revision.
    pub revision: Revision,
    pub lease: LeaseId,
}

impl Leadership {
    /// A compare that holds only while this leadership lasts: guard writes
    /// that only the leader may make with it.
    pub fn fence(&self) -> Compare {
        Compare::create_revision(self.key.clone(), self.revision)
    }
}

/// The key prefix of an election's candidates.
pub fn election_prefix(election: &str) -> Vec<u8> {
    format!("{election}/").into_bytes()
}

/// The candidate key of `lease` in `election` (etcd's `v3election` layout).
pub fn election_key(election: &str, lease: LeaseId) -> Vec<u8> {
    format!("{election}/{lease:x}").into_bytes()
}

/// Errors of a [`MetaStore`] call, split by what the caller should do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// The store cannot be reached now (connection refused or lost, timed
    /// out, no quorum, outage switch): back off and retry. The call may or
    /// may not have taken effect; a watch stream that fails so has ended.
    #[error("metadata store unreachable: {reason}")]
    Unreachable { reason: String },
    /// The lease expired or was revoked (or never existed).
    #[error("lease {lease:x} not found (expired or revoked)")]
    LeaseNotFound { lease: LeaseId },
    /// A watch start revision is older than the store's history; revisions
    /// from `revision` on are available.
    #[error("history before revision {revision} has been compacted")]
    Compacted { revision: Revision },
    /// The store was reached and refused or failed the request (invalid
    /// request, too many ops, duplicate key in a transaction, ...).
    #[error("metadata store failed the request: {reason}")]
    Failed { reason: String },
}

impl MetaError {
    /// Whether the caller should back off and retry the same call.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, MetaError::Unreachable { .. })
    }
}

/// Shorthand for results of [`MetaStore`] calls.
pub type Result<T, E = MetaError> = std::result::Result<T, E>;

/// The consumer side of a watch (see the module contract).
pub trait WatchStream: Send + std::fmt::Debug + 'static {
    /// The next event, waiting for one if none is buffered. An error ends the
    /// stream: later calls return an error too.
    fn next(&mut self) -> impl Future<Output = Result<WatchEvent>> + Send;
}

/// Reads, writes and compare-and-swap transactions (see the module contract).
pub trait KvStore: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, key: &[u8]) -> impl Future<Output = Result<Option<KeyValue>>> + Send;

    /// Reads every key starting with `prefix` (all keys for an empty prefix).
    fn range(&self, prefix: &[u8]) -> impl Future<Output = Result<RangeResult>> + Send;

    /// Writes `key`, attached to `lease` if given (detached otherwise).
    fn put(
        &self,
        key: &[u8],
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> impl Future<Output = Result<WriteResult>> + Send;

    /// Deletes `key`; `prev` is `None` if it did not exist.
    fn delete(&self, key: &[u8]) -> impl Future<Output = Result<WriteResult>> + Send;

    /// Applies `ops` atomically if every compare holds.
    fn txn(
        &self,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> impl Future<Output = Result<TxnResult>> + Send;
}

/// Leases: keys attached to one disappear together when it ends.
pub trait LeaseStore: Send + Sync + 'static {
    /// Grants a lease of (at least) `ttl`.
    fn grant(&self, ttl: Duration) -> impl Future<Output = Result<Lease>> + Send;

    /// Restarts `lease`'s TTL.
    fn keep_alive_once(&self, lease: LeaseId) -> impl Future<Output = Result<()>> + Send;

    /// Ends `lease` now, deleting its keys.
    fn revoke(&self, lease: LeaseId) -> impl Future<Output = Result<()>> + Send;
}

/// Ordered, exactly-once change streams from a revision on.
pub trait WatchStore: Send + Sync + 'static {
    /// The watch stream type of this store.
    type Watch: WatchStream;

    /// Watches keys under `prefix` from revision `start` (inclusive; `None`:
    /// changes after the current revision).
    fn watch(
        &self,
        prefix: &[u8],
        start: Option<Revision>,
    ) -> impl Future<Output = Result<Self::Watch>> + Send;
}

/// Leader election on leases (etcd's `v3election` layout).
pub trait ElectionStore: Send + Sync + 'static {
    /// Becomes a candidate in `election` with `value` and waits until leader.
    /// No request timeout applies: it waits as long as others lead.
    fn campaign(
        &self,
        election: &str,
        value: &[u8],
        lease: LeaseId,
    ) -> impl Future<Output = Result<Leadership>> + Send;

    /// Gives up `leadership` (or the candidacy); a no-op if already over.
    fn resign(&self, leadership: &Leadership) -> impl Future<Output = Result<()>> + Send;

    /// The current leader key of `election`, if any. To observe changes,
    /// watch [`election_prefix`] and call this on each event.
    fn leader(&self, election: &str) -> impl Future<Output = Result<Option<KeyValue>>> + Send;
}

/// The cluster's desired-state store: all four roles (see the module
/// contract). Implemented for every type that has them.
pub trait MetaStore: KvStore + LeaseStore + WatchStore + ElectionStore {}

impl<S: KvStore + LeaseStore + WatchStore + ElectionStore> MetaStore for S {}

/// The four store traits, for calling their methods on a concrete store
/// (`use metro_fabric::meta::prelude::*;`).
pub mod prelude {
    pub use super::{ElectionStore as _, KvStore as _, LeaseStore as _, WatchStore as _};
}
