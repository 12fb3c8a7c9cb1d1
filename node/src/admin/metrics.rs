//! [`NodeMetrics`]: what a node measures for Prometheus `/metrics`.
//!
//! - **I/O** ([`VolumeIo`]): the NBD frontend ([`crate::nbd::host`]) records
//!   every read and write it serves — operations, bytes, errors and a
//!   latency histogram per volume — with a few relaxed atomic adds on the
//!   hot path (the per-volume entry is resolved once, when the export is
//!   opened). Latency is measured around the whole host call, retries
//!   included: what the client saw.
//! - **Raft** (sampled from the hosted groups' openraft metrics when
//!   scraped): term, last log and applied index, whether this node leads,
//!   and on the leader the replication lag of each follower in log entries
//!   (the leader's last log index minus the follower's matched index).
//! - **Leader changes**: [`NodeMetrics::observe_leaders`] compares each
//!   hosted group's current leader with the last one seen and counts the
//!   changes; the admin server calls it every [`LEADER_SAMPLE_MS`](crate::limits::LEADER_SAMPLE_MS) and on
//!   every scrape, so a change is missed only when two elections complete
//!   within one sampling period.
//! - **Control plane** ([`render_control`]): whether this node is
//!   registered and whether it is the coordinator, and the coordinator's
//!   counters (placements, repairs, CAS conflicts, store outages, ...).
//! - **NBD server** ([`NodeMetrics::nbd`]): the node's NBD listener counts
//!   connections, sessions, requests and error replies into these
//!   counters (across listener restarts), rendered as `metro_nbd_*`.
//! - **RTT**: QUIC's smoothed path RTT to each peer
//!   ([`QuicTransport::peer_rtts`]), plus the transport's counters.
//!
//! Every map is bounded by the host's volume limit ([`VOLUMES_MAX`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metro_fabric::env::NodeId;
use metro_fabric::limits::VOLUMES_MAX;
use metro_fabric::volume::VolumeId;
use openraft::rt::WatchReceiver as _;
use parking_lot::Mutex;

use super::exposition::{Exposition, Kind};
use crate::daemon::NodeHost;
use crate::daemon::control_plane::ControlStatus;
use crate::nbd::NbdStats;
use crate::transport::QuicTransport;

/// Upper bounds of the latency buckets, in microseconds (`+Inf` follows).
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];

/// A latency histogram with fixed buckets (cumulative when rendered).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let index = LATENCY_BUCKETS_US.partition_point(|bound| *bound < us);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, e: &mut Exposition, name: &str, labels: &[(&str, &str)]) {
        let mut cumulative = 0;
        let bounds = LATENCY_BUCKETS_US.iter().map(|us| *us as f64 / 1e6);
        for (bucket, bound) in self.buckets.iter().zip(bounds.chain([f64::INFINITY])) {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = super::exposition::format_value(bound);
            let mut all = labels.to_vec();
            all.push(("le", &le));
            e.sample(&format!("{name}_bucket"), &all, cumulative as f64);
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        e.sample(&format!("{name}_sum"), labels, sum);
        e.sample(&format!("{name}_count"), labels, cumulative as f64);
    }
}

/// One kind of operation on one volume.
#[derive(Debug, Default)]
pub struct OpStats {
    pub ops: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    pub latency: Histogram,
}

