//! `metro-sim`: runs seeded cluster simulations.
//!
//! - `metro-sim run --seed N` prints the options derived from the seed,
//!   runs it and prints one final line:
//!   `seed=N trace=<16 hex> events=<n> violations=<n> sim_s=<s>
//!   retried_writes=<n> repairs=<n> wall_s=<s>` (`retried_writes`: session
//!   writes delivered again after an attempt of unknown outcome, see
//!   `retrying.rs`; `repairs`: members the groups replaced for the
//!   coordinators, see `repair.rs`); exits non-zero on any violation.
//! - `metro-sim swarm --seeds K [--start S]` runs seeds S..S+K, one line
//!   each, then lists the failing seeds with the command that replays each,
//!   and the speed in simulated seconds per wall-clock second; its last
//!   line is the summary `swarm: seeds=K failing=F retried_writes=R
//!   repairs=P sim_s=.. wall_s=.. speed=..x`.
//! - `--bug` (run, swarm) plants a bug to prove a checker catches it:
//!   `early-ack`, `lying-fsync`, `no-dedup` (state machines apply a
//!   session's duplicate requests again; it also turns the seed's
//!   retrying-clients workload on, the only one that sends session
//!   requests), or `unfenced-membership` (group leaders apply stale group
//!   changes; it turns the seed's repair workload on, whose stale changes
//!   a fenced leader refuses).
//! - The swarm skips the executor trace (`trace=0 events=0`; a fifth of
//!   the cost) unless `--trace`; `run` always hashes it.
//! - The environment faults (etcd outages and cuts, coordinators, latent
//!   corruption, clock drift, disk EIO) come from the seed like every other
//!   option: on in half the seeds, EIO in half of those. `--env on|off` and
//!   `--eio on|off` (run, swarm, options) override the seed's choice
//!   (`--eio on` implies `--env on`); the rest still comes from the seed.
//! - `--topology 2,2,2,w1` (run, swarm, options) replaces the topology the
//!   seed draws: comma-separated domains, `N` a data domain of N nodes,
//!   `wN` a witness domain (the other options still come from the seed).
//!
//! The wall clock is read here only, to report `wall_s`.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use metro_sim::options::{PlantedBug, SimOptions};
use metro_sim::run::{RunReport, run_seed, run_seed_untraced};

#[derive(Parser, Debug)]
#[command(
    name = "metro-sim",
    about = "deterministic simulation of metro clusters",
    after_help = "Planted bugs (run, swarm --bug): early-ack, lying-fsync, no-dedup, unfenced-membership."
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
        /// Replaces the drawn topology (e.g. `2,2,2,w1`).
        #[arg(long)]
        topology: Option<String>,
        /// Witness replicas only vote (production lets them campaign).
        #[arg(long)]
        witness_never_campaigns: bool,
        #[command(flatten)]
        env: EnvArgs,
    },
    /// Prints the options of seeds S..S+K without running them.
    Options {
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        #[arg(long, default_value_t = 0)]
        start: u64,
        #[arg(long)]
        topology: Option<String>,
        #[command(flatten)]
        env: EnvArgs,
    },
    /// Runs many seeds.
    Swarm {
        #[arg(long)]
        seeds: u64,
        #[arg(long, default_value_t = 0)]
        start: u64,
        #[arg(long, value_enum)]
        bug: Option<Bug>,
        #[arg(long)]
        topology: Option<String>,
        #[arg(long)]
        witness_never_campaigns: bool,
        #[command(flatten)]
        env: EnvArgs,
        /// Hashes every seed's executor trace (slower).
        #[arg(long)]
        trace: bool,
    },
}

/// Overrides of the seed's environment faults.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
struct EnvArgs {
    /// The environment faults (etcd outages and cuts, coordinators,
    /// corruption, clock drift): as the seed draws, or forced on or off.
    #[arg(long, value_enum, default_value_t = Switch::Seed)]
    env: Switch,
    /// Disk EIO faults: as the seed draws, or forced on or off.
    #[arg(long, value_enum, default_value_t = Switch::Seed)]
    eio: Switch,
}

/// As the seed draws it, or forced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
enum Switch {
    #[default]
    Seed,
    On,
    Off,
}

impl EnvArgs {
    /// Applies the overrides to `options`.
    fn apply(self, options: SimOptions) -> SimOptions {
        let eio = match self.eio {
            Switch::Seed => None,
            Switch::On => Some(true),
            Switch::Off => Some(false),
        };
        match (self.env, self.eio) {
            (Switch::Off, Switch::On) | (Switch::On, _) | (Switch::Seed, Switch::On) => {
                options.with_env_faults(eio)
            }
            (Switch::Off, _) => options.without_env_faults(),
            (Switch::Seed, _) if options.env.is_none() => options,
            (Switch::Seed, _) => options.with_env_faults(eio),
        }
    }

    /// The flags that replay these overrides.
    fn flags(self) -> String {
        let mut flags = String::new();
        for (name, switch) in [("env", self.env), ("eio", self.eio)] {
            match switch {
                Switch::Seed => {}
                Switch::On => flags.push_str(&format!(" --{name} on")),
                Switch::Off => flags.push_str(&format!(" --{name} off")),
            }
        }
        flags
    }
}

/// A planted bug (see `PlantedBug`).
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Bug {
    /// Clients take a write as acknowledged before the leader answered.
    EarlyAck,
    /// Disks acknowledge fdatasync without syncing.
    LyingFsync,
    /// State machines apply a session's duplicate requests again (turns
    /// the retrying-clients workload on).
    NoDedup,
    /// Group leaders apply group changes computed from voters the group no
    /// longer has (turns the repair workload on).
    UnfencedMembership,
}

