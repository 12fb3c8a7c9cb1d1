//! Checkpoints: the whole [`Index`] written to one file, so that opening the
//! store replays only the log written after it.
//!
//! Contract: a checkpoint named `ckpt-<seq>.ckpt` describes every batch up to
//! and including `seq`; the log is replayed from segment `replay_from`,
//! skipping records at or below `seq`. It is written to a `.tmp` file,
//! fsynced, renamed and the directory fsynced, so a crash leaves either the
//! old or the new checkpoint, never half of one. A checkpoint that fails its
//! CRC was damaged after it was made durable: opening refuses it by name.
//!
//! Layout (little-endian): magic, version, seq, replay_from, next_segment_id,
//! the segment list, then per namespace its snapshots and keys with their
//! versions; a CRC32C of everything before it closes the file.

use std::collections::{BTreeMap, BTreeSet};

use crate::codec::Reader;
use crate::disk::{Disk, OpenMode};
use crate::error::StoreError;
use crate::index::{Index, Loc, NsIndex, Version, Versions};
use crate::limits::CHECKPOINT_WRITE_CHUNK_BYTES;
use crate::record::SegmentKind;

const MAGIC: &[u8; 8] = b"METROCKP";
const FORMAT_VERSION: u32 = 1;

/// Everything a checkpoint records besides the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointMeta {
    /// Every batch with a sequence number up to this one is in the checkpoint.
    pub seq: u64,
    /// The first log segment recovery must replay.
    pub replay_from: u32,
    /// The next segment id to allocate.
    pub next_segment_id: u32,
    /// Every segment the checkpoint's index may point into.
    pub segments: BTreeMap<u32, SegmentKind>,
}

/// The file name of the checkpoint covering `seq`.
pub fn checkpoint_name(seq: u64) -> String {
    format!("ckpt-{seq:016x}.ckpt")
}

/// Parses a checkpoint file name into its seq.
pub fn parse_checkpoint_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("ckpt-")?.strip_suffix(".ckpt")?;
    u64::from_str_radix(hex, 16).ok()
}

/// Writes a checkpoint durably and returns its size in bytes.
pub fn write_checkpoint(
    disk: &dyn Disk,
    meta: &CheckpointMeta,
    index: &Index,
) -> Result<u64, StoreError> {
    let bytes = encode(meta, index);
    let name = checkpoint_name(meta.seq);
    let tmp = format!("{name}.tmp");
    let file = disk.open(&tmp, OpenMode::Create)?;
    file.set_len(0)?;
    let mut offset = 0u64;
    for chunk in bytes.chunks(CHECKPOINT_WRITE_CHUNK_BYTES) {
        file.write_at(chunk, offset)?;
        offset += chunk.len() as u64;
    }
    file.sync_data()?;
    disk.rename(&tmp, &name)?;
    disk.sync_dir()?;
    Ok(offset)
}

