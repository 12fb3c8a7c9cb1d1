//! Volume snapshots and clones in the admin service.
//!
//! Model: a snapshot's *content* lives in the volume's Raft group (the
//! replicated `CreateSnapshot` entry pins every replica's block map at that
//! entry, see `metro_fabric::storage::dr_catalogue`); its *name* lives in the
//! desired-state store at `/metro/<cluster>/snapshots/<volume>/<name>`
//! ([`SnapshotView`] as JSON). The group knows the snapshot by an id
//! derived from the name ([`snapshot_id`], FNV-1a 64), so that every step
//! can be retried without a second allocation:
//!
//! - **Create**: the group takes snapshot `id` (through its leader), then
//!   the name record is written if absent. A retry after a crash between
//!   the two finds the id taken in the group and no record: it adopts the
//!   group's snapshot (its log index is read from a replica's catalogue).
//!   An existing name is a conflict.
//! - **Delete**: the group deletes the id, then the name record goes. A
//!   retry finds the id gone and only removes the record.
//! - **Clone**: creates the target volume (same replica count, the
//!   snapshot's size) like `POST /v1/volumes`, waits for its group, then
//!   copies the snapshot's non-zero blocks page by page from any replica
//!   holding them into the target through its leader. Progress is kept per
//!   job ([`CloneProgress`], `GET /v1/clones`, at most [`CLONE_JOBS_MAX`]
//!   remembered). The call answers once every block is copied. A failed
//!   copy leaves the target volume partly written and says so: delete it
//!   and clone again.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metro_fabric::control::{decode, encode};
use metro_fabric::host::HostError;
use metro_fabric::limits::SNAPSHOT_READ_BLOCKS_MAX;
use metro_fabric::meta::{Compare, MetaStore, TxnOp};
use metro_fabric::volume::{BLOCK_BYTES_U64, BlockData, VolumeCommand, VolumeId, VolumeResponse};
use parking_lot::Mutex;

use super::api::{CloneProgress, CreateVolume, SnapshotView, VolumeSummary};
use super::service::{AdminService, ServiceError, check_name};
use crate::client::session::{Sent, SessionSlot};
use crate::limits::{
    CLONE_CREATE_WAIT_MS, CLONE_JOBS_MAX, STEP_RETRY_PAUSE_MS, STEP_RETRY_WAIT_MS,
};

type Result<T> = std::result::Result<T, ServiceError>;
type HostResult<T> = std::result::Result<T, HostError>;

/// The group-level id of snapshot `name` (FNV-1a 64 of the name).
pub fn snapshot_id(name: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether `error` may pass by retrying.
fn transient(error: &HostError) -> bool {
    matches!(
        error,
        HostError::NoLeader(_)
            | HostError::Peer { .. }
            | HostError::Failed { .. }
            | HostError::UnknownVolume(_)
    )
}

/// Retries `op` on transient host errors for up to `wait`; the last error
/// otherwise.
async fn retry_host<V, F, Fut>(what: &str, wait: Duration, mut op: F) -> HostResult<V>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = HostResult<V>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match op().await {
            Err(error) if transient(&error) && tokio::time::Instant::now() < deadline => {
                tracing::debug!(%error, "{what}: retrying");
                tokio::time::sleep(Duration::from_millis(STEP_RETRY_PAUSE_MS)).await;
            }
            other => return other,
        }
    }
}

/// A host error as the API's: transient ones mean "retry".
fn service_error(what: &str, error: HostError) -> ServiceError {
    if transient(&error) {
        ServiceError::Unavailable(format!("{what}: {error} (retry)"))
    } else {
        ServiceError::Internal(format!("{what}: {error}"))
    }
}

/// The clone jobs of one node, bounded.
#[derive(Debug, Default)]
pub struct CloneJobs {
    jobs: Mutex<VecDeque<CloneProgress>>,
}

impl CloneJobs {
    fn update(&self, progress: &CloneProgress) {
        let mut jobs = self.jobs.lock();
        if let Some(job) = jobs.iter_mut().find(|j| j.target == progress.target) {
            *job = progress.clone();
            return;
        }
        if jobs.len() >= CLONE_JOBS_MAX {
            // Forget the oldest finished job; running ones stay listed.
            if let Some(at) = jobs
                .iter()
                .position(|j| j.state == "done" || j.state == "failed")
            {
                jobs.remove(at);
            } else {
                jobs.pop_front();
            }
        }
        jobs.push_back(progress.clone());
    }

    /// Every remembered job, oldest first.
    pub fn list(&self) -> Vec<CloneProgress> {
        let jobs = self.jobs.lock();
        jobs.iter().cloned().collect()
    }

    fn running(&self, target: &str) -> bool {
        let jobs = self.jobs.lock();
        jobs.iter()
            .any(|j| j.target == target && (j.state == "creating" || j.state == "copying"))
    }
}

