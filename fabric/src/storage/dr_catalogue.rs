//! [`DrCatalogue`]: a volume's crash-consistent snapshots ("DR snapshots",
//! what `metro volume snapshot` takes and `metro volume clone` copies) as
//! the replicated state machine knows them.
//!
//! Contract:
//! - The catalogue is replicated state: every replica applies the same
//!   `CreateSnapshot` / `DeleteSnapshot` entries and ends with the same set
//!   of snapshot ids, each with the log index it was taken at and the
//!   volume size then. At most [`DR_SNAPSHOTS_MAX`] per volume.
//! - The *content* is local: a data replica that applied the create entry
//!   pins its block map at exactly that entry (a kvstore snapshot, `pinned`
//!   holds its sequence number). A replica that caught up from an installed
//!   Raft snapshot instead gets the content shipped with it (each DR
//!   snapshot as its diff from the one before, pinned in the staged slot;
//!   see `snapshot.rs`). A witness has records without content (`pinned:
//!   None`), as has a replica whose sender no longer held a snapshot's
//!   content; reads of a snapshot go to a replica that holds it.
//! - Persisted in the volume's [`KIND_DR_SNAPSHOTS`] namespace (key =
//!   snapshot id, value = [`DR_RECORD_BYTES`] fixed-width bytes), written in
//!   the same batch as the applied log id of the entry that changed it.
//!
//! [`KIND_DR_SNAPSHOTS`]: super::namespaces::KIND_DR_SNAPSHOTS

use std::collections::BTreeMap;

use metro_kvstore::{Namespace, Store};

use super::StorageError;
use crate::limits::DR_SNAPSHOTS_MAX;

/// Bytes of one persisted record: log index, size, pinned flag, pinned seq.
pub(crate) const DR_RECORD_BYTES: usize = 25;

/// One snapshot of a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrSnapshot {
    pub id: u64,
    /// The log index of the `CreateSnapshot` entry: the snapshot holds
    /// exactly the writes of the entries before it.
    pub log_index: u64,
    /// The volume's size in blocks when it was taken.
    pub size_blocks: u64,
    /// The kvstore snapshot (sequence number, on the volume's active
    /// block-map slot) holding its blocks on this replica, if any.
    pub pinned: Option<u64>,
}

impl DrSnapshot {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(DR_RECORD_BYTES);
        out.extend_from_slice(&self.log_index.to_le_bytes());
        out.extend_from_slice(&self.size_blocks.to_le_bytes());
        out.push(u8::from(self.pinned.is_some()));
        out.extend_from_slice(&self.pinned.unwrap_or(0).to_le_bytes());
        debug_assert_eq!(out.len(), DR_RECORD_BYTES);
        out
    }

    pub(crate) fn decode(id: u64, bytes: &[u8]) -> Result<Self, StorageError> {
        let corrupt = |reason: String| StorageError::Corrupt {
            what: "DR snapshot record",
            key: id,
            reason,
        };
        if bytes.len() != DR_RECORD_BYTES {
            return Err(corrupt(format!(
                "{} bytes, expected {DR_RECORD_BYTES}",
                bytes.len()
            )));
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let pinned = match bytes[16] {
            0 => None,
            1 => Some(word(17)),
            flag => return Err(corrupt(format!("pinned flag {flag}"))),
        };
        Ok(Self {
            id,
            log_index: word(0),
            size_blocks: word(8),
            pinned,
        })
    }
}

/// Why a catalogue change is refused (every replica refuses alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatalogueRefusal {
    /// Create: the id is taken by another snapshot. Delete: no such id.
    Conflict,
    /// Create: the volume already has [`DR_SNAPSHOTS_MAX`] snapshots.
    Full,
}

/// What applying a `CreateSnapshot` entry should do on this replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreatePlan {
    /// Record it; a data replica pins its block map first.
    Take,
    /// The record came with an installed Raft snapshot taken before this
    /// entry: this replica replays the entry on exactly that state, so it
    /// pins it now and keeps the record.
    Replay,
}

/// The snapshots of one volume (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrCatalogue {
    snapshots: BTreeMap<u64, DrSnapshot>,
}

impl DrCatalogue {
    /// A catalogue of `snapshots` (ids unique; at most the limit).
    pub fn from_records(snapshots: impl IntoIterator<Item = DrSnapshot>) -> Self {
        let snapshots: BTreeMap<u64, DrSnapshot> =
            snapshots.into_iter().map(|s| (s.id, s)).collect();
        assert!(
            snapshots.len() <= DR_SNAPSHOTS_MAX,
            "a catalogue holds at most DR_SNAPSHOTS_MAX records"
        );
        Self { snapshots }
    }

