//! `metro-bench kvstore`: durable 4 KiB writes, raw vs kvstore, one run.
//!
//! Baseline: `pwrite` of 4 KiB at a random aligned offset of a preallocated
//! file, then `fdatasync`, one at a time (run before and after the kvstore
//! runs; the ratios use the baseline's better figure, so they are
//! conservative). kvstore: a store on the same file system, prefilled with
//! the working set and overwritten at random until compaction is in steady
//! state, then measured with 1, 8 and 32 concurrent submitters each calling
//! `Store::write` (returns once durable). Write amplification is bytes the
//! store wrote (log, compaction, checkpoints) per logical byte, over the
//! measured phases.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use metro_kvstore::{FileDisk, Namespace, Options, SplitMix64, Store, WriteBatch};
use serde_json::json;

use crate::report::{self, Row, Target, histogram};

const BLOCK: usize = 4096;
const NS: Namespace = Namespace::new(3, 1);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory on the file system to measure (created, then removed).
    #[arg(long, default_value = "/var/tmp/metro-bench-kvstore")]
    dir: PathBuf,
    /// Seconds per measured configuration.
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Working set (distinct 4 KiB blocks overwritten at random), in MiB.
    #[arg(long, default_value_t = 64)]
    working_set_mib: u64,
    /// Submitter counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    submitters: Vec<usize>,
    /// kvstore segment size in MiB.
    #[arg(long, default_value_t = 16)]
    segment_mib: u32,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.seconds > 0.0, "--seconds must be positive");
    anyhow::ensure!(
        args.working_set_mib > 0,
        "--working-set-mib must be positive"
    );
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let blocks = args.working_set_mib * (1 << 20) / BLOCK as u64;
    let secs = Duration::from_secs_f64(args.seconds);
    eprintln!("raw pwrite+fdatasync baseline ({:.1}s)...", args.seconds);
    let raw_before = raw_fdatasync(&args.dir.join("raw.img"), blocks, secs, "raw_before")?;
    let mut rows = vec![raw_before.clone()];
    let kv_rows = kvstore_runs(args, blocks, secs)?;
    eprintln!(
        "raw pwrite+fdatasync baseline again ({:.1}s)...",
        args.seconds
    );
    let raw_after = raw_fdatasync(&args.dir.join("raw.img"), blocks, secs, "raw_after")?;
    rows.extend(kv_rows.rows.iter().cloned());
    rows.push(raw_after.clone());
    let raw_iops = raw_before.iops().max(raw_after.iops());
    let raw_p50 = raw_before.p50_us.min(raw_after.p50_us).max(1);
    let targets = targets(&kv_rows, raw_iops, raw_p50);
    let config = json!({
        "dir": args.dir.display().to_string(), "seconds": args.seconds,
        "working_set_mib": args.working_set_mib, "segment_mib": args.segment_mib,
        "block_bytes": BLOCK,
    });
    report::print("kvstore", config, &rows, &targets);
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(())
}

fn targets(kv: &KvRuns, raw_iops: f64, raw_p50: u64) -> Vec<Target> {
    let mut targets = Vec::new();
    if let Some(r) = kv.rows.iter().find(|r| r.name == "kvstore_32") {
        let ratio = r.iops() / raw_iops;
        targets.push(Target {
            name: "kvstore 32 submitters IOPS / raw IOPS".into(),
            measured: ratio,
            limit: ">= 10".into(),
            met: ratio >= 10.0,
        });
    }
    if let Some(r) = kv.rows.iter().find(|r| r.name == "kvstore_1") {
        let ratio = r.p50_us as f64 / raw_p50 as f64;
        targets.push(Target {
            name: "kvstore 1 submitter p50 / raw p50".into(),
            measured: ratio,
            limit: "<= 1.3".into(),
            met: ratio <= 1.3,
        });
    }
    targets.push(Target {
        name: "write amplification, random 4 KiB overwrites".into(),
        measured: kv.write_amplification,
        limit: "< 1.5".into(),
        met: kv.write_amplification < 1.5,
    });
    targets
}

fn raw_fdatasync(path: &Path, blocks: u64, secs: Duration, name: &str) -> anyhow::Result<Row> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let want = blocks * BLOCK as u64;
    if file.metadata()?.len() < want {
        let zeros = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < want {
            file.write_all_at(&zeros, at)?;
            at += zeros.len() as u64;
        }
        file.sync_all()?;
    }
    let mut rng = SplitMix64::new(42);
    let mut buf = vec![0xa5u8; BLOCK];
    let mut hist = histogram();
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < secs {
        buf[..8].copy_from_slice(&ops.to_le_bytes());
        let offset = rng.below(blocks) * BLOCK as u64;
        let t = Instant::now();
        file.write_all_at(&buf, offset)?;
        file.sync_data()?;
        hist.record(t.elapsed().as_micros().max(1) as u64)?;
        ops += 1;
    }
    Ok(Row::new(name, ops, start.elapsed().as_secs_f64(), &hist))
}

struct KvRuns {
    rows: Vec<Row>,
    write_amplification: f64,
}

