//! Round trips of every message kind, and rejection of damaged frames.

use std::collections::{BTreeMap, BTreeSet};

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, TransferLeaderError, TransferLeaderRequest,
    VoteRequest, VoteResponse,
};
use openraft_rt_tokio::TokioRuntime;
use proptest::prelude::*;

use super::*;
use crate::raft::types::{
    Entry, EntryPayload, LeaderId, LogId, Membership, RaftNode, SnapshotMeta, StoredMembership,
    Vote,
};
use crate::volume::{BLOCK_BYTES, BlockData, OnceCommand, VolumeCommand, VolumeId, VolumeResponse};

type Rt = TokioRuntime;

fn vote(term: u64, node_id: u64, committed: bool) -> Vote {
    Vote {
        leader_id: LeaderId { term, node_id },
        committed,
    }
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(LeaderId { term, node_id: 2 }, index)
}

fn membership() -> Membership {
    let nodes: BTreeMap<u64, RaftNode> = (1..=3)
        .map(|id| {
            (
                id,
                RaftNode {
                    addr: format!("n{id}"),
                },
            )
        })
        .collect();
    Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes).expect("valid membership")
}

fn blocks(count: usize, seed: u8) -> BlockData {
    let bytes = (0..count * BLOCK_BYTES)
        .map(|i| (i as u8).wrapping_mul(seed))
        .collect();
    BlockData::new(bytes).expect("whole blocks")
}

fn entries() -> Vec<Entry> {
    let payloads = [
        EntryPayload::Blank,
        EntryPayload::Membership(membership()),
        EntryPayload::Normal(VolumeCommand::Write {
            offset_blocks: 7,
            data: blocks(3, 5),
        }),
        EntryPayload::Normal(VolumeCommand::Trim {
            offset_blocks: 1,
            len_blocks: 2,
        }),
        EntryPayload::Normal(VolumeCommand::WriteZeroes {
            offset_blocks: 9,
            len_blocks: 4,
        }),
        EntryPayload::Normal(VolumeCommand::Write {
            offset_blocks: 0,
            data: blocks(1, 11),
        }),
        EntryPayload::Normal(VolumeCommand::Resize {
            size_blocks: 1 << 20,
        }),
        EntryPayload::Normal(VolumeCommand::CreateSnapshot { snapshot_id: 4 }),
        EntryPayload::Normal(VolumeCommand::DeleteSnapshot { snapshot_id: 4 }),
        EntryPayload::Normal(VolumeCommand::RegisterSession),
    ];
    payloads
        .into_iter()
        .chain(once_commands().map(EntryPayload::Normal))
        .enumerate()
        .map(|(i, payload)| Entry {
            log_id: log_id(3, 10 + i as u64),
            payload,
        })
        .collect()
}

/// A session's request of every block command kind.
fn once_commands() -> impl Iterator<Item = VolumeCommand> {
    let commands = [
        VolumeCommand::Write {
            offset_blocks: 12,
            data: blocks(2, 9),
        },
        VolumeCommand::Trim {
            offset_blocks: 3,
            len_blocks: 5,
        },
        VolumeCommand::WriteZeroes {
            offset_blocks: 8,
            len_blocks: 1,
        },
    ];
    commands.into_iter().enumerate().map(|(i, command)| {
        let once = OnceCommand::new(17, 64 + i as u64, command).expect("a block command");
        VolumeCommand::Once(once)
    })
}

fn snapshot_meta() -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: Some(log_id(2, 40)),
        last_membership: StoredMembership::new(Some(log_id(1, 1)), membership()),
    }
}

