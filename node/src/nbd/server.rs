//! [`NbdServer`]: the TCP listener and one task per connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;

use super::aligned::{AlignedIo, RmwLocks};
use super::backend::BlockBackend;
use super::error::NbdError;
use super::handshake::negotiate;
use super::stats::NbdStats;
use super::transmission::Transmission;
use crate::limits::{NBD_ACCEPT_RETRY_MS, NBD_CONNECTIONS_MAX, NBD_HANDSHAKE_TIMEOUT_MS};

/// An NBD server bound to a TCP address, serving the exports of one
/// [`BlockBackend`].
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use std::sync::Arc;
/// use metro_node::nbd::{MemBackend, NbdServer};
/// let backend = Arc::new(MemBackend::new());
/// backend.add_export("vol", 1 << 30);
/// let server = NbdServer::bind("127.0.0.1:10809".parse().unwrap(), backend).await?;
/// tokio::spawn(server.serve());
/// # Ok(()) }
/// ```
pub struct NbdServer {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NbdServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdServer")
            .field("local_addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

/// What every connection task needs.
struct Shared {
    backend: Arc<dyn BlockBackend>,
    rmw: RmwLocks,
    stats: Arc<NbdStats>,
}

impl NbdServer {
    /// Binds `addr` (port 0 picks a free port; see [`Self::local_addr`]).
    pub async fn bind(addr: SocketAddr, backend: Arc<dyn BlockBackend>) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let shared = Arc::new(Shared {
            backend,
            rmw: RmwLocks::default(),
            stats: Arc::default(),
        });
        Ok(Self { listener, shared })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The server's counters (shared; they keep counting while it serves).
    pub fn stats(&self) -> Arc<NbdStats> {
        self.shared.stats.clone()
    }

    /// The same server counting into `stats` instead of counters of its
    /// own (a node's, which `/metrics` renders and which outlive one
    /// listener).
    pub fn with_stats(mut self, stats: Arc<NbdStats>) -> Self {
        let shared = Arc::get_mut(&mut self.shared);
        // Only `serve` (which consumes the server) shares `shared`.
        shared.expect("an unserved NbdServer owns its state").stats = stats;
        self
    }

    /// Accepts connections forever, each on its own task. Stop it by
    /// aborting the task running it (open connections then finish on their
    /// own when their clients disconnect).
    pub async fn serve(self) {
        let limit = Arc::new(Semaphore::new(NBD_CONNECTIONS_MAX));
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("NBD accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(NBD_ACCEPT_RETRY_MS)).await;
                    continue;
                }
            };
            self.shared.stats.connections.fetch_add(1, Relaxed);
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "refusing NBD connection: {NBD_CONNECTIONS_MAX} open");
                self.shared.stats.rejected_connections.fetch_add(1, Relaxed);
                continue;
            };
            tokio::spawn(serve_connection(self.shared.clone(), stream, peer, permit));
        }
    }
}

/// Runs one connection to the end and logs how it ended.
async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    match connection(&shared, stream).await {
        Ok(()) => tracing::debug!(%peer, "NBD connection closed"),
        Err(e) => {
            shared.stats.connection_errors.fetch_add(1, Relaxed);
            tracing::debug!(%peer, "NBD connection ended: {e}");
        }
    }
}

async fn connection(shared: &Shared, mut stream: TcpStream) -> Result<(), NbdError> {
    stream.set_nodelay(true)?;
    let negotiated = timeout(
        Duration::from_millis(NBD_HANDSHAKE_TIMEOUT_MS),
        negotiate(&mut stream, shared.backend.as_ref()),
    )
    .await
    .map_err(|_| NbdError::HandshakeTimeout)??;
    let Some(negotiated) = negotiated else {
        return Ok(());
    };
    tracing::debug!(
        export = negotiated.name,
        size = negotiated.size,
        "NBD session"
    );
    shared.stats.sessions.fetch_add(1, Relaxed);
    let io = AlignedIo::new(negotiated.volume, shared.rmw.get(&negotiated.name));
    Transmission::new(io, negotiated.size, shared.stats.clone())
        .run(stream)
        .await
}
