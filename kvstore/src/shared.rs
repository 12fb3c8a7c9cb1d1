//! [`Shared`]: the state readers and the single writer share.
//!
//! Readers take the read lock, look a value up and `pread` it *while still
//! holding the lock*; the writer takes the write lock to publish index
//! changes and to retire segment files. So a segment is never deleted or
//! recycled under a reader that found a location in it.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::batch::Namespace;
use crate::disk::DiskFile;
use crate::error::StoreError;
use crate::gate::Gate;
use crate::index::{Index, Loc};

/// Counters a [`crate::Store`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StoreStats {
    /// Sequence number of the newest durable batch.
    pub last_durable_seq: u64,
    /// Bytes of values submitted by callers.
    pub logical_bytes: u64,
    /// Bytes the store wrote to disk: log, compaction, checkpoints.
    pub bytes_written: u64,
    /// Bytes of values still referenced (newest versions and pinned ones).
    pub live_bytes: u64,
    /// Bytes the store occupies on disk (segments, spares, checkpoint).
    pub disk_bytes: u64,
    /// Durable batches.
    pub batches: u64,
    /// fdatasync rounds of the log that made batches durable (one per group
    /// when stepped; one may cover several groups when pipelined).
    pub log_syncs: u64,
    pub checkpoints: u64,
    pub compacted_segments: u64,
    /// Bytes of victim segments compaction has read and scanned.
    pub compaction_scanned_bytes: u64,
}

impl StoreStats {
    /// Bytes written per logical byte.
    pub fn write_amplification(&self) -> f64 {
        self.bytes_written as f64 / self.logical_bytes.max(1) as f64
    }

    /// Bytes on disk per live byte.
    pub fn space_amplification(&self) -> f64 {
        self.disk_bytes as f64 / self.live_bytes.max(1) as f64
    }
}

/// What readers see: the index and the open segment files.
#[derive(Debug, Default)]
pub struct ReadState {
    pub index: Index,
    pub files: BTreeMap<u32, Arc<dyn DiskFile>>,
}

impl ReadState {
    /// Reads and verifies the value at `loc`.
    pub fn read_value(&self, loc: Loc) -> Result<Vec<u8>, StoreError> {
        let file = self
            .files
            .get(&loc.seg)
            .ok_or_else(|| StoreError::Corrupt {
                file: format!("segment {}", loc.seg),
                offset: u64::from(loc.offset),
                reason: "index points into a segment that is not open".into(),
            })?;
        let mut value = vec![0u8; loc.len as usize];
        file.read_at(&mut value, u64::from(loc.offset))?;
        if crc32c::crc32c(&value) != loc.crc {
            return Err(StoreError::Corrupt {
                file: file.name().to_owned(),
                offset: u64::from(loc.offset),
                reason: "value CRC mismatch".into(),
            });
        }
        Ok(value)
    }

    pub fn get(
        &self,
        ns: Namespace,
        key: u64,
        at: Option<u64>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.index
            .get(ns, key, at)
            .map(|loc| self.read_value(loc))
            .transpose()
    }
}

/// State shared by every [`crate::Store`] handle and the [`crate::Writer`].
#[derive(Debug, Default)]
pub struct Shared {
    pub read: RwLock<ReadState>,
    pub stats: Mutex<StoreStats>,
    /// Set when a write or fsync failed: the store accepts no more writes.
    pub poisoned: Mutex<Option<String>>,
    /// The way into the writer's queue for submissions that find it full.
    pub(crate) gate: Gate,
}

impl Shared {
    pub fn check_poisoned(&self) -> Result<(), StoreError> {
        match &*self.poisoned.lock() {
            Some(why) => Err(StoreError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }
}
