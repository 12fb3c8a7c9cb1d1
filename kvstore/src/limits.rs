//! Every limit of the engine, in one place.
//!
//! Contract: these are kvstore's bounds — queue depths, byte sizes of values,
//! batches, groups and segments, compaction pacing, waits — and the defaults
//! and accepted ranges of [`crate::Options`]. Code elsewhere names them from
//! here and never restates a number. The relations between them that the code
//! relies on are checked at compile time below (`const _: () = assert!(..)`),
//! so changing one limit so that it breaks another fails the build, not a
//! store. Format identifiers (tags, magics, format versions, header layouts)
//! are not limits: they stay beside their codecs (`record.rs`, `batch.rs`,
//! `checkpoint.rs`), and the checks here use their sizes.
//!
//! Naming: a bound ends in `_MAX` or `_MIN`, a default of an option in
//! `_DEFAULT`; the unit comes right after the quantity (`_BYTES`, `_US`).

use crate::batch::PUT_HEADER_BYTES;
use crate::record::{RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};

// Values, batches, records.

/// The largest value one `Put` may carry.
pub const VALUE_BYTES_MAX: usize = 16 << 20;
/// The largest encoded batch, which is one log record's payload.
pub const BATCH_BYTES_MAX: usize = 32 << 20;

// The writer: submission queue and group commit.

/// Submissions waiting for the writer, at most (the bounded queue's depth).
pub const SUBMIT_QUEUE_MAX: usize = 1024;
/// Submissions waiting in line behind a full queue, at most (`gate.rs`):
/// an async submitter that finds the queue full waits there, without
/// blocking its thread, until the writer takes its batch. Sized for a full
/// node's volumes each leaving a few submissions in line (fabric checks
/// this against its own limits); memory is taken only while they wait.
pub const SUBMIT_OVERFLOW_MAX: usize = 512 * SUBMIT_QUEUE_MAX;
/// Batches in one group commit, at most.
pub const GROUP_SUBMISSIONS_MAX: usize = 256;
/// Encoded bytes in one group commit before the writer stops gathering: a
/// group goes over it by less than one batch (a larger batch goes alone).
pub const GROUP_BYTES_MAX: usize = 8 << 20;
/// How long the threaded writer waits, at a time, for more submissions when
/// its group is much smaller than the previous one.
pub const GATHER_WAIT_US: u64 = 200;

// Segments.

/// The smallest accepted `Options::segment_bytes`.
pub const SEGMENT_BYTES_MIN: u32 = 4 << 10;
/// The largest accepted `Options::segment_bytes`.
pub const SEGMENT_BYTES_MAX: u32 = 1 << 30;
/// Default `Options::segment_bytes`: the size at which a segment is sealed.
pub const SEGMENT_BYTES_DEFAULT: u32 = 64 << 20;
/// Default `Options::spare_segments_max`: dead segment files kept for reuse.
pub const SPARE_SEGMENTS_MAX_DEFAULT: usize = 2;

// Compaction and checkpoints.

/// The smallest accepted `Options::space_amp_max`.
pub const SPACE_AMP_MIN: f64 = 1.25;
/// Default `Options::space_amp_max`: segment bytes per live byte, at most.
pub const SPACE_AMP_MAX_DEFAULT: f64 = 2.0;
/// Segments of slack above the amplification target before compacting.
pub const SLACK_SEGMENTS: u64 = 2;
/// A segment more live than this is not worth compacting.
pub const VICTIM_LIVE_RATIO_MAX: f64 = 0.9;
/// Compacted victims waiting for the checkpoint that retires them, at most.
pub const VICTIMS_PER_CHECKPOINT_MAX: usize = 4;
/// How much garbage a compaction round frees per byte the last group
/// appended, at least: above one, so compaction keeps ahead of writes.
pub const COMPACTION_PACE_MIN: f64 = 1.25;
/// The smallest accepted `Options::compaction_slice_bytes`.
pub const COMPACTION_SLICE_BYTES_MIN: u32 = 512;
/// The largest accepted `Options::compaction_slice_bytes`.
pub const COMPACTION_SLICE_BYTES_MAX: u32 = 1 << 30;
/// Default `Options::compaction_slice_bytes`: victim bytes read and scanned
/// per slice, about the longest compaction holds up waiting writes.
pub const COMPACTION_SLICE_BYTES_DEFAULT: u32 = 256 << 10;
/// Relocated records are gathered and written about this many bytes at a
/// time (one `pwrite` per buffer instead of one per value).
pub const RELOCATE_WRITE_BYTES: usize = 1 << 20;
/// Default `Options::checkpoint_log_bytes`: log bytes between checkpoints.
pub const CHECKPOINT_LOG_BYTES_DEFAULT: u64 = 256 << 20;
/// Checkpoints are written in pieces of this size.
pub const CHECKPOINT_WRITE_CHUNK_BYTES: usize = 1 << 20;

