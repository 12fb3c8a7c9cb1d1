//! metro-sim: deterministic simulation of whole metro clusters.
//!
//! Model: everything — every node's volume host with its openraft groups
//! (several volumes per cluster), its kvstore and the writer that
//! group-commits it, the packet network between nodes, the clients and the
//! fault injector — runs as tasks of one
//! [`openraft_rt_sim::SimRuntime`]: a single-threaded FIFO executor on a
//! virtual clock whose randomness derives from one seed. Nothing reads the
//! wall clock, spawns a thread or draws unseeded randomness, so a seed
//! replays exactly; [`run::run_seed`] hashes the executor's trace (every
//! spawn, poll, wake, timer and rng draw, in order) to prove it.
//!
//! Pieces, one per module:
//! - [`options`]: everything a run varies (topology, latencies, fault
//!   rates, workload, and in half the seeds the environment faults: disk
//!   EIO, latent corruption, etcd outages and cuts, coordinators, clock
//!   drift), derived from the seed and printed first.
//! - [`network`]: [`network::SimNetwork`], fabric's `Transport` over
//!   simulated links (latency, jitter, loss, duplication, partitions, nodes
//!   down, per-request timeout).
//! - [`node`] and [`cluster`]: a node = `FaultyDisk` + kvstore stepped by
//!   a sim task + `NodeStorage` + fabric's `VolumeHost` (every replica the
//!   node hosts) + `HostHandler` as its request handler; 2-4 volumes placed
//!   by fabric's `control::place` and created through
//!   `VolumeHost::create_volume`; crash (power loss) and restart from the
//!   disk (the host reopens its catalogue).
//! - [`workload`], [`history`], [`checker`]: clients writing unique
//!   payloads and reading through any node's host (forwarded to the
//!   volume's leader), the recorded history per volume, and the safety
//!   checks over it.
//! - [`retrying`]: the retrying-clients workload: clients writing through
//!   sessions, retrying a write of unknown outcome with the same request
//!   id, overwriting and reading back (drawn by a third of the seeds).
//! - [`control`]: the control plane on virtual time — fabric's
//!   `MemMetaStore` as the cluster's etcd, each node's registration and
//!   coordinator against it through a per-node link that can be cut, and
//!   the checks over them.
//! - [`faults`]: the fault schedule of the safety phase: crashes,
//!   partitions, etcd outages and cuts, EIO and latent corruption of disks.
//! - [`run`]: one seed end to end — safety phase, liveness phase (every
//!   volume), verdict.
pub mod checker;
pub mod cluster;
pub mod control;
pub mod dr_snapshots;
pub mod faults;
pub mod history;
pub mod kill;
pub mod network;
pub mod node;
pub mod options;
pub mod repair;
pub mod retrying;
pub mod rng;
pub mod run;
pub mod workload;

/// The runtime every simulated task runs on.
pub type Rt = openraft_rt_sim::SimRuntime;

/// Virtual nanoseconds since the simulation started.
pub fn now_ns() -> u64 {
    use openraft::Instant as _;
    openraft_rt_sim::SimInstant::now()
        .elapsed_since_start()
        .as_nanos() as u64
}
