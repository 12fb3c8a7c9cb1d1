//! Apply: committed entries into the group's pending batch ([`PendingApply`]),
//! which rides in the log store's next write ([`ApplyRider`]) or goes on its
//! own past its bounds; the block changes of one command
//! ([`apply_command`]); the pins and unpins of DR snapshot entries.

use std::io;
use std::sync::Arc;

use futures_util::TryStreamExt;
use metro_kvstore::WriteBatch;
use openraft::storage::EntryResponder;
use openraft::{AsyncRuntime, OptionalSend};

use super::super::StorageError;
use super::super::codec::{encode_log_id, encode_meta, encode_u64};
use super::super::dr_catalogue::{CatalogueRefusal, DrSnapshot};
use super::super::durable::{Durable, submit, submit_then};
use super::super::namespaces::{SM_KEY_APPLIED, SM_KEY_MEMBERSHIP, SM_KEY_SIZE};
use super::super::overlay::BlockOverlay;
use super::super::sessions::{SessionTable, Verdict};
use super::{ApplyHook, PendingApply, SmShared, SmState, VolumeStateMachine};
use crate::limits::{
    APPLY_IN_FLIGHT_MAX, DR_SNAPSHOTS_MAX, PENDING_APPLY_BYTES_MAX, PENDING_APPLY_ENTRIES_MAX,
};
use crate::raft::types::{Entry, EntryPayload, SnapshotMeta, StoredMembership, TypeConfig};
use crate::volume::{OnceCommand, VolumeCommand, VolumeResponse};

/// The log store's handle on its group's pending apply changes: every log
/// store write goes through [`ApplyRider::submit`], which puts the pending
/// changes first in the same batch.
#[derive(Debug, Clone)]
pub(crate) struct ApplyRider {
    pub(super) shared: Arc<SmShared>,
}

impl ApplyRider {
    /// Submits a batch built by `fill` (about `fill_bytes` encoded bytes)
    /// with the pending apply changes in front of it: in the same batch when
    /// both fit in one, else in a batch of their own just before it. `hook`
    /// runs once the batch is durable (or failed).
    pub(crate) fn submit(
        &self,
        fill_bytes: usize,
        fill: impl FnOnce(&mut WriteBatch),
        hook: impl FnOnce(&Result<u64, metro_kvstore::StoreError>) + Send + 'static,
    ) -> Durable {
        let store = self.shared.store();
        // Held until submitted: a state machine write that finds nothing
        // pending must not overtake the changes this batch carries.
        let mut pending = self.shared.pending.lock();
        let Some((mut batch, done)) = self.shared.take_pending(&mut pending) else {
            let mut batch = WriteBatch::new();
            fill(&mut batch);
            return submit_then(store, batch, hook);
        };
        if batch.encoded_len() + fill_bytes > metro_kvstore::BATCH_BYTES_MAX {
            drop(submit_then(store, batch, done));
            batch = WriteBatch::new();
            fill(&mut batch);
            return submit_then(store, batch, hook);
        }
        fill(&mut batch);
        submit_then(store, batch, move |result| {
            done(result);
            hook(result);
        })
    }
}

impl SmShared {
    /// Empties `pending`: its batch and the hook that settles its tickets.
    pub(super) fn take_pending(
        self: &Arc<Self>,
        pending: &mut PendingApply,
    ) -> Option<(WriteBatch, ApplyHook)> {
        assert_eq!(
            pending.batch.is_empty(),
            pending.tickets.is_empty(),
            "pending changes travel with their overlay tickets"
        );
        if pending.batch.is_empty() {
            return None;
        }
        let batch = std::mem::take(&mut pending.batch);
        let tickets = std::mem::take(&mut pending.tickets);
        let shared = Arc::clone(self);
        let hook: ApplyHook = Box::new(move |result| {
            shared.note(result);
            let mut overlay = shared.overlay.lock();
            for ticket in tickets {
                overlay.durable(ticket);
            }
        });
        Some((batch, hook))
    }

