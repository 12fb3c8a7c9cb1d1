//! Model-based property tests: random operations, crashes at random points,
//! checked against a plain in-memory model.
//!
//! After every recovery: every acknowledged batch is present; a batch that
//! was not acknowledged is either wholly present or wholly absent (and only a
//! prefix of the unacknowledged batches, in order, can be present); snapshots
//! read back exactly the model's view; diffs equal the model's diffs.

use std::collections::BTreeMap;
use std::sync::Arc;

use metro_kvstore::{
    ChangeKind, CrashMode, FaultOp, FaultyDisk, Namespace, Options, Snapshot, Store, StoreError,
    WriteBatch, Writer,
};
use parking_lot::Mutex;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

type Contents = BTreeMap<(Namespace, u64), Vec<u8>>;

/// The model: what acknowledged batches say the store holds.
#[derive(Clone, Debug, Default)]
struct Model {
    now: Contents,
    /// Snapshot seq -> the namespace's contents then.
    snapshots: BTreeMap<(Namespace, u64), BTreeMap<u64, Vec<u8>>>,
}

impl Model {
    fn apply(&mut self, batch: &WriteBatch) {
        for op in batch.ops() {
            match op {
                metro_kvstore::Op::Put { ns, key, value } => {
                    self.now.insert((*ns, *key), value.clone());
                }
                metro_kvstore::Op::Delete { ns, key } => {
                    self.now.remove(&(*ns, *key));
                }
                metro_kvstore::Op::DeleteRange { ns, start, end } => {
                    self.now
                        .retain(|(n, k), _| !(n == ns && (start..end).contains(&k)));
                }
                metro_kvstore::Op::DropNamespace { ns } => {
                    self.now.retain(|(n, _), _| n != ns);
                    self.snapshots.retain(|(n, _), _| n != ns);
                }
                // Snapshot bookkeeping is done by the harness, which knows the seq.
                metro_kvstore::Op::CreateSnapshot { .. }
                | metro_kvstore::Op::DropSnapshot { .. } => {}
            }
        }
    }

    fn ns_view(&self, ns: Namespace) -> BTreeMap<u64, Vec<u8>> {
        self.now
            .iter()
            .filter(|((n, _), _)| *n == ns)
            .map(|((_, k), v)| (*k, v.clone()))
            .collect()
    }
}

#[derive(Clone, Debug)]
enum Action {
    /// One batch that writes a key twice and deletes then rewrites another.
    SameKeyTwice {
        ns: u8,
        key: u64,
    },
    Put {
        ns: u8,
        key: u64,
        len: usize,
    },
    Delete {
        ns: u8,
        key: u64,
    },
    DeleteRange {
        ns: u8,
        start: u64,
        len: u64,
    },
    DropNamespace {
        ns: u8,
    },
    Snapshot {
        ns: u8,
    },
    DropSnapshot {
        pick: usize,
    },
    /// Several batches in one group commit.
    Group {
        count: u8,
        ns: u8,
        key: u64,
    },
    /// A group whose fsync fails, then a crash.
    DoomedGroupThenCrash {
        count: u8,
        key: u64,
        tear: bool,
    },
    Crash {
        tear: bool,
    },
    Check,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        30 => (0u8..3, 0u64..48, 0usize..700).prop_map(|(ns, key, len)| Action::Put { ns, key, len }),
        6 => (0u8..3, 0u64..48).prop_map(|(ns, key)| Action::Delete { ns, key }),
        2 => (0u8..3, 0u64..48, 0u64..16).prop_map(|(ns, start, len)| Action::DeleteRange { ns, start, len }),
        1 => (0u8..3).prop_map(|ns| Action::DropNamespace { ns }),
        3 => (0u8..3).prop_map(|ns| Action::Snapshot { ns }),
        2 => any::<usize>().prop_map(|pick| Action::DropSnapshot { pick }),
        4 => (1u8..6, 0u8..3, 0u64..48).prop_map(|(count, ns, key)| Action::Group { count, ns, key }),
        3 => (0u8..3, 0u64..47).prop_map(|(ns, key)| Action::SameKeyTwice { ns, key }),
        3 => (1u8..4, 0u64..48, any::<bool>()).prop_map(|(count, key, tear)| Action::DoomedGroupThenCrash { count, key, tear }),
        3 => any::<bool>().prop_map(|tear| Action::Crash { tear }),
        3 => Just(Action::Check),
    ]
}

