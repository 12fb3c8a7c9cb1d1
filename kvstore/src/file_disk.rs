//! [`FileDisk`]: the production [`Disk`] on a real directory.
//!
//! Every file is opened read-write; `sync_data` is `fdatasync(2)` and
//! `sync_dir` is `fsync(2)` on the directory. I/O is positional
//! (`pread`/`pwrite`), so readers never contend with the writer for a cursor.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::disk::{Disk, DiskError, DiskFile, OpenMode};

/// A [`Disk`] backed by one directory of a real file system.
#[derive(Debug, Clone)]
pub struct FileDisk {
    dir: PathBuf,
}

impl FileDisk {
    /// Uses `dir`, creating it (and its parents) if missing.
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<Self, DiskError> {
        let dir = dir.as_ref().to_path_buf();
        let shown = dir.display().to_string();
        fs::create_dir_all(&dir).map_err(|e| DiskError::io("create_dir", &shown, e))?;
        Ok(FileDisk { dir })
    }

    /// The directory this disk lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        debug_assert!(!name.contains('/'), "disk file names are flat: {name}");
        self.dir.join(name)
    }
}

impl Disk for FileDisk {
    fn open(&self, name: &str, mode: OpenMode) -> Result<Arc<dyn DiskFile>, DiskError> {
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if mode == OpenMode::Create {
            options.create(true);
        }
        match options.open(self.path(name)) {
            Ok(file) => Ok(Arc::new(RealFile {
                name: name.to_owned(),
                file,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(DiskError::NotFound {
                name: name.to_owned(),
            }),
            Err(e) => Err(DiskError::io("open", name, e)),
        }
    }

    fn list(&self) -> Result<Vec<String>, DiskError> {
        let shown = self.dir.display().to_string();
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| DiskError::io("list", &shown, e))? {
            let entry = entry.map_err(|e| DiskError::io("list", &shown, e))?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn remove(&self, name: &str) -> Result<(), DiskError> {
        match fs::remove_file(self.path(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DiskError::io("remove", name, e)),
        }
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), DiskError> {
        fs::rename(self.path(from), self.path(to)).map_err(|e| DiskError::io("rename", from, e))
    }

    fn sync_dir(&self) -> Result<(), DiskError> {
        let shown = self.dir.display().to_string();
        let dir = File::open(&self.dir).map_err(|e| DiskError::io("open_dir", &shown, e))?;
        dir.sync_all()
            .map_err(|e| DiskError::io("sync_dir", &shown, e))
    }
}

/// One real file.
#[derive(Debug)]
struct RealFile {
    name: String,
    file: File,
}

impl DiskFile for RealFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        match self.file.read_exact_at(buf, offset) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(DiskError::ShortRead {
                name: self.name.clone(),
                offset,
                len: buf.len(),
                file_len: self.len()?,
            }),
            Err(e) => Err(DiskError::io("read", &self.name, e)),
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| DiskError::io("write", &self.name, e))
    }

    fn sync_data(&self) -> Result<(), DiskError> {
        self.file
            .sync_data()
            .map_err(|e| DiskError::io("fdatasync", &self.name, e))
    }

    fn len(&self) -> Result<u64, DiskError> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| DiskError::io("stat", &self.name, e))
    }

    fn set_len(&self, len: u64) -> Result<(), DiskError> {
        self.file
            .set_len(len)
            .map_err(|e| DiskError::io("truncate", &self.name, e))
    }
}
