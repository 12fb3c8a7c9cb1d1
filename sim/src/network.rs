//! [`SimNetwork`]: an in-memory packet network on virtual time, and
//! [`SimTransport`], fabric's [`Transport`] for one simulated node.
//!
//! Model: a call is a request message and a response message. Each message
//! independently
//! - is dropped if its directed link is blocked (a partition, one-way or
//!   symmetric, or a whole isolated domain) when it is sent, or by chance
//!   (`loss_ppm`);
//! - takes the link's latency: a per-domain-pair base plus uniform jitter,
//!   sometimes plus a spike. Jitter reorders messages: every call is its own
//!   task, nothing keeps a link FIFO;
//! - is dropped on arrival if its receiver is down or restarted meanwhile
//!   (every node incarnation has its own epoch).
//!
//! A request may be duplicated: the copy reaches the handler later and its
//! response is discarded, which the `Transport` contract allows (handlers
//! must be idempotent). Raft and bulk requests are duplicated at
//! `dup_ppm`; on the client lane only session commands
//! (`VolumeCommand::Once`, applied at most once however often delivered)
//! are, at `session_dup_ppm` (the retrying-clients workload's), and their
//! copy is held back up to [`SESSION_HOLD_MS_MAX`] more, so that an old
//! delivery can reach the leader after the client's newer writes were
//! acknowledged ([`duplicates`]). Other client requests are not idempotent
//! (a plain write re-applied would overwrite newer acknowledged ones, a
//! snapshot created twice conflicts), and QUIC, the production transport,
//! delivers each request at most once. The handler runs as a task of the
//! receiving node, so a caller that gives up does not cancel it. Any lost
//! message makes the call fail [`TransportError::Unreachable`] after
//! [`REQUEST_TIMEOUT_MS`]; a handler error fails it
//! [`TransportError::Failed`].
//!
//! Bounded: at most [`LINK_IN_FLIGHT_MAX`] calls outstanding per directed
//! link (more fail at once, as a full send buffer would) and at most
//! [`NODE_HANDLERS_MAX`] requests being handled per node (more are dropped).
//! Randomness comes from the simulation's [`SimRng`] only.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use metro_fabric::env::{Lane, NodeId, RequestHandler, Transport, TransportError};
use openraft::AsyncRuntime;
use openraft::async_runtime::{Oneshot, OneshotSender};
use parking_lot::Mutex;

use crate::Rt;
use crate::kill::KillSwitch;
use crate::options::{Latency, SimOptions};
use crate::rng::SimRng;

/// How long a call waits for its response before the peer counts as
/// unreachable.
pub const REQUEST_TIMEOUT_MS: u64 = 2_000;
/// Calls outstanding on one directed link, at most.
pub const LINK_IN_FLIGHT_MAX: usize = 256;
/// Requests being handled by one node, at most.
pub const NODE_HANDLERS_MAX: usize = 512;
/// Extra delay of a duplicated session request, at most.
pub const SESSION_HOLD_MS_MAX: u64 = 1_500;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A node's request handler behind a pointer (fabric's trait returns
/// `impl Future`, so it is not object safe).
pub trait DynHandler: Send + Sync + 'static {
    /// Handles one request, owning what it needs.
    fn handle_owned(
        self: Arc<Self>,
        from: NodeId,
        lane: Lane,
        request: Vec<u8>,
    ) -> BoxFuture<Result<Vec<u8>, String>>;
}

impl<H: RequestHandler> DynHandler for H {
    fn handle_owned(
        self: Arc<Self>,
        from: NodeId,
        lane: Lane,
        request: Vec<u8>,
    ) -> BoxFuture<Result<Vec<u8>, String>> {
        Box::pin(async move { self.handle(from, lane, request).await })
    }
}

/// Counters of what the network did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub refused: u64,
}

/// Link behaviour that the fault schedule changes at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkFaults {
    pub loss_ppm: u64,
    /// Duplication of Raft and bulk requests.
    pub dup_ppm: u64,
    /// Duplication of session commands on the client lane.
    pub session_dup_ppm: u64,
    pub spike_ppm: u64,
    pub spike_ms: u64,
}

struct NodeEntry {
    domain: usize,
    /// Bumped at every start and every stop.
    epoch: u64,
    handler: Option<Arc<dyn DynHandler>>,
    /// Ends the handler tasks of the running incarnation.
    kill: KillSwitch,
    handling: usize,
}

