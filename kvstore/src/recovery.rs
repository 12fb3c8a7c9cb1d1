//! Opening a store: load the newest checkpoint, replay the log after it.
//!
//! Rules, in order:
//! 1. Leftover `.tmp` files are removed; older checkpoints too.
//! 2. Every segment the checkpoint names must exist, or opening fails.
//! 3. Compaction segments the checkpoint does not name are orphans of an
//!    interrupted compaction and are removed; so are log segments before the
//!    replay point that it does not name (their data all died).
//! 4. Log segments from the replay point on are scanned in order. Sequence
//!    numbers must be consecutive across them. A record that fails its CRC
//!    ends a segment. In the last segment that is a torn tail (the write was
//!    never acknowledged, since acknowledgement follows the fsync) — unless
//!    a valid record follows it, which means damage to acknowledged data: a
//!    [`StoreError::Corrupt`] naming the file and offset. In an earlier
//!    segment a gap in sequence numbers before the next segment is likewise
//!    refused.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crossbeam_channel::Receiver;

use crate::checkpoint::{CheckpointMeta, parse_checkpoint_name, read_checkpoint};
use crate::disk::{Disk, DiskFile, OpenMode};
use crate::error::StoreError;
use crate::index::Index;
use crate::record::{
    SEGMENT_HEADER_BYTES, SegmentKind, header_matches, parse_segment_name, record_at,
    segment_header, segment_name, valid_record_after,
};
use crate::shared::Shared;
use crate::writer::{Head, Options, SegmentInfo, Submission, Writer, apply_record};

/// What the replay of the log found.
struct ReplayEnd {
    last_seq: u64,
    /// Where appends continue, if a log segment exists in the replay range.
    head: Option<Head>,
}

impl Writer {
    pub(crate) fn open(
        disk: Arc<dyn Disk>,
        options: Options,
        shared: Arc<Shared>,
        rx: Receiver<Submission>,
    ) -> Result<Writer, StoreError> {
        options.validate()?;
        let names = disk.list()?;
        for name in names.iter().filter(|n| n.ends_with(".tmp")) {
            disk.remove(name)?;
        }
        let (meta, mut index, checkpoint) = load_checkpoint(&*disk, &names)?;
        let mut spares = Vec::new();
        let mut on_disk = BTreeMap::new();
        for name in &names {
            if name.starts_with("spare-") && name.ends_with(".seg") {
                let len = disk.open(name, OpenMode::Existing)?.len()?;
                spares.push((name.clone(), len));
            } else if let Some((kind, id)) = parse_segment_name(name) {
                on_disk.insert(id, kind);
            }
        }
        for (id, kind) in &meta.segments {
            if on_disk.get(id) != Some(kind) {
                return Err(StoreError::Corrupt {
                    file: segment_name(*kind, *id),
                    offset: 0,
                    reason: "segment named by the checkpoint is missing".into(),
                });
            }
        }
        let mut segments = BTreeMap::new();
        let mut replay_ids = Vec::new();
        for (id, kind) in &on_disk {
            let name = segment_name(*kind, *id);
            let replay = *kind == SegmentKind::Log && *id >= meta.replay_from;
            if !replay && !meta.segments.contains_key(id) {
                disk.remove(&name)?;
                continue;
            }
            let file = disk.open(&name, OpenMode::Existing)?;
            let file_len = file.len()?;
            segments.insert(
                *id,
                SegmentInfo {
                    kind: *kind,
                    file,
                    file_len,
                },
            );
            if replay {
                replay_ids.push(*id);
            }
        }
        disk.sync_dir()?;
        let end = replay(&mut index, &segments, &replay_ids, meta.seq)?;
        assert!(
            end.last_seq >= meta.seq,
            "the log tail is at or after the checkpoint"
        );
        let next_segment_id = on_disk
            .keys()
            .next_back()
            .map_or(meta.next_segment_id, |last| {
                meta.next_segment_id.max(last + 1)
            });
        {
            let mut read = shared.read.write();
            read.files = segments
                .iter()
                .map(|(id, s)| (*id, s.file.clone()))
                .collect();
            read.index = index;
        }
        let mut writer = Writer {
            disk,
            shared,
            rx,
            options,
            next_seq: end.last_seq + 1,
            log: Head { id: 0, offset: 0 },
            compact_out: None,
            segments,
            next_segment_id,
            spares,
            checkpoint,
            log_bytes_since_checkpoint: 0,
            pending_victims: BTreeSet::new(),
            last_group_len: 0,
            last_group_bytes: 0,
            compacting: None,
        };
        writer.log = writer.resume_log(end.head)?;
        let disk_bytes = writer.disk_bytes();
        let mut stats = writer.shared.stats.lock();
        stats.last_durable_seq = end.last_seq;
        stats.disk_bytes = disk_bytes;
        drop(stats);
        Ok(writer)
    }

