//! [`Writer`]: the single writer — group commit, segments, maintenance.
//!
//! Many submitters put batches on one bounded queue
//! ([`crate::limits::SUBMIT_QUEUE_MAX`]); behind a full queue they wait in
//! the gate's line (`gate.rs`), which the writer takes from, in order, once
//! the queue is empty.
//! The writer takes whatever is queued (up to [`GROUP_SUBMISSIONS_MAX`]
//! batches or [`GROUP_BYTES_MAX`] bytes), gives each batch the next sequence
//! number, appends them to the active log segment with one `pwrite`, makes
//! them durable with one `fdatasync`, publishes them to the index and only
//! then calls their completions. A failed write or fsync poisons the store:
//! the durability of that group is unknown, so nothing after it is accepted.
//!
//! Between groups the writer compacts and checkpoints (see `compaction.rs`);
//! compaction works a slice at a time and hands the writer back to waiting
//! submitters after each round, so it never stalls writes for long.
//! Segment files whose data is all dead are kept as *spares* and reused for
//! new segments, so steady-state writes overwrite allocated blocks instead of
//! growing files (an append's `fdatasync` must also journal the new size,
//! which costs about twice as much on ext4).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crossbeam_channel::Receiver;

use crate::batch::{DecodedOp, Op, WriteBatch, decode_ops};
use crate::disk::{Disk, DiskFile, OpenMode};
use crate::error::StoreError;
use crate::index::{Index, Loc, Version};
use crate::limits::{
    BATCH_BYTES_MAX, CHECKPOINT_LOG_BYTES_DEFAULT, COMPACTION_SLICE_BYTES_DEFAULT,
    COMPACTION_SLICE_BYTES_MAX, COMPACTION_SLICE_BYTES_MIN, GATHER_WAIT_US, GROUP_BYTES_MAX,
    GROUP_SUBMISSIONS_MAX, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN,
    SPACE_AMP_MAX_DEFAULT, SPACE_AMP_MIN, SPARE_SEGMENTS_MAX_DEFAULT,
};
use crate::record::{
    RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, SegmentKind, encode_record_with, segment_header,
    segment_name,
};
use crate::shared::Shared;
use crate::store::Completion;

/// Tuning of a store. The defaults suit a node holding many volumes.
#[derive(Clone, Debug)]
pub struct Options {
    /// Size at which a segment is sealed and a new one started.
    pub segment_bytes: u32,
    /// Compaction keeps segment bytes under `space_amp_max` times the live
    /// bytes, plus a slack of a few segments (see `compaction.rs`).
    pub space_amp_max: f64,
    /// A checkpoint is written after this many bytes of log.
    pub checkpoint_log_bytes: u64,
    /// Dead segment files kept for reuse, at most.
    pub spare_segments_max: usize,
    /// Victim bytes compaction reads and scans at a time (see
    /// `compaction.rs`): about the longest it holds up waiting writes.
    pub compaction_slice_bytes: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            space_amp_max: SPACE_AMP_MAX_DEFAULT,
            checkpoint_log_bytes: CHECKPOINT_LOG_BYTES_DEFAULT,
            spare_segments_max: SPARE_SEGMENTS_MAX_DEFAULT,
            compaction_slice_bytes: COMPACTION_SLICE_BYTES_DEFAULT,
        }
    }
}

impl Options {
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        let bad = |why: String| Err(StoreError::InvalidOptions(why));
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return bad(format!(
                "segment_bytes must be between {SEGMENT_BYTES_MIN} and {SEGMENT_BYTES_MAX}"
            ));
        }
        if self.space_amp_max.is_nan() || self.space_amp_max < SPACE_AMP_MIN {
            return bad(format!("space_amp_max must be at least {SPACE_AMP_MIN}"));
        }
        let slice = COMPACTION_SLICE_BYTES_MIN..=COMPACTION_SLICE_BYTES_MAX;
        if !slice.contains(&self.compaction_slice_bytes) {
            return bad(format!(
                "compaction_slice_bytes must be between {COMPACTION_SLICE_BYTES_MIN} and \
                 {COMPACTION_SLICE_BYTES_MAX}"
            ));
        }
        Ok(())
    }
}

/// A batch waiting for the writer.
pub(crate) struct Submission {
    pub batch: WriteBatch,
    pub done: Completion,
}

/// How long [`Writer::next`] may wait for a submission to arrive.
enum Wait {
    No,
    For(std::time::Duration),
    Forever,
}

/// One segment file the writer knows.
#[derive(Debug)]
pub(crate) struct SegmentInfo {
    pub kind: SegmentKind,
    pub file: Arc<dyn DiskFile>,
    pub file_len: u64,
}

