//! The retrying-clients workload (FoundationDB style): clients that never
//! leave a write's outcome unknown if a retry can settle it.
//!
//! Contract:
//! - Each client holds one session per volume ([`SessionWindow`]),
//!   registered through the volume's log (`VolumeHost::register_session`)
//!   when it first writes there, and again whenever the volume answers
//!   `SessionExpired`.
//! - A write runs as one session request (`VolumeHost::command_once`).
//!   While its outcome is unknown (timeout, peer failure, crash of the node
//!   it entered through, no leader after a delivery) the client delivers
//!   the *same* request id again through another running node, up to
//!   [`DELIVERIES_MAX`] attempts; the volume applies it at most once and
//!   answers a duplicate as the first delivery. The write is `Acked` once
//!   an attempt is answered, `NotApplied` if no running node ever took an
//!   attempt, `Unknown` otherwise (the bound ran out, the session expired,
//!   or the run stopped): an attempt answered "no leader" may still have
//!   been forwarded, and the network may duplicate a forwarded session
//!   request, so only a write no host saw is certainly not applied.
//! - After each write (acknowledged or given up on) the client overwrites
//!   the same blocks with new data, written the same way, 1 to
//!   [`OVERWRITES_MAX`] times, and then reads them back, soon and about
//!   [`SESSION_HOLD_MS_MAX`] later ([`READ_BACK_SLACK_MS`]): the network holds
//!   duplicated session requests back up to that long (`network.rs`), so
//!   an old delivery of the first write can reach the leader after the
//!   overwrite was acknowledged, and the read shows whether it was applied
//!   again (`checker.rs`, `StaleOverwrite`).
//! - Bounded: one request in flight per client, a session window per
//!   (client, volume), a bounded number of attempts per write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metro_fabric::env::NodeId;
use metro_fabric::host::{HostError, RequestId, SessionWindow};
use metro_fabric::volume::{VolumeCommand, VolumeResponse};
use openraft::AsyncRuntime;

use crate::checker::ViolationKind;
use crate::cluster::{Cluster, SimVolume};
use crate::history::{OpKind, Outcome, write_payload};
use crate::network::SESSION_HOLD_MS_MAX;
use crate::options::VOLUME_BLOCKS;
use crate::workload::{
    NO_LEADER_PAUSE_MS, WORKLOAD_READ_BLOCKS_MAX, WORKLOAD_WRITE_BLOCKS_MAX, read,
};
use crate::{Rt, now_ns};

/// Attempts (deliveries of one request id) of one write, at most.
pub const DELIVERIES_MAX: u32 = 10;
/// Pause before another attempt, at most (at least a millisecond).
pub const RETRY_PAUSE_MS_MAX: u64 = 200;
/// Registrations tried before a write gives up on writing at all.
pub const REGISTER_ATTEMPTS_MAX: u32 = 4;
/// The last read-back follows the last overwrite's acknowledgement after
/// between half of [`SESSION_HOLD_MS_MAX`] and this much more than all of
/// it: most held-back copies of the earlier writes have landed by then.
pub const READ_BACK_SLACK_MS: u64 = 200;
/// Overwrites of the same blocks after a cycle's first write, at most.
pub const OVERWRITES_MAX: u64 = 3;

/// What one delivery of a session request came to.
#[derive(Debug)]
enum Delivery {
    /// Applied (now or by an earlier delivery) at this log index's answer.
    Acked(u64),
    /// Certainly not proposed (via down, no leader, redirects).
    NotSent,
    /// May have been applied; no answer.
    Unknown,
    /// The volume no longer knows the session: refused, not applied.
    Expired,
    /// Any other refusal: never expected of an in-range write.
    Refused(VolumeResponse),
}

