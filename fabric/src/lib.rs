//! metro-fabric: volumes as openraft groups, the wire format, the environment
//! seam ([`env`]), the control plane and the DR logic.
//!
//! Runs unchanged under the deterministic simulator: every effect goes through
//! [`env`].
pub mod backoff;
pub mod control;
pub mod env;
pub mod host;
pub mod limits;
pub mod meta;
pub mod raft;
pub mod storage;
pub mod volume;
pub mod wire;
