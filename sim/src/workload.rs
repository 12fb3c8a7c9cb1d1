//! The client workload: clients that write unique payloads to random block
//! ranges and read random ranges, through whichever node is up, following
//! redirects to the leader (as the raft_group test client does), recording
//! every operation in the [`History`].
//!
//! A client sits beside the node it enters through (`via`), as an NBD
//! client would: its requests leave from that node's transport. A write's
//! outcome is `Acked` only on the leader's Applied answer, `NotApplied` only
//! when no request left (via down) or every answer was a redirect, and
//! `Unknown` otherwise (timeout, failure): it is never retried, since it
//! may still take effect.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metro_fabric::env::NodeId;
use metro_fabric::raft::network::forward_client;
use metro_fabric::volume::{VolumeCommand, VolumeResponse};
use metro_fabric::wire::{ClientReply, ClientRequest};
use openraft::AsyncRuntime;

use crate::cluster::Cluster;
use crate::history::{OpKind, Outcome, decode_blocks, write_payload};
use crate::node::VOLUME;
use crate::options::{PlantedBug, VOLUME_BLOCKS};
use crate::{Rt, now_ns};

/// Redirects one operation follows before it gives up.
pub const REDIRECTS_MAX: usize = 8;
/// Pause before asking again when no leader is known.
pub const NO_LEADER_PAUSE_MS: u64 = 100;
/// Blocks one client write covers, at most.
pub const WRITE_BLOCKS_MAX: u64 = 2;
/// Blocks one client read covers, at most.
pub const READ_BLOCKS_MAX: u64 = 4;

/// What one request through the cluster came to.
#[derive(Debug)]
pub enum Reply {
    /// The leader answered (Applied, Read or a command's response).
    Answer(ClientReply),
    /// No request left, or every answer was a redirect.
    NotSent,
    /// The request may have reached a leader; no answer.
    Unknown(String),
}

/// Sends `request` entering at `via`, following redirects.
pub async fn request(cluster: &Cluster, via: NodeId, request: ClientRequest) -> Reply {
    let mut target = via;
    for _ in 0..REDIRECTS_MAX {
        let Some(transport) = cluster.net.transport(via) else {
            return Reply::NotSent;
        };
        match forward_client::<_, Rt>(&transport, target, VOLUME, request.clone()).await {
            Ok(ClientReply::Redirect {
                leader: Some(leader),
            }) => target = leader,
            Ok(ClientReply::Redirect { leader: None }) => {
                Rt::sleep(Duration::from_millis(NO_LEADER_PAUSE_MS)).await;
                target = via;
            }
            Ok(ClientReply::Failed { message }) => return Reply::Unknown(message),
            Ok(answer) => return Reply::Answer(answer),
            Err(err) => return Reply::Unknown(err.to_string()),
        }
    }
    Reply::NotSent
}

/// Writes a fresh payload to `blocks` blocks from `first_block`; records it
/// and returns its outcome.
pub async fn write(
    cluster: &Cluster,
    client: &str,
    via: NodeId,
    first_block: u64,
    blocks: u64,
) -> Outcome {
    let history = &cluster.history;
    let write_id = history.next_write_id();
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
    let outcome = match request(cluster, via, ClientRequest::Command(command)).await {
        Reply::Answer(ClientReply::Applied {
            log_index,
            response: VolumeResponse::Applied,
        }) => Outcome::Acked {
            log_index: Some(log_index),
        },
        Reply::NotSent => Outcome::NotApplied,
        Reply::Answer(other) => {
            cluster
                .violations
                .report(format!("write {write_id}: unexpected answer {other:?}"));
            Outcome::Unknown
        }
        Reply::Unknown(_) => Outcome::Unknown,
    };
    if !early_ack {
        history.complete(op, outcome.clone(), None, now_ns());
    }
    outcome
}

/// Reads `blocks` blocks from `first_block` linearizably; records it.
/// Returns whether the read was answered.
pub async fn read(
    cluster: &Cluster,
    client: &str,
    via: NodeId,
    first_block: u64,
    blocks: u64,
) -> bool {
    let history = &cluster.history;
    let kind = OpKind::Read {
        first_block,
        seen: Vec::new(),
    };
    let op = history.invoke(client, kind, now_ns());
    let read = ClientRequest::Read {
        offset_blocks: first_block,
        len_blocks: blocks as u32,
    };
    match request(cluster, via, read).await {
        Reply::Answer(ClientReply::Read(data)) => match decode_blocks(data.as_bytes(), first_block)
        {
            Ok(seen) => {
                let acked = Outcome::Acked { log_index: None };
                history.complete(op, acked, Some(seen), now_ns());
                return true;
            }
            Err(why) => cluster
                .violations
                .report(format!("read by {client}: {why}")),
        },
        Reply::Answer(other) => cluster
            .violations
            .report(format!("read by {client}: unexpected answer {other:?}")),
        Reply::NotSent | Reply::Unknown(_) => {}
    }
    history.complete(op, Outcome::NotApplied, None, now_ns());
    false
}

/// Reads the whole volume through the leader, retrying until one read is
/// answered or `attempts` ran out. Returns whether one was answered.
pub async fn sweep(cluster: &Cluster, who: &str, attempts: u64) -> bool {
    for _ in 0..attempts {
        if let Some(via) = cluster.pick_up_node() {
            if read(cluster, who, via, 0, VOLUME_BLOCKS).await {
                return true;
            }
        } else {
            Rt::sleep(Duration::from_millis(NO_LEADER_PAUSE_MS)).await;
        }
    }
    false
}

/// One client: random writes and reads until `stop` is set.
pub async fn client(cluster: Arc<Cluster>, number: u64, stop: Arc<AtomicBool>) {
    let name = format!("client{number}");
    let rng = cluster.rng.clone();
    while !stop.load(Ordering::SeqCst) && cluster.history.has_room() {
        let think = cluster.options.think_ms_max;
        Rt::sleep(rng.millis(0, think) + Duration::from_micros(100)).await;
        let Some(via) = cluster.pick_up_node() else {
            Rt::sleep(Duration::from_millis(NO_LEADER_PAUSE_MS)).await;
            continue;
        };
        if rng.chance(cluster.options.write_ppm) {
            let blocks = rng.range(1, WRITE_BLOCKS_MAX);
            let first = rng.below(VOLUME_BLOCKS - blocks + 1);
            write(&cluster, &name, via, first, blocks).await;
        } else {
            let blocks = rng.range(1, READ_BLOCKS_MAX);
            let first = rng.below(VOLUME_BLOCKS - blocks + 1);
            read(&cluster, &name, via, first, blocks).await;
        }
    }
}