impl<M: MetaStore> AdminService<M> {
    /// The snapshots of `volume`, by name.
    pub async fn list_snapshots(&self, volume: &str) -> Result<Vec<SnapshotView>> {
        self.record(volume).await?;
        self.snapshot_views(volume).await
    }

    /// The name records of `volume`'s snapshots (the volume unchecked).
    pub(super) async fn snapshot_views(&self, volume: &str) -> Result<Vec<SnapshotView>> {
        let prefix = self.keys().snapshots_prefix(volume);
        let range = self.membership().range(prefix.as_bytes()).await?;
        range
            .kvs
            .iter()
            .map(|kv| {
                decode::<SnapshotView>("snapshot", &kv.value)
                    .map_err(|e| ServiceError::Internal(e.to_string()))
            })
            .collect()
    }

    async fn snapshot_view(&self, volume: &str, name: &str) -> Result<Option<SnapshotView>> {
        let key = self.keys().snapshot(volume, name);
        match self.membership().get(key.as_bytes()).await? {
            None => Ok(None),
            Some(kv) => decode("snapshot", &kv.value)
                .map(Some)
                .map_err(|e| ServiceError::Internal(e.to_string())),
        }
    }

    /// `POST /v1/volumes/{name}/snapshots`.
    pub async fn snapshot_volume(&self, volume: &str, name: &str) -> Result<SnapshotView> {
        let (record, _) = self.record(volume).await?;
        check_name("snapshot", name)?;
        if self.snapshot_view(volume, name).await?.is_some() {
            return Err(ServiceError::Conflict(format!(
                "volume {volume:?} already has a snapshot named {name:?}"
            )));
        }
        let host = self.running_host()?;
        let vid = VolumeId(record.spec.id);
        let id = snapshot_id(name);
        let taken = retry_host(
            "taking the snapshot",
            Duration::from_millis(STEP_RETRY_WAIT_MS),
            || host.create_snapshot(vid, id),
        )
        .await;
        let log_index = match taken {
            Ok(index) => index,
            Err(HostError::Refused {
                response: VolumeResponse::SnapshotConflict { .. },
                ..
            }) => {
                // Taken by an earlier attempt that did not record the name:
                // adopt it.
                self.taken_at(vid, id).await.ok_or_else(|| {
                    ServiceError::Conflict(format!(
                        "snapshot id {id:#x} of {name:?} is taken in the volume's group and no replica here reports it: retry"
                    ))
                })?
            }
            Err(HostError::Refused {
                response: VolumeResponse::SnapshotLimit { max },
                ..
            }) => {
                return Err(ServiceError::Conflict(format!(
                    "volume {volume:?} has the maximum of {max} snapshots: delete one first"
                )));
            }
            Err(other) => return Err(service_error("taking the snapshot", other)),
        };
        let view = SnapshotView {
            name: name.to_owned(),
            id,
            volume: volume.to_owned(),
            log_index,
            size_bytes: record.spec.size_bytes,
            created_unix_ms: now_unix_ms(),
        };
        let key = self.keys().snapshot(volume, name).into_bytes();
        let result = self
            .membership()
            .txn(
                vec![Compare::create_revision(key.clone(), 0)],
                vec![TxnOp::Put {
                    key,
                    value: encode(&view),
                    lease: None,
                }],
            )
            .await?;
        if !result.succeeded {
            return Err(ServiceError::Conflict(format!(
                "volume {volume:?} already has a snapshot named {name:?}"
            )));
        }
        tracing::info!(volume, snapshot = name, id, log_index, "snapshot taken");
        Ok(view)
    }

    /// Where snapshot `id` was taken, from this node's replica or a
    /// peer's answer to a one-block read.
    async fn taken_at(&self, volume: VolumeId, id: u64) -> Option<u64> {
        let host = self.host()?;
        if let Ok(catalogue) = host.snapshots_here(volume).await
            && let Some(snapshot) = catalogue.get(id)
        {
            return Some(snapshot.log_index);
        }
        host.read_snapshot(volume, id, 0, 1)
            .await
            .ok()
            .map(|page| page.log_index)
    }

