//! `MemMembership` against the shared `Membership` conformance suite, plus
//! behaviour only the model exposes (compaction, the outage switch's lease
//! renewal, validation).

#[path = "conformance/membership.rs"]
mod conformance;
#[path = "conformance/harness.rs"]
mod harness;

use std::time::Duration;

use metro_fabric::membership::{
    Compare, LEASE_TTL_MIN, Membership, MembershipError, TXN_OPS_MAX, TxnOp, WatchStream,
};

use harness::{Mem, MemHarness};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let mut harness = MemHarness::default();
    conformance::run_all(&mut harness).await;
}

fn put(key: &[u8]) -> TxnOp {
    TxnOp::Put {
        key: key.to_vec(),
        value: b"v".to_vec(),
        lease: None,
    }
}

#[tokio::test]
async fn compaction_ends_old_watches() {
    let m = Mem::new();
    let first = m.put(b"k", b"1", None).await.unwrap().revision;
    let second = m.put(b"k", b"2", None).await.unwrap().revision;
    m.compact(second);
    let error = m.watch(b"k", Some(first)).await.err();
    assert_eq!(error, Some(MembershipError::Compacted { revision: second }));
    let mut watch = m.watch(b"k", Some(second)).await.unwrap();
    assert_eq!(watch.next().await.unwrap().kv.value, b"2");
}

#[tokio::test]
async fn invalid_transactions_fail() {
    let m = Mem::new();
    let duplicate = m
        .txn(
            vec![],
            vec![put(b"k"), TxnOp::Delete { key: b"k".to_vec() }],
        )
        .await;
    assert!(
        matches!(duplicate, Err(MembershipError::Failed { .. })),
        "{duplicate:?}"
    );
    let keys: Vec<Vec<u8>> = (0..=TXN_OPS_MAX)
        .map(|i| format!("k{i}").into_bytes())
        .collect();
    let too_many = m
        .txn(vec![], keys.iter().map(|key| put(key)).collect())
        .await;
    assert!(
        matches!(too_many, Err(MembershipError::Failed { .. })),
        "{too_many:?}"
    );
    let compares = keys
        .iter()
        .take(3)
        .map(|key| Compare::absent(key.clone()))
        .collect();
    assert!(m.txn(compares, vec![put(b"k")]).await.unwrap().succeeded);
}

#[tokio::test]
async fn outage_restarts_lease_ttls() {
    let m = Mem::new();
    let lease = m.grant(LEASE_TTL_MIN).await.unwrap();
    m.put(b"k", b"v", Some(lease.id)).await.unwrap();
    m.set_available(false);
    tokio::time::sleep(LEASE_TTL_MIN + Duration::from_millis(200)).await;
    m.set_available(true);
    assert!(
        m.get(b"k").await.unwrap().is_some(),
        "the TTL restarts when the store comes back"
    );
}

#[tokio::test]
async fn dropped_campaign_withdraws() {
    let m = Mem::new();
    let (a, b) = (
        m.grant(LEASE_TTL_MIN).await.unwrap(),
        m.grant(LEASE_TTL_MIN).await.unwrap(),
    );
    let leader = m.campaign("e", b"a", a.id).await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(100), m.campaign("e", b"b", b.id));
    assert!(waiting.await.is_err(), "b waits behind a");
    assert_eq!(
        m.range(b"e/").await.unwrap().kvs.len(),
        1,
        "b's candidacy is withdrawn"
    );
    m.resign(&leader).await.unwrap();
    assert_eq!(m.leader("e").await.unwrap(), None);
}
