//! [`FaultyDisk`]: an in-memory [`Disk`] that misbehaves on purpose.
//!
//! The model, per file: `durable` bytes (as of the last `sync_data`) plus the
//! ordered list of writes since then. Reads see everything written. At
//! [`FaultyDisk::crash`], every file goes back to its durable bytes, then a
//! seeded-random *prefix* of its unsynced writes is replayed, the first write
//! past that prefix possibly torn (a random prefix of its bytes, the rest of
//! its range zero-filled). Directory changes (create, rename, remove) survive a
//! crash only if `sync_dir` ran after them. Handles opened before a crash fail
//! with EIO afterwards, as a dead process's descriptors would.
//!
//! Faults on demand: EIO on the next N operations of a kind or at a seeded
//! rate, and [`FaultyDisk::corrupt`] flips bits in durable data (latent
//! corruption that only CRCs catch). Counters record bytes written, read and
//! syncs, so tests can prove what an operation did not touch.
//!
//! Deterministic: all randomness comes from the seed given to `new`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::disk::{Disk, DiskError, DiskFile, OpenMode};
use crate::rng::SplitMix64;

/// Which operations an injected fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultOp {
    Read,
    Write,
    /// `fdatasync` of a file.
    Sync,
    /// `fsync` of the directory.
    SyncDir,
}

/// Counters of what the disk was asked to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub bytes_written: u64,
    pub bytes_read: u64,
    pub syncs: u64,
}

/// What [`FaultyDisk::crash`] does with unsynced writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced write is lost.
    DropUnsynced,
    /// A random prefix of the unsynced writes survives; the next one may be torn.
    TearTail,
}

#[derive(Debug, Clone)]
enum PendingOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct FileState {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<PendingOp>,
}

fn apply_write(buf: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = offset as usize;
    let end = start + data.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[start..end].copy_from_slice(data);
}

type FileCell = Arc<Mutex<FileState>>;

#[derive(Debug)]
struct DirState {
    names: BTreeMap<String, FileCell>,
    durable_names: BTreeMap<String, FileCell>,
    rng: SplitMix64,
    fail_next: BTreeMap<FaultOp, u64>,
    fail_rate_ppm: BTreeMap<FaultOp, u32>,
}

#[derive(Debug)]
struct Shared {
    dir: Mutex<DirState>,
    generation: AtomicU64,
    bytes_written: AtomicU64,
    bytes_read: AtomicU64,
    syncs: AtomicU64,
}

/// An in-memory, fault-injecting [`Disk`]; clones share the same files.
#[derive(Debug, Clone)]
pub struct FaultyDisk {
    shared: Arc<Shared>,
}

impl FaultyDisk {
    /// An empty disk whose random choices all derive from `seed`.
    pub fn new(seed: u64) -> Self {
        FaultyDisk {
            shared: Arc::new(Shared {
                dir: Mutex::new(DirState {
                    names: BTreeMap::new(),
                    durable_names: BTreeMap::new(),
                    rng: SplitMix64::new(seed),
                    fail_next: BTreeMap::new(),
                    fail_rate_ppm: BTreeMap::new(),
                }),
                generation: AtomicU64::new(0),
                bytes_written: AtomicU64::new(0),
                bytes_read: AtomicU64::new(0),
                syncs: AtomicU64::new(0),
            }),
        }
    }

    /// Simulates power loss: unsynced writes and directory changes are lost
    /// (or torn, per `mode`) and every open handle goes stale.
    pub fn crash(&self, mode: CrashMode) {
        let mut dir = self.shared.dir.lock();
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        dir.names = dir.durable_names.clone();
        let cells: Vec<FileCell> = dir.names.values().cloned().collect();
        for cell in cells {
            let mut file = cell.lock();
            let mut image = file.durable.clone();
            if mode == CrashMode::TearTail && !file.pending.is_empty() {
                let kept = dir.rng.below(file.pending.len() as u64 + 1) as usize;
                for op in &file.pending[..kept] {
                    match op {
                        PendingOp::Write { offset, data } => apply_write(&mut image, *offset, data),
                        PendingOp::SetLen(len) => image.resize(*len as usize, 0),
                    }
                }
                if let Some(PendingOp::Write { offset, data }) = file.pending.get(kept) {
                    let torn = dir.rng.below(data.len() as u64 + 1) as usize;
                    let mut partial = data[..torn].to_vec();
                    if dir.rng.below(2) == 0 {
                        partial.resize(data.len(), 0);
                    }
                    apply_write(&mut image, *offset, &partial);
                }
            }
            file.durable = image.clone();
            file.current = image;
            file.pending.clear();
        }
    }

