//! Recovery, corruption, space bound and concurrency tests.

use std::sync::Arc;

use metro_kvstore::limits::{
    COMPACTION_PACE_MIN, COMPACTION_SLICE_BYTES_DEFAULT, GROUP_SUBMISSIONS_MAX, SLACK_SEGMENTS,
    VICTIM_LIVE_RATIO_MAX, VICTIMS_PER_CHECKPOINT_MAX,
};
use metro_kvstore::{
    CrashMode, Disk, FaultOp, FaultyDisk, FileDisk, Namespace, Options, Store, StoreError,
    WriteBatch, Writer,
};

const NS: Namespace = Namespace::new(2, 7);

fn small_options() -> Options {
    Options {
        segment_bytes: 16 << 10,
        space_amp_max: 2.0,
        checkpoint_log_bytes: 64 << 10,
        spare_segments_max: 2,
        compaction_slice_bytes: 4 << 10,
    }
}

/// Writes one batch with the writer stepped on this thread.
fn put(store: &Store, writer: &mut Writer, key: u64, value: Vec<u8>) -> u64 {
    let mut b = WriteBatch::new();
    b.put(NS, key, value);
    let (tx, rx) = crossbeam_channel::bounded(1);
    store.submit(
        b,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    writer.step();
    rx.recv().unwrap().unwrap()
}

/// The name of the first log segment on `disk`.
fn first_log(disk: &FaultyDisk) -> String {
    disk.list()
        .unwrap()
        .into_iter()
        .find(|n| n.starts_with("log-"))
        .expect("a log segment exists")
}

fn open(disk: &FaultyDisk, options: &Options) -> Result<(Store, Writer), StoreError> {
    Store::open(Arc::new(disk.clone()), options.clone())
}

#[test]
fn damage_before_the_tail_is_refused_with_file_and_offset() {
    let disk = FaultyDisk::new(11);
    let (store, mut writer) = open(&disk, &Options::default()).unwrap();
    for key in 0..10 {
        put(&store, &mut writer, key, vec![key as u8; 100]);
    }
    drop((store, writer));
    let log = first_log(&disk);
    // Inside the third record's value: acknowledged data, followed by more.
    assert!(disk.corrupt(&log, 32 + 2 * 150 + 60));
    disk.crash(CrashMode::DropUnsynced);
    let err = open(&disk, &Options::default()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{text}");
    assert!(text.contains(&log) && text.contains("offset"), "{text}");
}

#[test]
fn damage_to_the_last_record_is_a_torn_tail() {
    let disk = FaultyDisk::new(12);
    let (store, mut writer) = open(&disk, &Options::default()).unwrap();
    for key in 0..5 {
        put(&store, &mut writer, key, vec![7; 100]);
    }
    drop((store, writer));
    let log = first_log(&disk);
    let len = disk.file_len(&log).unwrap();
    assert!(disk.corrupt(&log, len - 3));
    disk.crash(CrashMode::DropUnsynced);
    let (store, _writer) = open(&disk, &Options::default()).unwrap();
    let keys: Vec<u64> = store
        .scan(NS, 0..10, 10)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, vec![0, 1, 2, 3]);
}

#[test]
fn latent_value_corruption_is_reported_on_read() {
    let disk = FaultyDisk::new(13);
    let (store, mut writer) = open(&disk, &Options::default()).unwrap();
    put(&store, &mut writer, 1, vec![1; 4096]);
    let log = first_log(&disk);
    assert!(disk.corrupt(&log, 32 + 16 + 26 + 100));
    let err = store.get(NS, 1).unwrap_err();
    assert!(err.to_string().contains("CRC"), "{err}");
    disk.fail_next(FaultOp::Read, 1);
    assert!(matches!(store.get(NS, 1), Err(StoreError::Disk(_))));
}

/// A value that names its key and version, so a read can be checked.
fn versioned(key: u64, version: u64, len: usize) -> Vec<u8> {
    let mut v = vec![(key ^ version) as u8; len];
    v[..8].copy_from_slice(&key.to_le_bytes());
    v[8..16].copy_from_slice(&version.to_le_bytes());
    v
}

/// Random overwrites of `keys` keys with [`versioned`] values, submitted
/// in floods without stepping the writer: per key, the newest version
/// submitted and the newest acknowledged.
struct Floods {
    rng: metro_kvstore::SplitMix64,
    len: usize,
    version: u64,
    submitted: Vec<Option<u64>>,
    acked: Vec<Option<u64>>,
    tx: crossbeam_channel::Sender<(u64, u64, Result<u64, StoreError>)>,
    rx: crossbeam_channel::Receiver<(u64, u64, Result<u64, StoreError>)>,
}

impl Floods {
    fn new(seed: u64, keys: u64, len: usize) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Floods {
            rng: metro_kvstore::SplitMix64::new(seed),
            len,
            version: 0,
            submitted: vec![None; keys as usize],
            acked: vec![None; keys as usize],
            tx,
            rx,
        }
    }

    /// Submits `n` writes (the writer is not stepped).
    fn submit(&mut self, store: &Store, n: usize) {
        for _ in 0..n {
            self.version += 1;
            let (key, version) = (self.rng.below(self.submitted.len() as u64), self.version);
            let mut b = WriteBatch::new();
            b.put(NS, key, versioned(key, version, self.len));
            self.submitted[key as usize] = Some(version);
            let tx = self.tx.clone();
            store.submit(b, Box::new(move |r| tx.send((key, version, r)).unwrap()));
        }
    }

    /// Records the acknowledgements so far; every one must be a success.
    fn collect_acks(&mut self) {
        for (key, version, r) in self.rx.try_iter() {
            r.unwrap();
            self.acked[key as usize] = Some(version);
        }
    }
}

