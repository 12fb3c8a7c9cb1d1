//! kvstore's integration tests, one binary: durability (recovery, corruption,
//! space bound), model (property tests against an in-memory model, with
//! crashes) and threaded_crash (the threaded writer crashed under load).

mod durability;
mod model;
mod threaded_crash;
