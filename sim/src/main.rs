//! `metro-sim`: runs seeded cluster simulations.
//!
//! - `metro-sim run --seed N` prints the options derived from the seed,
//!   runs it and prints one final line:
//!   `seed=N trace=<16 hex> events=<n> violations=<n> sim_s=<s> wall_s=<s>`;
//!   exits non-zero on any violation.
//! - `metro-sim swarm --seeds K [--start S]` runs seeds S..S+K, one line
//!   each, then lists the failing seeds with the command that replays each,
//!   and the speed in simulated seconds per wall-clock second.
//!
//! The wall clock is read here only, to report `wall_s`.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use metro_sim::options::{PlantedBug, SimOptions};
use metro_sim::run::{RunReport, run_seed};

#[derive(Parser, Debug)]
#[command(
    name = "metro-sim",
    about = "deterministic simulation of metro clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs one seed.
    Run {
        #[arg(long)]
        seed: u64,
        /// Plants a bug on the simulator's side (to test the checkers).
        #[arg(long, value_enum)]
        bug: Option<Bug>,
    },
    /// Prints the options of seeds S..S+K without running them.
    Options {
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        #[arg(long, default_value_t = 0)]
        start: u64,
    },
    /// Runs many seeds.
    Swarm {
        #[arg(long)]
        seeds: u64,
        #[arg(long, default_value_t = 0)]
        start: u64,
        #[arg(long, value_enum)]
        bug: Option<Bug>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Bug {
    EarlyAck,
    LyingFsync,
}

impl Bug {
    fn planted(self) -> PlantedBug {
        match self {
            Bug::EarlyAck => PlantedBug::EarlyAck,
            Bug::LyingFsync => PlantedBug::LyingFsync,
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Bug::EarlyAck => " --bug early-ack",
            Bug::LyingFsync => " --bug lying-fsync",
        }
    }
}

/// A wall-clock stopwatch: the only wall-clock use in metro-sim.
struct Stopwatch(std::time::Instant);

impl Stopwatch {
    #[allow(clippy::disallowed_methods)] // reason: wall_s reports real elapsed time; it never feeds the simulation
    fn start() -> Self {
        Self(std::time::Instant::now())
    }

    fn seconds(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

fn options(seed: u64, bug: Option<Bug>) -> SimOptions {
    let mut options = SimOptions::from_seed(seed);
    options.bug = bug.map(Bug::planted);
    options
}

fn line(report: &RunReport, wall_s: f64) -> String {
    format!(
        "seed={} trace={:016x} events={} violations={} sim_s={:.3} wall_s={:.3}",
        report.seed,
        report.trace,
        report.events,
        report.violations,
        report.sim_ns as f64 / 1e9,
        wall_s
    )
}

fn run(seed: u64, bug: Option<Bug>) -> ExitCode {
    let options = options(seed, bug);
    println!("{options}");
    let clock = Stopwatch::start();
    let report = run_seed(options);
    let wall_s = clock.seconds();
    println!(
        "ops={:?} net={:?} faults={:?} leaders_per_term_max={}",
        report.ops, report.net, report.faults, report.leaders_per_term_max
    );
    for message in &report.messages {
        println!("violation: {message}");
    }
    println!("{}", line(&report, wall_s));
    if report.violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn swarm(seeds: u64, start: u64, bug: Option<Bug>) -> ExitCode {
    let clock = Stopwatch::start();
    let mut sim_s = 0.0;
    let mut failing = Vec::new();
    for seed in start..start + seeds {
        let one = Stopwatch::start();
        let report = run_seed(options(seed, bug));
        sim_s += report.sim_ns as f64 / 1e9;
        println!("{}", line(&report, one.seconds()));
        if report.violations > 0 {
            if let Some(first) = report.messages.first() {
                println!("  first violation: {first}");
            }
            failing.push(seed);
        }
    }
    let wall_s = clock.seconds();
    let flag = bug.map(Bug::flag).unwrap_or("");
    println!("failing seeds: {}", failing.len());
    for seed in &failing {
        println!("  replay: metro-sim run --seed {seed}{flag}");
    }
    println!(
        "speed: {:.1} simulated s per wall s ({sim_s:.1} sim s in {wall_s:.1} wall s)",
        sim_s / wall_s.max(1e-9)
    );
    if failing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { seed, bug } => run(seed, bug),
        Command::Swarm { seeds, start, bug } => swarm(seeds, start, bug),
        Command::Options { seeds, start } => {
            for seed in start..start + seeds {
                println!("{}", SimOptions::from_seed(seed));
            }
            ExitCode::SUCCESS
        }
    }
}
