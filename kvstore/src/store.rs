//! [`Store`]: the handle callers use — submit batches, read, snapshot, diff.
//!
//! Contract:
//! - A batch is acknowledged (its completion called with `Ok(seq)`, or
//!   [`Store::write`] returning) only after the fdatasync that made it durable
//!   returned. After any crash every acknowledged batch is present, whole.
//! - Reads see exactly the acknowledged batches: a batch becomes visible
//!   after it is durable, all of it at once.
//! - A [`Snapshot`] pins a namespace as of one batch; it survives restarts
//!   until dropped. [`Store::diff`] lists the keys whose value differs between
//!   two snapshots using the index alone, reading no value.
//!
//! Submitting: [`Store::submit_async`] never blocks (behind a full queue
//! the batch waits in line and the returned [`Queued`] resolves when the
//! writer takes it); [`Store::submit`] and [`Store::write`] block the
//! calling thread. Both keep call order (see `gate.rs`).
//!
//! Writing happens on one [`Writer`] that the caller drives (a thread in
//! production: `std::thread::spawn(move || writer.run())`; stepped by hand
//! under the simulator), so kvstore itself never spawns.

use std::ops::Range;
use std::sync::Arc;

use crossbeam_channel::{Sender, bounded};
use parking_lot::{Condvar, Mutex};

use crate::batch::{Namespace, WriteBatch};
use crate::disk::Disk;
use crate::error::StoreError;
use crate::gate::{Entered, Queued};
use crate::index::ChangeKind;
use crate::limits::{SUBMIT_OVERFLOW_MAX, SUBMIT_QUEUE_MAX};
use crate::shared::{Shared, StoreStats};
use crate::writer::{Options, Submission, Writer};

/// Called once with the batch's sequence number when it is durable, or with
/// the error that kept it from becoming durable.
pub type Completion = Box<dyn FnOnce(Result<u64, StoreError>) + Send>;

/// Where a blocking [`Store::write`] waits for its completion.
type WriteSlot = (Mutex<Option<Result<u64, StoreError>>>, Condvar);

/// A pinned point-in-time view of one namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Snapshot {
    pub ns: Namespace,
    pub seq: u64,
}

/// One key that differs between two snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub key: u64,
    pub kind: ChangeKind,
}

/// A cheap, cloneable handle to an open store.
#[derive(Debug, Clone)]
pub struct Store {
    shared: Arc<Shared>,
    tx: Sender<Submission>,
}

impl Store {
    /// Opens (recovering if needed) the store on `disk`. The returned
    /// [`Writer`] must be driven for writes to complete.
    pub fn open(disk: Arc<dyn Disk>, options: Options) -> Result<(Store, Writer), StoreError> {
        let (tx, rx) = bounded(SUBMIT_QUEUE_MAX);
        let shared = Arc::new(Shared::default());
        let writer = Writer::open(disk, options, shared.clone(), rx)?;
        Ok((Store { shared, tx }, writer))
    }

    /// Queues `batch` without blocking; `done` runs on the writer once it is
    /// durable (or failed), or here if it is refused (invalid, poisoned,
    /// closed, or [`StoreError::Overloaded`]: the line behind a full queue
    /// is full too). The returned [`Queued`] resolves once the batch has
    /// reached the writer: await it before submitting more, so that a full
    /// queue holds the caller back. Batches reach the writer in the order of
    /// these calls, whether or not anyone awaits (see `gate.rs`).
    pub fn submit_async(&self, batch: WriteBatch, done: Completion) -> Queued {
        if let Err(e) = batch.validate().and_then(|_| self.shared.check_poisoned()) {
            done(Err(e));
            return Queued::done();
        }
        match self.shared.gate.enter(&self.tx, Submission { batch, done }) {
            Entered::Queued => Queued::done(),
            Entered::Waiting(number) => Queued::waiting(self.shared.clone(), number),
            Entered::Full(rejected, _) => {
                (rejected.done)(Err(StoreError::Overloaded {
                    waiting: SUBMIT_OVERFLOW_MAX,
                }));
                Queued::done()
            }
            Entered::Refused(rejected, e) => {
                (rejected.done)(Err(e));
                Queued::done()
            }
        }
    }

    /// Like [`Store::submit_async`], but blocks the calling thread until the
    /// batch has reached the writer, and never refuses it for a full line
    /// (it waits for room instead). For threads of their own (tests,
    /// benches, tools), never for async code.
    pub fn submit(&self, batch: WriteBatch, done: Completion) {
        if let Err(e) = batch.validate().and_then(|_| self.shared.check_poisoned()) {
            return done(Err(e));
        }
        let mut submission = Submission { batch, done };
        loop {
            match self.shared.gate.enter(&self.tx, submission) {
                Entered::Queued => return,
                Entered::Waiting(number) => {
                    return Queued::waiting(self.shared.clone(), number).wait_blocking();
                }
                Entered::Full(rejected, back) => {
                    Queued::waiting(self.shared.clone(), back).wait_blocking();
                    submission = rejected;
                }
                Entered::Refused(rejected, e) => return (rejected.done)(Err(e)),
            }
        }
    }