impl Bug {
    fn planted(self) -> PlantedBug {
        match self {
            Bug::EarlyAck => PlantedBug::EarlyAck,
            Bug::LyingFsync => PlantedBug::LyingFsync,
            Bug::NoDedup => PlantedBug::NoDedup,
            Bug::UnfencedMembership => PlantedBug::UnfencedMembership,
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Bug::EarlyAck => " --bug early-ack",
            Bug::LyingFsync => " --bug lying-fsync",
            Bug::NoDedup => " --bug no-dedup",
            Bug::UnfencedMembership => " --bug unfenced-membership",
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

/// What a run varies: the seed's options, with `topology` and `bug`
/// applied.
#[derive(Clone, Debug)]
struct Variant {
    bug: Option<Bug>,
    topology: Option<String>,
    witness_never_campaigns: bool,
    env: EnvArgs,
}

impl Variant {
    fn options(&self, seed: u64) -> Result<SimOptions, String> {
        let mut options = match &self.topology {
            Some(spec) => SimOptions::with_topology(seed, spec)?,
            None => SimOptions::from_seed(seed),
        };
        if let Some(bug) = self.bug {
            options = options.with_bug(bug.planted());
        }
        options.witness_never_campaigns = self.witness_never_campaigns;
        Ok(self.env.apply(options))
    }

    /// The flags that replay a seed of this variant.
    fn flags(&self) -> String {
        let mut flags = self.bug.map(Bug::flag).unwrap_or("").to_string();
        if let Some(spec) = &self.topology {
            flags.push_str(&format!(" --topology {spec}"));
        }
        if self.witness_never_campaigns {
            flags.push_str(" --witness-never-campaigns");
        }
        flags.push_str(&self.env.flags());
        flags
    }
}

fn line(report: &RunReport, wall_s: f64) -> String {
    format!(
        "seed={} trace={:016x} events={} violations={} sim_s={:.3} retried_writes={} repairs={} wall_s={:.3}",
        report.seed,
        report.trace,
        report.events,
        report.violations,
        report.sim_ns as f64 / 1e9,
        report.ops.writes_retried,
        report.env.control.repairs,
        wall_s
    )
}

fn run(seed: u64, variant: &Variant) -> ExitCode {
    let options = match variant.options(seed) {
        Ok(options) => options,
        Err(why) => {
            eprintln!("{why}");
            return ExitCode::FAILURE;
        }
    };
    println!("{options}");
    let clock = Stopwatch::start();
    let report = run_seed(options);
    let wall_s = clock.seconds();
    println!(
        "ops={:?} net={:?} faults={:?} leaders_per_term_max={}",
        report.ops, report.net, report.faults, report.leaders_per_term_max
    );
    println!("env={:?}", report.env);
    println!(
        "roles={:?} violation_kinds={:?}",
        report.roles, report.violation_kinds
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

fn swarm(seeds: u64, start: u64, variant: &Variant, trace: bool) -> ExitCode {
    let clock = Stopwatch::start();
    let mut sim_s = 0.0;
    let mut retried = 0;
    let mut repairs = 0;
    let mut failing = Vec::new();
    for seed in start..start + seeds {
        let options = match variant.options(seed) {
            Ok(options) => options,
            Err(why) => {
                eprintln!("{why}");
                return ExitCode::FAILURE;
            }
        };
        let one = Stopwatch::start();
        let report = match trace {
            true => run_seed(options),
            false => run_seed_untraced(options),
        };
        sim_s += report.sim_ns as f64 / 1e9;
        retried += report.ops.writes_retried;
        repairs += report.env.control.repairs;
        println!("{}", line(&report, one.seconds()));
        if report.violations > 0 {
            if let Some(first) = report.messages.first() {
                println!("  first violation: {first}");
            }
            failing.push(seed);
        }
    }
    let wall_s = clock.seconds();
    let flags = variant.flags();
    println!("failing seeds: {}", failing.len());
    for seed in &failing {
        println!("  replay: metro-sim run --seed {seed}{flags}");
    }
    let speed = sim_s / wall_s.max(1e-9);
    println!("speed: {speed:.1} simulated s per wall s ({sim_s:.1} sim s in {wall_s:.1} wall s)");
    println!(
        "swarm: seeds={seeds} failing={} retried_writes={retried} repairs={repairs} sim_s={sim_s:.1} wall_s={wall_s:.1} speed={speed:.1}x",
        failing.len()
    );
    if failing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run {
            seed,
            bug,
            topology,
            witness_never_campaigns,
            env,
        } => {
            let variant = Variant {
                bug,
                topology,
                witness_never_campaigns,
                env,
            };
            run(seed, &variant)
        }
        Command::Swarm {
            seeds,
            start,
            bug,
            topology,
            witness_never_campaigns,
            env,
            trace,
        } => {
            let variant = Variant {
                bug,
                topology,
                witness_never_campaigns,
                env,
            };
            swarm(seeds, start, &variant, trace)
        }
        Command::Options {
            seeds,
            start,
            topology,
            env,
        } => {
            let variant = Variant {
                bug: None,
                topology,
                witness_never_campaigns: false,
                env,
            };
            for seed in start..start + seeds {
                match variant.options(seed) {
                    Ok(options) => println!("{options}"),
                    Err(why) => {
                        eprintln!("{why}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
    }
}