    /// `DELETE /v1/volumes/{name}/snapshots/{snapshot}`.
    pub async fn delete_snapshot(&self, volume: &str, name: &str) -> Result<SnapshotView> {
        let (record, _) = self.record(volume).await?;
        check_name("snapshot", name)?;
        let view = self.snapshot_view(volume, name).await?.ok_or_else(|| {
            ServiceError::NotFound(format!("volume {volume:?} has no snapshot named {name:?}"))
        })?;
        let host = self.running_host()?;
        let vid = VolumeId(record.spec.id);
        match retry_host(
            "deleting the snapshot",
            Duration::from_millis(STEP_RETRY_WAIT_MS),
            || host.delete_snapshot(vid, view.id),
        )
        .await
        {
            Ok(_) => {}
            // Gone from the group already (an earlier attempt).
            Err(HostError::Refused {
                response: VolumeResponse::SnapshotConflict { .. },
                ..
            }) => {}
            Err(other) => return Err(service_error("deleting the snapshot", other)),
        }
        let key = self.keys().snapshot(volume, name);
        self.membership().delete(key.as_bytes()).await?;
        tracing::info!(volume, snapshot = name, "snapshot deleted");
        Ok(view)
    }

    /// `GET /v1/clones`.
    pub fn clone_jobs(&self) -> Vec<CloneProgress> {
        self.clones().list()
    }

    /// `POST /v1/volumes/{name}/clone`.
    pub async fn clone_volume(
        &self,
        volume: &str,
        snapshot: &str,
        target: &str,
    ) -> Result<VolumeSummary> {
        let (record, _) = self.record(volume).await?;
        check_name("snapshot", snapshot)?;
        check_name("volume", target)?;
        let view = self.snapshot_view(volume, snapshot).await?.ok_or_else(|| {
            ServiceError::NotFound(format!(
                "volume {volume:?} has no snapshot named {snapshot:?}"
            ))
        })?;
        if self.clones().running(target) {
            return Err(ServiceError::Conflict(format!(
                "a clone into {target:?} is already running"
            )));
        }
        let host = self.running_host()?;
        let source = VolumeId(record.spec.id);
        // The snapshot's size, and a check that some replica holds it,
        // before anything is created.
        let first = retry_host(
            "reading the snapshot",
            Duration::from_millis(STEP_RETRY_WAIT_MS),
            || host.read_snapshot(source, view.id, 0, SNAPSHOT_READ_BLOCKS_MAX),
        )
        .await
        .map_err(|e| service_error("reading the snapshot", e))?;
        let total_blocks = first.size_blocks;
        let summary = self
            .create_volume(&CreateVolume {
                name: target.to_owned(),
                size_bytes: total_blocks * BLOCK_BYTES_U64,
                replicas: u32::from(record.spec.replicas),
            })
            .await?;
        let mut progress = CloneProgress {
            target: target.to_owned(),
            source: volume.to_owned(),
            snapshot: snapshot.to_owned(),
            state: "creating".into(),
            total_blocks,
            scanned_blocks: 0,
            copied_blocks: 0,
            error: None,
        };
        self.clones().update(&progress);
        tracing::info!(
            source = volume,
            snapshot,
            target,
            total_blocks,
            "clone started"
        );
        let copied = self
            .copy_snapshot(source, view.id, VolumeId(summary.id), first, &mut progress)
            .await;
        match copied {
            Ok(()) => {
                progress.state = "done".into();
                progress.scanned_blocks = total_blocks;
                self.clones().update(&progress);
                tracing::info!(target, blocks = progress.copied_blocks, "clone done");
                let (record, _) = self.record(target).await?;
                let status = self.status(target).await?;
                Ok(self.summary(&record, status.as_ref()))
            }
            Err(error) => {
                let message = format!(
                    "{error} — volume {target:?} is only partly copied: delete it and clone again"
                );
                progress.state = "failed".into();
                progress.error = Some(message.clone());
                self.clones().update(&progress);
                tracing::warn!(target, %message, "clone failed");
                Err(match error {
                    ServiceError::Unavailable(_) => ServiceError::Unavailable(message),
                    _ => ServiceError::Internal(message),
                })
            }
        }
    }

