//! kvstore's integration tests, one binary: durability (recovery, corruption,
//! space bound), model (property tests against an in-memory model, with
//! crashes), submit (async submission behind a full queue) and threaded_crash
//! (the threaded writer crashed under load).

mod durability;
mod model;
mod submit;
mod threaded_crash;
