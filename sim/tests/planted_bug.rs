//! The checkers catch bugs planted on the simulator's side within a
//! bounded number of seeds: a client that counts a write acknowledged
//! before the leader answered (a linearizability / lost-write violation),
//! and disks whose fdatasync lies (lost log entries after crashes, which
//! openraft's own assertions or the liveness phase expose).

use metro_sim::options::{PlantedBug, SimOptions};
use metro_sim::run::run_seed;

/// The first seed in `0..seeds_max` whose run reports a violation.
fn first_failing(bug: PlantedBug, seeds_max: u64) -> Option<(u64, Vec<String>)> {
    (0..seeds_max).find_map(|seed| {
        let mut options = SimOptions::from_seed(seed);
        options.bug = Some(bug);
        let report = run_seed(options);
        (report.violations > 0).then_some((seed, report.messages))
    })
}

#[test]
fn early_ack_is_caught_as_a_stale_read() {
    let (seed, messages) = first_failing(PlantedBug::EarlyAck, 3).expect("caught within 3 seeds");
    assert!(
        messages.iter().any(|m| m.starts_with("linearizability:")),
        "seed {seed}: {messages:?}"
    );
}

#[test]
fn lying_fsync_is_caught() {
    let (seed, messages) =
        first_failing(PlantedBug::LyingFsync, 10).expect("caught within 10 seeds");
    assert!(!messages.is_empty(), "seed {seed} says why");
}
