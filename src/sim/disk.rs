//! A simulated disk for the spill log (`crate::spill::disk::Disk`), deterministic from a seed.
//!
//! Model: each file has the bytes reads see (the page cache) and the bytes that are durable
//! (as of its last successful `sync_data`). A created file's name is durable once its directory
//! is synced; a removal is durable at once (a simplification: the log never depends on a removal
//! being undone). [`SimDisk::crash`] keeps only what is durable, and may keep a torn prefix of
//! each file's unsynced appended bytes (the last write, cut anywhere).
//!
//! Faults, drawn from the disk's own random stream: EIO on a write (after a random part of it
//! went to the page cache), EIO on a sync — after which the unsynced bytes are "clean but lost"
//! as Linux may leave them (a later successful sync does not make them durable: fsyncgate), and
//! ENOSPC when the files would pass the disk's capacity.

use std::collections::BTreeMap;
use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::rng::SimRng;
use crate::spill::disk::{AppendFile, Disk, ReadFile};

/// Fault rates, in parts per million of operations.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskFaults {
    /// Writes that fail with EIO (after a random part of them reached the page cache).
    pub write_eio_ppm: u32,
    /// Syncs that fail with EIO (their unsynced bytes are then lost for good: fsyncgate).
    pub sync_eio_ppm: u32,
    /// Bytes all files may hold; past it writes fail with ENOSPC.
    pub capacity_bytes: u64,
}

#[derive(Debug, Clone, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// A sync failed: the bytes from here were dropped from the page cache's dirty set; no later
    /// sync makes them durable (they read back as they were written until a crash).
    lost_from: Option<usize>,
}

#[derive(Debug, Default)]
struct State {
    inodes: Vec<Inode>,
    /// Name → (inode, whether the name is durable).
    names: BTreeMap<PathBuf, (usize, bool)>,
    faults: DiskFaults,
    rng: SimRng,
    /// Operations that failed because of an injected fault, by kind.
    injected: Injected,
}

/// Counts of injected faults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Injected {
    /// Writes failed with EIO.
    pub write_eio: u64,
    /// Syncs failed with EIO.
    pub sync_eio: u64,
    /// Writes refused with ENOSPC (past `capacity_bytes`).
    pub enospc: u64,
    /// Files left with a torn prefix of their unsynced bytes by a crash.
    pub torn: u64,
}

/// The simulated disk; cheap to clone (shared state).
#[derive(Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

fn enoent(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}", path.display()))
}

impl SimDisk {
    /// An empty disk whose faults are drawn from a stream seeded by `seed`.
    pub fn new(seed: u64, faults: DiskFaults) -> SimDisk {
        let state = State {
            faults,
            rng: SimRng::new(seed ^ 0xd15c),
            ..State::default()
        };
        SimDisk {
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("sim disk lock")
    }

    /// Replaces the fault rates and capacity from now on.
    pub fn set_faults(&self, faults: DiskFaults) {
        self.lock().faults = faults;
    }

    /// The faults injected so far.
    pub fn injected(&self) -> Injected {
        self.lock().injected
    }

    /// The machine crashed: only durable names and bytes remain, plus, per file, maybe a torn
    /// prefix of its unsynced appended bytes.
    pub fn crash(&self) {
        let mut state = self.lock();
        let state = &mut *state;
        state.names.retain(|_, (_, durable)| *durable);
        for inode in &mut state.inodes {
            let appended = inode.lost_from.is_none()
                && inode.data.len() > inode.durable.len()
                && inode.data.starts_with(&inode.durable);
            let mut kept = std::mem::take(&mut inode.durable);
            if appended && state.rng.chance_ppm(300_000) {
                state.injected.torn += 1;
                let extra = inode.data.len() - kept.len();
                let torn = state.rng.below(extra as u64 + 1) as usize;
                let from = kept.len();
                kept.extend_from_slice(&inode.data[from..from + torn]);
            }
            inode.data = kept.clone();
            inode.durable = kept;
            inode.lost_from = None;
        }
    }

    /// Flips one bit of a durable byte at `offset` of `path` (damage between two runs).
    pub fn flip(&self, path: &Path, offset: usize, bit: u8) -> bool {
        let mut state = self.lock();
        let Some(&(inode, _)) = state.names.get(path) else {
            return false;
        };
        let inode = &mut state.inodes[inode];
        if offset >= inode.data.len() || offset >= inode.durable.len() {
            return false;
        }
        inode.data[offset] ^= 1 << bit;
        inode.durable[offset] ^= 1 << bit;
        true
    }

    /// (path, length) of every file, in name order.
    pub fn files(&self) -> Vec<(PathBuf, usize)> {
        let state = self.lock();
        state
            .names
            .iter()
            .map(|(path, &(inode, _))| (path.clone(), state.inodes[inode].data.len()))
            .collect()
    }

    fn used_bytes(state: &State) -> u64 {
        state.inodes.iter().map(|i| i.data.len() as u64).sum()
    }
}

struct SimRead {
    disk: SimDisk,
    inode: usize,
}

impl ReadFile for SimRead {
    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.disk.lock().inodes[self.inode].data.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let state = self.disk.lock();
        let data = &state.inodes[self.inode].data;
        let start = (offset as usize).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }
}

struct SimAppend {
    disk: SimDisk,
    inode: usize,
}

