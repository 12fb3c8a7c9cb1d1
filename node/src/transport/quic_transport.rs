//! The production [`Transport`]: QUIC (quinn) with mutual TLS, one
//! bidirectional stream per request.
//!
//! Contract:
//! - Every node runs one UDP endpoint that both accepts and dials. Peers are
//!   found in an address book (`NodeId -> SocketAddr`, see
//!   [`QuicTransport::set_address`]) and must be in the allowed set on both
//!   sides: the server refuses, during the handshake, any client whose
//!   certificate does not chain to the cluster CA or whose identity (see
//!   [`crate::pki`]) is not allowed; the client refuses any server whose
//!   certificate is not valid for `node-<id>.<cluster>.metro` of the node it
//!   dialed. The handler learns the caller's [`NodeId`] from its certificate.
//! - Framing is in [`crate::transport::frame`]. A peer that sends an unknown
//!   version, an unknown lane, a length over [`FRAME_BYTES_MAX`] or more
//!   bytes than its length has its connection closed; a truncated frame (or
//!   one not complete within [`FRAME_READ_TIMEOUT_MS`](crate::limits::FRAME_READ_TIMEOUT_MS)) has its stream reset.
//!   Both are logged (`tracing::warn!`) and counted in
//!   [`TransportStats::rejected_frames`]; other connections are unaffected and
//!   nothing on the receive path panics on network bytes.
//! - Errors: connect failures, timeouts and lost connections are
//!   [`TransportError::Unreachable`]; a handler error or a stream the server
//!   rejected is [`TransportError::Failed`]; an oversize request is
//!   [`TransportError::TooLarge`] before anything is sent.
//! - Each peer gets a pool of `connections_per_peer` connections used
//!   round-robin, each re-dialed on next use once it has closed.
//! - An artificial one-way delay per peer ([`QuicTransport::set_delay`]) is
//!   slept before sending a request to, and before responding to, that peer:
//!   with the same delay `d` set on both nodes a round trip takes >= `2d`
//!   (and about that: the sleep is timed by a [`DelayLine`](crate::transport::delay_line) thread to tens of
//!   microseconds, where tokio's millisecond timer wheel rounds every sleep
//!   up to the next tick, turning 2 ms into 2-3 ms).
//! - Limits: [`CONCURRENT_STREAMS_MAX`](crate::limits::CONCURRENT_STREAMS_MAX) per connection, [`QUIC_CONNECTIONS_MAX`](crate::limits::QUIC_CONNECTIONS_MAX)
//!   accepted per node, [`QUIC_CONNECT_TIMEOUT_MS`], [`QUIC_HANDSHAKE_TIMEOUT_MS`](crate::limits::QUIC_HANDSHAKE_TIMEOUT_MS),
//!   [`QUIC_REQUEST_TIMEOUT_MS`], [`FRAME_READ_TIMEOUT_MS`](crate::limits::FRAME_READ_TIMEOUT_MS), [`QUIC_IDLE_TIMEOUT_MS`](crate::limits::QUIC_IDLE_TIMEOUT_MS).
//! - The UDP socket buffers are enlarged to [`SOCKET_BUFFER_BYTES`] so
//!   bursts of pipelined appends are not dropped by the kernel.
//! - `bind` must run inside a tokio runtime; dropping the transport closes
//!   its endpoint and every connection.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use metro_fabric::env::{Lane, NodeId, RequestHandler, Transport, TransportError};
use metro_fabric::limits::FRAME_BYTES_MAX;
use quinn::{Connection, Endpoint, SendStream, VarInt, WriteError};
use rustls::pki_types::CertificateDer;
use tokio::sync::Mutex;
use tokio::time::timeout;