fn encode(meta: &CheckpointMeta, index: &Index) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + index.namespace_count() * 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&meta.seq.to_le_bytes());
    out.extend_from_slice(&meta.replay_from.to_le_bytes());
    out.extend_from_slice(&meta.next_segment_id.to_le_bytes());
    out.extend_from_slice(&(meta.segments.len() as u32).to_le_bytes());
    for (id, kind) in &meta.segments {
        out.extend_from_slice(&id.to_le_bytes());
        out.push(*kind as u8);
    }
    out.extend_from_slice(&(index.namespace_count() as u64).to_le_bytes());
    for (ns, nsi) in index.namespaces() {
        out.push(ns.kind);
        out.extend_from_slice(&ns.id.to_le_bytes());
        out.extend_from_slice(&(nsi.snapshots.len() as u64).to_le_bytes());
        for s in &nsi.snapshots {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out.extend_from_slice(&(nsi.keys.len() as u64).to_le_bytes());
        for (key, vs) in &nsi.keys {
            out.extend_from_slice(&key.to_le_bytes());
            assert!(
                vs.older.len() < u32::MAX as usize,
                "a key's version count fits its u32 field"
            );
            out.extend_from_slice(&(vs.older.len() as u32 + 1).to_le_bytes());
            for v in vs.older.iter().chain(std::iter::once(&vs.latest)) {
                encode_version(&mut out, v);
            }
        }
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn encode_version(out: &mut Vec<u8>, v: &Version) {
    out.extend_from_slice(&v.seq.to_le_bytes());
    match v.loc {
        None => out.push(0),
        Some(loc) => {
            out.push(1);
            for x in [loc.seg, loc.offset, loc.len, loc.crc] {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
}

/// Reads and verifies the checkpoint `name`.
pub fn read_checkpoint(disk: &dyn Disk, name: &str) -> Result<(CheckpointMeta, Index), StoreError> {
    let file = disk.open(name, OpenMode::Existing)?;
    let len = file.len()?;
    let mut bytes = vec![0u8; len as usize];
    file.read_at(&mut bytes, 0)?;
    let corrupt = |offset: usize, reason: &str| StoreError::Corrupt {
        file: name.to_owned(),
        offset: offset as u64,
        reason: reason.to_owned(),
    };
    if bytes.len() < MAGIC.len() + 4 + 4 {
        return Err(corrupt(0, "checkpoint too short"));
    }
    let body_len = bytes.len() - 4;
    let stored = u32::from_le_bytes(bytes[body_len..].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[..body_len]) != stored {
        return Err(corrupt(body_len, "checkpoint CRC mismatch"));
    }
    let mut r = Reader::new(&bytes[..body_len]);
    decode(&mut r).ok_or_else(|| corrupt(r.position(), "malformed checkpoint"))
}

fn decode(r: &mut Reader<'_>) -> Option<(CheckpointMeta, Index)> {
    if r.take(MAGIC.len())? != MAGIC || r.u32()? != FORMAT_VERSION {
        return None;
    }
    let (seq, replay_from, next_segment_id) = (r.u64()?, r.u32()?, r.u32()?);
    let mut segments = BTreeMap::new();
    for _ in 0..r.u32()? {
        let id = r.u32()?;
        let kind = match r.u8()? {
            1 => SegmentKind::Log,
            2 => SegmentKind::Compacted,
            _ => return None,
        };
        segments.insert(id, kind);
    }
    // What the index asserts of itself is checked here, so that a damaged
    // checkpoint is refused as malformed: each namespace once, snapshots and
    // versions no newer than the checkpoint, a key's versions in seq order.
    let mut index = Index::new();
    for _ in 0..r.u64()? {
        let ns = r.ns()?;
        if index.contains_namespace(ns) {
            return None;
        }
        let mut nsi = NsIndex::default();
        let mut snapshots = BTreeSet::new();
        for _ in 0..r.u64()? {
            snapshots.insert(r.u64()?);
        }
        if snapshots.last().is_some_and(|last| *last > seq) {
            return None;
        }
        nsi.snapshots = snapshots;
        for _ in 0..r.u64()? {
            let key = r.u64()?;
            let count = r.u32()?;
            if count == 0 {
                return None;
            }
            let mut older = Vec::with_capacity(count as usize - 1);
            for _ in 0..count - 1 {
                older.push(decode_version(r)?);
            }
            let latest = decode_version(r)?;
            let mut seqs = older.iter().chain(std::iter::once(&latest)).map(|v| v.seq);
            let in_order = seqs.clone().zip(seqs.clone().skip(1)).all(|(a, b)| a < b);
            if !in_order || seqs.any(|s| s > seq) {
                return None;
            }
            nsi.keys.insert(key, Versions { latest, older });
        }
        index.load_namespace(ns, nsi);
    }
    let meta = CheckpointMeta {
        seq,
        replay_from,
        next_segment_id,
        segments,
    };
    r.is_done().then_some((meta, index))
}

fn decode_version(r: &mut Reader<'_>) -> Option<Version> {
    let seq = r.u64()?;
    let loc = match r.u8()? {
        0 => None,
        1 => Some(Loc {
            seg: r.u32()?,
            offset: r.u32()?,
            len: r.u32()?,
            crc: r.u32()?,
        }),
        _ => return None,
    };
    Some(Version { seq, loc })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FaultyDisk;
    use crate::batch::Namespace;

    #[test]
    fn round_trip_and_damage_is_refused() {
        let disk = FaultyDisk::new(3);
        let mut index = Index::new();
        let ns = Namespace::new(2, 9);
        let loc = |o| Loc {
            seg: 1,
            offset: o,
            len: 4,
            crc: 5,
        };
        index.set(
            ns,
            1,
            Version {
                seq: 1,
                loc: Some(loc(0)),
            },
        );
        index.create_snapshot(ns, 1);
        index.set(
            ns,
            1,
            Version {
                seq: 2,
                loc: Some(loc(8)),
            },
        );
        let meta = CheckpointMeta {
            seq: 2,
            replay_from: 1,
            next_segment_id: 2,
            segments: BTreeMap::from([(1, SegmentKind::Log)]),
        };
        write_checkpoint(&disk, &meta, &index).unwrap();
        let name = checkpoint_name(2);
        assert_eq!(parse_checkpoint_name(&name), Some(2));
        let (meta2, index2) = read_checkpoint(&disk, &name).unwrap();
        assert_eq!(meta2, meta);
        assert_eq!(index2.get(ns, 1, Some(1)), Some(loc(0)));
        assert_eq!(index2.get(ns, 1, None), Some(loc(8)));
        assert_eq!(index2.live_bytes(), 8);
        disk.corrupt(&name, 20);
        let err = read_checkpoint(&disk, &name).unwrap_err();
        assert!(err.to_string().contains(&name), "{err}");
    }
}
