//! A small swarm: every seed passes every check. Two halves, so that the
//! test harness runs them on both cores.

use metro_sim::options::SimOptions;
use metro_sim::run::run_seed;

fn swarm(seeds: std::ops::Range<u64>) {
    let mut dr_snapshots = 0;
    for seed in seeds {
        let report = run_seed(SimOptions::from_seed(seed));
        assert_eq!(
            report.violations, 0,
            "seed {seed} fails; replay: metro-sim run --seed {seed}\n{:#?}",
            report.messages
        );
        assert!(
            report.ops.writes_acked > 0,
            "seed {seed} acknowledged writes"
        );
        dr_snapshots += report.ops.dr_snapshots;
    }
    // The DR snapshot checks had something to check.
    assert!(dr_snapshots >= 10, "only {dr_snapshots} DR snapshots taken");
}

#[test]
fn seeds_0_to_9_pass() {
    swarm(0..10);
}

#[test]
fn seeds_10_to_19_pass() {
    swarm(10..20);
}
