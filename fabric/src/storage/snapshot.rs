//! Raft snapshots of a volume: pinned kvstore snapshots of its block map,
//! streamed in pieces, staged on the receiver, swapped in atomically.
//!
//! Build (sender): the state machine pins its active block-map slot with
//! `Store::create_snapshot` (cheap: the index keeps the pinned versions) and
//! records where (slot, seq, size) and the snapshot metadata in its
//! metadata namespace. [`SnapshotData`] is then a cursor over that pinned
//! view: [`SnapshotData::next_piece`] pages through it with `scan_at`, at
//! most [`PIECE_RECORDS_MAX`] blocks at a time, so neither the sender nor
//! the receiver ever holds more than one piece of the volume in memory.
//!
//! Piece layout (little-endian, fixed width), one per `SnapshotChunk`:
//!
//! ```text
//! 0   4  magic "MSNP"          4  1  version (PIECE_VERSION)   5  3  zero
//! 8   8  piece number (0..)    16 8  volume size in blocks
//! 24  4  record count          28 4  zero
//! 32  records: block index u64, then the 4096-byte block; indexes strictly
//!     increasing across the whole stream and below the volume size
//! ```
//!
//! The chunk's `offset`/`total_bytes` describe the piece alone (0 and its
//! length) because the stream's length is not known before it is read; its
//! `done` flag marks the last piece. Blocks absent from the stream read as
//! zeroes.
//!
//! Receive: a staging [`SnapshotData`] names an unused block-map slot of the
//! receiving volume, emptied first; each piece is validated (magic,
//! version, order, size, record bounds) and written there as one batch,
//! awaited before the next piece is taken. Install: if the data is staged
//! in this node's store for this volume, one batch points the volume at the
//! staged slot, records the applied state from the metadata and drops the
//! old slot (with the snapshots pinned on it) — atomic, durable on return.
//! Any other data (a snapshot of another store, as in openraft's suite) is
//! first copied piece by piece into a staging slot. A crash mid-transfer
//! leaves a stale slot; it is emptied when the group is next opened or the
//! slot is next used for staging.

use std::sync::Arc;

use metro_kvstore::{Namespace, WriteBatch};

use super::codec::SnapshotRecord;
use super::durable::submit;
use super::namespaces::GroupNamespaces;
use super::{NodeStorage, StorageError};
use crate::volume::{BLOCK_BYTES, VolumeId};
use crate::wire::SNAPSHOT_CHUNK_BYTES;

/// The first four bytes of every piece.
pub const PIECE_MAGIC: [u8; 4] = *b"MSNP";
/// The piece layout this build writes and accepts.
pub const PIECE_VERSION: u8 = 1;
/// Bytes before a piece's records.
pub const PIECE_HEADER_BYTES: usize = 32;
/// Bytes of one record: block index and block.
pub const PIECE_RECORD_BYTES: usize = 8 + BLOCK_BYTES;
/// The most blocks one piece carries, so that it fits one snapshot chunk.
pub const PIECE_RECORDS_MAX: usize =
    (SNAPSHOT_CHUNK_BYTES as usize - PIECE_HEADER_BYTES) / PIECE_RECORD_BYTES;

/// Where a snapshot's blocks are read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// A pinned kvstore snapshot taken at this sequence number.
    Pinned { seq: u64 },
    /// A staging slot being (or done being) filled by a transfer.
    Staged,
}

/// The data of a volume's Raft snapshot: a cursor over pinned (sender) or
/// staged (receiver) blocks in one node's kvstore. Cloning restarts nothing:
/// a clone continues from the same position.
#[derive(Clone)]
pub struct SnapshotData {
    node: Arc<NodeStorage>,
    ns: GroupNamespaces,
    slot: u8,
    source: Source,
    size_blocks: u64,
    /// Read side: the next block index to scan from, `None` once the last
    /// piece was produced; and the next piece number.
    read_from: Option<u64>,
    read_piece: u64,
    /// Write side: pieces taken so far and the last block written.
    written_pieces: u64,
    last_written: Option<u64>,
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotData")
            .field("volume", &self.ns.volume)
            .field("slot", &self.slot)
            .field("source", &self.source)
            .field("size_blocks", &self.size_blocks)
            .finish()
    }
}

