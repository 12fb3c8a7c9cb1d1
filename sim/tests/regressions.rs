//! Seeds that failed while the simulator grew, replayed. Each one asserts
//! that the seed passes every check now.

use metro_sim::options::SimOptions;
use metro_sim::run::run_seed_untraced;

/// Runs `seed` (with `adjust` applied to its options) and requires a clean
/// verdict.
fn passes(seed: u64, adjust: impl Fn(&mut SimOptions)) {
    let mut options = SimOptions::from_seed(seed);
    adjust(&mut options);
    let report = run_seed_untraced(options);
    assert_eq!(
        report.violations, 0,
        "seed {seed} fails; replay: metro-sim run --seed {seed} (with the test's --env/--eio)\n{:#?}",
        report.messages
    );
}

/// The seed without environment faults, as the seeds found before those
/// existed ran (`--env off`).
fn no_env(options: &mut SimOptions) {
    *options = options.clone().without_env_faults();
}

/// Two data replicas and a witness, where the witness won the first
/// election (the one its own initialization starts) and then held the
/// longest log: these stalled (no write in the 30 s liveness budget) while
/// the simulator kept witnesses from campaigning. As in production,
/// witnesses now campaign, and the seeds pass.
#[test]
fn witness_with_longest_log_may_lead() {
    for seed in [97, 119, 171] {
        passes(seed, no_env);
    }
}

/// A host that retried a forwarded write through another node after the
/// first hop timed out (the write may have been applied there) and then
/// reported "no leader": the client took the write as never applied, and a
/// later read saw it (seed 57: block 29, write 41). The retry was reverted:
/// a hop that may have delivered the request ends the attempt with an
/// outcome-unknown error.
#[test]
fn a_forwarded_write_that_timed_out_is_never_reported_as_not_applied() {
    for seed in [46, 57, 122] {
        passes(seed, no_env);
    }
}

/// The same seeds with witnesses that never campaign (`elect(false)` on
/// every witness replica once it is open), which production does not do.
///
/// Replay: `metro-sim run --seed 97 --witness-never-campaigns` (also 119,
/// 171). Diagnosis so far: the witness (node 6 of 97) led term 1 and holds
/// the longest log (last index 41; data nodes 1 and 2 hold 36 and 29). In
/// the liveness phase, with every fault healed, node 2 stays a candidate in
/// term 9, node 1 shows a vote for node 2 in term 9 although its own log is
/// longer, and the witness stays in term 2: no leader for 30 virtual
/// seconds, though 1 and 2 together are a majority and 1's log is the
/// longest of the two. Every Raft core still answers queries. Whether this
/// is openraft's election under `enable_elect = false` or stalled log I/O in
/// fabric's storage is not settled; a witness role that must never lead
/// needs it settled first (fabric would have to set `elect(false)` itself,
/// and the metadata must let a data node with a shorter log win).
#[test]
#[ignore = "liveness stall with non-campaigning witnesses: see the comment"]
fn non_campaigning_witness_stalls() {
    for seed in [97, 119, 171] {
        passes(seed, |options| {
            no_env(options);
            options.witness_never_campaigns = true;
        });
    }
}

/// The seed's environment faults on, EIO as `eio` says (`--env on --eio
/// on|off`).
fn env_faults(eio: bool) -> impl Fn(&mut SimOptions) {
    move |options| *options = options.clone().with_env_faults(Some(eio))
}

/// Seeds whose outage window was wrongly held to progress while a node
/// whose disk had failed still awaited its supervisor (a modelling bug,
/// fixed: such windows are not clean), with EIO faults on.
#[test]
fn outage_window_with_failed_disk_is_not_clean() {
    passes(64, env_faults(true));
}