    /// Adds the changes applying `entry` to the pending batch, updating
    /// state and overlay; returns the response and whether the pending
    /// batch should now go on its own.
    /// `pin`: the kvstore snapshot taken for a `CreateSnapshot` entry.
    fn prepare<RT: AsyncRuntime>(
        &self,
        entry: &Entry,
        pin: Option<u64>,
    ) -> Result<(VolumeResponse, bool), StorageError> {
        let mut pending = self.pending.lock();
        let pending = &mut *pending;
        let mut state = self.state();
        let mut overlay = self.overlay.lock();
        assert!(
            pending.batch.encoded_len() < PENDING_APPLY_BYTES_MAX
                && pending.tickets.len() < PENDING_APPLY_ENTRIES_MAX,
            "a full pending apply batch goes on its own before the next entry"
        );
        // Strictly increasing, not necessarily consecutive: openraft's
        // storage suite applies entries with gaps.
        assert!(
            state
                .applied
                .is_none_or(|applied| applied.index < entry.log_id.index),
            "the applied index only grows"
        );
        let ticket = overlay.ticket();
        pending.tickets.push(ticket);
        let sm = self.ns.sm_meta();
        let batch = &mut pending.batch;
        batch.put(sm, SM_KEY_APPLIED, encode_log_id(&entry.log_id));
        state.applied = Some(entry.log_id);
        let response = match &entry.payload {
            EntryPayload::Blank => VolumeResponse::Applied,
            EntryPayload::Membership(membership) => {
                state.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                let meta = SnapshotMeta {
                    last_log_id: None,
                    last_membership: state.membership.clone(),
                };
                batch.put(
                    sm,
                    SM_KEY_MEMBERSHIP,
                    encode_meta::<RT>(self.ns.volume, &meta)?,
                );
                VolumeResponse::Applied
            }
            EntryPayload::Normal(VolumeCommand::RegisterSession) => {
                register_session(self, &mut state, entry.log_id.index, batch)
            }
            EntryPayload::Normal(VolumeCommand::Once(once)) => apply_once(
                self,
                &mut state,
                &mut overlay,
                ticket,
                once,
                entry.log_id.index,
                batch,
            ),
            EntryPayload::Normal(command) => apply_command(
                self,
                &mut state,
                &mut overlay,
                ticket,
                command,
                (entry.log_id.index, pin),
                batch,
            ),
        };
        assert!(
            !self.node.is_witness() || overlay.is_empty(),
            "a witness never applies block data"
        );
        let full = batch.encoded_len() >= PENDING_APPLY_BYTES_MAX
            || pending.tickets.len() >= PENDING_APPLY_ENTRIES_MAX;
        Ok((response, full))
    }
}

impl<RT: AsyncRuntime> VolumeStateMachine<RT> {
    /// Applies committed entries in order, answering each one's client.
    pub(super) async fn apply_entries<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: futures_util::Stream<Item = Result<EntryResponder<TypeConfig<RT>>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            self.shared.check()?;
            let pin = self.pin_for(&entry).await?;
            let unpin = self.unpin_for(&entry);
            let (response, full) = self.shared.prepare::<RT>(&entry, pin)?;
            assert!(
                pin.is_none() || response == VolumeResponse::Applied,
                "a snapshot is pinned only for an entry that records it"
            );
            if let Some(seq) = unpin.filter(|_| response == VolumeResponse::Applied) {
                // The removal first, then the unpin (a snapshot operation
                // travels alone): a crash between leaves an unrecorded pin,
                // dropped at the next open.
                self.flush_pending().await?;
                let ns = self.shared.ns.block_map(self.shared.state().active_slot);
                submit(self.shared.store(), WriteBatch::drop_snapshot(ns, seq))
                    .queued()
                    .await;
            } else if full {
                self.flush_pending().await?;
            }
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    /// Submits the pending apply changes on their own (if any); waits only
    /// while [`APPLY_IN_FLIGHT_MAX`] such batches are queued, or while the
    /// new one waits behind kvstore's full queue. Every other
    /// write of the state machine calls this first, so that it is ordered
    /// after the changes already applied.
    pub(super) async fn flush_pending(&mut self) -> Result<(), StorageError> {
        while self.in_flight.front().is_some_and(Durable::is_done) {
            if let Some(done) = self.in_flight.pop_front() {
                done.await?;
            }
        }
        if self.in_flight.len() >= APPLY_IN_FLIGHT_MAX
            && let Some(oldest) = self.in_flight.pop_front()
        {
            oldest.await?;
        }
        let durable = {
            let mut pending = self.shared.pending.lock();
            match self.shared.take_pending(&mut pending) {
                Some((batch, hook)) => submit_then(self.shared.store(), batch, hook),
                None => return Ok(()),
            }
        };
        assert!(
            self.in_flight.len() < APPLY_IN_FLIGHT_MAX,
            "apply batches in flight stay bounded"
        );
        // Behind kvstore's full queue the batch waits in line: wait with it.
        durable.queued().await;
        self.in_flight.push_back(durable);
        Ok(())
    }

