//! What the conformance suites (`meta.rs`, `coordinator.rs` beside this
//! file) need besides the store. The in-memory model's harness is
//! fabric/tests/it/mem_harness.rs, etcd's node/tests/it/etcd_harness.

use std::future::Future;

use metro_fabric::meta::MetaStore;

/// A store under test and a way to take it down and back.
pub trait Harness: Send {
    type M: MetaStore + Clone;

    /// A client of the store (clones share it).
    fn membership(&self) -> Self::M;

    /// Makes the store unreachable (etcd: kill the process).
    fn interrupt(&mut self) -> impl Future<Output = ()> + Send;

    /// Brings it back with its data (etcd: restart on the same data dir).
    fn restore(&mut self) -> impl Future<Output = ()> + Send;
}
