//! The kvstore-backed Raft storage against openraft's storage conformance
//! suite (on an in-memory `FaultyDisk` and on real files), plus what the
//! suite does not cover: recovery after a crash that drops unsynced writes,
//! reads of applied-but-not-yet-durable blocks, and a snapshot streamed
//! piece by piece into another node's store.

use crate::common;

use std::sync::Arc;

use common::{C, Rt, TempDir, VOLUME_BLOCKS, open_storage};
use metro_fabric::raft::router::ReceiveSnapshot;
use metro_fabric::raft::types::{Entry, EntryPayload, LeaderId, LogId, Vote};
use metro_fabric::storage::{LogStore, NodeStorage, PIECE_RECORDS_MAX, VolumeStateMachine};
use metro_fabric::volume::{BLOCK_BYTES, BlockData, VolumeCommand, VolumeId};
use metro_kvstore::{CrashMode, FaultyDisk, FileDisk};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{RaftLogReader, RaftSnapshotBuilder, StorageError};

const VOLUME: VolumeId = VolumeId(3);

type Log = LogStore<Rt>;
type Sm = VolumeStateMachine<Rt>;

/// Every build gets a fresh in-memory disk and store.
struct FaultyBuilder;

impl StoreBuilder<C, Log, Sm, ()> for FaultyBuilder {
    async fn build(&self) -> Result<((), Log, Sm), StorageError<C>> {
        let storage = open_storage(Arc::new(FaultyDisk::new(7)));
        let (log, sm) = storage
            .open_group::<Rt>(VOLUME, VOLUME_BLOCKS)
            .expect("group storage opens");
        Ok(((), log, sm))
    }
}

/// Every build gets a fresh directory of real files.
struct FileBuilder;

