//! [`Cluster`]: the simulated nodes of one run, their network, and what
//! every check needs (history, violations, Raft observations).
//!
//! Topology: the domains of the options, nodes numbered from 1 in domain
//! order. Every node is a voter of the one volume group; witness nodes vote
//! but never campaign (openraft has no witness role). The group is
//! initialized once, by the first data node, with every node as a member.
//!
//! Locking: the node table's mutex is held only to read or swap entries,
//! never across an await; starting a node marks it `starting` so that two
//! tasks never start the same node at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use metro_fabric::env::NodeId;
use metro_fabric::raft::types::RaftNode;
use metro_fabric::storage::VolumeHandle;
use metro_kvstore::CrashMode;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::{AsyncRuntime, ServerState};

use crate::Rt;
use crate::checker::{RaftObserver, Violations};
use crate::history::History;
use crate::kill::KillSwitch;
use crate::network::SimNetwork;
use crate::node::{self, NodeSpec, Raft, SimNode};
use crate::options::SimOptions;
use crate::rng::SimRng;

/// One run's cluster.
pub struct Cluster {
    pub options: SimOptions,
    pub net: Arc<SimNetwork>,
    pub rng: SimRng,
    pub history: History,
    pub violations: Violations,
    pub observer: RaftObserver,
    nodes: Mutex<BTreeMap<NodeId, SimNode>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("seed", &self.options.seed)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Builds the topology of `options` and starts every node; the first
    /// data node initializes the group.
    pub async fn boot(options: SimOptions, rng: SimRng) -> Arc<Self> {
        let net = SimNetwork::new(&options, rng.clone());
        let mut nodes = BTreeMap::new();
        let mut id: NodeId = 0;
        for (domain, spec) in options.domains.iter().enumerate() {
            for _ in 0..spec.nodes {
                id += 1;
                net.add_node(id, domain);
                let spec = NodeSpec {
                    id,
                    domain,
                    witness: spec.witness,
                };
                nodes.insert(id, SimNode::new(spec, rng.next_u64()));
            }
        }
        let cluster = Arc::new(Self {
            options,
            net,
            rng,
            history: History::new(),
            violations: Violations::new(),
            observer: RaftObserver::new(),
            nodes: Mutex::new(nodes),
        });
        for id in cluster.node_ids() {
            cluster.restart(id).await;
        }
        cluster.initialize().await;
        cluster
    }

    async fn initialize(&self) {
        let members: BTreeMap<NodeId, RaftNode> = self
            .node_ids()
            .into_iter()
            .map(|id| (id, RaftNode::new(format!("node-{id}"))))
            .collect();
        let first = self
            .lock()
            .values()
            .find(|n| !n.spec.witness)
            .map(|n| n.spec.id);
        let raft = first.and_then(|id| self.raft(id));
        match raft {
            Some(raft) => {
                if let Err(err) = raft.initialize(members).await {
                    self.violations.report(format!("initialize: {err}"));
                }
            }
            None => self.violations.report("no data node to initialize".into()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<NodeId, SimNode>> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every node, in id order.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.lock().keys().copied().collect()
    }

    /// The nodes of `domain`.
    pub fn domain_nodes(&self, domain: usize) -> Vec<NodeId> {
        let nodes = self.lock();
        nodes
            .values()
            .filter(|n| n.spec.domain == domain)
            .map(|n| n.spec.id)
            .collect()
    }

    /// The nodes running now.
    pub fn up_nodes(&self) -> Vec<NodeId> {
        let nodes = self.lock();
        nodes
            .values()
            .filter(|n| n.running.is_some())
            .map(|n| n.spec.id)
            .collect()
    }

    /// A random running node.
    pub fn pick_up_node(&self) -> Option<NodeId> {
        let up = self.up_nodes();
        (!up.is_empty()).then(|| self.rng.pick(&up))
    }

    /// The Raft handle of `id`, if it runs.
    pub fn raft(&self, id: NodeId) -> Option<Raft> {
        self.lock()
            .get(&id)?
            .running
            .as_ref()
            .map(|r| r.raft.clone())
    }

    /// The read handle on `id`'s copy of the volume, if it runs.
    pub fn volume(&self, id: NodeId) -> Option<VolumeHandle> {
        let nodes = self.lock();
        nodes.get(&id)?.running.as_ref().map(|r| r.volume.clone())
    }

    /// A node that believes it leads, per its metrics.
    pub fn leader(&self) -> Option<NodeId> {
        self.up_nodes().into_iter().find(|id| {
            self.raft(*id).is_some_and(|raft| {
                let metrics = raft.metrics();
                let m = metrics.borrow_watched();
                m.state == ServerState::Leader
            })
        })
    }

    /// Power loss of `id` (see `node::crash`); false if it was not running.
    pub fn crash(&self, id: NodeId, mode: CrashMode) -> bool {
        let mut nodes = self.lock();
        let Some(node) = nodes.get_mut(&id) else {
            return false;
        };
        let Some(running) = node.running.take() else {
            return false;
        };
        node::crash(node.spec, running, &node.disk, &self.net, mode);
        true
    }

    /// Starts a new incarnation of `id` from its disk; false if it already
    /// runs, is being started, or did not start (a violation: a node must
    /// always recover from its own disk).
    pub async fn restart(self: &Arc<Self>, id: NodeId) -> bool {
        let (spec, disk) = {
            let mut nodes = self.lock();
            let Some(node) = nodes.get_mut(&id) else {
                return false;
            };
            if node.running.is_some() || node.starting {
                return false;
            }
            node.starting = true;
            (node.spec, node.disk.clone())
        };
        let started = node::start(spec, &disk, &self.net, &self.options).await;
        let mut nodes = self.lock();
        let node = nodes.get_mut(&id).expect("nodes are never removed");
        node.starting = false;
        match started {
            Ok(running) => {
                self.spawn_observer(id, running.raft.clone(), running.kill.clone());
                node.restarts += 1;
                node.running = Some(running);
                true
            }
            Err(err) => {
                self.net.stop(id);
                self.violations.report(format!("recovery: {err}"));
                false
            }
        }
    }

    /// Follows `id`'s metrics for as long as this incarnation runs.
    fn spawn_observer(self: &Arc<Self>, id: NodeId, raft: Raft, kill: KillSwitch) {
        let cluster = Arc::clone(self);
        Rt::spawn(async move {
            let mut metrics = raft.metrics();
            drop(raft);
            loop {
                let (leading, term, applied) = {
                    let m = metrics.borrow_watched();
                    (
                        m.state == ServerState::Leader,
                        m.current_term,
                        m.last_applied,
                    )
                };
                if leading {
                    cluster.observer.leader(id, term);
                }
                if let Some(log_id) = applied {
                    let leader = log_id.leader_id;
                    let violations = &cluster.violations;
                    cluster
                        .observer
                        .applied(id, leader, log_id.index, violations);
                }
                match kill.guard(metrics.changed()).await {
                    Some(Ok(())) => {}
                    _ => break,
                }
            }
        });
    }
}
