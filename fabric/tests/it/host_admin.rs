//! `GroupAdmin` for `VolumeHost` on real openraft groups: four hosts in one
//! process (tokio, in-memory transport, in-memory disks). A group is
//! created on three, written to, one member is cut off, and a follower asks
//! for its replacement, which it forwards to the leader; the leader
//! replaces it by the fourth host (learner, catch-up, joint change that
//! removes the dead voter); the new member ends up a voter with identical
//! data, and the leader reports the new members in sync. Then group changes
//! are fenced: a change computed from voters the group no longer has is
//! refused with the group's voters (and applied when the planted bug is on),
//! and a learner left by a failed repair is removed by the leader once it
//! has been one for the orphan grace.

use crate::common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::{HostSlot, MemNet, TestHost, eventually, start_host, start_host_with};
use metro_fabric::control::{AdminError, GroupAdmin, Member, MemberRole, Placement, VolumeSpec};
use metro_fabric::env::NodeId;
use metro_fabric::host::HostConfig;
use metro_fabric::raft::types::RaftNode;
use metro_fabric::volume::{BLOCK_BYTES, BlockData, VolumeId};
use metro_kvstore::FaultyDisk;

type Host = TestHost;
type Net = MemNet<HostSlot>;

const NODES: [NodeId; 5] = [1, 2, 3, 4, 5];
const SIZE_BLOCKS: u64 = 256;
const BLOCKS_WRITTEN: u64 = 16;
const WAIT: Duration = Duration::from_secs(30);

fn start(net: &Arc<Net>, id: NodeId) -> Arc<Host> {
    start_host(net, id, &FaultyDisk::new(id), NODES)
}

fn placement(nodes: &[NodeId]) -> Placement {
    let members = nodes
        .iter()
        .map(|node| Member {
            node: *node,
            domain: format!("site-{node}"),
            role: MemberRole::Data,
        })
        .collect();
    Placement { members }
}

fn block(index: u64) -> BlockData {
    BlockData::new(vec![index as u8 + 1; BLOCK_BYTES]).expect("one block")
}

fn spec() -> VolumeSpec {
    VolumeSpec {
        name: "db".into(),
        id: 21,
        size_bytes: SIZE_BLOCKS * BLOCK_BYTES as u64,
        replicas: 3,
    }
}

/// Creates the group on 1, 2, 3, writes to it, cuts 3 off and has a
/// follower ask for 3's replacement by 4; the leader.
async fn replace_three_by_four(net: &Arc<Net>, hosts: &[Arc<Host>]) -> NodeId {
    let spec = spec();
    let volume = VolumeId(spec.id);
    let before = placement(&[1, 2, 3]);
    hosts[0].create_group(&spec, &before).await.expect("create");
    hosts[0]
        .create_group(&spec, &before)
        .await
        .expect("idempotent");
    for i in 0..BLOCKS_WRITTEN {
        eventually("a write", WAIT, || async {
            hosts[0].write(volume, i, block(i)).await.ok()
        })
        .await;
    }
    net.set_cut_off(3, true);
    let leader = eventually("a leader that is not node 3", WAIT, || async {
        let status = hosts[0].status(volume).await.ok()?;
        status.leader.filter(|leader| *leader != 3)
    })
    .await;
    let follower = &hosts[if leader == 1 { 1 } else { 0 }];
    // A follower forwards the change to the leader (once: the leader runs
    // it itself).
    eventually("the replacement, asked of a follower", WAIT, || async {
        follower.replace_member(&spec, &before, 3, 4).await.ok()
    })
    .await;
    leader
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_replaces_a_dead_member() {
    let net = MemNet::new();
    let hosts: Vec<Arc<Host>> = NODES.iter().map(|id| start(&net, *id)).collect();
    let spec = spec();
    let volume = VolumeId(spec.id);
    let leader = replace_three_by_four(&net, &hosts).await;
    let admin = &hosts[leader as usize - 1];

    let after = placement(&[1, 2, 4]);
    let expected: BTreeSet<NodeId> = after.nodes().collect();
    eventually("1, 2, 4 in sync", WAIT, || async {
        let in_sync = admin.in_sync(&spec, &after).await.ok()?;
        (in_sync == expected).then_some(())
    })
    .await;
    let statuses = eventually("identical replicas on 1, 2, 4", WAIT, || async {
        let mut statuses = Vec::new();
        for node in [1, 2, 4] {
            statuses.push(hosts[node as usize - 1].status(volume).await.ok()?);
        }
        let same = statuses.iter().all(|s| {
            s.applied_index == statuses[0].applied_index && s.digest == statuses[0].digest
        });
        same.then_some(statuses)
    })
    .await;
    for status in &statuses {
        assert_eq!(status.voters, vec![1, 2, 4], "{status:?}");
        assert!(status.learners.is_empty(), "{status:?}");
        assert_eq!(status.blocks_nonzero, BLOCKS_WRITTEN, "{status:?}");
    }
    admin
        .replace_member(&spec, &placement(&[1, 2, 3]), 3, 4)
        .await
        .expect("replacing again changes nothing");
    for host in &hosts {
        host.shutdown().await;
    }
}

/// A change computed from the voters before a repair (as a deposed
/// coordinator's late call would be) is refused by the leader and by a
/// follower forwarding it, with the group's voters, and changes nothing;
/// with the planted bug the leader applies it and drops the repaired member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_group_change_is_refused() {
    let net = MemNet::new();
    let hosts: Vec<Arc<Host>> = NODES.iter().map(|id| start(&net, *id)).collect();
    let spec = spec();
    let volume = VolumeId(spec.id);
    let leader = replace_three_by_four(&net, &hosts).await;
    let admin = &hosts[leader as usize - 1];
    let follower = &hosts[if leader == 1 { 1 } else { 0 }];
    let stale = placement(&[1, 2, 3]);
    let repaired = BTreeSet::from([1, 2, 4]);
    for (who, host) in [("leader", admin), ("follower", follower)] {
        let refused = eventually("an answer from the leader", WAIT, || async {
            match host.replace_member(&spec, &stale, 3, 5).await {
                Err(error @ AdminError::Diverged { .. }) => Some(error),
                Err(AdminError::Retry { .. }) => None,
                other => panic!("{who}: a stale change must be refused, got {other:?}"),
            }
        })
        .await;
        assert_eq!(
            refused,
            AdminError::Diverged {
                volume: spec.name.clone(),
                voters: repaired.clone()
            },
            "{who}"
        );
    }
    let status = admin.status(volume).await.expect("status");
    assert_eq!(status.voters, vec![1, 2, 4], "nothing changed: {status:?}");
    assert!(status.learners.is_empty(), "{status:?}");

    admin.plant_unfenced_membership();
    eventually("the stale change, unfenced", WAIT, || async {
        admin.replace_member(&spec, &stale, 3, 5).await.ok()
    })
    .await;
    let status = admin.status(volume).await.expect("status");
    assert_eq!(
        status.voters,
        vec![1, 2, 5],
        "the planted bug lets the stale change drop the repaired member: {status:?}"
    );
    for host in &hosts {
        host.shutdown().await;
    }
}

