//! The mixed client workload (the retrying-clients one is `retrying.rs`,
//! which reuses this module's reads): clients that write unique payloads to random block
//! ranges of random volumes and read random ranges, entering through
//! whichever node is up, recording every operation in the volume's
//! [`History`].
//!
//! A client sits inside the node it enters through (`via`), as the NBD
//! server does: it calls that node's [`VolumeHost::execute`], which serves
//! locally or forwards to the volume's leader over the network (most nodes
//! host no replica of a given volume, so forwarding is the common path).
//! The operation ends with the node's incarnation (a crash of `via` leaves
//! it `Unknown`). A write's outcome is `Acked` only on the leader's Applied
//! answer, `NotApplied` only when no request could have been proposed (via
//! down, no leader known, every answer a redirect, no replica found), and
//! `Unknown` otherwise (timeout, failure): it is never retried, since it may
//! still take effect. Requests that were certainly not proposed are retried
//! after [`NO_LEADER_PAUSE_MS`], up to [`REDIRECTS_MAX`] times.
//!
//! [`VolumeHost::execute`]: metro_fabric::host::VolumeHost::execute

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metro_fabric::env::NodeId;
use metro_fabric::host::HostError;
use metro_fabric::volume::{VolumeCommand, VolumeResponse};
use metro_fabric::wire::{ClientReply, ClientRequest};
use openraft::AsyncRuntime;

use crate::checker::ViolationKind;
use crate::cluster::{Cluster, SimVolume};
use crate::history::{OpKind, Outcome, decode_blocks, write_payload};
use crate::options::{PlantedBug, VOLUME_BLOCKS};
use crate::{Rt, now_ns};

/// Attempts of one operation that was certainly not proposed.
pub const REDIRECTS_MAX: usize = 8;
/// Pause before asking again when no leader is known.
pub const NO_LEADER_PAUSE_MS: u64 = 100;
/// Blocks one client write covers, at most.
pub const WORKLOAD_WRITE_BLOCKS_MAX: u64 = 2;
/// Blocks one client read covers, at most.
pub const WORKLOAD_READ_BLOCKS_MAX: u64 = 4;

/// What one request through the cluster came to.
#[derive(Debug)]
pub enum Reply {
    /// The leader answered (Applied, Read or a command's response).
    Answer(ClientReply),
    /// No request could have been proposed.
    NotSent,
    /// The request may have reached a leader; no answer.
    Unknown(String),
}

/// What one attempt through `via`'s host came to.
async fn attempt(
    cluster: &Cluster,
    via: NodeId,
    volume: &SimVolume,
    request: &ClientRequest,
) -> Reply {
    let Some((host, kill)) = cluster.host_and_kill(via) else {
        return Reply::NotSent;
    };
    let executed = kill.guard(host.execute(volume.id, request.clone())).await;
    match executed {
        None => Reply::Unknown(format!("node {via} crashed")),
        Some(Ok(ClientReply::Redirect { .. })) => Reply::NotSent,
        Some(Ok(ClientReply::Failed { message })) => Reply::Unknown(message),
        Some(Ok(answer)) => Reply::Answer(answer),
        Some(Err(HostError::NoLeader(_) | HostError::UnknownVolume(_) | HostError::Invalid(_))) => {
            Reply::NotSent
        }
        Some(Err(err)) => Reply::Unknown(err.to_string()),
    }
}

/// Runs `request` on `volume` entering at `via`, retrying while it was
/// certainly not proposed.
pub async fn request(
    cluster: &Cluster,
    via: NodeId,
    volume: &SimVolume,
    request: ClientRequest,
) -> Reply {
    for _ in 0..REDIRECTS_MAX {
        match attempt(cluster, via, volume, &request).await {
            Reply::NotSent => Rt::sleep(Duration::from_millis(NO_LEADER_PAUSE_MS)).await,
            other => return other,
        }
    }
    Reply::NotSent
}

