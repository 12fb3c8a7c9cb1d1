//! Every limit of metro-fabric in one place: queue bounds, sizes, counts,
//! timeouts, intervals, TTLs, retry pauses and budgets, with their
//! relations checked at compile time (the `const _: () = assert!(..)` lines
//! under each group). A change that breaks a relation the code relies on
//! fails the build here, next to the numbers.
//!
//! Rules:
//! - One definition per limit. Modules import it from here; format
//!   identifiers (wire and disk versions, magics, kinds, keys, record
//!   layouts and the counts derived from a layout) stay with their codecs.
//! - Names end in `_MAX` / `_MIN` when they bound something, and the unit
//!   comes last: `_BYTES`, `_BLOCKS`, `_ENTRIES`, `_MS`. A plain count
//!   (`_MAX` alone) counts the thing its name says.
//! - Every time is a `u64` of milliseconds named `_MS`, so that relations
//!   are plain integer comparisons; a caller that wants a `Duration` builds
//!   it where it uses one (`Duration::from_millis(X_MS)`).
//!
//! The node's limits (transport, client, NBD, admin) are in
//! `metro_node::limits`, which checks its relations to these.

use crate::storage::namespaces::BLOCK_MAP_SLOTS;
use crate::volume::BLOCK_BYTES;
use crate::wire::frame::{HEADER_ALIGN, PRELUDE_BYTES};

// ---------------------------------------------------------------------------
// Wire: frames and messages
// ---------------------------------------------------------------------------

/// The largest frame a [`Transport`](crate::env::Transport) carries, request or response.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// The largest archived header a frame may carry.
pub const HEADER_BYTES_MAX: u32 = 1 << 20;
/// The most 4 KiB blocks one frame may carry (32 MiB, half the frame limit).
pub const FRAME_BLOCKS_MAX: u32 = 8192;
/// The most snapshot bytes one [`SnapshotChunk`](crate::wire::SnapshotChunk) carries (1 MiB).
pub const SNAPSHOT_CHUNK_BYTES: u32 = 1 << 20;
/// The largest `total_bytes` a snapshot chunk may declare (1 GiB): a sanity
/// bound on the wire. Snapshots stream as pieces (`storage/snapshot.rs`),
/// each chunk's total is its own piece, so no receiver holds more than one.
pub const SNAPSHOT_BYTES_MAX: u64 = 1 << 30;
/// The most entries one AppendEntries frame carries; the sender splits
/// larger batches (openraft's `max_payload_entries` should stay below it).
pub const APPEND_ENTRIES_MAX: u32 = 4096;
/// The most voters or learners a membership on the wire may name.
pub const MEMBERS_MAX: u32 = 64;
/// The most bytes of free text (addresses, error messages) in one field.
pub const TEXT_BYTES_MAX: u32 = 4096;
/// The most blocks one `ReadSnapshot` answer carries.
pub const SNAPSHOT_READ_BLOCKS_MAX: u32 = 256;

/// Bytes of a frame carrying `blocks` blocks and the largest header:
/// prelude, header, CRC table (4 bytes a block), blocks, each part padded to
/// 16 bytes (headers and tables are, blocks are whole 4 KiB).
const fn frame_bytes(blocks: u32) -> usize {
    PRELUDE_BYTES
        + (HEADER_BYTES_MAX as usize).div_ceil(HEADER_ALIGN) * HEADER_ALIGN
        + (4 * blocks as usize).div_ceil(HEADER_ALIGN) * HEADER_ALIGN
        + blocks as usize * BLOCK_BYTES
}

// A frame with the largest header and the most blocks fits the transport.
const _: () = assert!(frame_bytes(FRAME_BLOCKS_MAX) <= FRAME_BYTES_MAX);
// A snapshot chunk travels as raw blocks of one frame.
const _: () =
    assert!((SNAPSHOT_CHUNK_BYTES as usize).div_ceil(BLOCK_BYTES) <= FRAME_BLOCKS_MAX as usize);
