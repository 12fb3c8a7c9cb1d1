//! NBD frontend: any node exports volumes over the Network Block Device
//! protocol so that unmodified clients (qemu, nbd-client, fio, libnbd) can
//! use them.
//!
//! # Protocol subset
//! - Handshake: fixed newstyle only (no oldstyle), `NO_ZEROES` offered.
//!   Options `NBD_OPT_GO`, `NBD_OPT_INFO`, `NBD_OPT_LIST`, `NBD_OPT_ABORT`
//!   and, for old clients, `NBD_OPT_EXPORT_NAME`; anything else (TLS,
//!   structured replies, metadata contexts, extended headers) is answered
//!   `NBD_REP_ERR_UNSUP`. See [`handshake`].
//! - Transmission flags: `HAS_FLAGS`, `SEND_FLUSH`, `SEND_FUA`, `SEND_TRIM`,
//!   `SEND_WRITE_ZEROES` (not `CAN_MULTI_CONN`: the real backend does not
//!   yet promise cross-connection flush semantics).
//! - Commands `READ`, `WRITE`, `FLUSH`, `TRIM`, `WRITE_ZEROES` (with `FUA`,
//!   and `NO_HOLE` as a hint), `DISC`; simple replies only, sent as requests
//!   complete (out of order), up to [`NBD_IN_FLIGHT_MAX`](crate::limits::NBD_IN_FLIGHT_MAX) per connection. See
//!   [`transmission`] for the error mapping.
//! - Block sizes (`NBD_INFO_BLOCK_SIZE`): minimum and preferred
//!   [`BLOCK_SIZE`] (4 KiB, metro's block), maximum [`NBD_PAYLOAD_BYTES_MAX`](crate::limits::NBD_PAYLOAD_BYTES_MAX).
//!   Unaligned requests are still served correctly (see [`aligned`]).
//!
//! # Contracts
//! - Network bytes never panic the server: malformed input gets an error
//!   reply or closes that one connection; other connections are unaffected.
//! - Exports come from a [`BlockBackend`]; I/O goes to a [`Volume`] whose
//!   requests are always block-aligned, in range and bounded (see
//!   [`backend`]). [`MemBackend`] is the in-memory implementation.
//! - Start with [`NbdServer::bind`] and run [`NbdServer::serve`] on a task.

mod aligned;
pub mod backend;
mod error;
mod handshake;
pub mod host;
mod mem;
pub mod proto;
mod server;
mod stats;
mod transmission;

pub use backend::{BackendError, BlockBackend, BoxFuture, ExportInfo, Volume};
pub use error::NbdError;
pub use mem::{MemBackend, MemVolume};
pub use server::NbdServer;
pub use stats::NbdStats;

/// The block size of metro volumes; advertised as minimum and preferred
/// block size. Every [`Volume`] request is aligned to it.
pub const BLOCK_SIZE: u64 = metro_fabric::volume::BLOCK_BYTES_U64;