struct NetState {
    nodes: BTreeMap<NodeId, NodeEntry>,
    /// Directed links that drop everything.
    blocked: BTreeSet<(NodeId, NodeId)>,
    in_flight: BTreeMap<(NodeId, NodeId), usize>,
    faults: LinkFaults,
    stats: NetStats,
}

/// The simulated network of one cluster.
pub struct SimNetwork {
    state: Mutex<NetState>,
    /// Latency between domains `[a][b]`.
    latency: Vec<Vec<Latency>>,
    rng: SimRng,
}

impl std::fmt::Debug for SimNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNetwork")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// How one message travels: dropped, or delivered after a delay.
enum Hop {
    Lost,
    After(Duration),
}

impl SimNetwork {
    /// A network with the links of `options` and no node yet.
    pub fn new(options: &SimOptions, rng: SimRng) -> Arc<Self> {
        let domains = options.domains.len();
        let latency = (0..domains)
            .map(|a| (0..domains).map(|b| options.link(a, b)).collect())
            .collect();
        Arc::new(Self {
            state: Mutex::new(NetState {
                nodes: BTreeMap::new(),
                blocked: BTreeSet::new(),
                in_flight: BTreeMap::new(),
                faults: LinkFaults {
                    loss_ppm: options.loss_ppm,
                    dup_ppm: options.dup_ppm,
                    session_dup_ppm: options.workload.session_dup_ppm(),
                    spike_ppm: options.spike_ppm,
                    spike_ms: options.spike_ms,
                },
                stats: NetStats::default(),
            }),
            latency,
            rng,
        })
    }

    /// Adds `node` (down) in `domain`.
    pub fn add_node(&self, node: NodeId, domain: usize) {
        let entry = NodeEntry {
            domain,
            epoch: 0,
            handler: None,
            kill: KillSwitch::new(),
            handling: 0,
        };
        self.state.lock().nodes.insert(node, entry);
    }

    /// Brings `node` up with `handler`, whose tasks end when `kill` is
    /// thrown; returns its transport.
    pub fn start(
        self: &Arc<Self>,
        node: NodeId,
        handler: Arc<dyn DynHandler>,
        kill: KillSwitch,
    ) -> SimTransport {
        let mut state = self.state.lock();
        let entry = state.nodes.get_mut(&node).expect("node added");
        entry.epoch += 1;
        entry.handler = Some(handler);
        entry.kill = kill;
        entry.handling = 0;
        SimTransport {
            node,
            epoch: entry.epoch,
            net: Arc::clone(self),
        }
    }

    /// Takes `node` down: nothing reaches it or leaves it any more.
    pub fn stop(&self, node: NodeId) {
        let mut state = self.state.lock();
        let entry = state.nodes.get_mut(&node).expect("node added");
        entry.epoch += 1;
        entry.handler = None;
    }

    /// The transport of `node` as it runs now, if it is up.
    pub fn transport(self: &Arc<Self>, node: NodeId) -> Option<SimTransport> {
        let state = self.state.lock();
        let entry = state.nodes.get(&node)?;
        entry.handler.as_ref()?;
        Some(SimTransport {
            node,
            epoch: entry.epoch,
            net: Arc::clone(self),
        })
    }

    /// Whether `node` is up.
    pub fn is_up(&self, node: NodeId) -> bool {
        self.state
            .lock()
            .nodes
            .get(&node)
            .is_some_and(|e| e.handler.is_some())
    }

    /// Drops everything sent from any of `from` to any of `to` (and back,
    /// if `symmetric`).
    pub fn partition(&self, from: &[NodeId], to: &[NodeId], symmetric: bool) {
        let mut state = self.state.lock();
        for &a in from {
            for &b in to {
                if a != b {
                    state.blocked.insert((a, b));
                    if symmetric {
                        state.blocked.insert((b, a));
                    }
                }
            }
        }
    }

    /// Cuts every node of `domain` off from every node outside it.
    pub fn isolate_domain(&self, domain: usize) {
        let (inside, outside): (Vec<NodeId>, Vec<NodeId>) = {
            let state = self.state.lock();
            let all: Vec<(NodeId, usize)> =
                state.nodes.iter().map(|(id, e)| (*id, e.domain)).collect();
            let inside = all.iter().filter(|(_, d)| *d == domain).map(|(id, _)| *id);
            let outside = all.iter().filter(|(_, d)| *d != domain).map(|(id, _)| *id);
            (inside.collect(), outside.collect())
        };
        self.partition(&inside, &outside, true);
    }

    /// Removes every partition.
    pub fn heal_partitions(&self) {
        self.state.lock().blocked.clear();
    }

