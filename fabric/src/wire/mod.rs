//! The wire format between nodes: one frame per request or response.
//!
//! Model: every frame starts with a version byte ([`WIRE_VERSION`]); its
//! header is one rkyv-archived [`header::Envelope`] naming the volume (the
//! Raft group) and the message, checksummed with CRC32C; 4 KiB block
//! payloads travel raw beside the header, each with its own CRC32C
//! ([`frame`] has the byte layout). openraft's types are not rkyv types, so
//! [`header`] holds mirror structs and [`message`] converts between them
//! and the typed [`Message`].
//!
//! Contract: bytes from the network are untrusted. [`decode`] validates the
//! frame (lengths, checksums, padding), validates the archived header with
//! `rkyv::access` (never `access_unchecked`) in a 16-byte aligned copy, and
//! checks every semantic limit before building a message; any failure is a
//! [`WireError`], never a panic.

use crate::limits::{FRAME_BLOCKS_MAX, HEADER_BYTES_MAX};

mod convert;
pub mod frame;
pub mod header;
pub mod message;

pub use frame::WIRE_VERSION;
pub use message::{
    ClientReply, ClientRequest, Fault, FaultCode, Frame, Message, SnapshotChunk, SnapshotPage,
    VolumeStatus, decode, encode,
};

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame ends before its declared length.
    #[error("frame truncated: needs {needed} bytes, has {got}")]
    Truncated { needed: u64, got: u64 },
    /// The frame is longer than its declared length.
    #[error("frame has trailing bytes: expected {expected}, has {got}")]
    TrailingBytes { expected: u64, got: u64 },
    /// The frame's version byte is not [`WIRE_VERSION`].
    #[error("unsupported wire version {got} (this build speaks {WIRE_VERSION})")]
    Version { got: u8 },
    /// Reserved prelude bytes are not zero.
    #[error("reserved prelude bytes are set")]
    Reserved,
    /// Padding bytes are not zero.
    #[error("padding bytes are set")]
    Padding,
    /// The header is larger than [`HEADER_BYTES_MAX`].
    #[error("header of {len} bytes exceeds the {HEADER_BYTES_MAX}-byte limit")]
    HeaderTooLarge { len: u64 },
    /// More blocks than [`FRAME_BLOCKS_MAX`].
    #[error("{count} blocks exceed the {FRAME_BLOCKS_MAX}-block frame limit")]
    TooManyBlocks { count: u64 },
    /// The header checksum does not match.
    #[error("header checksum mismatch: frame says {expected:#010x}, computed {actual:#010x}")]
    HeaderChecksum { expected: u32, actual: u32 },
    /// A block's checksum does not match.
    #[error(
        "block {index} checksum mismatch: frame says {expected:#010x}, computed {actual:#010x}"
    )]
    BlockChecksum {
        index: u32,
        expected: u32,
        actual: u32,
    },
    /// rkyv refused the archived header.
    #[error("invalid archived header: {0}")]
    Archive(String),
    /// The header is well-formed but breaks a rule of the message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message cannot be encoded (a bug or a limit at the sender).
    #[error("cannot encode message: {0}")]
    Encode(String),
}

#[cfg(test)]
mod tests;