impl AppendFile for SimAppend {
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut state = self.disk.lock();
        let state = &mut *state;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let room = state
            .faults
            .capacity_bytes
            .saturating_sub(SimDisk::used_bytes(state)) as usize;
        let mut n = total.min(room);
        if n == 0 && total > 0 {
            state.injected.enospc += 1;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let fail = state.rng.chance_ppm(state.faults.write_eio_ppm);
        if fail {
            n = state.rng.below(n as u64 + 1) as usize;
        }
        let inode = &mut state.inodes[self.inode];
        let mut left = n;
        for buf in bufs {
            let take = left.min(buf.len());
            inode.data.extend_from_slice(&buf[..take]);
            left -= take;
        }
        if fail {
            state.injected.write_eio += 1;
            return Err(eio());
        }
        Ok(n)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut state = self.disk.lock();
        let inode = &mut state.inodes[self.inode];
        inode.data.resize(len as usize, 0);
        if let Some(lost) = inode.lost_from
            && lost > inode.data.len()
        {
            inode.lost_from = Some(inode.data.len());
        }
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut state = self.disk.lock();
        let state = &mut *state;
        let inode = &mut state.inodes[self.inode];
        let fail = state.rng.chance_ppm(state.faults.sync_eio_ppm);
        if fail {
            state.injected.sync_eio += 1;
            inode.lost_from.get_or_insert(inode.durable.len());
            return Err(eio());
        }
        let keep = inode
            .lost_from
            .unwrap_or(inode.data.len())
            .min(inode.data.len());
        inode.durable = inode.data[..keep].to_vec();
        Ok(())
    }
}

impl Disk for SimDisk {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn list_files(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        Ok(state
            .names
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| Some(path.file_name()?.to_str()?.to_string()))
            .collect())
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        let state = self.lock();
        let &(inode, _) = state.names.get(path).ok_or_else(|| enoent(path))?;
        Ok(Box::new(SimRead {
            disk: self.clone(),
            inode,
        }))
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let mut state = self.lock();
        if state.names.contains_key(path) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        state.inodes.push(Inode::default());
        let inode = state.inodes.len() - 1;
        state.names.insert(path.to_path_buf(), (inode, false));
        Ok(Box::new(SimAppend {
            disk: self.clone(),
            inode,
        }))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let state = &mut *state;
        if state.rng.chance_ppm(state.faults.sync_eio_ppm) {
            state.injected.sync_eio += 1;
            return Err(eio());
        }
        for (path, (_, durable)) in state.names.iter_mut() {
            if path.parent() == Some(dir) {
                *durable = true;
            }
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let (inode, _) = state.names.remove(path).ok_or_else(|| enoent(path))?;
        if !state.names.values().any(|&(other, _)| other == inode) {
            // The bytes are freed (the inode slot stays, empty).
            state.inodes[inode] = Inode::default();
        }
        Ok(())
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let &(inode, _) = state.names.get(from).ok_or_else(|| enoent(from))?;
        if state.names.contains_key(to) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        state.names.insert(to.to_path_buf(), (inode, false));
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        self.lock().names.contains_key(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faultless() -> DiskFaults {
        DiskFaults {
            capacity_bytes: u64::MAX,
            ..DiskFaults::default()
        }
    }

    #[test]
    fn a_crash_keeps_synced_bytes_and_durable_names_only() {
        let disk = SimDisk::new(1, faultless());
        let dir = Path::new("/d");
        let mut a = disk.create_new(&dir.join("a")).unwrap();
        a.write_vectored(&[IoSlice::new(b"synced")]).unwrap();
        a.sync_data().unwrap();
        disk.sync_dir(dir).unwrap();
        a.write_vectored(&[IoSlice::new(b"-not")]).unwrap();
        let mut b = disk.create_new(&dir.join("b")).unwrap();
        b.write_vectored(&[IoSlice::new(b"x")]).unwrap();
        b.sync_data().unwrap();
        disk.crash();
        assert_eq!(disk.list_files(dir).unwrap(), vec!["a".to_string()]);
        let read = disk.open_read(&dir.join("a")).unwrap();
        let len = read.len_bytes().unwrap() as usize;
        assert!(
            (6..=10).contains(&len),
            "synced bytes, maybe a torn prefix: {len}"
        );
        let mut buf = vec![0; len];
        read.read_at(&mut buf, 0).unwrap();
        assert!(b"synced-not".starts_with(&buf));
    }

    #[test]
    fn after_a_failed_sync_a_later_sync_does_not_make_the_bytes_durable() {
        let disk = SimDisk::new(2, faultless());
        let dir = Path::new("/d");
        let mut a = disk.create_new(&dir.join("a")).unwrap();
        disk.sync_dir(dir).unwrap();
        a.write_vectored(&[IoSlice::new(b"one")]).unwrap();
        a.sync_data().unwrap();
        a.write_vectored(&[IoSlice::new(b"two")]).unwrap();
        disk.set_faults(DiskFaults {
            sync_eio_ppm: 1_000_000,
            ..faultless()
        });
        assert!(a.sync_data().is_err());
        disk.set_faults(faultless());
        a.sync_data().unwrap();
        disk.crash();
        let read = disk.open_read(&dir.join("a")).unwrap();
        assert_eq!(
            read.len_bytes().unwrap(),
            3,
            "fsyncgate: `two` never became durable"
        );
    }

    #[test]
    fn writes_past_the_capacity_fail_with_enospc() {
        let disk = SimDisk::new(
            3,
            DiskFaults {
                capacity_bytes: 4,
                ..DiskFaults::default()
            },
        );
        let mut a = disk.create_new(Path::new("/d/a")).unwrap();
        assert_eq!(a.write_vectored(&[IoSlice::new(b"abcdef")]).unwrap(), 4);
        let error = a.write_vectored(&[IoSlice::new(b"ef")]).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOSPC));
        disk.remove_file(Path::new("/d/a")).unwrap();
        let mut b = disk.create_new(Path::new("/d/b")).unwrap();
        assert_eq!(b.write_vectored(&[IoSlice::new(b"ef")]).unwrap(), 2);
    }
}
