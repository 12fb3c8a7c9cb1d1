//! Desired-state I/O: reading a [`ClusterView`] out of the
//! [`MetaStore`] store and writing records back with compare-and-swap.
//!
//! Contracts:
//! - Every write of a volume record is a transaction guarded by the record's
//!   `mod_revision` as read, and, when the coordinator makes it, by its
//!   [`Leadership::fence`]: a coordinator that lost its election, or raced
//!   another writer, changes nothing ([`CasOutcome`] says which).
//! - Health is published under `/metro/<cluster>/status/<volume>` as a
//!   [`VolumeStatusRecord`] (JSON), written only by the coordinator (fenced)
//!   and only when it changed. It also records whether the volume's group
//!   has been created, so that a new coordinator finishes what a failed one
//!   started. The status key is advisory: deleting it only makes the
//!   coordinator ensure the group again (idempotent) and republish.
//! - Malformed records are skipped (and listed in [`LoadedView::malformed`])
//!   so that one bad key cannot stop the control plane.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::control::health::Health;
use crate::control::keys::ClusterKeys;
use crate::control::state::{
    ClusterView, DecodeError, DomainInfo, DomainState, NodeInfo, VolumeRecord, decode, encode,
};
use crate::env::NodeId;
use crate::limits::DOMAIN_CAS_ATTEMPTS_MAX;
use crate::meta::{Compare, KeyValue, Leadership, MetaError, MetaStore, Revision, TxnOp};

/// Errors of the desired-state helpers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("no domain named {0:?}")]
    UnknownDomain(String),
    #[error("{key} kept changing concurrently ({attempts} attempts)")]
    Contended { key: String, attempts: usize },
}

/// What the coordinator publishes about one volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStatusRecord {
    /// Whether the group of the current placement has been created.
    pub group_created: bool,
    pub health: Health,
    /// The coordinator that wrote this.
    pub coordinator: NodeId,
    /// The last placement or group error, if the last attempt failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// The outcome of a guarded write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// Written at this revision.
    Written(Revision),
    /// The key changed since it was read: re-read and decide again.
    Conflict,
    /// The writer's leadership is over: it must stop acting.
    Deposed,
}

/// The status key prefix, `/metro/<cluster>/status/`.
pub fn status_prefix(keys: &ClusterKeys) -> String {
    let volumes = keys.volumes_prefix();
    let root = volumes
        .strip_suffix("volumes/")
        .expect("ClusterKeys puts volumes under <root>volumes/");
    format!("{root}status/")
}

/// The status key of volume `name`.
pub fn status_key(keys: &ClusterKeys, name: &str) -> String {
    format!("{}{name}", status_prefix(keys))
}

/// A view as read, with what writing back needs.
#[derive(Clone, Debug, Default)]
pub struct LoadedView {
    pub view: ClusterView,
    /// Each volume record's `mod_revision` as read (the CAS guard).
    pub volume_revisions: BTreeMap<String, Revision>,
    /// Published statuses, by volume.
    pub statuses: BTreeMap<String, VolumeStatusRecord>,
    /// Keys whose value did not decode.
    pub malformed: Vec<String>,
}

/// Decodes every value under `prefix` into `T`, keyed by the rest of its key.
async fn load_prefix<M: MetaStore, T: for<'de> Deserialize<'de>>(
    membership: &M,
    prefix: &str,
    what: &'static str,
    malformed: &mut Vec<String>,
) -> Result<Vec<(String, T, KeyValue)>, MetaError> {
    let range = membership.range(prefix.as_bytes()).await?;
    let mut out = Vec::with_capacity(range.kvs.len());
    for kv in range.kvs {
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        let name = key.strip_prefix(prefix).unwrap_or(&key).to_owned();
        match decode::<T>(what, &kv.value) {
            Ok(record) => out.push((name, record, kv)),
            Err(_) => malformed.push(key),
        }
    }
    Ok(out)
}

/// Reads nodes, domains, volumes and statuses (`down_since_ms` is left
/// empty: the caller tracks downtime on its own clock).
pub async fn load_view<M: MetaStore>(
    membership: &M,
    keys: &ClusterKeys,
) -> Result<LoadedView, MetaError> {
    let mut loaded = LoadedView::default();
    let bad = &mut loaded.malformed;
    let prefix = keys.nodes_prefix();
    for (_, node, _) in load_prefix::<M, NodeInfo>(membership, &prefix, "node", bad).await? {
        loaded.view.nodes.insert(node.id, node);
    }
    let prefix = keys.domains_prefix();
    for (name, domain, _) in
        load_prefix::<M, DomainInfo>(membership, &prefix, "domain", bad).await?
    {
        loaded.view.domains.insert(name, domain);
    }
    let prefix = keys.volumes_prefix();
    for (name, record, kv) in
        load_prefix::<M, VolumeRecord>(membership, &prefix, "volume", bad).await?
    {
        loaded
            .volume_revisions
            .insert(name.clone(), kv.mod_revision);
        loaded.view.volumes.insert(name, record);
    }
    let prefix = status_prefix(keys);
    for (name, status, _) in
        load_prefix::<M, VolumeStatusRecord>(membership, &prefix, "status", bad).await?
    {
        loaded.statuses.insert(name, status);
    }
    Ok(loaded)
}

