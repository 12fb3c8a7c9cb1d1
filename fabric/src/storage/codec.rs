//! Encodings of what the storage keeps in kvstore. kvstore checks every
//! value's CRC32C on read; these decoders additionally check lengths and
//! tags and never panic on bytes from disk.
//!
//! - Log ids, votes, sizes, slots: fixed width, little-endian.
//! - Log entries: one wire frame each ([`crate::wire`], `WIRE_VERSION`), an
//!   `AppendEntries` message carrying exactly that entry, so the log on disk
//!   and on the network share one validated format (rkyv header checked with
//!   `rkyv::access`, CRC32C on the header and on every 4 KiB block).
//! - Memberships and snapshot metadata: one wire frame holding an empty
//!   `SnapshotChunk` whose `meta` is the value.

use openraft::AsyncRuntime;
use openraft::raft::AppendEntriesRequest;

use super::StorageError;
use crate::raft::types::{Entry, LeaderId, LogId, SnapshotMeta, Vote};
use crate::volume::VolumeId;
use crate::wire::{Frame, Message, SnapshotChunk, decode, encode};

/// Bytes of an encoded log id: term, node, index.
pub(crate) const LOG_ID_BYTES: usize = 24;
/// Bytes of an encoded vote: term, node, committed flag.
pub(crate) const VOTE_BYTES: usize = 17;

fn corrupt(what: &'static str, key: u64, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        what,
        key,
        reason: reason.into(),
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn check_len(what: &'static str, key: u64, bytes: &[u8], len: usize) -> Result<(), StorageError> {
    if bytes.len() == len {
        Ok(())
    } else {
        Err(corrupt(
            what,
            key,
            format!("{} bytes, expected {len}", bytes.len()),
        ))
    }
}

/// Checks that the stored value of block `index` is one whole block.
pub(crate) fn check_block(index: u64, bytes: &[u8]) -> Result<(), StorageError> {
    check_len("block", index, bytes, crate::volume::BLOCK_BYTES)
}

pub(crate) fn encode_log_id(log_id: &LogId) -> Vec<u8> {
    let mut out = Vec::with_capacity(LOG_ID_BYTES);
    out.extend_from_slice(&log_id.leader_id.term.to_le_bytes());
    out.extend_from_slice(&log_id.leader_id.node_id.to_le_bytes());
    out.extend_from_slice(&log_id.index.to_le_bytes());
    out
}

pub(crate) fn decode_log_id(key: u64, bytes: &[u8]) -> Result<LogId, StorageError> {
    check_len("log id", key, bytes, LOG_ID_BYTES)?;
    let leader = LeaderId {
        term: u64_at(bytes, 0),
        node_id: u64_at(bytes, 8),
    };
    Ok(LogId::new(leader, u64_at(bytes, 16)))
}

pub(crate) fn encode_vote(vote: &Vote) -> Vec<u8> {
    let mut out = Vec::with_capacity(VOTE_BYTES);
    out.extend_from_slice(&vote.leader_id.term.to_le_bytes());
    out.extend_from_slice(&vote.leader_id.node_id.to_le_bytes());
    out.push(u8::from(vote.committed));
    out
}

pub(crate) fn decode_vote(key: u64, bytes: &[u8]) -> Result<Vote, StorageError> {
    check_len("vote", key, bytes, VOTE_BYTES)?;
    let committed = match bytes[16] {
        0 => false,
        1 => true,
        other => return Err(corrupt("vote", key, format!("committed flag {other}"))),
    };
    Ok(Vote {
        leader_id: LeaderId {
            term: u64_at(bytes, 0),
            node_id: u64_at(bytes, 8),
        },
        committed,
    })
}

pub(crate) fn encode_u64(value: u64) -> Vec<u8> {
    value.to_le_bytes().to_vec()
}

pub(crate) fn decode_u64(what: &'static str, key: u64, bytes: &[u8]) -> Result<u64, StorageError> {
    check_len(what, key, bytes, 8)?;
    Ok(u64_at(bytes, 0))
}

/// Where a group's current Raft snapshot is pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SnapshotRecord {
    pub slot: u8,
    pub seq: u64,
    pub size_blocks: u64,
}

/// Bytes of an encoded [`SnapshotRecord`].
const SNAPSHOT_RECORD_BYTES: usize = 17;

pub(crate) fn encode_snapshot_record(record: &SnapshotRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(SNAPSHOT_RECORD_BYTES);
    out.push(record.slot);
    out.extend_from_slice(&record.seq.to_le_bytes());
    out.extend_from_slice(&record.size_blocks.to_le_bytes());
    out
}

