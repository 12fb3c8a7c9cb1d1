//! Exactly-once client sessions on real openraft groups: three data hosts
//! in one process (tokio, in-memory transport and disks), a client using
//! `VolumeHost::register_session` and `VolumeHost::command_once`, groups
//! that snapshot (and purge their log) only when told to.
//!
//! What the tests prove:
//! 1. A request redelivered (same session and request number) after a
//!    later request wrote the same block is answered `Applied`, as the
//!    first delivery was, and changes nothing on any replica: the block
//!    keeps the later data. With the planted bug
//!    (`NodeStorage::plant_ignore_request_numbers`) the same scenario ends
//!    with the redelivered data, so the check can fail.
//! 2. The table survives a restart of every host from its disk alone
//!    (unsynced writes dropped, every log purged behind a snapshot): the
//!    redelivered requests, from before and after the snapshot, are still
//!    not applied, and the session goes on.
//! 3. A host that catches up from an installed Raft snapshot holds the
//!    sessions exactly as of the snapshot's last entry: the requests after
//!    it, replayed from the log, are applied there once (a table from later
//!    would skip them); as leader it does not apply again a request it
//!    knows of only from the snapshot.
//! 4. Past `SESSIONS_MAX` sessions the least recently active one (not the
//!    oldest) is evicted: its requests are refused `SessionExpired` and
//!    apply nothing. A request below its session's window is refused
//!    `RequestStale` and applies nothing. A request refused as out of range
//!    stays refused (unapplied) when redelivered after the volume grew.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::{HostSlot, MemNet, TestHost, eventually, start_host_with};
use metro_fabric::env::NodeId;
use metro_fabric::host::{HostConfig, HostError, RequestId};
use metro_fabric::limits::{SESSION_WINDOW_REQUESTS, SESSIONS_MAX};
use metro_fabric::volume::{BLOCK_BYTES, BlockData, VolumeCommand, VolumeId, VolumeResponse};
use metro_kvstore::{CrashMode, FaultyDisk};
use openraft::rt::WatchReceiver as _;

const NODES: [NodeId; 3] = [1, 2, 3];
const VOLUME: VolumeId = VolumeId(21);
const SIZE_BLOCKS: u64 = 256;
const WAIT: Duration = Duration::from_secs(40);
const PAUSE: Duration = Duration::from_millis(50);
/// The block written twice by one session.
const B: u64 = 7;
/// Another block written twice by the same session.
const C: u64 = 9;

/// A host configuration whose groups snapshot only when told to, then keep
/// no log behind the snapshot.
fn config(id: NodeId) -> HostConfig {
    let mut config = HostConfig::new(id, NODES).expect("host config");
    let mut raft = (*config.raft).clone();
    raft.snapshot_policy = openraft::SnapshotPolicy::Never;
    raft.max_in_snapshot_log_to_keep = 0;
    raft.purge_batch_size = 1;
    config.raft = Arc::new(raft.validate().expect("raft config"));
    config
}

/// Block `index` written with `fill`: never all zeroes.
fn block(index: u64, fill: u8) -> Vec<u8> {
    let mut bytes = vec![fill; BLOCK_BYTES];
    bytes[..8].copy_from_slice(&index.to_le_bytes());
    bytes
}

fn write(index: u64, fill: u8) -> VolumeCommand {
    VolumeCommand::Write {
        offset_blocks: index,
        data: BlockData::new(block(index, fill)).expect("one block"),
    }
}

struct Cluster {
    net: Arc<MemNet<HostSlot>>,
    disks: Vec<FaultyDisk>,
    hosts: Vec<Arc<TestHost>>,
}

impl Cluster {
    /// Three hosts and the volume on them; `planted`: every host's storage
    /// applies duplicate requests again.
    async fn start(planted: bool) -> Self {
        let net = MemNet::<HostSlot>::new();
        let disks: Vec<FaultyDisk> = NODES.iter().map(|id| FaultyDisk::new(*id)).collect();
        let hosts: Vec<Arc<TestHost>> = NODES
            .iter()
            .zip(&disks)
            .map(|(id, disk)| start_host_with(&net, *id, disk, config(*id)))
            .collect();
        if planted {
            for host in &hosts {
                host.storage().plant_ignore_request_numbers();
            }
        }
        hosts[0]
            .create_volume(VOLUME, SIZE_BLOCKS, &NODES)
            .await
            .expect("create");
        Self { net, disks, hosts }
    }

