//! The write path: frames go straight to the socket (`sendmsg`, non-blocking); only what the
//! kernel does not take waits in a per-connection queue, bounded per session and per core.
//!
//! Invariant: `OutboundBudget::used` equals the sum of every connection's queued bytes on the
//! core, and never exceeds its `max`; a connection whose write would pass either bound is dropped.

use std::cell::Cell;
use std::io;
use std::os::fd::RawFd;

use prometheus_client::metrics::gauge::Gauge;

/// The per-core bound on queued outbound bytes.
pub struct OutboundBudget {
    used: Cell<usize>,
    max: usize,
    gauge: Gauge,
}

impl OutboundBudget {
    /// A budget of `max` bytes (`outbound_pending_bytes_per_core`), shown in `gauge`.
    pub fn new(max: usize, gauge: Gauge) -> OutboundBudget {
        OutboundBudget {
            used: Cell::new(0),
            max,
            gauge,
        }
    }

    fn reserve(&self, bytes: usize) -> bool {
        let used = self.used.get() + bytes;
        if used > self.max {
            return false;
        }
        self.used.set(used);
        self.gauge.set(used as i64);
        true
    }

    fn release(&self, bytes: usize) {
        debug_assert!(bytes <= self.used.get());
        self.used.set(self.used.get() - bytes);
        self.gauge.set(self.used.get() as i64);
    }
}

/// Why a write could not be queued: the peer is not reading or is gone.
#[derive(Debug)]
pub enum SendError {
    /// Queuing the bytes would pass the session's or the core's bound: drop the peer.
    Overflow,
    /// The socket failed.
    Io(io::Error),
}

/// One connection's unsent bytes.
pub struct Outbound {
    pending: Vec<u8>,
    session_bytes_max: usize,
}

impl Outbound {
    /// Nothing queued; at most `session_bytes_max` (`outbound_pending_bytes_max`) may be.
    pub fn new(session_bytes_max: usize) -> Outbound {
        Outbound {
            pending: Vec::new(),
            session_bytes_max,
        }
    }

    /// True when every byte was handed to the kernel.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Writes `parts` in order: directly when nothing is queued, the rest queued.
    pub fn send(
        &mut self,
        fd: RawFd,
        parts: &[&[u8]],
        budget: &OutboundBudget,
    ) -> Result<(), SendError> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut sent = 0;
        if self.pending.is_empty() {
            sent = send_now(fd, parts).map_err(SendError::Io)?;
        }
        if sent == total {
            return Ok(());
        }
        let rest = total - sent;
        if self.pending.len() + rest > self.session_bytes_max || !budget.reserve(rest) {
            return Err(SendError::Overflow);
        }
        let mut skip = sent;
        for part in parts {
            let from = skip.min(part.len());
            skip -= from;
            self.pending.extend_from_slice(&part[from..]);
        }
        Ok(())
    }

    /// Sends what is queued; true when the queue is empty.
    pub fn flush(&mut self, fd: RawFd, budget: &OutboundBudget) -> Result<bool, SendError> {
        if self.pending.is_empty() {
            return Ok(true);
        }
        let sent = send_now(fd, &[&self.pending]).map_err(SendError::Io)?;
        self.pending.drain(..sent);
        budget.release(sent);
        if self.pending.is_empty() {
            // Give the memory back: a slow peer must not keep its high-water mark.
            self.pending = Vec::new();
        }
        Ok(self.pending.is_empty())
    }

    /// Forgets what is queued (the connection is going away).
    pub fn discard(&mut self, budget: &OutboundBudget) {
        budget.release(self.pending.len());
        self.pending = Vec::new();
    }
}

/// Non-blocking `sendmsg` of up to 4 parts; returns bytes taken (0 when the socket is full).
pub fn send_now(fd: RawFd, parts: &[&[u8]]) -> io::Result<usize> {
    assert!(parts.len() <= 4, "at most 4 parts per write");
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; 4];
    for (slot, part) in iov.iter_mut().zip(parts) {
        slot.iov_base = part.as_ptr() as *mut libc::c_void;
        slot.iov_len = part.len();
    }
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = parts.len() as _;
    loop {
        // SAFETY: every iovec points into a live slice borrowed for this call.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(0),
            _ => return Err(err),
        }
    }
}

/// Non-blocking `recv` with `MSG_PEEK`: copies what waits in the socket into `buf` and leaves it
/// there. Ok(0) is end of stream, WouldBlock means nothing waits.
pub fn peek(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    recv_flags(fd, buf, libc::MSG_DONTWAIT | libc::MSG_PEEK)
}

/// True when bytes (or the end of the stream) wait in the socket.
pub fn has_input(fd: RawFd) -> bool {
    let mut byte = [0u8; 1];
    !matches!(peek(fd, &mut byte), Err(ref e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Whether the peer has gone for good with nothing left to read: the connection was reset
/// (`POLLERR`/`POLLHUP`), or the peer closed its side (`POLLRDHUP`) and no byte waits in the
/// socket.
pub fn peer_gone(fd: RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout: poll(2) only reports.
    if unsafe { libc::poll(&mut poll, 1, 0) } <= 0 {
        return false;
    }
    if poll.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
        return true;
    }
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes the count of unread bytes into the int given.
    let asked = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut unread) };
    poll.revents & libc::POLLRDHUP != 0 && asked == 0 && unread == 0
}

/// Drops the next `len` bytes of the socket, which must already wait there (they were peeked).
pub fn discard(fd: RawFd, mut len: usize) -> io::Result<()> {
    while len > 0 {
        // SAFETY: with MSG_TRUNC a TCP socket drops the bytes without writing to the buffer.
        let n = unsafe {
            libc::recv(
                fd,
                std::ptr::null_mut(),
                len,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        match n {
            n if n > 0 => len -= (n as usize).min(len),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    Ok(())
}

/// Drops what waits in the socket: Ok(true) while the peer may send more, Ok(false) at the end
/// of its stream.
pub fn discard_available(fd: RawFd) -> io::Result<bool> {
    // SAFETY: with MSG_TRUNC a TCP socket drops the bytes without writing to the buffer.
    let n = unsafe {
        libc::recv(
            fd,
            std::ptr::null_mut(),
            64 * 1024,
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
        )
    };
    match n {
        0 => Ok(false),
        n if n > 0 => Ok(true),
        _ => {
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(true),
                _ => Err(err),
            }
        }
    }
}

/// Non-blocking `recv` into `buf`: Ok(0) is end of stream, WouldBlock means nothing to read.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    recv_flags(fd, buf, libc::MSG_DONTWAIT)
}

fn recv_flags(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), flags) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    fn settle() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    #[test]
    fn a_peer_is_gone_after_a_reset_or_a_close_with_nothing_unread() {
        let (client, server) = pair();
        assert!(!peer_gone(server.as_raw_fd()), "open");
        drop(client);
        settle();
        assert!(peer_gone(server.as_raw_fd()), "closed, nothing unread");

        let (client, server) = pair();
        let socket = socket2::SockRef::from(&client);
        socket.set_linger(Some(std::time::Duration::ZERO)).unwrap();
        drop(client);
        settle();
        assert!(peer_gone(server.as_raw_fd()), "reset");
    }

    #[test]
    fn a_peer_that_closed_after_sending_is_not_gone_while_its_bytes_wait() {
        let (mut client, server) = pair();
        client
            .write_all(b"audio the server has not read yet")
            .unwrap();
        drop(client);
        settle();
        assert!(
            !peer_gone(server.as_raw_fd()),
            "its bytes must be read first"
        );
        assert!(has_input(server.as_raw_fd()));
    }
}
