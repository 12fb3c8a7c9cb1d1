//! Three openraft nodes of one volume group in one process, on the tokio
//! runtime, each on its own kvstore (in-memory `FaultyDisk`), talking only
//! through encoded frames over an in-memory `Transport`: election, forwarded
//! client writes and reads, redirects, re-election after the leader is cut
//! off, a snapshot streamed in pieces to a new learner, and a node restarting
//! from its kvstore after a crash that drops unsynced writes.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{MemNet, MemTransport, Rt, VOLUME_BLOCKS, open_storage};
use metro_fabric::env::NodeId;
use metro_fabric::raft::network::{NetworkFactory, forward_client};
use metro_fabric::raft::router::GroupRouter;
use metro_fabric::raft::types::{RaftNode, VolumeRaft};
use metro_fabric::storage::{VolumeHandle, VolumeStateMachine};
use metro_fabric::volume::{BLOCK_BYTES, BlockData, VolumeCommand, VolumeId, VolumeResponse};
use metro_fabric::wire::{ClientReply, ClientRequest};
use metro_kvstore::{CrashMode, FaultyDisk};
use openraft::Config;

type Sm = VolumeStateMachine<Rt>;
type Router = GroupRouter<Rt, Sm>;
type Net = MemNet<Router>;

const VOLUME: VolumeId = VolumeId(7);
const WAIT: Duration = Duration::from_secs(10);
const REDIRECTS_MAX: usize = 200;
const RETRY_PAUSE: Duration = Duration::from_millis(25);

struct Node {
    raft: VolumeRaft<Rt, Sm>,
    volume: VolumeHandle,
    transport: MemTransport<Router>,
    router: Arc<Router>,
    disk: FaultyDisk,
}

impl Node {
    fn block(&self, index: u64) -> Vec<u8> {
        self.volume.block(index).expect("block reads")
    }
}

fn config() -> Arc<Config> {
    let config = Config {
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        max_in_snapshot_log_to_keep: 0,
        ..Default::default()
    };
    Arc::new(config.validate().expect("valid config"))
}

/// Starts node `id` on `disk` (recovering whatever the disk holds).
async fn start_on(net: &Arc<Net>, id: NodeId, disk: FaultyDisk, router: Arc<Router>) -> Node {
    net.register(id, Arc::clone(&router));
    let transport = Arc::new(MemTransport {
        node: id,
        net: Arc::clone(net),
    });
    let storage = open_storage(Arc::new(disk.clone()));
    let (log, sm) = storage
        .open_group::<Rt>(VOLUME, VOLUME_BLOCKS)
        .expect("group storage opens");
    let volume = sm.handle();
    let network = NetworkFactory::<_, Rt>::new(transport, VOLUME);
    let raft = VolumeRaft::<Rt, Sm>::new(id, config(), network, log, sm)
        .await
        .expect("raft starts");
    router.insert(VOLUME, raft.clone());
    Node {
        raft,
        volume,
        transport: MemTransport {
            node: id,
            net: Arc::clone(net),
        },
        router,
        disk,
    }
}

async fn start_node(net: &Arc<Net>, id: NodeId) -> Node {
    start_on(net, id, FaultyDisk::new(id), Arc::new(Router::new())).await
}

fn member(id: NodeId) -> RaftNode {
    RaftNode {
        addr: format!("node-{id}"),
    }
}

fn pattern(seed: u8, blocks: usize) -> BlockData {
    let bytes = (0..blocks * BLOCK_BYTES)
        .map(|i| (i as u8) ^ seed)
        .collect::<Vec<u8>>();
    BlockData::new(bytes).expect("whole blocks")
}

async fn leader_of(nodes: &BTreeMap<NodeId, Node>, among: &[NodeId]) -> NodeId {
    let first = &nodes[&among[0]].raft;
    let metrics = first
        .wait(Some(WAIT))
        .metrics(
            |m| m.current_leader.is_some_and(|l| among.contains(&l)),
            "a leader among the live nodes",
        )
        .await
        .expect("leader elected");
    metrics.current_leader.expect("leader known")
}

