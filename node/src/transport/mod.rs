//! Node-to-node transport: QUIC with mutual TLS under the cluster CA.
//!
//! * [`QuicTransport`]: the production [`metro_fabric::env::Transport`]
//!   (dialing, connection pools, the contract).
//! * [`server`]: the serving side (accept, dispatch to the handler).
//! * [`admission`]: the node-wide bound on requests and bytes in flight.
//! * [`frame`]: the request/response framing on each stream.
//! * [`tls`]: rustls/quinn configuration, ALPN and the allow-list.
//! * [`delay_line`]: the demo's injected one-way delay per peer.
//! * [`hold_forwards`]: a test fault holding forwarded volume commands.

mod admission;
mod delay_line;
pub mod frame;
pub mod hold_forwards;
mod quic_transport;
mod server;
pub mod tls;

pub use quic_transport::*;
