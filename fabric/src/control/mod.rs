//! The control plane's deterministic core: the desired-state schema kept in
//! the [`crate::meta::MetaStore`] store, and the pure decisions the
//! coordinator takes from it — where to place a volume's replicas, which
//! replicas to repair, how healthy a volume is.
//!
//! The decisions (placement, repair, health) are functions of their inputs
//! (no clock, no I/O). Around them, and generic over the runtime and the
//! store so that the simulator runs them under virtual time:
//! [`NodeRegistration`] keeps a node's leased registration alive,
//! [`Coordinator`] (elected, one at a time) feeds the decisions what it read
//! and writes the results back with fenced compare-and-swap transactions
//! (the helpers in `store`), and acts on the Raft groups through
//! [`GroupAdmin`].

mod admin;
mod coordinator;
mod health;
mod keys;
mod placement;
mod registration;
mod repair;
mod state;
mod store;

pub use admin::{AdminError, GroupAdmin, voters_after_replace};
pub use coordinator::{Coordinator, CoordinatorConfig, CoordinatorStats};
pub use health::{Health, MemberHealth, volume_health};
pub use keys::ClusterKeys;
pub use placement::{PlacementError, place};
pub use registration::{NodeRegistration, RegistrationConfig, RegistrationStatus, StatusReceiver};
pub use repair::{RepairAction, plan_repairs};
pub use state::{
    ClusterView, DecodeError, DomainInfo, DomainRole, DomainState, Member, MemberRole, NodeInfo,
    Placement, VolumeRecord, VolumeSpec, decode, encode,
};
pub use store::{
    CasOutcome, LoadedView, StoreError, VolumeStatusRecord, guarded_write, load_view,
    set_domain_state, status_key, status_prefix, still_leader, write_status, write_volume,
};
