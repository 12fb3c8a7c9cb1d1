//! Compaction and checkpoints, run by the [`Writer`] between group commits.
//!
//! Compaction copies the live values of the sealed segment with the lowest
//! live ratio into a compaction segment (`cmp-*`), repoints the index and
//! marks the victim. It reads and relocates the victim one slice
//! (`Options::compaction_slice_bytes`) at a time. Once a round has freed
//! [`COMPACTION_PACE_MIN`] times what the last group appended, it gives the
//! writer back to any waiting submitter, so a write waits for at most one
//! such round (a whole 64 MiB victim at once stalled writes for
//! 60-360 ms). A checkpoint then makes the index durable; only after
//! that are dead segments (victims, and any whose data all died) deleted or
//! kept as spares. A crash before the checkpoint finds the old checkpoint
//! and the victims intact; compaction segments no checkpoint names are
//! orphans and are removed at open.
//!
//! Space bound: after a round of maintenance that found no submission
//! waiting (under load, compaction frees more than the writes add, so
//! usage returns under it), segment bytes excluding victims awaiting the
//! next checkpoint are at most
//! `max(space_amp_max, 1 / VICTIM_LIVE_RATIO_MAX) * live + SLACK_SEGMENTS *
//! segment_bytes`, so the store's whole footprint is bounded by that plus
//! [`VICTIMS_PER_CHECKPOINT_MAX`] segments, the spares and the checkpoint file.
//! The property test `space_amplification_stays_bounded` checks it.

use crate::batch::{DecodedOp, WriteBatch, decode_ops};
use crate::checkpoint::{CheckpointMeta, write_checkpoint};
use crate::error::StoreError;
use crate::index::Loc;
use crate::limits::{
    COMPACTION_PACE_MIN, RELOCATE_WRITE_BYTES, SLACK_SEGMENTS, VICTIM_LIVE_RATIO_MAX,
    VICTIMS_PER_CHECKPOINT_MAX,
};
use crate::record::{
    RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, SegmentKind, encode_record_with, record_at,
    segment_name,
};
use crate::writer::{SegmentInfo, Writer};

/// Relocated records encoded but not written yet: they go to segment `id`
/// at offset `at`.
struct PendingOut {
    id: u32,
    at: u64,
    buf: Vec<u8>,
}

/// Where the scan of the victim being compacted stands.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VictimScan {
    /// The victim segment.
    pub seg: u32,
    /// Offset of the first record not scanned yet.
    pub offset: u64,
    /// Its live bytes over its length when it was picked.
    pub live_ratio: f64,
}

/// Reads the slice of `info`'s file that starts at `offset`: `slice` bytes
/// (or to the file's end), and then the rest of the record that starts
/// there if it is larger (up to the file's end).
fn read_slice(info: &SegmentInfo, offset: u64, slice: u32) -> Result<Vec<u8>, StoreError> {
    let available = info.file_len.saturating_sub(offset);
    let mut image = vec![0u8; available.min(u64::from(slice)) as usize];
    info.file.read_at(&mut image, offset)?;
    if let Some(len) = record_len_at(&image, 0)
        && len > image.len() as u64
    {
        let read = image.len();
        image.resize(len.min(available) as usize, 0);
        info.file
            .read_at(&mut image[read..], offset + read as u64)?;
    }
    Ok(image)
}

/// Bytes of the record whose header starts at `at` in `image` (header and
/// payload), if a whole header is there and it claims a payload.
fn record_len_at(image: &[u8], at: u64) -> Option<u64> {
    let at = usize::try_from(at).ok()?;
    let head = image.get(at..at.checked_add(RECORD_HEADER_BYTES)?)?;
    let len = u32::from_le_bytes(head[4..8].try_into().ok()?);
    (len > 0).then_some(RECORD_HEADER_BYTES as u64 + u64::from(len))
}

/// A live value found in a victim segment.
struct LiveValue {
    ns: crate::batch::Namespace,
    key: u64,
    seq: u64,
    from: Loc,
    value_start: usize,
}

