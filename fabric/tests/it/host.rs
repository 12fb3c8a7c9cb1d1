//! Three [`VolumeHost`]s in one process on the tokio runtime, each on its
//! own kvstore (in-memory `FaultyDisk`), talking only through encoded
//! frames over the in-memory `Transport`: create (idempotent), writes
//! through every host (forwarded to the leader), linearizable reads from
//! every host, status digests, a client that is not a node, delete, and a
//! restart of every host from its disk.

use crate::common;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use common::{HostSlot, MemNet, MemTransport, Rt, TestHost, start_host};
use metro_fabric::env::{Lane, NodeId, Transport};
use metro_fabric::host::HostError;
use metro_fabric::raft::network::forward_client;
use metro_fabric::volume::{BLOCK_BYTES, BlockData, VolumeId};
use metro_fabric::wire::{ClientReply, ClientRequest, VolumeStatus};
use metro_kvstore::{CrashMode, FaultyDisk};

type Host = TestHost;
type Net = MemNet<HostSlot>;

const VOLUME: VolumeId = VolumeId(11);
const SIZE_BLOCKS: u64 = 4096;
const MEMBERS: [NodeId; 3] = [1, 2, 3];
/// A caller that is not a node of the cluster.
const CLIENT: NodeId = 1_000_001;
const WAIT: Duration = Duration::from_secs(45);
const RETRY_PAUSE: Duration = Duration::from_millis(50);

struct Node {
    host: Arc<Host>,
    disk: FaultyDisk,
}

fn start(net: &Arc<Net>, id: NodeId, disk: FaultyDisk) -> Node {
    let host = start_host(net, id, &disk, MEMBERS);
    Node { host, disk }
}

fn three_hosts(net: &Arc<Net>) -> Vec<Node> {
    MEMBERS
        .iter()
        .map(|id| start(net, *id, FaultyDisk::new(*id)))
        .collect()
}

fn pattern(index: u64) -> BlockData {
    let bytes = (0..BLOCK_BYTES)
        .map(|i| (i as u64 ^ index.wrapping_mul(0x9e37_79b9)) as u8)
        .collect();
    BlockData::new(bytes).expect("one block")
}

/// Retries `op` while no leader is known (elections after start-up).
async fn retry<F, Fut, V>(op: F) -> V
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<V, HostError>>,
{
    common::retry_host("operation", WAIT, op).await
}

