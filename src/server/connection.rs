//! One session's task, from its 101 (made by [`super::handshake`]) until it closes: readiness,
//! `recv`, `send`. The close handshake, the deadlines and the backpressure rules are the
//! sans-I/O [`crate::connection::Connection`]; the session's effects are `outputs`.
//!
//! Invariants: a connection owns a receive buffer only while it has unparsed bytes; it stops
//! reading while it has unsent bytes (the peer's own backpressure); every path out of
//! [`serve`] frees its slot, its buffers and its budget shares, and counts its close code.

use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use super::core::Core;
use super::outbound::{self, Outbound, SendError};
use super::outputs;
use super::pool::PooledBuf;
use super::task::spawn_bounded;
use crate::connection::{Connection, Host, Note, PeerGone, Refusal};
use crate::protocol;
use crate::session::Millis;
use crate::websocket::MessageKind;
use crate::websocket::close;
use crate::websocket::frame::{self, Opcode};

/// Upper bound of one connection task's memory: the future below plus monoio's task header.
/// Checked at every spawn; used by the budget.
pub const TASK_BYTES_MAX: usize = 768;
/// Reads per readiness wake-up before yielding to the core's other connections.
const READS_PER_WAKEUP_MAX: usize = 4;
/// Wait before looking again for room in the spill hand-off when ending a session.
const SPILL_RETRY: Duration = Duration::from_millis(10);
/// Wait before trying again when every receive buffer of the core is lent out.
const RECV_BUFFER_RETRY: Duration = Duration::from_millis(1);
/// How often a stalled session looks whether its peer has gone (a `poll` each).
const HANGUP_LOOK_INTERVAL_MS: u64 = 1_000;

/// Starts the session of a completed upgrade.
pub fn spawn(core: Rc<Core>, stream: TcpStream, upgraded: Upgraded) {
    static LOGGED: std::sync::Once = std::sync::Once::new();
    spawn_bounded(
        serve(core, stream, upgraded),
        TASK_BYTES_MAX,
        "connection",
        &LOGGED,
    );
}

/// The whole life of a session: waits for readiness or a signal (deadline, drain, egress
/// reply, spill progress) and feeds the sans-I/O [`Connection`].
async fn serve(core: Rc<Core>, stream: TcpStream, upgraded: Upgraded) {
    let fd = stream.as_raw_fd();
    let mut conn = Connection::new(core.connection_limits, core.now_ms());
    let mut io = SessionIo::new(Rc::clone(&core), fd, upgraded);
    while !conn.is_done() {
        if io.waits_for_spill_room(&conn) {
            // Woken by `Core::wake_spill_waiters` when the spill log has room (queued once).
            core.wait_for_spill_room(io.key);
        }
        core.slots.arm(io.key, io.next_deadline(&conn));
        // Two selects rather than one with both readiness futures: the branches share their
        // storage in the task, which keeps an idle session's task small. A session waiting for
        // the spill log (hand-off full, or acknowledging its close) is not read: backpressure.
        if io.outbound.is_empty() && !conn.wants_input() {
            core.slots.signalled(io.key).await;
            io.on_signal(&mut conn);
        } else if io.outbound.is_empty() {
            monoio::select! {
                ready = stream.readable(false) => match ready {
                    Ok(()) => io.on_readable(&mut conn).await,
                    Err(_) => conn.on_end_of_stream(),
                },
                _ = core.slots.signalled(io.key) => io.on_signal(&mut conn),
            }
        } else {
            monoio::select! {
                ready = stream.writable(false) => match ready {
                    Ok(()) => io.flush(&mut conn),
                    Err(_) => conn.on_end_of_stream(),
                },
                _ = core.slots.signalled(io.key) => io.on_signal(&mut conn),
            }
        }
    }
    Box::pin(io.finish(&stream, conn.close_code())).await;
}

/// A completed upgrade: the session's slot.
pub struct Upgraded {
    /// The session's slot key on this core.
    pub key: usize,
    /// The test-only echo route (no pusher session).
    pub echo: bool,
}

