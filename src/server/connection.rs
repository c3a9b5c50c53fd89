//! One session's task, from its 101 (made by [`super::handshake`]) until it closes. All parsing
//! is delegated to the sans-I/O modules; this file only waits for readiness, moves bytes and
//! keeps the deadlines.
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
use crate::protocol;
use crate::session::Millis;
use crate::websocket::close;
use crate::websocket::frame::{self, Opcode};
use crate::websocket::{Decoder, Event, MessageKind};

/// Upper bound of one connection task's memory: the future below plus monoio's task header.
/// Checked at every spawn; used by the budget.
pub const TASK_BYTES_MAX: usize = 768;
/// Reads per readiness wake-up before yielding to the core's other connections.
const READS_PER_WAKEUP_MAX: usize = 4;
/// Wait before looking again for room in the spill hand-off when ending a session.
const SPILL_RETRY: Duration = Duration::from_millis(10);
/// Wait before trying again when every receive buffer of the core is lent out.
const RECV_BUFFER_RETRY: Duration = Duration::from_millis(1);
/// A close frame: header, code and at most 123 bytes of reason.
const CLOSE_FRAME_BYTES_MAX: usize = frame::HEADER_BYTES_MAX + 125;

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

/// The whole life of a session.
async fn serve(core: Rc<Core>, stream: TcpStream, upgraded: Upgraded) {
    let fd = stream.as_raw_fd();
    let mut conn = Connection::new(Rc::clone(&core), fd, upgraded);
    while conn.phase != Phase::Done {
        core.slots.arm(conn.key, conn.next_deadline());
        // Two selects rather than one with both readiness futures: the branches share their
        // storage in the task, which keeps an idle session's task small. A session waiting for
        // the spill log (hand-off full, or acknowledging its close) is not read: backpressure.
        if conn.outbound.is_empty() && conn.waits_for_spill() {
            core.slots.signalled(conn.key).await;
            conn.on_signal();
        } else if conn.outbound.is_empty() {
            monoio::select! {
                ready = stream.readable(false) => match ready {
                    Ok(()) => conn.on_readable().await,
                    Err(_) => conn.phase = Phase::Done,
                },
                _ = core.slots.signalled(conn.key) => conn.on_signal(),
            }
        } else {
            monoio::select! {
                ready = stream.writable(false) => match ready {
                    Ok(()) => conn.flush(),
                    Err(_) => conn.phase = Phase::Done,
                },
                _ = core.slots.signalled(conn.key) => conn.on_signal(),
            }
        }
    }
    Box::pin(conn.finish(&stream)).await;
}

/// A completed upgrade: the session's slot.
pub struct Upgraded {
    pub key: usize,
    /// The test-only echo route (no pusher session).
    pub echo: bool,
}

/// Where a session is in its close handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// The session has ended (its last batch is closed) and pusher waits, not reading, until
    /// every audio record the session wrote is durable: the Close (`code`; `None` = empty) is the
    /// acknowledgement. After `deadline` the connection is dropped without a Close (the audio
    /// stays queued in the log; the client retries). `peer_closed`: the Close answers the peer's;
    /// `discard`: a protocol violation, nothing more can be decoded.
    Acking {
        deadline: Millis,
        code: Option<u16>,
        reason: &'static str,
        peer_closed: bool,
        discard: bool,
    },
    /// pusher sent its Close and waits for the peer's until `deadline`. After a protocol
    /// violation the stream cannot be decoded any more (`discard`): pusher half-closes and
    /// reads and drops bytes until the peer closes, so its Close is not lost to a reset.
    Closing {
        deadline: Millis,
        discard: bool,
    },
    Done,
}

struct Connection {
    core: Rc<Core>,
    fd: RawFd,
    key: usize,
    echo: bool,
    decoder: Decoder,
    recv: Option<PooledBuf>,
    filled: usize,
    outbound: Outbound,
    phase: Phase,
    last_activity: Millis,
    close_code: u16,
    /// Since when the session waits for room in the spill hand-off (backpressure).
    stalled_since: Option<Millis>,
}

