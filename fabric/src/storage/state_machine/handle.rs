//! [`VolumeHandle`]: reads of a volume's applied blocks (the overlay of
//! changes not yet durable over kvstore's block map) and of its DR
//! snapshots' pinned views.

use std::sync::Arc;

use super::super::StorageError;
use super::super::codec::check_block;
use super::super::dr_catalogue::{DrCatalogue, DrSnapshot};
use super::super::overlay::Lookup;
use super::SmShared;
use crate::raft::types::LogId;
use crate::volume::{BLOCK_BYTES, BlockData};

/// A cloneable read handle on a volume's applied blocks (for tests,
/// metrics, and local reads that tolerate racing a snapshot install).
#[derive(Clone, Debug)]
pub struct VolumeHandle {
    pub(super) shared: Arc<SmShared>,
}

impl VolumeHandle {
    /// Reads `len_blocks` applied blocks from `offset_blocks` (zeroes where
    /// never written).
    pub fn read_blocks(
        &self,
        offset_blocks: u64,
        len_blocks: u32,
    ) -> Result<BlockData, StorageError> {
        self.shared.check()?;
        let end = offset_blocks.saturating_add(u64::from(len_blocks));
        let (slot, size_blocks) = {
            let state = self.shared.state();
            (state.active_slot, state.size_blocks)
        };
        if end > size_blocks {
            return Err(StorageError::Snapshot(format!(
                "read of blocks {offset_blocks}..{end} passes the volume end {size_blocks}"
            )));
        }
        // The overlay first, then kvstore: a batch that turns durable in
        // between is then seen in one place or the other, never neither.
        let pending: Vec<Option<Option<Vec<u8>>>> = {
            let overlay = self.shared.overlay.lock();
            (offset_blocks..end)
                .map(|block| match overlay.lookup(block) {
                    Lookup::Data(bytes) => Some(Some(bytes.to_vec())),
                    Lookup::Zero => Some(None),
                    Lookup::Miss => None,
                })
                .collect()
        };
        let ns = self.shared.ns.block_map(slot);
        let stored = self
            .shared
            .store()
            .scan(ns, offset_blocks..end, len_blocks as usize)?;
        let mut out = vec![0u8; len_blocks as usize * BLOCK_BYTES];
        for (block, value) in stored {
            check_block(block, &value)?;
            let at = (block - offset_blocks) as usize * BLOCK_BYTES;
            out[at..at + BLOCK_BYTES].copy_from_slice(&value);
        }
        for (i, pending) in pending.into_iter().enumerate() {
            if let Some(bytes) = pending {
                let target = &mut out[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES];
                match bytes {
                    Some(bytes) => target.copy_from_slice(&bytes),
                    None => target.fill(0),
                }
            }
        }
        BlockData::new(out).map_err(|err| StorageError::Snapshot(err.to_string()))
    }

    /// One applied block (zeroes if never written).
    pub fn block(&self, index: u64) -> Result<Vec<u8>, StorageError> {
        Ok(self.read_blocks(index, 1)?.as_bytes().to_vec())
    }

    /// The last applied log id.
    pub fn applied(&self) -> Option<LogId> {
        self.shared.state().applied
    }

    /// The volume's size in blocks.
    pub fn size_blocks(&self) -> u64 {
        self.shared.state().size_blocks
    }

    /// The volume's DR snapshots as this replica applied them.
    pub fn dr_snapshots(&self) -> DrCatalogue {
        self.shared.state().dr.clone()
    }

    /// Up to `max_blocks` blocks of DR snapshot `id` that do not read as
    /// zeroes, from block `from_block` on, in index order; `None` when this
    /// replica does not hold the snapshot's content (unknown id, a witness,
    /// or a transfer whose sender no longer held it).
    pub fn read_dr_snapshot(
        &self,
        id: u64,
        from_block: u64,
        max_blocks: usize,
    ) -> Result<Option<DrSnapshotPage>, StorageError> {
        self.shared.check()?;
        let (slot, snapshot) = {
            let state = self.shared.state();
            (state.active_slot, state.dr.get(id).copied())
        };
        let Some(snapshot) = snapshot else {
            return Ok(None);
        };
        let Some(seq) = snapshot.pinned else {
            return Ok(None);
        };
        let view = metro_kvstore::Snapshot {
            ns: self.shared.ns.block_map(slot),
            seq,
        };
        let max_blocks = max_blocks.max(1);
        let end = snapshot.size_blocks;
        let stored = self
            .shared
            .store()
            .scan_at(view, from_block.min(end)..end, max_blocks)?;
        let full = stored.len() == max_blocks;
        let last_scanned = stored.last().map(|(index, _)| *index);
        let mut blocks = Vec::with_capacity(stored.len());
        for (index, value) in stored {
            check_block(index, &value)?;
            if value.iter().any(|b| *b != 0) {
                blocks.push((index, value));
            }
        }
        let next = last_scanned
            .filter(|_| full)
            .and_then(|last| last.checked_add(1))
            .filter(|next| *next < end);
        Ok(Some(DrSnapshotPage {
            snapshot,
            blocks,
            next,
        }))
    }
}

/// One page of a DR snapshot's blocks ([`VolumeHandle::read_dr_snapshot`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrSnapshotPage {
    pub snapshot: DrSnapshot,
    /// Block index and its 4 KiB, ascending; blocks reading as zeroes are
    /// left out.
    pub blocks: Vec<(u64, Vec<u8>)>,
    /// Where the next page starts, `None` after the last.
    pub next: Option<u64>,
}
