//! [`History`]: every client operation of a run, with virtual timestamps.
//!
//! Model: the volume is a set of independent single-value registers, one
//! per block. A write stores a fresh *write id* (unique in the run) in each
//! block it covers; the block's bytes are a function of (write id, block
//! index) ([`block_bytes`]), so a read names exactly which write it saw, and
//! any other content (torn, mixed, corrupt) is caught by [`decode_block`].
//! Write id 0 means "never written" (zeroes).
//!
//! Each operation is recorded at invocation and again at completion with
//! its outcome: a write is `Acked` (the leader answered Applied),
//! `NotApplied` (definitely never proposed: only a redirect or a refusal
//! before sending), or `Unknown` (it may take effect at any later time).
//! Reads are `Acked` with the write ids they saw, or failed (no
//! information). At most [`HISTORY_OPS_MAX`] operations are recorded.
//!
//! A write of the retrying-clients workload also records the session
//! request it ran as (every delivery carried that id, so the volume applied
//! it at most once) and how often the client delivered it.

use metro_fabric::host::RequestId;
use metro_fabric::volume::{BLOCK_BYTES, BlockData};
use metro_kvstore::SplitMix64;
use parking_lot::Mutex;

/// Operations one run records, at most (clients stop issuing beyond it).
pub const HISTORY_OPS_MAX: usize = 200_000;

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not finished yet (counts as `Unknown` when checked).
    Pending,
    /// A write acknowledged as applied at `log_index`, or a read answered.
    Acked { log_index: Option<u64> },
    /// A write that was definitely never proposed; a read that failed.
    NotApplied,
    /// A write that may or may not take effect.
    Unknown,
}

/// What an operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    Write {
        first_block: u64,
        blocks: u64,
        write_id: u64,
    },
    /// `seen[i]` is the write id read from block `first_block + i`.
    Read { first_block: u64, seen: Vec<u64> },
}

/// One recorded operation.
#[derive(Clone, Debug)]
pub struct Op {
    /// Who issued it: a client number, or a checker's name.
    pub client: String,
    pub kind: OpKind,
    pub invoke_ns: u64,
    pub complete_ns: Option<u64>,
    pub outcome: Outcome,
    /// The session request a write ran as (`None`: a plain command).
    pub request: Option<RequestId>,
    /// Deliveries the client made (the first and each retry).
    pub deliveries: u32,
}

/// Index of an operation in the history.
pub type OpId = usize;

#[derive(Debug, Default)]
struct Inner {
    ops: Vec<Op>,
    next_write_id: u64,
}

/// The run's history; shared by every client.
#[derive(Debug, Default)]
pub struct History {
    inner: Mutex<Inner>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the history has room for another operation.
    pub fn has_room(&self) -> bool {
        self.inner.lock().ops.len() < HISTORY_OPS_MAX
    }

    /// A write id never used before in this run.
    pub fn next_write_id(&self) -> u64 {
        let mut inner = self.inner.lock();
        inner.next_write_id += 1;
        inner.next_write_id
    }

    /// Records the invocation of `kind` by `client` at `now_ns`.
    pub fn invoke(&self, client: &str, kind: OpKind, now_ns: u64) -> OpId {
        self.invoke_as(client, kind, None, now_ns)
    }

    /// Records the invocation of `kind` by `client` at `now_ns`, run as
    /// session request `request` if any.
    pub fn invoke_as(
        &self,
        client: &str,
        kind: OpKind,
        request: Option<RequestId>,
        now_ns: u64,
    ) -> OpId {
        let mut inner = self.inner.lock();
        inner.ops.push(Op {
            client: client.to_string(),
            kind,
            invoke_ns: now_ns,
            complete_ns: None,
            outcome: Outcome::Pending,
            request,
            deliveries: 1,
        });
        inner.ops.len() - 1
    }

    /// Records that the client delivered `op` once more (a retry).
    pub fn delivered_again(&self, op: OpId) {
        let mut inner = self.inner.lock();
        let op = &mut inner.ops[op];
        assert!(op.request.is_some(), "only session requests are retried");
        assert_eq!(op.outcome, Outcome::Pending, "retried while pending");
        op.deliveries += 1;
    }

    /// Records how `op` ended; for reads, `seen` holds what it read.
    pub fn complete(&self, op: OpId, outcome: Outcome, seen: Option<Vec<u64>>, now_ns: u64) {
        let mut inner = self.inner.lock();
        let op = &mut inner.ops[op];
        assert_eq!(op.outcome, Outcome::Pending, "an operation completes once");
        op.complete_ns = Some(now_ns);
        op.outcome = outcome;
        if let (OpKind::Read { seen: slot, .. }, Some(seen)) = (&mut op.kind, seen) {
            *slot = seen;
        }
    }

    /// A copy of every operation so far.
    pub fn ops(&self) -> Vec<Op> {
        self.inner.lock().ops.clone()
    }

    /// Operations recorded so far.
    pub fn len(&self) -> usize {
        self.inner.lock().ops.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The bytes write `write_id` puts in `block`.
pub fn block_bytes(write_id: u64, block: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOCK_BYTES);
    out.extend_from_slice(&write_id.to_le_bytes());
    out.extend_from_slice(&block.to_le_bytes());
    let word = SplitMix64::new(write_id ^ block.rotate_left(32)).next_u64();
    while out.len() < BLOCK_BYTES {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out
}

/// The payload of a write of `blocks` blocks from `first_block`.
pub fn write_payload(write_id: u64, first_block: u64, blocks: u64) -> BlockData {
    let bytes = (first_block..first_block + blocks)
        .flat_map(|block| block_bytes(write_id, block))
        .collect();
    BlockData::new(bytes).expect("whole blocks")
}

/// Which write `bytes` (the content of `block`) came from: 0 for zeroes.
pub fn decode_block(bytes: &[u8], block: u64) -> Result<u64, String> {
    if bytes.len() != BLOCK_BYTES {
        return Err(format!("block {block}: {} bytes", bytes.len()));
    }
    if bytes.iter().all(|b| *b == 0) {
        return Ok(0);
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[..8]);
    let write_id = u64::from_le_bytes(id);
    if bytes != block_bytes(write_id, block).as_slice() {
        return Err(format!(
            "block {block}: content matches no write (header names write {write_id})"
        ));
    }
    Ok(write_id)
}

/// The write ids of every block of `data`, read from `first_block`.
pub fn decode_blocks(data: &[u8], first_block: u64) -> Result<Vec<u64>, String> {
    data.chunks(BLOCK_BYTES)
        .enumerate()
        .map(|(i, bytes)| decode_block(bytes, first_block + i as u64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_name_their_write() {
        let data = write_payload(42, 7, 3);
        assert_eq!(decode_blocks(data.as_bytes(), 7), Ok(vec![42, 42, 42]));
        assert!(decode_blocks(data.as_bytes(), 8).is_err());
        assert_eq!(decode_block(&[0; BLOCK_BYTES], 3), Ok(0));
        let mut torn = block_bytes(5, 1);
        torn[100] ^= 1;
        assert!(decode_block(&torn, 1).is_err());
    }
}