    /// Submits `batch` and waits until it is durable; returns its seq.
    ///
    /// The wait parks at once on a condition variable: many blocked
    /// submitters must not spin, or they steal the writer's CPU.
    pub fn write(&self, batch: WriteBatch) -> Result<u64, StoreError> {
        let slot: Arc<WriteSlot> = Arc::default();
        let filler = slot.clone();
        self.submit(
            batch,
            Box::new(move |result| {
                *filler.0.lock() = Some(result);
                filler.1.notify_one();
            }),
        );
        let mut result = slot.0.lock();
        loop {
            if let Some(r) = result.take() {
                return r;
            }
            slot.1.wait(&mut result);
        }
    }

    /// The newest value of `key`.
    pub fn get(&self, ns: Namespace, key: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.shared.read.read().get(ns, key, None)
    }

    /// The value of `key` as of `snapshot`.
    pub fn get_at(&self, snapshot: Snapshot, key: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let read = self.shared.read.read();
        self.check_snapshot(&read.index, snapshot)?;
        read.get(snapshot.ns, key, Some(snapshot.seq))
    }

    /// Up to `max_items` newest key/value pairs of `ns` in `range`, in key order.
    pub fn scan(
        &self,
        ns: Namespace,
        range: Range<u64>,
        max_items: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.scan_view(ns, range, None, max_items)
    }

    /// Like [`Store::scan`], as of `snapshot`.
    pub fn scan_at(
        &self,
        snapshot: Snapshot,
        range: Range<u64>,
        max_items: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.check_snapshot(&self.shared.read.read().index, snapshot)?;
        self.scan_view(snapshot.ns, range, Some(snapshot.seq), max_items)
    }

    fn scan_view(
        &self,
        ns: Namespace,
        range: Range<u64>,
        at: Option<u64>,
        max_items: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let read = self.shared.read.read();
        read.index
            .range(ns, range, at, max_items)
            .into_iter()
            .map(|(key, loc)| Ok((key, read.read_value(loc)?)))
            .collect()
    }

    /// Pins `ns` as of now (durably). Waits for the write.
    pub fn create_snapshot(&self, ns: Namespace) -> Result<Snapshot, StoreError> {
        let seq = self.write(WriteBatch::create_snapshot(ns))?;
        Ok(Snapshot { ns, seq })
    }

    /// Releases `snapshot` (durably); its pinned versions become garbage.
    pub fn drop_snapshot(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        self.check_snapshot(&self.shared.read.read().index, snapshot)?;
        self.write(WriteBatch::drop_snapshot(snapshot.ns, snapshot.seq))
            .map(|_| ())
    }

    /// The snapshots of `ns`, oldest first.
    pub fn snapshots(&self, ns: Namespace) -> Vec<Snapshot> {
        let read = self.shared.read.read();
        read.index
            .snapshots(ns)
            .into_iter()
            .map(|seq| Snapshot { ns, seq })
            .collect()
    }

    /// Keys whose value differs between `older` and `newer` (`None`: now).
    /// Reads the index only, never a value.
    pub fn diff(
        &self,
        older: Snapshot,
        newer: Option<Snapshot>,
    ) -> Result<Vec<Change>, StoreError> {
        let read = self.shared.read.read();
        self.check_snapshot(&read.index, older)?;
        if let Some(newer) = newer {
            self.check_snapshot(&read.index, newer)?;
            if newer.ns != older.ns || newer.seq < older.seq {
                return Err(StoreError::InvalidBatch(
                    "diff needs two snapshots of one namespace, older first".into(),
                ));
            }
        }
        Ok(read
            .index
            .diff(older.ns, older.seq, newer.map(|s| s.seq))
            .into_iter()
            .map(|(key, kind)| Change { key, kind })
            .collect())
    }

    fn check_snapshot(
        &self,
        index: &crate::index::Index,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        if index.has_snapshot(snapshot.ns, snapshot.seq) {
            Ok(())
        } else {
            Err(StoreError::NoSuchSnapshot {
                kind: snapshot.ns.kind,
                id: snapshot.ns.id,
                seq: snapshot.seq,
            })
        }
    }

    /// Counters, including write and space amplification.
    pub fn stats(&self) -> StoreStats {
        let mut stats = *self.shared.stats.lock();
        stats.live_bytes = self.shared.read.read().index.live_bytes();
        stats
    }
}