    /// Replaces the loss, duplication and spike rates.
    pub fn set_faults(&self, faults: LinkFaults) {
        self.state.lock().faults = faults;
    }

    /// Counters so far.
    pub fn stats(&self) -> NetStats {
        self.state.lock().stats
    }

    /// Whether `node` still runs incarnation `epoch`.
    fn alive(state: &NetState, node: NodeId, epoch: u64) -> bool {
        state
            .nodes
            .get(&node)
            .is_some_and(|e| e.epoch == epoch && e.handler.is_some())
    }

    /// Decides the fate of one message from `from` to `to`.
    fn hop(&self, state: &mut NetState, from: NodeId, to: NodeId) -> Hop {
        state.stats.sent += 1;
        let (Some(a), Some(b)) = (state.nodes.get(&from), state.nodes.get(&to)) else {
            state.stats.lost += 1;
            return Hop::Lost;
        };
        let link = self.latency[a.domain][b.domain];
        if state.blocked.contains(&(from, to)) || self.rng.chance(state.faults.loss_ppm) {
            state.stats.lost += 1;
            return Hop::Lost;
        }
        let mut delay_us = link.base_us + self.rng.below(link.jitter_us + 1);
        if self.rng.chance(state.faults.spike_ppm) {
            delay_us += state.faults.spike_ms * 1_000;
        }
        Hop::After(Duration::from_micros(delay_us))
    }

    /// A duplicate's `hop`, held back up to [`SESSION_HOLD_MS_MAX`] more on
    /// the client lane.
    fn held(&self, hop: Hop, lane: Lane) -> Hop {
        match (hop, lane) {
            (Hop::After(delay), Lane::Client) => {
                Hop::After(delay + self.rng.millis(0, SESSION_HOLD_MS_MAX))
            }
            (hop, _) => hop,
        }
    }

    /// Hands a request that reached `to` to its handler (as a task of
    /// `to`); the receiver yields the response unless the request was
    /// dropped on arrival.
    fn deliver(
        self: &Arc<Self>,
        from: NodeId,
        to: NodeId,
        lane: Lane,
        request: Vec<u8>,
    ) -> Option<<<Rt as AsyncRuntime>::Oneshot as Oneshot>::Receiver<HandlerReply>> {
        let (handler, epoch, kill) = {
            let mut state = self.state.lock();
            if state.blocked.contains(&(from, to)) {
                state.stats.lost += 1;
                return None;
            }
            let entry = state.nodes.get_mut(&to)?;
            let handler = entry.handler.clone()?;
            if entry.handling >= NODE_HANDLERS_MAX {
                state.stats.refused += 1;
                return None;
            }
            entry.handling += 1;
            let epoch = entry.epoch;
            let kill = entry.kill.clone();
            state.stats.delivered += 1;
            (handler, epoch, kill)
        };
        let (tx, rx) = <<Rt as AsyncRuntime>::Oneshot as Oneshot>::channel();
        let net = Arc::clone(self);
        Rt::spawn(async move {
            let work = handler.handle_owned(from, lane, request);
            let Some(reply) = kill.guard(work).await else {
                return;
            };
            let mut state = net.state.lock();
            if let Some(entry) = state.nodes.get_mut(&to)
                && entry.epoch == epoch
            {
                entry.handling -= 1;
                drop(state);
                // The caller may have given up; then nobody wants the reply.
                let _ = tx.send(HandlerReply { reply, epoch });
            }
        });
        Some(rx)
    }
}

/// A handler's answer and the incarnation that produced it.
struct HandlerReply {
    reply: Result<Vec<u8>, String>,
    epoch: u64,
}

/// Counts a call against its link's in-flight bound until dropped.
struct InFlight {
    net: Arc<SimNetwork>,
    link: (NodeId, NodeId),
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.net.state.lock();
        if let Some(n) = state.in_flight.get_mut(&self.link) {
            *n -= 1;
            if *n == 0 {
                state.in_flight.remove(&self.link);
            }
        }
    }
}

/// One node incarnation's view of the [`SimNetwork`].
#[derive(Clone)]
pub struct SimTransport {
    node: NodeId,
    epoch: u64,
    net: Arc<SimNetwork>,
}

impl std::fmt::Debug for SimTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimTransport(node {} epoch {})", self.node, self.epoch)
    }
}