impl OpStats {
    /// Records one operation of `bytes` that took `latency`.
    pub fn record(&self, bytes: u64, latency: Duration, ok: bool) {
        if ok {
            self.ops.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
            self.latency.record(latency);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The I/O counters of one volume on this node's frontend.
#[derive(Debug, Default)]
pub struct VolumeIo {
    pub reads: OpStats,
    pub writes: OpStats,
}

#[derive(Debug, Default, Clone, Copy)]
struct LeaderTrack {
    leader: Option<NodeId>,
    changes: u64,
}

/// A node's metrics. Share it behind an `Arc`.
#[derive(Debug, Default)]
pub struct NodeMetrics {
    io: Mutex<BTreeMap<VolumeId, Arc<VolumeIo>>>,
    leaders: Mutex<BTreeMap<VolumeId, LeaderTrack>>,
    nbd: Arc<NbdStats>,
}

/// Failures to record: a node past its volume limit shares one entry.
const OVERFLOW: VolumeId = VolumeId(u64::MAX);

impl NodeMetrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The I/O counters of `volume` (created on first use).
    pub fn volume(&self, volume: VolumeId) -> Arc<VolumeIo> {
        let mut io = self.io.lock();
        let key = if io.len() >= VOLUMES_MAX && !io.contains_key(&volume) {
            OVERFLOW
        } else {
            volume
        };
        Arc::clone(io.entry(key).or_default())
    }

    /// The NBD server counters: a node's listener counts into them
    /// ([`NbdServer::with_stats`](crate::nbd::NbdServer::with_stats)).
    pub fn nbd(&self) -> Arc<NbdStats> {
        Arc::clone(&self.nbd)
    }

    /// Compares each hosted group's leader with the last one seen and
    /// counts changes (a group seen for the first time counts none).
    pub fn observe_leaders(&self, host: &NodeHost) {
        let mut leaders = self.leaders.lock();
        let hosted = host.volumes();
        leaders.retain(|volume, _| hosted.contains(volume));
        for volume in hosted {
            let Some(raft) = host.raft(volume) else {
                continue;
            };
            let now = raft.metrics().borrow_watched().current_leader;
            match leaders.get_mut(&volume) {
                Some(track) => {
                    if now.is_some() && now != track.leader {
                        track.changes += u64::from(track.leader.is_some());
                        track.leader = now;
                    }
                }
                None => {
                    leaders.insert(
                        volume,
                        LeaderTrack {
                            leader: now,
                            changes: 0,
                        },
                    );
                }
            }
        }
    }

    /// The leader changes counted for `volume`.
    pub fn leader_changes(&self, volume: VolumeId) -> u64 {
        self.leaders.lock().get(&volume).map_or(0, |t| t.changes)
    }

    /// The whole scrape.
    pub fn render(&self, host: Option<&NodeHost>, transport: Option<&QuicTransport>) -> String {
        let mut e = Exposition::new();
        if let Some(host) = host {
            self.observe_leaders(host);
            let node = host.node().to_string();
            e.family("metro_node_info", Kind::Gauge, "This node's id (value 1).");
            e.sample("metro_node_info", &[("node", &node)], 1.0);
        }
        self.render_io(&mut e);
        render_nbd(&mut e, &self.nbd);
        if let Some(host) = host {
            self.render_raft(&mut e, host);
        }
        if let Some(transport) = transport {
            render_transport(&mut e, transport);
        }
        e.finish()
    }

    fn render_io(&self, e: &mut Exposition) {
        let io: Vec<(VolumeId, Arc<VolumeIo>)> = self
            .io
            .lock()
            .iter()
            .map(|(v, io)| (*v, Arc::clone(io)))
            .collect();
        let families = [
            ("read", "Reads served through NBD."),
            ("write", "Writes acknowledged through NBD."),
        ];
        for (op, what) in families {
            let ops = format!("metro_volume_{op}s_total");
            e.family(&ops, Kind::Counter, what);
            for (volume, vio) in &io {
                let s = op_stats(vio, op);
                let id = volume.0.to_string();
                e.sample(
                    &ops,
                    &[("volume_id", &id)],
                    s.ops.load(Ordering::Relaxed) as f64,
                );
            }
            let bytes = format!("metro_volume_{op}_bytes_total");
            e.family(&bytes, Kind::Counter, "Bytes of the operations counted.");
            for (volume, vio) in &io {
                let s = op_stats(vio, op);
                let id = volume.0.to_string();
                e.sample(
                    &bytes,
                    &[("volume_id", &id)],
                    s.bytes.load(Ordering::Relaxed) as f64,
                );
            }
            let errors = format!("metro_volume_{op}_errors_total");
            e.family(&errors, Kind::Counter, "Operations that failed.");
            for (volume, vio) in &io {
                let s = op_stats(vio, op);
                let id = volume.0.to_string();
                let value = s.errors.load(Ordering::Relaxed) as f64;
                e.sample(&errors, &[("volume_id", &id)], value);
            }
            let latency = format!("metro_volume_{op}_latency_seconds");
            e.family(
                &latency,
                Kind::Histogram,
                "Latency as the NBD client saw it.",
            );
            for (volume, vio) in &io {
                let s = op_stats(vio, op);
                let id = volume.0.to_string();
                s.latency.render(e, &latency, &[("volume_id", &id)]);
            }
        }
    }

    fn render_raft(&self, e: &mut Exposition, host: &NodeHost) {
        let mut rows = Vec::new();
        for volume in host.volumes() {
            if let Some(raft) = host.raft(volume) {
                rows.push((volume, raft.metrics().borrow_watched().clone()));
            }
        }
        let gauges: [(&str, &str, Gauge); 4] = [
            ("metro_raft_term", "The group's current term here.", |m| {
                m.current_term as f64
            }),
            (
                "metro_raft_last_log_index",
                "The last log index of this replica.",
                |m| m.last_log_index.map_or(0.0, |i| i as f64),
            ),
            (
                "metro_raft_applied_index",
                "The last applied log index of this replica.",
                |m| m.last_applied.as_ref().map_or(0.0, |l| l.index as f64),
            ),
            (
                "metro_raft_is_leader",
                "1 if this node leads the volume's group.",
                |m| f64::from(u8::from(m.current_leader == Some(m.id))),
            ),
        ];
        for (name, help, value) in gauges {
            e.family(name, Kind::Gauge, help);
            for (volume, m) in &rows {
                e.sample(name, &[("volume_id", &volume.0.to_string())], value(m));
            }
        }
        let changes = "metro_raft_leader_changes_total";
        e.family(
            changes,
            Kind::Counter,
            "Leader changes seen by this replica.",
        );
        for (volume, _) in &rows {
            let value = self.leader_changes(*volume) as f64;
            e.sample(changes, &[("volume_id", &volume.0.to_string())], value);
        }
        let lag = "metro_replication_lag_entries";
        e.family(
            lag,
            Kind::Gauge,
            "On the leader: its last log index minus each follower's matched index.",
        );
        let max_lag = "metro_volume_replication_lag_entries";
        let mut maxima = Vec::new();
        for (volume, m) in &rows {
            let id = volume.0.to_string();
            let lags = replication_lags(m);
            for (peer, entries) in &lags {
                let peer = peer.to_string();
                e.sample(lag, &[("volume_id", &id), ("peer", &peer)], *entries as f64);
            }
            if m.current_leader == Some(m.id) {
                maxima.push((id, lags.values().copied().max().unwrap_or(0)));
            }
        }
        e.family(
            max_lag,
            Kind::Gauge,
            "On the leader: the largest follower lag of the volume, in log entries.",
        );
        for (id, value) in maxima {
            e.sample(max_lag, &[("volume_id", &id)], value as f64);
        }
    }
}

/// Reads one gauge out of a group's metrics.
type Gauge = fn(&RaftMetricsOf) -> f64;

/// The metrics type of a hosted group.
pub type RaftMetricsOf =
    openraft::RaftMetrics<metro_fabric::raft::types::TypeConfig<openraft_rt_tokio::TokioRuntime>>;

/// On a leader: each follower's lag in log entries (leader's last log index
/// minus its matched index; a follower with nothing matched lags by the
/// whole log). Empty elsewhere.
pub fn replication_lags(m: &RaftMetricsOf) -> BTreeMap<NodeId, u64> {
    let Some(replication) = &m.replication else {
        return BTreeMap::new();
    };
    let last = m.last_log_index.unwrap_or(0);
    replication
        .iter()
        .filter(|(peer, _)| **peer != m.id)
        .map(|(peer, matched)| {
            let matched = matched.as_ref().map_or(0, |l| l.index);
            (*peer, last.saturating_sub(matched))
        })
        .collect()
}

fn op_stats<'a>(io: &'a VolumeIo, op: &str) -> &'a OpStats {
    if op == "read" { &io.reads } else { &io.writes }
}

