//! Volumes: virtual block devices of fixed-size blocks, each replicated by its
//! own Raft group.
//!
//! This module holds what every layer agrees on about a volume: its identity
//! ([`VolumeId`]), the block size ([`BLOCK_BYTES`]) and the commands a volume's
//! Raft log carries ([`VolumeCommand`], answered by [`VolumeResponse`]).

pub mod command;

pub use command::{BlockData, BlockDataError, OnceCommand, VolumeCommand, VolumeResponse};

/// The size of one volume block; every offset and length on a volume counts
/// these.
pub const BLOCK_BYTES: usize = 4096;

/// [`BLOCK_BYTES`] as the fixed-width integer used on the wire and on disk.
pub const BLOCK_BYTES_U64: u64 = BLOCK_BYTES as u64;

/// The identity of a volume, and so of its Raft group, stable for the
/// volume's life. Frames between nodes carry it so that one node-level host
/// can route messages to many groups over shared per-peer connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VolumeId(pub u64);

impl std::fmt::Display for VolumeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vol-{}", self.0)
    }
}
