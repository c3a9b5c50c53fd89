//! Which io driver the workers run, and why: `auto` probes io_uring once at start and falls back
//! to epoll when the kernel or a seccomp profile refuses it.

use crate::config::DriverChoice;

/// The io driver the workers run (`pusher_driver_info{driver}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// monoio on io_uring.
    IoUring,
    /// monoio on epoll (the fallback).
    Epoll,
}

impl Driver {
    /// The driver's name in logs and metrics: `io_uring` or `epoll`.
    pub fn label(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// The driver to run and a sentence saying why.
pub fn resolve(choice: DriverChoice) -> Result<(Driver, String), String> {
    match (choice, probe_io_uring()) {
        (DriverChoice::Epoll, _) => Ok((Driver::Epoll, "--driver epoll was asked for".into())),
        (DriverChoice::Uring, Ok(())) => {
            Ok((Driver::IoUring, "--driver uring was asked for".into()))
        }
        (DriverChoice::Uring, Err(why)) => Err(format!(
            "--driver uring was asked for but io_uring is unavailable: {why}"
        )),
        (DriverChoice::Auto, Ok(())) => Ok((
            Driver::IoUring,
            "auto: io_uring is available and supports every operation used".into(),
        )),
        (DriverChoice::Auto, Err(why)) => Ok((
            Driver::Epoll,
            format!("auto: falling back to epoll because io_uring is unavailable: {why}"),
        )),
    }
}

/// Creates and closes a tiny ring to see whether this process may use io_uring at all.
fn probe_io_uring() -> Result<(), String> {
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes a `struct io_uring_params` (120 bytes), which
    // `params` provides; a returned fd is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 2u32, params.as_mut_ptr()) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        let hint = match err.raw_os_error() {
            Some(libc::EPERM) => {
                " (blocked by seccomp, as in Docker's and containerd's default profiles, or by kernel.io_uring_disabled)"
            }
            Some(libc::ENOSYS) => " (the kernel has no io_uring)",
            _ => "",
        };
        return Err(format!("io_uring_setup failed: {err}{hint}"));
    }
    // SAFETY: `fd` is a descriptor this function owns.
    unsafe { libc::close(fd as i32) };
    if !monoio::utils::detect_uring() {
        return Err("the kernel's io_uring lacks an operation monoio needs".into());
    }
    Ok(())
}
