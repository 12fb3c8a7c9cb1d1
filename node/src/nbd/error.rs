//! Why a connection ended early. None of these reach the client as a reply:
//! they end its connection (logged at debug level) and never affect others.

use std::io;

/// A connection-fatal error in the handshake or transmission phase.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The socket failed or the peer closed it mid-message.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// The handshake did not finish within [`NBD_HANDSHAKE_TIMEOUT_MS`](crate::limits::NBD_HANDSHAKE_TIMEOUT_MS).
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// The client set handshake flags this server does not know.
    #[error("unknown client flags {0:#x}")]
    ClientFlags(u32),
    /// An option or request did not start with its magic number.
    #[error("bad magic {0:#x}")]
    BadMagic(u64),
    /// An option's data is longer than [`OPTION_DATA_BYTES_MAX`](crate::limits::OPTION_DATA_BYTES_MAX).
    #[error("option data of {0} bytes is too long")]
    OptionTooLong(u32),
    /// More than [`OPTIONS_MAX`](crate::limits::OPTIONS_MAX) options in one handshake.
    #[error("too many options")]
    TooManyOptions,
    /// `NBD_OPT_EXPORT_NAME` named an export that does not exist (the
    /// protocol has no error reply for it).
    #[error("no export named {0:?}")]
    UnknownExport(String),
    /// A write payload longer than [`NBD_PAYLOAD_BYTES_MAX`](crate::limits::NBD_PAYLOAD_BYTES_MAX):
    /// the stream cannot be resynchronised cheaply, so the connection ends.
    #[error("write payload of {0} bytes exceeds the maximum")]
    PayloadTooLarge(u32),
}