/// Compaction of a victim several slices long: while submissions wait, a
/// round scans about its budget and hands the writer back (the victim's
/// scan resumes later) instead of the whole victim; records cut by a
/// slice's end are relocated whole; every value reads back, also after
/// reopening.
#[test]
fn compaction_works_a_slice_at_a_time_while_writes_wait() {
    let disk = FaultyDisk::new(21);
    let options = Options {
        segment_bytes: 4 << 20,
        checkpoint_log_bytes: 16 << 20,
        compaction_slice_bytes: COMPACTION_SLICE_BYTES_DEFAULT,
        ..small_options()
    };
    let (store, mut writer) = open(&disk, &options).unwrap();
    let (keys, len) = (2048u64, 500usize);
    let mut writes = Floods::new(9, keys, len);
    // Floods larger than one group, so submissions wait behind each round
    // of upkeep.
    let flood = GROUP_SUBMISSIONS_MAX + 64;
    let group_bytes = (GROUP_SUBMISSIONS_MAX * (len + 64)) as u64;
    let slice = u64::from(options.compaction_slice_bytes);
    let pace = COMPACTION_PACE_MIN / (1.0 - VICTIM_LIVE_RATIO_MAX);
    let budget = slice.max((group_bytes as f64 * pace).ceil() as u64);
    let bound = budget + slice;
    assert!(
        bound < u64::from(options.segment_bytes),
        "the test needs victims longer than a round"
    );
    let (mut yielded, mut rounds) = (0, 0);
    while rounds < 30 {
        writes.submit(&store, flood);
        let before = store.stats();
        assert_eq!(writer.step(), GROUP_SUBMISSIONS_MAX);
        let after = store.stats();
        let scanned = after.compaction_scanned_bytes - before.compaction_scanned_bytes;
        // One slice past the budget at most (a slice holds a whole record).
        assert!(
            scanned <= bound,
            "a round with writes waiting scanned {scanned} bytes (budget {budget})"
        );
        if scanned > 0 {
            rounds += 1;
            yielded += usize::from(after.compacted_segments == before.compacted_segments);
        }
        while writer.step() > 0 {}
        writes.collect_acks();
        assert_eq!(writes.acked, writes.submitted, "every write acknowledged");
        assert!(
            writes.version < 2_000_000,
            "compaction never ran: {after:?}"
        );
    }
    let stats = store.stats();
    assert!(
        yielded > 0,
        "no round stopped part-way through a victim: {stats:?}"
    );
    assert!(stats.compacted_segments > 2, "{stats:?}");
    let check = |store: &Store| {
        for (key, v) in writes.acked.iter().enumerate() {
            let key = key as u64;
            let got = store.get(NS, key).unwrap();
            assert_eq!(got, v.map(|v| versioned(key, v, len)), "key {key}");
        }
    };
    check(&store);
    // Stop mid-victim: floods until a round ends part-way through a
    // victim, then a crash that drops whatever was not synced. No
    // acknowledged value may be lost or changed by the relocations so far.
    let mut mid_victim = false;
    for _ in 0..100 {
        writes.submit(&store, flood);
        let before = store.stats();
        writer.step();
        let after = store.stats();
        writes.collect_acks();
        if after.compaction_scanned_bytes > before.compaction_scanned_bytes
            && after.compacted_segments == before.compacted_segments
        {
            mid_victim = true;
            break;
        }
        while writer.step() > 0 {}
        writes.collect_acks();
    }
    assert!(mid_victim, "no round stopped part-way through a victim");
    drop((store, writer));
    disk.crash(CrashMode::DropUnsynced);
    let (store, _writer) = open(&disk, &options).unwrap();
    for (key, acked) in writes.acked.iter().enumerate() {
        let key = key as u64;
        let got = store
            .get(NS, key)
            .unwrap()
            .expect("every key was acknowledged");
        let v = u64::from_le_bytes(got[8..16].try_into().unwrap());
        assert_eq!(got, versioned(key, v, len), "key {key}: damaged value");
        assert!(
            Some(v) >= *acked && Some(v) <= writes.submitted[key as usize],
            "key {key}: version {v}, acknowledged {acked:?}"
        );
    }
}

