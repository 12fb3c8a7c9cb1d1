//! The coordinator suite (fabric/tests/conformance/coordinator.rs) against
//! a real etcd started by the test (tests/common): registration and lease
//! expiry, placement, repair, coordinator failover, the compare-and-swap
//! conflict path, domain deactivation, and etcd killed and restarted on
//! its data directory under a leading coordinator.

use crate::conformance::coordinator as conformance;

use crate::etcd_harness::EtcdHarness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_coordinator_suite() {
    let started = std::time::Instant::now();
    let mut harness = EtcdHarness::start("coordinator").await;
    conformance::run_all(&mut harness).await;
    println!("coordinator suite (etcd) took {:?}", started.elapsed());
}
