//! One process owns a data directory: an exclusive `flock` on `<data_dir>/pusher.lock`, held for
//! the life of the process (the lock goes with the descriptor, so a crash releases it).
//!
//! The holder writes its pid and start time into the file, so a second process (a second
//! `pusher serve`, or `pusher spill drain` while a server runs) can refuse with a message naming
//! it. Two processes on one spill log would delete each other's live segments during recovery
//! and acknowledge audio written into unlinked files (issue 11, defect 3).
//!
//! Invariant: while a [`DataDirLock`] lives, no other process holds the lock of its directory.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name in the data directory.
pub const LOCK_FILE_NAME: &str = "pusher.lock";
/// Longest holder description read back from a lock file (it is one short line).
const HOLDER_BYTES_MAX: u64 = 256;

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct DataDirLock {
    path: PathBuf,
    _file: File,
}

/// Why the lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it; `holder` is what it wrote (pid and start time).
    Held {
        /// The lock file.
        path: PathBuf,
        /// The holder's line from the lock file (`holder unknown` when it is empty).
        holder: String,
    },
    /// The data directory could not be created (a read-only or virtual file system, no
    /// permission).
    Create {
        /// The data directory.
        data_dir: PathBuf,
        /// Why it could not be created.
        error: io::Error,
    },
    /// The lock file could not be opened, locked or written.
    Io {
        /// The lock file.
        path: PathBuf,
        /// The failure.
        error: io::Error,
    },
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Held { path, holder } => write!(
                f,
                "data directory {} is in use by another pusher ({holder}; lock file {}): one \
                 process owns a data directory",
                path.parent().unwrap_or(path).display(),
                path.display()
            ),
            LockError::Create { data_dir, error } => write!(
                f,
                "cannot create the data directory {} (--data-dir / PUSHER_DATA_DIR): {error}",
                data_dir.display()
            ),
            LockError::Io { path, error } => write!(f, "lock file {}: {error}", path.display()),
        }
    }
}

impl DataDirLock {
    /// Takes the lock of `data_dir` (created if missing) without waiting, and records this
    /// process in it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, LockError> {
        let path = data_dir.join(LOCK_FILE_NAME);
        let io_error = |error| LockError::Io {
            path: path.clone(),
            error,
        };
        std::fs::create_dir_all(data_dir).map_err(|error| LockError::Create {
            data_dir: data_dir.to_path_buf(),
            error,
        })?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error)?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io_error(error));
            }
            let mut holder = String::new();
            let _ = (&mut file)
                .take(HOLDER_BYTES_MAX)
                .read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "holder unknown".to_string(),
                line => line.to_string(),
            };
            return Err(LockError::Held { path, holder });
        }
        let record = holder_line(std::process::id(), crate::spill::clock::wall_unix_ms());
        file.set_len(0).map_err(io_error)?;
        file.seek(SeekFrom::Start(0)).map_err(io_error)?;
        file.write_all(record.as_bytes()).map_err(io_error)?;
        Ok(DataDirLock { path, _file: file })
    }

    /// The lock file, `<data_dir>/pusher.lock`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `pid 1234, started at unix 1700000000.123`.
fn holder_line(pid: u32, started_unix_ms: u64) -> String {
    format!(
        "pid {pid}, started at unix {}.{:03}\n",
        started_unix_ms / 1000,
        started_unix_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spill::test_log::TempDir;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = TempDir::new("lock");
        let data = dir.path().join("data");
        let first = DataDirLock::acquire(&data).expect("the first lock");
        assert_eq!(first.path(), data.join(LOCK_FILE_NAME));
        // flock locks belong to the open file description: a second open in this process
        // conflicts exactly as another process's would.
        let refused = DataDirLock::acquire(&data).expect_err("a second holder");
        let message = refused.to_string();
        assert!(
            message.contains(&format!("pid {}, started at unix", std::process::id())),
            "{message}"
        );
        assert!(message.contains("in use by another pusher"), "{message}");
        drop(first);
        let again = DataDirLock::acquire(&data).expect("free again once dropped");
        drop(again);
    }

    #[test]
    fn a_data_dir_that_cannot_be_created_is_named_as_such() {
        let dir = TempDir::new("lock-create");
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"not a directory").unwrap();
        let data_dir = file.join("data");
        let error = DataDirLock::acquire(&data_dir).unwrap_err();
        assert!(matches!(error, LockError::Create { .. }), "{error:?}");
        let message = error.to_string();
        let expected = format!("cannot create the data directory {}", data_dir.display());
        assert!(message.starts_with(&expected), "{message}");
    }

    #[test]
    fn holder_line_names_pid_and_start() {
        assert_eq!(
            holder_line(42, 1_700_000_000_123),
            "pid 42, started at unix 1700000000.123\n"
        );
    }
}
