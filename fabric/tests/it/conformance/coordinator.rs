//! The coordinator suite: one body, run against the in-memory model
//! (fabric/tests/it/coordinator_model.rs) and a real etcd
//! (node/tests/it/coordinator_etcd.rs, through `#[path]` on this directory).
//!
//! Runs on tokio with real time and etcd's 2 s minimum lease TTL. Every
//! scenario is its own cluster (its own `/metro/<name>/` prefix), so the
//! independent ones run concurrently on one store; the outage scenario runs
//! last, alone. Groups are a hand-written fake ([`FakeAdmin`]) that records
//! every call and answers "in sync" for every member not marked down.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metro_fabric::control::{
    CasOutcome, ClusterKeys, Coordinator, CoordinatorConfig, DomainInfo, DomainRole, DomainState,
    Health, MemberRole, NodeInfo, NodeRegistration, Placement, RegistrationConfig, VolumeRecord,
    VolumeSpec, VolumeStatusRecord, decode, encode, set_domain_state, status_key, write_volume,
};
use metro_fabric::env::NodeId;
use metro_fabric::meta::{
    Compare, ElectionStore, KeyValue, KvStore, LEASE_TTL_MIN, Leadership, Lease, LeaseId,
    LeaseStore, MetaStore, RangeResult, Result as MResult, Revision, TxnOp, TxnResult, WatchStore,
    WriteResult,
};
use tokio::task::JoinHandle;

use super::fake_admin::{AdminCall, FakeAdmin};
use super::harness::Harness;
use tokio::time::{Instant, sleep};

type Rt = openraft_rt_tokio::TokioRuntime;

/// Every lease in the suite (registration and coordinator).
const TTL: Duration = LEASE_TTL_MIN;
/// The coordinator's round interval in the suite.
const INTERVAL: Duration = Duration::from_millis(100);
/// The repair delay in the suite.
const REPAIR_DELAY: Duration = Duration::from_secs(1);
/// How long past its TTL a lease may take to expire (etcd checks every
/// 500 ms), plus scheduling slack on a busy machine.
const EXPIRY_SLACK: Duration = Duration::from_secs(3);
/// How long a coordinator may take to place a volume or publish a status.
const ACT_MAX: Duration = Duration::from_secs(5);
/// How long the store may take to come back after an outage ends.
const RECOVERY_MAX: Duration = Duration::from_secs(30);
/// How long a call may take to fail as unreachable during an outage.
const FAILURE_MAX: Duration = Duration::from_secs(15);
/// How long the store stays down in the outage scenario.
const OUTAGE: Duration = Duration::from_secs(3);
/// Polling period of the waits.
const POLL: Duration = Duration::from_millis(50);

/// Every scenario: the independent ones concurrently, then the outage.
pub async fn run_all<H: Harness>(harness: &mut H) {
    let m = harness.membership();
    let started = Instant::now();
    tokio::join!(
        placement(&m, "placement"),
        repair_after_lease_expiry(&m, "repair"),
        coordinator_failover(&m, "failover"),
        cas_conflict(&m, "cas"),
        domain_deactivation(&m, "domains"),
        unrecorded_change(&m, "unrecorded"),
    );
    println!("concurrent scenarios took {:?}", started.elapsed());
    let started = Instant::now();
    outage(harness, "outage").await;
    println!("outage scenario took {:?}", started.elapsed());
}

// ---------------------------------------------------------------- fakes ---

/// A store that lets "another writer" change one volume record right
/// before the coordinator's first guarded write of it.
struct BumpingStore<M> {
    inner: M,
    key: Vec<u8>,
    armed: AtomicBool,
    new_size_bytes: u64,
}

impl<M: MetaStore> BumpingStore<M> {
    async fn bump(&self) {
        let kv = self
            .inner
            .get(&self.key)
            .await
            .unwrap()
            .expect("the record exists");
        let mut record: VolumeRecord = decode("volume", &kv.value).unwrap();
        record.spec.size_bytes = self.new_size_bytes;
        self.inner
            .put(&self.key, &encode(&record), None)
            .await
            .unwrap();
    }
}

