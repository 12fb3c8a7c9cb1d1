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
        "seed {seed} fails; replay: metro-sim run --seed {seed}\n{:#?}",
        report.messages
    );
}

/// Two data replicas and a witness, where the witness won the first
/// election (the one its own initialization starts) and then held the
/// longest log: these stalled (no write in the 30 s liveness budget) while
/// the simulator kept witnesses from campaigning. As in production,
/// witnesses now campaign, and the seeds pass.
#[test]
fn witness_with_longest_log_may_lead() {
    for seed in [97, 119, 171] {
        passes(seed, |_| {});
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
        passes(seed, |_| {});
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
        passes(seed, |options| options.witness_never_campaigns = true);
    }
}