impl Writer {
    /// One round of upkeep: compact while space is over the bound, and
    /// checkpoint when the log has grown or victims wait to be retired.
    ///
    /// Compaction scans its victim a slice
    /// ([`crate::Options::compaction_slice_bytes`]) at a time. A
    /// round scans at least [`Self::compaction_budget`] bytes, then stops as
    /// soon as a submission is waiting (the victim's scan resumes next
    /// round); with nothing waiting it runs until the bound holds.
    pub(crate) fn maintain(&mut self) -> Result<(), StoreError> {
        let mut budget = None;
        loop {
            let scan = match self.compacting {
                Some(scan) => scan,
                None => {
                    if self.pending_victims.len() >= VICTIMS_PER_CHECKPOINT_MAX
                        || !self.over_space_bound()
                    {
                        break;
                    }
                    let Some((seg, live_ratio)) = self.pick_victim() else {
                        break;
                    };
                    VictimScan {
                        seg,
                        offset: SEGMENT_HEADER_BYTES,
                        live_ratio,
                    }
                }
            };
            let left = budget.get_or_insert_with(|| self.compaction_budget(scan.live_ratio));
            let scanned = self.compact_slice(scan)?;
            *left = left.saturating_sub(scanned);
            if *left == 0 && self.has_waiting() {
                break;
            }
        }
        assert!(
            self.pending_victims.len() <= VICTIMS_PER_CHECKPOINT_MAX,
            "victims wait for at most one checkpoint's worth"
        );
        let retire = !self.pending_victims.is_empty()
            && (self.pending_victims.len() >= VICTIMS_PER_CHECKPOINT_MAX
                || !self.over_space_bound());
        if retire || self.log_bytes_since_checkpoint >= self.options.checkpoint_log_bytes {
            self.write_checkpoint()?;
        }
        Ok(())
    }

    /// Victim bytes a round scans before it may yield: one slice, or what
    /// frees [`COMPACTION_PACE_MIN`] times the bytes the last group appended
    /// if more. Scanning a victim that was `live_ratio` live when picked
    /// frees at least `1 - live_ratio` of each byte (its data only dies
    /// since), so compaction keeps up with any write rate; and a victim is
    /// at most [`VICTIM_LIVE_RATIO_MAX`] live, so a round is at most
    /// `COMPACTION_PACE_MIN / (1 - VICTIM_LIVE_RATIO_MAX)` groups' worth.
    fn compaction_budget(&self, live_ratio: f64) -> u64 {
        let dead = 1.0 - live_ratio.clamp(0.0, VICTIM_LIVE_RATIO_MAX);
        let pace = (self.last_group_bytes as f64 * COMPACTION_PACE_MIN / dead).ceil() as u64;
        u64::from(self.options.compaction_slice_bytes).max(pace)
    }

    fn over_space_bound(&self) -> bool {
        let live = self.shared.read.read().index.live_bytes() as f64;
        let segment_bytes: u64 = self
            .segments
            .iter()
            .filter(|(id, _)| !self.pending_victims.contains(id))
            .map(|(_, s)| s.file_len)
            .sum();
        let slack = SLACK_SEGMENTS * u64::from(self.options.segment_bytes);
        segment_bytes as f64 > self.options.space_amp_max * live + slack as f64
    }

    /// Relocates the live values of `scan`'s next slice and records where
    /// the scan stands (in `compacting`); once it reaches the end, the
    /// victim waits for the next checkpoint. Returns the bytes scanned.
    fn compact_slice(&mut self, scan: VictimScan) -> Result<u64, StoreError> {
        // A checkpoint retires a segment whose data all died, victim or not.
        let Some(info) = self.segments.get(&scan.seg) else {
            self.compacting = None;
            return Ok(0);
        };
        assert!(
            scan.seg != self.log.id && Some(scan.seg) != self.compact_out.map(|h| h.id),
            "the active log segment and the compaction output are never victims"
        );
        let end = info.file_len;
        let image = read_slice(info, scan.offset, self.options.compaction_slice_bytes)?;
        let (live, next) = self.live_values(scan.seg, scan.offset, &image, end);
        let mut moves = Vec::with_capacity(live.len());
        let mut pending = None;
        for value in &live {
            let bytes = &image[value.value_start..value.value_start + value.from.len as usize];
            let to = self.append_relocated(value, bytes, &mut pending)?;
            moves.push((value, to));
        }
        // Every relocated value is in its file before the index points at it.
        self.flush_relocated(&mut pending)?;
        {
            let mut read = self.shared.read.write();
            for (v, to) in moves {
                let moved = read.index.relocate(v.ns, v.key, v.seq, v.from, to);
                assert!(moved, "only the writer changes the index");
            }
            // The output was created by this writer and holds only what it
            // relocated: its live bytes are bytes of its file.
            if let Some(out) = self.compact_out {
                assert!(
                    read.index.segment_live(out.id) <= self.segments[&out.id].file_len,
                    "a segment's live bytes never exceed its length"
                );
            }
        }
        let scanned = image.len() as u64;
        self.shared.stats.lock().compaction_scanned_bytes += scanned;
        match next {
            Some(offset) => {
                assert!(offset > scan.offset, "every slice moves the scan on");
                self.compacting = Some(VictimScan { offset, ..scan });
            }
            None => self.finish_victim(scan.seg)?,
        }
        Ok(scanned)
    }