/// Sends `request` from `via` to whoever it believes leads, following
/// redirects; while no leader is known (or the leader's lease is not yet
/// established) it waits and retries.
async fn client(
    nodes: &BTreeMap<NodeId, Node>,
    via: NodeId,
    request: ClientRequest,
) -> ClientReply {
    let mut target = via;
    for _ in 0..REDIRECTS_MAX {
        let transport = &nodes[&via].transport;
        let reply = forward_client::<_, Rt>(transport, target, VOLUME, request.clone())
            .await
            .expect("client call");
        match reply {
            ClientReply::Redirect {
                leader: Some(leader),
            } => target = leader,
            ClientReply::Redirect { leader: None } => {
                tokio::time::sleep(RETRY_PAUSE).await;
                target = via;
            }
            other => return other,
        }
    }
    panic!("no leader answered");
}

async fn write(
    nodes: &BTreeMap<NodeId, Node>,
    via: NodeId,
    offset_blocks: u64,
    data: BlockData,
) -> u64 {
    let command = VolumeCommand::Write {
        offset_blocks,
        data,
    };
    match client(nodes, via, ClientRequest::Command(command)).await {
        ClientReply::Applied {
            log_index,
            response: VolumeResponse::Applied,
        } => log_index,
        other => {
            for (id, node) in nodes {
                eprintln!(
                    "node {id}: {:?}",
                    openraft::async_runtime::watch::WatchReceiver::borrow_watched(
                        &node.raft.metrics()
                    )
                    .clone()
                );
            }
            panic!("write not applied: {other:?}")
        }
    }
}

async fn wait_applied(nodes: &BTreeMap<NodeId, Node>, ids: &[NodeId], index: u64) {
    for id in ids {
        nodes[id]
            .raft
            .wait(Some(WAIT))
            .applied_index_at_least(Some(index), "replica applied")
            .await
            .expect("replica catches up");
    }
}

