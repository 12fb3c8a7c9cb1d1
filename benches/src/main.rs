//! `metro-bench`: side-by-side benchmarks.
fn main() {}
