//! metro-node: the production implementations of fabric's environment seam
//! (QUIC transport with mutual TLS, the cluster CA) used by the `metro` binary.

pub mod quic_frame;
mod quic_server;
pub mod quic_tls;
pub mod quic_transport;
pub mod tls;
