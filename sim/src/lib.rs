//! metro-sim: deterministic simulation of whole metro clusters (lands with the
//! simulation issue).