/// Delivers `command` as request `id` of `volume`, entering at `via`.
async fn deliver(
    cluster: &Cluster,
    via: NodeId,
    volume: &SimVolume,
    id: RequestId,
    command: VolumeCommand,
) -> Delivery {
    let Some((host, kill)) = cluster.host_and_kill(via) else {
        return Delivery::NotSent;
    };
    match kill.guard(host.command_once(volume.id, id, command)).await {
        None => Delivery::Unknown,
        Some(Ok(log_index)) => Delivery::Acked(log_index),
        Some(Err(HostError::Refused {
            response: VolumeResponse::SessionExpired { .. },
            ..
        })) => Delivery::Expired,
        Some(Err(HostError::Refused { response, .. })) => Delivery::Refused(response),
        Some(Err(HostError::NoLeader(_) | HostError::UnknownVolume(_) | HostError::Invalid(_))) => {
            Delivery::NotSent
        }
        Some(Err(_)) => Delivery::Unknown,
    }
}

/// A running node other than `not` if there is one, else any running node.
fn another_node(cluster: &Cluster, not: NodeId) -> Option<NodeId> {
    let up = cluster.up_nodes();
    let others: Vec<NodeId> = up.iter().copied().filter(|id| *id != not).collect();
    match (others.is_empty(), up.is_empty()) {
        (false, _) => Some(cluster.rng.pick(&others)),
        (true, false) => Some(cluster.rng.pick(&up)),
        (true, true) => None,
    }
}

/// Makes sure `window` holds a session of `volume`, registering one
/// through running nodes if not. Returns whether it holds one.
async fn ensure_session(cluster: &Cluster, volume: &SimVolume, window: &mut SessionWindow) -> bool {
    for _ in 0..REGISTER_ATTEMPTS_MAX {
        if window.session().is_some() {
            return true;
        }
        let registered = match cluster.pick_up_node() {
            Some(via) => match cluster.host_and_kill(via) {
                Some((host, kill)) => kill.guard(host.register_session(volume.id)).await,
                None => None,
            },
            None => None,
        };
        match registered {
            Some(Ok(session)) => window.renew(session),
            // Unknown or refused: a session may have been registered that
            // nobody uses; the volume evicts it in its time.
            _ => Rt::sleep(Duration::from_millis(NO_LEADER_PAUSE_MS)).await,
        }
    }
    window.session().is_some()
}

/// Where one client writes: its name, the volume and its session there.
#[derive(Debug)]
pub struct Writer<'a> {
    pub cluster: &'a Cluster,
    pub volume: &'a SimVolume,
    pub window: &'a mut SessionWindow,
    pub client: &'a str,
    pub stop: &'a AtomicBool,
}

impl Writer<'_> {
    /// Writes a fresh payload to `blocks` blocks from `first_block` as one
    /// session request, retried as the module docs say; records it and
    /// returns its outcome (`None`: no session, nothing written).
    pub async fn write(&mut self, via: NodeId, first_block: u64, blocks: u64) -> Option<Outcome> {
        if !ensure_session(self.cluster, self.volume, self.window).await {
            return None;
        }
        let id = self.window.begin()?;
        let write_id = self.cluster.next_write_id();
        let kind = OpKind::Write {
            first_block,
            blocks,
            write_id,
        };
        let history = &self.volume.history;
        let op = history.invoke_as(self.client, kind, Some(id), now_ns());
        let command = VolumeCommand::Write {
            offset_blocks: first_block,
            data: write_payload(write_id, first_block, blocks),
        };
        let outcome = self.attempts(via, id, op, &command).await;
        self.window.finish(id);
        history.complete(op, outcome.clone(), None, now_ns());
        if let Outcome::Acked { .. } = outcome {
            self.volume.last_ack_ns.store(now_ns(), Ordering::SeqCst);
            self.cluster.acked_writes.fetch_add(1, Ordering::SeqCst);
        }
        Some(outcome)
    }

    /// Delivers `command` as request `id` (history entry `op`) until an
    /// attempt settles it or the attempts run out; its outcome.
    async fn attempts(
        &mut self,
        mut via: NodeId,
        id: RequestId,
        op: usize,
        command: &VolumeCommand,
    ) -> Outcome {
        // An attempt answered "not proposed" may still have sent a
        // session request that the network duplicated (`network.rs`): only
        // a write no host ever saw is certainly not applied.
        let mut sent = false;
        let mut unknown = false;
        for _ in 0..DELIVERIES_MAX {
            if unknown {
                self.volume.history.delivered_again(op);
            }
            sent |= self.cluster.host(via).is_some();
            match deliver(self.cluster, via, self.volume, id, command.clone()).await {
                Delivery::Acked(log_index) => {
                    return Outcome::Acked {
                        log_index: Some(log_index),
                    };
                }
                Delivery::NotSent => {}
                Delivery::Unknown => unknown = true,
                Delivery::Expired => {
                    self.window.expire(id.session);
                    break;
                }
                Delivery::Refused(response) => {
                    self.cluster.violations.report_as(
                        ViolationKind::Other,
                        format!(
                            "{} session request {id:?} by {}: unexpected refusal {response:?}",
                            self.volume.id, self.client
                        ),
                    );
                    break;
                }
            }
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            Rt::sleep(self.cluster.rng.millis(1, RETRY_PAUSE_MS_MAX)).await;
            match another_node(self.cluster, via) {
                Some(next) => via = next,
                None => break,
            }
        }
        match sent {
            true => Outcome::Unknown,
            false => Outcome::NotApplied,
        }
    }
}

