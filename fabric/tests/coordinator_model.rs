//! The coordinator suite (fabric/tests/conformance/coordinator.rs) against
//! `MemMembership` on tokio: registration and lease expiry, placement,
//! repair, coordinator failover, the compare-and-swap conflict path,
//! domain deactivation and a store outage (the model's outage switch).

#[path = "conformance/coordinator.rs"]
mod conformance;
#[path = "conformance/harness.rs"]
mod harness;

use harness::MemHarness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_suite() {
    let started = tokio::time::Instant::now();
    let mut harness = MemHarness::default();
    conformance::run_all(&mut harness).await;
    println!("coordinator suite (model) took {:?}", started.elapsed());
}
