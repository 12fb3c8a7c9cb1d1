//! The admin endpoint of a node: a JSON HTTP/1.1 API over the cluster's
//! desired state and this node's replicas ([`service`], routes in
//! [`routes`], bodies in [`api`]), Prometheus `/metrics` ([`metrics`],
//! written with [`exposition`]), and the small client the `metro` CLI
//! uses ([`client`]).
//!
//! [`AdminServer::start`] binds a TCP listener and serves until
//! [`AdminServer::stop`] (or drop). It also samples the hosted groups'
//! leaders every [`metrics::LEADER_SAMPLE_MS`] so `/metrics` counts leader
//! changes between scrapes. Connections are bounded and idle ones closed
//! ([`listener`]). There is no authentication: bind it to loopback or a
//! management network.

pub mod api;
pub mod client;
pub mod exposition;
pub mod listener;
pub mod metrics;
pub mod routes;
pub mod service;
pub mod size;
pub mod snapshots;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metro_fabric::membership::Membership;
use tokio::task::JoinHandle;

pub use metrics::NodeMetrics;
pub use routes::AdminState;
pub use service::{AdminService, NodeSlot, ServiceError};

/// A running admin endpoint.
#[derive(Debug)]
pub struct AdminServer {
    /// The bound address.
    pub addr: SocketAddr,
    serve: JoinHandle<()>,
    sampler: JoinHandle<()>,
}

impl AdminServer {
    /// Binds `addr` and serves `state` on tasks of the current runtime.
    pub async fn start<M: Membership>(
        addr: SocketAddr,
        state: Arc<AdminState<M>>,
    ) -> io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let weak = Arc::downgrade(&state);
        let sampler = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(metrics::LEADER_SAMPLE_MS));
            loop {
                tick.tick().await;
                let Some(state) = weak.upgrade() else { return };
                if let Some(host) = state.service.host() {
                    state.metrics.observe_leaders(&host);
                }
            }
        });
        let listener = listener::BoundedListener::new(
            listener,
            listener::CONNECTIONS_MAX,
            listener::IDLE_TIMEOUT,
        );
        let app = routes::router(state);
        let serve = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "admin server stopped");
            }
        });
        tracing::info!(%addr, "admin API listening");
        Ok(Self {
            addr,
            serve,
            sampler,
        })
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving (open connections are dropped).
    pub fn stop(&self) {
        self.serve.abort();
        self.sampler.abort();
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop();
    }
}