fn ns(n: u8) -> Namespace {
    Namespace::new(1, u64::from(n))
}

struct Harness {
    disk: FaultyDisk,
    options: Options,
    store: Store,
    writer: Writer,
    model: Model,
    counter: u64,
    /// Checkpoints and compactions over all store instances so far.
    checkpoints: u64,
    compactions: u64,
}

type Outcome = Arc<Mutex<Vec<Result<u64, String>>>>;

impl Harness {
    fn new(seed: u64) -> Self {
        let disk = FaultyDisk::new(seed);
        let options = Options {
            segment_bytes: 8 << 10,
            space_amp_max: 2.0,
            checkpoint_log_bytes: 48 << 10,
            spare_segments_max: 2,
            compaction_slice_bytes: 2 << 10,
        };
        let (store, writer) = Store::open(Arc::new(disk.clone()), options.clone()).unwrap();
        Harness {
            disk,
            options,
            store,
            writer,
            model: Model::default(),
            counter: 0,
            checkpoints: 0,
            compactions: 0,
        }
    }

    fn value(&mut self, len: usize) -> Vec<u8> {
        self.counter += 1;
        let mut v = vec![(self.counter % 251) as u8; len];
        for (i, b) in self.counter.to_le_bytes().iter().enumerate().take(len) {
            v[i] = *b;
        }
        v
    }

    /// Submits batches as one group and steps the writer once.
    fn commit(&mut self, batches: Vec<WriteBatch>) -> Vec<Result<u64, String>> {
        let outcome: Outcome = Arc::default();
        for b in batches {
            let out = outcome.clone();
            self.store.submit(
                b,
                Box::new(move |r| out.lock().push(r.map_err(|e| e.to_string()))),
            );
        }
        self.writer.step();
        outcome.lock().clone()
    }

    fn write(&mut self, batch: WriteBatch) -> u64 {
        let r = self.commit(vec![batch.clone()]).pop().expect("completed");
        let seq = r.expect("write succeeds");
        self.model.apply(&batch);
        seq
    }

    fn reopen(&mut self) {
        let stats = self.store.stats();
        self.checkpoints += stats.checkpoints;
        self.compactions += stats.compacted_segments;
        let (store, writer) = Store::open(Arc::new(self.disk.clone()), self.options.clone())
            .unwrap_or_else(|e| panic!("recovery failed: {e}"));
        self.store = store;
        self.writer = writer;
    }

    fn crash(&mut self, tear: bool) {
        self.disk.crash(if tear {
            CrashMode::TearTail
        } else {
            CrashMode::DropUnsynced
        });
        self.reopen();
    }

    fn contents(&self) -> Contents {
        let mut all = Contents::new();
        for n in 0..3 {
            for (k, v) in self.store.scan(ns(n), 0..u64::MAX, usize::MAX).unwrap() {
                all.insert((ns(n), k), v);
            }
        }
        all
    }