    fn host(&self, id: NodeId) -> &Arc<TestHost> {
        let i = NODES.iter().position(|n| *n == id).expect("a node");
        &self.hosts[i]
    }

    /// The leader as `asking` knows it.
    async fn leader(&self, asking: NodeId) -> NodeId {
        let host = self.host(asking);
        eventually("a leader", WAIT, || async {
            host.status(VOLUME).await.ok()?.leader
        })
        .await
    }

    /// Makes `id` the leader (it asks for votes until it leads).
    async fn make_leader(&self, id: NodeId) {
        let host = self.host(id);
        let raft = host.raft(VOLUME).expect("a replica");
        eventually("leadership moved", WAIT, || async {
            if host.status(VOLUME).await.ok()?.leader == Some(id) {
                return Some(());
            }
            let _ = raft.trigger().elect(false).await;
            tokio::time::sleep(PAUSE * 5).await;
            None
        })
        .await;
    }

    /// Waits until every host applied `index`.
    async fn applied_everywhere(&self, index: u64) {
        for host in &self.hosts {
            wait_applied(host, index).await;
        }
    }

    /// Block `index` of every host's own replica.
    async fn replica_blocks(&self, index: u64) -> Vec<Vec<u8>> {
        let mut blocks = Vec::new();
        for host in &self.hosts {
            blocks.push(replica_block(host, index).await);
        }
        blocks
    }

    /// Restarts every host from its disk alone (unsynced writes dropped).
    async fn restart_all(&mut self) {
        for (i, id) in NODES.iter().enumerate() {
            self.hosts[i].shutdown().await;
            self.disks[i].crash(CrashMode::DropUnsynced);
            self.hosts[i] = start_host_with(&self.net, *id, &self.disks[i], config(*id));
            assert_eq!(self.hosts[i].open_existing().await.expect("reopen"), 1);
        }
    }
}

async fn wait_applied(host: &TestHost, index: u64) {
    eventually("applied", WAIT, || async {
        let applied = host.status(VOLUME).await.ok()?.applied_index?;
        (applied >= index).then_some(())
    })
    .await;
}

async fn replica_block(host: &TestHost, index: u64) -> Vec<u8> {
    let handle = host.replica_handle(VOLUME).await.expect("a replica");
    handle.block(index).expect("block reads")
}

async fn register(host: &TestHost) -> u64 {
    common::retry_host("register", WAIT, || host.register_session(VOLUME)).await
}

/// Delivers request `request` of `session` through `host` (again while no
/// leader is known, as a client retries); the log index it was answered
/// `Applied` at, or the state machine's refusal.
async fn once(
    host: &TestHost,
    session: u64,
    request: u64,
    command: VolumeCommand,
) -> Result<u64, VolumeResponse> {
    let id = RequestId { session, request };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match host.command_once(VOLUME, id, command.clone()).await {
            Ok(index) => return Ok(index),
            Err(HostError::Refused { response, .. }) => return Err(response),
            Err(HostError::NoLeader(_) | HostError::Peer { .. } | HostError::Failed { .. })
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(PAUSE).await;
            }
            Err(err) => panic!("request {session}.{request}: {err}"),
        }
    }
}

/// Delivers a request that must be answered `Applied`; its log index.
async fn applied(host: &TestHost, session: u64, request: u64, command: VolumeCommand) -> u64 {
    once(host, session, request, command)
        .await
        .unwrap_or_else(|refused| panic!("request {session}.{request} refused: {refused:?}"))
}

/// Snapshots `host`'s replica (at or after `index`) and purges its log up
/// to the snapshot; the snapshot's index.
async fn snapshot_and_purge(host: &TestHost, index: u64) -> u64 {
    let raft = host.raft(VOLUME).expect("a replica");
    raft.trigger().snapshot().await.expect("snapshot triggered");
    let built = eventually("snapshot built", WAIT, || async {
        let metrics = raft.metrics().borrow_watched().clone();
        metrics.snapshot.map(|s| s.index).filter(|s| *s >= index)
    })
    .await;
    raft.trigger().purge_log(built).await.expect("purge");
    eventually("log purged", WAIT, || async {
        let metrics = raft.metrics().borrow_watched().clone();
        metrics.purged.filter(|p| p.index >= built).map(|_| ())
    })
    .await;
    built
}

