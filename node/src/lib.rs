//! metro-node: the production implementations of fabric's environment seam
//! and the node around them, one folder per role:
//!
//! * [`daemon`]: `metro node run` — configuration, the control plane, the
//!   etcd-backed [`daemon::etcd_meta`] store.
//! * [`transport`]: QUIC with mutual TLS between nodes (frames, server, rustls
//!   configuration, the demo's injected WAN delay).
//! * [`pki`]: the cluster CA, node and client identities.
//! * [`nbd`]: the NBD protocol server and its host backend.
//! * [`admin`]: the admin HTTP API, its service and `/metrics`.
//! * [`client`]: the data-path client, the admin HTTP client, size units.
//! * [`demo`]: `metro demo`.

pub mod admin;
pub mod client;
pub mod daemon;
pub mod demo;
pub mod limits;
pub mod nbd;
pub mod pki;
pub mod transport;