/// The session's side of the socket: its slot, receive buffer and unsent bytes. It is the
/// [`Host`] of the sans-I/O connection: it hands messages to the session (`outputs`), and
/// frames to the peer.
struct SessionIo {
    core: Rc<Core>,
    fd: RawFd,
    key: usize,
    echo: bool,
    recv: Option<PooledBuf>,
    filled: usize,
    outbound: Outbound,
    /// When a stalled session last looked whether its peer has gone.
    hangup_looked_at: Millis,
}

impl SessionIo {
    fn new(core: Rc<Core>, fd: RawFd, upgraded: Upgraded) -> SessionIo {
        SessionIo {
            fd,
            key: upgraded.key,
            echo: upgraded.echo,
            recv: None,
            filled: 0,
            outbound: Outbound::new(core.shared.config.outbound_pending_bytes_max),
            hangup_looked_at: Millis(0),
            core,
        }
    }

    /// Whether the session is stalled on the spill log (the echo route writes nothing there):
    /// it is queued in `Core::spill_waiters` and woken by room, not by the clock.
    fn waits_for_spill_room(&self, conn: &Connection) -> bool {
        conn.is_stalled() && !self.echo
    }

    /// The earliest of the connection's deadline and, while the session takes messages, the
    /// session's own timer.
    fn next_deadline(&self, conn: &Connection) -> Millis {
        let now = self.core.now_ms();
        if self.waits_for_spill_room(conn) {
            // Woken by the core when the spill log has room (the serve loop queued it), not by
            // the clock; the clock only for the look whether the peer has gone.
            let look = Millis(self.hangup_looked_at.0 + HANGUP_LOOK_INTERVAL_MS);
            return look.max(now);
        }
        let own = conn.next_deadline(now);
        if !conn.session_alive() {
            return own;
        }
        let session = self.core.slots.with(self.key, |slot| {
            slot.session.as_ref().and_then(|s| s.next_deadline())
        });
        session.map_or(own, |at| own.min(at))
    }

