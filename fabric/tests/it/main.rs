//! metro-fabric's integration tests, one binary (each test binary links
//! the whole crate): one module per scenario file, the shared helpers as
//! modules beside them.

mod common;
mod conformance;
mod mem_harness;

mod coordinator_model;
mod dr_snapshots;
mod host;
mod host_admin;
mod meta_model;
mod raft_group;
mod sessions;
mod sessions_snapshot;
mod storage_suite;
mod witness;
