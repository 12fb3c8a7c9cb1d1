//! Clients of a metro node: the data-path [`MetroClient`] (QUIC, client
//! certificate), the admin API's HTTP client ([`admin_http`]) and the size
//! units both the CLI and the API speak ([`size`]).

pub mod admin_http;
mod metro_client;
pub mod session;
pub mod size;

pub use metro_client::{ClientConfig, ClientError, MetroClient};