    /// Reads what the socket holds (at most a few times, for fairness) and feeds it.
    async fn on_readable(&mut self, conn: &mut Connection) {
        if conn.discards_input() {
            // After a framing violation: drop the input undecoded until the peer closes.
            if !matches!(outbound::discard_available(self.fd), Ok(true)) {
                conn.on_end_of_stream();
            }
            return;
        }
        let mut buf = match self.recv.take() {
            Some(buf) => buf,
            None => match self.core.recv_pool.take() {
                Some(buf) => buf,
                None => {
                    // Every buffer is lent: take back the one an incomplete message has held
                    // the longest (`parked`), then look again shortly.
                    self.evict_a_parked_buffer();
                    Box::pin(monoio::time::sleep(RECV_BUFFER_RETRY)).await;
                    return;
                }
            },
        };
        for _ in 0..READS_PER_WAKEUP_MAX {
            let now = self.core.now_ms();
            if self.filled == buf.len() {
                conn.on_buffer_full(now, self);
                break;
            }
            match outbound::recv(self.fd, &mut buf[self.filled..]) {
                Ok(0) => {
                    conn.on_end_of_stream();
                    break;
                }
                Ok(n) => {
                    self.filled = conn.on_bytes(&mut buf, self.filled + n, now, self);
                    if conn.is_done()
                        || !self.outbound.is_empty()
                        || !conn.wants_input()
                        || conn.discards_input()
                    {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    conn.on_end_of_stream();
                    break;
                }
            }
        }
        if self.filled > 0 {
            self.recv = Some(buf);
        }
        self.track_parked(conn);
        self.half_close_when_flushed(conn);
    }

    /// Keeps the core's list of buffers held by incomplete messages up to date.
    fn track_parked(&mut self, conn: &Connection) {
        let generation = self.core.slots.with(self.key, |slot| slot.generation());
        match (&self.recv, conn.holds_partial_message_since()) {
            (Some(_), Some(since)) => self.core.parked.park(self.key, generation, since),
            _ => self.core.parked.unpark(self.key, generation),
        }
    }

    /// Tells the connection parked the longest to give its buffer back (it decides when it
    /// handles the signal: [`Connection::on_evicted`]).
    fn evict_a_parked_buffer(&self) {
        let now = self.core.now_ms();
        while let Some((key, generation)) = self.core.parked.evict_oldest(now) {
            if self.core.slots.evict(key, generation) {
                return;
            }
        }
    }

    /// A deadline came due, the drain's grace period ended, egress answered, or the spill log
    /// may have room again.
    fn on_signal(&mut self, conn: &mut Connection) {
        let now = self.core.now_ms();
        if self.core.closing() {
            conn.go_away("server is shutting down", now, self);
        }
        if self.core.slots.take_evicted(self.key) && conn.on_evicted(now, self) {
            // Counted here, where it takes effect: a connection that completed its message
            // (or stalled) since it was chosen keeps its buffer, and the next one is taken.
            self.core.shared.metrics.recv_buffers_evicted.inc();
        }
        if conn.input_is_dead() {
            self.recv = None;
            self.filled = 0;
        }
        if conn.is_stalled() && self.filled == 0 && self.peer_gone_while_stalled(now) {
            // Nothing read is left to handle: the slot need not wait for the stall to end.
            conn.on_end_of_stream();
        }
        if conn.on_tick(now, self) {
            // The stall ended: decode what the buffer still holds (if nothing, the room ran
            // out right after the last complete message; reading simply resumes).
            if let Some(mut buf) = self.recv.take() {
                self.filled = conn.on_resume(&mut buf, self.filled, now, self);
                if self.filled > 0 {
                    self.recv = Some(buf);
                }
            }
        }
        self.send_egress_replies(conn);
        if conn.session_alive() {
            let replies = outputs::on_deadline(&self.core, self.key, now);
            if self.send_replies(conn.may_send(), replies).is_err() {
                conn.on_send_failed();
            }
        }
        if conn.input_is_dead() {
            self.recv = None;
            self.filled = 0;
        }
        self.track_parked(conn);
        self.half_close_when_flushed(conn);
    }

    /// While the session is stalled (not read), whether its peer has gone: reset, or closed
    /// with nothing left unread in the socket. Looked at once per [`HANGUP_LOOK_INTERVAL_MS`].
    fn peer_gone_while_stalled(&mut self, now: Millis) -> bool {
        if now.0 < self.hangup_looked_at.0 + HANGUP_LOOK_INTERVAL_MS {
            return false;
        }
        self.hangup_looked_at = now;
        outbound::peer_gone(self.fd)
    }

    /// Sends the 201s egress answered for this session (after pusher's Close they are
    /// dropped, counted).
    fn send_egress_replies(&mut self, conn: &mut Connection) {
        if self.echo {
            return;
        }
        for reply in outputs::take_replies(&self.core, self.key) {
            if !conn.may_send() {
                self.core
                    .shared
                    .egress_metrics
                    .process_replies_dropped
                    .inc();
                continue;
            }
            conn.send_frame(Opcode::Binary, &reply, self);
            self.core.shared.metrics.results_sent.inc();
        }
    }

    /// Sends the 201 frames one session step produced, if pusher may still send.
    fn send_replies(&mut self, may_send: bool, replies: outputs::Replies) -> Result<(), ()> {
        let scratch = self.core.replies.borrow();
        let bytes = &scratch[replies.range];
        if bytes.is_empty() {
            return Ok(());
        }
        if !may_send {
            self.core
                .shared
                .egress_metrics
                .process_replies_dropped
                .inc();
            return Ok(());
        }
        let result = self.outbound.send(self.fd, &[bytes], &self.core.outbound);
        drop(scratch);
        self.sent(result)
    }

    fn sent(&self, result: Result<(), SendError>) -> Result<(), ()> {
        match result {
            Ok(()) => Ok(()),
            Err(SendError::Overflow) => {
                self.core.shared.metrics.peers_dropped_slow.inc();
                Err(())
            }
            Err(SendError::Io(err)) => {
                tracing::debug!("write failed, peer gone: {err}");
                Err(())
            }
        }
    }

    fn flush(&mut self, conn: &mut Connection) {
        let result = self
            .outbound
            .flush(self.fd, &self.core.outbound)
            .map(|_| ());
        if self.sent(result).is_err() {
            conn.on_send_failed();
        }
        self.half_close_when_flushed(conn);
    }

    fn half_close_when_flushed(&self, conn: &Connection) {
        if self.outbound.is_empty() && conn.wants_half_close() {
            // SAFETY: shutdown on our own descriptor; an error (peer gone) changes nothing.
            unsafe { libc::shutdown(self.fd, libc::SHUT_WR) };
        }
    }

    /// Ends the session: flushes what is queued (bounded by the close timeout), releases the
    /// slot and every budget share, counts the close code.
    async fn finish(mut self, stream: &TcpStream, close_code: u16) {
        let generation = self.core.slots.with(self.key, |slot| slot.generation());
        self.core.parked.unpark(self.key, generation);
        let limit =
            Instant::now() + Duration::from_millis(self.core.shared.config.close_timeout_ms);
        while !self.outbound.is_empty() {
            match monoio::time::timeout_at(limit.into(), stream.writable(false)).await {
                Ok(Ok(())) => {
                    if self.outbound.flush(self.fd, &self.core.outbound).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        self.outbound.discard(&self.core.outbound);
        // SAFETY: shutdown on our own descriptor; errors (peer gone) are irrelevant.
        unsafe { libc::shutdown(self.fd, libc::SHUT_WR) };
        self.recv = None;
        // A session that ends without a close handshake still closes its batch; the record
        // waits for room in the hand-off like any other (bounded by the writer's progress).
        while !outputs::end_session(&self.core, self.key, self.core.now_ms()) {
            monoio::time::sleep(SPILL_RETRY).await;
        }
        close_slot(&self.core, self.key, close_code);
    }
}

impl Host for SessionIo {
    fn ready(&mut self) -> bool {
        self.echo || outputs::spill_ready(&self.core, self.key)
    }

    fn message(
        &mut self,
        kind: MessageKind,
        payload: &[u8],
        now: Millis,
        may_send: bool,
    ) -> Result<(), Refusal> {
        if self.echo {
            if may_send {
                let mut header = [0u8; frame::HEADER_BYTES_MAX];
                let len = frame::encode_header(kind.opcode(), payload.len(), &mut header);
                let result =
                    self.outbound
                        .send(self.fd, &[&header[..len], payload], &self.core.outbound);
                return self.sent(result).map_err(|()| Refusal::PeerGone);
            }
            return Ok(());
        }
        if kind == MessageKind::Text {
            return Err(Refusal::Close(
                close::UNSUPPORTED_DATA,
                "text messages are not accepted",
            ));
        }
        match protocol::decode(payload) {
            Ok(frame) => {
                let replies = outputs::on_frame(&self.core, self.key, frame, payload.len(), now);
                self.send_replies(may_send, replies)
                    .map_err(|()| Refusal::PeerGone)
            }
            Err(err) => Err(Refusal::Close(err.close_code(), err.reason())),
        }
    }

    fn end_session(&mut self, now: Millis) -> bool {
        outputs::end_session(&self.core, self.key, now)
    }

    fn durable(&mut self) -> bool {
        outputs::spill_durable(&self.core, self.key)
    }

    fn send(&mut self, parts: &[&[u8]]) -> Result<(), PeerGone> {
        let result = self.outbound.send(self.fd, parts, &self.core.outbound);
        self.sent(result).map_err(|()| PeerGone)
    }

    fn note(&mut self, note: Note) {
        let metrics = &self.core.spill.shared.metrics;
        match note {
            Note::Stalled { ms } => {
                metrics.backpressure_seconds.inc_by(ms as f64 / 1000.0);
            }
            Note::AckTimedOut => {
                tracing::warn!(
                    "audio not durable within the close timeout; dropping the connection without a Close"
                );
                metrics.close_ack_timeouts.inc();
            }
        }
    }
}

/// Frees the slot of an ended session and its rings, and counts the close.
pub fn close_slot(core: &Core, key: usize, code: u16) {
    let ended = outputs::end_session(core, key, core.now_ms());
    debug_assert!(ended, "the session ended before its slot is freed");
    let slot = core.slots.remove(key);
    outputs::release(core, slot);
    core.session_closed(code);
}
