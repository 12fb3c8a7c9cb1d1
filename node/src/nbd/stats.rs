//! Counters of one [`NbdServer`](super::NbdServer), for logs, tests and
//! (later) the metrics endpoint.

use std::sync::atomic::AtomicU64;

/// Monotonic counters; read them with `load(Relaxed)`.
#[derive(Debug, Default)]
pub struct NbdStats {
    /// TCP connections accepted.
    pub connections: AtomicU64,
    /// Connections refused because [`MAX_CONNECTIONS`](super::MAX_CONNECTIONS) were open.
    pub rejected_connections: AtomicU64,
    /// Connections that entered the transmission phase.
    pub sessions: AtomicU64,
    /// Connections ended by a protocol or socket error (handshake included).
    pub connection_errors: AtomicU64,
    /// Transmission requests received (`NBD_CMD_DISC` excluded).
    pub requests: AtomicU64,
    /// Replies carrying an error.
    pub error_replies: AtomicU64,
}
