//! [`WriteBatch`]: an atomic group of operations, and its on-disk encoding.
//!
//! A batch becomes exactly one log record with one sequence number: after a
//! crash it is either wholly visible or not at all. Keys are `u64` inside a
//! [`Namespace`] (a Raft log index, a block number, a small metadata tag).
//!
//! Encoding (little-endian, fixed width): a sequence of ops, each a tag byte
//! followed by its fields; a `Put` carries its value's length and CRC32C then
//! the value bytes, so a reader can verify one value without the whole record.

use crate::codec::Reader;
use crate::error::StoreError;
use crate::limits::{BATCH_BYTES_MAX, VALUE_BYTES_MAX};

/// A keyspace: a Raft group's log, its vote and metadata, a volume's block map.
/// `kind` is the caller's classification, `id` the group or volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Namespace {
    pub kind: u8,
    pub id: u64,
}

impl Namespace {
    pub const fn new(kind: u8, id: u64) -> Self {
        Namespace { kind, id }
    }
}

/// One operation of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        ns: Namespace,
        key: u64,
        value: Vec<u8>,
    },
    Delete {
        ns: Namespace,
        key: u64,
    },
    /// Deletes every key in `start..end`.
    DeleteRange {
        ns: Namespace,
        start: u64,
        end: u64,
    },
    /// Deletes the whole namespace, its keys and its snapshots.
    DropNamespace {
        ns: Namespace,
    },
    /// Pins the namespace as of this batch's sequence number.
    CreateSnapshot {
        ns: Namespace,
    },
    /// Releases the snapshot taken at sequence number `seq`.
    DropSnapshot {
        ns: Namespace,
        seq: u64,
    },
}

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_DELETE_RANGE: u8 = 3;
const TAG_DROP_NS: u8 = 4;
const TAG_CREATE_SNAPSHOT: u8 = 5;
const TAG_DROP_SNAPSHOT: u8 = 6;

/// Bytes of a `Put` before its value: tag, ns (9), key, len, crc.
pub(crate) const PUT_HEADER_BYTES: usize = 1 + 9 + 8 + 4 + 4;

/// An atomic group of operations, applied in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<Op>,
    value_bytes: u64,
}

impl WriteBatch {
    pub fn new() -> Self {
        WriteBatch::default()
    }

    pub fn put(&mut self, ns: Namespace, key: u64, value: Vec<u8>) -> &mut Self {
        self.value_bytes += value.len() as u64;
        self.ops.push(Op::Put { ns, key, value });
        self
    }

    pub fn delete(&mut self, ns: Namespace, key: u64) -> &mut Self {
        self.ops.push(Op::Delete { ns, key });
        self
    }

    pub fn delete_range(&mut self, ns: Namespace, start: u64, end: u64) -> &mut Self {
        self.ops.push(Op::DeleteRange { ns, start, end });
        self
    }

    pub fn drop_namespace(&mut self, ns: Namespace) -> &mut Self {
        self.ops.push(Op::DropNamespace { ns });
        self
    }

    /// A batch that pins `ns` as of its own sequence number.
    pub fn create_snapshot(ns: Namespace) -> Self {
        let mut batch = WriteBatch::new();
        batch.push(Op::CreateSnapshot { ns });
        batch
    }

    /// A batch that releases the snapshot of `ns` taken at `seq`.
    pub fn drop_snapshot(ns: Namespace, seq: u64) -> Self {
        let mut batch = WriteBatch::new();
        batch.push(Op::DropSnapshot { ns, seq });
        batch
    }