use crate::limits::{
    CONNECTIONS_PER_PEER_MAX, DEFAULT_CONNECTIONS_PER_PEER, NODE_REQUEST_BYTES_IN_FLIGHT_MAX,
    NODE_REQUESTS_IN_FLIGHT_MAX, QUIC_CONNECT_TIMEOUT_MS, QUIC_REQUEST_TIMEOUT_MS,
    SOCKET_BUFFER_BYTES,
};
use crate::pki::{NodeIdentity, TlsError, node_dns_name};
use crate::transport::admission::Admission;
use crate::transport::delay_line::DelayLine;
use crate::transport::frame::{
    FrameError, Status, decode_response_header, read_header, read_payload, write_frame,
};
use crate::transport::server::accept_loop;
pub use crate::transport::tls::AllowList;
use crate::transport::tls::{client_config, server_config};

/// Connection close code: the endpoint is shutting down.
pub const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(0);
/// Connection close code: the peer violated the framing protocol.
pub const CLOSE_PROTOCOL: VarInt = VarInt::from_u32(1);
/// Connection close code: the peer's identity is missing or not allowed.
pub const CLOSE_NOT_ALLOWED: VarInt = VarInt::from_u32(2);
/// Stream reset code: the request frame was truncated or late.
pub const RESET_BAD_FRAME: VarInt = VarInt::from_u32(3);
/// Stream reset code: the caller gave up on the request.
pub const RESET_CANCELLED: VarInt = VarInt::from_u32(4);

/// Errors setting up a [`QuicTransport`].
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("TLS setup: {0}")]
    Tls(#[from] TlsError),
    #[error("binding the QUIC endpoint to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Everything a node needs to run its [`QuicTransport`].
#[derive(Debug)]
pub struct QuicConfig {
    /// UDP address to listen on (port 0: ephemeral).
    pub bind: SocketAddr,
    /// This node's certificate and key; names the node and the cluster.
    pub identity: NodeIdentity,
    /// The cluster CA certificate: the only trust root.
    pub ca: CertificateDer<'static>,
    /// The address book.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Nodes allowed to call this node and to be called by it.
    pub allowed: BTreeSet<NodeId>,
    /// Pooled connections per peer, 1..=[`CONNECTIONS_PER_PEER_MAX`].
    pub connections_per_peer: usize,
    /// Artificial one-way delay per peer (tests and benches).
    pub delays: BTreeMap<NodeId, Duration>,
    /// Requests served at once, at most ([`NODE_REQUESTS_IN_FLIGHT_MAX`];
    /// see `transport::admission`).
    pub requests_in_flight_max: usize,
    /// Request frame bytes held at once, at most
    /// ([`NODE_REQUEST_BYTES_IN_FLIGHT_MAX`]).
    pub request_bytes_in_flight_max: usize,
}

impl QuicConfig {
    /// A configuration with an empty address book and allowed set.
    pub fn new(identity: NodeIdentity, ca: CertificateDer<'static>, bind: SocketAddr) -> Self {
        Self {
            bind,
            identity,
            ca,
            peers: BTreeMap::new(),
            allowed: BTreeSet::new(),
            connections_per_peer: DEFAULT_CONNECTIONS_PER_PEER,
            delays: BTreeMap::new(),
            requests_in_flight_max: NODE_REQUESTS_IN_FLIGHT_MAX,
            request_bytes_in_flight_max: NODE_REQUEST_BYTES_IN_FLIGHT_MAX,
        }
    }

    /// Adds `peer` at `addr` to the address book and the allowed set.
    pub fn with_peer(mut self, peer: NodeId, addr: SocketAddr) -> Self {
        self.peers.insert(peer, addr);
        self.allowed.insert(peer);
        self
    }
}

/// Counters of a [`QuicTransport`], for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Requests whose handler ran and whose response was sent.
    pub requests_served: u64,
    /// Request frames rejected as malformed, truncated or oversize.
    pub rejected_frames: u64,
    /// Incoming connections refused (handshake failed, no or disallowed
    /// identity, too many connections).
    pub rejected_connections: u64,
    /// Handlers cancelled because their caller went away (stopped the
    /// stream or lost the connection) before the answer.
    pub handlers_cancelled: u64,
    /// Requests answered "busy" (the node-wide in-flight bounds).
    pub rejected_busy: u64,
    /// Requests admitted and being served now (Raft between nodes not
    /// counted).
    pub requests_in_flight: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) requests_served: AtomicU64,
    pub(crate) rejected_frames: AtomicU64,
    pub(crate) rejected_connections: AtomicU64,
    pub(crate) handlers_cancelled: AtomicU64,
    pub(crate) rejected_busy: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// State shared by the dialing side and the serving side.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) node: NodeId,
    pub(crate) cluster: String,
    pub(crate) allowed: AllowList,
    pub(crate) delays: RwLock<BTreeMap<NodeId, Duration>>,
    pub(crate) delay_line: DelayLine,
    pub(crate) stats: Stats,
    pub(crate) admission: Arc<Admission>,
}

