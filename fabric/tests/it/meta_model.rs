//! `MemMetaStore` against the shared `MetaStore` conformance suite, plus
//! behaviour only the model exposes (compaction, the outage switch's lease
//! renewal, validation).

use std::time::Duration;

use metro_fabric::limits::TXN_OPS_MAX;
use metro_fabric::meta::prelude::*;
use metro_fabric::meta::{Compare, LEASE_TTL_MIN, MetaError, TxnOp, WatchStream, election_key};

use crate::conformance::meta as conformance;
use crate::mem_harness::{Mem, MemHarness};

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
    assert_eq!(error, Some(MetaError::Compacted { revision: second }));
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
        matches!(duplicate, Err(MetaError::Failed { .. })),
        "{duplicate:?}"
    );
    let keys: Vec<Vec<u8>> = (0..=TXN_OPS_MAX)
        .map(|i| format!("k{i}").into_bytes())
        .collect();
    let too_many = m
        .txn(vec![], keys.iter().map(|key| put(key)).collect())
        .await;
    assert!(
        matches!(too_many, Err(MetaError::Failed { .. })),
        "{too_many:?}"
    );
    let compares = keys
        .iter()
        .take(3)
        .map(|key| Compare::absent(key.clone()))
        .collect();
    assert!(m.txn(compares, vec![put(b"k")]).await.unwrap().succeeded);
}

/// Polling period of the waits.
const POLL: Duration = Duration::from_millis(20);
/// How long past its TTL an expiry may be observed (a busy machine).
const EXPIRY_SLACK: Duration = Duration::from_secs(5);

/// A lease whose TTL ran out during an outage expires a whole TTL after
/// the store comes back, not at once: the key is observed gone, and not
/// before then.
#[tokio::test]
async fn outage_restarts_lease_ttls() {
    let m = Mem::new();
    let lease = m.grant(LEASE_TTL_MIN).await.unwrap();
    m.put(b"k", b"v", Some(lease.id)).await.unwrap();
    m.set_available(false);
    tokio::time::sleep(LEASE_TTL_MIN + Duration::from_millis(200)).await;
    let restored = tokio::time::Instant::now();
    m.set_available(true);
    while m.get(b"k").await.unwrap().is_some() {
        assert!(
            restored.elapsed() < LEASE_TTL_MIN + EXPIRY_SLACK,
            "the lease never expired after the outage"
        );
        tokio::time::sleep(POLL).await;
    }
    let expired_after = restored.elapsed();
    assert!(
        expired_after >= LEASE_TTL_MIN,
        "expired {expired_after:?} after the store came back: the TTL did not restart"
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
    // Drive b's campaign until its candidacy shows, then drop it.
    let candidacy = election_key("e", b.id);
    let mut campaign = Box::pin(m.campaign("e", b"b", b.id));
    let deadline = tokio::time::Instant::now() + EXPIRY_SLACK;
    loop {
        tokio::select! {
            biased;
            won = campaign.as_mut() => panic!("b won while a leads: {won:?}"),
            () = tokio::time::sleep(POLL) => {}
        }
        if m.get(&candidacy).await.unwrap().is_some() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "b never campaigned");
    }
    assert_eq!(m.range(b"e/").await.unwrap().kvs.len(), 2, "a and b");
    drop(campaign);
    assert_eq!(
        m.range(b"e/").await.unwrap().kvs.len(),
        1,
        "b's candidacy is withdrawn"
    );
    m.resign(&leader).await.unwrap();
    assert_eq!(m.leader("e").await.unwrap(), None);
}
