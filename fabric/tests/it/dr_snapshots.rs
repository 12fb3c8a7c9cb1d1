//! DR snapshots on real openraft groups: three data hosts in one process
//! (tokio, in-memory transport and disks), snapshots of the Raft log every
//! few entries so that a lagging host catches up from an installed Raft
//! snapshot.
//!
//! 1. A DR snapshot taken after 40 writes keeps exactly those blocks while
//!    the volume is overwritten and trimmed: every host records and holds
//!    it (from its own log, or shipped with a Raft snapshot), reads
//!    through any host get it.
//! 2. Taking a taken id or deleting an unknown one is refused, alike.
//! 3. A host cut off while many entries (and a second DR snapshot) are
//!    written catches up from a Raft snapshot: the transfer ships both DR
//!    snapshots' blocks (each as its diff from the one before), so it holds
//!    both and serves them on its own, everyone else cut off.
//! 4. A host holding a snapshot, restarted from its disk (unsynced writes
//!    dropped), still serves it on its own (everyone else cut off).
//! 5. A deleted snapshot is gone from every host's catalogue.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{HostSlot, MemNet, TestHost, eventually, start_host_with};
use metro_fabric::host::{HostConfig, HostError};
use metro_fabric::volume::{BLOCK_BYTES, BlockData, VolumeId, VolumeResponse};
use metro_kvstore::{CrashMode, FaultyDisk};
use openraft::rt::WatchReceiver as _;

const NODES: [u64; 3] = [1, 2, 3];
const VOLUME: VolumeId = VolumeId(9);
const SIZE_BLOCKS: u64 = 512;
const WAIT: Duration = Duration::from_secs(40);

fn config(id: u64) -> HostConfig {
    common::snapshotting_config(id, NODES, 20)
}

/// Block `index` of generation `generation`: never all zeroes.
fn block(index: u64, generation: u8) -> Vec<u8> {
    let mut bytes = vec![generation; BLOCK_BYTES];
    bytes[..8].copy_from_slice(&index.to_le_bytes());
    bytes
}

async fn retry<V, F, Fut>(what: &str, op: F) -> V
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<V, HostError>>,
{
    common::retry_host(what, WAIT, op).await
}

async fn write(host: &TestHost, index: u64, generation: u8) -> u64 {
    let data = BlockData::new(block(index, generation)).expect("one block");
    retry("write", || host.write(VOLUME, index, data.clone())).await
}

/// Every non-zero block of snapshot `id`, read page by page through `host`.
async fn read_snapshot(host: &TestHost, id: u64) -> BTreeMap<u64, Vec<u8>> {
    let mut blocks = BTreeMap::new();
    let mut from = Some(0);
    while let Some(at) = from {
        let page = retry("read snapshot", || host.read_snapshot(VOLUME, id, at, 7)).await;
        assert_eq!(
            page.indexes.len(),
            page.data.as_ref().map_or(0, |d| d.block_count() as usize)
        );
        if let Some(data) = &page.data {
            for (index, bytes) in page.indexes.iter().zip(data.blocks()) {
                assert!(blocks.insert(*index, bytes.to_vec()).is_none());
            }
        }
        assert!(page.next.is_none_or(|next| next > at), "pages advance");
        from = page.next;
    }
    blocks
}

fn generation_map(range: std::ops::Range<u64>, generation: u8) -> BTreeMap<u64, Vec<u8>> {
    range.map(|i| (i, block(i, generation))).collect()
}