async fn three_nodes(net: &Arc<Net>) -> BTreeMap<NodeId, Node> {
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, start_node(net, id).await);
    }
    let members: BTreeMap<NodeId, RaftNode> = (1..=3).map(|id| (id, member(id))).collect();
    nodes[&1]
        .raft
        .initialize(members)
        .await
        .expect("initializes");
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elects_and_commits_through_the_wire() {
    let net = Net::new();
    let nodes = three_nodes(&net).await;
    let leader = leader_of(&nodes, &[1, 2, 3]).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");

    // A client request sent to a follower is redirected to the leader.
    let trim = ClientRequest::Command(VolumeCommand::Trim {
        offset_blocks: 0,
        len_blocks: 1,
    });
    let transport = &nodes[&follower].transport;
    // A follower that has not yet heard from the new leader answers
    // "no leader known"; it must learn it within a few heartbeats.
    let mut reply = ClientReply::Redirect { leader: None };
    for _ in 0..100 {
        reply = forward_client::<_, Rt>(transport, follower, VOLUME, trim.clone())
            .await
            .expect("call");
        if reply != (ClientReply::Redirect { leader: None }) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        reply,
        ClientReply::Redirect {
            leader: Some(leader)
        }
    );

    for i in 0..5u64 {
        write(&nodes, follower, i * 3, pattern(i as u8 + 1, 3)).await;
    }
    let zeroes = ClientRequest::Command(VolumeCommand::WriteZeroes {
        offset_blocks: 1,
        len_blocks: 1,
    });
    assert!(matches!(
        client(&nodes, follower, zeroes).await,
        ClientReply::Applied { .. }
    ));
    let past_end = ClientRequest::Command(VolumeCommand::Trim {
        offset_blocks: VOLUME_BLOCKS,
        len_blocks: 1,
    });
    let last = match client(&nodes, follower, past_end).await {
        ClientReply::Applied {
            log_index,
            response,
        } => {
            assert!(matches!(response, VolumeResponse::OutOfRange { .. }));
            log_index
        }
        other => panic!("unexpected {other:?}"),
    };
    wait_applied(&nodes, &[1, 2, 3], last).await;

    let expected = pattern(5, 3);
    for node in nodes.values() {
        assert_eq!(node.block(12), &expected.as_bytes()[..BLOCK_BYTES]);
        assert_eq!(node.block(1), vec![0; BLOCK_BYTES]);
    }
    let read = ClientRequest::Read {
        offset_blocks: 12,
        len_blocks: 3,
    };
    assert_eq!(
        client(&nodes, follower, read).await,
        ClientReply::Read(expected)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_leader_loss_and_ships_snapshot_to_learner() {
    let net = Net::new();
    let mut nodes = three_nodes(&net).await;
    let old_leader = leader_of(&nodes, &[1, 2, 3]).await;
    let survivors: Vec<NodeId> = (1..=3).filter(|id| *id != old_leader).collect();
    write(&nodes, survivors[0], 0, pattern(9, 2)).await;

    // Cut the leader off: the survivors elect a new one and keep committing.
    net.set_cut_off(old_leader, true);
    let new_leader = leader_of(&nodes, &survivors).await;
    assert_ne!(new_leader, old_leader);
    // 300 blocks (1.2 MiB) so that the snapshot travels in several chunks.
    let big = pattern(3, 300);
    let last = write(&nodes, survivors[0], 100, big.clone()).await;
    wait_applied(&nodes, &survivors, last).await;

    // Snapshot and purge the log, so a new learner can only catch up from
    // the snapshot.
    let raft = nodes[&new_leader].raft.clone();
    raft.trigger().snapshot().await.expect("snapshot triggered");
    raft.wait(Some(WAIT))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= last),
            "snapshot built",
        )
        .await
        .expect("snapshot built");
    raft.trigger()
        .purge_log(last)
        .await
        .expect("purge triggered");
    raft.wait(Some(WAIT))
        .metrics(|m| m.purged.is_some_and(|p| p.index >= last), "log purged")
        .await
        .expect("log purged");

    nodes.insert(4, start_node(&net, 4).await);
    raft.add_learner(4, member(4), true)
        .await
        .expect("learner added");
    wait_applied(&nodes, &[4], last).await;
    assert_eq!(
        nodes[&4].block(100 + 299),
        &big.as_bytes()[299 * BLOCK_BYTES..]
    );
    assert_eq!(nodes[&4].block(0), &pattern(9, 2).as_bytes()[..BLOCK_BYTES]);

    // The old leader comes back and catches up as a follower.
    net.set_cut_off(old_leader, false);
    wait_applied(&nodes, &[old_leader], last).await;
    assert_eq!(nodes[&old_leader].block(150), nodes[&new_leader].block(150));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_keeps_every_committed_write() {
    let net = Net::new();
    let mut nodes = three_nodes(&net).await;
    let leader = leader_of(&nodes, &[1, 2, 3]).await;
    let mut written = Vec::new();
    let mut last = 0;
    for i in 0..8u64 {
        let data = pattern(i as u8 + 20, 2);
        last = write(&nodes, leader, i * 10, data.clone()).await;
        written.push((i * 10, data));
    }
    let trim = ClientRequest::Command(VolumeCommand::Trim {
        offset_blocks: 10,
        len_blocks: 2,
    });
    if let ClientReply::Applied { log_index, .. } = client(&nodes, leader, trim).await {
        last = log_index;
    }
    wait_applied(&nodes, &[1, 2, 3], last).await;

    // Restart every node in turn, the leader last: stop its Raft, lose the
    // unsynced writes of its disk, reopen its store.
    let mut order: Vec<NodeId> = (1..=3).filter(|id| *id != leader).collect();
    order.push(leader);
    for id in order {
        let node = nodes.remove(&id).expect("node");
        node.router.remove(VOLUME);
        node.raft.shutdown().await.expect("raft stops");
        node.disk.crash(CrashMode::DropUnsynced);
        let restarted = start_on(&net, id, node.disk.clone(), Arc::clone(&node.router)).await;
        drop(node);
        nodes.insert(id, restarted);
        leader_of(&nodes, &[1, 2, 3]).await;
        wait_applied(&nodes, &[id], last).await;
        for (offset, data) in &written {
            let expected = if *offset == 10 {
                vec![0; BLOCK_BYTES]
            } else {
                data.as_bytes()[BLOCK_BYTES..].to_vec()
            };
            assert_eq!(
                nodes[&id].block(offset + 1),
                expected,
                "node {id} block {}",
                offset + 1
            );
        }
    }
    // The group still commits and serves linearizable reads.
    let leader = leader_of(&nodes, &[1, 2, 3]).await;
    write(&nodes, leader, 500, pattern(77, 1)).await;
    let read = ClientRequest::Read {
        offset_blocks: 500,
        len_blocks: 1,
    };
    assert_eq!(
        client(&nodes, leader, read).await,
        ClientReply::Read(pattern(77, 1))
    );
}
