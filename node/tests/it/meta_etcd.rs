//! `EtcdMetaStore` against a real etcd, through the shared `MetaStore`
//! conformance suite (fabric/tests/conformance/meta.rs). The test
//! starts its own etcd on 127.0.0.1 with free ports and a temporary data
//! directory, kills and restarts it for the outage scenario, and kills it on
//! drop. It fails (never skips) when the `etcd` binary is missing: install
//! the Debian package `etcd-server` (scripts/test does).

use crate::conformance::meta as conformance;

use std::time::Instant;

use crate::etcd_harness::EtcdHarness;
use metro_fabric::meta::prelude::*;
use metro_fabric::meta::{MetaError, WatchStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_conformance_suite() {
    let started = Instant::now();
    let mut harness = EtcdHarness::start("membership").await;
    conformance::run_all(&mut harness).await;
    compacted_watch(&harness).await;
    println!("etcd conformance suite took {:?}", started.elapsed());
}

/// A watch from a compacted revision fails with `Compacted` (etcd reports it
/// right after confirming the watch, so either call may carry it).
async fn compacted_watch(harness: &EtcdHarness) {
    let m = &harness.membership;
    let first = m.put(b"/compact/k", b"1", None).await.unwrap().revision;
    let latest = m.put(b"/compact/k", b"2", None).await.unwrap().revision;
    let raw = etcd_client::Client::connect([harness.server.client_url()], None).await;
    raw.expect("raw etcd client")
        .compact(latest, None)
        .await
        .expect("compact");
    let error = match m.watch(b"/compact/", Some(first)).await {
        Err(error) => error,
        Ok(mut watch) => watch.next().await.expect_err("a compacted start revision"),
    };
    assert_eq!(error, MetaError::Compacted { revision: latest });
    let mut watch = m.watch(b"/compact/", Some(latest)).await.unwrap();
    assert_eq!(watch.next().await.unwrap().kv.value, b"2");
}
