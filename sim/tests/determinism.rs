//! The same seed replays exactly: the same executor trace (every spawn,
//! poll, wake, timer and rng draw, in order) twice in one process, and in
//! two separate processes of the built binary.

use std::process::Command;

use metro_sim::options::SimOptions;
use metro_sim::run::run_seed;

const SEED: u64 = 11;

#[test]
fn same_seed_same_trace_in_one_process() {
    let first = run_seed(SimOptions::from_seed(SEED));
    let second = run_seed(SimOptions::from_seed(SEED));
    assert_eq!(first.violations, 0, "{:?}", first.messages);
    assert!(first.events > 10_000, "a real run: {} events", first.events);
    assert_eq!(
        (
            first.trace,
            first.events,
            first.sim_ns,
            first.ops,
            first.net
        ),
        (
            second.trace,
            second.events,
            second.sim_ns,
            second.ops,
            second.net
        )
    );
    let other = run_seed(SimOptions::from_seed(SEED + 1));
    assert_ne!(first.trace, other.trace, "another seed runs differently");
}

/// Seed 0 draws every environment fault kind, EIO included: its disks,
/// supervisors, store and clocks replay exactly too.
#[test]
fn environment_faults_replay_exactly() {
    let options = SimOptions::from_seed(0);
    assert!(options.env.eio && !options.env.is_none(), "{options}");
    let first = run_seed(options.clone());
    let second = run_seed(options);
    assert_eq!(first.violations, 0, "{:?}", first.messages);
    assert_eq!(
        (
            first.trace,
            first.events,
            first.sim_ns,
            first.ops,
            first.net
        ),
        (
            second.trace,
            second.events,
            second.sim_ns,
            second.ops,
            second.net
        )
    );
}

/// The final line without its wall-clock field.
fn replay_line(seed: u64) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_metro-sim"))
        .args(["run", "--seed", &seed.to_string()])
        .output()
        .expect("metro-sim runs");
    assert!(output.status.success(), "seed {seed} passes");
    let stdout = String::from_utf8(output.stdout).expect("utf-8 output");
    assert!(
        stdout.starts_with(&format!("seed={seed} topology=")),
        "options first: {stdout}"
    );
    let last = stdout.lines().last().expect("a final line").to_string();
    let (kept, wall) = last.rsplit_once(" wall_s=").expect("wall_s last");
    assert!(wall.parse::<f64>().is_ok(), "wall_s is a number: {last}");
    kept.to_string()
}

#[test]
fn same_seed_same_trace_in_two_processes() {
    let first = replay_line(SEED);
    assert!(
        first.contains(" trace=") && first.contains(" violations=0 "),
        "{first}"
    );
    assert_eq!(first, replay_line(SEED));
}
