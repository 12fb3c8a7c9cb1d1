//! metro-kvstore: the node-local durable engine that holds, for one node,
//! every volume's Raft log and block map.
//!
//! Model: a log-structured store of `u64` keys in [`Namespace`]s.
//! - Batches ([`WriteBatch`]) are atomic and durable when acknowledged: one
//!   writer ([`Writer`]) group-commits many submitters' batches with one
//!   `fdatasync` (see `writer.rs`). Async callers submit without blocking
//!   ([`Store::submit_async`]): behind a full queue they wait in line, in
//!   order, on a [`Queued`] future (see `gate.rs`).
//! - Values live in append-only segment files; an in-memory index maps keys
//!   to them. Checkpoints of the index bound recovery time; recovery replays
//!   the log after the newest checkpoint, truncating a torn tail and refusing
//!   any other damage with the file and offset (see `recovery.rs`).
//! - [`Snapshot`]s pin a namespace as of one batch; [`Store::diff`] lists the
//!   keys changed between two of them from the index alone.
//! - Compaction keeps disk usage within a stated bound of the live data
//!   (see `compaction.rs`).
//! - Every limit (queue depths, byte sizes, compaction pacing) is a named
//!   constant in [`limits`], with their relations checked at compile time.
//! - All I/O goes through the [`Disk`] seam: [`FileDisk`] in production,
//!   [`FaultyDisk`] in tests and the simulator.
mod batch;
mod checkpoint;
mod codec;
mod compaction;
mod disk;
mod error;
mod faulty_disk;
mod file_disk;
mod gate;
mod index;
pub mod limits;
mod record;
mod recovery;
mod rng;
mod shared;
mod store;
mod writer;

pub use batch::{Namespace, Op, WriteBatch};
pub use disk::{Disk, DiskError, DiskFile, OpenMode};
pub use error::StoreError;
pub use faulty_disk::{CrashMode, DiskStats, FaultOp, FaultyDisk};
pub use file_disk::FileDisk;
pub use gate::Queued;
pub use index::ChangeKind;
pub use rng::SplitMix64;
pub use shared::StoreStats;
pub use store::{Change, Completion, Snapshot, Store};
pub use writer::{Options, Writer};
// The limits kvstore has always exported at its root; the rest are in
// `limits`.
pub use limits::{
    BATCH_BYTES_MAX, GROUP_BYTES_MAX, GROUP_SUBMISSIONS_MAX, SLACK_SEGMENTS, SUBMIT_OVERFLOW_MAX,
    SUBMIT_QUEUE_MAX, VALUE_BYTES_MAX, VICTIM_LIVE_RATIO_MAX,
};
