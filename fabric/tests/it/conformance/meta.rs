//! The `MetaStore` conformance suite: one body, run against the in-memory
//! model (fabric/tests/it/meta_model.rs) and a real etcd
//! (node/tests/it/meta_etcd.rs, through `#[path]` on this directory).
//!
//! Runs on tokio with real time (lease TTLs are etcd's 2 s minimum). Every
//! scenario uses its own key prefix under `run`, so scenarios share a store.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metro_fabric::meta::prelude::*;
use metro_fabric::meta::{
    Compare, EventKind, LEASE_TTL_MIN, LeaseId, MetaError, MetaStore, TxnOp, WatchEvent,
    WatchStream, election_key,
};
use tokio::task::JoinHandle;

use super::harness::Harness;
use tokio::time::{Instant, sleep, timeout};

/// The TTL every scenario grants.
const TTL: Duration = LEASE_TTL_MIN;
/// How often the keep-alive helper refreshes a lease.
const KEEP_ALIVE_EVERY: Duration = Duration::from_millis(500);
/// How long past its TTL a lease may take to expire (etcd checks every 500 ms).
const EXPIRY_SLACK: Duration = Duration::from_secs(4);
/// Polling period of the waits.
const POLL: Duration = Duration::from_millis(50);
/// How long a store may take to come back after an outage ends.
const RECOVERY_MAX: Duration = Duration::from_secs(30);
/// How long a call may take to fail as unreachable during an outage.
const FAILURE_MAX: Duration = Duration::from_secs(15);

/// Every scenario, in order.
pub async fn run_all<H: Harness>(harness: &mut H) {
    let m = harness.membership();
    kv_basics(&m, "/kv/").await;
    compare_and_swap(&m, "/cas/").await;
    lease_keep_alive_and_expiry(&m, "/lease/").await;
    watch_replays_from_revision(&m, "/watch/").await;
    election(&m, "/election").await;
    outage(harness, "/outage/").await;
}

fn key(prefix: &str, name: &str) -> Vec<u8> {
    format!("{prefix}{name}").into_bytes()
}

/// Refreshes `lease` until aborted.
fn spawn_keep_alive<M: MetaStore + Clone>(m: &M, lease: LeaseId) -> JoinHandle<()> {
    let m = m.clone();
    tokio::spawn(async move {
        loop {
            if let Err(error) = m.keep_alive_once(lease).await {
                assert!(
                    error.is_unreachable(),
                    "keep-alive of {lease:x} failed: {error}"
                );
            }
            sleep(KEEP_ALIVE_EVERY).await;
        }
    })
}

async fn next_event<W: WatchStream>(watch: &mut W, within: Duration) -> WatchEvent {
    match timeout(within, watch.next()).await {
        Ok(Ok(event)) => event,
        Ok(Err(error)) => panic!("watch failed: {error}"),
        Err(_) => panic!("no watch event within {within:?}"),
    }
}

pub async fn kv_basics<M: MetaStore>(m: &M, p: &str) {
    let (a, b) = (key(p, "a"), key(p, "b"));
    assert_eq!(m.get(&a).await.unwrap(), None);
    let first = m.put(&a, b"1", None).await.unwrap();
    assert_eq!(first.prev, None);
    let second = m.put(&a, b"2", None).await.unwrap();
    assert_eq!(
        second.revision,
        first.revision + 1,
        "one revision per change"
    );
    assert_eq!(
        second.prev.as_ref().map(|kv| kv.value.as_slice()),
        Some(&b"1"[..])
    );
    m.put(&b, b"x", None).await.unwrap();
    let outside = format!("{}-outside", p.trim_end_matches('/'));
    m.put(outside.as_bytes(), b"not under the prefix", None)
        .await
        .unwrap();

    let kv = m.get(&a).await.unwrap().expect("a exists");
    assert_eq!(kv.value, b"2");
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (first.revision, second.revision, 2)
    );
    assert_eq!(kv.lease, None);

    let range = m.range(p.as_bytes()).await.unwrap();
    let keys: Vec<&[u8]> = range.kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(
        keys,
        vec![a.as_slice(), b.as_slice()],
        "range is the prefix, in key order"
    );
    assert!(range.revision > second.revision);

    let deleted = m.delete(&a).await.unwrap();
    assert_eq!(deleted.prev.map(|kv| kv.value), Some(b"2".to_vec()));
    assert_eq!(deleted.revision, range.revision + 1);
    let again = m.delete(&a).await.unwrap();
    assert_eq!(
        (again.prev, again.revision),
        (None, deleted.revision),
        "no-op delete"
    );
    assert_eq!(m.get(&a).await.unwrap(), None);
}