/// An append position: segment id and offset of the next record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub id: u32,
    pub offset: u64,
}

/// A record written by the current group, to publish after the fsync.
struct Written {
    seg: u32,
    payload_offset: u64,
    seq: u64,
    /// Which of the group's buffers holds the payload, and where.
    buffer: usize,
    range: std::ops::Range<usize>,
}

/// The encoded group: one buffer per segment it touched, its records and
/// the logical bytes it carries.
struct GroupImage {
    buffers: Vec<Vec<u8>>,
    records: Vec<Written>,
    logical: u64,
}

/// The single writer of a store. Drive it with [`Writer::run`] on a thread,
/// or with [`Writer::step`] from a deterministic executor.
pub struct Writer {
    pub(crate) disk: Arc<dyn Disk>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) rx: Receiver<Submission>,
    pub(crate) options: Options,
    pub(crate) next_seq: u64,
    pub(crate) log: Head,
    pub(crate) compact_out: Option<Head>,
    pub(crate) segments: BTreeMap<u32, SegmentInfo>,
    pub(crate) next_segment_id: u32,
    /// Spare files (name, length) ready to become new segments.
    pub(crate) spares: Vec<(String, u64)>,
    /// The durable checkpoint: (file name, bytes).
    pub(crate) checkpoint: Option<(String, u64)>,
    pub(crate) log_bytes_since_checkpoint: u64,
    pub(crate) pending_victims: BTreeSet<u32>,
    /// Size of the previous group, to decide whether to wait for more.
    pub(crate) last_group_len: usize,
    /// Bytes the previous group appended, to size the next compaction round.
    pub(crate) last_group_bytes: u64,
    /// The victim being compacted a slice at a time, if any.
    pub(crate) compacting: Option<crate::compaction::VictimScan>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("next_seq", &self.next_seq)
            .field("log", &self.log)
            .field("segments", &self.segments.len())
            .finish()
    }
}

impl Drop for Writer {
    /// Closes the gate: batches still waiting in line are never written,
    /// so their completions run now with [`StoreError::Closed`].
    fn drop(&mut self) {
        for submission in self.shared.gate.close() {
            (submission.done)(Err(StoreError::Closed));
        }
    }
}

impl Writer {
    /// Writes until every [`crate::Store`] handle is dropped.
    pub fn run(mut self) {
        while let Some(first) = self.next(Wait::Forever) {
            self.process(first, true);
        }
    }

    /// Commits whatever is queued now, without blocking, fsyncing inline
    /// (the simulator's way). Returns the number of batches handled.
    pub fn step(&mut self) -> usize {
        match self.next(Wait::No) {
            Some(first) => self.process(first, false),
            None => 0,
        }
    }

    /// The oldest submission: from the channel, else from the front of the
    /// gate's line (every submission in the channel is older than those in
    /// line; see `gate.rs`), else, if `wait` allows, the next to arrive.
    fn next(&self, wait: Wait) -> Option<Submission> {
        if let Ok(submission) = self.rx.try_recv() {
            return Some(submission);
        }
        if let Some(submission) = self.shared.gate.take() {
            return Some(submission);
        }
        let arrived = match wait {
            Wait::No => None,
            Wait::For(timeout) => self.rx.recv_timeout(timeout).ok(),
            Wait::Forever => self.rx.recv().ok(),
        };
        // Nothing was in line when the channel was found empty, so a
        // submission since went to the channel; after the last handle is
        // dropped, the line is emptied before the writer stops.
        arrived.or_else(|| self.shared.gate.take())
    }

    /// Whether a submission waits for the writer (queued or in line).
    pub(crate) fn has_waiting(&self) -> bool {
        !self.rx.is_empty() || self.shared.gate.has_waiting()
    }

    /// One group commit: gather, append and fsync, publish, acknowledge,
    /// then upkeep.
    fn process(&mut self, first: Submission, may_wait: bool) -> usize {
        let group = self.gather(first, may_wait);
        self.last_group_len = group.len();
        let count = group.len();
        match self.write_group(&group) {
            Ok(image) => {
                assert_eq!(image.records.len(), count, "one record per submission");
                self.last_group_bytes = image.buffers.iter().map(|b| b.len() as u64).sum();
                self.publish(&image);
                for (sub, w) in group.into_iter().zip(&image.records) {
                    (sub.done)(Ok(w.seq));
                }
                if let Err(e) = self.maintain() {
                    self.poison(&e);
                }
            }
            Err(e) => {
                self.poison(&e);
                let why = self.shared.check_poisoned().err().unwrap_or(e).to_string();
                for sub in group {
                    (sub.done)(Err(StoreError::Poisoned(why.clone())));
                }
            }
        }
        count
    }