/// Waits until every host has applied at least `index`, then returns their
/// statuses.
async fn converged(nodes: &[Node], index: u64) -> Vec<VolumeStatus> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut statuses = Vec::new();
        for node in nodes {
            statuses.push(node.host.status(VOLUME).await.expect("status"));
        }
        if statuses.iter().all(|s| s.applied_index >= Some(index)) {
            let first = statuses[0].applied_index;
            if statuses.iter().all(|s| s.applied_index == first) {
                return statuses;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no convergence: {statuses:?}"
        );
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

fn assert_identical(statuses: &[VolumeStatus], blocks: u64) {
    for status in statuses {
        assert_eq!(status.voters, MEMBERS.to_vec());
        assert_eq!(status.blocks_nonzero, blocks, "{status:?}");
        assert_eq!(status.digest, statuses[0].digest, "{statuses:?}");
    }
}

/// Writes block `i` through host `i % 3` for `i` in `range`; the last index.
async fn write_blocks(nodes: &[Node], range: std::ops::Range<u64>) -> u64 {
    let mut last = 0;
    for i in range {
        let host = &nodes[(i % 3) as usize].host;
        last = retry(|| host.write(VOLUME, i, pattern(i))).await;
    }
    last
}

async fn read_all(nodes: &[Node], range: std::ops::Range<u64>) {
    for node in nodes {
        for i in range.clone() {
            let host = &node.host;
            let data = retry(|| host.read(VOLUME, i, 1)).await;
            assert_eq!(data, pattern(i), "node {} block {i}", host.node());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_write_read_status_delete() {
    let net = Net::new();
    let nodes = three_hosts(&net);
    // Created through node 2; a repeat is a no-op.
    nodes[1]
        .host
        .create_volume(VOLUME, SIZE_BLOCKS, &MEMBERS)
        .await
        .expect("create");
    nodes[0]
        .host
        .create_volume(VOLUME, SIZE_BLOCKS, &MEMBERS)
        .await
        .expect("create again");
    let other_size = nodes[2].host.create_volume(VOLUME, 8, &MEMBERS).await;
    assert!(matches!(
        other_size,
        Err(HostError::Peer { .. } | HostError::Invalid(_))
    ));

    let last = write_blocks(&nodes, 0..60).await;
    read_all(&nodes, 0..60).await;
    let host = &nodes[2].host;
    retry(|| host.trim(VOLUME, 10, 2)).await;
    let last = last.max(retry(|| host.write_zeroes(VOLUME, 20, 1)).await);
    let zero = BlockData::new(vec![0; BLOCK_BYTES]).expect("block");
    assert_eq!(retry(|| nodes[0].host.read(VOLUME, 11, 1)).await, zero);
    assert_eq!(retry(|| nodes[1].host.read(VOLUME, 20, 1)).await, zero);
    let past_end = nodes[0].host.write(VOLUME, SIZE_BLOCKS, pattern(1)).await;
    assert!(
        matches!(past_end, Err(HostError::Refused { .. })),
        "{past_end:?}"
    );
    assert_identical(&converged(&nodes, last).await, 60 - 3);

    // A client (not a node) may use the client lane only, and gets its
    // operations forwarded to the leader by whichever node it reaches.
    let client = MemTransport {
        node: CLIENT,
        net: Arc::clone(&net),
    };
    let read = ClientRequest::Read {
        offset_blocks: 5,
        len_blocks: 1,
    };
    for node in MEMBERS {
        let reply = forward_client::<_, Rt>(&client, node, VOLUME, read.clone()).await;
        assert_eq!(reply.expect("client call"), ClientReply::Read(pattern(5)));
    }
    let raft_lane = client.call(1, Lane::Raft, vec![1, 2, 3]).await;
    assert!(raft_lane.is_err(), "a client on the Raft lane is refused");
    let drop = forward_client::<_, Rt>(&client, 1, VOLUME, ClientRequest::DropReplica).await;
    assert!(drop.is_err(), "replica control is refused to clients");

    // Delete through a node, then every replica is gone; recreating
    // starts empty.
    nodes[0].host.delete_volume(VOLUME).await.expect("delete");
    for node in &nodes {
        assert!(node.host.volumes().is_empty());
        assert!(matches!(
            node.host.status(VOLUME).await,
            Err(HostError::UnknownVolume(_))
        ));
    }
    nodes[0]
        .host
        .create_volume(VOLUME, SIZE_BLOCKS, &MEMBERS)
        .await
        .expect("recreate");
    assert_eq!(retry(|| nodes[2].host.read(VOLUME, 5, 1)).await, zero);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_host_restarts_from_its_disk() {
    let net = Net::new();
    let mut nodes = three_hosts(&net);
    nodes[0]
        .host
        .create_volume(VOLUME, SIZE_BLOCKS, &MEMBERS)
        .await
        .expect("create");
    let last = write_blocks(&nodes, 0..40).await;
    converged(&nodes, last).await;

    // Stop every host, drop what its disk did not sync, restart it from the
    // disk alone: the catalogue reopens the group.
    for i in 0..nodes.len() {
        let id = MEMBERS[i];
        nodes[i].host.shutdown().await;
        nodes[i].disk.crash(CrashMode::DropUnsynced);
        let restarted = start(&net, id, nodes[i].disk.clone());
        assert_eq!(restarted.host.open_existing().await.expect("reopen"), 1);
        nodes[i] = restarted;
    }
    read_all(&nodes, 0..40).await;
    let last = write_blocks(&nodes, 40..50).await;
    read_all(&nodes, 40..50).await;
    assert_identical(&converged(&nodes, last).await, 50);
}

/// A node without a replica forwards to the leader it remembers; after that
/// leader is cut off, its callers' retries reach the new leader through the
/// surviving nodes within the retry budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_replica_follows_a_new_leader() {
    let net = Net::new();
    let nodes = three_hosts(&net);
    nodes[0]
        .host
        .create_volume(VOLUME, SIZE_BLOCKS, &MEMBERS)
        .await
        .expect("create");
    // The outsider's first peer leads: after it is cut off, every peer the
    // outsider asks first is the dead one unless it learns to ask it last
    // (this hung the outsider's retries for the whole budget once).
    let first_peer = MEMBERS[0];
    let raft = nodes[0].host.raft(VOLUME).expect("a replica on node 1");
    let deadline = tokio::time::Instant::now() + WAIT;
    while retry(|| nodes[0].host.status(VOLUME)).await.leader != Some(first_peer) {
        assert!(tokio::time::Instant::now() < deadline, "node 1 never led");
        let _ = raft.trigger().elect(false).await;
        tokio::time::sleep(RETRY_PAUSE * 5).await;
    }
    let outsider = start_host(&net, 4, &FaultyDisk::new(4), MEMBERS);
    retry(|| outsider.write(VOLUME, 1, pattern(1))).await;
    net.set_cut_off(first_peer, true);
    // Within the retry budget, through the surviving majority.
    retry(|| outsider.write(VOLUME, 2, pattern(2))).await;
    assert_eq!(retry(|| outsider.read(VOLUME, 2, 1)).await, pattern(2));
}