pub async fn compare_and_swap<M: MetaStore>(m: &M, p: &str) {
    let k = key(p, "k");
    let put = |value: &[u8]| {
        vec![TxnOp::Put {
            key: k.clone(),
            value: value.to_vec(),
            lease: None,
        }]
    };

    let created = m
        .txn(vec![Compare::absent(k.clone())], put(b"v1"))
        .await
        .unwrap();
    assert!(created.succeeded && created.current.is_empty());
    let kv = m.get(&k).await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision),
        (created.revision, created.revision)
    );

    let lost = m
        .txn(vec![Compare::absent(k.clone())], put(b"other"))
        .await
        .unwrap();
    assert!(
        !lost.succeeded,
        "create-if-absent on an existing key conflicts"
    );
    assert_eq!(
        lost.revision, created.revision,
        "a failed txn changes nothing"
    );
    assert_eq!(
        lost.current,
        vec![Some(kv.clone())],
        "a conflict reports the current value"
    );

    let swapped = m
        .txn(
            vec![Compare::mod_revision(k.clone(), kv.mod_revision)],
            put(b"v2"),
        )
        .await;
    let swapped = swapped.unwrap();
    assert!(swapped.succeeded);
    assert_eq!(swapped.revision, created.revision + 1);
    let stale = m
        .txn(
            vec![Compare::mod_revision(k.clone(), kv.mod_revision)],
            put(b"v3"),
        )
        .await;
    assert!(!stale.unwrap().succeeded, "a stale mod_revision conflicts");
    let by_create = Compare::create_revision(k.clone(), created.revision);
    let deleted = m
        .txn(vec![by_create], vec![TxnOp::Delete { key: k.clone() }])
        .await
        .unwrap();
    assert!(deleted.succeeded);
    assert_eq!(m.get(&k).await.unwrap(), None);

    // Several keys at one revision.
    let (x, y) = (key(p, "x"), key(p, "y"));
    let ops = vec![
        TxnOp::Put {
            key: x.clone(),
            value: b"1".to_vec(),
            lease: None,
        },
        TxnOp::Put {
            key: y.clone(),
            value: b"1".to_vec(),
            lease: None,
        },
    ];
    let both = m
        .txn(
            vec![Compare::absent(x.clone()), Compare::absent(y.clone())],
            ops,
        )
        .await;
    let both = both.unwrap();
    assert!(both.succeeded);
    assert_eq!(
        m.get(&x).await.unwrap().unwrap().mod_revision,
        both.revision
    );
    assert_eq!(
        m.get(&y).await.unwrap().unwrap().mod_revision,
        both.revision
    );
}

/// Lease with keep-alive keeps its key past the TTL; without, the key goes,
/// and a watch sees every change in order, the expiry deletion included.
pub async fn lease_keep_alive_and_expiry<M: MetaStore>(m: &M, p: &str) {
    let (leased, plain) = (key(p, "leased"), key(p, "plain"));
    let lease = m.grant(Duration::from_millis(1500)).await.unwrap();
    assert!(
        lease.ttl >= TTL,
        "TTLs round up to {TTL:?}, got {:?}",
        lease.ttl
    );
    let start = m
        .put(&leased, b"alive", Some(lease.id))
        .await
        .unwrap()
        .revision;
    assert_eq!(m.get(&leased).await.unwrap().unwrap().lease, Some(lease.id));
    let mut watch = m.watch(p.as_bytes(), Some(start)).await.unwrap();
    m.put(&plain, b"1", None).await.unwrap();
    m.put(&plain, b"2", None).await.unwrap();
    m.delete(&plain).await.unwrap();

    let kept_until = Instant::now() + lease.ttl * 2;
    while Instant::now() < kept_until {
        m.keep_alive_once(lease.id).await.unwrap();
        sleep(KEEP_ALIVE_EVERY).await;
    }
    assert!(
        m.get(&leased).await.unwrap().is_some(),
        "keep-alive keeps the key past the TTL"
    );

    let mut events = Vec::new();
    for _ in 0..5 {
        events.push(next_event(&mut watch, lease.ttl + EXPIRY_SLACK).await);
    }
    let kinds: Vec<(EventKind, &[u8])> = events
        .iter()
        .map(|e| (e.kind, e.kv.key.as_slice()))
        .collect();
    use EventKind::{Delete, Put};
    let expected = [
        (Put, &leased),
        (Put, &plain),
        (Put, &plain),
        (Delete, &plain),
        (Delete, &leased),
    ];
    let expected: Vec<(EventKind, &[u8])> = expected
        .iter()
        .map(|(k, key)| (*k, key.as_slice()))
        .collect();
    assert_eq!(kinds, expected);
    let revisions: Vec<i64> = events.iter().map(WatchEvent::revision).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "ordered: {revisions:?}"
    );
    assert_eq!(revisions[0], start);
    assert_eq!(
        events[2].prev.as_ref().map(|kv| kv.value.clone()),
        Some(b"1".to_vec())
    );
    let expired = &events[4];
    assert_eq!(
        expired.prev.as_ref().and_then(|kv| kv.lease),
        Some(lease.id),
        "prev of expiry"
    );
    assert_eq!(m.get(&leased).await.unwrap(), None);

    let gone = MetaError::LeaseNotFound { lease: lease.id };
    assert_eq!(m.keep_alive_once(lease.id).await, Err(gone.clone()));
    assert_eq!(
        m.put(&leased, b"late", Some(lease.id)).await.map(drop),
        Err(gone)
    );

    // Revocation deletes at once.
    let lease = m.grant(TTL).await.unwrap();
    m.put(&leased, b"again", Some(lease.id)).await.unwrap();
    m.revoke(lease.id).await.unwrap();
    assert_eq!(m.get(&leased).await.unwrap(), None);
}

