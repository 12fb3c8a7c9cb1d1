//! The coordinator suite (conformance/coordinator.rs) against
//! `MemMetaStore` on tokio: registration and lease expiry, placement,
//! repair, coordinator failover, the compare-and-swap conflict path,
//! domain deactivation and a store outage (the model's outage switch).

use crate::conformance::coordinator as conformance;
use crate::mem_harness::MemHarness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_suite() {
    let started = tokio::time::Instant::now();
    let mut harness = MemHarness::default();
    conformance::run_all(&mut harness).await;
    println!("coordinator suite (model) took {:?}", started.elapsed());
}
