//! [`MetroClient`]: the library client of a metro cluster over QUIC.
//!
//! The client authenticates with a client identity (an id in the reserved
//! range of [`crate::pki`], issued by `metro cluster init --clients N`)
//! and sends requests on the client lane to any node: nodes forward client
//! operations to the volume's leader; a [`ClientReply::Redirect`] naming a
//! leader is followed, one naming none (an election is under way) is
//! retried after [`CLIENT_RETRY_PAUSE_MS`].
//!
//! Contract:
//! - Each attempt is bounded by [`ClientConfig::attempt_timeout`]; a node
//!   that times out or is unreachable is avoided for [`CLIENT_SUSPECT_MS`] (a
//!   killed node's connections only fail at the QUIC idle timeout).
//! - Operations are retried until [`ClientConfig::retry_budget`] is spent,
//!   then fail with [`ClientError::Unavailable`]. A write that failed this
//!   way may or may not have been applied (its outcome is unknown); one that
//!   returned `Ok` is committed on a majority and durable.
//! - Writes are idempotent (the same blocks, the same data), so retrying
//!   one whose earlier attempt was applied is harmless.
//! - Requests refused for a reason retrying cannot fix (invalid request, a
//!   range past the volume's end) fail at once with [`ClientError::Refused`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metro_fabric::env::{Lane, NodeId, RequestHandler};
use metro_fabric::host::RequestId;
use metro_fabric::raft::network::{CallError, forward_client};
use metro_fabric::volume::{BlockData, OnceCommand, VolumeCommand, VolumeId, VolumeResponse};
use metro_fabric::wire::{ClientReply, ClientRequest, FaultCode, VolumeStatus};
use openraft_rt_tokio::TokioRuntime;
use parking_lot::Mutex;

use super::session::{Sent, SessionSlot};
use crate::limits::{
    CLIENT_ATTEMPT_TIMEOUT_MS, CLIENT_RETRY_BUDGET_MS, CLIENT_RETRY_PAUSE_MS, CLIENT_SUSPECT_MS,
};
use crate::pki::{CertError, is_client_id, load_identity, load_trust};
use crate::transport::{QuicConfig, QuicError, QuicTransport};

/// The host's prefix of errors that retrying cannot fix.
const INVALID_PREFIX: &str = "invalid request";

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Certs(#[from] CertError),
    #[error(transparent)]
    Quic(#[from] QuicError),
    #[error("client id {0} is not in the reserved client range")]
    NotAClient(NodeId),
    #[error("no node addresses given")]
    NoNodes,
    /// The cluster refused the request; retrying will not help.
    #[error("{volume}: refused: {reason}")]
    Refused { volume: VolumeId, reason: String },
    /// No node completed the operation within the retry budget.
    #[error("{volume}: unavailable after {attempts} attempts: {last}")]
    Unavailable {
        volume: VolumeId,
        attempts: u32,
        last: String,
    },
    /// The volume no longer knows this client's session (internal: the
    /// write registers a new one and sends again).
    #[error("session {session} expired")]
    Expired { session: u64 },
    /// A node answered with a reply that does not answer the request.
    #[error("{volume}: unexpected reply {reply}")]
    Unexpected { volume: VolumeId, reply: String },
}

/// How to reach and authenticate to a cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The certificates directory (`ca.pem`, `node-<client id>.pem/.key`).
    pub certs_dir: PathBuf,
    /// This client's id (in the reserved client range).
    pub client_id: NodeId,
    /// Every node's address.
    pub nodes: BTreeMap<NodeId, SocketAddr>,
    /// Bound on one attempt.
    pub attempt_timeout: Duration,
    /// Bound on one operation, retries included.
    pub retry_budget: Duration,
}

impl ClientConfig {
    /// A configuration with the default timeouts.
    pub fn new(certs_dir: PathBuf, client_id: NodeId, nodes: BTreeMap<NodeId, SocketAddr>) -> Self {
        Self {
            certs_dir,
            client_id,
            nodes,
            attempt_timeout: Duration::from_millis(CLIENT_ATTEMPT_TIMEOUT_MS),
            retry_budget: Duration::from_millis(CLIENT_RETRY_BUDGET_MS),
        }
    }
}

/// Clients accept no requests.
#[derive(Debug)]
struct RefuseAll;

impl RequestHandler for RefuseAll {
    async fn handle(
        &self,
        _from: NodeId,
        _lane: Lane,
        _request: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        Err("a metro client serves no requests".into())
    }
}

