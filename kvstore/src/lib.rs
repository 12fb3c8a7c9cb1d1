//! metro-kvstore: the node-local durable engine.
mod disk;
mod faulty_disk;
mod file_disk;
mod rng;

pub use disk::{Disk, DiskError, DiskFile, OpenMode};
pub use faulty_disk::{CrashMode, DiskStats, FaultOp, FaultyDisk};
pub use file_disk::FileDisk;
pub use rng::SplitMix64;