#[test]
fn space_amplification_stays_bounded() {
    let disk = FaultyDisk::new(14);
    let options = small_options();
    let (store, mut writer) = open(&disk, &options).unwrap();
    let mut rng = metro_kvstore::SplitMix64::new(5);
    let keys = 64;
    let value = 1000;
    let segment = u64::from(options.segment_bytes);
    for i in 0..6000u64 {
        let key = rng.below(keys);
        put(&store, &mut writer, key, vec![i as u8; value]);
        let stats = store.stats();
        let amp = options.space_amp_max.max(1.0 / VICTIM_LIVE_RATIO_MAX);
        // Active log, compaction output, slack, victims awaiting a
        // checkpoint, spares, and the checkpoint file itself.
        let slack = (2
            + SLACK_SEGMENTS
            + VICTIMS_PER_CHECKPOINT_MAX as u64
            + options.spare_segments_max as u64)
            * segment
            + 64 * 40;
        let bound = (amp * stats.live_bytes as f64) as u64 + slack;
        assert!(
            stats.disk_bytes <= bound,
            "write {i}: disk {} > bound {bound} (live {})",
            stats.disk_bytes,
            stats.live_bytes
        );
        assert_eq!(
            disk.total_bytes(),
            stats.disk_bytes,
            "accounting matches the disk"
        );
    }
    let stats = store.stats();
    assert!(stats.compacted_segments > 10, "{stats:?}");
    assert!(stats.checkpoints > 10, "{stats:?}");
    assert!(stats.write_amplification() < 3.0, "{stats:?}");
    // Everything is still there after a crash.
    drop((store, writer));
    disk.crash(CrashMode::TearTail);
    let (store, _w) = open(&disk, &options).unwrap();
    assert_eq!(store.scan(NS, 0..keys, 1000).unwrap().len(), keys as usize);
}

#[test]
fn checkpoint_bounds_what_recovery_reads() {
    let disk = FaultyDisk::new(15);
    let options = small_options();
    let (store, mut writer) = open(&disk, &options).unwrap();
    for i in 0..2000u64 {
        put(&store, &mut writer, i % 50, vec![3; 900]);
    }
    drop((store, writer));
    disk.crash(CrashMode::DropUnsynced);
    let before = disk.stats().bytes_read;
    let on_disk = disk.total_bytes();
    let (store, _w) = open(&disk, &options).unwrap();
    let read = disk.stats().bytes_read - before;
    assert!(
        read < on_disk / 2 && read < 3 * options.checkpoint_log_bytes,
        "recovery read {read} of {on_disk} bytes"
    );
    assert_eq!(store.scan(NS, 0..50, 100).unwrap().len(), 50);
}