/// Registers a session, runs W1 (request 1) then W2 (request 2) on block
/// `B` through two hosts, then delivers W1 again through a third: checks
/// the redelivery is answered `Applied`; block `B` of every replica.
async fn redelivery_after_a_later_write(planted: bool) -> Vec<Vec<u8>> {
    let cluster = Cluster::start(planted).await;
    let hosts = &cluster.hosts;
    let session = register(&hosts[0]).await;
    applied(&hosts[1], session, 1, write(B, 1)).await;
    applied(&hosts[2], session, 2, write(B, 2)).await;
    let again = once(&hosts[0], session, 1, write(B, 1)).await;
    let index = again.expect("a redelivery is answered as the first delivery: Applied");
    cluster.applied_everywhere(index).await;
    let read = common::retry_host("read", WAIT, || hosts[1].read(VOLUME, B, 1)).await;
    let replicas = cluster.replica_blocks(B).await;
    assert_eq!(
        read.as_bytes(),
        &replicas[0][..],
        "a read sees the replicas"
    );
    replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_request_is_answered_applied_and_not_applied_again() {
    for (i, held) in redelivery_after_a_later_write(false)
        .await
        .iter()
        .enumerate()
    {
        assert_eq!(held, &block(B, 2), "replica {i} keeps W2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignoring_request_numbers_lets_the_redelivery_overwrite_the_later_write() {
    for (i, held) in redelivery_after_a_later_write(true)
        .await
        .iter()
        .enumerate()
    {
        assert_eq!(
            held,
            &block(B, 1),
            "replica {i}: the planted bug reapplies W1"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_restart_of_every_host_from_its_disk() {
    let mut cluster = Cluster::start(false).await;
    let session = register(&cluster.hosts[0]).await;
    applied(&cluster.hosts[0], session, 1, write(B, 1)).await;
    let index = applied(&cluster.hosts[1], session, 2, write(B, 2)).await;
    // Every host snapshots and purges its log: what reopens comes from the
    // stored state machine, not from replaying the requests.
    cluster.applied_everywhere(index).await;
    for host in &cluster.hosts {
        snapshot_and_purge(host, index).await;
    }
    applied(&cluster.hosts[2], session, 3, write(C, 3)).await;
    let index = applied(&cluster.hosts[0], session, 4, write(C, 4)).await;
    cluster.applied_everywhere(index).await;

    cluster.restart_all().await;
    let mut last = 0;
    for (request, at, fill) in [(1, B, 1), (3, C, 3)] {
        let host = &cluster.hosts[request as usize % 3];
        let again = once(host, session, request, write(at, fill)).await;
        last = again.expect("a redelivery after the restart is answered Applied");
    }
    cluster.applied_everywhere(last).await;
    assert!(
        cluster
            .replica_blocks(B)
            .await
            .iter()
            .all(|b| *b == block(B, 2))
    );
    assert!(
        cluster
            .replica_blocks(C)
            .await
            .iter()
            .all(|b| *b == block(C, 4))
    );
    // The session goes on where it was.
    let last = applied(&cluster.hosts[1], session, 5, write(B, 5)).await;
    cluster.applied_everywhere(last).await;
    assert!(
        cluster
            .replica_blocks(B)
            .await
            .iter()
            .all(|b| *b == block(B, 5))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_caught_up_by_snapshot_holds_the_sessions_as_of_the_snapshot() {
    let cluster = Cluster::start(false).await;
    let leader = cluster.leader(NODES[0]).await;
    let lagging = *NODES.iter().find(|n| **n != leader).expect("a follower");
    let lead = cluster.host(leader);
    // The lagging host misses the whole session: it learns of requests 1
    // and 2 from the snapshot only, of 3 and 4 from the log after it.
    cluster.net.set_cut_off(lagging, true);
    let session = register(lead).await;
    applied(lead, session, 1, write(B, 1)).await;
    let index = applied(lead, session, 2, write(B, 2)).await;
    let snapshot = snapshot_and_purge(lead, index).await;
    let first_after = applied(lead, session, 3, write(C, 3)).await;
    assert!(first_after > snapshot, "request 3 follows the snapshot");
    let last = applied(lead, session, 4, write(C, 4)).await;
    cluster.net.set_cut_off(lagging, false);

    let caught_up = cluster.host(lagging);
    wait_applied(caught_up, last).await;
    let raft = caught_up.raft(VOLUME).expect("a replica");
    let metrics = raft.metrics().borrow_watched().clone();
    assert!(
        metrics.snapshot.is_some_and(|s| s.index >= snapshot),
        "caught up from the snapshot: {metrics:?}"
    );
    assert_eq!(replica_block(caught_up, B).await, block(B, 2));
    assert_eq!(
        replica_block(caught_up, C).await,
        block(C, 4),
        "requests after the snapshot are applied from the log"
    );

    // As leader it answers redeliveries of requests it knows of from the
    // snapshot (1) and from the log after it (3) without applying them.
    cluster.make_leader(lagging).await;
    let mut last = 0;
    for (request, at, fill) in [(1, B, 1), (3, C, 3)] {
        let again = once(caught_up, session, request, write(at, fill)).await;
        last = again.expect("a redelivery is answered Applied");
    }
    cluster.applied_everywhere(last).await;
    assert!(
        cluster
            .replica_blocks(B)
            .await
            .iter()
            .all(|b| *b == block(B, 2))
    );
    assert!(
        cluster
            .replica_blocks(C)
            .await
            .iter()
            .all(|b| *b == block(C, 4))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_bound_the_least_recently_active_session_expires() {
    let cluster = Cluster::start(false).await;
    // Registered on the leader itself: a registration retried after a
    // forwarding timeout may also be applied late, and the extra session
    // would take a slot (registrations are not deduplicated), shifting the
    // eviction this test checks (seen once in CI). (Moving leadership to a
    // chosen host instead timed out in CI: followers refuse votes while
    // the leader's lease holds.)
    let leader = cluster.leader(1).await;
    let host = cluster.host(leader);
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS_MAX {
        sessions.push(register(host).await);
    }
    // The oldest session becomes the most recently active: the second
    // oldest is now the least recently active, and is evicted.
    applied(host, sessions[0], 1, write(0, 1)).await;
    let newest = register(host).await;
    let expired = once(&cluster.hosts[1], sessions[1], 1, write(1, 1)).await;
    assert_eq!(
        expired,
        Err(VolumeResponse::SessionExpired {
            session: sessions[1]
        })
    );
    applied(host, sessions[2], 1, write(2, 1)).await;
    applied(host, newest, 1, write(3, 1)).await;

    // Request 2 was never delivered: once the window passed it, it is stale.
    let top = 2 + SESSION_WINDOW_REQUESTS;
    applied(host, sessions[0], top, write(0, 2)).await;
    for (request, at) in [(2, 5), (1, 0)] {
        assert_eq!(
            once(host, sessions[0], request, write(at, 1)).await,
            Err(VolumeResponse::RequestStale {
                session: sessions[0],
                request
            })
        );
    }
    // Out of range, then in range after the volume grew: still not applied.
    // (The redelivery's answer carries the volume's size now.)
    for grown in [false, true] {
        if grown {
            let resize = VolumeCommand::Resize {
                size_blocks: 2 * SIZE_BLOCKS,
            };
            common::retry_host("resize", WAIT, || host.command(VOLUME, resize.clone())).await;
        }
        let past_end = once(host, sessions[0], top + 1, write(SIZE_BLOCKS, 1)).await;
        assert!(
            matches!(past_end, Err(VolumeResponse::OutOfRange { .. })),
            "grown {grown}: {past_end:?}"
        );
    }
    let last = applied(host, sessions[0], top + 2, write(6, 1)).await;
    cluster.applied_everywhere(last).await;
    let zero = vec![0; BLOCK_BYTES];
    for (at, want) in [(0, block(0, 2)), (1, zero.clone()), (5, zero.clone())] {
        assert!(cluster.replica_blocks(at).await.iter().all(|b| *b == want));
    }
    assert!(
        cluster
            .replica_blocks(SIZE_BLOCKS)
            .await
            .iter()
            .all(|b| *b == zero)
    );
}
