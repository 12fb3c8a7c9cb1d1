//! Counters of an [`NbdServer`](super::NbdServer), for logs and tests; a
//! node's listener counts into its [`NodeMetrics`](crate::admin::NodeMetrics),
//! which renders them on `/metrics` as `metro_nbd_*`.

use std::sync::atomic::AtomicU64;

/// Monotonic counters; read them with `load(Relaxed)`.
#[derive(Debug, Default)]
pub struct NbdStats {
    /// TCP connections accepted.
    pub connections: AtomicU64,
    /// Connections refused because [`NBD_CONNECTIONS_MAX`](crate::limits::NBD_CONNECTIONS_MAX) were open.
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