    /// Copies every non-zero block of snapshot `id` of `source` into
    /// `target`, starting with the page already read.
    async fn copy_snapshot(
        &self,
        source: VolumeId,
        id: u64,
        target: VolumeId,
        first: metro_fabric::wire::SnapshotPage,
        progress: &mut CloneProgress,
    ) -> Result<()> {
        let host = self.running_host()?;
        // The new group must accept writes: wait for it.
        let mut page = first;
        let mut created = false;
        // Exactly-once writes: a late copy of a clone write never lands on
        // a block the user wrote since (see `client::session`).
        let session = SessionSlot::new();
        let register = || {
            retry_host(
                "registering the clone's session",
                Duration::from_millis(CLONE_CREATE_WAIT_MS),
                || host.register_session(target),
            )
        };
        loop {
            let runs = runs_of(&page)?;
            for (offset, data) in runs {
                let wait = if created {
                    STEP_RETRY_WAIT_MS
                } else {
                    CLONE_CREATE_WAIT_MS
                };
                let blocks = u64::from(data.block_count());
                let (data, host) = (&data, &host);
                let send = |id| {
                    let written = retry_host(
                        "writing the clone",
                        Duration::from_millis(wait),
                        move || {
                            let command = VolumeCommand::Write {
                                offset_blocks: offset,
                                data: data.clone(),
                            };
                            host.command_once(target, id, command)
                        },
                    );
                    async move {
                        match written.await {
                            Err(HostError::Refused {
                                response: VolumeResponse::SessionExpired { session },
                                ..
                            }) => Ok(Sent::Expired { session }),
                            Ok(_) => Ok(Sent::Done(())),
                            Err(e) => Err(service_error("writing the clone", e)),
                        }
                    }
                };
                let registered = || async {
                    register()
                        .await
                        .map_err(|e| service_error("registering the clone's session", e))
                };
                let renewed_too_often = |session, renewals| {
                    ServiceError::Unavailable(format!(
                        "writing the clone: session {session} expired {renewals} times in a row"
                    ))
                };
                session.run(registered, send, renewed_too_often).await?;
                if !created {
                    created = true;
                    progress.state = "copying".into();
                }
                progress.copied_blocks += blocks;
            }
            progress.scanned_blocks = page.next.unwrap_or(progress.total_blocks);
            self.clones().update(progress);
            let Some(next) = page.next else {
                break;
            };
            page = retry_host(
                "reading the snapshot",
                Duration::from_millis(STEP_RETRY_WAIT_MS),
                || host.read_snapshot(source, id, next, SNAPSHOT_READ_BLOCKS_MAX),
            )
            .await
            .map_err(|e| service_error("reading the snapshot", e))?;
        }
        if !created {
            // An all-zero snapshot: still wait until the group serves, so
            // that the clone is usable when this call answers.
            retry_host(
                "waiting for the clone's group",
                Duration::from_millis(CLONE_CREATE_WAIT_MS),
                || host.read(target, 0, 1),
            )
            .await
            .map_err(|e| service_error("waiting for the clone's group", e))?;
        }
        Ok(())
    }
}

/// A page's blocks as runs of consecutive indexes: `(first index, blocks)`.
fn runs_of(page: &metro_fabric::wire::SnapshotPage) -> Result<Vec<(u64, BlockData)>> {
    let Some(data) = &page.data else {
        return Ok(Vec::new());
    };
    let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
    for (index, block) in page.indexes.iter().zip(data.blocks()) {
        match runs.last_mut() {
            Some((start, bytes)) if *start + (bytes.len() as u64 / BLOCK_BYTES_U64) == *index => {
                bytes.extend_from_slice(block);
            }
            _ => runs.push((*index, block.to_vec())),
        }
    }
    runs.into_iter()
        .map(|(start, bytes)| {
            BlockData::new(bytes)
                .map(|data| (start, data))
                .map_err(|e| ServiceError::Internal(format!("snapshot page: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use metro_fabric::volume::BLOCK_BYTES;
    use metro_fabric::wire::SnapshotPage;

    #[test]
    fn ids_are_stable_and_spread() {
        assert_eq!(snapshot_id("a"), snapshot_id("a"));
        assert_ne!(snapshot_id("nightly-1"), snapshot_id("nightly-2"));
        // FNV-1a 64 of the empty string is its offset basis.
        assert_eq!(snapshot_id(""), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn pages_split_into_runs_of_consecutive_blocks() {
        let bytes: Vec<u8> = (0..4u8).flat_map(|i| vec![i + 1; BLOCK_BYTES]).collect();
        let page = SnapshotPage {
            log_index: 1,
            size_blocks: 100,
            indexes: vec![3, 4, 9, 10],
            data: Some(BlockData::new(bytes).unwrap()),
            next: None,
        };
        let runs = runs_of(&page).unwrap();
        let shape: Vec<(u64, u32)> = runs.iter().map(|(s, d)| (*s, d.block_count())).collect();
        assert_eq!(shape, vec![(3, 2), (9, 2)]);
        assert_eq!(runs[1].1.as_bytes()[0], 3);
    }

    #[test]
    fn clone_jobs_stay_bounded_and_keep_running_ones() {
        let jobs = CloneJobs::default();
        let job = |i: usize, state: &str| CloneProgress {
            target: format!("t{i}"),
            source: "s".into(),
            snapshot: "x".into(),
            state: state.into(),
            total_blocks: 1,
            scanned_blocks: 0,
            copied_blocks: 0,
            error: None,
        };
        jobs.update(&job(0, "copying"));
        for i in 1..(CLONE_JOBS_MAX * 2) {
            jobs.update(&job(i, "done"));
        }
        let list = jobs.list();
        assert_eq!(list.len(), CLONE_JOBS_MAX);
        assert!(jobs.running("t0"));
        jobs.update(&job(0, "done"));
        assert!(!jobs.running("t0"));
    }
}