impl Shared {
    pub(crate) async fn delay(&self, peer: NodeId) {
        let delay = self
            .delays
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&peer)
            .copied()
            .unwrap_or_default();
        if !delay.is_zero() {
            self.delay_line.sleep(delay).await;
        }
    }
}

/// An endpoint on `addr` serving with `server`, its UDP socket buffers
/// enlarged to [`SOCKET_BUFFER_BYTES`] (as `Endpoint::server`, otherwise).
fn bind_endpoint(server: quinn::ServerConfig, addr: SocketAddr) -> std::io::Result<Endpoint> {
    let socket = std::net::UdpSocket::bind(addr)?;
    // Best effort: the kernel caps the sizes at net.core.{r,w}mem_max.
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    if let Err(e) = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER_BYTES) {
        tracing::debug!(error = %e, "could not enlarge the UDP receive buffer");
    }
    if let Err(e) = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER_BYTES) {
        tracing::debug!(error = %e, "could not enlarge the UDP send buffer");
    }
    let runtime =
        quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime found"))?;
    Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        runtime,
    )
}

/// A peer's address and its pool of connection slots.
#[derive(Debug)]
struct PeerPool {
    addr: SocketAddr,
    slots: Vec<Mutex<Option<Connection>>>,
    next: AtomicUsize,
}

impl PeerPool {
    fn new(addr: SocketAddr, size: usize) -> Arc<Self> {
        Arc::new(Self {
            addr,
            slots: (0..size).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        })
    }
}

/// The QUIC transport of one node. Share it behind an `Arc`.
#[derive(Debug)]
pub struct QuicTransport {
    shared: Arc<Shared>,
    endpoint: Endpoint,
    local_addr: SocketAddr,
    peers: RwLock<BTreeMap<NodeId, Arc<PeerPool>>>,
    connections_per_peer: usize,
}

impl QuicTransport {
    /// Binds the endpoint and starts serving requests with `handler`.
    pub fn bind<H: RequestHandler>(config: QuicConfig, handler: Arc<H>) -> Result<Self, QuicError> {
        let size = config.connections_per_peer;
        if !(1..=CONNECTIONS_PER_PEER_MAX).contains(&size) {
            return Err(QuicError::Config(format!(
                "connections_per_peer must be 1..={CONNECTIONS_PER_PEER_MAX}, not {size}"
            )));
        }
        if config.requests_in_flight_max == 0 || config.request_bytes_in_flight_max == 0 {
            return Err(QuicError::Config(
                "the in-flight request and byte bounds must be positive".into(),
            ));
        }
        let allowed = AllowList::new(config.allowed.iter().copied());
        let server = server_config(&config.identity, &config.ca, allowed.clone())?;
        let client = client_config(Some(&config.identity), &config.ca)?;
        let bind_err = |source| QuicError::Bind {
            addr: config.bind,
            source,
        };
        let mut endpoint = bind_endpoint(server, config.bind).map_err(bind_err)?;
        endpoint.set_default_client_config(client);
        let local_addr = endpoint.local_addr().map_err(bind_err)?;
        let shared = Arc::new(Shared {
            node: config.identity.node(),
            cluster: config.identity.cluster().to_owned(),
            allowed,
            delays: RwLock::new(config.delays),
            delay_line: DelayLine::default(),
            stats: Stats::default(),
            admission: Admission::new(
                config.requests_in_flight_max,
                config.request_bytes_in_flight_max,
            ),
        });
        let peers = config
            .peers
            .into_iter()
            .map(|(id, addr)| (id, PeerPool::new(addr, size)))
            .collect();
        tokio::spawn(accept_loop(endpoint.clone(), shared.clone(), handler));
        tracing::info!(node = shared.node, %local_addr, "QUIC transport listening");
        Ok(Self {
            shared,
            endpoint,
            local_addr,
            peers: RwLock::new(peers),
            connections_per_peer: size,
        })
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.shared.node
    }