    fn check(&self) {
        assert_eq!(
            self.contents(),
            self.model.now,
            "contents differ from the model"
        );
        for n in 0..3 {
            for k in 0..48 {
                assert_eq!(
                    self.store.get(ns(n), k).unwrap().as_ref(),
                    self.model.now.get(&(ns(n), k))
                );
            }
            let snaps: Vec<u64> = self.store.snapshots(ns(n)).iter().map(|s| s.seq).collect();
            let model_snaps: Vec<u64> = self
                .model
                .snapshots
                .keys()
                .filter(|(m, _)| *m == ns(n))
                .map(|(_, s)| *s)
                .collect();
            assert_eq!(snaps, model_snaps, "snapshot list of ns {n}");
            for seq in &snaps {
                self.check_snapshot(n, *seq);
            }
        }
        // Live bytes: exactly the newest values when nothing is pinned, at
        // least them otherwise (pinned versions add to it).
        let newest: u64 = self.model.now.values().map(|v| v.len() as u64).sum();
        let live = self.store.stats().live_bytes;
        if self.model.snapshots.is_empty() {
            assert_eq!(live, newest, "live byte accounting");
        } else {
            assert!(
                live >= newest,
                "live bytes {live} below the newest values {newest}"
            );
        }
    }

    fn check_snapshot(&self, n: u8, seq: u64) {
        let snap = Snapshot { ns: ns(n), seq };
        let view = &self.model.snapshots[&(ns(n), seq)];
        let got: BTreeMap<u64, Vec<u8>> = self
            .store
            .scan_at(snap, 0..u64::MAX, usize::MAX)
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(&got, view, "snapshot {seq} of ns {n}");
        let reads_before = self.disk.stats().bytes_read;
        let diff = self.store.diff(snap, None).unwrap();
        assert_eq!(
            self.disk.stats().bytes_read,
            reads_before,
            "diff must read no data"
        );
        let now = self.model.ns_view(ns(n));
        let mut expected = Vec::new();
        for k in view
            .keys()
            .chain(now.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            match (view.get(k), now.get(k)) {
                (Some(_), None) => expected.push((*k, ChangeKind::Deleted)),
                (a, Some(b)) if a != Some(b) => expected.push((*k, ChangeKind::Put)),
                _ => {}
            }
        }
        let got: Vec<(u64, ChangeKind)> = diff.iter().map(|c| (c.key, c.kind)).collect();
        // The store may report keys rewritten with equal bytes; the model
        // only sees content. Every model change must be reported, and every
        // reported Deleted must be real.
        for e in &expected {
            assert!(got.contains(e), "diff misses {e:?}: got {got:?}");
        }
        for (k, kind) in &got {
            if *kind == ChangeKind::Deleted {
                assert!(view.contains_key(k) && !now.contains_key(k));
            }
        }
    }
}

fn run(seed: u64, actions: Vec<Action>) -> Harness {
    let mut h = Harness::new(seed);
    for action in actions {
        step(&mut h, action);
    }
    h.crash(true);
    h.check();
    h
}

fn step(h: &mut Harness, action: Action) {
    match action {
        Action::Put { ns: n, key, len } => {
            let mut b = WriteBatch::new();
            let v = h.value(len);
            b.put(ns(n), key, v);
            h.write(b);
        }
        Action::Delete { ns: n, key } => {
            let mut b = WriteBatch::new();
            b.delete(ns(n), key);
            h.write(b);
        }
        Action::DeleteRange { ns: n, start, len } => {
            let mut b = WriteBatch::new();
            b.delete_range(ns(n), start, start + len);
            h.write(b);
        }
        Action::DropNamespace { ns: n } => {
            let mut b = WriteBatch::new();
            b.drop_namespace(ns(n));
            h.write(b);
        }
        Action::Snapshot { ns: n } => {
            let seq = h.write(WriteBatch::create_snapshot(ns(n)));
            let view = h.model.ns_view(ns(n));
            h.model.snapshots.insert((ns(n), seq), view);
        }
        Action::DropSnapshot { pick } => {
            let keys: Vec<(Namespace, u64)> = h.model.snapshots.keys().copied().collect();
            if keys.is_empty() {
                return;
            }
            let (n, seq) = keys[pick % keys.len()];
            h.write(WriteBatch::drop_snapshot(n, seq));
            h.model.snapshots.remove(&(n, seq));
        }
        Action::Group { count, ns: n, key } => {
            let batches: Vec<WriteBatch> = (0..count)
                .map(|i| {
                    let mut b = WriteBatch::new();
                    let v = h.value(300 + usize::from(i) * 10);
                    b.put(ns(n), key + u64::from(i), v).delete(ns(n), key + 40);
                    b
                })
                .collect();
            let results = h.commit(batches.clone());
            assert_eq!(results.len(), batches.len());
            for (b, r) in batches.iter().zip(results) {
                r.expect("group write succeeds");
                h.model.apply(b);
            }
        }
        Action::SameKeyTwice { ns: n, key } => {
            let (v1, v2, v3) = (h.value(100), h.value(300), h.value(50));
            let mut b = WriteBatch::new();
            b.put(ns(n), key, v1)
                .put(ns(n), key, v2)
                .delete(ns(n), key + 1)
                .put(ns(n), key + 1, v3);
            h.write(b);
        }
        Action::DoomedGroupThenCrash { count, key, tear } => doomed(h, count, key, tear),
        Action::Crash { tear } => {
            h.crash(tear);
            h.check();
        }
        Action::Check => h.check(),
    }
}

