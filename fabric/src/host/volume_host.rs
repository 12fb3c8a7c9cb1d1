//! [`VolumeHost`]: the replicas of one node, their lifecycle (create, open
//! at restart, delete) and the client operations on them, forwarded to each
//! volume's leader. See the module docs of [`super`] for the contracts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openraft::AsyncRuntime;
use openraft::base::BoxFuture;
use openraft::error::{InitializeError, RaftError};
use openraft::rt::Mutex as _;
use parking_lot::Mutex;

use super::catalogue::Catalogue;
use super::status::replica_status;
use super::{HostConfig, HostError, RequestId};
use crate::env::{NodeId, Transport};
use crate::limits::{
    CONTROL_TIMEOUT_MS, FORWARD_DEADLINE_MS, FORWARD_HOPS_MAX, FORWARD_TIMEOUT_MS, MEMBERS_MAX,
    READ_BLOCKS_MAX, SUSPECTS_MAX, VOLUMES_MAX,
};
use crate::raft::network::{CallError, NetworkFactory, forward_client};
use crate::raft::router::GroupRouter;
use crate::raft::types::{RaftNode, VolumeRaft};
use crate::storage::{NodeStorage, VolumeHandle, VolumeStateMachine};
use crate::volume::{BlockData, OnceCommand, VolumeCommand, VolumeId, VolumeResponse};
use crate::wire::{ClientReply, ClientRequest, FaultCode, Frame, Message, VolumeStatus};

/// The state machine of every hosted group.
pub type HostStateMachine<RT> = VolumeStateMachine<RT>;
/// The router of every hosted group.
pub type HostRouter<RT> = GroupRouter<RT, HostStateMachine<RT>>;

/// All replicas of one node. Share it behind an `Arc`.
pub struct VolumeHost<RT: AsyncRuntime, T: Transport> {
    config: HostConfig,
    storage: Arc<NodeStorage>,
    catalogue: Catalogue,
    router: Arc<HostRouter<RT>>,
    transport: Arc<T>,
    /// Size in blocks of each hosted replica as created.
    replicas: Mutex<BTreeMap<VolumeId, u64>>,
    /// Serializes replica opening and dropping (they await storage), so a
    /// group is never started twice on the same storage.
    lifecycle: <RT as AsyncRuntime>::Mutex<()>,
    /// The last node that answered as leader, per volume not hosted here.
    leader_hints: Mutex<BTreeMap<VolumeId, NodeId>>,
    /// Peers that failed a forwarded request, least recently failed first
    /// (at most one entry per peer): asked last until one answers again.
    suspects: Mutex<Vec<NodeId>>,
    /// Whether this node's domain lets it serve I/O (false while inactive).
    domain_active: AtomicBool,
    /// The planted bug of `group_change` (never set in production).
    pub(super) unfenced_planted: AtomicBool,
    /// Per group this node leads: its learners outside the voters, and
    /// since when each was seen so (`group_change`'s orphan collection).
    pub(super) learners_seen: Mutex<BTreeMap<VolumeId, BTreeMap<NodeId, RT::Instant>>>,
    /// Replacement jobs this node runs as leader (`group_change`).
    pub(super) replacements: Mutex<BTreeMap<VolumeId, super::group_change::Job>>,
    /// This host, for the jobs it starts.
    pub(super) me: std::sync::Weak<Self>,
}

impl<RT: AsyncRuntime, T: Transport> std::fmt::Debug for VolumeHost<RT, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeHost")
            .field("node", &self.config.node)
            .field("volumes", &self.volumes())
            .finish_non_exhaustive()
    }
}

pub(super) fn member(id: NodeId) -> RaftNode {
    RaftNode {
        addr: format!("node-{id}"),
    }
}

fn failed(volume: VolumeId, reason: impl std::fmt::Display) -> HostError {
    HostError::Failed {
        volume,
        reason: reason.to_string(),
    }
}