/// The control plane's counters on this node: its registration and its
/// coordinator candidate (a scrape of its own, appended to the rest).
pub fn render_control(control: &dyn ControlStatus) -> String {
    let mut e = Exposition::new();
    let registration = control.registration_status();
    let stats = control.coordinator_stats();
    let gauges = [
        (
            "metro_node_registered",
            "1 while this node's registration lease is renewed.",
            u64::from(registration.registered),
        ),
        (
            "metro_coordinator_leading",
            "1 while this node is the elected coordinator.",
            u64::from(stats.leading),
        ),
    ];
    for (name, help, value) in gauges {
        e.family(name, Kind::Gauge, help);
        e.sample(name, &[], value as f64);
    }
    let counters = [
        (
            "metro_node_registrations_total",
            "Leases granted and the node key written.",
            registration.registrations,
        ),
        (
            "metro_node_leases_lost_total",
            "Registration leases found expired or revoked.",
            registration.leases_lost,
        ),
        (
            "metro_coordinator_terms_total",
            "Coordinator elections won here.",
            stats.terms,
        ),
        (
            "metro_coordinator_terms_ended_total",
            "Coordinator leaderships that ended here.",
            stats.terms_ended,
        ),
        (
            "metro_coordinator_rounds_total",
            "Coordinator rounds completed while leading.",
            stats.rounds,
        ),
        (
            "metro_coordinator_placements_total",
            "Volumes placed.",
            stats.placements,
        ),
        (
            "metro_coordinator_placement_errors_total",
            "Volumes that could not be placed (retried).",
            stats.placement_errors,
        ),
        (
            "metro_coordinator_groups_created_total",
            "Groups created.",
            stats.groups_created,
        ),
        (
            "metro_coordinator_repairs_total",
            "Replicas replaced.",
            stats.repairs,
        ),
        (
            "metro_coordinator_repairs_adopted_total",
            "Repairs found made in a group but unrecorded, then recorded.",
            stats.repairs_adopted,
        ),
        (
            "metro_coordinator_groups_diverged_total",
            "Health checks that found a group's voters to be no repair of its placement.",
            stats.diverged,
        ),
        (
            "metro_coordinator_cas_conflicts_total",
            "Guarded writes that found the record changed.",
            stats.cas_conflicts,
        ),
        (
            "metro_coordinator_fence_failures_total",
            "Writes refused by the leadership fence.",
            stats.fence_failures,
        ),
        (
            "metro_coordinator_store_unreachable_total",
            "Rounds or lease calls that found the store unreachable.",
            stats.unreachable,
        ),
        (
            "metro_coordinator_admin_errors_total",
            "Failed group operations.",
            stats.admin_errors,
        ),
    ];
    for (name, help, value) in counters {
        e.family(name, Kind::Counter, help);
        e.sample(name, &[], value as f64);
    }
    e.finish()
}