impl SimTransport {
    /// The node this transport sends from.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Sends the request, runs the handler, brings the response back;
    /// `None` when a message was lost (the caller's timeout decides).
    async fn exchange(
        &self,
        peer: NodeId,
        lane: Lane,
        request: Vec<u8>,
    ) -> Result<Result<Vec<u8>, String>, TransportError> {
        let net = &self.net;
        let unreachable = |reason: &str| TransportError::Unreachable {
            peer,
            reason: reason.to_string(),
        };
        let (hop, duplicate, _in_flight) = {
            let mut state = net.state.lock();
            if !SimNetwork::alive(&state, self.node, self.epoch) {
                return Err(unreachable("sender is down"));
            }
            let queued = state.in_flight.entry((self.node, peer)).or_insert(0);
            if *queued >= LINK_IN_FLIGHT_MAX {
                state.stats.refused += 1;
                return Err(unreachable("link queue full"));
            }
            *queued += 1;
            let guard = InFlight {
                net: Arc::clone(net),
                link: (self.node, peer),
            };
            let hop = net.hop(&mut state, self.node, peer);
            let dup_ppm = match lane {
                Lane::Raft | Lane::Bulk => state.faults.dup_ppm,
                Lane::Client => state.faults.session_dup_ppm,
            };
            let duplicate = match net.rng.chance(dup_ppm) && duplicates(lane, &request) {
                true => Some(net.held(net.hop(&mut state, self.node, peer), lane)),
                false => None,
            };
            (hop, duplicate, guard)
        };
        if let Some(Hop::After(delay)) = duplicate {
            self.spawn_duplicate(peer, lane, request.clone(), delay);
        }
        let Hop::After(delay) = hop else {
            return never().await;
        };
        Rt::sleep(delay).await;
        let Some(rx) = net.deliver(self.node, peer, lane, request) else {
            return never().await;
        };
        let Ok(HandlerReply { reply, epoch }) = rx.await else {
            return never().await;
        };
        self.bring_back(peer, epoch, reply).await
    }

    /// Carries a response from `peer` (incarnation `epoch`) back here.
    async fn bring_back(
        &self,
        peer: NodeId,
        epoch: u64,
        reply: Result<Vec<u8>, String>,
    ) -> Result<Result<Vec<u8>, String>, TransportError> {
        let hop = {
            let mut state = self.net.state.lock();
            if !SimNetwork::alive(&state, peer, epoch) {
                state.stats.lost += 1;
                Hop::Lost
            } else {
                self.net.hop(&mut state, peer, self.node)
            }
        };
        let Hop::After(delay) = hop else {
            return never().await;
        };
        Rt::sleep(delay).await;
        let alive = SimNetwork::alive(&self.net.state.lock(), self.node, self.epoch);
        if !alive {
            return never().await;
        }
        Ok(reply)
    }

    fn spawn_duplicate(&self, peer: NodeId, lane: Lane, request: Vec<u8>, delay: Duration) {
        let net = Arc::clone(&self.net);
        let from = self.node;
        net.state.lock().stats.duplicated += 1;
        Rt::spawn(async move {
            Rt::sleep(delay).await;
            if let Some(rx) = net.deliver(from, peer, lane, request) {
                // The duplicate's response is never wanted.
                let _ = rx.await;
            }
        });
    }
}

/// Whether `request` on `lane` may be duplicated: Raft and bulk requests,
/// and session commands on the client lane (see the module docs).
pub fn duplicates(lane: Lane, request: &[u8]) -> bool {
    use metro_fabric::volume::VolumeCommand;
    use metro_fabric::wire::{ClientRequest, Message};
    match lane {
        Lane::Raft | Lane::Bulk => true,
        Lane::Client => matches!(
            metro_fabric::wire::decode::<Rt>(request).map(|frame| frame.message),
            Ok(Message::Client(ClientRequest::Command(
                VolumeCommand::Once(_)
            )))
        ),
    }
}

/// A message that never arrives: the call's timeout ends the wait.
async fn never<T>() -> T {
    std::future::pending().await
}

impl Transport for SimTransport {
    async fn call(
        &self,
        peer: NodeId,
        lane: Lane,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError> {
        if request.len() > metro_fabric::limits::FRAME_BYTES_MAX {
            return Err(TransportError::TooLarge { len: request.len() });
        }
        let timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
        match Rt::timeout(timeout, self.exchange(peer, lane, request)).await {
            Ok(Ok(Ok(reply))) => Ok(reply),
            Ok(Ok(Err(reason))) => Err(TransportError::Failed { peer, reason }),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(TransportError::Unreachable {
                peer,
                reason: format!("no response within {REQUEST_TIMEOUT_MS} ms"),
            }),
        }
    }
}