impl<RT: AsyncRuntime, T: Transport> VolumeHost<RT, T> {
    /// A host with no replica open yet; call [`Self::open_existing`] next.
    /// `config.raft` must keep openraft's leader restore off (as
    /// [`super::base_raft_config`] does): a restarted leader resuming its
    /// term would serve reads below writes it acknowledged.
    pub fn new(config: HostConfig, storage: Arc<NodeStorage>, transport: Arc<T>) -> Arc<Self> {
        assert_eq!(
            config.witness,
            storage.is_witness(),
            "a witness host needs witness storage and a data host data storage"
        );
        assert_eq!(
            config.raft.enable_leader_restore,
            Some(false),
            "groups must not resume leadership at a restart (see base_raft_config)"
        );
        Arc::new_cyclic(|me| Self {
            catalogue: Catalogue::new(storage.store().clone()),
            config,
            storage,
            router: Arc::new(GroupRouter::new()),
            transport,
            replicas: Mutex::new(BTreeMap::new()),
            lifecycle: <RT as AsyncRuntime>::Mutex::new(()),
            leader_hints: Mutex::new(BTreeMap::new()),
            suspects: Mutex::new(Vec::new()),
            domain_active: AtomicBool::new(true),
            unfenced_planted: AtomicBool::new(false),
            learners_seen: Mutex::new(BTreeMap::new()),
            replacements: Mutex::new(BTreeMap::new()),
            me: me.clone(),
        })
    }

    /// Lets this node serve I/O again, or stops it (its domain was
    /// deactivated): see `witness`'s module docs.
    pub fn set_io_allowed(&self, allowed: bool) {
        self.domain_active.store(allowed, Ordering::Release);
    }

    /// Whether this node serves I/O (a witness never does).
    pub fn io_allowed(&self) -> bool {
        !self.config.witness && self.domain_active.load(Ordering::Acquire)
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.config.node
    }

    /// The host's configuration.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// The router holding every hosted group's `Raft` handle.
    pub fn router(&self) -> &Arc<HostRouter<RT>> {
        &self.router
    }

    /// The node's storage (its kvstore).
    pub fn storage(&self) -> &Arc<NodeStorage> {
        &self.storage
    }

    /// The node's transport.
    pub fn transport(&self) -> &Arc<T> {
        &self.transport
    }

    /// The volumes with a replica here, in order.
    pub fn volumes(&self) -> Vec<VolumeId> {
        self.replicas.lock().keys().copied().collect()
    }

    /// The `Raft` handle of `volume`'s replica here.
    pub fn raft(&self, volume: VolumeId) -> Option<VolumeRaft<RT, HostStateMachine<RT>>> {
        self.router.get(volume)
    }

    /// Reopens every replica in the catalogue (at start-up, before the
    /// transport serves requests); returns how many.
    pub async fn open_existing(&self) -> Result<usize, HostError> {
        let _guard = self.lifecycle.lock().await;
        let recorded = self.catalogue.load()?;
        for (volume, size_blocks) in &recorded {
            if !self.replicas.lock().contains_key(volume) {
                self.start_group(*volume, *size_blocks).await?;
            }
        }
        Ok(recorded.len())
    }

    /// Starts `volume`'s group from storage and routes to it. The caller
    /// holds the lifecycle lock and has recorded it in the catalogue.
    async fn start_group(&self, volume: VolumeId, size_blocks: u64) -> Result<(), HostError> {
        let (log, sm) = self.storage.open_group::<RT>(volume, size_blocks)?;
        let network = NetworkFactory::<T, RT>::new(Arc::clone(&self.transport), volume);
        let raft = VolumeRaft::<RT, HostStateMachine<RT>>::new(
            self.config.node,
            Arc::clone(&self.config.raft),
            network,
            log,
            sm,
        )
        .await
        .map_err(|err| failed(volume, format!("starting the group: {err}")))?;
        self.router.insert(volume, raft);
        let mut replicas = self.replicas.lock();
        replicas.insert(volume, size_blocks);
        assert!(
            replicas.len() <= VOLUMES_MAX,
            "hosted replicas stay bounded"
        );
        drop(replicas);
        Ok(())
    }