fn bad(reason: impl Into<String>) -> StorageError {
    StorageError::Snapshot(reason.into())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// A piece's header fields.
struct PieceHeader {
    piece: u64,
    size_blocks: u64,
    records: usize,
}

fn parse_header(bytes: &[u8]) -> Result<PieceHeader, StorageError> {
    if bytes.len() < PIECE_HEADER_BYTES {
        return Err(bad(format!("piece of {} bytes has no header", bytes.len())));
    }
    if bytes[..4] != PIECE_MAGIC || bytes[4] != PIECE_VERSION {
        return Err(bad("not a snapshot piece of this version"));
    }
    if bytes[5..8] != [0; 3] || bytes[28..32] != [0; 4] {
        return Err(bad("reserved piece header bytes are set"));
    }
    let records = u32_at(bytes, 24) as usize;
    if records > PIECE_RECORDS_MAX
        || bytes.len() != PIECE_HEADER_BYTES + records * PIECE_RECORD_BYTES
    {
        return Err(bad(format!(
            "piece of {} bytes does not hold {records} records",
            bytes.len()
        )));
    }
    Ok(PieceHeader {
        piece: u64_at(bytes, 8),
        size_blocks: u64_at(bytes, 16),
        records,
    })
}

/// The piece number of a received piece (to tell a new transfer's first
/// piece from a continuation).
pub fn piece_number(bytes: &[u8]) -> Result<u64, StorageError> {
    Ok(parse_header(bytes)?.piece)
}

impl SnapshotData {
    /// A cursor over the snapshot pinned as `record` in `node`'s store.
    pub(crate) fn pinned(node: Arc<NodeStorage>, volume: VolumeId, record: SnapshotRecord) -> Self {
        Self::new(
            node,
            volume,
            record.slot,
            Source::Pinned { seq: record.seq },
            record.size_blocks,
        )
    }

    /// An empty staging area in block-map `slot` of `volume` (the caller
    /// emptied the slot).
    pub(crate) fn staging(node: Arc<NodeStorage>, volume: VolumeId, slot: u8) -> Self {
        Self::new(node, volume, slot, Source::Staged, 0)
    }

    fn new(node: Arc<NodeStorage>, volume: VolumeId, slot: u8, source: Source, size: u64) -> Self {
        Self {
            node,
            ns: GroupNamespaces::new(volume),
            slot,
            source,
            size_blocks: size,
            read_from: Some(0),
            read_piece: 0,
            written_pieces: 0,
            last_written: None,
        }
    }

    /// The volume whose blocks these are.
    pub fn volume(&self) -> VolumeId {
        self.ns.volume
    }

    /// The volume's size in blocks as of the snapshot.
    pub fn size_blocks(&self) -> u64 {
        self.size_blocks
    }

    fn namespace(&self) -> Namespace {
        self.ns.block_map(self.slot)
    }

    /// The slot holding this data if it is staged in `node`'s store for
    /// `volume` and complete enough to swap in (at least one piece taken).
    pub(crate) fn staged_slot(&self, node: &Arc<NodeStorage>, volume: VolumeId) -> Option<u8> {
        let here = Arc::ptr_eq(&self.node, node) && self.ns.volume == volume;
        (here && self.source == Source::Staged && self.written_pieces > 0).then_some(self.slot)
    }

    /// The next piece and whether it is the last, or `None` after the last.
    pub fn next_piece(&mut self) -> Result<Option<(Vec<u8>, bool)>, StorageError> {
        if self.node.is_witness() {
            return Err(StorageError::Snapshot(
                "a witness keeps no volume data: it never sends a snapshot".into(),
            ));
        }
        let Some(from) = self.read_from else {
            return Ok(None);
        };
        let store = self.node.store();
        let range = from..u64::MAX;
        let page = match self.source {
            Source::Pinned { seq } => {
                let snapshot = metro_kvstore::Snapshot {
                    ns: self.namespace(),
                    seq,
                };
                store.scan_at(snapshot, range, PIECE_RECORDS_MAX)?
            }
            Source::Staged => store.scan(self.namespace(), range, PIECE_RECORDS_MAX)?,
        };
        let last = page.len() < PIECE_RECORDS_MAX;
        let mut piece = Vec::with_capacity(PIECE_HEADER_BYTES + page.len() * PIECE_RECORD_BYTES);
        piece.extend_from_slice(&PIECE_MAGIC);
        piece.extend_from_slice(&[PIECE_VERSION, 0, 0, 0]);
        piece.extend_from_slice(&self.read_piece.to_le_bytes());
        piece.extend_from_slice(&self.size_blocks.to_le_bytes());
        piece.extend_from_slice(&(page.len() as u32).to_le_bytes());
        piece.extend_from_slice(&[0; 4]);
        for (block, value) in &page {
            if value.len() != BLOCK_BYTES {
                return Err(StorageError::Corrupt {
                    what: "block",
                    key: *block,
                    reason: format!("{} bytes", value.len()),
                });
            }
            piece.extend_from_slice(&block.to_le_bytes());
            piece.extend_from_slice(value);
        }
        self.read_piece += 1;
        self.read_from = match page.last() {
            _ if last => None,
            Some((block, _)) => block.checked_add(1),
            None => None,
        };
        Ok(Some((piece, last)))
    }

    /// Validates a received piece and writes its blocks to the staging
    /// slot; returns once they are durable.
    pub async fn write_piece(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        if self.source != Source::Staged {
            return Err(bad("pieces are written only to a staging area"));
        }
        let header = parse_header(bytes)?;
        if header.piece != self.written_pieces {
            return Err(bad(format!(
                "piece {} arrived, expected {}",
                header.piece, self.written_pieces
            )));
        }
        if header.piece > 0 && header.size_blocks != self.size_blocks {
            return Err(bad("volume size changed within one snapshot"));
        }
        let mut batch = WriteBatch::new();
        let mut last = self.last_written;
        for record in bytes[PIECE_HEADER_BYTES..].chunks_exact(PIECE_RECORD_BYTES) {
            let block = u64_at(record, 0);
            if last.is_some_and(|l| block <= l) || block >= header.size_blocks {
                return Err(bad(format!("block {block} out of order or past the end")));
            }
            last = Some(block);
            batch.put(self.namespace(), block, record[8..].to_vec());
        }
        debug_assert_eq!(batch.ops().len(), header.records);
        // A witness installs the snapshot's metadata only: it keeps no
        // blocks (the pieces are still validated in full).
        if !batch.is_empty() && !self.node.is_witness() {
            submit(self.node.store(), batch).await?;
        }
        self.size_blocks = header.size_blocks;
        self.last_written = last;
        self.written_pieces += 1;
        Ok(())
    }

    /// Copies every remaining piece of `self` into the staging `target`.
    pub(crate) async fn copy_into(
        &mut self,
        target: &mut SnapshotData,
    ) -> Result<(), StorageError> {
        while let Some((piece, _)) = self.next_piece()? {
            target.write_piece(&piece).await?;
        }
        Ok(())
    }
}