// A snapshot page (ReadSnapshot answer) fits one frame.
const _: () = assert!(SNAPSHOT_READ_BLOCKS_MAX <= FRAME_BLOCKS_MAX);
// A snapshot is at least one chunk.
const _: () = assert!(SNAPSHOT_CHUNK_BYTES as u64 <= SNAPSHOT_BYTES_MAX);
// A snapshot piece (header and at least one block record) fits a chunk.
const _: () = assert!(
    crate::storage::snapshot::PIECE_HEADER_BYTES + crate::storage::snapshot::PIECE_RECORD_BYTES
        <= SNAPSHOT_CHUNK_BYTES as usize
);

// ---------------------------------------------------------------------------
// Volume I/O
// ---------------------------------------------------------------------------

/// The most blocks one `VolumeCommand::Write` may carry (16 MiB), so that
/// one log entry always fits a transport frame with room to spare.
pub const WRITE_BLOCKS_MAX: u32 = 4096;
/// The most blocks one read may ask for (one reply frame).
pub const READ_BLOCKS_MAX: u32 = WRITE_BLOCKS_MAX;

// The largest write travels as the raw blocks of one frame.
const _: () = assert!(WRITE_BLOCKS_MAX <= FRAME_BLOCKS_MAX);
const _: () = assert!(frame_bytes(WRITE_BLOCKS_MAX) <= FRAME_BYTES_MAX);
// The largest read answer is one frame.
const _: () = assert!(READ_BLOCKS_MAX <= FRAME_BLOCKS_MAX);
const _: () = assert!(frame_bytes(READ_BLOCKS_MAX) <= FRAME_BYTES_MAX);

// ---------------------------------------------------------------------------
// Raft groups
// ---------------------------------------------------------------------------

/// Raft heartbeat interval of every group.
pub const HEARTBEAT_INTERVAL_MS: u64 = 150;
/// Shortest Raft election timeout: long enough that a busy two-core
/// machine does not see spurious elections.
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 1_000;
/// Longest Raft election timeout: short enough for a failover of a couple
/// of seconds.
pub const ELECTION_TIMEOUT_MAX_MS: u64 = 2_000;
/// How much later a witness's elections time out than a data replica's.
pub const WITNESS_ELECTION_FACTOR: u64 = 2;
/// Most AppendEntries requests in flight per (volume, peer).
pub const APPEND_WINDOW_MAX: usize = 8;
/// Longest a request waits for its predecessors from the same leader.
pub const APPEND_ORDER_WAIT_MS: u64 = 20;
/// Most requests waiting per (volume, leader node).
pub const APPEND_ORDER_WAITERS_MAX: usize = 64;

// openraft randomizes in [min, max): the range must not be empty.
const _: () = assert!(ELECTION_TIMEOUT_MIN_MS < ELECTION_TIMEOUT_MAX_MS);
// Two heartbeats fit the shortest election timeout: one lost heartbeat
// does not start an election.
const _: () = assert!(HEARTBEAT_INTERVAL_MS < ELECTION_TIMEOUT_MIN_MS / 2);
// A witness times out later than any data replica, so data replicas win.
const _: () = assert!(ELECTION_TIMEOUT_MIN_MS * WITNESS_ELECTION_FACTOR >= ELECTION_TIMEOUT_MAX_MS);
// Waiting for a reordered predecessor is far shorter than a heartbeat.
const _: () = assert!(APPEND_ORDER_WAIT_MS < HEARTBEAT_INTERVAL_MS);
// Every request of a full append window can wait for its predecessors.
const _: () = assert!(APPEND_WINDOW_MAX <= APPEND_ORDER_WAITERS_MAX);

// ---------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------

