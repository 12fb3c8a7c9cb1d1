//! Client sessions in Raft snapshots at the storage layer (no Raft group):
//! state machines on the real kvstore, pieces streamed by hand.
//!
//! What the tests prove:
//! 1. The sessions piece (piece 1) carries the table exactly as of the
//!    snapshot's last entry, also when the snapshot is streamed after
//!    later requests were applied and after the sender reopened from its
//!    disk: the receiver applies the requests after the snapshot once and
//!    does not apply again a redelivered request from before it.
//! 2. A receiver refuses a sessions piece that is malformed (lengths,
//!    counts, order, ids, inconsistent records), missing (piece 1 of
//!    another kind, or a gap), or out of order (first, twice, renumbered);
//!    the stream as sent is accepted.

use crate::common;

use std::sync::Arc;

use common::{Rt, VOLUME_BLOCKS, open_storage};
use metro_fabric::limits::SESSIONS_MAX;
use metro_fabric::raft::router::ReceiveSnapshot;
use metro_fabric::raft::types::{Entry, EntryPayload, LeaderId, LogId, Snapshot};
use metro_fabric::storage::VolumeStateMachine;
use metro_fabric::volume::{BLOCK_BYTES, BlockData, OnceCommand, VolumeCommand, VolumeId};
use metro_kvstore::{CrashMode, FaultyDisk};
use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;

type Sm = VolumeStateMachine<Rt>;

const VOLUME: VolumeId = VolumeId(5);
const PIECE_HEADER_BYTES: usize = 32;
const ENTRY_BYTES: usize = 40;
/// Piece kind bytes (`storage/snapshot.rs`): blocks, sessions.
const KIND_BLOCKS: u8 = 0;
const KIND_SESSION_TABLE: u8 = 4;
/// Blocks written by the sessions.
const B: u64 = 3;
const C: u64 = 4;
const D: u64 = 5;

fn entry(index: u64, command: VolumeCommand) -> Entry {
    Entry {
        log_id: LogId::new(
            LeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        ),
        payload: EntryPayload::Normal(command),
    }
}

fn fill(at: u64, fill: u8) -> Vec<u8> {
    let mut bytes = vec![fill; BLOCK_BYTES];
    bytes[..8].copy_from_slice(&at.to_le_bytes());
    bytes
}

/// Log entry `index`: request `request` of `session` writing `fill`
/// to block `at`.
fn once(index: u64, session: u64, request: u64, at: u64, fill_byte: u8) -> Entry {
    let data = BlockData::new(fill(at, fill_byte)).expect("one block");
    let write = VolumeCommand::Write {
        offset_blocks: at,
        data,
    };
    let once = OnceCommand::new(session, request, write).expect("a block command");
    entry(index, VolumeCommand::Once(once))
}

async fn apply(sm: &mut Sm, entries: Vec<Entry>) {
    let stream = futures_util::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    sm.apply(stream).await.expect("apply");
}

/// Sessions 1 and 2 (registered at indexes 1 and 2) apply requests 1.1,
/// 1.2 (both to `B`) and 2.1 (to `D`); a snapshot is built at index 5;
/// request 1.3 (to `C`) is applied at 6. The sender's disk and machine.
async fn sender() -> (FaultyDisk, Sm) {
    let disk = FaultyDisk::new(31);
    let storage = open_storage(Arc::new(disk.clone()));
    let (_log, mut sm) = storage
        .open_group::<Rt>(VOLUME, VOLUME_BLOCKS)
        .expect("opens");
    let entries = vec![
        entry(1, VolumeCommand::RegisterSession),
        entry(2, VolumeCommand::RegisterSession),
        once(3, 1, 1, B, 1),
        once(4, 1, 2, B, 2),
        once(5, 2, 1, D, 1),
    ];
    apply(&mut sm, entries).await;
    let mut builder = sm.get_snapshot_builder().await;
    let built = RaftSnapshotBuilder::<common::C>::build_snapshot(&mut builder)
        .await
        .expect("snapshot");
    assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(5));
    apply(&mut sm, vec![once(6, 1, 3, C, 3)]).await;
    (disk, sm)
}