    /// Makes the next `count` operations of kind `op` fail with EIO.
    pub fn fail_next(&self, op: FaultOp, count: u64) {
        self.shared.dir.lock().fail_next.insert(op, count);
    }

    /// Makes operations of kind `op` fail with EIO at `ppm` per million.
    pub fn set_fail_rate(&self, op: FaultOp, ppm: u32) {
        self.shared.dir.lock().fail_rate_ppm.insert(op, ppm);
    }

    /// Flips the bits of one byte of `name` at `offset`, durably (latent
    /// corruption). Returns false if the file or offset does not exist.
    pub fn corrupt(&self, name: &str, offset: u64) -> bool {
        let dir = self.shared.dir.lock();
        let Some(cell) = dir.names.get(name) else {
            return false;
        };
        let mut file = cell.lock();
        let at = offset as usize;
        if at >= file.current.len() {
            return false;
        }
        file.current[at] ^= 0xff;
        if at < file.durable.len() {
            file.durable[at] ^= 0xff;
        }
        true
    }

    /// The current length of `name`, if it exists.
    pub fn file_len(&self, name: &str) -> Option<u64> {
        let dir = self.shared.dir.lock();
        dir.names.get(name).map(|c| c.lock().current.len() as u64)
    }

    /// Counters since the disk was created.
    pub fn stats(&self) -> DiskStats {
        DiskStats {
            bytes_written: self.shared.bytes_written.load(Ordering::Relaxed),
            bytes_read: self.shared.bytes_read.load(Ordering::Relaxed),
            syncs: self.shared.syncs.load(Ordering::Relaxed),
        }
    }

    /// Total bytes of all files as they are now.
    pub fn total_bytes(&self) -> u64 {
        let dir = self.shared.dir.lock();
        dir.names
            .values()
            .map(|c| c.lock().current.len() as u64)
            .sum()
    }

    fn inject(&self, op: FaultOp, name: &str) -> Result<(), DiskError> {
        let mut dir = self.shared.dir.lock();
        let forced = match dir.fail_next.get_mut(&op) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        };
        let rate = dir.fail_rate_ppm.get(&op).copied().unwrap_or(0);
        let random = rate > 0 && dir.rng.below(1_000_000) < u64::from(rate);
        if forced || random {
            let what = match op {
                FaultOp::Read => "read",
                FaultOp::Write => "write",
                FaultOp::Sync => "fdatasync",
                FaultOp::SyncDir => "fsync(dir)",
            };
            return Err(DiskError::io(what, name, eio()));
        }
        Ok(())
    }
}

fn eio() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EIO)
}

impl Disk for FaultyDisk {
    fn open(&self, name: &str, mode: OpenMode) -> Result<Arc<dyn DiskFile>, DiskError> {
        assert!(!name.contains('/'), "disk file names are flat: {name}");
        let mut dir = self.shared.dir.lock();
        let cell = match (dir.names.get(name), mode) {
            (Some(cell), _) => cell.clone(),
            (None, OpenMode::Existing) => {
                return Err(DiskError::NotFound {
                    name: name.to_owned(),
                });
            }
            (None, OpenMode::Create) => {
                let cell: FileCell = Arc::default();
                dir.names.insert(name.to_owned(), cell.clone());
                cell
            }
        };
        Ok(Arc::new(FaultyFile {
            disk: self.clone(),
            name: name.to_owned(),
            cell,
            generation: self.shared.generation.load(Ordering::SeqCst),
        }))
    }

    fn list(&self) -> Result<Vec<String>, DiskError> {
        Ok(self.shared.dir.lock().names.keys().cloned().collect())
    }

    fn remove(&self, name: &str) -> Result<(), DiskError> {
        self.shared.dir.lock().names.remove(name);
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), DiskError> {
        let mut dir = self.shared.dir.lock();
        let cell = dir.names.remove(from).ok_or_else(|| DiskError::NotFound {
            name: from.to_owned(),
        })?;
        dir.names.insert(to.to_owned(), cell);
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), DiskError> {
        self.inject(FaultOp::SyncDir, "<dir>")?;
        let mut dir = self.shared.dir.lock();
        dir.durable_names = dir.names.clone();
        Ok(())
    }
}

/// A handle to one [`FaultyDisk`] file.
#[derive(Debug)]
struct FaultyFile {
    disk: FaultyDisk,
    name: String,
    cell: FileCell,
    generation: u64,
}

