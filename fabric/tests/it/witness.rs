//! Witness semantics on real openraft groups: data hosts 1 and 2 and a
//! witness host 3 in one process (tokio, in-memory transport and disks),
//! with snapshots every few entries so that logs get purged.
//!
//! 1. With everyone up, the witness purges its log behind the leader's log
//!    floor (it does purge: its log does not grow without bound).
//! 2. Host 1 is cut off; writes go on through 2 + witness. The witness now
//!    keeps every entry host 1 lacks (its purge point stays at or below
//!    host 1's last log index).
//! 3. Host 2 is cut off and host 1 is back: 1 + witness must go on, which
//!    needs the entries of step 2 that only the witness's log holds; the
//!    witness leads if it must and hands leadership to host 1.
//! 4. Every block written reads back exactly through host 1; the witness
//!    holds no block; a client operation never succeeds on the witness as
//!    leader (it answers "no leader").

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{HostSlot, MemNet, TestHost, eventually, start_host_with};
use metro_fabric::host::HostConfig;
use metro_fabric::volume::{BLOCK_BYTES, BlockData, VolumeId};
use metro_kvstore::FaultyDisk;
use openraft::rt::WatchReceiver as _;
use tokio::time::sleep;

const NODES: [u64; 3] = [1, 2, 3];
const WITNESS: u64 = 3;
const VOLUME: VolumeId = VolumeId(5);
const SIZE_BLOCKS: u64 = 1024;
const PER_STEP: u64 = 120;
const WAIT: Duration = Duration::from_secs(40);

fn config(id: u64) -> HostConfig {
    let config = common::snapshotting_config(id, NODES, 20);
    if id == WITNESS {
        return config.into_witness().expect("witness config");
    }
    config
}

fn block(index: u64) -> BlockData {
    BlockData::new(vec![(index % 251) as u8 + 1; BLOCK_BYTES]).expect("one block")
}

/// The witness's duties, run as the daemon does until aborted, counting
/// the passes done.
struct Duties {
    task: tokio::task::JoinHandle<()>,
    passes: Arc<AtomicU64>,
}

impl Duties {
    fn start(host: &Arc<TestHost>) -> Self {
        let host = Arc::clone(host);
        let passes = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&passes);
        let task = tokio::spawn(async move {
            loop {
                host.witness_duties().await;
                counted.fetch_add(1, Ordering::SeqCst);
                sleep(Duration::from_millis(100)).await;
            }
        });
        Self { task, passes }
    }

    /// Waits until `passes` more whole passes ran.
    async fn wait_passes(&self, passes: u64) {
        let until = self.passes.load(Ordering::SeqCst) + passes + 1;
        eventually("witness duty passes", WAIT, || async {
            (self.passes.load(Ordering::SeqCst) >= until).then_some(())
        })
        .await;
    }
}

fn snapshot_index(host: &TestHost) -> u64 {
    let raft = host.raft(VOLUME).expect("replica");
    let metrics = raft.metrics().borrow_watched().clone();
    metrics.snapshot.map_or(0, |l| l.index)
}

fn purged_index(host: &TestHost) -> u64 {
    let raft = host.raft(VOLUME).expect("replica");
    let metrics = raft.metrics().borrow_watched().clone();
    metrics.purged.map_or(0, |l| l.index)
}

fn last_index(host: &TestHost) -> u64 {
    let raft = host.raft(VOLUME).expect("replica");
    let metrics = raft.metrics().borrow_watched().clone();
    metrics.last_log_index.unwrap_or(0)
}

async fn write_all(host: &TestHost, range: std::ops::Range<u64>) {
    for index in range {
        eventually("a write", WAIT, || async {
            host.write(VOLUME, index, block(index)).await.ok()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witness_keeps_the_log_data_voters_need_and_no_blocks() {
    let net = MemNet::<HostSlot>::new();
    let hosts: Vec<Arc<TestHost>> = NODES
        .iter()
        .map(|id| start_host_with(&net, *id, &FaultyDisk::new(*id), config(*id)))
        .collect();
    let [one, two, witness] = [&hosts[0], &hosts[1], &hosts[2]];
    one.create_volume(VOLUME, SIZE_BLOCKS, &NODES)
        .await
        .expect("create");
    let duties = Duties::start(witness);

    // 1. Everyone up: the witness purges behind the floor.
    write_all(one, 0..PER_STEP).await;
    eventually("the witness purging its log", WAIT, || async {
        (purged_index(witness) > PER_STEP / 2).then_some(())
    })
    .await;
    println!("step 1: witness purged up to {}", purged_index(witness));

    // 2. Host 1 cut off: writes go on; the witness keeps what 1 lacks.
    net.set_cut_off(1, true);
    let one_last = last_index(one);
    write_all(two, PER_STEP..2 * PER_STEP).await;
    // The witness's snapshot now covers entries host 1 lacks: purging up
    // to it would drop them. Its duties run a few more passes with that
    // in reach; its purge point must not pass host 1's last entry.
    let snapshot = eventually("the witness snapshotting past host 1", WAIT, || async {
        let index = snapshot_index(witness);
        (index > one_last).then_some(index)
    })
    .await;
    duties.wait_passes(3).await;
    let purged = purged_index(witness);
    println!(
        "step 2: host 1 stopped at index {one_last}; witness snapshot at {snapshot}, purged up to {purged}"
    );
    assert!(
        purged <= one_last,
        "the witness purged entries host 1 still needs ({purged} > {one_last})"
    );

    // 3. Host 2 cut off, host 1 back: 1 + witness carry on.
    net.set_cut_off(2, true);
    net.set_cut_off(1, false);
    write_all(one, 2 * PER_STEP..3 * PER_STEP).await;
    let leader = one.status(VOLUME).await.expect("status").leader;
    println!("step 3: writes through 1 + witness; leader {leader:?}");
    assert_eq!(leader, Some(1), "the witness handed leadership to host 1");

    // 4. Everything reads back through host 1; the witness has no blocks.
    let data = eventually("a read", WAIT, || async {
        one.read(VOLUME, 0, (3 * PER_STEP) as u32).await.ok()
    })
    .await;
    for index in 0..3 * PER_STEP {
        let at = (index as usize) * BLOCK_BYTES;
        assert_eq!(
            &data.as_bytes()[at..at + BLOCK_BYTES],
            block(index).as_bytes(),
            "block {index} lost or wrong"
        );
    }
    let status = witness.status(VOLUME).await.expect("witness status");
    assert_eq!(status.blocks_nonzero, 0, "the witness stores blocks");
    duties.task.abort();
}