async fn applied(host: &TestHost) -> u64 {
    host.status(VOLUME)
        .await
        .ok()
        .and_then(|s| s.applied_index)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dr_snapshots_are_replicated_pinned_and_served_by_holders() {
    let net = MemNet::<HostSlot>::new();
    let disks: Vec<FaultyDisk> = NODES.iter().map(|id| FaultyDisk::new(*id)).collect();
    let mut hosts: Vec<Arc<TestHost>> = NODES
        .iter()
        .zip(&disks)
        .map(|(id, disk)| start_host_with(&net, *id, disk, config(*id)))
        .collect();
    hosts[0]
        .create_volume(VOLUME, SIZE_BLOCKS, &NODES)
        .await
        .expect("create");

    // 1. Snapshot 7 after generation 1 of blocks 0..40.
    for i in 0..40 {
        write(&hosts[0], i, 1).await;
    }
    let taken_at = retry("snapshot", || hosts[1].create_snapshot(VOLUME, 7)).await;
    for i in 0..20 {
        write(&hosts[0], i, 2).await;
    }
    retry("trim", || hosts[0].trim(VOLUME, 30, 10)).await;
    let last = write(&hosts[0], 100, 2).await;
    // Every host records and holds it: from its own log, or shipped with a
    // Raft snapshot when it fell behind the leader's purged log.
    let mut holders = 0;
    for host in &hosts {
        eventually("applied everywhere", WAIT, || async {
            (applied(host).await >= last).then_some(())
        })
        .await;
        let catalogue = host.snapshots_here(VOLUME).await.expect("catalogue");
        let record = catalogue.get(7).expect("snapshot 7 recorded");
        assert_eq!(
            (record.log_index, record.size_blocks),
            (taken_at, SIZE_BLOCKS)
        );
        holders += usize::from(record.pinned.is_some());
    }
    assert_eq!(holders, 3, "every host holds snapshot 7");
    let expected_7 = generation_map(0..40, 1);
    for host in &hosts {
        assert_eq!(
            read_snapshot(host, 7).await,
            expected_7,
            "host {}",
            host.node()
        );
    }
    let live = retry("read", || hosts[2].read(VOLUME, 0, 1)).await;
    assert_eq!(live.as_bytes(), &block(0, 2)[..], "the volume moved on");

    // 2. Refusals are the state machine's, deterministic.
    match hosts[0].create_snapshot(VOLUME, 7).await {
        Err(HostError::Refused {
            response: VolumeResponse::SnapshotConflict { snapshot_id: 7 },
            ..
        }) => {}
        other => panic!("taking snapshot 7 twice: {other:?}"),
    }
    match hosts[0].delete_snapshot(VOLUME, 99).await {
        Err(HostError::Refused {
            response: VolumeResponse::SnapshotConflict { snapshot_id: 99 },
            ..
        }) => {}
        other => panic!("deleting unknown snapshot 99: {other:?}"),
    }

    // 3. Host 3 misses 150 entries, snapshot 8 among them, and catches up
    //    from a Raft snapshot.
    let lagging = 2;
    let lagging_had = applied(&hosts[lagging]).await;
    net.set_cut_off(NODES[lagging], true);
    for i in 0..75 {
        write(&hosts[0], 200 + i, 3).await;
    }
    retry("snapshot", || hosts[0].create_snapshot(VOLUME, 8)).await;
    let mut last = 0;
    for i in 0..75 {
        last = write(&hosts[0], 200 + i, 4).await;
    }
    let purged = eventually("the leader purged past the lagging host", WAIT, || async {
        let leader = hosts[0].status(VOLUME).await.ok()?.leader?;
        let raft = hosts.iter().find(|h| h.node() == leader)?.raft(VOLUME)?;
        let metrics = raft.metrics().borrow_watched().clone();
        metrics.purged.filter(|p| p.index > lagging_had + 1)
    })
    .await;
    net.set_cut_off(NODES[lagging], false);
    eventually("the lagging host caught up", WAIT, || async {
        (applied(&hosts[lagging]).await >= last).then_some(())
    })
    .await;
    let catalogue = hosts[lagging]
        .snapshots_here(VOLUME)
        .await
        .expect("catalogue");
    let ids: Vec<u64> = catalogue.iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![7, 8], "purged at {purged:?}");
    assert!(
        catalogue.iter().all(|s| s.pinned.is_some()),
        "the lagging host holds both: {catalogue:?}"
    );
    let expected_8: BTreeMap<u64, Vec<u8>> = generation_map(0..20, 2)
        .into_iter()
        .chain(generation_map(20..30, 1))
        .chain([(100, block(100, 2))])
        .chain(generation_map(200..275, 3))
        .collect();
    for host in &hosts {
        assert_eq!(
            read_snapshot(host, 7).await,
            expected_7,
            "host {}",
            host.node()
        );
        assert_eq!(
            read_snapshot(host, 8).await,
            expected_8,
            "host {}",
            host.node()
        );
    }
    // The caught-up host serves both on its own.
    let others: Vec<u64> = NODES
        .iter()
        .copied()
        .filter(|n| *n != NODES[lagging])
        .collect();
    for other in &others {
        net.set_cut_off(*other, true);
    }
    assert_eq!(read_snapshot(&hosts[lagging], 7).await, expected_7);
    assert_eq!(read_snapshot(&hosts[lagging], 8).await, expected_8);
    for other in &others {
        net.set_cut_off(*other, false);
    }
    // A snapshot taken now is pinned on the caught-up host too.
    retry("snapshot", || hosts[0].create_snapshot(VOLUME, 9)).await;
    eventually("snapshot 9 pinned on the caught-up host", WAIT, || async {
        let catalogue = hosts[lagging].snapshots_here(VOLUME).await.ok()?;
        catalogue.get(9)?.pinned.map(|_| ())
    })
    .await;

    // 4. A host holding snapshot 7 restarts from its disk alone and serves
    //    it with everyone else cut off.
    let mut holder = None;
    for (i, host) in hosts.iter().enumerate() {
        let catalogue = host.snapshots_here(VOLUME).await.expect("catalogue");
        if catalogue.get(7).and_then(|s| s.pinned).is_some() {
            holder = Some(i);
        }
    }
    let h = holder.expect("some host holds snapshot 7");
    hosts[h].shutdown().await;
    disks[h].crash(CrashMode::DropUnsynced);
    hosts[h] = start_host_with(&net, NODES[h], &disks[h], config(NODES[h]));
    assert_eq!(hosts[h].open_existing().await.expect("reopen"), 1);
    let record = hosts[h].snapshots_here(VOLUME).await.expect("catalogue");
    assert!(record.get(7).and_then(|s| s.pinned).is_some(), "pin kept");
    let others: Vec<u64> = NODES.iter().copied().filter(|n| *n != NODES[h]).collect();
    for other in &others {
        net.set_cut_off(*other, true);
    }
    assert_eq!(read_snapshot(&hosts[h], 7).await, expected_7);
    for other in &others {
        net.set_cut_off(*other, false);
    }

    // 5. Deleting snapshot 7 removes it everywhere.
    retry("delete", || hosts[1].delete_snapshot(VOLUME, 7)).await;
    for host in &hosts {
        eventually("snapshot 7 gone", WAIT, || async {
            let catalogue = host.snapshots_here(VOLUME).await.ok()?;
            (catalogue.get(7).is_none() && catalogue.len() == 2).then_some(())
        })
        .await;
    }
    match hosts[2].read_snapshot(VOLUME, 7, 0, 8).await {
        Err(HostError::Failed { reason, .. }) => assert!(reason.contains("snapshot 7"), "{reason}"),
        other => panic!("reading a deleted snapshot: {other:?}"),
    }
}