    /// For a `CreateSnapshot` entry this replica will record with content:
    /// submits the changes applied before it, then pins the active block
    /// map (durable on return); its kvstore sequence number.
    async fn pin_for(&mut self, entry: &Entry) -> Result<Option<u64>, StorageError> {
        let EntryPayload::Normal(VolumeCommand::CreateSnapshot { snapshot_id }) = &entry.payload
        else {
            return Ok(None);
        };
        if self.shared.node.is_witness() {
            return Ok(None);
        }
        let (allowed, slot) = {
            let state = self.shared.state();
            let plan = state.dr.plan_create(*snapshot_id, entry.log_id.index);
            (plan.is_ok(), state.active_slot)
        };
        if !allowed {
            return Ok(None);
        }
        self.flush_pending().await?;
        let ns = self.shared.ns.block_map(slot);
        let seq = submit(self.shared.store(), WriteBatch::create_snapshot(ns)).await?;
        Ok(Some(seq))
    }

    /// For a `DeleteSnapshot` entry: the pin to release if the snapshot
    /// has content here.
    fn unpin_for(&self, entry: &Entry) -> Option<u64> {
        let EntryPayload::Normal(VolumeCommand::DeleteSnapshot { snapshot_id }) = &entry.payload
        else {
            return None;
        };
        self.shared.state().dr.get(*snapshot_id)?.pinned
    }

    /// Waits until every applied change is durable.
    pub(super) async fn drain(&mut self) -> Result<(), StorageError> {
        self.flush_pending().await?;
        while let Some(durable) = self.in_flight.pop_front() {
            durable.await?;
        }
        assert!(
            self.shared.pending.lock().tickets.is_empty(),
            "nothing is pending once drained"
        );
        Ok(())
    }
}

/// Opens the session `log_index` (evicting the least recently active one
/// past [`SESSIONS_MAX`](crate::limits::SESSIONS_MAX)).
fn register_session(
    shared: &SmShared,
    state: &mut SmState,
    log_index: u64,
    batch: &mut WriteBatch,
) -> VolumeResponse {
    let ns = shared.ns.sessions();
    let (record, evicted) = state.sessions.register(log_index);
    if let Some(old) = evicted {
        batch.delete(ns, old);
    }
    batch.put(ns, log_index, SessionTable::encode_record(&record));
    VolumeResponse::Applied
}

/// Applies a session's block command unless the session already applied
/// it (answered as then) or cannot tell (refused); see `sessions.rs`.
fn apply_once(
    shared: &SmShared,
    state: &mut SmState,
    overlay: &mut BlockOverlay,
    ticket: u64,
    once: &OnceCommand,
    log_index: u64,
    batch: &mut WriteBatch,
) -> VolumeResponse {
    let (session, request) = (once.session(), once.request());
    let verdict = match state.sessions.verdict(session, request) {
        // The planted bug: a delivered duplicate is applied again.
        Verdict::Duplicate { .. } if shared.node.ignores_request_numbers() => Verdict::Apply,
        verdict => verdict,
    };
    match verdict {
        Verdict::Expired => VolumeResponse::SessionExpired { session },
        Verdict::Stale => VolumeResponse::RequestStale { session, request },
        Verdict::Duplicate { refused: false } => VolumeResponse::Applied,
        Verdict::Duplicate { refused: true } => VolumeResponse::OutOfRange {
            size_blocks: state.size_blocks,
        },
        Verdict::Apply => {
            let command = once.command();
            let response = apply_command(
                shared,
                state,
                overlay,
                ticket,
                command,
                (log_index, None),
                batch,
            );
            let refused = response != VolumeResponse::Applied;
            assert!(
                !refused || matches!(response, VolumeResponse::OutOfRange { .. }),
                "a block command is applied or out of range"
            );
            let record = state
                .sessions
                .record(session, request, log_index, refused)
                .expect("the verdict found the session");
            batch.put(
                shared.ns.sessions(),
                session,
                SessionTable::encode_record(&record),
            );
            response
        }
    }
}