    /// Continues the last log segment if it has room, else starts a new one.
    fn resume_log(&mut self, head: Option<Head>) -> Result<Head, StoreError> {
        match head {
            Some(head) if head.offset < u64::from(self.options.segment_bytes) => {
                assert!(
                    head.offset >= SEGMENT_HEADER_BYTES,
                    "appends resume after the segment header"
                );
                if head.offset == SEGMENT_HEADER_BYTES {
                    // Its header may be torn or left from a previous life.
                    let file =
                        self.write_segment(head.id, 0, &segment_header(SegmentKind::Log, head.id))?;
                    file.sync_data()?;
                }
                Ok(head)
            }
            _ => self.open_segment(SegmentKind::Log),
        }
    }
}

type LoadedCheckpoint = (CheckpointMeta, Index, Option<(String, u64)>);

fn load_checkpoint(disk: &dyn Disk, names: &[String]) -> Result<LoadedCheckpoint, StoreError> {
    let mut checkpoints: Vec<(u64, &String)> = names
        .iter()
        .filter_map(|n| parse_checkpoint_name(n).map(|seq| (seq, n)))
        .collect();
    checkpoints.sort();
    let Some((_, newest)) = checkpoints.pop() else {
        let meta = CheckpointMeta {
            seq: 0,
            replay_from: 0,
            next_segment_id: 0,
            segments: BTreeMap::new(),
        };
        return Ok((meta, Index::new(), None));
    };
    let (meta, index) = read_checkpoint(disk, newest)?;
    if parse_checkpoint_name(newest) != Some(meta.seq) {
        return Err(StoreError::Corrupt {
            file: newest.clone(),
            offset: 0,
            reason: format!("checkpoint file name disagrees with its seq {}", meta.seq),
        });
    }
    for (_, old) in checkpoints {
        disk.remove(old)?;
    }
    let bytes = disk.open(newest, OpenMode::Existing)?.len()?;
    Ok((meta, index, Some((newest.clone(), bytes))))
}

/// Replays the log segments `ids` (in order) into `index`, skipping records
/// the checkpoint at `checkpoint_seq` already holds.
fn replay(
    index: &mut Index,
    segments: &BTreeMap<u32, SegmentInfo>,
    ids: &[u32],
    checkpoint_seq: u64,
) -> Result<ReplayEnd, StoreError> {
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "log segments replay in id order"
    );
    let mut expected: Option<u64> = None;
    let mut last_seq = checkpoint_seq;
    let mut head = None;
    for (i, id) in ids.iter().enumerate() {
        let is_last = i + 1 == ids.len();
        let file = &segments[id].file;
        let image = read_image(&**file)?;
        let corrupt = |offset: u64, reason: String| StoreError::Corrupt {
            file: file.name().to_owned(),
            offset,
            reason,
        };
        if !header_matches(&image, SegmentKind::Log, *id) {
            if is_last {
                head = Some(Head {
                    id: *id,
                    offset: SEGMENT_HEADER_BYTES,
                });
                break;
            }
            return Err(corrupt(
                0,
                "bad segment header before the end of the log".into(),
            ));
        }
        let mut offset = SEGMENT_HEADER_BYTES;
        while let Some(record) = record_at(&image, *id, offset) {
            let want = expected.unwrap_or(record.seq.min(checkpoint_seq + 1));
            if record.seq != want {
                return Err(corrupt(
                    offset,
                    format!("record has seq {} where {want} was expected", record.seq),
                ));
            }
            expected = Some(record.seq + 1);
            if record.seq > checkpoint_seq {
                // The check above admits no gap and nothing before the
                // checkpoint's successor.
                assert_eq!(record.seq, last_seq + 1, "replay applies batches in order");
                apply_record(
                    index,
                    *id,
                    record.payload_offset,
                    record.seq,
                    record.payload,
                )
                .map_err(|why| corrupt(offset, why))?;
                last_seq = record.seq;
            }
            offset = record.payload_offset + record.payload.len() as u64;
        }
        if let Some(later) = valid_record_after(&image, *id, offset) {
            return Err(corrupt(
                offset,
                format!("damaged record followed by a valid record at offset {later}"),
            ));
        }
        if is_last {
            head = Some(Head { id: *id, offset });
        }
    }
    Ok(ReplayEnd { last_seq, head })
}

fn read_image(file: &dyn DiskFile) -> Result<Vec<u8>, StoreError> {
    let mut image = vec![0u8; file.len()? as usize];
    file.read_at(&mut image, 0)?;
    Ok(image)
}
