//! The environment seam: every kind of I/O and non-determinism that fabric and
//! kvstore use enters through the traits named here, each with a production
//! implementation (in `node`) and a simulated one (in `sim`).
//!
//! | seam | production | simulation |
//! |---|---|---|
//! | runtime (spawn, sleep, time, rng) | openraft's `AsyncRuntime` on tokio | openraft-rt-sim |
//! | [`Transport`] | quinn, mutual TLS | in-memory packet simulator |
//! | [`Disk`] | [`metro_kvstore::FileDisk`] | [`metro_kvstore::FaultyDisk`] |
//! | [`MetaStore`] | etcd-client | in-memory model on virtual time |
//!
//! `Disk` is defined in kvstore (which sits below fabric) and re-exported here.
//! The runtime seam is openraft's own `AsyncRuntime` trait; fabric names it
//! once the Raft groups land (the replicated-volumes issue).
//!
//! Rules: no wall clock, no unseeded randomness, no direct spawning, no
//! randomly-seeded hash maps in fabric or kvstore (`clippy.toml`).

use crate::limits::FRAME_BYTES_MAX;
use std::future::Future;

pub use metro_kvstore::{Disk, DiskError, DiskFile, OpenMode};

/// A node's identity inside its cluster, stable across restarts.
pub type NodeId = u64;

/// Independent channels between two nodes, so that bulk transfers never
/// queue in front of heartbeats and votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Lane {
    /// Raft traffic: append-entries, votes, heartbeats.
    Raft = 0,
    /// Client requests forwarded to a volume's leader.
    Client = 1,
    /// Snapshot streaming and DR shipping.
    Bulk = 2,
}

/// Errors of a [`Transport`] call, split by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer cannot be reached now (no route, refused, timed out,
    /// partitioned): back off before trying again.
    #[error("node {peer} unreachable: {reason}")]
    Unreachable { peer: NodeId, reason: String },
    /// The peer was reached but failed this request: retrying may succeed.
    #[error("node {peer} failed the request: {reason}")]
    Failed { peer: NodeId, reason: String },
    /// The frame is larger than [`FRAME_BYTES_MAX`]: a bug at the caller.
    #[error("frame of {len} bytes exceeds the {FRAME_BYTES_MAX}-byte limit")]
    TooLarge { len: usize },
}

/// Framed request/response messaging between the nodes of one cluster.
///
/// Contract: a successful `call` means the peer's handler ran and returned the
/// response. Failure says nothing about whether the handler ran, so requests
/// must be idempotent or carry their own deduplication (Raft's are).
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` to `peer` on `lane` and waits for its response.
    fn call(
        &self,
        peer: NodeId,
        lane: Lane,
        request: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, TransportError>> + Send;

    /// [`Self::call`] for a request the caller knows runs long on the peer
    /// (a repair): the transport's own per-call cap, if it has one, is
    /// `timeout_ms` for this call instead of its default. The caller still
    /// bounds the call itself.
    fn call_within(
        &self,
        peer: NodeId,
        lane: Lane,
        request: Vec<u8>,
        timeout_ms: u64,
    ) -> impl Future<Output = Result<Vec<u8>, TransportError>> + Send {
        let _ = timeout_ms;
        self.call(peer, lane, request)
    }
}

/// The receiving side of a [`Transport`]: the node's dispatcher implements it.
pub trait RequestHandler: Send + Sync + 'static {
    /// Handles one request from `from`; `Err` closes that request's stream
    /// with the error logged on both sides.
    fn handle(
        &self,
        from: NodeId,
        lane: Lane,
        request: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, String>> + Send;
}

// The cluster's desired-state store (etcd in production, an in-memory model
// in the demo, unit tests and the simulator): the trait, its types and its
// contract live in `crate::meta`.
pub use crate::meta::{MetaError, MetaStore, WatchStream};