/// Adds `command`'s block changes to `batch` and the overlay.
fn apply_command(
    shared: &SmShared,
    state: &mut SmState,
    overlay: &mut BlockOverlay,
    ticket: u64,
    command: &VolumeCommand,
    at: (u64, Option<u64>),
    batch: &mut WriteBatch,
) -> VolumeResponse {
    let (log_index, pin) = at;
    let size_blocks = state.size_blocks;
    if let Some((offset, len)) = command.block_range()
        && offset.checked_add(len).is_none_or(|end| end > size_blocks)
    {
        return VolumeResponse::OutOfRange { size_blocks };
    }
    let ns = shared.ns.block_map(state.active_slot);
    let witness = shared.node.is_witness();
    match command {
        // A witness keeps no blocks (see `NodeStorage`); it still checks
        // ranges and tracks the size, so it answers as every replica does.
        VolumeCommand::Write { .. }
        | VolumeCommand::Trim { .. }
        | VolumeCommand::WriteZeroes { .. }
            if witness => {}
        VolumeCommand::Write {
            offset_blocks,
            data,
        } => {
            assert!(
                offset_blocks + u64::from(data.block_count()) <= size_blocks,
                "a write lies within the volume after the range check"
            );
            for (i, block) in data.blocks().enumerate() {
                batch.put(ns, offset_blocks + i as u64, block.to_vec());
            }
            overlay.write(ticket, *offset_blocks, data);
        }
        VolumeCommand::Trim {
            offset_blocks,
            len_blocks,
        }
        | VolumeCommand::WriteZeroes {
            offset_blocks,
            len_blocks,
        } => {
            let end = offset_blocks + len_blocks;
            assert!(
                end <= size_blocks,
                "a zeroed range lies within the volume after the range check"
            );
            batch.delete_range(ns, *offset_blocks, end);
            overlay.zero(ticket, *offset_blocks..end);
        }
        VolumeCommand::Resize { size_blocks: size } => {
            if *size < size_blocks && !witness {
                batch.delete_range(ns, *size, u64::MAX);
                overlay.zero(ticket, *size..u64::MAX);
            }
            state.size_blocks = *size;
            batch.put(shared.ns.sm_meta(), SM_KEY_SIZE, encode_u64(*size));
        }
        VolumeCommand::CreateSnapshot { .. } | VolumeCommand::DeleteSnapshot { .. } => {
            return apply_catalogue(shared, state, command, (log_index, pin), batch);
        }
        VolumeCommand::RegisterSession | VolumeCommand::Once(_) => {
            unreachable!("session commands are applied by `prepare`")
        }
    }
    VolumeResponse::Applied
}

/// Adds a DR snapshot command's catalogue change to `batch` and `state`.
fn apply_catalogue(
    shared: &SmShared,
    state: &mut SmState,
    command: &VolumeCommand,
    at: (u64, Option<u64>),
    batch: &mut WriteBatch,
) -> VolumeResponse {
    let (log_index, pin) = at;
    assert!(
        pin.is_none() || !shared.node.is_witness(),
        "a witness pins no block map"
    );
    match command {
        VolumeCommand::CreateSnapshot { snapshot_id } => {
            match state.dr.plan_create(*snapshot_id, log_index) {
                Err(CatalogueRefusal::Conflict) => {
                    return VolumeResponse::SnapshotConflict {
                        snapshot_id: *snapshot_id,
                    };
                }
                Err(CatalogueRefusal::Full) => {
                    return VolumeResponse::SnapshotLimit {
                        max: DR_SNAPSHOTS_MAX as u64,
                    };
                }
                Ok(_) => {
                    let record = DrSnapshot {
                        id: *snapshot_id,
                        log_index,
                        size_blocks: state.size_blocks,
                        pinned: pin,
                    };
                    batch.put(shared.ns.dr_snapshots(), record.id, record.encode());
                    state.dr.insert(record);
                }
            }
        }
        VolumeCommand::DeleteSnapshot { snapshot_id } => {
            if state.dr.remove(*snapshot_id).is_err() {
                return VolumeResponse::SnapshotConflict {
                    snapshot_id: *snapshot_id,
                };
            }
            batch.delete(shared.ns.dr_snapshots(), *snapshot_id);
        }
        _ => unreachable!("only DR snapshot commands change the catalogue"),
    }
    VolumeResponse::Applied
}