    /// The catalogue stored in `ns` of `store` (pins as recorded); more
    /// than [`DR_SNAPSHOTS_MAX`] records or one that does not decode is
    /// damage.
    pub(crate) fn load(store: &Store, ns: Namespace) -> Result<Self, StorageError> {
        let stored = store.scan(ns, 0..u64::MAX, DR_SNAPSHOTS_MAX + 1)?;
        if stored.len() > DR_SNAPSHOTS_MAX {
            return Err(StorageError::Corrupt {
                what: "DR snapshot catalogue",
                key: stored[DR_SNAPSHOTS_MAX].0,
                reason: format!("more than {DR_SNAPSHOTS_MAX} records"),
            });
        }
        let records = stored
            .iter()
            .map(|(id, bytes)| DrSnapshot::decode(*id, bytes))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_records(records))
    }

    pub fn get(&self, id: u64) -> Option<&DrSnapshot> {
        self.snapshots.get(&id)
    }

    /// Every snapshot, by id.
    pub fn iter(&self) -> impl Iterator<Item = &DrSnapshot> {
        self.snapshots.values()
    }

    pub fn len(&self) -> usize {
        self.snapshots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.snapshots.is_empty()
    }

    /// Decides a `CreateSnapshot { id }` entry at `log_index`.
    pub fn plan_create(&self, id: u64, log_index: u64) -> Result<CreatePlan, CatalogueRefusal> {
        match self.snapshots.get(&id) {
            Some(existing) if existing.log_index == log_index && existing.pinned.is_none() => {
                Ok(CreatePlan::Replay)
            }
            Some(_) => Err(CatalogueRefusal::Conflict),
            None if self.snapshots.len() >= DR_SNAPSHOTS_MAX => Err(CatalogueRefusal::Full),
            None => Ok(CreatePlan::Take),
        }
    }

    /// Records `snapshot` (after [`Self::plan_create`] allowed it).
    pub fn insert(&mut self, snapshot: DrSnapshot) {
        let replaced = self.snapshots.insert(snapshot.id, snapshot);
        assert!(
            replaced.is_none_or(|old| old.pinned.is_none() && old.log_index == snapshot.log_index),
            "snapshot {} recorded twice",
            snapshot.id
        );
        assert!(
            self.snapshots.len() <= DR_SNAPSHOTS_MAX,
            "a catalogue holds at most DR_SNAPSHOTS_MAX records"
        );
    }

    /// Removes snapshot `id`; what it was, or a refusal if unknown.
    pub fn remove(&mut self, id: u64) -> Result<DrSnapshot, CatalogueRefusal> {
        self.snapshots.remove(&id).ok_or(CatalogueRefusal::Conflict)
    }

    /// Whether any snapshot is pinned at kvstore sequence `seq`.
    pub fn pins(&self, seq: u64) -> bool {
        self.snapshots.values().any(|s| s.pinned == Some(seq))
    }

    /// Forgets the content of every snapshot whose pinned sequence is not
    /// in `present` (the pins kvstore still has): their records stay.
    pub fn keep_pins(&mut self, present: &[u64]) -> Vec<u64> {
        let mut lost = Vec::new();
        for snapshot in self.snapshots.values_mut() {
            if let Some(seq) = snapshot.pinned
                && !present.contains(&seq)
            {
                snapshot.pinned = None;
                lost.push(snapshot.id);
            }
        }
        lost
    }

    /// Records that snapshot `id`'s content is pinned at kvstore sequence
    /// `seq`; false (nothing changed) when `id` is unknown or already
    /// pinned.
    pub fn set_pin(&mut self, id: u64, seq: u64) -> bool {
        match self.snapshots.get_mut(&id) {
            Some(snapshot) if snapshot.pinned.is_none() => {
                snapshot.pinned = Some(seq);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: u64, log_index: u64, pinned: Option<u64>) -> DrSnapshot {
        DrSnapshot {
            id,
            log_index,
            size_blocks: 100,
            pinned,
        }
    }

    #[test]
    fn records_round_trip_and_bad_bytes_are_refused() {
        for s in [snap(7, 42, Some(9)), snap(8, 43, None)] {
            assert_eq!(DrSnapshot::decode(s.id, &s.encode()).unwrap(), s);
        }
        assert!(DrSnapshot::decode(1, &[0; 24]).is_err());
        let mut bad = snap(1, 1, None).encode();
        bad[16] = 2;
        assert!(DrSnapshot::decode(1, &bad).is_err());
    }

    #[test]
    fn create_delete_replay_and_the_limit() {
        let mut catalogue = DrCatalogue::default();
        assert_eq!(catalogue.plan_create(1, 10), Ok(CreatePlan::Take));
        catalogue.insert(snap(1, 10, Some(5)));
        assert_eq!(
            catalogue.plan_create(1, 11),
            Err(CatalogueRefusal::Conflict)
        );
        // A record without content at the same index is a replay.
        let mut installed = DrCatalogue::from_records([snap(1, 10, None)]);
        assert_eq!(installed.plan_create(1, 10), Ok(CreatePlan::Replay));
        installed.insert(snap(1, 10, Some(6)));
        assert_eq!(installed.get(1).unwrap().pinned, Some(6));
        assert_eq!(catalogue.remove(2), Err(CatalogueRefusal::Conflict));
        assert_eq!(catalogue.remove(1).unwrap().pinned, Some(5));
        for id in 0..DR_SNAPSHOTS_MAX as u64 {
            catalogue.insert(snap(id, id, None));
        }
        assert_eq!(catalogue.plan_create(999, 1), Err(CatalogueRefusal::Full));
    }

    #[test]
    fn lost_pins_keep_their_records() {
        let mut catalogue = DrCatalogue::from_records([snap(1, 1, Some(10)), snap(2, 2, Some(20))]);
        assert!(catalogue.pins(10) && !catalogue.pins(11));
        assert_eq!(catalogue.keep_pins(&[20]), vec![1]);
        assert_eq!(catalogue.get(1).unwrap().pinned, None);
        assert_eq!(catalogue.len(), 2);
    }
}
