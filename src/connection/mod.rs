//! One WebSocket connection after its upgrade, sans I/O (the way quinn-proto holds a
//! connection): it owns the frame decoder, the close phases, the close / acknowledge / discard
//! rules and the idle and close deadlines. The I/O shell (`server::connection`) feeds it what
//! happened — bytes arrived, a deadline passed, the spill log has room, the drain's grace is
//! over, the peer is gone — with the time, and it answers through [`Host`] (messages to the
//! session, bytes to the peer) and through its state: whether to read, whether to half-close,
//! when to wake it next, whether it is done.
//!
//! ```text
//!            peer Close / violation                durable: send Close
//!   Open ─────────────────────────────► Acking ───────────────────────► Closing ──► Done
//!    │  going away (drain, idle):          │  (peer closed first) ───────────────────► ▲
//!    │  send Close 1001, keep reading      │  close timeout ─────────────────────────► │
//!    └──────────────────────────► Leaving ─┴── peer Close, close timeout, end of stream ┘
//! ```
//!
//! Rules (docs/0005-durability-policy.md):
//! - The Close pusher sends after the peer's Close, or after a violation, is the
//!   acknowledgement: it goes out only once every audio record of the session is durable
//!   (`Acking`); meanwhile the connection is not read.
//! - When pusher itself ends a session (the drain's grace is over, the peer was idle), it sends
//!   its Close at once and keeps handling the peer's messages until the peer's Close
//!   (`Leaving`): a message the client sent before it saw pusher's Close is never dropped.
//! - Time pusher spends not reading a session because of its own backpressure (a full spill
//!   hand-off or disk budget: `stalled`) never counts against the peer: the idle and close
//!   deadlines do not run while stalled.
//!
//! Invariants: every phase change goes through `Connection::enter`, which asserts that the
//! transition is one of the diagram's; once `Done`, nothing changes any more.

#[cfg(test)]
mod tests;

use crate::session::Millis;
use crate::websocket::close;
use crate::websocket::frame::{self, Opcode};
use crate::websocket::{Decoder, DecoderLimits, Event, MessageKind};

/// A receive buffer held by an incomplete message is taken back (the connection closes 1008)
/// only once it has waited this long for the rest of its message, counted from when pusher
/// read its first bytes (time pusher did not read the connection is never counted): far
/// longer than an honest frame takes to arrive.
pub const EVICT_AGE_MS_MIN: u64 = 500;

/// A close frame: header, code and at most 123 bytes of reason.
const CLOSE_FRAME_BYTES_MAX: usize = frame::HEADER_BYTES_MAX + 125;
use crate::websocket::close::{CLOSED_ABNORMALLY, NO_STATUS_RECEIVED};

/// Why the session did not take a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The message breaks the protocol: close with this code and one-line reason.
    Close(u16, &'static str),
    /// Answering it failed: the peer is too slow or gone.
    PeerGone,
}

/// What the connection needs from the rest of the server: the session's effects and the
/// socket's output. Implemented by the I/O shell, and by a simulation in the tests.
pub trait Host {
    /// Whether the session may be fed one more message now (room for its largest effect in
    /// the spill hand-off). While false, the connection stops decoding (backpressure).
    fn ready(&mut self) -> bool;
    /// A complete data message for the session; `Err` closes with its code. `may_send`: pusher
    /// may still answer it (false after pusher's own Close: answers are dropped, counted).
    fn message(
        &mut self,
        kind: MessageKind,
        payload: &[u8],
        now: Millis,
        may_send: bool,
    ) -> Result<(), Refusal>;
    /// Ends the session (its last batch closed): false while the spill hand-off has no room for
    /// that yet. Called again until it returns true; true once is true for ever.
    fn end_session(&mut self, now: Millis) -> bool;
    /// Every audio record the session wrote is durable.
    fn durable(&mut self) -> bool;
    /// Queues one frame (in parts) for the peer; `Err` when the peer must be dropped (too slow,
    /// gone).
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), PeerGone>;
    /// Something worth counting happened.
    fn note(&mut self, note: Note);
}

