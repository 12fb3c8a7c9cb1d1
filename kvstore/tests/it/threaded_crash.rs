//! The threaded writer (as production runs it) under concurrent load, with a
//! crash at a random moment while segments roll, compaction runs and
//! checkpoints are written. After recovery every key holds its last
//! acknowledged value, or the value of the one write to it that was still
//! in flight when the crash came.
//!
//! Every wait has a deadline ([`WAIT_MAX`]): a writer or submitter that
//! hangs fails the test with what it was waiting for, instead of hanging it.

#![allow(clippy::disallowed_methods)] // tests drive the writer threads and read the clock like the node does

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use metro_kvstore::{CrashMode, FaultyDisk, Namespace, Options, SplitMix64, Store, WriteBatch};
use parking_lot::Mutex;

const NS: Namespace = Namespace::new(4, 1);
const THREADS: u64 = 6;
const KEYS_PER_THREAD: u64 = 24;
/// The longest one run may wait for load to build up or threads to stop.
const WAIT_MAX: Duration = Duration::from_secs(60);

/// Spins (yielding) until `done`, failing the test once `deadline` passes.
fn wait_until(seed: u64, what: &str, deadline: Instant, mut done: impl FnMut() -> bool) {
    while !done() {
        assert!(
            Instant::now() < deadline,
            "seed {seed}: {what} did not happen within {WAIT_MAX:?}"
        );
        std::thread::yield_now();
    }
}

/// Joins `thread` by `deadline`, failing the test if it is still running.
fn join_by(seed: u64, what: &str, deadline: Instant, thread: JoinHandle<()>) {
    wait_until(seed, what, deadline, || thread.is_finished());
    if thread.join().is_err() {
        panic!("seed {seed}: {what}: the thread panicked");
    }
}

/// Per key: the last acknowledged value and a write that never completed.
#[derive(Default)]
struct KeyLog {
    acked: Option<Vec<u8>>,
    in_flight: Option<Vec<u8>>,
}

fn value(thread: u64, counter: u64) -> Vec<u8> {
    let mut v = vec![(counter % 251) as u8; 700 + (counter % 5) as usize * 100];
    v[..8].copy_from_slice(&thread.to_le_bytes());
    v[8..16].copy_from_slice(&counter.to_le_bytes());
    v
}

fn run_once(seed: u64) {
    let disk = FaultyDisk::new(seed);
    let options = Options {
        segment_bytes: 16 << 10,
        space_amp_max: 2.0,
        checkpoint_log_bytes: 64 << 10,
        spare_segments_max: 2,
        compaction_slice_bytes: 4 << 10,
    };
    let (store, writer) = Store::open(Arc::new(disk.clone()), options.clone()).unwrap();
    let writer_thread = std::thread::spawn(move || writer.run());
    let logs: Arc<Mutex<BTreeMap<u64, KeyLog>>> = Arc::default();
    let acked = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, logs, acked) = (store.clone(), logs.clone(), acked.clone());
            std::thread::spawn(move || {
                let mut rng = SplitMix64::new(seed * 100 + t);
                for counter in 0.. {
                    let key = t * 1000 + rng.below(KEYS_PER_THREAD);
                    let v = value(t, counter);
                    let mut b = WriteBatch::new();
                    b.put(NS, key, v.clone());
                    logs.lock().entry(key).or_default().in_flight = Some(v.clone());
                    if store.write(b).is_err() {
                        return;
                    }
                    let mut logs = logs.lock();
                    let log = logs.get_mut(&key).expect("logged");
                    log.acked = Some(v);
                    log.in_flight = None;
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let crash_after = 300 + SplitMix64::new(seed).below(1500);
    let deadline = Instant::now() + WAIT_MAX;
    wait_until(
        seed,
        &format!("{crash_after} acknowledged writes"),
        deadline,
        || acked.load(Ordering::Relaxed) >= crash_after,
    );
    disk.crash(CrashMode::TearTail);
    let deadline = Instant::now() + WAIT_MAX;
    for (t, thread) in threads.into_iter().enumerate() {
        let what = format!("submitter {t} stopping after the crash");
        join_by(seed, &what, deadline, thread);
    }
    let stats = store.stats();
    drop(store);
    join_by(seed, "the writer stopping", deadline, writer_thread);
    assert!(
        stats.compacted_segments > 0 && stats.checkpoints > 0,
        "{stats:?}"
    );
    let (store, _writer) = Store::open(Arc::new(disk.clone()), options).unwrap();
    for (key, log) in logs.lock().iter() {
        let got = store.get(NS, *key).unwrap();
        let ok = got == log.acked || (got.is_some() && got == log.in_flight);
        assert!(ok, "seed {seed}: key {key} lost its acknowledged value");
    }
}

#[test]
fn threaded_writer_survives_crashes_under_load() {
    for seed in 1..=16 {
        run_once(seed);
    }
}
