//! The in-memory model (`MemMetaStore` on tokio) as a conformance-suite
//! harness: its outage switch takes it down.

use metro_fabric::meta::MemMetaStore;

use crate::conformance::harness::Harness;

/// The in-memory model on tokio.
pub type Mem = MemMetaStore<openraft_rt_tokio::TokioRuntime>;

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
