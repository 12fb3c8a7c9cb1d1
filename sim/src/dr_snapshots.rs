//! DR snapshots under faults: clients take crash-consistent snapshots of
//! their volumes now and then ([`take`]); at the end of the run
//! [`check`] reads every snapshot from every replica that holds its
//! content and requires:
//!
//! - all holders' copies byte-identical (each pinned its block map at the
//!   same log entry);
//! - every block of a copy names a write that may have been visible when
//!   the snapshot was taken: the copy is recorded in the history as a read
//!   of the whole volume spanning the `CreateSnapshot` call (invoked when it
//!   was asked for, complete when it was acknowledged), so the per-block
//!   register check judges it — a snapshot missing a write acknowledged
//!   before it was asked for, or holding one issued after it was
//!   acknowledged, is a stale or future read;
//! - every replica's catalogue lists every acknowledged snapshot (the
//!   catalogue is replicated state, carried through Raft snapshot
//!   transfers), and every data replica holds its blocks — from its own
//!   log, or shipped with the Raft snapshot it caught up from (a witness
//!   holds none; a replica whose disk was corrupted is left out).

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use metro_fabric::env::NodeId;
use metro_fabric::volume::{VolumeCommand, VolumeResponse};
use metro_fabric::wire::{ClientReply, ClientRequest};

use crate::checker::ViolationKind;
use crate::cluster::{Cluster, SimVolume};
use crate::history::{OpKind, Outcome, decode_blocks};
use crate::now_ns;
use crate::options::VOLUME_BLOCKS;
use crate::workload::{Reply, request};

/// One acknowledged snapshot.
#[derive(Clone, Copy, Debug)]
pub struct TakenSnapshot {
    pub id: u64,
    pub invoke_ns: u64,
    pub complete_ns: u64,
    pub log_index: u64,
}

/// The acknowledged snapshots of one volume.
#[derive(Debug, Default)]
pub struct TakenSnapshots {
    taken: Mutex<Vec<TakenSnapshot>>,
}

impl TakenSnapshots {
    fn push(&self, snapshot: TakenSnapshot) {
        self.taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(snapshot);
    }

    pub fn list(&self) -> Vec<TakenSnapshot> {
        self.taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Takes a snapshot of `volume` entering at `via`; records it if
/// acknowledged. Ids are unique in the run (drawn from the write ids).
pub async fn take(cluster: &Cluster, volume: &SimVolume, client: &str, via: NodeId) {
    let id = cluster.next_write_id();
    let invoke_ns = now_ns();
    let command = VolumeCommand::CreateSnapshot { snapshot_id: id };
    match request(cluster, via, volume, ClientRequest::Command(command)).await {
        Reply::Answer(ClientReply::Applied {
            log_index,
            response: VolumeResponse::Applied,
        }) => {
            volume.dr_snapshots.push(TakenSnapshot {
                id,
                invoke_ns,
                complete_ns: now_ns(),
                log_index,
            });
            cluster.dr_snapshots_taken.fetch_add(1, Ordering::SeqCst);
        }
        // The catalogue is full: refused alike everywhere, nothing taken.
        Reply::Answer(ClientReply::Applied {
            response: VolumeResponse::SnapshotLimit { .. },
            ..
        }) => {}
        Reply::Answer(other) => cluster.violations.report_as(
            ViolationKind::Other,
            format!(
                "{} snapshot {id} by {client}: unexpected answer {other:?}",
                volume.id
            ),
        ),
        Reply::NotSent | Reply::Unknown(_) => {}
    }
}

/// The end-of-run checks of `volume`'s snapshots (see the module docs);
/// the cluster is healed and converged.
pub async fn check(cluster: &Cluster, volume: &SimVolume) {
    let taken = volume.dr_snapshots.list();
    if taken.is_empty() {
        return;
    }
    for snapshot in taken {
        let mut copies: Vec<(NodeId, Vec<u64>)> = Vec::new();
        for node in cluster.voters(volume) {
            if cluster.is_corrupted(node) {
                continue;
            }
            let Some(replica) = cluster.replica(node, volume.id).await else {
                continue;
            };
            let catalogue = replica.dr_snapshots();
            let Some(record) = catalogue.get(snapshot.id) else {
                cluster.violations.report_as(
                    ViolationKind::Other,
                    format!(
                        "{}: node {node}'s catalogue lacks acknowledged snapshot {} (taken at {})",
                        volume.id, snapshot.id, snapshot.log_index
                    ),
                );
                continue;
            };
            if record.log_index != snapshot.log_index {
                cluster.violations.report_as(
                    ViolationKind::Other,
                    format!(
                        "{}: node {node} has snapshot {} at {}, acknowledged at {}",
                        volume.id, snapshot.id, record.log_index, snapshot.log_index
                    ),
                );
            }
            match read_copy(&replica, snapshot.id) {
                Ok(Some(seen)) => copies.push((node, seen)),
                Ok(None) if cluster.is_witness(node) => {}
                Ok(None) => cluster.violations.report_as(ViolationKind::Other, format!(
                    "{}: data replica on node {node} lacks the blocks of snapshot {} (taken at {})",
                    volume.id, snapshot.id, snapshot.log_index
                )),
                Err(why) => cluster.violations.report_as(ViolationKind::Other, format!(
                    "{}: node {node}'s copy of snapshot {}: {why}",
                    volume.id, snapshot.id
                )),
            }
        }
        let Some((first, seen)) = copies.first().cloned() else {
            cluster.dr_snapshots_unheld.fetch_add(1, Ordering::SeqCst);
            continue;
        };
        if let Some((other, _)) = copies.iter().find(|(_, s)| *s != seen) {
            cluster.violations.report_as(
                ViolationKind::Other,
                format!(
                    "{}: snapshot {} differs between node {first} and node {other}",
                    volume.id, snapshot.id
                ),
            );
        }
        let who = format!("snapshot-{}@{first}", snapshot.id);
        let kind = OpKind::Read {
            first_block: 0,
            seen: Vec::new(),
        };
        let op = volume.history.invoke(&who, kind, snapshot.invoke_ns);
        let acked = Outcome::Acked { log_index: None };
        volume
            .history
            .complete(op, acked, Some(seen), snapshot.complete_ns);
    }
}

/// The write id in every block of a holder's copy; `None` when it holds
/// no content.
fn read_copy(
    replica: &metro_fabric::storage::VolumeHandle,
    id: u64,
) -> Result<Option<Vec<u64>>, String> {
    let mut seen = vec![0u64; VOLUME_BLOCKS as usize];
    let mut from = 0;
    loop {
        let page = replica
            .read_dr_snapshot(id, from, 64)
            .map_err(|e| e.to_string())?;
        let Some(page) = page else {
            return Ok(None);
        };
        for (index, bytes) in &page.blocks {
            let ids = decode_blocks(bytes, *index)?;
            let slot = seen
                .get_mut(*index as usize)
                .ok_or_else(|| format!("block {index} past the volume end"))?;
            *slot = ids[0];
        }
        match page.next {
            Some(next) if next > from => from = next,
            Some(next) => return Err(format!("page cursor went back to {next}")),
            None => return Ok(Some(seen)),
        }
    }
}