    /// Checks a create request's members: 1..=MEMBERS_MAX distinct known
    /// nodes.
    fn check_members(&self, size_blocks: u64, members: &[NodeId]) -> Result<(), HostError> {
        let distinct: BTreeSet<NodeId> = members.iter().copied().collect();
        if size_blocks == 0 {
            return Err(HostError::Invalid(
                "a volume needs at least one block".into(),
            ));
        }
        if members.is_empty() || members.len() > MEMBERS_MAX as usize {
            return Err(HostError::Invalid(format!(
                "a volume needs 1..={MEMBERS_MAX} members, not {}",
                members.len()
            )));
        }
        if distinct.len() != members.len() {
            return Err(HostError::Invalid("members repeat".into()));
        }
        if let Some(unknown) = members.iter().find(|id| !self.config.is_node(**id)) {
            return Err(HostError::Invalid(format!(
                "node {unknown} is not in the cluster"
            )));
        }
        Ok(())
    }

    /// Opens an empty replica of `volume` here (recorded durably first)
    /// and initializes its group with `members`. Idempotent: an open
    /// replica of the same size is left as it is. With no `members` the
    /// replica is opened but not initialized ([`Self::open_learner`]).
    pub async fn open_replica(
        &self,
        volume: VolumeId,
        size_blocks: u64,
        members: &[NodeId],
    ) -> Result<(), HostError> {
        if members.is_empty() {
            return self.open_learner(volume, size_blocks).await;
        }
        self.check_members(size_blocks, members)?;
        if !members.contains(&self.config.node) {
            return Err(HostError::Invalid(format!(
                "node {} is not a member of {volume}",
                self.config.node
            )));
        }
        self.ensure_open(volume, size_blocks).await?;
        let raft = self.raft(volume).ok_or(HostError::UnknownVolume(volume))?;
        let initialized = raft.is_initialized().await.map_err(|e| failed(volume, e))?;
        if !initialized {
            let nodes: BTreeMap<NodeId, RaftNode> =
                members.iter().map(|id| (*id, member(*id))).collect();
            match raft.initialize(nodes).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(err) => return Err(failed(volume, format!("initializing: {err}"))),
            }
        }
        Ok(())
    }

    /// Opens an empty replica of `volume` here without initializing its
    /// group: a replacement member, which the group's leader then adds as
    /// a learner and catches up (idempotent).
    pub async fn open_learner(&self, volume: VolumeId, size_blocks: u64) -> Result<(), HostError> {
        if size_blocks == 0 {
            return Err(HostError::Invalid(
                "a volume needs at least one block".into(),
            ));
        }
        self.ensure_open(volume, size_blocks).await
    }

    /// Records and starts `volume`'s replica unless it is open already.
    async fn ensure_open(&self, volume: VolumeId, size_blocks: u64) -> Result<(), HostError> {
        let _guard = self.lifecycle.lock().await;
        let existing = self.replicas.lock().get(&volume).copied();
        match existing {
            Some(size) if size == size_blocks => {}
            Some(size) => {
                return Err(HostError::Invalid(format!(
                    "{volume} exists here with {size} blocks, not {size_blocks}"
                )));
            }
            None => {
                if self.replicas.lock().len() >= VOLUMES_MAX {
                    return Err(HostError::Full);
                }
                self.catalogue.record::<RT>(volume, size_blocks).await?;
                self.start_group(volume, size_blocks).await?;
            }
        }
        Ok(())
    }

    /// Creates `volume` with a replica on each of `members` (idempotent):
    /// every member opens an empty replica and initializes the group with
    /// the same membership.
    pub async fn create_volume(
        &self,
        volume: VolumeId,
        size_blocks: u64,
        members: &[NodeId],
    ) -> Result<(), HostError> {
        self.check_members(size_blocks, members)?;
        for &peer in members {
            if peer == self.config.node {
                self.open_replica(volume, size_blocks, members).await?;
                continue;
            }
            let request = ClientRequest::OpenReplica {
                size_blocks,
                members: members.to_vec(),
            };
            self.control(peer, volume, request).await?;
        }
        Ok(())
    }

    /// Sends a replica-control request to `peer`; `Done` is success.
    pub(crate) async fn control(
        &self,
        peer: NodeId,
        volume: VolumeId,
        request: ClientRequest,
    ) -> Result<(), HostError> {
        let timeout = Duration::from_millis(CONTROL_TIMEOUT_MS);
        let call = forward_client::<T, RT>(&*self.transport, peer, volume, request);
        match RT::timeout(timeout, call).await {
            Ok(Ok(ClientReply::Done)) => Ok(()),
            Ok(Ok(ClientReply::Failed { message })) => Err(HostError::Peer {
                peer,
                reason: message,
            }),
            Ok(Ok(other)) => Err(HostError::Peer {
                peer,
                reason: format!("unexpected reply {other:?}"),
            }),
            Ok(Err(err)) => Err(HostError::peer(peer, &err)),
            Err(_) => Err(HostError::Peer {
                peer,
                reason: format!("no answer within {CONTROL_TIMEOUT_MS} ms"),
            }),
        }
    }

    /// Stops and deletes this node's replica of `volume` (its group, its
    /// data, its catalogue entry). Idempotent.
    pub async fn drop_replica(&self, volume: VolumeId) -> Result<(), HostError> {
        let _guard = self.lifecycle.lock().await;
        if let Some(raft) = self.router.remove(volume) {
            // A group that fails to shut down cleanly has stopped anyway;
            // its storage goes below either way.
            let _ = raft.shutdown().await;
        }
        self.replicas.lock().remove(&volume);
        self.catalogue.drop_replica::<RT>(volume).await
    }

    /// Deletes `volume` on this node and every peer (idempotent); fails if
    /// a peer cannot be reached (retry once it is back).
    pub async fn delete_volume(&self, volume: VolumeId) -> Result<(), HostError> {
        self.drop_replica(volume).await?;
        let mut first_error = None;
        for &peer in &self.config.peers {
            if let Err(err) = self.control(peer, volume, ClientRequest::DropReplica).await {
                first_error.get_or_insert(err);
            }
        }
        self.leader_hints.lock().remove(&volume);
        first_error.map_or(Ok(()), Err)
    }

    /// Stops every group (at node shutdown); storage stays as it is, so
    /// [`Self::open_existing`] on the same store resumes them.
    pub async fn shutdown(&self) {
        let _guard = self.lifecycle.lock().await;
        for volume in self.router.volumes() {
            if let Some(raft) = self.router.remove(volume) {
                let _ = raft.shutdown().await;
            }
        }
        self.replicas.lock().clear();
    }

    /// A read handle on this node's replica of `volume` (taken from the
    /// state machine's task, so it is that replica's current one).
    pub async fn replica_handle(&self, volume: VolumeId) -> Result<VolumeHandle, HostError> {
        let raft = self.raft(volume).ok_or(HostError::UnknownVolume(volume))?;
        raft.with_state_machine(|sm: &mut VolumeStateMachine<RT>| {
            let handle = sm.handle();
            Box::pin(async move { handle }) as BoxFuture<'_, VolumeHandle>
        })
        .await
        .map_err(|fatal| failed(volume, fatal))
    }

    /// This node's status of its replica of `volume`.
    pub async fn status(&self, volume: VolumeId) -> Result<VolumeStatus, HostError> {
        let raft = self.raft(volume).ok_or(HostError::UnknownVolume(volume))?;
        replica_status::<RT>(self.config.node, volume, &raft).await
    }

    /// Where to send a client operation first: here if a replica is here,
    /// else the last known leader, then every peer — peers that failed us
    /// lately last, so that a caller's retry after a dead or partitioned
    /// peer asks the others first instead of that peer forever.
    fn targets(&self, volume: VolumeId) -> Vec<NodeId> {
        if self.router.get(volume).is_some() {
            return vec![self.config.node];
        }
        let hint = self.leader_hints.lock().get(&volume).copied();
        let suspects = self.suspects.lock().clone();
        let mut targets: Vec<NodeId> = hint.into_iter().collect();
        targets.extend(
            self.config
                .peers
                .iter()
                .filter(|p| Some(**p) != hint && !suspects.contains(p)),
        );
        targets.extend(
            suspects
                .iter()
                .filter(|s| Some(**s) != hint && self.config.peers.contains(s)),
        );
        targets
    }

    /// Records that `peer` failed a forwarded request (it goes last) or
    /// answered one (it is trusted again).
    fn note_peer(&self, peer: NodeId, answered: bool) {
        let mut suspects = self.suspects.lock();
        suspects.retain(|s| *s != peer);
        if !answered {
            suspects.push(peer);
        }
        // Bounded: one entry per peer, and never more than a cluster's worth.
        if suspects.len() > SUSPECTS_MAX {
            suspects.remove(0);
        }
    }

    /// Serves `request` with this node's replica (answer or redirect).
    async fn serve_local(
        &self,
        volume: VolumeId,
        request: ClientRequest,
    ) -> Result<ClientReply, HostError> {
        if self.refuses_io_as_leader(volume) {
            // A witness has no blocks to read, an inactive domain serves
            // nothing; both hand leadership on: "no leader now", retry.
            return Ok(ClientReply::Redirect { leader: None });
        }
        let frame = Frame::<RT> {
            volume,
            message: Message::Client(request),
        };
        match self.router.handle(self.config.node, frame).await {
            Ok(Message::ClientReply(reply)) => Ok(reply),
            Ok(other) => Err(failed(volume, format!("router answered {other:?}"))),
            Err(err) => Err(failed(volume, err)),
        }
    }

    /// One hop: serve here or ask `target`, bounded by
    /// [`FORWARD_TIMEOUT_MS`]; a peer that fails it is asked last next time.
    pub(super) async fn hop(
        &self,
        target: NodeId,
        volume: VolumeId,
        request: &ClientRequest,
    ) -> Result<ClientReply, HostError> {
        if target == self.config.node {
            return self.serve_local(volume, request.clone()).await;
        }
        let timeout = Duration::from_millis(FORWARD_TIMEOUT_MS);
        let call = forward_client::<T, RT>(&*self.transport, target, volume, request.clone());
        let answer = RT::timeout(timeout, call).await;
        self.note_peer(target, matches!(answer, Ok(Ok(_))));
        match answer {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(CallError::Fault {
                code: FaultCode::UnknownVolume,
                ..
            })) => Err(HostError::UnknownVolume(volume)),
            Ok(Err(err)) => Err(HostError::peer(target, &err)),
            Err(_) => Err(HostError::Peer {
                peer: target,
                reason: format!("no answer within {FORWARD_TIMEOUT_MS} ms"),
            }),
        }
    }

    /// Runs a client operation on `volume`'s leader, wherever it is:
    /// follows up to [`FORWARD_HOPS_MAX`] redirects, all within
    /// [`FORWARD_DEADLINE_MS`] (past it the outcome is unknown: `Failed`).
    /// Returns the leader's answer, or `Redirect { leader: None }` when no
    /// leader is known now.
    pub async fn execute(
        &self,
        volume: VolumeId,
        request: ClientRequest,
    ) -> Result<ClientReply, HostError> {
        if request.is_host_level() {
            return Err(HostError::Invalid("not a client operation".into()));
        }
        if !self.domain_active.load(Ordering::Acquire) {
            // This node's domain is inactive: no I/O through it at all (a
            // witness still forwards; it only never serves as leader).
            return Err(HostError::NoLeader(volume));
        }
        let deadline = Duration::from_millis(FORWARD_DEADLINE_MS);
        // Boxed: keeps the futures of callers nesting `execute` shallow.
        let forward = Box::pin(self.forward(volume, &request));
        match RT::timeout(deadline, forward).await {
            Ok(answer) => answer,
            Err(_) => Err(failed(
                volume,
                format!("no answer within {FORWARD_DEADLINE_MS} ms"),
            )),
        }
    }

    /// [`Self::execute`]'s hops, without its deadline.
    async fn forward(
        &self,
        volume: VolumeId,
        request: &ClientRequest,
    ) -> Result<ClientReply, HostError> {
        let mut last_error = HostError::UnknownVolume(volume);
        for start in self.targets(volume) {
            let mut target = start;
            for _ in 0..FORWARD_HOPS_MAX {
                let reply = match self.hop(target, volume, request).await {
                    Ok(reply) => reply,
                    Err(HostError::UnknownVolume(_)) if target == start => break,
                    Err(err) => {
                        // The hinted leader failed us (gone, partitioned):
                        // forget it, so that the caller's retry asks the
                        // other nodes instead of it forever. The error is
                        // returned as is: the request may have been applied.
                        let mut hints = self.leader_hints.lock();
                        if hints.get(&volume) == Some(&target) {
                            hints.remove(&volume);
                        }
                        return Err(err);
                    }
                };
                match reply {
                    ClientReply::Redirect {
                        leader: Some(leader),
                    } if leader != target => target = leader,
                    ClientReply::Redirect { .. } => return Ok(reply),
                    other => {
                        if target != self.config.node {
                            self.leader_hints.lock().insert(volume, target);
                        }
                        return Ok(other);
                    }
                }
            }
            last_error = HostError::NoLeader(volume);
        }
        Err(last_error)
    }

    /// Runs `command` through the leader; its log index once applied.
    pub async fn command(
        &self,
        volume: VolumeId,
        command: VolumeCommand,
    ) -> Result<u64, HostError> {
        match self
            .execute(volume, ClientRequest::Command(command))
            .await?
        {
            ClientReply::Applied {
                log_index,
                response: VolumeResponse::Applied,
            } => Ok(log_index),
            ClientReply::Applied { response, .. } => Err(HostError::Refused { volume, response }),
            other => Err(unanswered(volume, other)),
        }
    }

    /// Registers a client session on `volume` through its log; the
    /// session's id (see `storage/sessions.rs` and [`SessionWindow`](super::SessionWindow)).
    pub async fn register_session(&self, volume: VolumeId) -> Result<u64, HostError> {
        self.command(volume, VolumeCommand::RegisterSession).await
    }

    /// Runs the block command `command` as request `id` of its session:
    /// however often it is called with the same `id` (retries through any
    /// node included), the volume applies it at most once. A session the
    /// volume no longer knows is refused with `SessionExpired`, a request
    /// below its window with `RequestStale` (both [`HostError::Refused`]).
    pub async fn command_once(
        &self,
        volume: VolumeId,
        id: RequestId,
        command: VolumeCommand,
    ) -> Result<u64, HostError> {
        let once = OnceCommand::new(id.session, id.request, command).ok_or_else(|| {
            HostError::Invalid("only block commands of a registered session run once".into())
        })?;
        self.command(volume, VolumeCommand::Once(once)).await
    }

    /// Writes whole blocks at `offset_blocks`; the log index once applied.
    pub async fn write(
        &self,
        volume: VolumeId,
        offset_blocks: u64,
        data: BlockData,
    ) -> Result<u64, HostError> {
        let command = VolumeCommand::Write {
            offset_blocks,
            data,
        };
        self.command(volume, command).await
    }

    /// Discards blocks (they read as zeroes afterwards).
    pub async fn trim(
        &self,
        volume: VolumeId,
        offset_blocks: u64,
        len_blocks: u64,
    ) -> Result<u64, HostError> {
        let command = VolumeCommand::Trim {
            offset_blocks,
            len_blocks,
        };
        self.command(volume, command).await
    }

    /// Makes blocks read as zeroes.
    pub async fn write_zeroes(
        &self,
        volume: VolumeId,
        offset_blocks: u64,
        len_blocks: u64,
    ) -> Result<u64, HostError> {
        let command = VolumeCommand::WriteZeroes {
            offset_blocks,
            len_blocks,
        };
        self.command(volume, command).await
    }

    /// Reads blocks linearizably (through the leader, read-index).
    pub async fn read(
        &self,
        volume: VolumeId,
        offset_blocks: u64,
        len_blocks: u32,
    ) -> Result<BlockData, HostError> {
        if len_blocks == 0 || len_blocks > READ_BLOCKS_MAX {
            return Err(HostError::Invalid(format!(
                "reads take 1..={READ_BLOCKS_MAX} blocks, not {len_blocks}"
            )));
        }
        let request = ClientRequest::Read {
            offset_blocks,
            len_blocks,
        };
        match self.execute(volume, request).await? {
            ClientReply::Read(data) => Ok(data),
            other => Err(unanswered(volume, other)),
        }
    }
}

/// The error for a reply that is not the operation's answer.
fn unanswered(volume: VolumeId, reply: ClientReply) -> HostError {
    match reply {
        ClientReply::Redirect { .. } => HostError::NoLeader(volume),
        ClientReply::Failed { message } => failed(volume, message),
        other => failed(volume, format!("unexpected reply {other:?}")),
    }
}