/// One client of the retrying-clients workload (see the module docs):
/// write-overwrite-read cycles and random reads of random volumes until
/// `stop` is set.
pub async fn client(cluster: Arc<Cluster>, number: u64, stop: Arc<AtomicBool>) {
    let name = format!("client{number}");
    let rng = cluster.rng.clone();
    // As in `workload::client`: DR snapshots from a stream of their own.
    let snapshots = crate::rng::SimRng::new(cluster.options.seed ^ 0x6472_736e_6170 ^ number);
    let mut windows: Vec<SessionWindow> = cluster
        .volumes
        .iter()
        .map(|_| SessionWindow::new())
        .collect();
    while !stop.load(Ordering::SeqCst) && !cluster.volumes.is_empty() {
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
            let mut writer = Writer {
                cluster: &cluster,
                volume,
                window: &mut windows[index],
                client: &name,
                stop: &stop,
            };
            overwrite_cycle(&mut writer, via, first, blocks).await;
        } else {
            let blocks = rng.range(1, WORKLOAD_READ_BLOCKS_MAX);
            let first = rng.below(VOLUME_BLOCKS - blocks + 1);
            read(&cluster, volume, &name, via, first, blocks).await;
        }
    }
}

/// Writes `blocks` blocks from `first`, overwrites them 1 to
/// [`OVERWRITES_MAX`] times, and reads them back twice: soon after the last
/// overwrite was acknowledged, and once held-back copies of the earlier
/// writes may have landed.
async fn overwrite_cycle(writer: &mut Writer<'_>, via: NodeId, first: u64, blocks: u64) {
    let cluster = writer.cluster;
    let overwrites = cluster.rng.range(1, OVERWRITES_MAX);
    let mut via = Some(via);
    let mut last = None;
    for _ in 0..=overwrites {
        let Some(entry) = via else {
            return;
        };
        last = writer.write(entry, first, blocks).await;
        if last.is_none() || writer.stop.load(Ordering::SeqCst) {
            return;
        }
        via = cluster.pick_up_node();
    }
    let Some(Outcome::Acked { .. }) = last else {
        return;
    };
    let hold = SESSION_HOLD_MS_MAX;
    for pause_ms in [(0, hold / 2), (hold / 2, hold + READ_BACK_SLACK_MS)] {
        Rt::sleep(cluster.rng.millis(pause_ms.0, pause_ms.1)).await;
        if let Some(via) = cluster.pick_up_node() {
            read(cluster, writer.volume, writer.client, via, first, blocks).await;
        }
    }
}