    /// The UDP address the endpoint is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sets (or changes) `peer`'s address; a change drops its pooled
    /// connections. Does not change the allowed set.
    pub fn set_address(&self, peer: NodeId, addr: SocketAddr) {
        let mut peers = self.peers.write().unwrap_or_else(PoisonError::into_inner);
        if peers.get(&peer).is_none_or(|pool| pool.addr != addr) {
            peers.insert(peer, PeerPool::new(addr, self.connections_per_peer));
        }
    }

    /// Forgets `peer`'s address and drops its pooled connections.
    pub fn remove_address(&self, peer: NodeId) {
        self.peers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&peer);
    }

    /// Allows `peer` to call and be called.
    pub fn allow(&self, peer: NodeId) {
        self.shared.allowed.insert(peer);
    }

    /// Disallows `peer`: new handshakes are refused, its existing inbound
    /// connections are closed on their next request, and calls to it fail.
    pub fn disallow(&self, peer: NodeId) {
        self.shared.allowed.remove(peer);
    }

    /// The currently allowed nodes.
    pub fn allowed(&self) -> BTreeSet<NodeId> {
        self.shared.allowed.to_set()
    }

    /// Sets the artificial one-way delay towards `peer` (zero clears it).
    pub fn set_delay(&self, peer: NodeId, delay: Duration) {
        let mut delays = self
            .shared
            .delays
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if delay.is_zero() {
            delays.remove(&peer);
        } else {
            delays.insert(peer, delay);
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TransportStats {
        let s = &self.shared.stats;
        TransportStats {
            requests_served: s.requests_served.load(Ordering::Relaxed),
            rejected_frames: s.rejected_frames.load(Ordering::Relaxed),
            rejected_connections: s.rejected_connections.load(Ordering::Relaxed),
            handlers_cancelled: s.handlers_cancelled.load(Ordering::Relaxed),
            rejected_busy: s.rejected_busy.load(Ordering::Relaxed),
            requests_in_flight: self.shared.admission.requests_in_use() as u64,
        }
    }

    /// The smoothed QUIC path RTT to each peer with an open pooled
    /// connection (the smallest over its pool), as quinn estimates it.
    /// Read-only and non-blocking: a slot busy being (re)connected is
    /// skipped. Injected delays ([`Self::set_delay`]) are not included:
    /// they sit above QUIC.
    pub fn peer_rtts(&self) -> BTreeMap<NodeId, Duration> {
        let peers = self.peers.read().unwrap_or_else(PoisonError::into_inner);
        let mut rtts = BTreeMap::new();
        for (peer, pool) in peers.iter() {
            let best = pool
                .slots
                .iter()
                .filter_map(|slot| {
                    let guard = slot.try_lock().ok()?;
                    let conn = guard.as_ref()?;
                    conn.close_reason().is_none().then(|| conn.rtt())
                })
                .min();
            if let Some(rtt) = best {
                rtts.insert(*peer, rtt);
            }
        }
        rtts
    }

    /// Closes the endpoint and every connection; later calls fail.
    pub fn close(&self) {
        self.endpoint.close(CLOSE_SHUTDOWN, b"shutdown");
    }

    async fn connection(&self, peer: NodeId) -> Result<Connection, CallError> {
        let pool = self
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&peer)
            .cloned()
            .ok_or_else(|| CallError::Unreachable("no address known".into()))?;
        let index = pool.next.fetch_add(1, Ordering::Relaxed) % pool.slots.len();
        let mut slot = pool.slots[index].lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(conn.clone());
        }
        let server_name = node_dns_name(&self.shared.cluster, peer);
        let connecting = self
            .endpoint
            .connect(pool.addr, &server_name)
            .map_err(|e| CallError::Unreachable(format!("connect to {}: {e}", pool.addr)))?;
        let conn = match timeout(Duration::from_millis(QUIC_CONNECT_TIMEOUT_MS), connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(CallError::Unreachable(format!("connect: {e}"))),
            Err(_) => return Err(CallError::Unreachable("connect timed out".into())),
        };
        tracing::debug!(node = self.shared.node, peer, slot = index, "connected");
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn call_inner(
        &self,
        peer: NodeId,
        lane: Lane,
        request: &[u8],
    ) -> Result<Vec<u8>, CallError> {
        if !self.shared.allowed.contains(peer) {
            return Err(CallError::Unreachable(
                "node is not in the allowed set".into(),
            ));
        }
        let conn = self.connection(peer).await?;
        self.shared.delay(peer).await;
        exchange(&conn, lane, request).await
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.close();
    }
}

