//! Volumes as openraft groups: the type configuration ([`types`]), the
//! network that carries a group's RPCs over the [`crate::env::Transport`]
//! seam ([`network`]), and the receiving side that routes incoming frames to
//! the right group ([`router`]).

pub mod network;
pub mod router;
pub mod types;

pub use types::{TypeConfig, VolumeRaft};