impl<M: MetaStore> KvStore for BumpingStore<M> {
    async fn get(&self, key: &[u8]) -> MResult<Option<KeyValue>> {
        self.inner.get(key).await
    }
    async fn range(&self, prefix: &[u8]) -> MResult<RangeResult> {
        self.inner.range(prefix).await
    }
    async fn put(&self, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> MResult<WriteResult> {
        self.inner.put(key, value, lease).await
    }
    async fn delete(&self, key: &[u8]) -> MResult<WriteResult> {
        self.inner.delete(key).await
    }
    async fn txn(&self, compares: Vec<Compare>, ops: Vec<TxnOp>) -> MResult<TxnResult> {
        let writes_key = ops.iter().any(|op| op.key() == self.key.as_slice());
        if writes_key && self.armed.swap(false, Ordering::SeqCst) {
            self.bump().await;
        }
        self.inner.txn(compares, ops).await
    }
}

impl<M: MetaStore> LeaseStore for BumpingStore<M> {
    async fn grant(&self, ttl: Duration) -> MResult<Lease> {
        self.inner.grant(ttl).await
    }
    async fn keep_alive_once(&self, lease: LeaseId) -> MResult<()> {
        self.inner.keep_alive_once(lease).await
    }
    async fn revoke(&self, lease: LeaseId) -> MResult<()> {
        self.inner.revoke(lease).await
    }
}

impl<M: MetaStore> WatchStore for BumpingStore<M> {
    type Watch = M::Watch;

    async fn watch(&self, prefix: &[u8], start: Option<Revision>) -> MResult<M::Watch> {
        self.inner.watch(prefix, start).await
    }
}

impl<M: MetaStore> ElectionStore for BumpingStore<M> {
    async fn campaign(&self, election: &str, value: &[u8], lease: LeaseId) -> MResult<Leadership> {
        self.inner.campaign(election, value, lease).await
    }
    async fn resign(&self, leadership: &Leadership) -> MResult<()> {
        self.inner.resign(leadership).await
    }
    async fn leader(&self, election: &str) -> MResult<Option<KeyValue>> {
        self.inner.leader(election).await
    }
}

// -------------------------------------------------------------- helpers ---

/// Spawned tasks, aborted when the scenario ends.
#[derive(Default)]
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

type Coord<M> = Coordinator<Rt, M, FakeAdmin>;

fn config(node: NodeId) -> CoordinatorConfig {
    CoordinatorConfig {
        lease_ttl: TTL,
        interval: INTERVAL,
        repair_delay: REPAIR_DELAY,
        retry_min: Duration::from_millis(50),
        retry_max: Duration::from_millis(500),
        ..CoordinatorConfig::new(node)
    }
}

fn start_coordinator<M: MetaStore>(
    tasks: &mut Tasks,
    m: M,
    keys: &ClusterKeys,
    node: NodeId,
) -> Arc<Coord<M>> {
    let coordinator = Arc::new(Coord::new(
        m,
        FakeAdmin::default(),
        keys.clone(),
        config(node),
    ));
    let running = coordinator.clone();
    tasks
        .0
        .push(tokio::spawn(async move { running.run().await }));
    coordinator
}

fn register<M: MetaStore + Clone>(
    m: &M,
    keys: &ClusterKeys,
    id: NodeId,
    domain: &str,
) -> JoinHandle<()> {
    let info = NodeInfo {
        id,
        domain: domain.into(),
        quic_addr: format!("127.0.0.1:{}", 7000 + id),
        nbd_addr: String::new(),
        admin_addr: String::new(),
        capacity_bytes: 0,
        version: String::new(),
    };
    let config = RegistrationConfig {
        ttl: TTL,
        retry_min: Duration::from_millis(50),
        retry_max: Duration::from_millis(500),
    };
    let registration = NodeRegistration::<Rt, M>::new(m.clone(), keys.clone(), info, config);
    tokio::spawn(async move { registration.run().await })
}

async fn add_domain<M: MetaStore>(m: &M, keys: &ClusterKeys, name: &str, role: DomainRole) {
    let info = DomainInfo {
        name: name.into(),
        role,
        state: DomainState::Active,
    };
    m.put(keys.domain(name).as_bytes(), &encode(&info), None)
        .await
        .unwrap();
}

async fn add_volume<M: MetaStore>(m: &M, keys: &ClusterKeys, name: &str, id: u64, replicas: u8) {
    let record = VolumeRecord {
        spec: VolumeSpec {
            name: name.into(),
            id,
            size_bytes: 1 << 30,
            replicas,
        },
        placement: None,
    };
    m.put(keys.volume(name).as_bytes(), &encode(&record), None)
        .await
        .unwrap();
}

/// Registers nodes `(id, domain)`; returns their tasks by id.
fn register_all<M: MetaStore + Clone>(
    m: &M,
    keys: &ClusterKeys,
    nodes: &[(NodeId, &str)],
) -> BTreeMap<NodeId, JoinHandle<()>> {
    nodes
        .iter()
        .map(|(id, domain)| (*id, register(m, keys, *id, domain)))
        .collect()
}

async fn record<M: MetaStore>(m: &M, keys: &ClusterKeys, name: &str) -> Option<VolumeRecord> {
    let kv = m.get(keys.volume(name).as_bytes()).await.ok()??;
    Some(decode("volume", &kv.value).unwrap())
}

async fn status<M: MetaStore>(m: &M, keys: &ClusterKeys, name: &str) -> Option<VolumeStatusRecord> {
    let kv = m.get(status_key(keys, name).as_bytes()).await.ok()??;
    Some(decode("status", &kv.value).unwrap())
}

/// Polls `probe` until it answers, failing after `within`.
async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        sleep(POLL).await;
    }
}

