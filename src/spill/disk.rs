//! The file system as the spill log uses it: a handful of operations behind a trait, so that the
//! writer, recovery, the reader and `spill drain` run on the real disk ([`RealDisk`]) and, in the
//! simulation (`crate::sim`), on a simulated one that loses unsynced writes at a crash and
//! injects errors.
//!
//! The contract the log relies on (and the simulated disk enforces): bytes written to a file are
//! durable only once a later [`AppendFile::sync_data`] on it succeeded; a created file's name is
//! durable once [`Disk::sync_dir`] of its directory succeeded; after a failed `sync_data` nothing
//! is known about the unsynced bytes (fsyncgate: the writer never retries it, see
//! `docs/0010-fsync-errors-are-fatal.md`).

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A file open for reading at offsets.
pub trait ReadFile: Send {
    /// The file's length now.
    fn len_bytes(&self) -> io::Result<u64>;
    /// Reads at `offset`; returns the bytes read (0 at the end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

/// A file open for appending (the active segment).
pub trait AppendFile: Send {
    /// Appends from `bufs`; returns the bytes written (possibly fewer than offered).
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Cuts the file back to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Makes every byte written so far durable (fdatasync).
    fn sync_data(&mut self) -> io::Result<()>;
}

/// The file operations of the spill log: [`RealDisk`], or the simulation's disk.
pub trait Disk: Send + Sync + 'static {
    /// Creates `dir` and any missing parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the regular files in `dir`.
    fn list_files(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens `path` for reading at offsets.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>>;
    /// Creates `path`, which must not exist, for appending.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn AppendFile>>;
    /// Makes the directory's entries (files created or removed in it) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes the name `path` (durable once its directory is synced).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// A second name for `from` (its bytes stay while either name exists).
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// True when `path` names an existing file or directory.
    fn exists(&self, path: &Path) -> bool;
}

/// Reads exactly `buf.len()` bytes at `offset`; `UnexpectedEof` if the file ends first.
pub fn read_exact_at(file: &dyn ReadFile, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => return Err(io::Error::from(ErrorKind::UnexpectedEof)),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// The machine's file system.
pub struct RealDisk;

struct RealRead(File);

impl ReadFile for RealRead {
    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(&self.0, buf, offset)
    }
}

struct RealAppend(File);

impl AppendFile for RealAppend {
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.write_vectored(bufs)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl Disk for RealDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list_files(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && let Some(name) = entry.file_name().to_str()
            {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        Ok(Box::new(RealRead(File::open(path)?)))
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)?;
        Ok(Box::new(RealAppend(file)))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::hard_link(from, to)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}
