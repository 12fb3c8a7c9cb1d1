//! `metro-bench`: side-by-side benchmarks that print one JSON line and a
//! human table per run. Compare within one run (ratios): machines are noisy.
use clap::{Parser, Subcommand};

mod kvstore_bench;
mod replicate_bench;
mod report;

/// The allocator the `metro` binary uses (see its `main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "metro-bench", about = "metro's side-by-side benchmarks")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Raw pwrite+fdatasync vs kvstore durable 4 KiB writes at 1, 8, 32 submitters.
    Kvstore(kvstore_bench::Args),
    /// Replicated 4 KiB writes over real QUIC: 1 and 3 replicas, 0 and 2 ms delay, depth 1 and 32.
    Replicate(replicate_bench::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().bench {
        Bench::Kvstore(args) => kvstore_bench::run(&args),
        Bench::Replicate(args) => replicate_bench::run(&args),
    }
}
