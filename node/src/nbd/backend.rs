//! The seam between the NBD server and whatever stores the blocks: a
//! [`BlockBackend`] lists and opens exports, a [`Volume`] serves I/O.
//!
//! Both traits are object safe (the server holds `Arc<dyn BlockBackend>` and
//! `Arc<dyn Volume>`), so their async methods return [`BoxFuture`]s.
//!
//! Contract for [`Volume`] I/O, which the server upholds (see
//! [`super::aligned`]): every range it passes is non-empty, lies inside
//! `0..size_bytes()`, starts and ends on a [`BLOCK_SIZE`](super::BLOCK_SIZE)
//! boundary, and reads and writes are at most
//! [`VOLUME_IO_BYTES_MAX`](crate::limits::VOLUME_IO_BYTES_MAX) long. Requests on one
//! volume arrive concurrently (several connections, up to
//! [`NBD_IN_FLIGHT_MAX`](crate::limits::NBD_IN_FLIGHT_MAX) each) and may complete in any order;
//! a write's future resolving means the write is applied (later reads see it),
//! and `flush` resolving means every write that resolved before `flush` was
//! called is durable.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed, sendable future: the return type of the backend traits' async
/// methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One export as listed by `NBD_OPT_LIST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// The name clients ask for (UTF-8, at most
    /// [`EXPORT_NAME_BYTES_MAX`](crate::limits::EXPORT_NAME_BYTES_MAX) bytes).
    pub name: String,
    /// Size in bytes; the server advertises it rounded down to a whole
    /// [`BLOCK_SIZE`](super::BLOCK_SIZE).
    pub size_bytes: u64,
}

/// Why a backend operation failed. The server answers `NoSpace` with
/// `NBD_ENOSPC` and everything else with `NBD_EIO`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The volume cannot take more data (thin provisioning, quota).
    #[error("no space left on the volume")]
    NoSpace,
    /// The request broke the [`Volume`] contract (a server bug).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The volume is unreachable (no leader, shutting down, ...).
    #[error("volume unavailable: {0}")]
    Unavailable(String),
    /// Any other failure.
    #[error("I/O error: {0}")]
    Io(String),
}

/// The exports a server offers. Implemented by the node (volumes by name) and
/// by [`MemBackend`](super::MemBackend) for tests and the demo.
pub trait BlockBackend: Send + Sync + 'static {
    /// Every export, for `NBD_OPT_LIST`.
    fn exports(&self) -> BoxFuture<'_, Vec<ExportInfo>>;

    /// The volume called `name`, or `None` if there is no such export.
    fn open<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<Arc<dyn Volume>>>;
}

/// An open export: a byte range of whole blocks. See the module docs for the
/// alignment and concurrency contract.
pub trait Volume: Send + Sync + 'static {
    /// Size in bytes (a multiple of [`BLOCK_SIZE`](super::BLOCK_SIZE); any
    /// remainder is not exported).
    fn size_bytes(&self) -> u64;

    /// Reads `len` bytes at `offset`; the result is exactly `len` bytes long.
    fn read(&self, offset: u64, len: u32) -> BoxFuture<'_, Result<Vec<u8>, BackendError>>;

    /// Writes `data` at `offset`.
    fn write<'a>(&'a self, offset: u64, data: &'a [u8]) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Discards `len` bytes at `offset` (they may read as anything, usually
    /// zeroes, until written again).
    fn trim(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Makes `len` bytes at `offset` read as zeroes.
    fn write_zeroes(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Makes every write that completed before this call durable.
    fn flush(&self) -> BoxFuture<'_, Result<(), BackendError>>;
}