/// Apply batches one state machine keeps queued in kvstore, at most.
pub const APPLY_IN_FLIGHT_MAX: usize = 64;
/// Entries read from kvstore per log scan.
pub const LOG_SCAN_PAGE_ENTRIES: usize = 16;
/// Bytes `limited_get_log_entries` returns, about, at most (at least one
/// entry is always returned).
pub const LOG_READ_BYTES_MAX: u64 = 32 << 20;
/// Durable entries kept in memory per group, at most.
pub const RECENT_ENTRIES_MAX: usize = 1024;
/// A member whose matched log index trails the leader's last by at most
/// this many entries counts as in sync for volume health: under steady
/// writes a healthy follower always trails by the entries in flight to it.
pub const IN_SYNC_LAG_ENTRIES_MAX: u64 = 1024;
/// Encoded bytes of the durable entries kept in memory per group, about
/// (the newest entry is kept even if larger).
pub const RECENT_BYTES_MAX: u64 = 4 << 20;
/// The most DR snapshots one volume keeps.
pub const DR_SNAPSHOTS_MAX: usize = 64;
/// Pending apply changes above this many bytes go to kvstore on their own.
pub const PENDING_APPLY_BYTES_MAX: usize = 4 << 20;
/// Pending applied entries above this many go to kvstore on their own.
pub const PENDING_APPLY_ENTRIES_MAX: usize = 256;

// A pending apply batch is always accepted by kvstore whole: it is flushed
// once over its bound, so it holds at most the bound plus one largest write
// (with 1 MiB for its keys and record headers).
const _: () = assert!(
    PENDING_APPLY_BYTES_MAX + WRITE_BLOCKS_MAX as usize * BLOCK_BYTES + (1 << 20)
        <= metro_kvstore::limits::BATCH_BYTES_MAX
);
// A full append window of entries is flushed in at most a few batches.
const _: () = assert!(PENDING_APPLY_ENTRIES_MAX <= APPEND_WINDOW_MAX * APPLY_IN_FLIGHT_MAX);

/// Submissions one volume's tasks leave waiting in kvstore's line behind a
/// full queue, at most (`storage/durable.rs`): every async submitter awaits
/// its batch's durability or its place in the queue before going on, so
/// each task that writes (log store, apply, snapshot build and install, with
/// slack) leaves one, and a log write one more (the apply changes it sends
/// ahead of it); opening a state machine queues its clean-up unawaited (a
/// drop of each stale slot and of each stale pin: at most every DR snapshot
/// and the current one).
pub const UNQUEUED_SUBMITS_PER_VOLUME_MAX: usize =
    8 + BLOCK_MAP_SLOTS as usize + DR_SNAPSHOTS_MAX + 1;

// Every volume of a full node leaving its most submissions in line fits
// kvstore's line: an async submission is never refused for a full line.
const _: () = assert!(
    VOLUMES_MAX * UNQUEUED_SUBMITS_PER_VOLUME_MAX <= metro_kvstore::limits::SUBMIT_OVERFLOW_MAX
);
// One group's appends in flight and its queued apply batches fit kvstore's
// submit queue together: a single busy group never fills it alone.
// (kvstore's limit: `metro_kvstore::SUBMIT_QUEUE_MAX`.)
const _: () =
    assert!(APPEND_WINDOW_MAX + APPLY_IN_FLIGHT_MAX <= metro_kvstore::limits::SUBMIT_QUEUE_MAX);
// A member counted in sync can be caught up from the leader's memory, and
// a full window of single-entry appends in flight does not make it lag.
const _: () = assert!(IN_SYNC_LAG_ENTRIES_MAX <= RECENT_ENTRIES_MAX as u64);
const _: () = assert!(IN_SYNC_LAG_ENTRIES_MAX >= APPEND_WINDOW_MAX as u64);
// A log read returns a whole frame's worth of entries.
const _: () = assert!(LOG_READ_BYTES_MAX as usize <= FRAME_BYTES_MAX);

