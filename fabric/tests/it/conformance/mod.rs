//! Conformance suites run against more than one store: here against the
//! in-memory model (`meta_model`, `coordinator_model`), in node's
//! integration tests against a real etcd (node/tests/it/main.rs includes
//! this directory by `#[path]`).

pub mod coordinator;
pub mod fake_admin;
pub mod harness;
pub mod meta;
