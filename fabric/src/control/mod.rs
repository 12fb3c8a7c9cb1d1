//! The control plane's deterministic core: the desired-state schema kept in
//! the [`crate::membership::Membership`] store, and the pure decisions the
//! coordinator takes from it — where to place a volume's replicas, which
//! replicas to repair, how healthy a volume is.
//!
//! Everything here is a function of its inputs (no clock, no I/O): the
//! coordinator loop feeds it what it read from etcd (or the model) and
//! writes the results back with compare-and-swap transactions, and the
//! simulator can run the same decisions under virtual time.

mod health;
mod keys;
mod placement;
mod repair;
mod state;

pub use health::{Health, MemberHealth, volume_health};
pub use keys::ClusterKeys;
pub use placement::{PlacementError, place};
pub use repair::{RepairAction, plan_repairs};
pub use state::{
    ClusterView, DecodeError, DomainInfo, DomainRole, DomainState, Member, MemberRole, NodeInfo,
    Placement, VolumeRecord, VolumeSpec, decode, encode,
};