fn kvstore_runs(args: &Args, blocks: u64, secs: Duration) -> anyhow::Result<KvRuns> {
    let disk = Arc::new(FileDisk::open_dir(args.dir.join("kv"))?);
    let options = Options {
        segment_bytes: args.segment_mib << 20,
        ..Options::default()
    };
    let (store, writer) = Store::open(disk, options)?;
    let writer_thread = std::thread::Builder::new()
        .name("kv-writer".into())
        .spawn(move || writer.run())?;
    eprintln!("kvstore prefill and warm-up ({} blocks)...", blocks);
    prefill(&store, blocks)?;
    // Overwrite the working set twice so compaction reaches steady state.
    load(&store, 32, blocks, Load::Ops(blocks * 2))?;
    let mut rows = Vec::new();
    let start_stats = store.stats();
    for &n in &args.submitters {
        for mode in [Mode::Tasks, Mode::Threads] {
            let name = match mode {
                Mode::Tasks => format!("kvstore_{n}"),
                Mode::Threads => format!("kvstore_{n}_threads"),
            };
            eprintln!("{name} ({:.1}s)...", args.seconds);
            let before = store.stats();
            let (ops, elapsed, hist) = match mode {
                Mode::Tasks => load_tasks(&store, n, blocks, secs)?,
                Mode::Threads => load(&store, n, blocks, Load::Time(secs))?,
            };
            let after = store.stats();
            let mut row = Row::new(&name, ops, elapsed, &hist);
            let wa = (after.bytes_written - before.bytes_written) as f64
                / (after.logical_bytes - before.logical_bytes).max(1) as f64;
            row.extra.push(("write_amp".into(), wa));
            row.extra
                .push(("space_amp".into(), after.space_amplification()));
            row.extra.push((
                "batches_per_fsync".into(),
                (after.batches - before.batches) as f64
                    / (after.log_syncs - before.log_syncs).max(1) as f64,
            ));
            rows.push(row);
        }
    }
    let end = store.stats();
    let write_amplification = (end.bytes_written - start_stats.bytes_written) as f64
        / (end.logical_bytes - start_stats.logical_bytes).max(1) as f64;
    drop(store);
    writer_thread
        .join()
        .map_err(|_| anyhow::anyhow!("writer thread panicked"))?;
    Ok(KvRuns {
        rows,
        write_amplification,
    })
}

fn prefill(store: &Store, blocks: u64) -> anyhow::Result<()> {
    let value = vec![0x5au8; BLOCK];
    for chunk in (0..blocks).collect::<Vec<_>>().chunks(64) {
        let mut batch = WriteBatch::new();
        for &key in chunk {
            batch.put(NS, key, value.clone());
        }
        store.write(batch)?;
    }
    Ok(())
}

/// How submitters wait for durability.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Logical submitters each keeping one write in flight through
    /// `Store::submit` and its completion, as fabric's Raft log storage does.
    Tasks,
    /// One OS thread per submitter blocking in `Store::write`.
    Threads,
}

/// `submitters` logical submitters, each with one 4 KiB write in flight,
/// driven from one thread by completions; latency is submit to completion
/// seen by the driver.
fn load_tasks(
    store: &Store,
    submitters: usize,
    blocks: u64,
    secs: Duration,
) -> anyhow::Result<(u64, f64, Histogram<u64>)> {
    type Done = (Instant, Result<u64, metro_kvstore::StoreError>);
    let (tx, rx) = crossbeam_channel::bounded::<Done>(submitters);
    let mut rng = SplitMix64::new(7);
    let mut value = vec![0x3cu8; BLOCK];
    let mut ops = 0u64;
    let mut submit = |ops: u64| {
        value[..8].copy_from_slice(&ops.to_le_bytes());
        let mut batch = WriteBatch::new();
        batch.put(NS, rng.below(blocks), value.clone());
        let tx = tx.clone();
        let t0 = Instant::now();
        store.submit(
            batch,
            Box::new(move |r| {
                let _ = tx.send((t0, r));
            }),
        );
    };
    let start = Instant::now();
    for i in 0..submitters {
        submit(i as u64);
    }
    let mut outstanding = submitters;
    let mut hist = histogram();
    while outstanding > 0 {
        let (t0, result) = rx.recv()?;
        result?;
        hist.record(t0.elapsed().as_micros().max(1) as u64)?;
        ops += 1;
        outstanding -= 1;
        if start.elapsed() < secs {
            submit(ops + submitters as u64);
            outstanding += 1;
        }
    }
    Ok((ops, start.elapsed().as_secs_f64(), hist))
}

#[derive(Clone, Copy)]
enum Load {
    Time(Duration),
    Ops(u64),
}

/// `submitters` threads each writing random 4 KiB blocks until `load` is done.
fn load(
    store: &Store,
    submitters: usize,
    blocks: u64,
    load: Load,
) -> anyhow::Result<(u64, f64, Histogram<u64>)> {
    let start = Instant::now();
    let threads: Vec<_> = (0..submitters)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || -> anyhow::Result<(u64, Histogram<u64>)> {
                let mut rng = SplitMix64::new(1000 + t as u64);
                let mut hist = histogram();
                let mut value = vec![t as u8; BLOCK];
                let mut ops = 0u64;
                loop {
                    let done = match load {
                        Load::Time(d) => start.elapsed() >= d,
                        Load::Ops(n) => ops * submitters as u64 >= n,
                    };
                    if done {
                        break;
                    }
                    value[..8].copy_from_slice(&ops.to_le_bytes());
                    let mut batch = WriteBatch::new();
                    batch.put(NS, rng.below(blocks), value.clone());
                    let t0 = Instant::now();
                    store.write(batch)?;
                    hist.record(t0.elapsed().as_micros().max(1) as u64)?;
                    ops += 1;
                }
                Ok((ops, hist))
            })
        })
        .collect();
    let (total, merged) = report::join_runs(threads)?;
    Ok((total, start.elapsed().as_secs_f64(), merged))
}