impl StoreBuilder<C, Log, Sm, TempDir> for FileBuilder {
    async fn build(&self) -> Result<(TempDir, Log, Sm), StorageError<C>> {
        let dir = TempDir::new("suite");
        let disk = FileDisk::open_dir(&dir.0).expect("file disk opens");
        let storage = open_storage(Arc::new(disk));
        let (log, sm) = storage
            .open_group::<Rt>(VOLUME, VOLUME_BLOCKS)
            .expect("group storage opens");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_faulty_disk() {
    Suite::test_all(FaultyBuilder).await.expect("suite passes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_file_disk() {
    Suite::test_all(FileBuilder).await.expect("suite passes");
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(LeaderId { term, node_id: 1 }, index)
}

fn write_entry(term: u64, index: u64, offset_blocks: u64, fill: u8) -> Entry {
    let data = BlockData::new(vec![fill; 2 * BLOCK_BYTES]).expect("blocks");
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(VolumeCommand::Write {
            offset_blocks,
            data,
        }),
    }
}

async fn append(log: &mut Log, entries: Vec<Entry>) {
    let callback = openraft::storage::IOFlushed::<C>::noop();
    log.append(entries, callback).await.expect("append");
    // Any awaited write is ordered after the append: durable together.
    log.save_vote(&Vote::new_committed(1, 1))
        .await
        .expect("vote");
}

async fn apply(sm: &mut Sm, entries: Vec<Entry>) {
    let stream = futures_util::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    sm.apply(stream).await.expect("apply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_after_crash_keeps_durable_log_and_applied_blocks() {
    let disk = FaultyDisk::new(11);
    let storage = open_storage(Arc::new(disk.clone()));
    let (mut log, mut sm) = storage
        .open_group::<Rt>(VOLUME, VOLUME_BLOCKS)
        .expect("opens");
    let entries: Vec<Entry> = (1..=6).map(|i| write_entry(1, i, i * 4, i as u8)).collect();
    append(&mut log, entries.clone()).await;
    log.save_committed(Some(log_id(1, 6)))
        .await
        .expect("committed");
    apply(&mut sm, entries[..4].to_vec()).await;
    // Applied blocks are readable at once, durable or not.
    assert_eq!(
        sm.handle().block(4 * 4).expect("read"),
        vec![4; BLOCK_BYTES]
    );
    assert_eq!(sm.handle().block(3).expect("read"), vec![0; BLOCK_BYTES]);
    // Make everything queued durable, then lose power.
    log.truncate_after(Some(log_id(1, 6))).await.expect("fence");
    disk.crash(CrashMode::DropUnsynced);

    let storage = open_storage(Arc::new(disk.clone()));
    let (mut log, mut sm) = storage
        .open_group::<Rt>(VOLUME, VOLUME_BLOCKS)
        .expect("reopens");
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_log_id, Some(log_id(1, 6)));
    assert_eq!(
        log.read_vote().await.expect("vote"),
        Some(Vote::new_committed(1, 1))
    );
    assert_eq!(
        log.read_committed().await.expect("committed"),
        Some(log_id(1, 6))
    );
    let read = log.try_get_log_entries(1..7).await.expect("entries");
    assert_eq!(read, entries);
    let (applied, _) = sm.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(1, 4)));
    // openraft would now re-apply 5..=6 from the log.
    apply(&mut sm, read[4..].to_vec()).await;
    for i in 1..=6u64 {
        assert_eq!(
            sm.handle().block(i * 4 + 1).expect("read"),
            vec![i as u8; BLOCK_BYTES]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_streams_in_pieces_into_another_store() {
    let sender = open_storage(Arc::new(FaultyDisk::new(21)));
    let receiver: Arc<NodeStorage> = open_storage(Arc::new(FaultyDisk::new(22)));
    let (_log, mut sm) = sender
        .open_group::<Rt>(VOLUME, VOLUME_BLOCKS)
        .expect("opens");
    // Enough blocks for three pieces, scattered, one of them trimmed later.
    let blocks = (2 * PIECE_RECORDS_MAX + 10) as u64;
    let entries: Vec<Entry> = (0..blocks / 2)
        .map(|i| write_entry(1, i + 1, i * 6, (i % 250) as u8 + 1))
        .collect();
    apply(&mut sm, entries).await;
    let trim = Entry {
        log_id: log_id(1, blocks / 2 + 1),
        payload: EntryPayload::Normal(VolumeCommand::Trim {
            offset_blocks: 0,
            len_blocks: 2,
        }),
    };
    apply(&mut sm, vec![trim]).await;
    let mut builder = sm.get_snapshot_builder().await;
    let snapshot = RaftSnapshotBuilder::<C>::build_snapshot(&mut builder)
        .await
        .expect("snapshot");

    let (_log, mut target) = receiver
        .open_group::<Rt>(VOLUME, VOLUME_BLOCKS)
        .expect("opens");
    let mut staging = target.begin_receive().await.expect("staging");
    let mut source = snapshot.snapshot.clone();
    let mut pieces = 0;
    while let Some((piece, last)) = source.next_piece().expect("piece") {
        assert!(piece.len() <= metro_fabric::limits::SNAPSHOT_CHUNK_BYTES as usize);
        staging.write_piece(&piece).await.expect("piece written");
        pieces += 1;
        if last {
            break;
        }
    }
    assert!(pieces >= 3, "{pieces} pieces");
    target
        .install_snapshot(&snapshot.meta, staging)
        .await
        .expect("installs");
    let (applied, _) = target.applied_state().await.expect("applied");
    assert_eq!(applied, snapshot.meta.last_log_id);
    let (want, got) = (sm.handle(), target.handle());
    for block in [0, 1, 2, 6, 7, 600, 601, 1001, blocks * 3] {
        assert_eq!(
            got.block(block).expect("read"),
            want.block(block).expect("read")
        );
    }
    assert_eq!(got.block(1).expect("read"), vec![0; BLOCK_BYTES]);
    let current = target.get_current_snapshot().await.expect("current");
    assert_eq!(current.map(|s| s.meta), Some(snapshot.meta));
}
