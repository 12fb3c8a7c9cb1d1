//! The coordinator suite (fabric/tests/conformance/coordinator.rs) against
//! a real etcd started by the test (tests/common): registration and lease
//! expiry, placement, repair, coordinator failover, the compare-and-swap
//! conflict path, domain deactivation, and etcd killed and restarted on
//! its data directory under a leading coordinator.

mod common;

#[path = "../../fabric/tests/conformance/coordinator.rs"]
mod conformance;

use common::EtcdServer;
use metro_node::etcd_membership::EtcdMembership;

struct EtcdHarness {
    server: EtcdServer,
    membership: EtcdMembership,
}

impl conformance::Harness for EtcdHarness {
    type M = EtcdMembership;

    fn membership(&self) -> EtcdMembership {
        self.membership.clone()
    }

    async fn interrupt(&mut self) {
        self.server.kill();
    }

    async fn restore(&mut self) {
        self.server.spawn();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_coordinator_suite() {
    let started = std::time::Instant::now();
    let server = EtcdServer::start("coordinator");
    let membership = server.connect().await;
    let mut harness = EtcdHarness { server, membership };
    conformance::run_all(&mut harness).await;
    println!("coordinator suite (etcd) took {:?}", started.elapsed());
}