/// A leader that restarted before its followers campaigned resumed its
/// term (openraft's `enable_leader_restore`, on by default) with the
/// committed log id it read back from disk. That lags what it had
/// acknowledged: fabric queues `save_committed` and the apply batches
/// without awaiting them, and the crash dropped them. Its read-index reads
/// then used the stale committed index and missed acknowledged writes.
///
/// Seed 94 (`--env on --eio off`): node 2, leader of vol-1 in term 2,
/// acknowledged write 222 at index 65 and crashed 0.3 ms later with 64 as
/// its durable committed index; restarted 0.75 s later as leader of term 2
/// (followers had not campaigned yet) and a sweep read blocks 28-29 at
/// index 64, seeing writes 188 and 152 instead of 222. Seeds 44 and 94
/// with EIO (`--env on --eio on`) are the same (44: the witness, node 3,
/// restored as leader with committed 160 after acknowledging write 290 at
/// 161); EIO played no part in them. With the `apply-rider` patch in
/// `fabric/wip` (the committed id rides in the next log write, so it lags
/// more), 31 of seeds 0..200 failed this way with every environment fault
/// off. Fixed in fabric: `host::base_raft_config` turns leader restore off,
/// so a restarted leader campaigns and commits a blank entry of a new term
/// before it serves.
#[test]
fn a_restarted_leader_does_not_serve_stale_reads() {
    passes(94, env_faults(false));
    for seed in [44, 94] {
        passes(seed, env_faults(true));
    }
}

/// Found by the disk EIO faults on reads: kvstore's compaction asserted
/// (`compaction.rs`, "victim fully relocated") when a read of its victim
/// failed with EIO; it now refuses with `Corrupt`, poisoning the store, and
/// the supervisor restarts the node (`--env on --eio on`).
#[test]
fn eio_on_read_during_compaction_poisons_the_store() {
    passes(76, env_faults(true));
}

/// Seeds that lost acknowledged writes with the environment faults on and
/// EIO off when those faults were parked (`--env on --eio off`); they pass
/// against this fabric (after the forward-retry revert and the leader
/// restore fix).
#[test]
fn env_faults_keep_acknowledged_writes() {
    for seed in [6, 10, 14] {
        passes(seed, env_faults(false));
    }
}

/// A clean etcd outage window was held to a write being acknowledged
/// within it although a volume had not recovered from an earlier
/// disruption: seed 59 (`--env on --eio off`) lost vol-2's leader (node 4,
/// corrupted and lost for good) 3.4 s before the outage; its election took
/// until 1.6 s into the outage (openraft adds a smaller-log timeout of
/// twice the election timeout for a node that saw a longer log) and the
/// new leader's first AppendEntries was lost (an RPC timeout more), while
/// every client sat on a vol-2 write. A window is now clean only if every
/// volume acknowledged a write since the last disruption.
#[test]
fn outage_window_needs_every_volume_recovered() {
    passes(59, env_faults(false));
}

/// The registration check sampled node 1 (seed 253, `--env on --eio on`)
/// as down from 4.8 s on, missing an incarnation that ran for 0.7 ms at
/// 9.14 s and granted a fresh lease (live until 14.1 s): "the store still
/// holds its registration" at 12.4 s. It now counts from the node's last
/// call that reached the store.
#[test]
fn registration_check_sees_short_incarnations() {
    passes(253, env_faults(true));
}

/// Latent corruption that kvstore's own recovery does not read but the
/// replicas' reopening does (node 3 of seed 603: "value CRC mismatch" in
/// the first log segment while vol-2 reads its Raft log back) was reported
/// as a node failing to recover from its own disk. It is the expected
/// fail-stop outcome on the corrupted node: it stays down for good.
#[test]
fn corruption_found_by_a_replica_reopening_is_fail_stop() {
    passes(603, |_| {});
}

/// A leader whose disk held corrupted block data kept leading and failed
/// every read of those blocks ("value CRC mismatch"), so the volume never
/// served them again although a healthy replica held them: seed 635
/// (node 4's latent corruption lands in a log segment holding vol-1's
/// block values; node 4 reopens, since recovery reads only the record
/// headers, and stays vol-1's leader; the final sweep failed through every
/// node). Nothing wrong was served and no acknowledged write was lost: an
/// availability bug. Fixed in fabric: a read that finds the replica's own
/// data damaged (`VolumeRead` reports `ReadFailure::damaged`) shuts that
/// group down on that node (fail-stop), and the others elect a leader.
#[test]
fn a_leader_with_corrupted_data_fails_stop() {
    passes(635, |_| {});
}

/// A witness that lagged got a Raft snapshot from a data leader and
/// installed its blocks: "witness 6: holds 30 blocks of vol-2" (seed 181,
/// its own options). A witness now installs a snapshot's metadata only.
/// Replay: `metro-sim run --seed 181`.
#[test]
fn a_witness_installs_no_blocks_from_a_snapshot() {
    passes(181, |_| {});
}
