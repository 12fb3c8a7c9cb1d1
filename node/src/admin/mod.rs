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
pub mod exposition;
pub mod listener;
pub mod metrics;
pub mod routes;
pub mod service;
pub mod snapshots;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::limits::{ADMIN_CONNECTIONS_MAX, ADMIN_IDLE_TIMEOUT_MS, LEADER_SAMPLE_MS};
use metro_fabric::meta::MetaStore;
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
    pub async fn start<M: MetaStore>(
        addr: SocketAddr,
        state: Arc<AdminState<M>>,
    ) -> io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let weak = Arc::downgrade(&state);
        let sampler = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(LEADER_SAMPLE_MS));
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
            ADMIN_CONNECTIONS_MAX,
            Duration::from_millis(ADMIN_IDLE_TIMEOUT_MS),
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

#[cfg(test)]
mod tests {
    use super::exposition::check_exposition;
    use super::*;
    use crate::client::admin_http::AdminClient;
    use crate::daemon::control_plane::EmbeddedStore;
    use crate::demo::nbd_client::NbdClient;
    use crate::nbd::{MemBackend, NbdServer};

    /// The value of the unlabelled sample `name` in a scrape.
    fn sample(text: &str, name: &str) -> u64 {
        let line = text
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no sample {name} in\n{text}"));
        line.parse().unwrap_or_else(|_| panic!("{name} {line:?}"))
    }

    /// NBD traffic through a server counting into the node's metrics shows
    /// on a scrape of `/metrics` as `metro_nbd_*` counters.
    #[tokio::test]
    async fn nbd_counters_reach_metrics() {
        let metrics = NodeMetrics::new();
        let backend = Arc::new(MemBackend::new());
        backend.add_export("vol", 1 << 20);
        let any_port = "127.0.0.1:0".parse().unwrap();
        let server = NbdServer::bind(any_port, backend)
            .await
            .unwrap()
            .with_stats(metrics.nbd());
        let nbd_addr = server.local_addr().unwrap();
        let nbd = tokio::spawn(server.serve());
        let mut client = NbdClient::connect(nbd_addr, "vol").await.unwrap();
        client.write(0, &[7u8; 4096]).await.unwrap();
        assert_eq!(client.read(0, 4096).await.unwrap(), vec![7u8; 4096]);
        client.disconnect().await;

        let service = AdminService::new(EmbeddedStore::new(), "test", NodeSlot::default());
        let state = Arc::new(AdminState { service, metrics });
        let admin = AdminServer::start(any_port, state).await.unwrap();
        let scrape = AdminClient::new(&format!("http://{}", admin.addr))
            .unwrap()
            .raw("GET", "/metrics", None)
            .await
            .unwrap();
        let text = String::from_utf8(scrape.body).unwrap();
        assert!(check_exposition(&text).is_ok(), "{text}");
        assert!(text.contains("# TYPE metro_nbd_requests_total counter\n"));
        assert!(text.contains("# HELP metro_nbd_requests_total "));
        assert_eq!(sample(&text, "metro_nbd_connections_total"), 1);
        assert_eq!(sample(&text, "metro_nbd_sessions_total"), 1);
        assert!(sample(&text, "metro_nbd_requests_total") >= 2);
        assert_eq!(sample(&text, "metro_nbd_error_replies_total"), 0);
        assert_eq!(sample(&text, "metro_nbd_connection_errors_total"), 0);
        admin.stop();
        nbd.abort();
    }
}
