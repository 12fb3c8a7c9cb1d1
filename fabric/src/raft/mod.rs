//! Volumes as openraft groups: the type configuration ([`types`]), the
//! network that carries a group's RPCs over the [`crate::env::Transport`]
//! seam ([`network`], pipelined appends in [`pipeline`]), and the receiving side that routes incoming frames to
//! the right group ([`router`], in each leader's order: [`append_order`]).

pub mod append_order;
pub mod network;
pub mod pipeline;
pub mod router;
pub mod types;

pub use types::{TypeConfig, VolumeRaft};