/// The peer cannot be written to any more (too slow, or gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerGone;

/// What the connection reports for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// `ms` more of a stall (pusher not reading because of its own backpressure): reported at
    /// every tick while it lasts and when it ends.
    Stalled {
        /// Milliseconds of the stall not reported before.
        ms: u64,
    },
    /// The session's audio was not durable within the close timeout: dropped without a Close.
    AckTimedOut,
}

/// The connection's timeouts, from the config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The WebSocket decoder's limits (`max_message_bytes`).
    pub decoder: DecoderLimits,
    /// No message and no ping for this long → pusher goes away (1001).
    pub idle_timeout_ms: u64,
    /// Once a message has begun (part of it is held in a receive buffer), how long the peer
    /// has to complete it → else close 1008.
    pub message_timeout_ms: u64,
    /// How long pusher waits for the peer's Close, and for durability before acknowledging.
    pub close_timeout_ms: u64,
}

/// Where the connection is in its close handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading and handling messages; no Close sent or received yet.
    Open,
    /// The session has ended (its last batch is closed) and pusher waits, not reading, until
    /// every audio record the session wrote is durable: then it sends its Close (`code`; `None`
    /// = empty), the acknowledgement. Past `deadline` the connection is dropped without a Close
    /// (the audio stays queued in the log; the client retries).
    Acking {
        /// When the wait for durability gives up (`close_timeout_ms` after it began).
        deadline: Millis,
        /// The Close's code; `None`: an empty Close (the peer's had none).
        code: Option<u16>,
        /// The Close's reason (empty when echoing the peer's Close).
        reason: &'static str,
        /// The Close answers the peer's: nothing more to read after it.
        peer_closed: bool,
        /// A framing violation: nothing more can be decoded.
        undecodable: bool,
    },
    /// pusher sent its Close (going away) and goes on handling messages until the peer's
    /// Close, or `deadline`.
    Leaving {
        /// When pusher stops waiting for the peer's Close (`close_timeout_ms` after its own).
        deadline: Millis,
    },
    /// pusher sent its Close (the acknowledgement) and waits for the peer's until `deadline`,
    /// ignoring messages. After a framing violation (`undecodable`) the input is dropped
    /// undecoded and the socket half-closed, so the Close is not lost to a reset.
    Closing {
        /// When pusher stops waiting for the peer's Close.
        deadline: Millis,
        /// A framing violation: the input is dropped undecoded.
        undecodable: bool,
    },
    /// The connection is over: the shell closes the socket and frees the slot.
    Done,
}

/// A session's connection.
#[derive(Debug, Clone)]
pub struct Connection {
    decoder: Decoder,
    limits: Limits,
    phase: Phase,
    /// When the peer was last heard from (bytes arrived), or a stall ended.
    last_heard: Millis,
    /// Since when the session waits for room in the spill hand-off (not read).
    stalled_since: Option<Millis>,
    /// How much of the current stall was reported ([`Note::Stalled`]), up to when.
    stall_reported_to: Millis,
    /// Since when an incomplete message is held (bytes kept after decoding).
    partial_since: Option<Millis>,
    /// The code counted when the connection ends.
    close_code: u16,
}

impl Connection {
    /// A connection right after its 101.
    pub fn new(limits: Limits, now: Millis) -> Connection {
        Connection {
            decoder: Decoder::new(limits.decoder),
            limits,
            phase: Phase::Open,
            last_heard: now,
            stalled_since: None,
            stall_reported_to: now,
            partial_since: None,
            close_code: CLOSED_ABNORMALLY,
        }
    }

    /// Where the connection is in its close handshake.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// True once the connection is over ([`Phase::Done`]).
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The close code to count: the peer's, pusher's, or 1006 without a close handshake.
    pub fn close_code(&self) -> u16 {
        self.close_code
    }

