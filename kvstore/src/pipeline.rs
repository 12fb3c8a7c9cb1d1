//! Pipelined group commit: the fsync of one group overlaps the gathering of
//! the next.
//!
//! With a [`Syncer`] attached, [`Writer::run`] keeps at most one group in
//! flight: it appends group N to the log and hands the files to the syncer;
//! while `fdatasync` runs, it keeps collecting submissions for group N+1.
//! When the sync reports back it publishes N, appends N+1 and starts its
//! sync, and only then runs N's completions and any upkeep — so wake-ups and
//! compaction overlap the next fsync instead of delaying it.
//!
//! Durability is unchanged: a batch is published and acknowledged only after
//! an `fdatasync` that started after its bytes were written has returned.
//! A checkpoint taken while N+1 is written but not yet synced records
//! `published_seq` and replays from the segment of the newest published
//! batch, so unsynced records are never claimed by a checkpoint.
//!
//! The syncer is a separate loop because kvstore never spawns: the caller
//! runs [`Syncer::run`] on a thread. The stepped writer ([`Writer::step`],
//! used under the simulator) never pipelines.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, bounded, select_biased};

use crate::disk::DiskFile;
use crate::error::StoreError;
use crate::writer::{
    CompletedGroup, GROUP_BYTES_MAX, GROUP_SUBMISSIONS_MAX, GroupImage, Submission, Writer,
    run_completions,
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

/// A group appended to the log whose fsync is running (or, for a lone
/// batch, already done inline: `synced` is then set).
struct InFlight {
    group: Vec<Submission>,
    image: Result<GroupImage, StoreError>,
    synced: Option<Result<(), StoreError>>,
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
        let mut next: Vec<Submission> = Vec::new();
        let mut in_flight: Option<InFlight> = None;
        let mut open = true;
        loop {
            match in_flight.take() {
                None => {
                    if next.is_empty() {
                        match self.rx.recv() {
                            Ok(first) => next.push(first),
                            Err(_) => return,
                        }
                    }
                    self.top_up(&mut next);
                    in_flight = Some(self.start(std::mem::take(&mut next)));
                }
                Some(current) => {
                    // A group that failed to be written was never sent to the
                    // syncer: there is nothing to wait for.
                    let synced = match (&current.image, current.synced.is_some()) {
                        (Ok(_), false) => self.wait_for_sync(&mut next, &mut open),
                        _ => Ok(()),
                    };
                    let done = self.finish(current, synced);
                    if !next.is_empty() {
                        self.top_up(&mut next);
                        in_flight = Some(self.start(std::mem::take(&mut next)));
                    }
                    run_completions(done);
                    self.maintain_or_poison();
                    if !open && in_flight.is_none() {
                        return;
                    }
                }
            }
        }
    }

    /// Adds whatever is queued to `next`, within the group limits.
    fn top_up(&mut self, next: &mut Vec<Submission>) {
        let mut bytes: usize = next.iter().map(|s| s.batch.encoded_len()).sum();
        while next.len() < GROUP_SUBMISSIONS_MAX && bytes < GROUP_BYTES_MAX {
            match self.rx.try_recv() {
                Ok(sub) => {
                    bytes += sub.batch.encoded_len();
                    next.push(sub);
                }
                Err(_) => break,
            }
        }
    }

    /// Appends `group` and starts its fsync. A lone batch with nothing queued
    /// behind it is synced inline: at queue depth one there is nothing to
    /// overlap, and the hand-off to the syncer would only add latency.
    fn start(&mut self, group: Vec<Submission>) -> InFlight {
        self.last_group_len = group.len();
        let image = self.write_group(&group);
        let inline = group.len() == 1 && self.rx.is_empty();
        let mut synced = None;
        let image = image.and_then(|image| {
            if inline {
                synced = Some(
                    image
                        .dirty
                        .iter()
                        .try_for_each(|f| f.sync_data())
                        .map_err(Into::into),
                );
                return Ok(image);
            }
            let link = self.syncer.as_ref().expect("pipelined writer has a syncer");
            link.jobs
                .send(image.dirty.clone())
                .map_err(|_| StoreError::Poisoned("the syncer has stopped".into()))?;
            Ok(image)
        });
        InFlight {
            group,
            image,
            synced,
        }
    }

    /// Waits for the running fsync, collecting the next group meanwhile.
    fn wait_for_sync(
        &mut self,
        next: &mut Vec<Submission>,
        open: &mut bool,
    ) -> Result<(), StoreError> {
        let link = self.syncer.as_ref().expect("pipelined writer has a syncer");
        loop {
            let room = *open && next.len() < GROUP_SUBMISSIONS_MAX;
            if !room {
                return link.results.recv().unwrap_or_else(|_| {
                    Err(StoreError::Poisoned("the syncer has stopped".into()))
                });
            }
            select_biased! {
                recv(link.results) -> result => {
                    return result.unwrap_or_else(|_| {
                        Err(StoreError::Poisoned("the syncer has stopped".into()))
                    });
                }
                recv(self.rx) -> sub => match sub {
                    Ok(sub) => next.push(sub),
                    Err(_) => *open = false,
                },
            }
        }
    }

    fn finish(&mut self, current: InFlight, synced: Result<(), StoreError>) -> CompletedGroup {
        let InFlight {
            group,
            image,
            synced: inline,
        } = current;
        let synced = inline.unwrap_or(synced);
        let image = match (image, synced) {
            (Ok(image), Ok(())) => Ok(image),
            // A group that failed to write never reached the syncer.
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
        };
        self.finish_group(group, image)
    }
}