impl Transport for QuicTransport {
    async fn call(
        &self,
        peer: NodeId,
        lane: Lane,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError> {
        self.call_within(peer, lane, request, QUIC_REQUEST_TIMEOUT_MS)
            .await
    }

    async fn call_within(
        &self,
        peer: NodeId,
        lane: Lane,
        request: Vec<u8>,
        timeout_ms: u64,
    ) -> Result<Vec<u8>, TransportError> {
        if request.len() > FRAME_BYTES_MAX {
            return Err(TransportError::TooLarge { len: request.len() });
        }
        let cap = Duration::from_millis(timeout_ms);
        let result = match timeout(cap, self.call_inner(peer, lane, &request)).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Unreachable("request timed out".into())),
        };
        result.map_err(|e| {
            let node = self.shared.node;
            match &e {
                CallError::Failed(_) => {
                    tracing::warn!(node, peer, ?lane, error = %e, "call failed")
                }
                CallError::Unreachable(_) => {
                    tracing::debug!(node, peer, ?lane, error = %e, "peer unreachable");
                }
            }
            e.into_transport(peer)
        })
    }
}

/// Why one call failed, before it is tagged with the peer.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Failed(String),
}

impl CallError {
    fn into_transport(self, peer: NodeId) -> TransportError {
        match self {
            Self::Unreachable(reason) => TransportError::Unreachable { peer, reason },
            Self::Failed(reason) => TransportError::Failed { peer, reason },
        }
    }
}

impl From<FrameError> for CallError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::ConnectionLost(reason) => Self::Unreachable(reason),
            other => Self::Failed(format!("bad response: {other}")),
        }
    }
}

impl From<WriteError> for CallError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::ConnectionLost(e) => Self::Unreachable(e.to_string()),
            other => Self::Failed(format!("sending request: {other}")),
        }
    }
}

/// Resets the wrapped send stream if dropped before the frame was finished,
/// so a cancelled call is never mistaken for a complete (short) frame.
struct ResetOnDrop(Option<SendStream>);

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if let Some(send) = self.0.as_mut() {
            let _ = send.reset(RESET_CANCELLED);
        }
    }
}

/// Sends one request frame on a fresh stream and reads its response.
async fn exchange(conn: &Connection, lane: Lane, request: &[u8]) -> Result<Vec<u8>, CallError> {
    let (send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| CallError::Unreachable(e.to_string()))?;
    let mut guard = ResetOnDrop(Some(send));
    if let Some(send) = guard.0.as_mut() {
        write_frame(send, lane as u8, request).await?;
    }
    guard.0 = None;
    let header = read_header(&mut recv).await?;
    let (status, len) = decode_response_header(&header)?;
    let body = read_payload(&mut recv, len).await?;
    match status {
        Status::Ok => Ok(body),
        Status::HandlerError => Err(CallError::Failed(format!(
            "handler error: {}",
            String::from_utf8_lossy(&body)
        ))),
    }
}