    /// Appends any operation.
    pub fn push(&mut self, op: Op) {
        if let Op::Put { value, .. } = &op {
            self.value_bytes += value.len() as u64;
        }
        self.ops.push(op);
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Sum of the values' lengths: the logical bytes this batch writes.
    pub fn value_bytes(&self) -> u64 {
        self.value_bytes
    }

    /// Checks the limits and the rule that snapshot operations travel alone.
    pub fn validate(&self) -> Result<(), StoreError> {
        let invalid = |why: String| Err(StoreError::InvalidBatch(why));
        if self.ops.is_empty() {
            return invalid("empty batch".into());
        }
        let snapshot_ops = self
            .ops
            .iter()
            .filter(|op| matches!(op, Op::CreateSnapshot { .. } | Op::DropSnapshot { .. }))
            .count();
        if snapshot_ops > 0 && self.ops.len() > 1 {
            return invalid("snapshot operations must be alone in their batch".into());
        }
        for op in &self.ops {
            match op {
                Op::Put { value, .. } if value.len() > VALUE_BYTES_MAX => {
                    return invalid(format!(
                        "value of {} bytes exceeds {VALUE_BYTES_MAX}",
                        value.len()
                    ));
                }
                Op::DeleteRange { start, end, .. } if start > end => {
                    return invalid(format!("delete range {start}..{end} is reversed"));
                }
                _ => {}
            }
        }
        if self.encoded_len() > BATCH_BYTES_MAX {
            return invalid(format!(
                "batch of {} bytes exceeds {BATCH_BYTES_MAX}",
                self.encoded_len()
            ));
        }
        Ok(())
    }

    /// Length of [`WriteBatch::encode_into`]'s output.
    pub fn encoded_len(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Put { value, .. } => PUT_HEADER_BYTES + value.len(),
                Op::Delete { .. } => 1 + 9 + 8,
                Op::DeleteRange { .. } => 1 + 9 + 16,
                Op::DropNamespace { .. } | Op::CreateSnapshot { .. } => 1 + 9,
                Op::DropSnapshot { .. } => 1 + 9 + 8,
            })
            .sum()
    }

    /// Appends the encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        for op in &self.ops {
            match op {
                Op::Put { ns, key, value } => {
                    assert!(
                        value.len() <= VALUE_BYTES_MAX,
                        "a value's length fits its u32 field"
                    );
                    out.push(TAG_PUT);
                    put_ns(out, *ns);
                    out.extend_from_slice(&key.to_le_bytes());
                    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                    out.extend_from_slice(&crc32c::crc32c(value).to_le_bytes());
                    out.extend_from_slice(value);
                }
                Op::Delete { ns, key } => {
                    out.push(TAG_DELETE);
                    put_ns(out, *ns);
                    out.extend_from_slice(&key.to_le_bytes());
                }
                Op::DeleteRange { ns, start, end } => {
                    out.push(TAG_DELETE_RANGE);
                    put_ns(out, *ns);
                    out.extend_from_slice(&start.to_le_bytes());
                    out.extend_from_slice(&end.to_le_bytes());
                }
                Op::DropNamespace { ns } => {
                    out.push(TAG_DROP_NS);
                    put_ns(out, *ns);
                }
                Op::CreateSnapshot { ns } => {
                    out.push(TAG_CREATE_SNAPSHOT);
                    put_ns(out, *ns);
                }
                Op::DropSnapshot { ns, seq } => {
                    out.push(TAG_DROP_SNAPSHOT);
                    put_ns(out, *ns);
                    out.extend_from_slice(&seq.to_le_bytes());
                }
            }
        }
        // The writer sizes records (and rolls segments) by `encoded_len`.
        assert_eq!(
            out.len() - start,
            self.encoded_len(),
            "encoded_len is the encoding's length"
        );
    }
}

fn put_ns(out: &mut Vec<u8>, ns: Namespace) {
    out.push(ns.kind);
    out.extend_from_slice(&ns.id.to_le_bytes());
}

/// One decoded operation, borrowing values from the record buffer. `Put`
/// carries the value's offset inside the payload so the index can point at it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DecodedOp {
    Put {
        ns: Namespace,
        key: u64,
        value_offset: u32,
        len: u32,
        crc: u32,
    },
    Other(Op),
}

/// Decodes a record payload; `None` means it is malformed (the caller names
/// the file and offset). Values are not copied: `Put` reports where they are.
pub(crate) fn decode_ops(payload: &[u8]) -> Option<Vec<DecodedOp>> {
    let mut r = Reader::new(payload);
    let mut ops = Vec::new();
    while !r.is_done() {
        let op = match r.u8()? {
            TAG_PUT => {
                let (ns, key, len, crc) = (r.ns()?, r.u64()?, r.u32()?, r.u32()?);
                let value_offset = r.position() as u32;
                r.take(len as usize)?;
                DecodedOp::Put {
                    ns,
                    key,
                    value_offset,
                    len,
                    crc,
                }
            }
            TAG_DELETE => DecodedOp::Other(Op::Delete {
                ns: r.ns()?,
                key: r.u64()?,
            }),
            TAG_DELETE_RANGE => DecodedOp::Other(Op::DeleteRange {
                ns: r.ns()?,
                start: r.u64()?,
                end: r.u64()?,
            }),
            TAG_DROP_NS => DecodedOp::Other(Op::DropNamespace { ns: r.ns()? }),
            TAG_CREATE_SNAPSHOT => DecodedOp::Other(Op::CreateSnapshot { ns: r.ns()? }),
            TAG_DROP_SNAPSHOT => DecodedOp::Other(Op::DropSnapshot {
                ns: r.ns()?,
                seq: r.u64()?,
            }),
            _ => return None,
        };
        ops.push(op);
    }
    Some(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let ns = Namespace::new(3, 77);
        let mut b = WriteBatch::new();
        b.put(ns, 5, vec![1, 2, 3])
            .delete(ns, 6)
            .delete_range(ns, 10, 20)
            .drop_namespace(Namespace::new(1, 2));
        let mut out = Vec::new();
        b.encode_into(&mut out);
        assert_eq!(out.len(), b.encoded_len());
        let ops = decode_ops(&out).unwrap();
        assert_eq!(ops.len(), 4);
        let DecodedOp::Put {
            value_offset, len, ..
        } = ops[0]
        else {
            panic!("first op is a put")
        };
        assert_eq!(
            &out[value_offset as usize..(value_offset + len) as usize],
            &[1, 2, 3]
        );
        assert_eq!(ops[1], DecodedOp::Other(Op::Delete { ns, key: 6 }));
        // Every strict prefix either fails or decodes fewer ops; never panics.
        for cut in 0..out.len() {
            if let Some(partial) = decode_ops(&out[..cut]) {
                assert!(partial.len() < 4);
            }
        }
    }

    #[test]
    fn validation_rules() {
        let ns = Namespace::new(1, 1);
        assert!(WriteBatch::new().validate().is_err());
        let mut b = WriteBatch::new();
        b.delete_range(ns, 5, 1);
        assert!(b.validate().is_err());
        let mut b = WriteBatch::new();
        b.push(Op::CreateSnapshot { ns });
        b.put(ns, 1, vec![0]);
        assert!(b.validate().is_err());
    }
}
