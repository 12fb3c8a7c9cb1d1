//! The cluster's public-key infrastructure: the cluster CA and the node
//! identities it signs ([`ca`]), and loading trust and identities from a
//! certificates directory, client identities included ([`clients`]).

mod ca;
mod clients;

pub use ca::*;
pub use clients::*;