pub(crate) fn decode_snapshot_record(
    key: u64,
    bytes: &[u8],
) -> Result<SnapshotRecord, StorageError> {
    check_len("snapshot record", key, bytes, SNAPSHOT_RECORD_BYTES)?;
    Ok(SnapshotRecord {
        slot: bytes[0],
        seq: u64_at(bytes, 1),
        size_blocks: u64_at(bytes, 9),
    })
}

/// One log entry as a wire frame (see the module docs).
pub(crate) fn encode_entry<RT: AsyncRuntime>(
    volume: VolumeId,
    entry: &Entry,
) -> Result<Vec<u8>, StorageError> {
    let request = AppendEntriesRequest {
        vote: Vote::new(0, 0),
        prev_log_id: None,
        leader_commit: None,
        entries: vec![entry.clone()],
    };
    let message = Message::<RT>::AppendEntries(request);
    encode(&Frame { volume, message }).map_err(|err| StorageError::Encode {
        what: "log entry",
        reason: err.to_string(),
    })
}

/// Decodes the entry stored under log index `index`, checking that it is
/// exactly one entry of this volume with that index.
pub(crate) fn decode_entry<RT: AsyncRuntime>(
    volume: VolumeId,
    index: u64,
    bytes: &[u8],
) -> Result<Entry, StorageError> {
    let frame = decode::<RT>(bytes).map_err(|err| corrupt("log entry", index, err.to_string()))?;
    if frame.volume != volume {
        return Err(corrupt("log entry", index, format!("of {}", frame.volume)));
    }
    let Message::AppendEntries(request) = frame.message else {
        return Err(corrupt("log entry", index, "not an entry frame"));
    };
    let mut entries = request.entries;
    match (entries.pop(), entries.is_empty()) {
        (Some(entry), true) if entry.log_id.index == index => Ok(entry),
        (Some(entry), true) => Err(corrupt(
            "log entry",
            index,
            format!("holds index {}", entry.log_id.index),
        )),
        _ => Err(corrupt("log entry", index, "not exactly one entry")),
    }
}

/// Snapshot metadata (or a membership, as `last_membership`) as a wire frame.
pub(crate) fn encode_meta<RT: AsyncRuntime>(
    volume: VolumeId,
    meta: &SnapshotMeta,
) -> Result<Vec<u8>, StorageError> {
    let chunk = SnapshotChunk {
        vote: Vote::new(0, 0),
        meta: meta.clone(),
        offset: 0,
        total_bytes: 0,
        done: true,
        data: Vec::new(),
    };
    let message = Message::<RT>::SnapshotChunk(chunk);
    encode(&Frame { volume, message }).map_err(|err| StorageError::Encode {
        what: "snapshot metadata",
        reason: err.to_string(),
    })
}

pub(crate) fn decode_meta<RT: AsyncRuntime>(
    volume: VolumeId,
    key: u64,
    bytes: &[u8],
) -> Result<SnapshotMeta, StorageError> {
    let frame = decode::<RT>(bytes).map_err(|err| corrupt("metadata", key, err.to_string()))?;
    match frame.message {
        Message::SnapshotChunk(chunk) if frame.volume == volume && chunk.data.is_empty() => {
            Ok(chunk.meta)
        }
        _ => Err(corrupt(
            "metadata",
            key,
            "not a metadata frame of this volume",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rt = openraft_rt_tokio::TokioRuntime;

    #[test]
    fn fixed_width_round_trips_and_rejects_bad_lengths() {
        let id = LogId::new(
            LeaderId {
                term: 3,
                node_id: 9,
            },
            77,
        );
        assert_eq!(decode_log_id(1, &encode_log_id(&id)).unwrap(), id);
        assert!(decode_log_id(1, &encode_log_id(&id)[..23]).is_err());
        let vote = Vote {
            leader_id: LeaderId {
                term: 5,
                node_id: 2,
            },
            committed: true,
        };
        assert_eq!(decode_vote(1, &encode_vote(&vote)).unwrap(), vote);
        let mut bad = encode_vote(&vote);
        bad[16] = 7;
        assert!(decode_vote(1, &bad).is_err());
    }

    #[test]
    fn entries_round_trip_and_damage_is_refused() {
        let volume = VolumeId(4);
        let entry = Entry {
            log_id: LogId::new(
                LeaderId {
                    term: 1,
                    node_id: 2,
                },
                12,
            ),
            payload: crate::raft::types::EntryPayload::Blank,
        };
        let bytes = encode_entry::<Rt>(volume, &entry).unwrap();
        assert_eq!(decode_entry::<Rt>(volume, 12, &bytes).unwrap(), entry);
        assert!(decode_entry::<Rt>(volume, 13, &bytes).is_err());
        assert!(decode_entry::<Rt>(VolumeId(5), 12, &bytes).is_err());
        for cut in 0..bytes.len() {
            assert!(decode_entry::<Rt>(volume, 12, &bytes[..cut]).is_err());
        }
    }
}
