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
//!   complete (out of order), up to [`MAX_IN_FLIGHT`] per connection. See
//!   [`transmission`] for the error mapping.
//! - Block sizes (`NBD_INFO_BLOCK_SIZE`): minimum and preferred
//!   [`BLOCK_SIZE`] (4 KiB, metro's block), maximum [`MAX_PAYLOAD_BYTES`].
//!   Unaligned requests are still served correctly (see [`aligned`]).
//!
//! # Contracts
//! - Network bytes never panic the server: malformed input gets an error
//!   reply or closes that one connection; other connections are unaffected.
//! - Exports come from a [`BlockBackend`]; I/O goes to a [`Volume`] whose
//!   requests are always block-aligned, in range and bounded (see
//!   [`backend`]). [`MemBackend`] is the in-memory implementation.
//! - Start with [`NbdServer::bind`] and run [`NbdServer::serve`] on a task.

use std::time::Duration;

mod aligned;
pub mod backend;
mod error;
mod handshake;
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
/// Largest read or write payload a client may send (advertised as the
/// maximum block size); larger reads get `EINVAL`, larger writes end the
/// connection.
pub const MAX_PAYLOAD_BYTES: u32 = 32 * 1024 * 1024;
/// Largest read or write the server passes to a [`Volume`] in one call
/// (4096 blocks, the volume host's per-command limit); bigger requests are
/// split.
pub const VOLUME_IO_MAX_BYTES: u64 = 4096 * BLOCK_SIZE;
/// Requests of one connection being served at once; the reader stops
/// reading while this many await their replies.
pub const MAX_IN_FLIGHT: usize = 32;
/// Read and write payload bytes of one connection being served at once.
pub const MAX_IN_FLIGHT_BYTES: u32 = 64 * 1024 * 1024;
/// Open connections per server; further connections are closed at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Time a client has to finish the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest option data accepted in the handshake (an export name of at most
/// [`EXPORT_NAME_MAX`] bytes plus info requests fits easily).
pub const OPTION_DATA_MAX: u32 = 8 * 1024;
/// Longest export name (the protocol's limit for strings).
pub const EXPORT_NAME_MAX: usize = 4096;
/// Options one handshake may send before the server gives up on it.
pub const OPTIONS_MAX: usize = 64;
/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