/// The orphan grace of the collection test.
const GRACE: Duration = Duration::from_millis(800);

/// A learner a failed repair left (added to the group, never promoted) is
/// removed by the leader's health check once it has been one for the
/// grace, not before; the voters stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_learner_is_removed_after_the_grace() {
    let net = MemNet::new();
    let hosts: Vec<Arc<Host>> = NODES
        .iter()
        .map(|id| {
            let mut config = HostConfig::new(*id, NODES).expect("host config");
            config.orphan_grace_ms = GRACE.as_millis() as u64;
            start_host_with(&net, *id, &FaultyDisk::new(*id), config)
        })
        .collect();
    let spec = spec();
    let volume = VolumeId(spec.id);
    let members = placement(&[1, 2, 3]);
    hosts[0]
        .create_group(&spec, &members)
        .await
        .expect("create");
    hosts[4]
        .open_learner(volume, SIZE_BLOCKS)
        .await
        .expect("open");
    let node = RaftNode {
        addr: "node-5".into(),
    };
    // As the failed repair did: added on the leader, never promoted.
    let admin = eventually("the learner added on the leader", WAIT, || async {
        let leader = hosts[0].status(volume).await.ok()?.leader?;
        let admin = &hosts[leader as usize - 1];
        let raft = admin.raft(volume)?;
        raft.add_learner(5, node.clone(), true).await.ok()?;
        Some(admin)
    })
    .await;
    let learners = |status: metro_fabric::wire::VolumeStatus| status.learners;
    assert_eq!(learners(admin.status(volume).await.unwrap()), vec![5]);

    let first_check = tokio::time::Instant::now();
    let all = BTreeSet::from([1, 2, 3]);
    let in_sync = admin.in_sync(&spec, &members).await.expect("in sync");
    assert_eq!(in_sync, all, "the learner is no member");
    assert_eq!(
        learners(admin.status(volume).await.unwrap()),
        vec![5],
        "kept within the grace"
    );
    eventually("the orphan removed", WAIT, || async {
        admin.in_sync(&spec, &members).await.ok()?;
        let status = admin.status(volume).await.ok()?;
        status.learners.is_empty().then_some(())
    })
    .await;
    assert!(first_check.elapsed() >= GRACE, "not before the grace");
    let status = admin.status(volume).await.expect("status");
    assert_eq!(status.voters, vec![1, 2, 3], "{status:?}");
    for host in &hosts {
        host.shutdown().await;
    }
}
