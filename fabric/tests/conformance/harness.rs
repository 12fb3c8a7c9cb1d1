//! What the conformance suites (`membership.rs`, `coordinator.rs` beside
//! this file) need besides the store, and the in-memory model as one.
//! Included by `#[path]` as the test crate's `harness` module, next to the
//! suite's `conformance` module (node/tests/etcd_harness has the etcd one).

use std::future::Future;

use metro_fabric::membership::{MemMembership, Membership};

/// A store under test and a way to take it down and back.
pub trait Harness: Send {
    type M: Membership + Clone;

    /// A client of the store (clones share it).
    fn membership(&self) -> Self::M;

    /// Makes the store unreachable (etcd: kill the process).
    fn interrupt(&mut self) -> impl Future<Output = ()> + Send;

    /// Brings it back with its data (etcd: restart on the same data dir).
    fn restore(&mut self) -> impl Future<Output = ()> + Send;
}

/// The in-memory model on tokio.
pub type Mem = MemMembership<openraft_rt_tokio::TokioRuntime>;

/// The model as a harness: its outage switch takes it down.
#[derive(Debug, Default)]
pub struct MemHarness {
    pub membership: Mem,
}

impl Harness for MemHarness {
    type M = Mem;

    fn membership(&self) -> Mem {
        self.membership.clone()
    }

    async fn interrupt(&mut self) {
        self.membership.set_available(false);
    }

    async fn restore(&mut self) {
        self.membership.set_available(true);
    }
}