async fn placed<M: MetaStore>(m: &M, keys: &ClusterKeys, name: &str) -> Placement {
    wait_for(&format!("{name} placed"), ACT_MAX, || async {
        record(m, keys, name).await?.placement
    })
    .await
}

async fn healthy<M: MetaStore>(m: &M, keys: &ClusterKeys, name: &str, within: Duration) {
    wait_for(&format!("{name} healthy"), within, || async {
        let status = status(m, keys, name).await?;
        (status.group_created && matches!(status.health, Health::Healthy { .. })).then_some(())
    })
    .await;
}

fn domains_of(placement: &Placement) -> BTreeSet<String> {
    placement.members.iter().map(|m| m.domain.clone()).collect()
}

/// Waits until `coordinator` has created `groups` groups: it creates a
/// group right after recording its placement, so a reader of the record
/// can be a moment ahead.
async fn wait_creates<M: MetaStore>(coordinator: &Coord<M>, groups: usize) {
    wait_for("the group is created", TTL, || async {
        (coordinator.admin().creates() == groups).then_some(())
    })
    .await;
}

async fn wait_leading<M: MetaStore>(coordinator: &Coord<M>, within: Duration) {
    wait_for("a coordinator leads", within, || async {
        coordinator.stats().leading.then_some(())
    })
    .await;
}

// ------------------------------------------------------------ scenarios ---

/// Replicas land in distinct data domains; two data domains take a witness;
/// a volume that cannot be placed stays pending with the reason published
/// and is placed once a domain is added.
async fn placement<M: MetaStore + Clone>(m: &M, cluster: &str) {
    let keys = ClusterKeys::new(cluster);
    let mut tasks = Tasks::default();
    add_domain(m, &keys, "a", DomainRole::Data).await;
    add_domain(m, &keys, "b", DomainRole::Data).await;
    add_domain(m, &keys, "w", DomainRole::Witness).await;
    let nodes = [(1, "a"), (2, "a"), (3, "b"), (4, "w")];
    tasks.0.extend(register_all(m, &keys, &nodes).into_values());
    let coordinator = start_coordinator(&mut tasks, m.clone(), &keys, 1);
    add_volume(m, &keys, "two", 1, 2).await;
    add_volume(m, &keys, "three", 2, 3).await;

    let two = placed(m, &keys, "two").await;
    let roles: Vec<MemberRole> = two.members.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [MemberRole::Data, MemberRole::Data, MemberRole::Witness]
    );
    assert_eq!(
        domains_of(&two),
        BTreeSet::from(["a".into(), "b".into(), "w".into()])
    );
    healthy(m, &keys, "two", ACT_MAX).await;
    let pending = wait_for("three's placement error", ACT_MAX, || async {
        status(m, &keys, "three")
            .await
            .filter(|s| s.error.is_some())
    })
    .await;
    assert_eq!(pending.health, Health::Pending);
    assert!(record(m, &keys, "three").await.unwrap().placement.is_none());
    assert!(coordinator.stats().placement_errors > 0);

    add_domain(m, &keys, "c", DomainRole::Data).await;
    tasks.0.push(register(m, &keys, 5, "c"));
    let three = placed(m, &keys, "three").await;
    assert_eq!(three.members.len(), 3, "no witness for an odd count");
    assert_eq!(
        domains_of(&three),
        BTreeSet::from(["a".into(), "b".into(), "c".into()])
    );
    healthy(m, &keys, "three", ACT_MAX).await;
    let creates = coordinator.admin().calls();
    assert!(creates.contains(&AdminCall::Create {
        volume: "two".into(),
        members: two.nodes().collect(),
    }));
    assert!(creates.contains(&AdminCall::Create {
        volume: "three".into(),
        members: three.nodes().collect(),
    }));
}

