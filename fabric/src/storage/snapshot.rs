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
//! 0   4  magic "MSNP"          4  1  version (PIECE_VERSION)
//! 5   1  kind: 0 blocks, 1 catalogue                           6  2  zero
//! 8   8  piece number (0..)    16 8  volume size in blocks
//! 24  4  record count          28 4  zero
//! 32  records. Blocks: block index u64, then the 4096-byte block; indexes
//!     strictly increasing across the whole stream and below the volume
//!     size. Catalogue: snapshot id, log index, size in blocks (u64 each).
//! ```
//!
//! Piece 0 is the catalogue piece: the volume's DR snapshot records (see
//! `dr_catalogue.rs`) as the sender knows them when the transfer starts (a
//! state at or after the snapshot's log index; the receiver replays the
//! entries after that index, which converges on the same catalogue). The
//! receiver keeps them in memory and records them, without content, when
//! it installs the snapshot. Pieces 1.. carry blocks.
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
use super::dr_catalogue::{DR_SNAPSHOTS_MAX, DrCatalogue, DrSnapshot};
use super::durable::submit;
use super::namespaces::GroupNamespaces;
use super::{NodeStorage, StorageError};
use crate::volume::{BLOCK_BYTES, VolumeId};
use crate::wire::SNAPSHOT_CHUNK_BYTES;

/// The first four bytes of every piece.
pub const PIECE_MAGIC: [u8; 4] = *b"MSNP";
/// The piece layout this build writes and accepts.
pub const PIECE_VERSION: u8 = 2;
/// Piece kind byte: blocks.
const KIND_BLOCKS: u8 = 0;
/// Piece kind byte: the DR snapshot catalogue (piece 0 only).
const KIND_CATALOGUE: u8 = 1;
/// Bytes of one catalogue record: id, log index, size.
const CATALOGUE_RECORD_BYTES: usize = 24;
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
    /// Write side: the DR snapshot records of the catalogue piece.
    received_catalogue: DrCatalogue,
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
    kind: u8,
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
    if bytes[6..8] != [0; 2] || bytes[28..32] != [0; 4] {
        return Err(bad("reserved piece header bytes are set"));
    }
    let kind = bytes[5];
    let piece = u64_at(bytes, 8);
    let (records_max, record_bytes) = match kind {
        KIND_BLOCKS if piece > 0 => (PIECE_RECORDS_MAX, PIECE_RECORD_BYTES),
        KIND_CATALOGUE if piece == 0 => (DR_SNAPSHOTS_MAX, CATALOGUE_RECORD_BYTES),
        _ => return Err(bad(format!("piece {piece} of kind {kind}"))),
    };
    let records = u32_at(bytes, 24) as usize;
    if records > records_max || bytes.len() != PIECE_HEADER_BYTES + records * record_bytes {
        return Err(bad(format!(
            "piece of {} bytes does not hold {records} records",
            bytes.len()
        )));
    }
    Ok(PieceHeader {
        kind,
        piece,
        size_blocks: u64_at(bytes, 16),
        records,
    })
}

/// A piece's header for `records` records of `record_bytes` each.
fn piece_header(
    kind: u8,
    piece: u64,
    size_blocks: u64,
    records: usize,
    record_bytes: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(PIECE_HEADER_BYTES + records * record_bytes);
    out.extend_from_slice(&PIECE_MAGIC);
    out.extend_from_slice(&[PIECE_VERSION, kind, 0, 0]);
    out.extend_from_slice(&piece.to_le_bytes());
    out.extend_from_slice(&size_blocks.to_le_bytes());
    out.extend_from_slice(&(records as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out
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
            received_catalogue: DrCatalogue::default(),
        }
    }

    /// The DR snapshot records received with this data (none of them with
    /// content on the receiver).
    pub(crate) fn received_catalogue(&self) -> &DrCatalogue {
        &self.received_catalogue
    }

    /// The catalogue piece: the records as this node knows them now.
    fn catalogue_piece(&self) -> Result<Vec<u8>, StorageError> {
        let records: Vec<(u64, u64, u64)> = match self.source {
            Source::Pinned { .. } => {
                let ns = self.ns.dr_snapshots();
                let stored = self
                    .node
                    .store()
                    .scan(ns, 0..u64::MAX, DR_SNAPSHOTS_MAX + 1)?;
                if stored.len() > DR_SNAPSHOTS_MAX {
                    return Err(StorageError::Corrupt {
                        what: "DR snapshot catalogue",
                        key: stored[DR_SNAPSHOTS_MAX].0,
                        reason: format!("more than {DR_SNAPSHOTS_MAX} records"),
                    });
                }
                let mut records = Vec::with_capacity(stored.len());
                for (id, bytes) in stored {
                    let s = DrSnapshot::decode(id, &bytes)?;
                    records.push((s.id, s.log_index, s.size_blocks));
                }
                records
            }
            Source::Staged => self
                .received_catalogue
                .iter()
                .map(|s| (s.id, s.log_index, s.size_blocks))
                .collect(),
        };
        let mut piece = piece_header(
            KIND_CATALOGUE,
            0,
            self.size_blocks,
            records.len(),
            CATALOGUE_RECORD_BYTES,
        );
        for (id, log_index, size_blocks) in records {
            piece.extend_from_slice(&id.to_le_bytes());
            piece.extend_from_slice(&log_index.to_le_bytes());
            piece.extend_from_slice(&size_blocks.to_le_bytes());
        }
        Ok(piece)
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
        if self.read_piece == 0 {
            self.read_piece = 1;
            return Ok(Some((self.catalogue_piece()?, false)));
        }
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
        let mut piece = piece_header(
            KIND_BLOCKS,
            self.read_piece,
            self.size_blocks,
            page.len(),
            PIECE_RECORD_BYTES,
        );
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
        if header.kind == KIND_CATALOGUE {
            let mut records = Vec::with_capacity(header.records);
            for record in bytes[PIECE_HEADER_BYTES..].chunks_exact(CATALOGUE_RECORD_BYTES) {
                let id = u64_at(record, 0);
                if records
                    .last()
                    .is_some_and(|last: &DrSnapshot| id <= last.id)
                {
                    return Err(bad(format!("catalogue record {id} out of order")));
                }
                records.push(DrSnapshot {
                    id,
                    log_index: u64_at(record, 8),
                    size_blocks: u64_at(record, 16),
                    pinned: None,
                });
            }
            self.received_catalogue = DrCatalogue::from_records(records);
            self.size_blocks = header.size_blocks;
            self.written_pieces += 1;
            return Ok(());
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