    /// Takes `first` and whatever is queued behind it. When `may_wait` (the
    /// threaded writer) and the previous group was larger, waits up to
    /// [`GATHER_WAIT_US`] at a time for the submitters it just acknowledged to
    /// come back, so a closed loop of N submitters keeps filling one group of
    /// about N per fsync instead of splitting into small groups. A wait that
    /// times out ends the gathering; at queue depth one nothing waits.
    fn gather(&mut self, first: Submission, may_wait: bool) -> Vec<Submission> {
        let mut bytes = first.batch.encoded_len();
        let mut group = vec![first];
        let want = self.last_group_len * 3 / 4;
        while group.len() < GROUP_SUBMISSIONS_MAX && bytes < GROUP_BYTES_MAX {
            let wait = match may_wait && group.len() < want {
                true => Wait::For(std::time::Duration::from_micros(GATHER_WAIT_US)),
                false => Wait::No,
            };
            let Some(next) = self.next(wait) else {
                break;
            };
            bytes += next.batch.encoded_len();
            group.push(next);
        }
        assert!(
            group.len() <= GROUP_SUBMISSIONS_MAX && bytes < GROUP_BYTES_MAX + BATCH_BYTES_MAX,
            "a group overshoots its byte bound by less than one batch"
        );
        group
    }

    pub(crate) fn poison(&self, e: &StoreError) {
        self.shared
            .poisoned
            .lock()
            .get_or_insert_with(|| e.to_string());
    }

    /// Appends the group to the log and fsyncs it (durable, not yet visible).
    fn write_group(&mut self, group: &[Submission]) -> Result<GroupImage, StoreError> {
        self.shared.check_poisoned()?;
        let mut image = GroupImage {
            buffers: Vec::new(),
            records: Vec::with_capacity(group.len()),
            logical: group.iter().map(|s| s.batch.value_bytes()).sum(),
        };
        let mut buf = Vec::with_capacity(group.iter().map(|s| s.batch.encoded_len() + 16).sum());
        for sub in group {
            let batch_len = sub.batch.encoded_len();
            assert!(
                batch_len <= BATCH_BYTES_MAX,
                "submitted batches were validated"
            );
            let record_len = (RECORD_HEADER_BYTES + batch_len) as u64;
            let at = self.log.offset + buf.len() as u64;
            if at + record_len > u64::from(self.options.segment_bytes) && at > SEGMENT_HEADER_BYTES
            {
                // The sealed segment is made durable before anything lands
                // in the next one: otherwise a crash could keep a later
                // segment's unsynced records and lose this one's, leaving a
                // gap in the log that recovery must refuse.
                self.flush_log(&buf)?.sync_data()?;
                image.buffers.push(std::mem::take(&mut buf));
                self.log = self.open_segment(SegmentKind::Log)?;
            }
            let at = self.log.offset + buf.len() as u64;
            assert!(
                at + record_len <= u64::from(self.options.segment_bytes)
                    || at == SEGMENT_HEADER_BYTES,
                "a record passes the segment's end only alone in its segment"
            );
            let range = encode_record_with(&mut buf, self.log.id, self.next_seq, |out| {
                sub.batch.encode_into(out)
            });
            let payload_offset = self.log.offset + range.start as u64;
            assert!(
                payload_offset + range.len() as u64 <= u64::from(u32::MAX),
                "value offsets fit in u32"
            );
            image.records.push(Written {
                seg: self.log.id,
                payload_offset,
                seq: self.next_seq,
                buffer: image.buffers.len(),
                range,
            });
            self.next_seq += 1;
        }
        self.flush_log(&buf)?.sync_data()?;
        self.shared.stats.lock().log_syncs += 1;
        image.buffers.push(buf);
        Ok(image)
    }

    /// Writes `buf` at the log head and advances it; returns the file.
    fn flush_log(&mut self, buf: &[u8]) -> Result<Arc<dyn DiskFile>, StoreError> {
        let head = self.log;
        let file = self.write_segment(head.id, head.offset, buf)?;
        self.log.offset += buf.len() as u64;
        self.log_bytes_since_checkpoint += buf.len() as u64;
        Ok(file)
    }