/// Interprets a failed guarded transaction whose compares were
/// `[record, fence]` (fence optional, last).
fn failed_outcome(fence: Option<&Leadership>, current: &[Option<KeyValue>]) -> CasOutcome {
    if let Some(fence) = fence {
        let compare = fence.fence();
        if !compare.holds(current.last().and_then(Option::as_ref)) {
            return CasOutcome::Deposed;
        }
    }
    CasOutcome::Conflict
}

/// Writes `ops` if `key` is still at `revision` (0: absent) and, if given,
/// the leadership still holds.
pub async fn guarded_write<M: MetaStore>(
    membership: &M,
    key: &str,
    revision: Revision,
    fence: Option<&Leadership>,
    ops: Vec<TxnOp>,
) -> Result<CasOutcome, MetaError> {
    let mut compares = vec![Compare::mod_revision(key.as_bytes().to_vec(), revision)];
    compares.extend(fence.map(Leadership::fence));
    let result = membership.txn(compares, ops).await?;
    if result.succeeded {
        Ok(CasOutcome::Written(result.revision))
    } else {
        Ok(failed_outcome(fence, &result.current))
    }
}

/// Writes a volume record (and optionally its status) if the record is
/// still at `revision` and `leadership` holds.
pub async fn write_volume<M: MetaStore>(
    membership: &M,
    keys: &ClusterKeys,
    leadership: &Leadership,
    revision: Revision,
    record: &VolumeRecord,
    status: Option<&VolumeStatusRecord>,
) -> Result<CasOutcome, MetaError> {
    let name = &record.spec.name;
    let key = keys.volume(name);
    let mut ops = vec![put_op(&key, encode(record))];
    if let Some(status) = status {
        ops.push(put_op(&status_key(keys, name), encode(status)));
    }
    guarded_write(membership, &key, revision, Some(leadership), ops).await
}

/// Publishes a volume's status if `leadership` still holds.
pub async fn write_status<M: MetaStore>(
    membership: &M,
    keys: &ClusterKeys,
    leadership: &Leadership,
    name: &str,
    status: &VolumeStatusRecord,
) -> Result<CasOutcome, MetaError> {
    let ops = vec![put_op(&status_key(keys, name), encode(status))];
    let result = membership.txn(vec![leadership.fence()], ops).await?;
    Ok(if result.succeeded {
        CasOutcome::Written(result.revision)
    } else {
        CasOutcome::Deposed
    })
}

/// Whether `leadership` still holds (a fenced no-op transaction).
pub async fn still_leader<M: MetaStore>(
    membership: &M,
    leadership: &Leadership,
) -> Result<bool, MetaError> {
    let result = membership.txn(vec![leadership.fence()], Vec::new()).await?;
    Ok(result.succeeded)
}

fn put_op(key: &str, value: Vec<u8>) -> TxnOp {
    TxnOp::Put {
        key: key.as_bytes().to_vec(),
        value,
        lease: None,
    }
}

/// Activates or deactivates domain `name` with a compare-and-swap on its
/// record (re-reading after a conflict, up to [`DOMAIN_CAS_ATTEMPTS_MAX`]
/// times). Returns the record as written (or as found, if already so). The
/// coordinator honours the new state from its next round: placement skips
/// inactive domains, repair leaves their members alone, and health counts
/// them unhealthy.
pub async fn set_domain_state<M: MetaStore>(
    membership: &M,
    keys: &ClusterKeys,
    name: &str,
    state: DomainState,
) -> Result<DomainInfo, StoreError> {
    let key = keys.domain(name);
    for _ in 0..DOMAIN_CAS_ATTEMPTS_MAX {
        let kv = membership
            .get(key.as_bytes())
            .await?
            .ok_or_else(|| StoreError::UnknownDomain(name.to_owned()))?;
        let mut domain: DomainInfo = decode("domain", &kv.value)?;
        if domain.state == state {
            return Ok(domain);
        }
        domain.state = state;
        let ops = vec![put_op(&key, encode(&domain))];
        let outcome = guarded_write(membership, &key, kv.mod_revision, None, ops).await?;
        if let CasOutcome::Written(_) = outcome {
            return Ok(domain);
        }
    }
    Err(StoreError::Contended {
        key,
        attempts: DOMAIN_CAS_ATTEMPTS_MAX,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_keys_sit_beside_volumes() {
        let keys = ClusterKeys::new("east");
        assert_eq!(status_prefix(&keys), "/metro/east/status/");
        assert_eq!(status_key(&keys, "db"), "/metro/east/status/db");
    }
}