/// One message of every kind (and the variants that carry blocks).
fn every_message() -> Vec<Message<Rt>> {
    let mut messages = vec![
        Message::AppendEntries(AppendEntriesRequest {
            vote: vote(3, 2, true),
            prev_log_id: Some(log_id(3, 9)),
            entries: entries(),
            leader_commit: Some(log_id(2, 8)),
        }),
        Message::AppendEntries(AppendEntriesRequest {
            vote: vote(1, 1, true),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        }),
        Message::Vote {
            pre_vote: true,
            request: VoteRequest {
                vote: vote(4, 3, false),
                last_log_id: Some(log_id(3, 18)),
                leadership_transfer: true,
            },
        },
        Message::VoteReply(VoteResponse::new(vote(4, 3, false), None, true)),
        Message::SnapshotReply(None),
        Message::SnapshotReply(Some(vote(5, 1, true))),
        Message::TransferLeader(TransferLeaderRequest::new(vote(5, 1, true), 3, None)),
        Message::TransferLeaderReply(Ok(())),
        Message::TransferLeaderReply(Err(TransferLeaderError::LogNotFlushed {
            expected: Some(log_id(5, 3)),
            actual: None,
        })),
        Message::Client(ClientRequest::Read {
            offset_blocks: 3,
            len_blocks: 2,
        }),
        Message::ClientReply(ClientReply::Applied {
            log_index: 77,
            response: VolumeResponse::OutOfRange { size_blocks: 9 },
        }),
        Message::ClientReply(ClientReply::Read(blocks(2, 3))),
        Message::ClientReply(ClientReply::Redirect { leader: Some(2) }),
        Message::ClientReply(ClientReply::Failed {
            message: "busy".into(),
        }),
        Message::Fault(Fault {
            code: FaultCode::UnknownVolume,
            message: "no such volume".into(),
        }),
        Message::Client(ClientRequest::CreateVolume {
            size_blocks: 1 << 20,
            members: vec![1, 2, 3],
        }),
        Message::Client(ClientRequest::OpenReplica {
            size_blocks: 8,
            members: vec![3],
        }),
        Message::Client(ClientRequest::DeleteVolume),
        Message::Client(ClientRequest::DropReplica),
        Message::Client(ClientRequest::Status),
        Message::Client(ClientRequest::LogFloor),
        Message::ClientReply(ClientReply::LogFloor { index: Some(77) }),
        Message::ClientReply(ClientReply::LogFloor { index: None }),
        Message::Client(ClientRequest::ReplaceMember {
            size_blocks: 64,
            members: vec![1, 2, 3],
            dead: 3,
            replacement: 4,
        }),
        Message::Client(ClientRequest::InSync {
            members: vec![1, 2],
        }),
        Message::ClientReply(ClientReply::InSync { nodes: vec![2] }),
        Message::ClientReply(ClientReply::Diverged {
            voters: vec![1, 2, 5],
        }),
        Message::ClientReply(ClientReply::Running {
            what: "replacing node 3 by node 4".into(),
        }),
        Message::Client(ClientRequest::ReadSnapshot {
            snapshot_id: 7,
            from_block: 12,
            max_blocks: 256,
        }),
        Message::ClientReply(ClientReply::SnapshotPage(None)),
        Message::ClientReply(ClientReply::SnapshotPage(Some(SnapshotPage {
            log_index: 42,
            size_blocks: 100,
            indexes: vec![3, 9, 10],
            data: Some(blocks(3, 5)),
            next: Some(11),
        }))),
        Message::ClientReply(ClientReply::SnapshotPage(Some(SnapshotPage {
            log_index: 42,
            size_blocks: 100,
            indexes: vec![],
            data: None,
            next: None,
        }))),
        Message::ClientReply(ClientReply::Applied {
            log_index: 5,
            response: VolumeResponse::SnapshotLimit { max: 64 },
        }),
        Message::ClientReply(ClientReply::Done),
        Message::ClientReply(ClientReply::Status(crate::wire::VolumeStatus {
            node: 2,
            leader: Some(1),
            voters: vec![1, 2, 3],
            learners: vec![4],
            applied_index: Some(4000),
            size_blocks: 8192,
            blocks_nonzero: 3999,
            digest: 0xdead_beef,
        })),
    ];
    let replies = [
        AppendEntriesResponse::Success,
        AppendEntriesResponse::PartialSuccess(Some(log_id(3, 12))),
        AppendEntriesResponse::Conflict,
        AppendEntriesResponse::HigherVote(vote(9, 3, true)),
    ];
    messages.extend(replies.into_iter().map(Message::AppendEntriesReply));
    messages.extend(session_refusals());
    for (data_len, done) in [(0, true), (5000, false), (BLOCK_BYTES * 2, true)] {
        messages.push(Message::SnapshotChunk(SnapshotChunk {
            vote: vote(3, 2, true),
            meta: snapshot_meta(),
            offset: 100,
            total_bytes: 100 + data_len as u64 + u64::from(!done),
            done,
            data: (0..data_len).map(|i| i as u8).collect(),
        }));
    }
    for command in entries()
        .into_iter()
        .filter_map(|entry| match entry.payload {
            EntryPayload::Normal(command) => Some(command),
            _ => None,
        })
    {
        messages.push(Message::Client(ClientRequest::Command(command)));
    }
    messages
}

/// The state machine's answers particular to client sessions.
fn session_refusals() -> Vec<Message<Rt>> {
    let refusals = [
        VolumeResponse::SessionExpired { session: 17 },
        VolumeResponse::RequestStale {
            session: 17,
            request: 3,
        },
    ];
    refusals
        .into_iter()
        .map(|response| {
            Message::ClientReply(ClientReply::Applied {
                log_index: 9,
                response,
            })
        })
        .collect()
}

fn frame(message: Message<Rt>) -> Frame<Rt> {
    Frame {
        volume: VolumeId(42),
        message,
    }
}

fn encoded_frames() -> Vec<Vec<u8>> {
    every_message()
        .into_iter()
        .map(|message| encode(&frame(message)).expect("encodes"))
        .collect()
}

#[test]
fn every_message_kind_round_trips() {
    for message in every_message() {
        let before = format!("{message:?}");
        let bytes = encode(&frame(message)).expect("encodes");
        let decoded = decode::<Rt>(&bytes).expect("decodes");
        assert_eq!(decoded.volume, VolumeId(42));
        assert_eq!(format!("{:?}", decoded.message), before);
        // Re-encoding is byte-identical: one canonical frame per message.
        assert_eq!(encode(&decoded).expect("re-encodes"), bytes);
    }
}

