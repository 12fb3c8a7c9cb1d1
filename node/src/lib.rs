//! metro-node: the production implementations of fabric's environment seam
//! (QUIC transport with mutual TLS, the cluster CA, etcd membership), the
//! node daemon ([`daemon`], configured by [`config`]) and the library client
//! ([`client`]) used by the `metro` binary.

pub mod admin;
pub mod certs;
pub mod client;
pub mod config;
pub mod control_plane;
pub mod daemon;
pub mod demo;
pub mod etcd_membership;
pub mod nbd;
pub mod nbd_host;
pub mod quic_frame;
mod quic_server;
pub mod quic_tls;
pub mod quic_transport;
pub mod tls;
