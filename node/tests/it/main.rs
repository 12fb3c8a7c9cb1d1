//! metro-node's integration tests, one binary (each test binary links the
//! whole crate and its dependencies): one module per scenario file, the
//! shared helpers as modules beside them, and fabric's store conformance
//! suites, run here against a real etcd.

mod admin_harness;
mod common;
#[path = "../../../fabric/tests/it/conformance/mod.rs"]
mod conformance;
mod etcd_harness;
mod qemu;

mod admin_api;
mod admin_cli;
mod admin_e2e;
mod coordinator_etcd;
mod demo;
mod domain_state;
mod exactly_once;
mod failover;
mod meta_etcd;
mod nbd_fuzz;
mod nbd_host;
mod nbd_interop;
mod quic_transport;
mod repair;
mod repair_coordinator;
mod repair_etcd;
mod snapshot_clone;
mod steady_health;
mod witness;