impl FaultyFile {
    fn check_alive(&self, op: &'static str) -> Result<(), DiskError> {
        if self.disk.shared.generation.load(Ordering::SeqCst) != self.generation {
            return Err(DiskError::io(op, &self.name, eio()));
        }
        Ok(())
    }
}

impl DiskFile for FaultyFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        self.disk.inject(FaultOp::Read, &self.name)?;
        let file = self.cell.lock();
        self.check_alive("read")?;
        let start = offset as usize;
        let end = start.saturating_add(buf.len());
        if end > file.current.len() {
            return Err(DiskError::ShortRead {
                name: self.name.clone(),
                offset,
                len: buf.len(),
                file_len: file.current.len() as u64,
            });
        }
        buf.copy_from_slice(&file.current[start..end]);
        self.disk
            .shared
            .bytes_read
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        self.disk.inject(FaultOp::Write, &self.name)?;
        let mut file = self.cell.lock();
        self.check_alive("write")?;
        apply_write(&mut file.current, offset, buf);
        file.pending.push(PendingOp::Write {
            offset,
            data: buf.to_vec(),
        });
        self.disk
            .shared
            .bytes_written
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), DiskError> {
        self.disk.inject(FaultOp::Sync, &self.name)?;
        let mut file = self.cell.lock();
        // Checked under the file lock: a crash resets files under the same
        // lock, so a sync either completes before the crash or fails.
        self.check_alive("fdatasync")?;
        file.durable = file.current.clone();
        file.pending.clear();
        self.disk.shared.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn len(&self) -> Result<u64, DiskError> {
        self.check_alive("stat")?;
        Ok(self.cell.lock().current.len() as u64)
    }

    fn set_len(&self, len: u64) -> Result<(), DiskError> {
        let mut file = self.cell.lock();
        self.check_alive("truncate")?;
        file.current.resize(len as usize, 0);
        file.pending.push(PendingOp::SetLen(len));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_writes_and_names_are_lost_at_crash() {
        let disk = FaultyDisk::new(1);
        let a = disk.open("a", OpenMode::Create).unwrap();
        a.write_at(b"hello", 0).unwrap();
        a.sync_data().unwrap();
        disk.sync_dir().unwrap();
        a.write_at(b" world", 5).unwrap();
        let b = disk.open("b", OpenMode::Create).unwrap();
        b.write_at(b"x", 0).unwrap();
        b.sync_data().unwrap();
        disk.crash(CrashMode::DropUnsynced);
        assert!(a.len().is_err(), "stale handle must fail after crash");
        assert_eq!(disk.list().unwrap(), vec!["a".to_owned()]);
        let a = disk.open("a", OpenMode::Existing).unwrap();
        let mut buf = vec![0; 5];
        a.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(a.len().unwrap(), 5);
    }

    #[test]
    fn tear_tail_keeps_a_prefix_of_the_unsynced_writes() {
        for seed in 0..64 {
            let disk = FaultyDisk::new(seed);
            let f = disk.open("f", OpenMode::Create).unwrap();
            disk.sync_dir().unwrap();
            f.write_at(&[1; 8], 0).unwrap();
            f.sync_data().unwrap();
            f.write_at(&[2; 8], 8).unwrap();
            f.write_at(&[3; 8], 16).unwrap();
            disk.crash(CrashMode::TearTail);
            let f = disk.open("f", OpenMode::Existing).unwrap();
            let len = f.len().unwrap() as usize;
            let mut image = vec![0; len];
            f.read_at(&mut image, 0).unwrap();
            assert_eq!(&image[..8], &[1; 8]);
            // Whatever survived is a prefix of the write stream: a 3 never
            // appears unless every 2 before it survived.
            if image.len() > 16 && image[16] == 3 {
                assert_eq!(&image[8..16], &[2; 8]);
            }
        }
    }

    #[test]
    fn injected_faults_and_corruption() {
        let disk = FaultyDisk::new(7);
        let f = disk.open("f", OpenMode::Create).unwrap();
        f.write_at(&[9; 4], 0).unwrap();
        disk.fail_next(FaultOp::Sync, 1);
        assert!(f.sync_data().is_err());
        f.sync_data().unwrap();
        assert!(disk.corrupt("f", 2));
        let mut buf = [0; 4];
        f.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [9, 9, 9 ^ 0xff, 9]);
        assert!(matches!(
            f.read_at(&mut buf, 2),
            Err(DiskError::ShortRead { .. })
        ));
    }
}
