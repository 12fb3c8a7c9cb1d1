//! A real etcd (tests/common) as a conformance-suite harness: killed for an
//! outage, restarted on its data directory to end it. Needs the test crate
//! to include `fabric/tests/conformance/harness.rs` as `harness`.

use metro_node::etcd_membership::EtcdMembership;

use crate::common::EtcdServer;

pub struct EtcdHarness {
    pub server: EtcdServer,
    pub membership: EtcdMembership,
}

impl EtcdHarness {
    /// Starts etcd in a directory named after `tag` and connects to it.
    pub async fn start(tag: &str) -> Self {
        let server = EtcdServer::start(tag);
        let membership = server.connect().await;
        Self { server, membership }
    }
}

impl crate::harness::Harness for EtcdHarness {
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