/// A member's node stops renewing its registration; once its lease expired
/// and the repair delay passed, the member is replaced by the other node of
/// its domain and the volume is healthy again at full replica count.
async fn repair_after_lease_expiry<M: MetaStore + Clone>(m: &M, cluster: &str) {
    let keys = ClusterKeys::new(cluster);
    let mut tasks = Tasks::default();
    for domain in ["a", "b", "c"] {
        add_domain(m, &keys, domain, DomainRole::Data).await;
    }
    let nodes = [(1, "a"), (2, "b"), (3, "c"), (4, "a"), (5, "b"), (6, "c")];
    let mut registrations = register_all(m, &keys, &nodes);
    let coordinator = start_coordinator(&mut tasks, m.clone(), &keys, 1);
    add_volume(m, &keys, "db", 7, 3).await;
    let before = placed(m, &keys, "db").await;
    healthy(m, &keys, "db", ACT_MAX).await;

    let victim = before
        .members
        .iter()
        .find(|m| m.domain == "a")
        .unwrap()
        .clone();
    let spare = if victim.node == 1 { 4 } else { 1 };
    registrations.remove(&victim.node).unwrap().abort();
    coordinator.admin().set_down(victim.node, true);
    let stopped = Instant::now();
    tasks.0.extend(registrations.into_values());

    let within = TTL + EXPIRY_SLACK + REPAIR_DELAY + ACT_MAX;
    let after = wait_for("db repaired", within, || async {
        let placement = record(m, &keys, "db").await?.placement?;
        (!placement.contains(victim.node)).then_some(placement)
    })
    .await;
    let took = stopped.elapsed();
    assert!(
        took >= TTL,
        "repaired after {took:?}: before the lease could expire"
    );
    assert!(after.contains(spare), "{after:?}");
    assert_eq!(after.members.len(), 3);
    assert_eq!(domains_of(&after), domains_of(&before), "same domains");
    assert!(coordinator.admin().calls().contains(&AdminCall::Replace {
        volume: "db".into(),
        dead: victim.node,
        replacement: spare,
    }));
    healthy(m, &keys, "db", ACT_MAX).await;
    assert_eq!(coordinator.stats().repairs, 1);
}

/// A group whose voters were changed behind the record (a repair an
/// earlier coordinator made in the group and never recorded): a swap for a
/// live node of the same domain is recorded as made; voters that are no
/// repair of the placement are left alone and reported in the status.
async fn unrecorded_change<M: MetaStore + Clone>(m: &M, cluster: &str) {
    let keys = ClusterKeys::new(cluster);
    let mut tasks = Tasks::default();
    for domain in ["a", "b", "c"] {
        add_domain(m, &keys, domain, DomainRole::Data).await;
    }
    let nodes = [(1, "a"), (2, "b"), (3, "c"), (4, "a")];
    tasks.0.extend(register_all(m, &keys, &nodes).into_values());
    let coordinator = start_coordinator(&mut tasks, m.clone(), &keys, 1);
    add_volume(m, &keys, "db", 9, 3).await;
    let before = placed(m, &keys, "db").await;
    healthy(m, &keys, "db", ACT_MAX).await;
    let in_a = before
        .members
        .iter()
        .find(|m| m.domain == "a")
        .unwrap()
        .node;
    let spare = if in_a == 1 { 4 } else { 1 };
    let swapped = before.replaced(in_a, spare);
    coordinator
        .admin()
        .force_voters("db", swapped.nodes().collect());
    let adopted = wait_for("the swap recorded", ACT_MAX, || async {
        let placement = record(m, &keys, "db").await?.placement?;
        placement.contains(spare).then_some(placement)
    })
    .await;
    assert_eq!(adopted, swapped, "recorded as the group has it");
    assert_eq!(coordinator.stats().repairs_adopted, 1);
    healthy(m, &keys, "db", ACT_MAX).await;

    // Voters from another domain: no repair of the placement.
    let in_b = adopted
        .members
        .iter()
        .find(|m| m.domain == "b")
        .unwrap()
        .node;
    let wrong = adopted.replaced(in_b, if spare == 4 { 1 } else { 4 });
    coordinator
        .admin()
        .force_voters("db", wrong.nodes().collect());
    wait_for("the divergence reported", ACT_MAX, || async {
        let error = status(m, &keys, "db").await?.error?;
        error.contains("differ from the placement").then_some(())
    })
    .await;
    assert_eq!(
        record(m, &keys, "db").await.unwrap().placement,
        Some(adopted)
    );
    assert!(coordinator.stats().diverged >= 1);
    assert_eq!(coordinator.stats().repairs_adopted, 1, "nothing adopted");
}