impl Connection {
    /// The session state right after the 101 (bytes that followed the request head are still in
    /// the socket).
    fn new(core: Rc<Core>, fd: RawFd, upgraded: Upgraded) -> Connection {
        Connection {
            decoder: Decoder::new(core.limits),
            fd,
            key: upgraded.key,
            echo: upgraded.echo,
            recv: None,
            filled: 0,
            outbound: Outbound::new(core.shared.config.outbound_pending_bytes_max),
            phase: Phase::Open,
            last_activity: core.now_ms(),
            close_code: 1006,
            stalled_since: None,
            core,
        }
    }

    /// The earliest of: idle or close-handshake deadline, and the session's own timer.
    fn next_deadline(&self) -> Millis {
        let config = &self.core.shared.config;
        let now = self.core.now_ms();
        let own = match self.phase {
            // Waiting for the spill log: look again at the next tick.
            _ if self.waits_for_spill() => now,
            Phase::Open => Millis(self.last_activity.0 + config.idle_timeout_ms),
            Phase::Acking { deadline, .. } | Phase::Closing { deadline, .. } => deadline,
            Phase::Done => self.last_activity,
        };
        let session = self.core.slots.with(self.key, |slot| {
            slot.session.as_ref().and_then(|s| s.next_deadline())
        });
        session.map_or(own, |at| own.min(at))
    }

    /// True while the session must not be read: its messages wait for hand-off room, or its
    /// close waits for durability.
    fn waits_for_spill(&self) -> bool {
        match self.phase {
            Phase::Open => self.stalled_since.is_some(),
            Phase::Acking { .. } => true,
            // A stall no longer matters once the session has ended: the peer's Close is read.
            Phase::Closing { .. } | Phase::Done => false,
        }
    }

