//! Pipelined group commit: the log keeps growing while it is being synced.
//!
//! With a [`Syncer`] attached, at most one `fdatasync` runs at a time, on
//! the syncer. While it runs, submissions queue up (the writer waits only for
//! the sync, so submitters never wake it one by one). When it returns, the
//! writer drains the queue into one group, appends it and starts its sync,
//! and only then publishes and acknowledges the groups the finished sync
//! covered and does upkeep. So the disk always has the next sync right
//! behind the current one, and wake-ups, index updates and compaction
//! overlap an fsync instead of delaying it.
//!
//! Durability is unchanged: a batch is published and acknowledged only after
//! an `fdatasync` that started after its bytes were written has returned.
//! A checkpoint taken while groups are written but not yet synced records
//! `published_seq` and replays from the segment of the newest published
//! batch, so unsynced records are never claimed by a checkpoint.
//!
//! The syncer is a separate loop because kvstore never spawns: the caller
//! runs [`Syncer::run`] on a thread. The stepped writer ([`Writer::step`],
//! used under the simulator) never pipelines.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::disk::DiskFile;
use crate::error::StoreError;
use crate::writer::{
    GROUP_BYTES_MAX, GROUP_SUBMISSIONS_MAX, GroupImage, Submission, Writer, run_completions,
};

/// Files to fsync for one group.
type SyncJob = Vec<Arc<dyn DiskFile>>;

/// The writer's end of the link to its [`Syncer`].
#[derive(Debug)]
pub(crate) struct SyncerLink {
    jobs: Sender<SyncJob>,
    results: Receiver<Result<(), StoreError>>,
}

/// Runs the fsyncs of a pipelined [`Writer`] (see [`Writer::syncer`]).
#[derive(Debug)]
pub struct Syncer {
    jobs: Receiver<SyncJob>,
    results: Sender<Result<(), StoreError>>,
}

impl Syncer {
    /// Syncs groups until the writer is gone.
    pub fn run(self) {
        while let Ok(files) = self.jobs.recv() {
            let mut result = Ok(());
            for file in &files {
                if let Err(e) = file.sync_data() {
                    result = Err(e.into());
                    break;
                }
            }
            if self.results.send(result).is_err() {
                return;
            }
        }
    }
}

/// A group appended to the log, not yet known to be durable.
struct Written {
    group: Vec<Submission>,
    image: GroupImage,
}

/// Groups between "appended" and "acknowledged".
#[derive(Default)]
struct Pipeline {
    /// Appended after the running sync started (or with none running).
    written: Vec<Written>,
    /// Covered by the running sync.
    syncing: Vec<Written>,
    sync_running: bool,
}

impl Writer {
    /// Attaches a syncer: from now on [`Writer::run`] pipelines fsyncs. The
    /// caller runs the returned [`Syncer`] on its own thread.
    pub fn syncer(&mut self) -> Syncer {
        let (jobs_tx, jobs_rx) = bounded(1);
        let (results_tx, results_rx) = bounded(1);
        self.syncer = Some(SyncerLink {
            jobs: jobs_tx,
            results: results_rx,
        });
        Syncer {
            jobs: jobs_rx,
            results: results_tx,
        }
    }

    pub(crate) fn run_pipelined(mut self) {
        let mut p = Pipeline::default();
        loop {
            if p.sync_running {
                // Submitters queue up meanwhile; waking for each of them
                // would only cost the writer context switches.
                let link = self.syncer.as_ref().expect("pipelined writer has a syncer");
                let result = recv_result(&link.results);
                self.sync_finished(&mut p, result);
                continue;
            }
            if !p.written.is_empty() {
                self.start_sync(&mut p);
                continue;
            }
            match self.rx.recv() {
                Ok(first) => self.append(&mut p, first, true),
                Err(_) => return,
            }
        }
    }