/// Two coordinators: the leader's lease is revoked, the other takes over
/// within about a lease period, the old one stops acting and its fence no
/// longer lets it write; then the new leader dies and its lease expires,
/// and the first takes over again.
async fn coordinator_failover<M: MetaStore + Clone>(m: &M, cluster: &str) {
    let keys = ClusterKeys::new(cluster);
    let mut tasks = Tasks::default();
    for domain in ["a", "b", "c"] {
        add_domain(m, &keys, domain, DomainRole::Data).await;
    }
    tasks
        .0
        .extend(register_all(m, &keys, &[(1, "a"), (2, "b"), (3, "c")]).into_values());
    let first = start_coordinator(&mut tasks, m.clone(), &keys, 1);
    wait_leading(&first, ACT_MAX).await;
    let second = start_coordinator(&mut tasks, m.clone(), &keys, 2);
    let second_task = tasks.0.len() - 1;
    add_volume(m, &keys, "one", 1, 3).await;
    placed(m, &keys, "one").await;
    // The placement is recorded before the group is created: wait for it.
    wait_creates(&first, 1).await;
    assert!(!second.stats().leading, "only one leads");
    assert_eq!((first.admin().creates(), second.admin().creates()), (1, 0));

    let old = first.leadership().expect("the first leads");
    let revoked = Instant::now();
    m.revoke(old.lease).await.unwrap();
    wait_leading(&second, TTL + EXPIRY_SLACK).await;
    println!("failover took {:?}", revoked.elapsed());
    wait_for("the old leader stops", TTL, || async {
        let stats = first.stats();
        (!stats.leading && stats.terms_ended == 1).then_some(())
    })
    .await;
    let mut stale = record(m, &keys, "one").await.unwrap();
    stale.placement = None;
    let revision = m
        .get(keys.volume("one").as_bytes())
        .await
        .unwrap()
        .unwrap()
        .mod_revision;
    let outcome = write_volume(m, &keys, &old, revision, &stale, None)
        .await
        .unwrap();
    assert_eq!(outcome, CasOutcome::Deposed, "the old fence refuses writes");

    add_volume(m, &keys, "two", 2, 3).await;
    placed(m, &keys, "two").await;
    wait_creates(&second, 1).await;
    assert_eq!((first.admin().creates(), second.admin().creates()), (1, 1));
    assert!(!first.stats().leading, "the old leader stays a candidate");
    assert_eq!(second.stats().terms, 1);

    // The new leader dies without resigning: its lease expires.
    tasks.0[second_task].abort();
    let crashed = Instant::now();
    wait_leading(&first, TTL + EXPIRY_SLACK).await;
    println!("takeover after expiry took {:?}", crashed.elapsed());
    assert_eq!(first.stats().terms, 2);
    add_volume(m, &keys, "three", 3, 3).await;
    placed(m, &keys, "three").await;
    wait_creates(&first, 2).await;
    assert_eq!((first.admin().creates(), second.admin().creates()), (2, 1));
}

/// Another writer changes the record between the coordinator's read and
/// its guarded write: the conflict is counted, the next round re-reads,
/// and the final record has both the other writer's change and a placement.
async fn cas_conflict<M: MetaStore + Clone>(m: &M, cluster: &str) {
    let keys = ClusterKeys::new(cluster);
    let mut tasks = Tasks::default();
    for domain in ["a", "b", "c"] {
        add_domain(m, &keys, domain, DomainRole::Data).await;
    }
    tasks
        .0
        .extend(register_all(m, &keys, &[(1, "a"), (2, "b"), (3, "c")]).into_values());
    add_volume(m, &keys, "db", 1, 3).await;
    let bumping = BumpingStore {
        inner: m.clone(),
        key: keys.volume("db").into_bytes(),
        armed: AtomicBool::new(true),
        new_size_bytes: 2 << 30,
    };
    let coordinator = start_coordinator(&mut tasks, bumping, &keys, 1);
    let placement = placed(m, &keys, "db").await;
    let stats = coordinator.stats();
    assert_eq!(stats.cas_conflicts, 1, "{stats:?}");
    assert_eq!(stats.placements, 1, "{stats:?}");
    let record = record(m, &keys, "db").await.unwrap();
    assert_eq!(
        record.spec.size_bytes,
        2 << 30,
        "the other writer's change stays"
    );
    assert_eq!(placement.members.len(), 3);
    healthy(m, &keys, "db", ACT_MAX).await;
    assert_eq!(
        coordinator.admin().creates(),
        1,
        "no group for the lost write"
    );
}