    /// Whether pusher may still send data frames (201s, Pongs): only before any Close.
    pub fn may_send(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Whether the session still takes messages and runs its own timers (until the peer's Close
    /// when pusher went away).
    pub fn session_alive(&self) -> bool {
        matches!(self.phase, Phase::Open | Phase::Leaving { .. })
    }

    /// Whether the shell should read the socket: not while stalled or acknowledging.
    pub fn wants_input(&self) -> bool {
        match self.phase {
            Phase::Open | Phase::Leaving { .. } => self.stalled_since.is_none(),
            Phase::Acking { .. } | Phase::Done => false,
            Phase::Closing { .. } => true,
        }
    }

    /// Whether bytes read are dropped undecoded (after a framing violation).
    pub fn discards_input(&self) -> bool {
        matches!(
            self.phase,
            Phase::Closing {
                undecodable: true,
                ..
            }
        )
    }

    /// Whether nothing held in the receive buffer can be decoded any more (a framing
    /// violation, an incomplete message given up, or the end): the shell may drop its buffer.
    pub fn input_is_dead(&self) -> bool {
        matches!(
            self.phase,
            Phase::Done
                | Phase::Acking {
                    undecodable: true,
                    ..
                }
                | Phase::Closing {
                    undecodable: true,
                    ..
                }
        )
    }

    /// Whether the shell should half-close the socket once its output is flushed.
    pub fn wants_half_close(&self) -> bool {
        self.discards_input()
    }

    /// Whether the connection waits for the spill log (room to go on, or durability), so the
    /// shell should wake it at every housekeeping tick.
    pub fn waits_for_spill(&self) -> bool {
        self.stalled_since.is_some() || matches!(self.phase, Phase::Acking { .. })
    }

    /// The earliest time the connection needs [`Connection::on_tick`], given `now`.
    pub fn next_deadline(&self, now: Millis) -> Millis {
        if self.waits_for_spill() {
            return now;
        }
        let own = match self.phase {
            Phase::Open => Millis(self.last_heard.0 + self.limits.idle_timeout_ms),
            Phase::Leaving { deadline } | Phase::Closing { deadline, .. } => deadline,
            Phase::Acking { deadline, .. } => deadline,
            Phase::Done => now,
        };
        match self.message_deadline() {
            Some(message) => own.min(message),
            None => own,
        }
    }

    /// When the incomplete message held must be complete, while the session takes messages.
    fn message_deadline(&self) -> Option<Millis> {
        let since = self.partial_since?;
        matches!(self.phase, Phase::Open | Phase::Leaving { .. })
            .then(|| Millis(since.0 + self.limits.message_timeout_ms))
    }

    /// Since when the connection holds an incomplete message in its receive buffer, unless
    /// pusher itself is not reading it (a stall): such a buffer is held by the peer, and may be
    /// taken back when others need one ([`Connection::on_evicted`]).
    pub fn holds_partial_message_since(&self) -> Option<Millis> {
        match self.phase {
            Phase::Open | Phase::Leaving { .. } if self.stalled_since.is_none() => {
                self.partial_since
            }
            _ => None,
        }
    }

    /// Whether pusher is not reading the connection because of its own backpressure.
    pub fn is_stalled(&self) -> bool {
        self.stalled_since.is_some()
    }

    /// Bytes arrived: `buf[..filled]` holds what the decoder has not consumed plus the new
    /// bytes. Decodes and handles what it can; returns how many bytes stay in the buffer
    /// (compacted to its front).
    pub fn on_bytes(
        &mut self,
        buf: &mut [u8],
        filled: usize,
        now: Millis,
        host: &mut impl Host,
    ) -> usize {
        self.last_heard = self.last_heard.max(now);
        self.on_resume(buf, filled, now, host)
    }

    /// Decodes what the buffer holds (after bytes arrived, or after a stall ended).
    fn decode(
        &mut self,
        buf: &mut [u8],
        filled: usize,
        now: Millis,
        host: &mut impl Host,
    ) -> usize {
        loop {
            let feeds_session = matches!(self.phase, Phase::Open | Phase::Leaving { .. });
            let decodes = feeds_session
                || matches!(
                    self.phase,
                    Phase::Closing {
                        undecodable: false,
                        ..
                    }
                );
            if !decodes {
                break;
            }
            if feeds_session && !self.check_ready(now, host) {
                break;
            }
            match self.decoder.decode(buf, filled) {
                Ok(Some(event)) => self.on_event(event, buf, now, host),
                Ok(None) => break,
                Err(violation) => self.violated(violation.code, violation.reason, true, now, host),
            }
        }
        let kept = match self.phase {
            Phase::Done
            | Phase::Closing {
                undecodable: true, ..
            }
            | Phase::Acking {
                undecodable: true, ..
            } => 0,
            _ => self.decoder.compact(buf, filled),
        };
        // Bytes kept while not stalled are an incomplete message: its deadline starts now.
        self.partial_since = match (kept, self.partial_since) {
            (0, _) => None,
            (_, Some(since)) => Some(since),
            (_, None) if self.stalled_since.is_none() => Some(now),
            (_, None) => None,
        };
        kept
    }

    /// Whether the session may take the next message; starts or ends a stall.
    fn check_ready(&mut self, now: Millis, host: &mut impl Host) -> bool {
        let ready = host.ready();
        match (ready, self.stalled_since) {
            (false, None) => {
                self.stalled_since = Some(now);
                self.stall_reported_to = now;
            }
            (true, Some(since)) => self.end_stall(since, now, host),
            _ => {}
        }
        ready
    }

    /// Reports the stall's time since the last report.
    fn report_stall(&mut self, now: Millis, host: &mut impl Host) {
        let ms = now.0.saturating_sub(self.stall_reported_to.0);
        if ms > 0 {
            host.note(Note::Stalled { ms });
            self.stall_reported_to = now;
        }
    }

    /// The stall that began at `since` is over: its time is given back to the peer's deadlines.
    fn end_stall(&mut self, since: Millis, now: Millis, host: &mut impl Host) {
        self.report_stall(now, host);
        self.stalled_since = None;
        let stalled_ms = now.0.saturating_sub(since.0);
        self.last_heard = self.last_heard.max(now);
        if let Phase::Leaving { deadline } = self.phase {
            self.phase = Phase::Leaving {
                deadline: Millis(deadline.0 + stalled_ms),
            };
        }
        if let Some(partial) = self.partial_since {
            self.partial_since = Some(Millis(partial.0 + stalled_ms));
        }
    }

    fn on_event(&mut self, event: Event, buf: &[u8], now: Millis, host: &mut impl Host) {
        match event {
            Event::Message { kind, payload } => {
                if matches!(self.phase, Phase::Open | Phase::Leaving { .. }) {
                    let may_send = self.may_send();
                    match host.message(kind, &buf[payload], now, may_send) {
                        Ok(()) => {}
                        Err(Refusal::Close(code, reason)) => {
                            self.violated(code, reason, false, now, host);
                        }
                        Err(Refusal::PeerGone) => self.on_send_failed(),
                    }
                }
            }
            Event::Ping { payload } => {
                if self.may_send() {
                    self.send_frame(Opcode::Pong, &buf[payload], host);
                }
            }
            Event::Pong => {}
            Event::Close { code, reason: _ } => self.on_peer_close(code, now, host),
        }
    }

    fn on_peer_close(&mut self, code: Option<u16>, now: Millis, host: &mut impl Host) {
        match self.phase {
            Phase::Open => {
                self.close_code = code.unwrap_or(NO_STATUS_RECEIVED);
                self.begin_ack(code, "", true, false, now, host);
            }
            Phase::Leaving { .. } | Phase::Closing { .. } => self.enter(Phase::Done),
            Phase::Acking { .. } | Phase::Done => {}
        }
    }

    /// The peer broke a rule (`undecodable`: the framing, so nothing more can be decoded).
    fn violated(
        &mut self,
        code: u16,
        reason: &'static str,
        undecodable: bool,
        now: Millis,
        host: &mut impl Host,
    ) {
        match self.phase {
            Phase::Open => {
                self.close_code = code;
                self.begin_ack(Some(code), reason, false, undecodable, now, host);
            }
            // pusher's Close is out already: nothing more to say.
            Phase::Leaving { .. } => self.enter(Phase::Done),
            Phase::Closing {
                deadline,
                undecodable: false,
            } if undecodable => self.enter(Phase::Closing {
                deadline,
                undecodable: true,
            }),
            Phase::Closing { .. } | Phase::Acking { .. } | Phase::Done => {}
        }
    }

    /// Ends the session; its Close goes out once its audio is durable.
    fn begin_ack(
        &mut self,
        code: Option<u16>,
        reason: &'static str,
        peer_closed: bool,
        undecodable: bool,
        now: Millis,
        host: &mut impl Host,
    ) {
        self.stalled_since = None;
        self.enter(Phase::Acking {
            deadline: self.close_deadline(now),
            code,
            reason,
            peer_closed,
            undecodable,
        });
        self.try_ack(now, host);
    }

    /// Sends the acknowledging Close if the session's audio is durable; drops the connection
    /// when the close timeout passed first.
    fn try_ack(&mut self, now: Millis, host: &mut impl Host) {
        let Phase::Acking {
            deadline,
            code,
            reason,
            peer_closed,
            undecodable,
        } = self.phase
        else {
            return;
        };
        if !(host.end_session(now) && host.durable()) {
            if now >= deadline {
                host.note(Note::AckTimedOut);
                self.enter(Phase::Done);
            }
            return;
        }
        self.enter(if peer_closed {
            Phase::Done
        } else {
            Phase::Closing {
                deadline: self.close_deadline(now),
                undecodable,
            }
        });
        self.send_close(code, reason, host);
    }

    /// pusher ends the session (the drain's grace is over, the peer was idle): Close now, and
    /// go on handling messages until the peer's Close.
    pub fn go_away(&mut self, reason: &'static str, now: Millis, host: &mut impl Host) {
        if self.phase != Phase::Open {
            return;
        }
        self.close_code = close::GOING_AWAY;
        self.enter(Phase::Leaving {
            deadline: self.close_deadline(now),
        });
        self.send_close(Some(close::GOING_AWAY), reason, host);
    }

    /// Time passed (a deadline, the housekeeping tick, or the spill log's progress). Returns
    /// true when the shell should feed the buffered bytes again ([`Connection::on_resume`]): a
    /// stall just ended.
    pub fn on_tick(&mut self, now: Millis, host: &mut impl Host) -> bool {
        if let Some(since) = self.stalled_since {
            if !host.ready() {
                self.report_stall(now, host);
                return false;
            }
            self.end_stall(since, now, host);
            return true;
        }
        if self.message_deadline().is_some_and(|at| now >= at) {
            self.violated(
                close::POLICY_VIOLATION,
                "message not completed within message_timeout_ms",
                true,
                now,
                host,
            );
            return false;
        }
        match self.phase {
            Phase::Acking { .. } => self.try_ack(now, host),
            Phase::Open if now.0 >= self.last_heard.0 + self.limits.idle_timeout_ms => {
                self.go_away("idle timeout", now, host);
            }
            Phase::Leaving { deadline } | Phase::Closing { deadline, .. } if now >= deadline => {
                self.enter(Phase::Done);
            }
            _ => {}
        }
        false
    }

    /// After a stall ended: decodes what the buffer still holds.
    pub fn on_resume(
        &mut self,
        buf: &mut [u8],
        filled: usize,
        now: Millis,
        host: &mut impl Host,
    ) -> usize {
        if self.phase == Phase::Done || self.discards_input() {
            return 0;
        }
        self.decode(buf, filled, now, host)
    }

    /// The shell needs this connection's receive buffer for others (every buffer of the core is
    /// lent and this one has held an incomplete message the longest): the message is dropped
    /// (it was never complete, so never handled) and the connection closes with 1008.
    ///
    /// The shell chose the connection a moment ago; since then it may have completed that
    /// message (the buffer may now hold one pusher has read and not handled yet, stalled on
    /// the spill log) or begun a new one. The eviction takes effect only if the connection
    /// still holds an incomplete message of its peer's, not stalled, for at least
    /// [`EVICT_AGE_MS_MIN`]; otherwise nothing changes. Returns whether it closed.
    pub fn on_evicted(&mut self, now: Millis, host: &mut impl Host) -> bool {
        let Some(since) = self.holds_partial_message_since() else {
            return false;
        };
        if now.0.saturating_sub(since.0) < EVICT_AGE_MS_MIN {
            return false;
        }
        self.violated(
            close::POLICY_VIOLATION,
            "receive buffer needed: message not completed",
            true,
            now,
            host,
        );
        true
    }

    /// The receive buffer is full without a complete frame (the decoder's buffer size admits
    /// every message within the limits, so this is a message too big).
    pub fn on_buffer_full(&mut self, now: Millis, host: &mut impl Host) {
        self.violated(close::MESSAGE_TOO_BIG, "message too big", true, now, host);
    }

    /// The peer closed its side of the stream, or the socket failed.
    pub fn on_end_of_stream(&mut self) {
        match self.phase {
            // The ack still goes nowhere; the session's audio stays in the log.
            Phase::Done => {}
            _ => self.enter(Phase::Done),
        }
    }

    /// The peer could not be written to (too slow, or gone).
    pub fn on_send_failed(&mut self) {
        self.on_end_of_stream();
    }

    fn send_close(&mut self, code: Option<u16>, reason: &str, host: &mut impl Host) {
        let mut out = [0u8; CLOSE_FRAME_BYTES_MAX];
        let len = match code {
            Some(code) => frame::encode_close(code, reason, &mut out),
            None => frame::encode_header(Opcode::Close, 0, &mut out),
        };
        if host.send(&[&out[..len]]).is_err() {
            self.on_send_failed();
        }
    }

    /// Sends one data or control frame to the peer (only while [`Connection::may_send`] for
    /// data).
    pub fn send_frame(&mut self, opcode: Opcode, payload: &[u8], host: &mut impl Host) {
        debug_assert!(self.may_send(), "no frame after pusher's Close");
        let mut header = [0u8; frame::HEADER_BYTES_MAX];
        let len = frame::encode_header(opcode, payload.len(), &mut header);
        if host.send(&[&header[..len], payload]).is_err() {
            self.on_send_failed();
        }
    }

    fn close_deadline(&self, now: Millis) -> Millis {
        Millis(now.0 + self.limits.close_timeout_ms)
    }

    /// Every phase change: asserts it is one the diagram allows.
    fn enter(&mut self, next: Phase) {
        let allowed = matches!(
            (self.phase, next),
            (Phase::Open, Phase::Acking { .. })
                | (Phase::Open, Phase::Leaving { .. })
                | (Phase::Acking { .. }, Phase::Closing { .. })
                | (
                    Phase::Closing {
                        undecodable: false,
                        ..
                    },
                    Phase::Closing {
                        undecodable: true,
                        ..
                    }
                )
                | (Phase::Open, Phase::Done)
                | (Phase::Acking { .. }, Phase::Done)
                | (Phase::Leaving { .. }, Phase::Done)
                | (Phase::Closing { .. }, Phase::Done)
        );
        assert!(allowed, "connection: {:?} → {next:?}", self.phase);
        self.phase = next;
    }
}

impl MessageKind {
    /// The opcode a message of this kind is sent with.
    pub fn opcode(self) -> Opcode {
        match self {
            MessageKind::Text => Opcode::Text,
            MessageKind::Binary => Opcode::Binary,
        }
    }
}