/// A group whose fsync fails is not acknowledged; after the crash a prefix of
/// it (possibly empty, possibly all) may survive, each batch whole.
fn doomed(h: &mut Harness, count: u8, key: u64, tear: bool) {
    let batches: Vec<WriteBatch> = (0..count)
        .map(|i| {
            let mut b = WriteBatch::new();
            let v1 = h.value(200);
            let v2 = h.value(900);
            b.put(ns(0), key + u64::from(i), v1).put(ns(1), key, v2);
            b
        })
        .collect();
    h.disk.fail_next(FaultOp::Sync, 1);
    let results = h.commit(batches.clone());
    assert!(results.iter().all(|r| r.is_err()), "nothing acknowledged");
    // The poisoned store refuses further writes.
    let mut probe = WriteBatch::new();
    probe.put(ns(2), 0, vec![1]);
    assert!(h.commit(vec![probe]).iter().all(|r| r.is_err()));
    h.disk.crash(if tear {
        CrashMode::TearTail
    } else {
        CrashMode::DropUnsynced
    });
    h.reopen();
    let got = h.contents();
    let mut candidate = h.model.clone();
    let mut matched = got == candidate.now;
    for b in &batches {
        if matched {
            break;
        }
        candidate.apply(b);
        matched = got == candidate.now;
    }
    assert!(
        matched,
        "recovered state is not the model plus a prefix of the unacknowledged batches"
    );
    h.model.now = got;
}

proptest! {
    // Failing cases are kept in `model.proptest-regressions` beside this file
    // and re-run first.
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        .. ProptestConfig::default()
    })]

    #[test]
    fn random_operations_with_crashes_match_the_model(
        seed in any::<u64>(),
        actions in proptest::collection::vec(action(), 1..300),
    ) {
        run(seed, actions);
    }
}

#[test]
fn long_histories_exercise_compaction_checkpoints_and_recovery() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    for seed in 0..4u64 {
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[seed as u8; 32]);
        let mut runner = TestRunner::new_with_rng(Config::default(), rng);
        let actions = proptest::collection::vec(action(), 3000)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let h = run(seed, actions);
        assert!(
            h.checkpoints > 5,
            "seed {seed}: {} checkpoints",
            h.checkpoints
        );
        assert!(
            h.compactions > 5,
            "seed {seed}: {} compactions",
            h.compactions
        );
    }
}

#[test]
fn poisoned_store_error_names_the_cause() {
    let mut h = Harness::new(1);
    h.disk.fail_next(FaultOp::Sync, 1);
    let mut b = WriteBatch::new();
    b.put(ns(0), 1, vec![1; 10]);
    let r = h.commit(vec![b]);
    assert!(r[0].as_ref().unwrap_err().contains("fdatasync"), "{r:?}");
    let err = h.store.create_snapshot(ns(0));
    assert!(matches!(err, Err(StoreError::Poisoned(_))), "{err:?}");
}