/// A connection to a metro cluster. Cheap to share behind an `Arc`; every
/// method may run concurrently.
#[derive(Debug)]
pub struct MetroClient {
    transport: Arc<QuicTransport>,
    nodes: Vec<NodeId>,
    config: ClientConfig,
    /// The node that last answered for each volume (its leader, usually).
    preferred: Mutex<BTreeMap<VolumeId, NodeId>>,
    /// Nodes to avoid until the given time.
    suspects: Mutex<BTreeMap<NodeId, Instant>>,
    /// This client's exactly-once session on each volume it wrote.
    sessions: Mutex<BTreeMap<VolumeId, Arc<SessionSlot>>>,
}

/// What one attempt's outcome means for the retry loop.
enum Step {
    Done(ClientReply),
    Go(NodeId),
    Retry(String),
    Avoid(String),
}

impl MetroClient {
    /// Loads the identity and binds a local QUIC endpoint (inside a tokio
    /// runtime). Connections are made on first use.
    pub fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        if !is_client_id(config.client_id) {
            return Err(ClientError::NotAClient(config.client_id));
        }
        let first = config.nodes.values().next().ok_or(ClientError::NoNodes)?;
        let trust = load_trust(&config.certs_dir)?;
        let identity = load_identity(&config.certs_dir, &trust, config.client_id)?;
        let bind = match first {
            SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
            SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
        };
        let mut quic = QuicConfig::new(identity, trust.ca, bind);
        for (node, addr) in &config.nodes {
            quic = quic.with_peer(*node, *addr);
        }
        let transport = Arc::new(QuicTransport::bind(quic, Arc::new(RefuseAll))?);
        Ok(Self {
            transport,
            nodes: config.nodes.keys().copied().collect(),
            config,
            preferred: Mutex::new(BTreeMap::new()),
            suspects: Mutex::new(BTreeMap::new()),
            sessions: Mutex::new(BTreeMap::new()),
        })
    }

    /// The nodes this client knows.
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// The node to try after `current`: the next one in id order that is
    /// not suspect (any, if all are).
    fn next_node(&self, current: Option<NodeId>) -> NodeId {
        let now = Instant::now();
        let suspects = self.suspects.lock();
        let start = current
            .and_then(|c| self.nodes.iter().position(|n| *n == c))
            .map_or(0, |i| i + 1);
        let n = self.nodes.len();
        (0..n)
            .map(|i| self.nodes[(start + i) % n])
            .find(|node| suspects.get(node).is_none_or(|until| *until <= now))
            .unwrap_or(self.nodes[start % n])
    }

    fn suspect(&self, node: NodeId) {
        self.suspects.lock().insert(
            node,
            Instant::now() + Duration::from_millis(CLIENT_SUSPECT_MS),
        );
    }

    /// One attempt at `target` and what to do next.
    async fn attempt(&self, target: NodeId, volume: VolumeId, request: &ClientRequest) -> Step {
        let call =
            forward_client::<_, TokioRuntime>(&*self.transport, target, volume, request.clone());
        match tokio::time::timeout(self.config.attempt_timeout, call).await {
            Ok(Ok(ClientReply::Redirect {
                leader: Some(leader),
            })) if leader != target && self.nodes.contains(&leader) => Step::Go(leader),
            Ok(Ok(ClientReply::Redirect { .. })) => Step::Retry("no leader known".into()),
            Ok(Ok(ClientReply::Failed { message })) if message.starts_with(INVALID_PREFIX) => {
                Step::Done(ClientReply::Failed { message })
            }
            Ok(Ok(ClientReply::Failed { message })) => Step::Retry(message),
            Ok(Ok(reply)) => Step::Done(reply),
            Ok(Err(CallError::Fault {
                code: FaultCode::UnknownVolume,
                message,
            })) => Step::Retry(message),
            Ok(Err(err)) => Step::Avoid(err.to_string()),
            Err(_) => Step::Avoid(format!("node {target}: no answer in time")),
        }
    }

    /// Sends `request` on `volume` to the cluster, following redirects and
    /// retrying within the budget; the first answer that is not a redirect
    /// or a retryable failure.
    pub async fn request(
        &self,
        volume: VolumeId,
        request: ClientRequest,
    ) -> Result<ClientReply, ClientError> {
        let deadline = Instant::now() + self.config.retry_budget;
        let preferred = self.preferred.lock().get(&volume).copied();
        let mut target = preferred.unwrap_or_else(|| self.next_node(None));
        let mut attempts = 0;
        loop {
            attempts += 1;
            let last = match self.attempt(target, volume, &request).await {
                Step::Done(reply) => {
                    self.preferred.lock().insert(volume, target);
                    return Ok(reply);
                }
                Step::Go(leader) => {
                    target = leader;
                    continue;
                }
                Step::Retry(reason) => {
                    target = self.next_node(Some(target));
                    reason
                }
                Step::Avoid(reason) => {
                    self.suspect(target);
                    target = self.next_node(Some(target));
                    reason
                }
            };
            if Instant::now() >= deadline {
                return Err(ClientError::Unavailable {
                    volume,
                    attempts,
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(CLIENT_RETRY_PAUSE_MS)).await;
        }
    }

    /// Creates `volume` (idempotent) with a replica on each of `members`.
    pub async fn create_volume(
        &self,
        volume: VolumeId,
        size_blocks: u64,
        members: &[NodeId],
    ) -> Result<(), ClientError> {
        let request = ClientRequest::CreateVolume {
            size_blocks,
            members: members.to_vec(),
        };
        expect_done(volume, self.request(volume, request).await?)
    }

    /// Deletes `volume` everywhere (idempotent).
    pub async fn delete_volume(&self, volume: VolumeId) -> Result<(), ClientError> {
        expect_done(
            volume,
            self.request(volume, ClientRequest::DeleteVolume).await?,
        )
    }

    /// Writes whole blocks at `offset_blocks`, exactly once (one request of
    /// this client's session on the volume for every retry, see
    /// `client::session`); the log index once committed and applied.
    pub async fn write(
        &self,
        volume: VolumeId,
        offset_blocks: u64,
        data: BlockData,
    ) -> Result<u64, ClientError> {
        let command = VolumeCommand::Write {
            offset_blocks,
            data,
        };
        let slot = Arc::clone(self.sessions.lock().entry(volume).or_default());
        let register = || self.command(volume, VolumeCommand::RegisterSession);
        let send = |id: RequestId| {
            let once = OnceCommand::new(id.session, id.request, command.clone())
                .expect("a write is a block command and ids are positive");
            async move {
                match self.command(volume, VolumeCommand::Once(once)).await {
                    Err(ClientError::Expired { session }) => Ok(Sent::Expired { session }),
                    Ok(index) => Ok(Sent::Done(index)),
                    Err(err) => Err(err),
                }
            }
        };
        let renewed_too_often = |session, renewals| ClientError::Refused {
            volume,
            reason: format!("session {session} expired {renewals} times in a row"),
        };
        slot.run(register, send, renewed_too_often).await
    }

    /// Runs `command` through the volume's log; its log index once applied.
    async fn command(&self, volume: VolumeId, command: VolumeCommand) -> Result<u64, ClientError> {
        match self
            .request(volume, ClientRequest::Command(command))
            .await?
        {
            ClientReply::Applied {
                log_index,
                response: VolumeResponse::Applied,
            } => Ok(log_index),
            ClientReply::Applied {
                response: VolumeResponse::SessionExpired { session },
                ..
            } => Err(ClientError::Expired { session }),
            ClientReply::Applied { response, .. } => Err(ClientError::Refused {
                volume,
                reason: format!("{response:?}"),
            }),
            other => Err(unexpected(volume, other)),
        }
    }

    /// Reads `len_blocks` blocks at `offset_blocks`, linearizably.
    pub async fn read(
        &self,
        volume: VolumeId,
        offset_blocks: u64,
        len_blocks: u32,
    ) -> Result<BlockData, ClientError> {
        let request = ClientRequest::Read {
            offset_blocks,
            len_blocks,
        };
        match self.request(volume, request).await? {
            ClientReply::Read(data) => Ok(data),
            other => Err(unexpected(volume, other)),
        }
    }

    /// `node`'s own report on its replica of `volume` (one attempt).
    pub async fn status(
        &self,
        volume: VolumeId,
        node: NodeId,
    ) -> Result<VolumeStatus, ClientError> {
        let call = forward_client::<_, TokioRuntime>(
            &*self.transport,
            node,
            volume,
            ClientRequest::Status,
        );
        let unavailable = |last: String| ClientError::Unavailable {
            volume,
            attempts: 1,
            last,
        };
        match tokio::time::timeout(self.config.attempt_timeout, call).await {
            Ok(Ok(ClientReply::Status(status))) => Ok(status),
            Ok(Ok(other)) => Err(unexpected(volume, other)),
            Ok(Err(err)) => Err(unavailable(format!("node {node}: {err}"))),
            Err(_) => Err(unavailable(format!("node {node}: no answer in time"))),
        }
    }

    /// Closes the endpoint.
    pub fn close(&self) {
        self.transport.close();
    }
}

fn expect_done(volume: VolumeId, reply: ClientReply) -> Result<(), ClientError> {
    match reply {
        ClientReply::Done => Ok(()),
        other => Err(unexpected(volume, other)),
    }
}

fn unexpected(volume: VolumeId, reply: ClientReply) -> ClientError {
    match reply {
        ClientReply::Failed { message } => ClientError::Refused {
            volume,
            reason: message,
        },
        other => ClientError::Unexpected {
            volume,
            reply: format!("{other:?}"),
        },
    }
}