#[test]
fn dropping_a_namespace_frees_its_space() {
    let disk = FaultyDisk::new(16);
    let options = small_options();
    let (store, mut writer) = open(&disk, &options).unwrap();
    for i in 0..400u64 {
        put(&store, &mut writer, i, vec![9; 1000]);
    }
    let full = store.stats().disk_bytes;
    let mut b = WriteBatch::new();
    b.drop_namespace(NS);
    let (tx, rx) = crossbeam_channel::bounded(1);
    store.submit(b, Box::new(move |r| drop(tx.send(r))));
    writer.step();
    rx.recv().unwrap().unwrap();
    // A little more traffic elsewhere lets compaction and a checkpoint run.
    for i in 0..40u64 {
        let mut b = WriteBatch::new();
        b.put(Namespace::new(2, 8), i % 4, vec![1; 1000]);
        let (tx, rx) = crossbeam_channel::bounded(1);
        store.submit(b, Box::new(move |r| drop(tx.send(r))));
        writer.step();
        rx.recv().unwrap().unwrap();
    }
    let after = store.stats();
    assert_eq!(store.scan(NS, 0..1000, 1000).unwrap().len(), 0);
    assert!(
        after.disk_bytes < full / 3,
        "{} of {full}",
        after.disk_bytes
    );
}

#[test]
fn concurrent_submitters_on_real_files_survive_reopen() {
    let dir = std::env::temp_dir().join(format!("metro-kv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let disk: Arc<dyn Disk> = Arc::new(FileDisk::open_dir(&dir).unwrap());
    let (store, writer) = Store::open(disk.clone(), small_options()).unwrap();
    #[allow(clippy::disallowed_methods)] // tests drive the writer like the node does
    let writer_thread = std::thread::spawn(move || writer.run());
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let store = store.clone();
            #[allow(clippy::disallowed_methods)]
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    let mut b = WriteBatch::new();
                    b.put(NS, t * 1000 + i, (t * 1000 + i).to_le_bytes().repeat(64));
                    store.write(b).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = store.stats();
    assert!(
        stats.log_syncs < stats.batches,
        "group commit batched: {stats:?}"
    );
    drop(store);
    writer_thread.join().unwrap();
    let (store, writer) = Store::open(disk, small_options()).unwrap();
    drop(writer);
    for t in 0..8u64 {
        for i in 0..200u64 {
            let key = t * 1000 + i;
            assert_eq!(
                store.get(NS, key).unwrap().unwrap(),
                key.to_le_bytes().repeat(64)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Regression: an unacknowledged group that spans a segment roll, then a
/// crash that keeps the new segment's unsynced tail but not the old one's,
/// once left a sequence gap that made the store refuse to open.
#[test]
fn unacknowledged_group_across_a_segment_roll_never_blocks_recovery() {
    let options = Options {
        segment_bytes: 8 << 10,
        ..small_options()
    };
    for seed in 0..64 {
        let disk = FaultyDisk::new(seed);
        let (store, mut writer) = open(&disk, &options).unwrap();
        // Fill the first segment so that the doomed group's first batches
        // still fit in it and a later one rolls to the next segment.
        for key in 0..6 {
            put(&store, &mut writer, key, vec![1; 1000]);
        }
        disk.fail_next(metro_kvstore::FaultOp::Sync, 1);
        for key in 10..14 {
            let mut b = WriteBatch::new();
            b.put(NS, key, vec![2; 900]);
            store.submit(b, Box::new(|r| assert!(r.is_err(), "nothing acknowledged")));
        }
        writer.step();
        drop((store, writer));
        disk.crash(CrashMode::TearTail);
        let (store, _w) =
            open(&disk, &options).unwrap_or_else(|e| panic!("seed {seed}: recovery refused: {e}"));
        assert_eq!(store.scan(NS, 0..6, 10).unwrap().len(), 6, "seed {seed}");
    }
}