fn render_nbd(e: &mut Exposition, stats: &NbdStats) {
    let counters = [
        (
            "metro_nbd_connections_total",
            "NBD TCP connections accepted.",
            &stats.connections,
        ),
        (
            "metro_nbd_rejected_connections_total",
            "NBD connections refused because the connection limit was reached.",
            &stats.rejected_connections,
        ),
        (
            "metro_nbd_sessions_total",
            "NBD connections that completed the handshake.",
            &stats.sessions,
        ),
        (
            "metro_nbd_connection_errors_total",
            "NBD connections ended by a protocol or socket error.",
            &stats.connection_errors,
        ),
        (
            "metro_nbd_requests_total",
            "NBD transmission requests received (disconnects excluded).",
            &stats.requests,
        ),
        (
            "metro_nbd_error_replies_total",
            "NBD replies carrying an error.",
            &stats.error_replies,
        ),
    ];
    for (name, help, value) in counters {
        e.family(name, Kind::Counter, help);
        e.sample(name, &[], value.load(Ordering::Relaxed) as f64);
    }
}

fn render_transport(e: &mut Exposition, transport: &QuicTransport) {
    let rtt = "metro_peer_rtt_seconds";
    e.family(
        rtt,
        Kind::Gauge,
        "Smoothed QUIC path RTT to each connected peer.",
    );
    for (peer, value) in transport.peer_rtts() {
        e.sample(rtt, &[("peer", &peer.to_string())], value.as_secs_f64());
    }
    let stats = transport.stats();
    let counters = [
        (
            "metro_transport_requests_served_total",
            "Requests served over QUIC.",
            stats.requests_served,
        ),
        (
            "metro_transport_rejected_frames_total",
            "Request frames rejected as malformed.",
            stats.rejected_frames,
        ),
        (
            "metro_transport_rejected_connections_total",
            "Incoming connections refused.",
            stats.rejected_connections,
        ),
        (
            "metro_transport_handlers_cancelled_total",
            "Request handlers cancelled because their caller went away.",
            stats.handlers_cancelled,
        ),
        (
            "metro_transport_rejected_busy_total",
            "Requests answered busy: the node-wide in-flight bounds were reached.",
            stats.rejected_busy,
        ),
    ];
    for (name, help, value) in counters {
        e.family(name, Kind::Counter, help);
        e.sample(name, &[], value as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::super::exposition::check_exposition;
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_scrapes_check() {
        let metrics = NodeMetrics::new();
        let io = metrics.volume(VolumeId(7));
        io.writes.record(4096, Duration::from_micros(40), true);
        io.writes.record(8192, Duration::from_millis(3), true);
        io.writes.record(0, Duration::from_secs(60), true);
        io.reads.record(4096, Duration::from_millis(1), false);
        assert_eq!(io.writes.latency.count(), 3);
        let text = metrics.render(None, None);
        assert!(check_exposition(&text).is_ok(), "{text}");
        assert!(text.contains("metro_volume_writes_total{volume_id=\"7\"} 3\n"));
        assert!(text.contains("metro_volume_write_bytes_total{volume_id=\"7\"} 12288\n"));
        assert!(text.contains("metro_volume_read_errors_total{volume_id=\"7\"} 1\n"));
        assert!(
            text.contains(
                "metro_volume_write_latency_seconds_bucket{volume_id=\"7\",le=\"0.00005\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains(
            "metro_volume_write_latency_seconds_bucket{volume_id=\"7\",le=\"0.005\"} 2\n"
        ));
        assert!(text.contains(
            "metro_volume_write_latency_seconds_bucket{volume_id=\"7\",le=\"+Inf\"} 3\n"
        ));
    }
}