    /// Gathers what is queued behind `first` and appends it as one group.
    /// If `may_inline`, a lone batch with nothing else pending is synced and
    /// published inline: at queue depth one there is nothing to overlap, and
    /// the hand-off to the syncer would only add latency. (Only allowed when
    /// no earlier group awaits publication, or publication would reorder.)
    fn append(&mut self, p: &mut Pipeline, first: Submission, may_inline: bool) {
        let mut group = vec![first];
        self.top_up(&mut group);
        self.last_group_len = group.len();
        let image = match self.write_group(&group) {
            Ok(image) => image,
            Err(e) => return run_completions(self.finish_group(group, Err(e))),
        };
        let lone = may_inline && group.len() == 1 && !p.sync_running && p.written.is_empty();
        if lone && self.rx.is_empty() {
            let synced = image
                .dirty
                .iter()
                .try_for_each(|f| f.sync_data())
                .map_err(StoreError::from)
                .map(|()| image);
            self.shared.stats.lock().log_syncs += 1;
            run_completions(self.finish_group(group, synced));
            self.maintain_or_poison();
            return;
        }
        p.written.push(Written { group, image });
    }

    /// Adds whatever is queued to `group`, within the group limits.
    fn top_up(&mut self, group: &mut Vec<Submission>) {
        let mut bytes: usize = group.iter().map(|s| s.batch.encoded_len()).sum();
        while group.len() < GROUP_SUBMISSIONS_MAX && bytes < GROUP_BYTES_MAX {
            match self.rx.try_recv() {
                Ok(sub) => {
                    bytes += sub.batch.encoded_len();
                    group.push(sub);
                }
                Err(_) => break,
            }
        }
    }

    /// Hands every file written since the last sync started to the syncer.
    fn start_sync(&mut self, p: &mut Pipeline) {
        let mut files: SyncJob = Vec::new();
        for w in &p.written {
            for f in &w.image.dirty {
                if !files.iter().any(|g| Arc::ptr_eq(g, f)) {
                    files.push(f.clone());
                }
            }
        }
        p.syncing = std::mem::take(&mut p.written);
        let link = self.syncer.as_ref().expect("pipelined writer has a syncer");
        if link.jobs.send(files).is_err() {
            let failed = std::mem::take(&mut p.syncing);
            self.fail_all(failed, syncer_gone());
            return;
        }
        p.sync_running = true;
    }

    /// A sync returned: append what queued up meanwhile and start its sync,
    /// then acknowledge what the finished one covered.
    fn sync_finished(&mut self, p: &mut Pipeline, result: Result<(), StoreError>) {
        p.sync_running = false;
        let covered = std::mem::take(&mut p.syncing);
        if let Err(e) = result {
            self.fail_all(covered, e);
            let unsynced = std::mem::take(&mut p.written);
            self.fail_all(
                unsynced,
                StoreError::Poisoned("an earlier fsync failed".into()),
            );
            return;
        }
        self.shared.stats.lock().log_syncs += 1;
        if let Ok(first) = self.rx.try_recv() {
            // Never inline here: the covered groups must be published first.
            self.append(p, first, false);
        }
        if !p.sync_running && !p.written.is_empty() {
            self.start_sync(p);
        }
        let mut done = Vec::new();
        for w in covered {
            done.extend(self.finish_group(w.group, Ok(w.image)));
        }
        run_completions(done);
        self.maintain_or_poison();
    }

    fn fail_all(&mut self, groups: Vec<Written>, e: StoreError) {
        self.poison(&e);
        for w in groups {
            let err = StoreError::Poisoned(e.to_string());
            run_completions(self.finish_group(w.group, Err(err)));
        }
    }
}

fn syncer_gone() -> StoreError {
    StoreError::Poisoned("the syncer has stopped".into())
}

fn recv_result(results: &Receiver<Result<(), StoreError>>) -> Result<(), StoreError> {
    results.recv().unwrap_or_else(|_| Err(syncer_gone()))
}