    async fn on_readable(&mut self) {
        if self.recv.is_none() {
            match self.core.recv_pool.take() {
                Some(buf) => self.recv = Some(buf),
                None => {
                    Box::pin(monoio::time::sleep(RECV_BUFFER_RETRY)).await;
                    return;
                }
            }
        }
        for _ in 0..READS_PER_WAKEUP_MAX {
            if matches!(self.phase, Phase::Closing { discard: true, .. }) {
                self.filled = 0;
            }
            let buf = self.recv.as_mut().expect("taken above");
            if self.filled == buf.len() {
                // The decoder's buffer size admits every message within the limits.
                self.fail(close::MESSAGE_TOO_BIG, "message too big");
                break;
            }
            match outbound::recv(self.fd, &mut buf[self.filled..]) {
                Ok(0) => {
                    self.phase = Phase::Done;
                    break;
                }
                Ok(_) if matches!(self.phase, Phase::Closing { discard: true, .. }) => {}
                Ok(n) => {
                    self.filled += n;
                    self.last_activity = self.core.now_ms();
                    self.process();
                    if self.phase == Phase::Done
                        || !self.outbound.is_empty()
                        || self.waits_for_spill()
                    {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.phase = Phase::Done;
                    break;
                }
            }
        }
        if self.filled == 0 {
            self.recv = None;
        }
    }

    /// Decodes every complete frame in the receive buffer, then compacts it.
    fn process(&mut self) {
        let mut buf = self.recv.take().expect("process runs with a buffer");
        while matches!(
            self.phase,
            Phase::Open | Phase::Closing { discard: false, .. }
        ) {
            if self.phase == Phase::Open && !self.spill_ready() {
                break;
            }
            match self.decoder.decode(&mut buf, self.filled) {
                Ok(Some(event)) => self.on_event(event, &buf),
                Ok(None) => break,
                Err(violation) => self.fail(violation.code, violation.reason),
            }
        }
        self.filled = match self.phase {
            Phase::Closing { discard: true, .. } | Phase::Done => 0,
            _ => self.decoder.compact(&mut buf, self.filled),
        };
        self.recv = Some(buf);
    }

    /// Whether the next message may be dispatched now; if not, the session stalls (is not
    /// read) until the spill hand-off has room, and the time is counted.
    fn spill_ready(&mut self) -> bool {
        let ready = self.echo || outputs::spill_ready(&self.core, self.key);
        let now = self.core.now_ms();
        match (ready, self.stalled_since) {
            (false, None) => self.stalled_since = Some(now),
            (true, Some(since)) => {
                self.stalled_since = None;
                let seconds = (now.0 - since.0) as f64 / 1000.0;
                self.core
                    .spill
                    .shared
                    .metrics
                    .backpressure_seconds
                    .inc_by(seconds);
            }
            _ => {}
        }
        ready
    }

    /// A violation of the WebSocket protocol: close with `code`, half-close, stop decoding.
    fn fail(&mut self, code: u16, reason: &'static str) {
        match self.phase {
            Phase::Open => {
                self.start_close(code, reason);
                if let Phase::Acking { discard, .. } = &mut self.phase {
                    *discard = true;
                }
            }
            Phase::Acking {
                ref mut discard, ..
            } => *discard = true,
            Phase::Closing { .. } | Phase::Done => {}
        }
        if let Phase::Closing { deadline, .. } = self.phase {
            self.phase = Phase::Closing {
                deadline,
                discard: true,
            };
            self.half_close_when_flushed();
        }
    }

    fn half_close_when_flushed(&self) {
        if self.outbound.is_empty() && matches!(self.phase, Phase::Closing { discard: true, .. }) {
            // SAFETY: shutdown on our own descriptor; an error (peer gone) changes nothing.
            unsafe { libc::shutdown(self.fd, libc::SHUT_WR) };
        }
    }

    fn on_event(&mut self, event: Event, buf: &[u8]) {
        match event {
            Event::Message { kind, payload } if self.phase == Phase::Open => {
                self.on_message(kind, &buf[payload]);
            }
            Event::Message { .. } => {}
            Event::Ping { payload } => {
                if self.phase == Phase::Open {
                    self.send_frame(Opcode::Pong, &buf[payload]);
                }
            }
            Event::Pong => {}
            Event::Close { code, reason: _ } => self.on_peer_close(code),
        }
    }

    fn on_message(&mut self, kind: MessageKind, message: &[u8]) {
        if self.echo {
            let opcode = match kind {
                MessageKind::Text => Opcode::Text,
                MessageKind::Binary => Opcode::Binary,
            };
            self.send_frame(opcode, message);
            return;
        }
        if kind == MessageKind::Text {
            self.start_close(close::UNSUPPORTED_DATA, "text messages are not accepted");
            return;
        }
        match protocol::decode(message) {
            Ok(frame) => {
                let now = self.core.now_ms();
                let replies = outputs::on_frame(&self.core, self.key, frame, message.len(), now);
                self.send_replies(replies);
            }
            Err(err) => self.start_close(err.close_code(), err.reason()),
        }
    }

    fn send_replies(&mut self, replies: outputs::Replies) {
        let scratch = self.core.replies.borrow();
        let bytes = &scratch[replies.range];
        if !bytes.is_empty() {
            let result = self.outbound.send(self.fd, &[bytes], &self.core.outbound);
            drop(scratch);
            self.on_send_result(result);
        }
    }

    fn on_peer_close(&mut self, code: Option<u16>) {
        match self.phase {
            Phase::Open => {
                self.close_code = code.unwrap_or(1005);
                self.begin_ack(code, "", true);
            }
            Phase::Acking { .. } => {}
            Phase::Closing { .. } | Phase::Done => self.phase = Phase::Done,
        }
    }

    /// Starts pusher's side of the close handshake with `code`.
    fn start_close(&mut self, code: u16, reason: &'static str) {
        if self.phase != Phase::Open {
            return;
        }
        self.close_code = code;
        self.begin_ack(Some(code), reason, false);
    }

    /// Ends the session, then sends the Close once its audio is durable (see [`Phase::Acking`]).
    fn begin_ack(&mut self, code: Option<u16>, reason: &'static str, peer_closed: bool) {
        let deadline = Millis(self.core.now_ms().0 + self.core.shared.config.close_timeout_ms);
        self.phase = Phase::Acking {
            deadline,
            code,
            reason,
            peer_closed,
            discard: false,
        };
        self.try_ack();
    }

    fn try_ack(&mut self) {
        let Phase::Acking {
            deadline,
            code,
            reason,
            peer_closed,
            discard,
        } = self.phase
        else {
            return;
        };
        let now = self.core.now_ms();
        let ended = outputs::end_session(&self.core, self.key, now);
        if !(ended && outputs::spill_durable(&self.core, self.key)) {
            if now >= deadline {
                tracing::warn!(
                    code = self.close_code,
                    "audio not durable within the close timeout; dropping the connection without a Close"
                );
                self.core.spill.shared.metrics.close_ack_timeouts.inc();
                self.phase = Phase::Done;
            }
            return;
        }
        let mut out = [0u8; CLOSE_FRAME_BYTES_MAX];
        let len = match code {
            Some(code) => frame::encode_close(code, reason, &mut out),
            None => frame::encode_header(Opcode::Close, 0, &mut out),
        };
        self.phase = if peer_closed {
            Phase::Done
        } else {
            Phase::Closing {
                deadline: Millis(now.0 + self.core.shared.config.close_timeout_ms),
                discard,
            }
        };
        let result = self
            .outbound
            .send(self.fd, &[&out[..len]], &self.core.outbound);
        self.on_send_result(result);
        self.half_close_when_flushed();
    }

    fn send_frame(&mut self, opcode: Opcode, payload: &[u8]) {
        let mut header = [0u8; frame::HEADER_BYTES_MAX];
        let len = frame::encode_header(opcode, payload.len(), &mut header);
        let result = self
            .outbound
            .send(self.fd, &[&header[..len], payload], &self.core.outbound);
        self.on_send_result(result);
    }

    fn on_send_result(&mut self, result: Result<(), SendError>) {
        match result {
            Ok(()) => {}
            Err(SendError::Overflow) => {
                self.core.shared.metrics.peers_dropped_slow.inc();
                self.phase = Phase::Done;
            }
            Err(SendError::Io(err)) => {
                tracing::debug!("write failed, peer gone: {err}");
                self.phase = Phase::Done;
            }
        }
    }

    fn flush(&mut self) {
        let result = self
            .outbound
            .flush(self.fd, &self.core.outbound)
            .map(|_| ());
        self.on_send_result(result);
        self.half_close_when_flushed();
    }

    /// A deadline came due, the drain's grace period ended, or a spill wait should look again.
    fn on_signal(&mut self) {
        if self.core.closing() {
            self.start_close(close::GOING_AWAY, "server is shutting down");
        }
        if self.stalled_since.is_some() {
            if self.recv.is_some() {
                self.process();
                if self.filled == 0 {
                    self.recv = None;
                }
            } else {
                // Stalled with nothing buffered: the room ran out right after the last complete
                // message, and the empty buffer went back to the pool. Look at the room again,
                // or the session would not be read until its idle timeout.
                self.spill_ready();
            }
        }
        self.send_egress_replies();
        self.try_ack();
        self.on_timer();
    }

    /// Sends the 201s egress answered for this session.
    fn send_egress_replies(&mut self) {
        if self.echo {
            return;
        }
        let replies = outputs::take_replies(&self.core, self.key);
        for reply in replies {
            if self.phase != Phase::Open {
                self.core
                    .shared
                    .egress_metrics
                    .process_replies_dropped
                    .inc();
                continue;
            }
            self.send_frame(Opcode::Binary, &reply);
            self.core.shared.metrics.results_sent.inc();
        }
    }

    fn on_timer(&mut self) {
        let now = self.core.now_ms();
        let config = &self.core.shared.config;
        match self.phase {
            Phase::Open if now.0 >= self.last_activity.0 + config.idle_timeout_ms => {
                self.start_close(close::GOING_AWAY, "idle timeout");
            }
            Phase::Closing { deadline, .. } if now >= deadline => self.phase = Phase::Done,
            _ => {}
        }
        if self.phase == Phase::Open {
            let replies = outputs::on_deadline(&self.core, self.key, now);
            self.send_replies(replies);
        }
    }

    /// Ends the session: flushes what is queued (bounded by the close timeout), releases the
    /// slot and every budget share, counts the close code.
    async fn finish(mut self, stream: &TcpStream) {
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
        close_slot(&self.core, self.key, self.close_code);
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