/// A watch started at an old revision replays history, then goes live.
pub async fn watch_replays_from_revision<M: MetaStore>(m: &M, p: &str) {
    let k = key(p, "k");
    let first = m.put(&k, b"1", None).await.unwrap().revision;
    m.put(&k, b"2", None).await.unwrap();
    let outside = format!("{}-outside", p.trim_end_matches('/'));
    m.put(outside.as_bytes(), b"not under the prefix", None)
        .await
        .unwrap();
    let mut watch = m.watch(p.as_bytes(), Some(first)).await.unwrap();
    let mut live = m.watch(p.as_bytes(), None).await.unwrap();
    let third = m.put(&k, b"3", None).await.unwrap().revision;
    for expected in [&b"1"[..], b"2", b"3"] {
        let event = next_event(&mut watch, FAILURE_MAX).await;
        assert_eq!(
            (event.kind, event.kv.value.as_slice()),
            (EventKind::Put, expected)
        );
    }
    let event = next_event(&mut live, FAILURE_MAX).await;
    assert_eq!(
        event.revision(),
        third,
        "a watch without start sees only later changes"
    );
}

/// A candidate campaigning behind a leader: its campaign runs in a task
/// and notes whether the leader had been released (resigned, or its lease
/// left to expire) when the campaign won.
struct Waiting {
    campaign: JoinHandle<(
        metro_fabric::meta::Result<metro_fabric::meta::Leadership>,
        bool,
    )>,
    released: Arc<AtomicBool>,
}

impl Waiting {
    /// Starts the campaign and waits until its candidacy is in the store
    /// (the event: it is campaigning), still not leading.
    async fn start<M: MetaStore + Clone>(
        m: &M,
        election: &str,
        value: &'static [u8],
        lease: LeaseId,
    ) -> Self {
        let released = Arc::new(AtomicBool::new(false));
        let campaign = {
            let (m, election) = (m.clone(), election.to_owned());
            let released = Arc::clone(&released);
            tokio::spawn(async move {
                let won = m.campaign(&election, value, lease).await;
                (won, released.load(Ordering::SeqCst))
            })
        };
        let candidacy = election_key(election, lease);
        let deadline = Instant::now() + FAILURE_MAX;
        while m.get(&candidacy).await.unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "no candidacy within {FAILURE_MAX:?}"
            );
            sleep(POLL).await;
        }
        Self { campaign, released }
    }

    /// Marks the leader released (call right before releasing it).
    fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
    }

    /// The campaign's leadership, won within `within` and only after
    /// [`Self::release`].
    async fn won(self, within: Duration, what: &str) -> metro_fabric::meta::Leadership {
        let (won, after_release) = timeout(within, self.campaign)
            .await
            .unwrap_or_else(|_| panic!("{what}: not within {within:?}"))
            .unwrap();
        assert!(after_release, "{what}: won while the leader still held");
        won.unwrap()
    }
}