// ---------------------------------------------------------------------------
// Client sessions (exactly-once block commands, `storage/sessions.rs`)
// ---------------------------------------------------------------------------

/// Client sessions one volume remembers; registering one more evicts the
/// least recently active.
pub const SESSIONS_MAX: usize = 128;
/// Request numbers a session remembers below its highest applied one (one
/// bit each); a client keeps its requests in flight within this window.
pub const SESSION_WINDOW_REQUESTS: u64 = 64;

// The whole table travels in one snapshot piece, after its header.
const _: () = assert!(
    32 + SESSIONS_MAX * crate::storage::sessions::SESSION_ENTRY_BYTES
        <= SNAPSHOT_CHUNK_BYTES as usize
);
// A client's window holds at least one whole append window of requests, so
// a session keeps the replication pipeline full.
const _: () = assert!(SESSION_WINDOW_REQUESTS >= APPEND_WINDOW_MAX as u64);

// ---------------------------------------------------------------------------
// Metadata store (etcd or its model)
// ---------------------------------------------------------------------------

/// The shortest lease TTL a store grants (etcd's minimum with default
/// election timing: 1.5 x 1 s election timeout, rounded up to seconds).
pub const LEASE_TTL_MIN_MS: u64 = 2_000;
/// The most compares, and separately the most ops, in one transaction
/// (etcd's default `--max-txn-ops`).
pub const TXN_OPS_MAX: usize = 128;
/// The most events a watch stream buffers on the consumer side before the
/// consumer takes them (one revision's events are never split, so a batch
/// can exceed this by the rest of that revision).
pub const WATCH_BATCH_MAX: usize = 256;
/// Events the embedded model keeps for watches; older revisions are
/// compacted away beyond this.
pub const HISTORY_EVENTS_MAX: usize = 100_000;

// ---------------------------------------------------------------------------
// Control plane: registration, coordinator, placement, repair
// ---------------------------------------------------------------------------

/// The default registration lease TTL: a node is seen down this long (at
/// most, plus the store's expiry slack) after it stops renewing.
pub const NODE_LEASE_TTL_MS: u64 = 10_000;
/// Keep-alives per TTL: three, so two may be lost before the lease lapses.
pub const KEEP_ALIVES_PER_TTL: u32 = 3;
/// The first backoff after the store was unreachable.
pub const STORE_RETRY_MIN_MS: u64 = 100;
/// The longest backoff while the store is unreachable.
pub const STORE_RETRY_MAX_MS: u64 = 2_000;
/// The default coordinator lease TTL: a failed coordinator is replaced
/// within about this long.
pub const COORDINATOR_LEASE_TTL_MS: u64 = 10_000;
/// The default pause between two coordinator rounds.
pub const COORDINATOR_INTERVAL_MS: u64 = 1_000;
/// The default time a placed node must stay unregistered before its
/// replicas are replaced (long enough for a restart or a rolling upgrade).
pub const REPAIR_DELAY_MS: u64 = 60_000;
/// The most data replicas a volume may have (placement and the admin API).
pub const REPLICAS_MAX: u8 = 5;
/// How often `set_domain_state` re-reads and retries after a conflict.
pub const DOMAIN_CAS_ATTEMPTS_MAX: usize = 8;