/// An inactive domain gets no new replicas and its members count unhealthy;
/// reactivated, it is used again.
async fn domain_deactivation<M: MetaStore + Clone>(m: &M, cluster: &str) {
    let keys = ClusterKeys::new(cluster);
    let mut tasks = Tasks::default();
    for domain in ["a", "b", "c", "d"] {
        add_domain(m, &keys, domain, DomainRole::Data).await;
    }
    let nodes = [(1, "a"), (2, "b"), (3, "c"), (4, "d")];
    tasks.0.extend(register_all(m, &keys, &nodes).into_values());
    let _coordinator = start_coordinator(&mut tasks, m.clone(), &keys, 1);
    add_volume(m, &keys, "first", 1, 3).await;
    let first = placed(m, &keys, "first").await;
    healthy(m, &keys, "first", ACT_MAX).await;

    let used = first.members[0].domain.clone();
    let domain = set_domain_state(m, &keys, &used, DomainState::Inactive)
        .await
        .unwrap();
    assert_eq!(domain.state, DomainState::Inactive);
    wait_for("first degraded", ACT_MAX, || async {
        let s = status(m, &keys, "first").await?;
        matches!(s.health, Health::Degraded { .. }).then_some(())
    })
    .await;
    add_volume(m, &keys, "second", 2, 3).await;
    let second = placed(m, &keys, "second").await;
    assert!(
        !domains_of(&second).contains(&used),
        "{second:?} uses inactive {used}"
    );

    set_domain_state(m, &keys, &used, DomainState::Active)
        .await
        .unwrap();
    healthy(m, &keys, "first", ACT_MAX).await;
    let again = set_domain_state(m, &keys, &used, DomainState::Active)
        .await
        .unwrap();
    assert_eq!(again.state, DomainState::Active, "idempotent");
}

/// The store goes down under a leading coordinator: coordination pauses
/// (counted), registrations and the placement survive, and once the store
/// is back the coordinator leads again and places a new volume.
async fn outage<H: Harness>(harness: &mut H, cluster: &str) {
    let m = harness.membership();
    let keys = ClusterKeys::new(cluster);
    let mut tasks = Tasks::default();
    for domain in ["a", "b", "c"] {
        add_domain(&m, &keys, domain, DomainRole::Data).await;
    }
    tasks
        .0
        .extend(register_all(&m, &keys, &[(1, "a"), (2, "b"), (3, "c")]).into_values());
    let coordinator = start_coordinator(&mut tasks, m.clone(), &keys, 1);
    add_volume(&m, &keys, "before", 1, 3).await;
    placed(&m, &keys, "before").await;
    healthy(&m, &keys, "before", ACT_MAX).await;
    let unreachable = coordinator.stats().unreachable;

    harness.interrupt().await;
    let down = Instant::now();
    wait_for(
        "the coordinator counting the outage",
        FAILURE_MAX,
        || async { (coordinator.stats().unreachable > unreachable).then_some(()) },
    )
    .await;
    // The store stays down for the whole outage (longer than a lease).
    tokio::time::sleep_until(down + OUTAGE).await;
    harness.restore().await;

    wait_for("the coordinator leads again", RECOVERY_MAX, || async {
        let ok = m.get(b"/").await.is_ok() && coordinator.stats().leading;
        ok.then_some(())
    })
    .await;
    add_volume(&m, &keys, "after", 2, 3).await;
    let resumed = Instant::now();
    wait_for("after placed", RECOVERY_MAX, || async {
        record(&m, &keys, "after").await?.placement
    })
    .await;
    println!("placed {:?} after the store came back", resumed.elapsed());
    let nodes = m.range(keys.nodes_prefix().as_bytes()).await.unwrap();
    assert_eq!(nodes.kvs.len(), 3, "registrations survive the outage");
    healthy(&m, &keys, "before", ACT_MAX).await;
}