    /// Marks a fully scanned victim for retirement at the next checkpoint.
    fn finish_victim(&mut self, victim: u32) -> Result<(), StoreError> {
        self.compacting = None;
        let left = self.shared.read.read().index.segment_live(victim);
        if left > 0 {
            // Some live value sits behind a record the scan could not read
            // (damage after the record was written). Keep the victim, and
            // refuse to go on: its data is not what the index says.
            return Err(StoreError::Corrupt {
                file: segment_name(self.segments[&victim].kind, victim),
                offset: SEGMENT_HEADER_BYTES,
                reason: format!("compaction found {left} live bytes it could not read back"),
            });
        }
        let fresh = self.pending_victims.insert(victim);
        assert!(fresh, "a victim is finished once");
        self.shared.stats.lock().compacted_segments += 1;
        Ok(())
    }

    /// The sealed segment with the lowest live ratio, if one is at most
    /// [`VICTIM_LIVE_RATIO_MAX`] live, and that ratio.
    fn pick_victim(&self) -> Option<(u32, f64)> {
        let read = self.shared.read.read();
        let out = self.compact_out.map(|h| h.id);
        self.segments
            .iter()
            .filter(|(id, _)| {
                **id != self.log.id && Some(**id) != out && !self.pending_victims.contains(id)
            })
            .map(|(id, s)| {
                let ratio = read.index.segment_live(*id) as f64 / s.file_len.max(1) as f64;
                (ratio, *id)
            })
            .filter(|(ratio, _)| *ratio <= VICTIM_LIVE_RATIO_MAX)
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(ratio, id)| (id, ratio))
    }

    /// Values in `image` (the victim's bytes from offset `base`; the file
    /// ends at `end`) that the index still points at, and the offset where
    /// the next slice starts: `None` once the records end (the file's end,
    /// an unwritten or damaged record).
    fn live_values(
        &self,
        seg: u32,
        base: u64,
        image: &[u8],
        end: u64,
    ) -> (Vec<LiveValue>, Option<u64>) {
        let read = self.shared.read.read();
        let mut found = Vec::new();
        let mut at = 0u64;
        let next = loop {
            let rest = image.len() as u64 - at;
            let cut = match record_len_at(image, at) {
                Some(len) => len > rest,
                None => rest < RECORD_HEADER_BYTES as u64,
            };
            if cut {
                // A record (or header) cut by the slice's end starts the
                // next slice if the file goes on; a slice starting with a
                // record holds all of it (`read_slice`), so one cut there
                // runs past the file's end and is no record.
                let more = base + (image.len() as u64) < end;
                break (at > 0 && more).then_some(base + at);
            }
            let Some(record) = record_at(image, seg, at) else {
                break None;
            };
            at = record.payload_offset + record.payload.len() as u64;
            let Some(ops) = decode_ops(record.payload) else {
                continue;
            };
            for op in ops {
                let DecodedOp::Put {
                    ns,
                    key,
                    value_offset,
                    len,
                    crc,
                } = op
                else {
                    continue;
                };
                let start = record.payload_offset + u64::from(value_offset);
                let from = Loc {
                    seg,
                    offset: (base + start) as u32,
                    len,
                    crc,
                };
                if read.index.points_at(ns, key, record.seq, from) {
                    found.push(LiveValue {
                        ns,
                        key,
                        seq: record.seq,
                        from,
                        value_start: start as usize,
                    });
                }
            }
        };
        (found, next)
    }

    /// Writes the relocated records gathered so far.
    fn flush_relocated(&mut self, pending: &mut Option<PendingOut>) -> Result<(), StoreError> {
        if let Some(out) = pending.take()
            && !out.buf.is_empty()
        {
            self.write_segment(out.id, out.at, &out.buf)?;
        }
        Ok(())
    }

    /// Appends one relocated value (a one-put record carrying its original
    /// seq) to the compaction segment; returns its new location. The record
    /// is gathered in `pending` (written by [`Self::flush_relocated`], or
    /// here once the buffer is full or the segment changes): the value is
    /// readable there only after that.
    fn append_relocated(
        &mut self,
        value: &LiveValue,
        bytes: &[u8],
        pending: &mut Option<PendingOut>,
    ) -> Result<Loc, StoreError> {
        let mut batch = WriteBatch::new();
        batch.put(value.ns, value.key, bytes.to_vec());
        let record_len = (RECORD_HEADER_BYTES + batch.encoded_len()) as u64;
        let head = match self.compact_out {
            Some(h) if h.offset + record_len <= u64::from(self.options.segment_bytes) => h,
            Some(h) if h.offset == SEGMENT_HEADER_BYTES => h,
            previous => {
                // The sealed output must be durable before a checkpoint names it.
                if let Some(h) = previous {
                    self.flush_relocated(pending)?;
                    self.segments[&h.id].file.sync_data()?;
                }
                self.open_segment(SegmentKind::Compacted)?
            }
        };
        let out = pending.get_or_insert_with(|| PendingOut {
            id: head.id,
            at: head.offset,
            buf: Vec::with_capacity(RELOCATE_WRITE_BYTES + record_len as usize),
        });
        assert!(
            out.id == head.id && out.at + out.buf.len() as u64 == head.offset,
            "relocated records are gathered contiguously"
        );
        encode_record_with(&mut out.buf, head.id, value.seq, |buf| {
            batch.encode_into(buf)
        });
        if out.buf.len() >= RELOCATE_WRITE_BYTES {
            self.flush_relocated(pending)?;
        }
        self.compact_out = Some(crate::writer::Head {
            id: head.id,
            offset: head.offset + record_len,
        });
        let value_offset = head.offset + record_len - bytes.len() as u64;
        assert!(
            value_offset + bytes.len() as u64 <= u64::from(u32::MAX),
            "value offsets fit in u32"
        );
        Ok(Loc {
            seg: head.id,
            offset: value_offset as u32,
            len: value.from.len,
            crc: value.from.crc,
        })
    }

    /// Makes the index durable and retires every segment it no longer needs.
    pub(crate) fn write_checkpoint(&mut self) -> Result<(), StoreError> {
        if let Some(out) = self.compact_out {
            self.segments[&out.id].file.sync_data()?;
        }
        let out = self.compact_out.map(|h| h.id);
        let durable_seq = self.shared.stats.lock().last_durable_seq;
        assert_eq!(
            self.next_seq - 1,
            durable_seq,
            "a checkpoint covers only durable, published batches"
        );
        let (meta, bytes, dead) = {
            let read = self.shared.read.read();
            // Every batch so far is durable and published (maintenance runs
            // between group commits, never on a poisoned store): replay
            // restarts in the active log segment.
            let replay_from = self.log.id;
            let keep = |id: u32| {
                let replayed = self.segments[&id].kind == SegmentKind::Log && id >= replay_from;
                replayed || Some(id) == out || read.index.segment_live(id) > 0
            };
            let meta = CheckpointMeta {
                seq: self.next_seq - 1,
                replay_from,
                next_segment_id: self.next_segment_id,
                segments: self
                    .segments
                    .iter()
                    .filter(|(id, _)| keep(**id))
                    .map(|(id, s)| (*id, s.kind))
                    .collect(),
            };
            assert!(
                meta.segments.contains_key(&replay_from)
                    && meta.segments.keys().all(|id| *id < meta.next_segment_id),
                "a checkpoint names its replay point and only allocated segments"
            );
            let bytes = write_checkpoint(&*self.disk, &meta, &read.index)?;
            let dead: Vec<u32> = self
                .segments
                .keys()
                .copied()
                .filter(|id| !keep(*id))
                .collect();
            (meta, bytes, dead)
        };
        let name = crate::checkpoint::checkpoint_name(meta.seq);
        if let Some((old, _)) = self.checkpoint.replace((name.clone(), bytes))
            && old != name
        {
            self.disk.remove(&old)?;
        }
        self.retire(&dead)?;
        self.pending_victims.clear();
        self.log_bytes_since_checkpoint = 0;
        let disk_bytes = self.disk_bytes();
        let mut stats = self.shared.stats.lock();
        stats.checkpoints += 1;
        stats.bytes_written += bytes;
        stats.disk_bytes = disk_bytes;
        Ok(())
    }

    /// Deletes dead segments, or keeps them as spares for reuse.
    fn retire(&mut self, dead: &[u32]) -> Result<(), StoreError> {
        if dead.is_empty() {
            return Ok(());
        }
        {
            // The write lock waits out every reader that might still be
            // reading from these files.
            let mut read = self.shared.read.write();
            for id in dead {
                assert!(
                    *id != self.log.id && Some(*id) != self.compact_out.map(|h| h.id),
                    "the active log segment and the compaction output are never retired"
                );
                read.files.remove(id);
                read.index.forget_segment(*id);
            }
        }
        for id in dead {
            let info = self.segments.remove(id).expect("dead segment is known");
            let name = segment_name(info.kind, *id);
            let reusable = info.file_len >= u64::from(self.options.segment_bytes) / 2;
            if reusable && self.spares.len() < self.options.spare_segments_max {
                let spare = format!("spare-{id:08x}.seg");
                self.disk.rename(&name, &spare)?;
                self.spares.push((spare, info.file_len));
            } else {
                self.disk.remove(&name)?;
            }
        }
        self.disk.sync_dir()?;
        Ok(())
    }
}
