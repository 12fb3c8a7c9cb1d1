//! The node's catalogue of hosted replicas, in the node's kvstore.
//!
//! Layout: namespace `(KIND_HOST_CATALOGUE, 0)`, key = volume id, value =
//! [`ENTRY_BYTES`] bytes: version byte [`ENTRY_VERSION`], 7 zero bytes, the
//! volume's initial size in blocks (u64 LE). (The storage's own kinds are
//! listed in [`crate::storage::namespaces`]; this one is below them.)
//!
//! Durability: [`Catalogue::record`] returns once the entry is durable, so
//! a replica's group never starts before its catalogue entry survives a
//! crash. [`Catalogue::drop_replica`] removes a replica's entry and all of
//! its group's namespaces in one atomic batch, durable on return.

use std::collections::BTreeMap;

use metro_kvstore::{Namespace, Store, StoreError, WriteBatch};
use openraft::AsyncRuntime;
use openraft::rt::{Oneshot, OneshotSender};

use super::HostError;
use crate::limits::VOLUMES_MAX;
use crate::storage::GroupNamespaces;
use crate::storage::namespaces::BLOCK_MAP_SLOTS;
use crate::volume::VolumeId;

/// The namespace kind of the host catalogue (storage kinds are 1..=3, 16..).
pub const KIND_HOST_CATALOGUE: u8 = 8;
/// The version byte of a catalogue entry.
pub const ENTRY_VERSION: u8 = 1;
/// The size of a catalogue entry.
pub const ENTRY_BYTES: usize = 16;

const NAMESPACE: Namespace = Namespace::new(KIND_HOST_CATALOGUE, 0);

/// The catalogue of one node's replicas.
#[derive(Debug, Clone)]
pub struct Catalogue {
    store: Store,
}

fn encode_entry(size_blocks: u64) -> Vec<u8> {
    let mut value = vec![0u8; ENTRY_BYTES];
    value[0] = ENTRY_VERSION;
    value[8..16].copy_from_slice(&size_blocks.to_le_bytes());
    value
}

fn decode_entry(volume: VolumeId, value: &[u8]) -> Result<u64, HostError> {
    let corrupt = |reason: String| HostError::Catalogue { volume, reason };
    if value.len() != ENTRY_BYTES {
        return Err(corrupt(format!("{} bytes", value.len())));
    }
    if value[0] != ENTRY_VERSION || value[1..8].iter().any(|b| *b != 0) {
        return Err(corrupt(format!("unknown version {}", value[0])));
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&value[8..16]);
    Ok(u64::from_le_bytes(size))
}

/// Submits `batch` and waits (on the runtime, never blocking a thread)
/// until it is durable.
pub(crate) async fn write_durable<RT: AsyncRuntime>(
    store: &Store,
    batch: WriteBatch,
) -> Result<u64, StoreError> {
    let (tx, rx) = RT::Oneshot::channel::<Result<u64, StoreError>>();
    store
        .submit_async(
            batch,
            Box::new(move |result| {
                // The receiver only goes away if the waiting task was dropped.
                let _ = tx.send(result);
            }),
        )
        .await;
    rx.await.map_err(|_| StoreError::Closed)?
}

impl Catalogue {
    /// The catalogue in `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Every recorded replica and its initial size, in volume order.
    pub fn load(&self) -> Result<BTreeMap<VolumeId, u64>, HostError> {
        let entries = self
            .store
            .scan(NAMESPACE, 0..u64::MAX, VOLUMES_MAX + 1)
            .map_err(crate::storage::StorageError::from)?;
        if entries.len() > VOLUMES_MAX {
            return Err(HostError::Full);
        }
        entries
            .into_iter()
            .map(|(key, value)| {
                let volume = VolumeId(key);
                Ok((volume, decode_entry(volume, &value)?))
            })
            .collect()
    }

    /// Records `volume` with `size_blocks`; durable on return.
    pub async fn record<RT: AsyncRuntime>(
        &self,
        volume: VolumeId,
        size_blocks: u64,
    ) -> Result<(), HostError> {
        let mut batch = WriteBatch::new();
        batch.put(NAMESPACE, volume.0, encode_entry(size_blocks));
        write_durable::<RT>(&self.store, batch)
            .await
            .map_err(crate::storage::StorageError::from)?;
        Ok(())
    }

    /// Removes `volume`'s entry and every namespace of its group (log, Raft
    /// metadata, state-machine metadata, DR snapshot catalogue, all
    /// block-map slots and their snapshots) in one batch; durable on
    /// return. The group must be stopped first.
    pub async fn drop_replica<RT: AsyncRuntime>(&self, volume: VolumeId) -> Result<(), HostError> {
        let ns = GroupNamespaces::new(volume);
        let mut batch = WriteBatch::new();
        batch.delete(NAMESPACE, volume.0);
        batch.drop_namespace(ns.raft_log());
        batch.drop_namespace(ns.raft_meta());
        batch.drop_namespace(ns.sm_meta());
        batch.drop_namespace(ns.dr_snapshots());
        batch.drop_namespace(ns.sessions());
        for slot in 0..BLOCK_MAP_SLOTS {
            batch.drop_namespace(ns.block_map(slot));
        }
        write_durable::<RT>(&self.store, batch)
            .await
            .map_err(crate::storage::StorageError::from)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_reject_damage() {
        let volume = VolumeId(3);
        let value = encode_entry(1 << 20);
        assert_eq!(decode_entry(volume, &value).ok(), Some(1 << 20));
        assert!(decode_entry(volume, &value[..15]).is_err());
        let mut bad = value.clone();
        bad[0] = 9;
        assert!(decode_entry(volume, &bad).is_err());
        let mut bad = value;
        bad[3] = 1;
        assert!(decode_entry(volume, &bad).is_err());
    }
}