/// Two candidates: one leads; the other takes over on resign; a third takes
/// over when the leader's lease expires; the fence stops a deposed leader.
pub async fn election<M: MetaStore + Clone>(m: &M, election: &str) {
    let (a, b, c) = (
        m.grant(TTL).await.unwrap(),
        m.grant(TTL).await.unwrap(),
        m.grant(TTL).await.unwrap(),
    );
    let keepers = [
        spawn_keep_alive(m, a.id),
        spawn_keep_alive(m, b.id),
        spawn_keep_alive(m, c.id),
    ];
    let leader_a = m.campaign(election, b"a", a.id).await.unwrap();
    assert_eq!(leader_a.key, election_key(election, a.id));
    let current = m.leader(election).await.unwrap().expect("a leads");
    assert_eq!(
        (current.value.as_slice(), current.create_revision),
        (&b"a"[..], leader_a.revision)
    );

    let campaign_b = Waiting::start(m, election, b"b", b.id).await;
    assert_eq!(m.leader(election).await.unwrap().unwrap().value, b"a");
    campaign_b.release();
    m.resign(&leader_a).await.unwrap();
    let leader_b = campaign_b.won(FAILURE_MAX, "b takes over").await;
    assert_eq!(m.leader(election).await.unwrap().unwrap().value, b"b");

    let fenced = |leadership: &metro_fabric::meta::Leadership| {
        let op = TxnOp::Put {
            key: key(election, "-state"),
            value: leadership.key.clone(),
            lease: None,
        };
        m.txn(vec![leadership.fence()], vec![op])
    };
    assert!(
        !fenced(&leader_a).await.unwrap().succeeded,
        "a deposed leader is fenced off"
    );
    assert!(fenced(&leader_b).await.unwrap().succeeded);

    let campaign_c = Waiting::start(m, election, b"c", c.id).await;
    assert_eq!(m.leader(election).await.unwrap().unwrap().value, b"b");
    campaign_c.release();
    keepers[1].abort();
    let within = TTL + EXPIRY_SLACK + FAILURE_MAX;
    let leader_c = campaign_c
        .won(within, "c takes over when b's lease expires")
        .await;
    assert_eq!(m.leader(election).await.unwrap().unwrap().value, b"c");
    assert!(!fenced(&leader_b).await.unwrap().succeeded);
    m.resign(&leader_c).await.unwrap();
    m.resign(&leader_c).await.unwrap();
    assert_eq!(
        m.leader(election).await.unwrap(),
        None,
        "resigned twice, no leader left"
    );
    keepers.iter().for_each(JoinHandle::abort);
}

async fn until_unreachable<T: std::fmt::Debug>(
    what: &str,
    call: impl Future<Output = metro_fabric::meta::Result<T>>,
) {
    match timeout(FAILURE_MAX, call).await {
        Ok(Err(error)) => assert!(error.is_unreachable(), "{what} during outage: {error}"),
        Ok(Ok(value)) => panic!("{what} succeeded during the outage: {value:?}"),
        Err(_) => panic!("{what} hung during the outage"),
    }
}

/// Calls fail as unreachable while the store is down, open watches end, and
/// everything works again afterwards with the data intact.
pub async fn outage<H: Harness>(harness: &mut H, p: &str) {
    let m = harness.membership();
    let k = key(p, "k");
    let before = m.put(&k, b"before", None).await.unwrap();
    let mut watch = m.watch(p.as_bytes(), None).await.unwrap();

    harness.interrupt().await;
    until_unreachable("get", m.get(&k)).await;
    until_unreachable("put", m.put(&k, b"during", None)).await;
    until_unreachable("watch", m.watch(p.as_bytes(), None)).await;
    match timeout(FAILURE_MAX, watch.next()).await {
        Ok(Err(error)) => assert!(error.is_unreachable(), "open watch: {error}"),
        other => panic!("an open watch must end with the outage, got {other:?}"),
    }

    harness.restore().await;
    let deadline = Instant::now() + RECOVERY_MAX;
    let kv = loop {
        match m.get(&k).await {
            Ok(kv) => break kv,
            Err(error) if error.is_unreachable() && Instant::now() < deadline => {
                sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("store did not come back: {error}"),
        }
    };
    assert_eq!(
        kv.map(|kv| kv.value),
        Some(b"before".to_vec()),
        "data survives the outage"
    );
    let mut watch = m.watch(p.as_bytes(), Some(before.revision)).await.unwrap();
    let after = m.put(&k, b"after", None).await.unwrap();
    assert_eq!(
        next_event(&mut watch, FAILURE_MAX).await.revision(),
        before.revision
    );
    assert_eq!(
        next_event(&mut watch, FAILURE_MAX).await.revision(),
        after.revision
    );
}