/// Writes a fresh payload to `blocks` blocks from `first_block`; records it
/// and returns its outcome.
pub async fn write(
    cluster: &Cluster,
    volume: &SimVolume,
    client: &str,
    via: NodeId,
    first_block: u64,
    blocks: u64,
) -> Outcome {
    let history = &volume.history;
    let write_id = cluster.next_write_id();
    let kind = OpKind::Write {
        first_block,
        blocks,
        write_id,
    };
    let op = history.invoke(client, kind, now_ns());
    let early_ack = cluster.options.bug == Some(PlantedBug::EarlyAck);
    if early_ack {
        // The planted bug: acknowledged before anyone answered.
        history.complete(op, Outcome::Acked { log_index: None }, None, now_ns());
    }
    let command = VolumeCommand::Write {
        offset_blocks: first_block,
        data: write_payload(write_id, first_block, blocks),
    };
    let outcome = match request(cluster, via, volume, ClientRequest::Command(command)).await {
        Reply::Answer(ClientReply::Applied {
            log_index,
            response: VolumeResponse::Applied,
        }) => Outcome::Acked {
            log_index: Some(log_index),
        },
        Reply::NotSent => Outcome::NotApplied,
        Reply::Answer(other) => {
            cluster.violations.report_as(
                ViolationKind::Other,
                format!(
                    "{} write {write_id}: unexpected answer {other:?}",
                    volume.id
                ),
            );
            Outcome::Unknown
        }
        Reply::Unknown(_) => Outcome::Unknown,
    };
    if !early_ack {
        history.complete(op, outcome.clone(), None, now_ns());
    }
    if let Outcome::Acked { .. } = outcome {
        volume.last_ack_ns.store(now_ns(), Ordering::SeqCst);
        cluster.acked_writes.fetch_add(1, Ordering::SeqCst);
    }
    outcome
}

/// Reads `blocks` blocks from `first_block` linearizably; records it.
/// Returns whether the read was answered.
pub async fn read(
    cluster: &Cluster,
    volume: &SimVolume,
    client: &str,
    via: NodeId,
    first_block: u64,
    blocks: u64,
) -> bool {
    let history = &volume.history;
    let kind = OpKind::Read {
        first_block,
        seen: Vec::new(),
    };
    let op = history.invoke(client, kind, now_ns());
    let read = ClientRequest::Read {
        offset_blocks: first_block,
        len_blocks: blocks as u32,
    };
    match request(cluster, via, volume, read).await {
        Reply::Answer(ClientReply::Read(data)) => match decode_blocks(data.as_bytes(), first_block)
        {
            Ok(seen) => {
                let acked = Outcome::Acked { log_index: None };
                history.complete(op, acked, Some(seen), now_ns());
                return true;
            }
            Err(why) => cluster.violations.report_as(
                ViolationKind::Other,
                format!("{} read by {client}: {why}", volume.id),
            ),
        },
        Reply::Answer(other) => cluster.violations.report_as(
            ViolationKind::Other,
            format!(
                "{} read by {client}: unexpected answer {other:?}",
                volume.id
            ),
        ),
        Reply::NotSent | Reply::Unknown(_) => {}
    }
    history.complete(op, Outcome::NotApplied, None, now_ns());
    false
}

/// Reads the whole volume through the leader, retrying until one read is
/// answered or `attempts` ran out. Returns whether one was answered.
pub async fn sweep(cluster: &Cluster, volume: &SimVolume, who: &str, attempts: u64) -> bool {
    for _ in 0..attempts {
        if let Some(via) = cluster.pick_up_node() {
            if read(cluster, volume, who, via, 0, VOLUME_BLOCKS).await {
                return true;
            }
        } else {
            Rt::sleep(Duration::from_millis(NO_LEADER_PAUSE_MS)).await;
        }
    }
    false
}

/// One client: random writes and reads of random volumes until `stop` is
/// set.
pub async fn client(cluster: Arc<Cluster>, number: u64, stop: Arc<AtomicBool>) {
    let name = format!("client{number}");
    let rng = cluster.rng.clone();
    // DR snapshot decisions come from a stream of their own, so that the
    // main stream (and every seed's other draws) stays as it was.
    let snapshots = crate::rng::SimRng::new(cluster.options.seed ^ 0x6472_736e_6170 ^ number);
    while !stop.load(Ordering::SeqCst) {
        if cluster.volumes.is_empty() {
            return;
        }
        let index = rng.below(cluster.volumes.len() as u64) as usize;
        let volume = &cluster.volumes[index];
        if !volume.history.has_room() {
            return;
        }
        let think = cluster.options.think_ms_max;
        Rt::sleep(rng.millis(0, think) + Duration::from_micros(100)).await;
        let Some(via) = cluster.pick_up_node() else {
            Rt::sleep(Duration::from_millis(NO_LEADER_PAUSE_MS)).await;
            continue;
        };
        if snapshots.chance(cluster.options.dr_snapshot_ppm) {
            crate::dr_snapshots::take(&cluster, volume, &name, via).await;
        } else if rng.chance(cluster.options.write_ppm) {
            let blocks = rng.range(1, WORKLOAD_WRITE_BLOCKS_MAX);
            let first = rng.below(VOLUME_BLOCKS - blocks + 1);
            write(&cluster, volume, &name, via, first, blocks).await;
        } else {
            let blocks = rng.range(1, WORKLOAD_READ_BLOCKS_MAX);
            let first = rng.below(VOLUME_BLOCKS - blocks + 1);
            read(&cluster, volume, &name, via, first, blocks).await;
        }
    }
}