    /// Writes `bytes` into segment `id` at `offset`, keeping lengths and
    /// counters right.
    pub(crate) fn write_segment(
        &mut self,
        id: u32,
        offset: u64,
        bytes: &[u8],
    ) -> Result<Arc<dyn DiskFile>, StoreError> {
        assert!(
            offset >= SEGMENT_HEADER_BYTES
                || (offset == 0 && bytes.len() as u64 == SEGMENT_HEADER_BYTES),
            "only the segment header is written before SEGMENT_HEADER_BYTES"
        );
        let info = self.segments.get_mut(&id).expect("writing a known segment");
        if !bytes.is_empty() {
            info.file.write_at(bytes, offset)?;
        }
        info.file_len = info.file_len.max(offset + bytes.len() as u64);
        self.shared.stats.lock().bytes_written += bytes.len() as u64;
        Ok(info.file.clone())
    }

    /// Makes the group visible: index, counters.
    fn publish(&mut self, image: &GroupImage) {
        let written = &image.records;
        let first_seq = self.shared.stats.lock().last_durable_seq + 1;
        {
            let mut read = self.shared.read.write();
            for (w, seq) in written.iter().zip(first_seq..) {
                assert_eq!(w.seq, seq, "groups publish consecutive sequence numbers");
                assert!(
                    read.files.contains_key(&w.seg),
                    "published records live in open segments"
                );
                let payload = &image.buffers[w.buffer][w.range.clone()];
                apply_record(&mut read.index, w.seg, w.payload_offset, w.seq, payload)
                    .expect("records this writer encoded decode");
            }
        }
        let disk_bytes = self.disk_bytes();
        let mut stats = self.shared.stats.lock();
        stats.logical_bytes += image.logical;
        stats.batches += written.len() as u64;
        stats.last_durable_seq = self.next_seq - 1;
        stats.disk_bytes = disk_bytes;
    }

    /// Starts a new segment of `kind`, reusing a spare file if there is one.
    /// The new name is durable when this returns.
    pub(crate) fn open_segment(&mut self, kind: SegmentKind) -> Result<Head, StoreError> {
        let id = self.next_segment_id;
        assert!(id < u32::MAX, "segment ids are never reused");
        assert!(
            self.segments
                .keys()
                .next_back()
                .is_none_or(|last| *last < id),
            "a new segment has the highest id, so replay order is write order"
        );
        self.next_segment_id += 1;
        let name = segment_name(kind, id);
        if let Some((spare, _)) = self.spares.pop() {
            self.disk.rename(&spare, &name)?;
        }
        let file = self.disk.open(&name, OpenMode::Create)?;
        let file_len = file.len()?;
        self.segments.insert(
            id,
            SegmentInfo {
                kind,
                file: file.clone(),
                file_len,
            },
        );
        self.write_segment(id, 0, &segment_header(kind, id))?;
        self.disk.sync_dir()?;
        self.shared.read.write().files.insert(id, file);
        Ok(Head {
            id,
            offset: SEGMENT_HEADER_BYTES,
        })
    }

    /// Bytes the store occupies: segments, spares and the checkpoint.
    pub(crate) fn disk_bytes(&self) -> u64 {
        let segments: u64 = self.segments.values().map(|s| s.file_len).sum();
        let spares: u64 = self.spares.iter().map(|(_, len)| len).sum();
        segments + spares + self.checkpoint.as_ref().map_or(0, |(_, b)| *b)
    }
}

/// Applies one durable record to the index (the same code at commit and at
/// recovery). `Err` names what is malformed.
pub(crate) fn apply_record(
    index: &mut Index,
    seg: u32,
    payload_offset: u64,
    seq: u64,
    payload: &[u8],
) -> Result<(), String> {
    let ops = decode_ops(payload).ok_or_else(|| format!("malformed batch at seq {seq}"))?;
    for op in ops {
        match op {
            DecodedOp::Put {
                ns,
                key,
                value_offset,
                len,
                crc,
            } => {
                let offset = u32::try_from(payload_offset + u64::from(value_offset))
                    .map_err(|_| format!("value offset past 4 GiB at seq {seq}"))?;
                let loc = Loc {
                    seg,
                    offset,
                    len,
                    crc,
                };
                index.set(
                    ns,
                    key,
                    Version {
                        seq,
                        loc: Some(loc),
                    },
                );
            }
            DecodedOp::Other(Op::Delete { ns, key }) => {
                index.set(ns, key, Version { seq, loc: None })
            }
            DecodedOp::Other(Op::DeleteRange { ns, start, end }) => {
                index.delete_range(ns, start..end, seq);
            }
            DecodedOp::Other(Op::DropNamespace { ns }) => index.drop_namespace(ns),
            DecodedOp::Other(Op::CreateSnapshot { ns }) => index.create_snapshot(ns, seq),
            DecodedOp::Other(Op::DropSnapshot { ns, seq: at }) => {
                index.drop_snapshot(ns, at);
            }
            DecodedOp::Other(Op::Put { .. }) => return Err("put decoded as other".into()),
        }
    }
    Ok(())
}
