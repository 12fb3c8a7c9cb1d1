//! A real etcd (tests/common) as a conformance-suite harness: killed for an
//! outage, restarted on its data directory to end it.

use metro_node::daemon::etcd_meta::EtcdMetaStore;

use crate::common::EtcdServer;

pub struct EtcdHarness {
    pub server: EtcdServer,
    pub membership: EtcdMetaStore,
}

impl EtcdHarness {
    /// Starts etcd in a directory named after `tag` and connects to it.
    pub async fn start(tag: &str) -> Self {
        let server = EtcdServer::start(tag);
        let membership = server.connect().await;
        Self { server, membership }
    }
}

impl crate::conformance::harness::Harness for EtcdHarness {
    type M = EtcdMetaStore;

    fn membership(&self) -> EtcdMetaStore {
        self.membership.clone()
    }

    async fn interrupt(&mut self) {
        self.server.kill();
    }

    async fn restore(&mut self) {
        self.server.spawn();
    }
}
