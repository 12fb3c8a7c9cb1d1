//! The coordinator suite (fabric/tests/conformance/coordinator.rs) against
//! `MemMembership` on tokio: registration and lease expiry, placement,
//! repair, coordinator failover, the compare-and-swap conflict path,
//! domain deactivation and a store outage (the model's outage switch).

#[path = "conformance/coordinator.rs"]
mod conformance;

use metro_fabric::membership::MemMembership;

type Mem = MemMembership<openraft_rt_tokio::TokioRuntime>;

struct MemHarness {
    membership: Mem,
}

impl conformance::Harness for MemHarness {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_suite() {
    let started = tokio::time::Instant::now();
    let mut harness = MemHarness {
        membership: Mem::new(),
    };
    conformance::run_all(&mut harness).await;
    println!("coordinator suite (model) took {:?}", started.elapsed());
}