async fn current(sm: &mut Sm) -> Snapshot {
    let current = sm.get_current_snapshot().await.expect("current");
    current.expect("a snapshot")
}

fn pieces(snapshot: &Snapshot) -> Vec<Vec<u8>> {
    let mut data = snapshot.snapshot.clone();
    let mut pieces = Vec::new();
    while let Some((piece, last)) = data.next_piece().expect("piece") {
        pieces.push(piece);
        if last {
            break;
        }
    }
    assert!(pieces.len() >= 3, "catalogue, sessions, blocks");
    assert_eq!(
        pieces[1][5], KIND_SESSION_TABLE,
        "piece 1 is the sessions piece"
    );
    assert_eq!(pieces[2][5], KIND_BLOCKS);
    pieces
}

/// A fresh, empty receiver.
fn receiver(seed: u64) -> Sm {
    let storage = open_storage(Arc::new(FaultyDisk::new(seed)));
    let (_log, sm) = storage
        .open_group::<Rt>(VOLUME, VOLUME_BLOCKS)
        .expect("opens");
    sm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sessions_piece_is_the_table_as_of_the_snapshot() {
    let (disk, mut sm) = sender().await;
    // Streamed after request 1.3 was applied, and again after the sender
    // reopened from its disk (unsynced writes dropped): the same piece.
    let streamed = pieces(&current(&mut sm).await);
    disk.crash(CrashMode::DropUnsynced);
    let storage = open_storage(Arc::new(disk.clone()));
    let (_log, mut reopened) = storage
        .open_group::<Rt>(VOLUME, VOLUME_BLOCKS)
        .expect("reopens");
    let snapshot = current(&mut reopened).await;
    assert_eq!(
        pieces(&snapshot)[1],
        streamed[1],
        "the pinned table reopens"
    );

    let mut target = receiver(32);
    let mut staging = target.begin_receive().await.expect("staging");
    for piece in &streamed {
        staging.write_piece(piece).await.expect("piece taken");
    }
    target
        .install_snapshot(&snapshot.meta, staging)
        .await
        .expect("installs");
    let handle = target.handle();
    assert_eq!(handle.block(B).expect("read"), fill(B, 2));
    // The receiver replays the log after the snapshot: request 1.3 is new
    // to it (a table from after the snapshot would skip it); then
    // redeliveries of 1.1 (before the snapshot) and 1.3.
    apply(&mut target, vec![once(6, 1, 3, C, 3)]).await;
    assert_eq!(handle.block(C).expect("read"), fill(C, 3), "1.3 applied");
    let replay = vec![
        once(7, 1, 1, B, 1),
        once(8, 1, 4, C, 4),
        once(9, 1, 3, C, 3),
        once(10, 2, 1, D, 2),
    ];
    apply(&mut target, replay).await;
    assert_eq!(handle.block(C).expect("read"), fill(C, 4), "1.3 then 1.4");
    assert_eq!(handle.block(B).expect("read"), fill(B, 2), "1.1 not again");
    assert_eq!(handle.block(D).expect("read"), fill(D, 1), "2.1 not again");
}

/// Writes `pieces` into a fresh staging area of `target`; whether one of
/// them was refused.
async fn refused(target: &mut Sm, pieces: &[&[u8]]) -> bool {
    let mut staging = target.begin_receive().await.expect("staging");
    for piece in pieces {
        if staging.write_piece(piece).await.is_err() {
            return true;
        }
    }
    false
}

/// `piece` with its piece number set to `number`.
fn renumbered(piece: &[u8], number: u64) -> Vec<u8> {
    let mut piece = piece.to_vec();
    piece[8..16].copy_from_slice(&number.to_le_bytes());
    piece
}

/// `piece` (a sessions piece of two sessions) with word `word` of entry
/// `entry` (0: id, 1: last active, 2: highest, 3: applied, 4: refused) set
/// to `value`.
fn with_word(piece: &[u8], entry: usize, word: usize, value: u64) -> Vec<u8> {
    let mut piece = piece.to_vec();
    let at = PIECE_HEADER_BYTES + entry * ENTRY_BYTES + word * 8;
    piece[at..at + 8].copy_from_slice(&value.to_le_bytes());
    piece
}

/// Damaged copies of `sessions` (sessions 1 and 2, see [`sender`]), each
/// named for what is wrong with it.
fn malformed(sessions: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    assert_eq!(sessions.len(), PIECE_HEADER_BYTES + 2 * ENTRY_BYTES);
    let mut swapped = sessions[..PIECE_HEADER_BYTES].to_vec();
    swapped.extend_from_slice(&sessions[PIECE_HEADER_BYTES + ENTRY_BYTES..]);
    swapped.extend_from_slice(&sessions[PIECE_HEADER_BYTES..PIECE_HEADER_BYTES + ENTRY_BYTES]);
    let mut over = sessions.to_vec();
    over[24..28].copy_from_slice(&(SESSIONS_MAX as u32 + 1).to_le_bytes());
    let entry = sessions[PIECE_HEADER_BYTES..PIECE_HEADER_BYTES + ENTRY_BYTES].to_vec();
    over.extend((0..SESSIONS_MAX - 1).flat_map(|_| entry.clone()));
    let mut short_count = sessions.to_vec();
    short_count[24..28].copy_from_slice(&1u32.to_le_bytes());
    vec![
        ("truncated", sessions[..sessions.len() - 1].to_vec()),
        ("count short of the entries", short_count),
        ("over SESSIONS_MAX", over),
        ("ids out of order", swapped),
        ("a repeated id", with_word(sessions, 1, 0, 1)),
        ("session id 0", with_word(sessions, 0, 0, 0)),
        ("active before registered", with_word(sessions, 1, 1, 1)),
        ("refused but not applied", with_word(sessions, 0, 4, 0b100)),
        ("highest not applied", with_word(sessions, 0, 3, 0b10)),
        ("applied below request 1", with_word(sessions, 1, 3, 0b11)),
        ("applied with no highest", with_word(sessions, 1, 2, 0)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_missing_or_misplaced_sessions_piece_is_refused() {
    let (_disk, mut sm) = sender().await;
    let pieces = pieces(&current(&mut sm).await);
    let (catalogue, sessions, blocks) = (&pieces[0][..], &pieces[1][..], &pieces[2][..]);
    let rest: Vec<&[u8]> = pieces[2..].iter().map(Vec::as_slice).collect();
    let mut target = receiver(33);
    let whole: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
    assert!(!refused(&mut target, &whole).await, "the stream as sent");

    for (what, bad) in malformed(sessions) {
        let mut stream = vec![catalogue, &bad[..]];
        stream.extend(&rest);
        assert!(refused(&mut target, &stream).await, "{what}");
    }
    let blocks_as_1 = renumbered(blocks, 1);
    let sessions_as_0 = renumbered(sessions, 0);
    let sessions_as_2 = renumbered(sessions, 2);
    let misplaced: [(&str, Vec<&[u8]>); 6] = [
        ("no sessions piece", vec![catalogue, blocks]),
        ("blocks as piece 1", vec![catalogue, &blocks_as_1]),
        ("sessions first", vec![sessions, catalogue, blocks]),
        ("sessions as piece 0", vec![&sessions_as_0, blocks]),
        ("sessions twice", vec![catalogue, sessions, sessions]),
        (
            "sessions as piece 2",
            vec![catalogue, sessions, &sessions_as_2],
        ),
    ];
    for (what, stream) in misplaced {
        assert!(refused(&mut target, &stream).await, "{what}");
    }
    assert!(!refused(&mut target, &whole).await, "still taken after all");
}
