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
//! 5   1  kind: 0 blocks, 1 catalogue, 2 deletes, 3 pin, 4 sessions
//! 6   2  zero
//! 8   8  piece number (0..)    16 8  volume size in blocks
//! 24  4  record count          28 4  zero
//! 32  records. Blocks: block index u64, then the 4096-byte block.
//!     Deletes: block index u64. Pin: one DR snapshot id u64. Catalogue:
//!     snapshot id, log index, size in blocks (u64 each). Sessions:
//!     session id, then its record (`sessions.rs`, 40 bytes in all).
//! ```
//!
//! Piece 1 is the sessions piece: the volume's client session table exactly
//! as of the snapshot's last applied entry (taken when the snapshot was
//! pinned), because the receiver replays the entries after it and must
//! treat each as the sender's state machine did.
//!
//! Piece 0 is the catalogue piece: the volume's DR snapshot records (see
//! `dr_catalogue.rs`) as the sender knows them when the transfer starts (a
//! state at or after the snapshot's log index; the receiver replays the
//! entries after that index, which converges on the same catalogue).
//!
//! Then the stream carries a sequence of *views*, each as its changes from
//! the view before (the first one from empty): every DR snapshot the
//! sender holds that is older than the Raft snapshot, oldest first, each
//! ended by a pin piece naming it; then the Raft snapshot itself. A view's
//! changes are its deletes (kind 2) then its blocks (kind 0), each in
//! strictly increasing block order (computed with kvstore's index-only
//! `diff` between the two pinned views; the first view is a full scan).
//! The receiver applies them in order to its staging slot and, at each pin
//! piece, pins the staging slot (a kvstore snapshot) as that DR snapshot's
//! content — so a replica that catches up from a Raft snapshot holds the
//! same DR snapshots as the sender, byte for byte. At install the records
//! are written with those pins (the others without content).
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

use super::codec::{SnapshotRecord, check_block};
use super::dr_catalogue::{DrCatalogue, DrSnapshot};
use super::durable::submit;
use super::namespaces::GroupNamespaces;
use super::sessions::{SESSION_ENTRY_BYTES, SessionTable};
use super::{NodeStorage, StorageError};
use crate::limits::{DR_SNAPSHOTS_MAX, SESSIONS_MAX, SNAPSHOT_CHUNK_BYTES};
use crate::volume::{BLOCK_BYTES, VolumeId};

/// The first four bytes of every piece.
pub const PIECE_MAGIC: [u8; 4] = *b"MSNP";
/// The piece layout this build writes and accepts.
pub const PIECE_VERSION: u8 = 3;
/// Piece kind byte: blocks.
const KIND_BLOCKS: u8 = 0;
/// Piece kind byte: the DR snapshot catalogue (piece 0 only).
const KIND_CATALOGUE: u8 = 1;
/// Piece kind byte: blocks that read as zeroes from this view on.
const KIND_DELETES: u8 = 2;
/// Piece kind byte: the view streamed so far is DR snapshot (id).
const KIND_PIN: u8 = 3;
/// Piece kind byte: the client session table (piece 1 only).
const KIND_SESSION_TABLE: u8 = 4;
/// Block indexes one deletes piece carries, at most.
const DELETES_MAX: usize = (SNAPSHOT_CHUNK_BYTES as usize - PIECE_HEADER_BYTES) / 8;
/// Bytes of one catalogue record: id, log index, size.
const CATALOGUE_RECORD_BYTES: usize = 24;
/// Bytes before a piece's records.
pub const PIECE_HEADER_BYTES: usize = 32;
/// Bytes of one record: block index and block.
pub const PIECE_RECORD_BYTES: usize = 8 + BLOCK_BYTES;
/// The most blocks one piece carries, so that it fits one snapshot chunk.
pub const PIECE_RECORDS_MAX: usize =
    (SNAPSHOT_CHUNK_BYTES as usize - PIECE_HEADER_BYTES) / PIECE_RECORD_BYTES;

/// One view the sender streams: a DR snapshot (its id) or the snapshot
/// itself, at a kvstore sequence number (`None`: the namespace as it is,
/// for staged data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct View {
    seq: Option<u64>,
    dr_id: Option<u64>,
}

/// Where the sender is within the current view.
#[derive(Clone, Debug)]
enum Cursor {
    /// The first view: a full scan from this block index.
    Full { from: u64 },
    /// A later view: its deletes, then the blocks it put (ascending).
    Diff {
        deletes: std::collections::VecDeque<u64>,
        puts: std::collections::VecDeque<u64>,
    },
    /// The view's blocks are out; its pin piece (if a DR view) is next.
    Pin,
}