#[test]
fn block_payloads_survive_byte_for_byte() {
    let data = blocks(4, 13);
    let message = Message::<Rt>::Client(ClientRequest::Command(VolumeCommand::Write {
        offset_blocks: 5,
        data: data.clone(),
    }));
    let decoded = decode::<Rt>(&encode(&frame(message)).expect("encodes")).expect("decodes");
    match decoded.message {
        Message::Client(ClientRequest::Command(VolumeCommand::Write {
            offset_blocks,
            data: got,
        })) => {
            assert_eq!(offset_blocks, 5);
            assert_eq!(got.as_bytes(), data.as_bytes());
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// A client command frame whose header is `command` as given (no check of
/// the sender's), with `block_count` zero blocks after it.
fn raw_command_frame(command: header::WireCommand, block_count: usize) -> Vec<u8> {
    let envelope = header::Envelope {
        volume: 42,
        body: header::Body::Client(header::ClientOpHeader::Command(command)),
    };
    let header = rkyv::to_bytes::<rkyv::rancor::Error>(&envelope).expect("archives");
    let block = vec![0u8; BLOCK_BYTES];
    let blocks: Vec<&[u8]> = (0..block_count).map(|_| block.as_slice()).collect();
    frame::encode_frame(&header, &blocks).expect("encodes")
}

#[test]
fn a_once_numbered_zero_is_refused() {
    use header::{WireBlockCommand, WireCommand};
    let write = WireBlockCommand::Write {
        offset_blocks: 4,
        block_count: 1,
    };
    let trim = WireBlockCommand::Trim {
        offset_blocks: 4,
        len_blocks: 1,
    };
    let once = |session, request, command| WireCommand::Once {
        session,
        request,
        command,
    };
    // Built by hand correctly, the frames decode: what is refused below is
    // the zero alone.
    for (command, blocks) in [(once(3, 1, write), 1), (once(3, 1, trim), 0)] {
        let decoded = decode::<Rt>(&raw_command_frame(command, blocks)).expect("decodes");
        assert!(matches!(
            decoded.message,
            Message::Client(ClientRequest::Command(VolumeCommand::Once(_)))
        ));
    }
    for (command, blocks) in [
        (once(3, 0, write), 1),
        (once(3, 0, trim), 0),
        (once(0, 1, trim), 0),
    ] {
        let refused = decode::<Rt>(&raw_command_frame(command, blocks));
        assert!(
            matches!(refused, Err(WireError::Malformed(_))),
            "{command:?}: {refused:?}"
        );
    }
}

#[test]
fn truncated_frames_are_rejected() {
    for bytes in encoded_frames() {
        for len in [0, 1, 15, 16, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode::<Rt>(&bytes[..len]).is_err(), "truncated to {len}");
        }
    }
}

#[test]
fn wrong_version_is_rejected() {
    for mut bytes in encoded_frames() {
        bytes[0] = WIRE_VERSION.wrapping_add(1);
        assert!(matches!(
            decode::<Rt>(&bytes),
            Err(WireError::Version { .. })
        ));
    }
}

#[test]
fn bit_flips_are_rejected() {
    for bytes in encoded_frames() {
        // Every bit of the prelude and header, a sample of block bits.
        let step = if bytes.len() > 4096 { 61 } else { 1 };
        for bit in (0..bytes.len() * 8).step_by(step) {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode::<Rt>(&bad).is_err(), "flip of bit {bit} accepted");
        }
    }
}

#[test]
fn wrong_block_crc_is_rejected() {
    let message = Message::<Rt>::ClientReply(ClientReply::Read(blocks(2, 7)));
    let mut bytes = encode(&frame(message)).expect("encodes");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert!(matches!(
        decode::<Rt>(&bytes),
        Err(WireError::BlockChecksum { index: 1, .. })
    ));
}

#[test]
fn seeded_random_mutations_never_panic() {
    let frames = encoded_frames();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let mut bytes = frames[(next() % frames.len() as u64) as usize].clone();
        for _ in 0..=next() % 4 {
            let at = (next() % bytes.len() as u64) as usize;
            match next() % 3 {
                0 => bytes[at] ^= 1 << (next() % 8),
                1 => bytes[at] = next() as u8,
                _ => bytes.truncate(at.max(1)),
            }
        }
        let _ = decode::<Rt>(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode::<Rt>(&bytes);
    }

    #[test]
    fn arbitrary_headers_in_valid_frames_never_panic(
        header in proptest::collection::vec(any::<u8>(), 0..512),
        block_count in 0usize..3,
    ) {
        let block = vec![0u8; BLOCK_BYTES];
        let blocks: Vec<&[u8]> = (0..block_count).map(|_| block.as_slice()).collect();
        let bytes = frame::encode_frame(&header, &blocks).expect("encodes");
        prop_assert!(decode::<Rt>(&bytes).is_err() || header.len() >= 8);
    }
}