// The stores grant the TTLs we ask for.
const _: () = assert!(NODE_LEASE_TTL_MS >= LEASE_TTL_MIN_MS);
const _: () = assert!(COORDINATOR_LEASE_TTL_MS >= LEASE_TTL_MIN_MS);
// At least one keep-alive may be lost before a lease lapses.
const _: () = assert!(KEEP_ALIVES_PER_TTL >= 2);
// A node whose store is unreachable retries before its lease lapses.
const _: () = assert!(STORE_RETRY_MIN_MS < STORE_RETRY_MAX_MS);
const _: () = assert!(STORE_RETRY_MAX_MS < NODE_LEASE_TTL_MS / KEEP_ALIVES_PER_TTL as u64);
const _: () = assert!(STORE_RETRY_MAX_MS < COORDINATOR_LEASE_TTL_MS / KEEP_ALIVES_PER_TTL as u64);
// A coordinator runs several rounds per lease: it notices losing the lease
// before another node takes over.
const _: () = assert!(COORDINATOR_INTERVAL_MS < COORDINATOR_LEASE_TTL_MS / 2);
// Repair waits past a node's lease expiry: a restart or a missed
// keep-alive never triggers a replacement.
const _: () = assert!(REPAIR_DELAY_MS > NODE_LEASE_TTL_MS);
// Every placed member (the data replicas and a witness) fits a wire membership.
const _: () = assert!((REPLICAS_MAX as u32) < MEMBERS_MAX);

// ---------------------------------------------------------------------------
// Volume host: forwarding, replica control, repair, witness duties
// ---------------------------------------------------------------------------

/// Redirects one client request follows on a node before giving up.
pub const FORWARD_HOPS_MAX: usize = 4;
/// How long one forwarded hop may take before the peer counts as
/// unreachable (a killed leader never answers).
pub const FORWARD_TIMEOUT_MS: u64 = 1_500;
/// How long a node's whole forward of one client request may take, every
/// hop and the local serve included: a hop to a dead leader timing out and
/// one more to the new leader. Clients wait longer than this per attempt.
pub const FORWARD_DEADLINE_MS: u64 = 2 * FORWARD_TIMEOUT_MS;
/// How long a replica-control request (open, drop) to a peer may take.
pub const CONTROL_TIMEOUT_MS: u64 = 10_000;
/// The most volumes one node hosts (bounds the catalogue and the maps).
pub const VOLUMES_MAX: usize = 4_096;
/// Blocks read per step while computing a digest.
pub const DIGEST_CHUNK_BLOCKS: u32 = 1_024;
/// How many failing peers a host remembers to ask last.
pub const SUSPECTS_MAX: usize = 64;
/// How long a new learner may take to catch up before the repair is
/// retried in a later round.
pub const CATCH_UP_TIMEOUT_MS: u64 = 120_000;
/// How long one membership change may take to commit.
pub const MEMBERSHIP_CHANGE_TIMEOUT_MS: u64 = 30_000;
/// The longest one replacement job runs on the group's leader: open the
/// replacement (a control call), catch it up, change the membership.
pub const REPLACE_MEMBER_TIMEOUT_MS: u64 =
    CONTROL_TIMEOUT_MS + CATCH_UP_TIMEOUT_MS + MEMBERSHIP_CHANGE_TIMEOUT_MS;
/// How long a learner outside a group's voters stays before the group's
/// leader removes it as an orphan (left by a repair that failed after
/// adding it): longer than any repair runs on the leader, so a running
/// repair's learner is never taken (and if it were, the repair's fenced
/// promotion would be refused and retried, never applied half).
pub const ORPHAN_LEARNER_GRACE_MS: u64 = REPLACE_MEMBER_TIMEOUT_MS + FORWARD_TIMEOUT_MS;
/// How often a witness node runs its duties.
pub const WITNESS_DUTY_INTERVAL_MS: u64 = 500;
/// How long a witness waits for the leader's log floor.
pub const LOG_FLOOR_TIMEOUT_MS: u64 = 2_000;

// One full hop fits the whole forward, which is what bounds it (not the
// number of hops times their timeout).
const _: () = assert!(FORWARD_TIMEOUT_MS <= FORWARD_DEADLINE_MS);
const _: () = assert!(FORWARD_DEADLINE_MS <= FORWARD_HOPS_MAX as u64 * FORWARD_TIMEOUT_MS);
// A repair's learner outlives its repair before it counts as an orphan.
const _: () = assert!(ORPHAN_LEARNER_GRACE_MS > REPLACE_MEMBER_TIMEOUT_MS);
