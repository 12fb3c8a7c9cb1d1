//! `metro-sim`: runs seeded cluster simulations (lands with the simulation issue).
fn main() {
    println!("metro-sim: not yet available");
}