/// The sender's plan after the catalogue piece.
#[derive(Clone, Debug)]
struct SendPlan {
    /// Views still to stream, the current one first.
    views: std::collections::VecDeque<View>,
    cursor: Cursor,
}

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
    /// Read side: the plan (set by the catalogue piece, `None` once the
    /// last piece was produced), whether the last piece was produced, and
    /// the next piece number.
    plan: Option<SendPlan>,
    read_done: bool,
    read_piece: u64,
    /// Write side: pieces taken so far, the last block written and deleted
    /// in the current view.
    written_pieces: u64,
    last_written: Option<u64>,
    last_deleted: Option<u64>,
    /// Write side: the DR snapshot records of the catalogue piece, with
    /// the pins the transfer made in the staging slot.
    received_catalogue: DrCatalogue,
    /// The session table: as of the pinned snapshot (read side), or as
    /// received in the sessions piece (write side).
    sessions: Arc<SessionTable>,
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
        KIND_BLOCKS if piece > 1 => (PIECE_RECORDS_MAX, PIECE_RECORD_BYTES),
        KIND_CATALOGUE if piece == 0 => (DR_SNAPSHOTS_MAX, CATALOGUE_RECORD_BYTES),
        KIND_DELETES if piece > 1 => (DELETES_MAX, 8),
        KIND_PIN if piece > 1 => (1, 8),
        KIND_SESSION_TABLE if piece == 1 => (SESSIONS_MAX, SESSION_ENTRY_BYTES),
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
    /// A cursor over the snapshot pinned as `record` in `node`'s store,
    /// whose session table was `sessions`.
    pub(crate) fn pinned(
        node: Arc<NodeStorage>,
        volume: VolumeId,
        record: SnapshotRecord,
        sessions: Arc<SessionTable>,
    ) -> Self {
        let mut data = Self::new(
            node,
            volume,
            record.slot,
            Source::Pinned { seq: record.seq },
            record.size_blocks,
        );
        data.sessions = sessions;
        data
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
            plan: None,
            read_done: false,
            read_piece: 0,
            written_pieces: 0,
            last_written: None,
            last_deleted: None,
            received_catalogue: DrCatalogue::default(),
            sessions: Arc::default(),
        }
    }

    /// The session table received with this data.
    pub(crate) fn received_sessions(&self) -> SessionTable {
        SessionTable::clone(&self.sessions)
    }

    /// The sessions piece (piece 1).
    fn sessions_piece(&self) -> Vec<u8> {
        let table = self.sessions.encode_all();
        let mut piece = piece_header(
            KIND_SESSION_TABLE,
            1,
            self.size_blocks,
            self.sessions.len(),
            SESSION_ENTRY_BYTES,
        );
        piece.extend_from_slice(&table);
        piece
    }

    /// The DR snapshot records received with this data, with the content
    /// the transfer pinned in the staging slot (the others have none).
    pub(crate) fn received_catalogue(&self) -> DrCatalogue {
        self.received_catalogue.clone()
    }

    /// The catalogue piece: the records as this node knows them now; and
    /// the views to stream after it.
    fn catalogue_piece(&self) -> Result<(Vec<u8>, SendPlan), StorageError> {
        // The records, and the snapshot itself as the last view: pinned at
        // `seq`, or the staged namespace as it is.
        let (catalogue, last) = match self.source {
            Source::Pinned { seq } => (
                std::borrow::Cow::Owned(DrCatalogue::load(
                    self.node.store(),
                    self.ns.dr_snapshots(),
                )?),
                Some(seq),
            ),
            Source::Staged => (std::borrow::Cow::Borrowed(&self.received_catalogue), None),
        };
        // The DR snapshots whose content is held here, on this slot, and
        // older than the snapshot itself, oldest first.
        let present: Vec<u64> = self
            .node
            .store()
            .snapshots(self.namespace())
            .iter()
            .map(|s| s.seq)
            .collect();
        let mut views: Vec<View> = catalogue
            .iter()
            .filter_map(|s| {
                let seq = s.pinned?;
                (last.is_none_or(|last| seq < last) && present.contains(&seq)).then_some(View {
                    seq: Some(seq),
                    dr_id: Some(s.id),
                })
            })
            .collect();
        views.sort_by_key(|v| v.seq);
        views.push(View {
            seq: last,
            dr_id: None,
        });
        let records: Vec<(u64, u64, u64)> = catalogue
            .iter()
            .map(|s| (s.id, s.log_index, s.size_blocks))
            .collect();
        let plan = SendPlan {
            views: views.into(),
            cursor: Cursor::Full { from: 0 },
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
        Ok((piece, plan))
    }

    fn view_of(&self, view: View) -> Option<metro_kvstore::Snapshot> {
        view.seq.map(|seq| metro_kvstore::Snapshot {
            ns: self.namespace(),
            seq,
        })
    }

    /// Up to `max` key/value pairs of `view` in `range`.
    fn scan_view(
        &self,
        view: View,
        range: std::ops::Range<u64>,
        max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let store = self.node.store();
        Ok(match self.view_of(view) {
            Some(snapshot) => store.scan_at(snapshot, range, max)?,
            None => store.scan(self.namespace(), range, max)?,
        })
    }

    /// The value of `key` in `view`.
    fn get_view(&self, view: View, key: u64) -> Result<Option<Vec<u8>>, StorageError> {
        let store = self.node.store();
        Ok(match self.view_of(view) {
            Some(snapshot) => store.get_at(snapshot, key)?,
            None => store.get(self.namespace(), key)?,
        })
    }

    /// The changes from `older` to `newer`: deleted and put block indexes.
    fn diff_views(&self, older: View, newer: View) -> Result<Cursor, StorageError> {
        let older = self
            .view_of(older)
            .ok_or_else(|| bad("a view before the last one is not pinned"))?;
        let changes = self.node.store().diff(older, self.view_of(newer))?;
        let mut deletes = std::collections::VecDeque::new();
        let mut puts = std::collections::VecDeque::new();
        for change in changes {
            match change.kind {
                metro_kvstore::ChangeKind::Deleted => deletes.push_back(change.key),
                metro_kvstore::ChangeKind::Put => puts.push_back(change.key),
            }
        }
        Ok(Cursor::Diff { deletes, puts })
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
        if self.read_done {
            return Ok(None);
        }
        let Some(mut plan) = self.plan.take() else {
            let (piece, plan) = self.catalogue_piece()?;
            self.plan = Some(plan);
            self.read_piece = 1;
            return Ok(Some((piece, false)));
        };
        if self.read_piece == 1 {
            self.plan = Some(plan);
            self.read_piece = 2;
            return Ok(Some((self.sessions_piece(), false)));
        }
        let piece = self.plan_piece(&mut plan)?;
        let last = plan.views.is_empty();
        if last {
            self.read_done = true;
        } else {
            self.plan = Some(plan);
        }
        self.read_piece += 1;
        Ok(Some((piece, last)))
    }

    /// The next piece of `plan`'s current view; moves the plan on (its
    /// views are empty after the last piece).
    fn plan_piece(&self, plan: &mut SendPlan) -> Result<Vec<u8>, StorageError> {
        let view = *plan
            .views
            .front()
            .ok_or_else(|| bad("snapshot stream read past its end"))?;
        let number = self.read_piece;
        let (piece, view_done) = match &mut plan.cursor {
            Cursor::Full { from } => {
                let page = self.scan_view(view, *from..u64::MAX, PIECE_RECORDS_MAX)?;
                let piece = self.blocks_piece(number, &page)?;
                let next = page
                    .last()
                    .filter(|_| page.len() == PIECE_RECORDS_MAX)
                    .and_then(|(block, _)| block.checked_add(1));
                if let Some(next) = next {
                    *from = next;
                }
                (piece, next.is_none())
            }
            Cursor::Diff { deletes, puts } if !deletes.is_empty() => {
                let take = deletes.len().min(DELETES_MAX);
                let chunk: Vec<u64> = deletes.drain(..take).collect();
                let mut piece =
                    piece_header(KIND_DELETES, number, self.size_blocks, chunk.len(), 8);
                for block in &chunk {
                    piece.extend_from_slice(&block.to_le_bytes());
                }
                (piece, deletes.is_empty() && puts.is_empty())
            }
            Cursor::Diff { puts, .. } => {
                let take = puts.len().min(PIECE_RECORDS_MAX);
                let keys: Vec<u64> = puts.drain(..take).collect();
                let mut page = Vec::with_capacity(keys.len());
                for key in keys {
                    let value = self.get_view(view, key)?.ok_or_else(|| {
                        bad(format!("block {key} changed in the diff but has no value"))
                    })?;
                    page.push((key, value));
                }
                (self.blocks_piece(number, &page)?, puts.is_empty())
            }
            Cursor::Pin => {
                let id = view
                    .dr_id
                    .ok_or_else(|| bad("a pin piece for the snapshot itself"))?;
                let mut piece = piece_header(KIND_PIN, number, self.size_blocks, 1, 8);
                piece.extend_from_slice(&id.to_le_bytes());
                plan.views.pop_front();
                let next = *plan
                    .views
                    .front()
                    .ok_or_else(|| bad("a DR view is never the last"))?;
                // An empty diff still streams one (empty) blocks piece.
                plan.cursor = self.diff_views(view, next)?;
                return Ok(piece);
            }
        };
        if view_done {
            if view.dr_id.is_some() {
                plan.cursor = Cursor::Pin;
            } else {
                plan.views.pop_front();
                debug_assert!(
                    plan.views.is_empty(),
                    "the snapshot itself is the last view"
                );
            }
        }
        Ok(piece)
    }

    /// A blocks piece numbered `number` holding `page`.
    fn blocks_piece(&self, number: u64, page: &[(u64, Vec<u8>)]) -> Result<Vec<u8>, StorageError> {
        let mut piece = piece_header(
            KIND_BLOCKS,
            number,
            self.size_blocks,
            page.len(),
            PIECE_RECORD_BYTES,
        );
        for (block, value) in page {
            check_block(*block, value)?;
            piece.extend_from_slice(&block.to_le_bytes());
            piece.extend_from_slice(value);
        }
        Ok(piece)
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
        if header.piece == 0 {
            return Err(bad("the first piece must be the catalogue"));
        }
        if header.kind == KIND_SESSION_TABLE {
            let table = SessionTable::decode_all(&bytes[PIECE_HEADER_BYTES..])
                .ok_or_else(|| bad("malformed session table"))?;
            self.sessions = Arc::new(table);
            self.written_pieces += 1;
            return Ok(());
        }
        if header.piece == 1 {
            return Err(bad("the second piece must be the session table"));
        }
        // Blocks of a DR snapshot may lie past a since-shrunk volume end.
        let end = self
            .received_catalogue
            .iter()
            .map(|s| s.size_blocks)
            .fold(header.size_blocks, u64::max);
        if header.kind == KIND_PIN {
            if header.records != 1 {
                return Err(bad("a pin piece names exactly one DR snapshot"));
            }
            let id = u64_at(bytes, PIECE_HEADER_BYTES);
            if self
                .received_catalogue
                .get(id)
                .is_none_or(|s| s.pinned.is_some())
            {
                return Err(bad(format!("pin of unknown or repeated DR snapshot {id}")));
            }
            if !self.node.is_witness() {
                let seq = submit(
                    self.node.store(),
                    WriteBatch::create_snapshot(self.namespace()),
                )
                .await?;
                let pinned = self.received_catalogue.set_pin(id, seq);
                debug_assert!(pinned, "checked above");
            }
            self.last_written = None;
            self.last_deleted = None;
            self.size_blocks = header.size_blocks;
            self.written_pieces += 1;
            return Ok(());
        }
        let mut batch = WriteBatch::new();
        let mut last = self.last_written;
        let mut last_deleted = self.last_deleted;
        if header.kind == KIND_DELETES {
            if self.last_written.is_some() {
                return Err(bad("deletes after blocks within one view"));
            }
            for record in bytes[PIECE_HEADER_BYTES..].chunks_exact(8) {
                let block = u64_at(record, 0);
                if last_deleted.is_some_and(|l| block <= l) || block >= end {
                    return Err(bad(format!(
                        "delete of block {block} out of order or past the end"
                    )));
                }
                last_deleted = Some(block);
                batch.delete(self.namespace(), block);
            }
        } else {
            for record in bytes[PIECE_HEADER_BYTES..].chunks_exact(PIECE_RECORD_BYTES) {
                let block = u64_at(record, 0);
                if last.is_some_and(|l| block <= l) || block >= end {
                    return Err(bad(format!("block {block} out of order or past the end")));
                }
                last = Some(block);
                batch.put(self.namespace(), block, record[8..].to_vec());
            }
        }
        debug_assert_eq!(batch.ops().len(), header.records);
        // A witness installs the snapshot's metadata only: it keeps no
        // blocks (the pieces are still validated in full).
        if !batch.is_empty() && !self.node.is_witness() {
            submit(self.node.store(), batch).await?;
        }
        self.size_blocks = header.size_blocks;
        self.last_written = last;
        self.last_deleted = last_deleted;
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
