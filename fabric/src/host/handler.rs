//! The node's [`RequestHandler`]: every lane of every request that reaches
//! the node goes through [`VolumeHost::serve`].
//!
//! Dispatch: Raft traffic (append-entries, votes, snapshot chunks, leader
//! transfer) goes to the group router; host-level requests (create, open,
//! delete, drop, status) to the host; client operations from a client are
//! executed with forwarding to the leader, those from another node (already
//! forwarded) are answered by the local group only. Callers that are not
//! nodes of the cluster may send client requests on the client lane only,
//! and never replica control (open, drop).
//!
//! [`HostHandler`] breaks the construction cycle between a transport that
//! needs its handler to bind and a host that needs the bound transport: it
//! answers with an error until [`HostHandler::attach`] hands it the host.

use std::sync::{Arc, OnceLock};

use openraft::AsyncRuntime;

use super::HostError;
use super::volume_host::VolumeHost;
use crate::control::AdminError;
use crate::env::{Lane, NodeId, RequestHandler, Transport};
use crate::raft::router::RouterError;
use crate::volume::VolumeId;
use crate::wire::{ClientReply, ClientRequest, Fault, FaultCode, Frame, Message, decode, encode};

/// Bounds `err`'s text to what a reply field carries.
fn text(err: impl std::fmt::Display) -> String {
    let max = crate::limits::TEXT_BYTES_MAX as usize;
    let mut message = err.to_string();
    if message.len() > max {
        let mut end = max;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}

fn fault<RT: AsyncRuntime>(code: FaultCode, err: impl std::fmt::Display) -> Message<RT> {
    Message::Fault(Fault {
        code,
        message: text(err),
    })
}

/// The reply frame carrying `message`; a message that does not encode is
/// replaced by a fault (which always encodes: its text is bounded).
fn reply_bytes<RT: AsyncRuntime>(volume: VolumeId, message: Message<RT>) -> Vec<u8> {
    match encode(&Frame { volume, message }) {
        Ok(bytes) => bytes,
        Err(err) => {
            let message = fault::<RT>(
                FaultCode::Unavailable,
                format!("reply does not encode: {err}"),
            );
            encode(&Frame { volume, message }).unwrap_or_default()
        }
    }
}

/// A host error as the client sees it.
fn host_reply(err: HostError) -> ClientReply {
    match err {
        HostError::NoLeader(_) => ClientReply::Redirect { leader: None },
        other => ClientReply::Failed {
            message: text(other),
        },
    }
}

/// The spec and placement a forwarded admin request stands for (the
/// leader needs only the id, size and voter nodes).
fn forwarded_group(
    volume: VolumeId,
    size_blocks: u64,
    members: &[NodeId],
) -> (crate::control::VolumeSpec, crate::control::Placement) {
    let spec = crate::control::VolumeSpec {
        name: volume.to_string(),
        id: volume.0,
        size_bytes: size_blocks.saturating_mul(crate::volume::BLOCK_BYTES as u64),
        replicas: 0,
    };
    let members = members
        .iter()
        .map(|&node| crate::control::Member {
            node,
            domain: String::new(),
            role: crate::control::MemberRole::Data,
        })
        .collect();
    (spec, crate::control::Placement { members })
}

fn done(result: Result<(), HostError>) -> ClientReply {
    result.map_or_else(host_reply, |()| ClientReply::Done)
}

impl<RT: AsyncRuntime, T: Transport> VolumeHost<RT, T> {
    /// Answers one request frame from `from` on `lane` with a reply frame.
    /// `Err` only refuses a caller that may not use `lane` at all.
    pub async fn serve(
        &self,
        from: NodeId,
        lane: Lane,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        let from_node = self.config().is_node(from);
        if !from_node && lane != Lane::Client {
            return Err(format!("caller {from} is a client: client lane only"));
        }
        let frame = match decode::<RT>(&request) {
            Ok(frame) => frame,
            Err(err) => {
                let message = Message::Fault(RouterError::Wire(err).into_fault());
                return Ok(reply_bytes::<RT>(VolumeId(0), message));
            }
        };
        let volume = frame.volume;
        let message = match frame.message {
            Message::Client(request) if !from_node || request.is_host_level() => {
                self.serve_host(from_node, volume, request).await
            }
            _ if !from_node => fault(FaultCode::Unsupported, "clients send client requests only"),
            // A forwarded client operation reaching a leading witness or a
            // leader in an inactive domain: no I/O here (see `witness`);
            // the sender retries.
            Message::Client(_) if self.refuses_io_as_leader(volume) => {
                Message::ClientReply(ClientReply::Redirect { leader: None })
            }
            message => {
                let frame = Frame { volume, message };
                match self.router().handle(from, frame).await {
                    Ok(reply) => reply,
                    Err(err) => Message::Fault(err.into_fault()),
                }
            }
        };
        Ok(reply_bytes::<RT>(volume, message))
    }

    /// Serves a host-level request, or a client operation from a client.
    async fn serve_host(
        &self,
        from_node: bool,
        volume: VolumeId,
        request: ClientRequest,
    ) -> Message<RT> {
        let reply = match request {
            ClientRequest::CreateVolume {
                size_blocks,
                members,
            } => done(self.create_volume(volume, size_blocks, &members).await),
            ClientRequest::DeleteVolume => done(self.delete_volume(volume).await),
            ClientRequest::OpenReplica { .. } | ClientRequest::DropReplica if !from_node => {
                return fault(FaultCode::Unsupported, "replica control is for nodes only");
            }
            ClientRequest::OpenReplica {
                size_blocks,
                members,
            } => done(self.open_replica(volume, size_blocks, &members).await),
            ClientRequest::DropReplica => done(self.drop_replica(volume).await),
            ClientRequest::Status => match self.status(volume).await {
                Ok(status) => ClientReply::Status(status),
                Err(HostError::UnknownVolume(_)) => {
                    return fault(FaultCode::UnknownVolume, HostError::UnknownVolume(volume));
                }
                Err(err) => host_reply(err),
            },
            ClientRequest::LogFloor
            | ClientRequest::ReplaceMember { .. }
            | ClientRequest::InSync { .. }
                if !from_node =>
            {
                return fault(
                    FaultCode::Unsupported,
                    "group administration is for nodes only",
                );
            }
            ClientRequest::ReplaceMember {
                size_blocks,
                members,
                dead,
                replacement,
            } => {
                let (spec, placement) = forwarded_group(volume, size_blocks, &members);
                match self
                    .replace_member_here(&spec, &placement, dead, replacement)
                    .await
                {
                    Ok(()) => ClientReply::Done,
                    Err(AdminError::Diverged { voters, .. }) => ClientReply::Diverged {
                        voters: voters.into_iter().collect(),
                    },
                    Err(AdminError::InProgress { what, .. }) => ClientReply::Running { what },
                    Err(error) => ClientReply::Failed {
                        message: error.to_string(),
                    },
                }
            }
            ClientRequest::InSync { members } => {
                let (spec, placement) = forwarded_group(volume, 0, &members);
                match self.in_sync_here(&spec, &placement).await {
                    Ok(nodes) => ClientReply::InSync {
                        nodes: nodes.into_iter().collect(),
                    },
                    Err(AdminError::Diverged { voters, .. }) => ClientReply::Diverged {
                        voters: voters.into_iter().collect(),
                    },
                    Err(error) => ClientReply::Failed {
                        message: error.to_string(),
                    },
                }
            }
            ClientRequest::LogFloor => match self.log_floor(volume) {
                Ok(index) => ClientReply::LogFloor { index },
                Err(HostError::UnknownVolume(_)) => {
                    return fault(FaultCode::UnknownVolume, HostError::UnknownVolume(volume));
                }
                Err(err) => host_reply(err),
            },
            ClientRequest::ReadSnapshot {
                snapshot_id,
                from_block,
                max_blocks,
            } => match self
                .read_snapshot_here(volume, snapshot_id, from_block, max_blocks)
                .await
            {
                Ok(page) => ClientReply::SnapshotPage(page),
                Err(HostError::UnknownVolume(_)) => {
                    return fault(FaultCode::UnknownVolume, HostError::UnknownVolume(volume));
                }
                Err(err) => host_reply(err),
            },
            request @ (ClientRequest::Command(_) | ClientRequest::Read { .. }) => self
                .execute(volume, request)
                .await
                .unwrap_or_else(host_reply),
        };
        Message::ClientReply(reply)
    }
}

/// The node's request handler: serves through the attached host.
pub struct HostHandler<RT: AsyncRuntime, T: Transport> {
    host: OnceLock<Arc<VolumeHost<RT, T>>>,
}

impl<RT: AsyncRuntime, T: Transport> std::fmt::Debug for HostHandler<RT, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostHandler")
            .field("attached", &self.host.get().is_some())
            .finish()
    }
}

impl<RT: AsyncRuntime, T: Transport> Default for HostHandler<RT, T> {
    fn default() -> Self {
        Self {
            host: OnceLock::new(),
        }
    }
}

impl<RT: AsyncRuntime, T: Transport> HostHandler<RT, T> {
    /// A handler with no host yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Hands the handler its host; later calls are ignored (first wins).
    pub fn attach(&self, host: Arc<VolumeHost<RT, T>>) {
        let _ = self.host.set(host);
    }

    /// The attached host.
    pub fn host(&self) -> Option<&Arc<VolumeHost<RT, T>>> {
        self.host.get()
    }
}

impl<RT: AsyncRuntime, T: Transport> RequestHandler for HostHandler<RT, T> {
    async fn handle(&self, from: NodeId, lane: Lane, request: Vec<u8>) -> Result<Vec<u8>, String> {
        match self.host.get() {
            Some(host) => host.serve(from, lane, request).await,
            None => Err("node starting: no volume host yet".into()),
        }
    }
}
