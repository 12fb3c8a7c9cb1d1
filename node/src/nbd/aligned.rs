//! Byte-granular I/O on top of a block-granular [`Volume`].
//!
//! NBD clients may send any byte range (this server advertises a 4 KiB
//! minimum block size, which well-behaved clients such as qemu honour, but a
//! client that did not ask for block sizes may still send 512-byte or odd
//! requests). [`AlignedIo`] turns every request into calls that satisfy the
//! [`Volume`] contract:
//!
//! - reads are widened to whole blocks and the requested bytes cut out;
//! - unaligned writes do read-modify-write of their first and last block
//!   while holding the export's [`RmwLocks`] entry, so two unaligned writes
//!   to disjoint bytes of one block never lose each other's data, across all
//!   connections to that export. Aligned writes take no lock: any write that
//!   races with an RMW of the same block overlaps it byte-wise, and
//!   concurrent overlapping writes have no defined outcome in NBD;
//! - unaligned `WRITE_ZEROES` zeroes its partial blocks by RMW and the whole
//!   blocks through [`Volume::write_zeroes`];
//! - `TRIM` (only a hint) discards just the whole blocks inside the range;
//! - reads and writes longer than [`VOLUME_IO_BYTES_MAX`] are split.
//!
//! Callers must have checked that the range is non-empty and inside the
//! export (whose size is a whole number of blocks).

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::BLOCK_SIZE;
use super::backend::{BackendError, Volume};
use crate::limits::VOLUME_IO_BYTES_MAX;

/// One read-modify-write lock per export name, shared by every connection
/// of a server. Entries are created on first use and kept (one per export).
#[derive(Debug, Default)]
pub(crate) struct RmwLocks {
    locks: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl RmwLocks {
    /// The lock for `export`.
    pub(crate) fn get(&self, export: &str) -> Arc<tokio::sync::Mutex<()>> {
        // A poisoned map is still a valid map: keep serving.
        let mut locks = self.locks.lock();
        locks.entry(export.to_owned()).or_default().clone()
    }
}

/// Byte-granular access to one export for one connection.
pub(crate) struct AlignedIo {
    volume: Arc<dyn Volume>,
    rmw: Arc<tokio::sync::Mutex<()>>,
}

fn align_down(x: u64) -> u64 {
    x / BLOCK_SIZE * BLOCK_SIZE
}

fn align_up(x: u64) -> u64 {
    x.div_ceil(BLOCK_SIZE) * BLOCK_SIZE
}

fn is_aligned(offset: u64, len: u64) -> bool {
    offset.is_multiple_of(BLOCK_SIZE) && len.is_multiple_of(BLOCK_SIZE)
}

impl AlignedIo {
    pub(crate) fn new(volume: Arc<dyn Volume>, rmw: Arc<tokio::sync::Mutex<()>>) -> Self {
        Self { volume, rmw }
    }

    /// The volume itself (flush needs no alignment).
    pub(crate) fn volume(&self) -> &dyn Volume {
        self.volume.as_ref()
    }

    /// Reads `len` bytes at `offset`.
    pub(crate) async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, BackendError> {
        let end = offset + u64::from(len);
        let (start, stop) = (align_down(offset), align_up(end));
        let mut data = self.read_blocks(start, stop - start).await?;
        if start != offset || stop != end {
            let skip = (offset - start) as usize;
            data.drain(..skip);
            data.truncate(len as usize);
        }
        Ok(data)
    }

    /// Writes `data` at `offset`.
    pub(crate) async fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let len = data.len() as u64;
        if is_aligned(offset, len) {
            return self.write_blocks(offset, data).await;
        }
        let _guard = self.rmw.lock().await;
        let end = offset + len;
        let (start, stop) = (align_down(offset), align_up(end));
        let mut buf = vec![0u8; (stop - start) as usize];
        let block = BLOCK_SIZE as usize;
        let head_partial = offset != start;
        if head_partial {
            let head = self.read_blocks(start, BLOCK_SIZE).await?;
            buf[..block].copy_from_slice(&head);
        }
        let tail_shares_head = head_partial && stop - start == BLOCK_SIZE;
        if end != stop && !tail_shares_head {
            let tail = self.read_blocks(stop - BLOCK_SIZE, BLOCK_SIZE).await?;
            let at = buf.len() - block;
            buf[at..].copy_from_slice(&tail);
        }
        let at = (offset - start) as usize;
        buf[at..at + data.len()].copy_from_slice(data);
        self.write_blocks(start, &buf).await
    }

    /// Makes `len` bytes at `offset` read as zeroes.
    pub(crate) async fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        if is_aligned(offset, len) {
            return self.volume.write_zeroes(offset, len).await;
        }
        let end = offset + len;
        let (inner_start, inner_end) = (align_up(offset), align_down(end));
        if inner_start >= inner_end {
            // No whole block inside: less than two blocks of bytes.
            return self.write(offset, &vec![0u8; len as usize]).await;
        }
        if offset < inner_start {
            let zeroes = vec![0u8; (inner_start - offset) as usize];
            self.write(offset, &zeroes).await?;
        }
        self.volume
            .write_zeroes(inner_start, inner_end - inner_start)
            .await?;
        if inner_end < end {
            let zeroes = vec![0u8; (end - inner_end) as usize];
            self.write(inner_end, &zeroes).await?;
        }
        Ok(())
    }

    /// Discards the whole blocks inside `offset..offset + len`.
    pub(crate) async fn trim(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        let (start, end) = (align_up(offset), align_down(offset + len));
        if start >= end {
            return Ok(());
        }
        self.volume.trim(start, end - start).await
    }

    /// Reads an aligned range, split into backend-sized pieces.
    async fn read_blocks(&self, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        let mut out = Vec::with_capacity(len as usize);
        let mut at = offset;
        while at < offset + len {
            let piece = (offset + len - at).min(VOLUME_IO_BYTES_MAX) as u32;
            let data = self.volume.read(at, piece).await?;
            if data.len() != piece as usize {
                return Err(BackendError::Io(format!(
                    "backend returned {} bytes for a {piece}-byte read",
                    data.len()
                )));
            }
            out.extend_from_slice(&data);
            at += u64::from(piece);
        }
        Ok(out)
    }

    /// Writes an aligned range, split into backend-sized pieces.
    async fn write_blocks(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let mut at = offset;
        for piece in data.chunks(VOLUME_IO_BYTES_MAX as usize) {
            self.volume.write(at, piece).await?;
            at += piece.len() as u64;
        }
        Ok(())
    }
}
