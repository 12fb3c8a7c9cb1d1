//! [`MemBackend`]: exports held in memory as sparse maps of 4 KiB blocks,
//! for tests and the demo until volumes are served by the volume host.
//! Blocks never written (or zeroed, trimmed) take no memory. Flush is a
//! no-op: everything is "durable" once written. A volume can be told to fail
//! every request (see [`MemVolume::set_failing`]) to exercise error paths.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use parking_lot::Mutex;

use super::BLOCK_SIZE;
use super::backend::{BackendError, BlockBackend, BoxFuture, ExportInfo, Volume};

const BLOCK: usize = BLOCK_SIZE as usize;

/// In-memory exports by name.
#[derive(Debug, Default)]
pub struct MemBackend {
    exports: Mutex<BTreeMap<String, Arc<MemVolume>>>,
}

impl MemBackend {
    /// A backend with no exports.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) an export of `size_bytes` (rounded down to whole
    /// blocks), initially all zeroes.
    pub fn add_export(&self, name: &str, size_bytes: u64) -> Arc<MemVolume> {
        let volume = Arc::new(MemVolume {
            size_bytes: size_bytes / BLOCK_SIZE * BLOCK_SIZE,
            blocks: Mutex::default(),
            failing: AtomicBool::new(false),
        });
        self.exports.lock().insert(name.to_owned(), volume.clone());
        volume
    }

    /// The export called `name`, for inspection by tests.
    pub fn volume(&self, name: &str) -> Option<Arc<MemVolume>> {
        self.exports.lock().get(name).cloned()
    }
}

impl BlockBackend for MemBackend {
    fn exports(&self) -> BoxFuture<'_, Vec<ExportInfo>> {
        let list = self
            .exports
            .lock()
            .iter()
            .map(|(name, v)| ExportInfo {
                name: name.clone(),
                size_bytes: v.size_bytes,
            })
            .collect();
        Box::pin(async move { list })
    }

    /// The empty name (the protocol's "default export") opens the only
    /// export when there is exactly one.
    fn open<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<Arc<dyn Volume>>> {
        let exports = self.exports.lock();
        let found = match (name, exports.len()) {
            ("", 1) => exports.values().next().cloned(),
            _ => exports.get(name).cloned(),
        };
        Box::pin(async move { found.map(|v| v as Arc<dyn Volume>) })
    }
}

/// One in-memory volume.
#[derive(Debug)]
pub struct MemVolume {
    size_bytes: u64,
    blocks: Mutex<BTreeMap<u64, Box<[u8]>>>,
    failing: AtomicBool,
}

impl MemVolume {
    /// Makes every later request fail with [`BackendError::Io`] (or succeed
    /// again).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Relaxed);
    }

    /// Blocks currently holding data (not all zeroes).
    pub fn allocated_blocks(&self) -> usize {
        self.blocks.lock().len()
    }

    /// Reads any byte range inside the volume, for tests (no alignment needed).
    pub fn read_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let blocks = self.blocks.lock();
        let mut out = vec![0u8; len];
        for (i, byte) in out.iter_mut().enumerate() {
            let at = offset + i as u64;
            if let Some(block) = blocks.get(&(at / BLOCK_SIZE)) {
                *byte = block[(at % BLOCK_SIZE) as usize];
            }
        }
        out
    }

    /// Checks the [`Volume`] contract and the fault switch.
    fn check(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        if self.failing.load(Relaxed) {
            return Err(BackendError::Io("injected failure".into()));
        }
        let aligned = offset.is_multiple_of(BLOCK_SIZE) && len.is_multiple_of(BLOCK_SIZE);
        let inside = offset
            .checked_add(len)
            .is_some_and(|end| end <= self.size_bytes);
        if !aligned || !inside || len == 0 {
            return Err(BackendError::Invalid(format!(
                "range {offset}+{len} (volume of {} bytes)",
                self.size_bytes
            )));
        }
        Ok(())
    }

    fn read_now(&self, offset: u64, len: u32) -> Result<Vec<u8>, BackendError> {
        self.check(offset, u64::from(len))?;
        let blocks = self.blocks.lock();
        let mut out = vec![0u8; len as usize];
        for (i, chunk) in out.chunks_mut(BLOCK).enumerate() {
            if let Some(block) = blocks.get(&(offset / BLOCK_SIZE + i as u64)) {
                chunk.copy_from_slice(block);
            }
        }
        Ok(out)
    }

    fn write_now(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.check(offset, data.len() as u64)?;
        let mut blocks = self.blocks.lock();
        for (i, chunk) in data.chunks(BLOCK).enumerate() {
            let index = offset / BLOCK_SIZE + i as u64;
            if chunk.iter().all(|&b| b == 0) {
                blocks.remove(&index);
            } else {
                blocks.insert(index, chunk.into());
            }
        }
        Ok(())
    }

    fn zero_now(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        self.check(offset, len)?;
        let first = offset / BLOCK_SIZE;
        let end = first + len / BLOCK_SIZE;
        let mut blocks = self.blocks.lock();
        let doomed: Vec<u64> = blocks.range(first..end).map(|(k, _)| *k).collect();
        for index in doomed {
            blocks.remove(&index);
        }
        Ok(())
    }
}

impl Volume for MemVolume {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn read(&self, offset: u64, len: u32) -> BoxFuture<'_, Result<Vec<u8>, BackendError>> {
        Box::pin(async move { self.read_now(offset, len) })
    }

    fn write<'a>(&'a self, offset: u64, data: &'a [u8]) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move { self.write_now(offset, data) })
    }

    fn trim(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move { self.zero_now(offset, len) })
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move { self.zero_now(offset, len) })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        let failing = self.failing.load(Relaxed);
        Box::pin(async move {
            match failing {
                true => Err(BackendError::Io("injected failure".into())),
                false => Ok(()),
            }
        })
    }
}
