//! One writer per database: `serve` and `store rebuild` hold an OS file lock beside the database file.
//!
//! The lock is an advisory `flock` on `<db>.lock`, released by the OS when the process dies, so a crash never
//! leaves a stale lock behind. The file says who holds it, for the error the second process prints.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("database {db} is in use by another forgefleet process ({holder}); stop it first")]
    Held { db: String, holder: String },
    #[error("cannot lock database {db} (lock file {lock}): {source}")]
    Io { db: String, lock: String, source: std::io::Error },
}

/// Held for as long as this value lives.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
    path: PathBuf,
}

impl StoreLock {
    /// Takes the lock for the database at `db`, recording `what` (e.g. "forgefleet serve") and this process.
    pub fn acquire(db: &Path, what: &str) -> Result<StoreLock, LockError> {
        let path = lock_path(db);
        let io = |source| LockError::Io { db: db.display().to_string(), lock: path.display().to_string(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder =
                    if holder.is_empty() { "a process that has not said who it is".into() } else { holder.to_string() };
                return Err(LockError::Held { db: db.display().to_string(), holder });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let who = format!("{what}, pid {}, since {}", std::process::id(), chrono::Utc::now().to_rfc3339());
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(who.as_bytes()).and_then(|_| file.flush()).map_err(io)?;
        Ok(StoreLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "forgefleet.db".into());
    name.push(".lock");
    db.with_file_name(name)
}