// Relations the code relies on.

// A value of the largest size, alone in a `Put`, is a valid batch.
const _: () = assert!(VALUE_BYTES_MAX + PUT_HEADER_BYTES <= BATCH_BYTES_MAX);
// Value and record payload lengths are encoded as u32.
const _: () = assert!(VALUE_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(BATCH_BYTES_MAX <= u32::MAX as usize);
// Index locations are u32 offsets: a segment ends by SEGMENT_BYTES_MAX, or
// holds one record of any size after its header, so every value fits.
const _: () = assert!(SEGMENT_BYTES_MAX as u64 <= u32::MAX as u64);
const _: () = assert!(
    SEGMENT_HEADER_BYTES + (RECORD_HEADER_BYTES + BATCH_BYTES_MAX) as u64 <= u32::MAX as u64
);
// The smallest segment has room for a record after its header.
const _: () =
    assert!(SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES as u64 <= SEGMENT_BYTES_MIN as u64);
// A batch of the largest size fits a default segment, so default segments
// stay within `segment_bytes` (the space bound counts slack in segments).
const _: () = assert!(
    SEGMENT_HEADER_BYTES + (RECORD_HEADER_BYTES + BATCH_BYTES_MAX) as u64
        <= SEGMENT_BYTES_DEFAULT as u64
);
// The writer drains a group from the queue: both bounds are nonzero, and a
// group never wants more than the queue can hold.
const _: () = assert!(0 < GROUP_SUBMISSIONS_MAX && GROUP_SUBMISSIONS_MAX <= SUBMIT_QUEUE_MAX);
const _: () = assert!(0 < GROUP_BYTES_MAX);
// The line is the queue's overflow: it holds at least a full queue's worth
// more, so submitters that found the queue full are not refused before as
// many again wait (and a refused blocking submitter has a back to wait on).
const _: () = assert!(0 < SUBMIT_QUEUE_MAX && SUBMIT_QUEUE_MAX <= SUBMIT_OVERFLOW_MAX);
// Options::default() passes Options::validate().
const _: () = assert!(
    SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT && SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX
);
const _: () = assert!(
    COMPACTION_SLICE_BYTES_MIN <= COMPACTION_SLICE_BYTES_DEFAULT
        && COMPACTION_SLICE_BYTES_DEFAULT <= COMPACTION_SLICE_BYTES_MAX
);
const _: () = assert!(SPACE_AMP_MIN <= SPACE_AMP_MAX_DEFAULT);
// A slice holds a whole record header, so the scan can read the length of
// the record that starts a slice and extend the slice to hold all of it.
const _: () = assert!(RECORD_HEADER_BYTES as u64 <= COMPACTION_SLICE_BYTES_MIN as u64);
// A store over its amplification bound has a segment at most
// 1 / SPACE_AMP_MIN live, which is eligible as a victim.
const _: () = assert!(SPACE_AMP_MIN * VICTIM_LIVE_RATIO_MAX >= 1.0);
// Compacting a victim frees something (the budget divides by the dead share),
// and frees more than the writes add.
const _: () = assert!(0.0 < VICTIM_LIVE_RATIO_MAX && VICTIM_LIVE_RATIO_MAX < 1.0);
const _: () = assert!(COMPACTION_PACE_MIN > 1.0);
// The slack covers the two segments never picked as victims: the active
// log segment and the compaction output.
const _: () = assert!(SLACK_SEGMENTS >= 2);
// Compaction may start once the victims awaiting a checkpoint are fewer.
const _: () = assert!(VICTIMS_PER_CHECKPOINT_MAX > 0);
// Checkpoint writes make progress.
const _: () = assert!(CHECKPOINT_WRITE_CHUNK_BYTES > 0);
