//! A session's connection as Omi's listen service keeps it (Python `websockets`, as it connects
//! to pusher: `ping_interval=30, ping_timeout=60`): every ping from the server is answered with
//! a pong at once, and the client pings the server 30 s after the previous pong, failing the
//! connection when no pong comes within 60 s. The Python pusher (uvicorn) pings every 20 s and
//! drops a client that does not answer; pusher pings nobody but counts a client's pings as
//! activity.
//!
//! [`Keepalive`] is the client's own ping timing, pure. [`Conn`] owns a session's stream and
//! serves it while the scenario waits for its next sending time: it reads what the server sends,
//! answers pings, sends the keepalive pings, hands binary messages (201s) to the scenario, and
//! notices the server ending the session. [`SharedWriter`] is the same for a session whose
//! reading and writing run in two tasks (`chaos`, `latency`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Mutex;

use crate::frames;

/// `websockets`' `ping_interval` as the listen service sets it.
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
/// `websockets`' `ping_timeout` as the listen service sets it.
pub const PONG_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest server frame accepted (a 201 is a few hundred bytes; a ping at most 125).
const SERVER_FRAME_BYTES_MAX: usize = 1 << 20;
/// Bytes read at a time.
const READ_CHUNK: usize = 1024;

/// What the client's keepalive asks for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    Nothing,
    /// Send a ping with this payload.
    Ping([u8; 4]),
    /// The awaited pong did not come in time: the connection has failed (websockets closes it
    /// with 1011).
    TimedOut,
}

/// The client's ping timing: a ping `interval` after the session opened or after the last
/// pong, then a pong awaited for at most `timeout` (websockets' `keepalive_ping`).
#[derive(Debug, Clone)]
pub struct Keepalive {
    interval: Duration,
    timeout: Duration,
    /// When no ping is awaited: the next ping; else the pong's deadline.
    next: Instant,
    /// Payload of the ping whose pong is awaited.
    awaiting: Option<[u8; 4]>,
    sequence: u32,
    pub pings_sent: u64,
    pub pongs_received: u64,
}

impl Keepalive {
    /// The listen service's timing (30 s, 60 s) from `now`.
    pub fn new(now: Instant) -> Keepalive {
        Keepalive::with(now, PING_INTERVAL, PONG_TIMEOUT)
    }

    pub fn with(now: Instant, interval: Duration, timeout: Duration) -> Keepalive {
        Keepalive {
            interval,
            timeout,
            next: now + interval,
            awaiting: None,
            sequence: 0,
            pings_sent: 0,
            pongs_received: 0,
        }
    }

    /// When [`Keepalive::poll`] has something to do next.
    pub fn deadline(&self) -> Instant {
        self.next
    }

    pub fn poll(&mut self, now: Instant) -> Due {
        if now < self.next {
            return Due::Nothing;
        }
        if self.awaiting.is_some() {
            return Due::TimedOut;
        }
        self.sequence = self.sequence.wrapping_add(1);
        let payload = self.sequence.to_be_bytes();
        self.awaiting = Some(payload);
        self.next = now + self.timeout;
        self.pings_sent += 1;
        Due::Ping(payload)
    }

    /// A pong arrived: if it answers the awaited ping, the next ping is `interval` from `now`.
    /// An unsolicited pong or one of an older ping changes nothing (RFC 6455 §5.5.3).
    pub fn on_pong(&mut self, payload: &[u8], now: Instant) {
        if self.awaiting.is_some_and(|awaited| awaited[..] == *payload) {
            self.awaiting = None;
            self.next = now + self.interval;
            self.pongs_received += 1;
        }
    }
}

/// How a session ended before the client ended it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The server sent a Close with this code (`None`: without one); the client answered it.
    Closed(Option<u16>),
    /// The stream ended (FIN or reset) without a Close frame.
    NoCloseFrame,
    /// No pong within the timeout: the client failed the connection, as websockets does.
    PongTimeout,
    /// A write or read failed.
    Error(String),
    /// The server sent a frame the client cannot parse.
    Invalid(String),
}

impl End {
    /// A short reason for counting.
    pub fn reason(&self) -> String {
        match self {
            End::Closed(Some(code)) => format!("closed by the server: {code}"),
            End::Closed(None) => "closed by the server: no code".to_owned(),
            End::NoCloseFrame => "stream ended without a Close".to_owned(),
            End::PongTimeout => format!(
                "no pong within {}s (keepalive ping timeout)",
                PONG_TIMEOUT.as_secs()
            ),
            End::Error(e) => e.clone(),
            End::Invalid(e) => format!("invalid frame: {e}"),
        }
    }
}

/// A close code from a Close frame's payload.
pub fn close_code(payload: &[u8]) -> Option<u16> {
    payload
        .get(..2)
        .map(|code| u16::from_be_bytes([code[0], code[1]]))
}

/// Control-frame counts of one or more sessions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pings {
    /// Pings from the server answered with a pong.
    pub answered: u64,
    /// Keepalive pings the client sent, and the pongs that answered them.
    pub sent: u64,
    pub pongs: u64,
}

impl Pings {
    /// The counts added since `before` (an earlier reading of the same connection).
    pub fn since(self, before: Pings) -> Pings {
        Pings {
            answered: self.answered - before.answered,
            sent: self.sent - before.sent,
            pongs: self.pongs - before.pongs,
        }
    }

    pub fn add(&mut self, other: Pings) {
        self.answered += other.answered;
        self.sent += other.sent;
        self.pongs += other.pongs;
    }

    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "server_pings_answered": self.answered,
            "client_pings_sent": self.sent,
            "client_pongs_received": self.pongs,
        })
    }
}

/// [`Pings`] of many sessions, counted as they go.
#[derive(Debug, Default)]
pub struct SharedPings {
    answered: AtomicU64,
    sent: AtomicU64,
    pongs: AtomicU64,
}

impl SharedPings {
    pub fn add(&self, pings: Pings) {
        self.answered.fetch_add(pings.answered, Ordering::Relaxed);
        self.sent.fetch_add(pings.sent, Ordering::Relaxed);
        self.pongs.fetch_add(pings.pongs, Ordering::Relaxed);
    }

    pub fn get(&self) -> Pings {
        Pings {
            answered: self.answered.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            pongs: self.pongs.load(Ordering::Relaxed),
        }
    }
}

/// What to do with the frames read: the replies to write (pongs, the Close answer) and whether
/// the server ended the session.
#[derive(Debug, Default, PartialEq)]
struct Handled {
    replies: Vec<u8>,
    answered: u64,
    end: Option<End>,
}

/// Takes every complete frame off the front of `buf`: binary and text messages go to
/// `on_message`, a ping is answered (unless `closing`: no frame after our Close), a pong goes to
/// `keepalive`, a Close ends the session (answered unless `closing`). Pure.
fn take_frames(
    buf: &mut Vec<u8>,
    keepalive: &mut Keepalive,
    closing: bool,
    now: Instant,
    on_message: &mut impl FnMut(&[u8]),
) -> Handled {
    let mut handled = Handled::default();
    let mut consumed = 0;
    while handled.end.is_none() {
        let frame = match frames::parse_server_frame(&buf[consumed..], SERVER_FRAME_BYTES_MAX) {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                handled.end = Some(End::Invalid(e));
                break;
            }
        };
        let payload = &buf[consumed..][frame.payload.clone()];
        match frame.opcode {
            frames::OPCODE_PING if !closing => {
                handled.replies.extend(frames::pong_frame(payload));
                handled.answered += 1;
            }
            frames::OPCODE_PONG => keepalive.on_pong(payload, now),
            frames::OPCODE_CLOSE => {
                if !closing {
                    handled.replies.extend(frames::close_frame());
                }
                handled.end = Some(End::Closed(close_code(payload)));
            }
            frames::OPCODE_BINARY | frames::OPCODE_TEXT | frames::OPCODE_CONTINUATION => {
                on_message(payload)
            }
            _ => {}
        }
        consumed += frame.wire_bytes;
    }
    buf.drain(..consumed);
    handled
}

/// A session's stream, served as the listen service serves it (module doc).
pub struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet a whole frame.
    buf: Vec<u8>,
    keepalive: Keepalive,
    answered: u64,
    /// Our Close (or FIN) was sent: no frame after it.
    closing: bool,
}

impl Conn {
    /// `stream` just upgraded (nothing buffered), keepalive timed from now.
    pub fn new(stream: TcpStream) -> Conn {
        Conn::with_buffered(stream, Vec::new())
    }

    /// `stream` with `buffered`, the bytes read after the 101 head.
    pub fn with_buffered(stream: TcpStream, buffered: Vec<u8>) -> Conn {
        Conn {
            stream,
            buf: buffered,
            keepalive: Keepalive::new(Instant::now()),
            answered: 0,
            closing: false,
        }
    }

    /// [`Conn::new`] with its own keepalive timing (tests).
    #[cfg(test)]
    fn with_keepalive(stream: TcpStream, interval: Duration, timeout: Duration) -> Conn {
        let mut conn = Conn::new(stream);
        conn.keepalive = Keepalive::with(Instant::now(), interval, timeout);
        conn
    }

    pub fn pings(&self) -> Pings {
        Pings {
            answered: self.answered,
            sent: self.keepalive.pings_sent,
            pongs: self.keepalive.pongs_received,
        }
    }

    pub async fn send(&mut self, wire: &[u8]) -> Result<(), End> {
        self.stream
            .write_all(wire)
            .await
            .map_err(|e| End::Error(format!("write: {e}")))
    }

    /// Handles the frames buffered, then the keepalive.
    async fn handle(&mut self, on_message: &mut impl FnMut(&[u8])) -> Result<(), End> {
        let handled = take_frames(
            &mut self.buf,
            &mut self.keepalive,
            self.closing,
            Instant::now(),
            on_message,
        );
        self.answered += handled.answered;
        if !handled.replies.is_empty() {
            self.stream
                .write_all(&handled.replies)
                .await
                .map_err(|e| End::Error(format!("pong write: {e}")))?;
        }
        if let Some(end) = handled.end {
            // A server's Close was answered: nothing more goes out.
            self.closing = matches!(end, End::Closed(_)) || self.closing;
            return Err(end);
        }
        if self.closing {
            return Ok(());
        }
        match self.keepalive.poll(Instant::now()) {
            Due::Nothing => Ok(()),
            Due::Ping(payload) => self.send(&frames::ping_frame(&payload)).await,
            Due::TimedOut => Err(End::PongTimeout),
        }
    }

    /// Serves the connection until `at`: `Ok` then, `Err` when the session ended before.
    pub async fn wait_until(
        &mut self,
        at: Instant,
        on_message: &mut impl FnMut(&[u8]),
    ) -> Result<(), End> {
        let never = std::future::pending::<()>();
        tokio::pin!(never);
        self.wait_until_or(at, never, on_message).await.map(|_| ())
    }

    /// [`Conn::wait_until`], or until `stop` completes (`Ok(true)`). `stop` is polled only
    /// while the connection waits to read, never in the middle of a write.
    pub async fn wait_until_or<F: Future<Output = ()>>(
        &mut self,
        at: Instant,
        mut stop: Pin<&mut F>,
        on_message: &mut impl FnMut(&[u8]),
    ) -> Result<bool, End> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            self.handle(on_message).await?;
            let now = Instant::now();
            if now >= at {
                return Ok(false);
            }
            let wake = if self.closing {
                at
            } else {
                at.min(self.keepalive.deadline())
            };
            tokio::select! {
                read = self.stream.read(&mut chunk) => match read {
                    Ok(0) => return Err(End::NoCloseFrame),
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                    Err(e) => return Err(End::Error(format!("read: {e}"))),
                },
                () = tokio::time::sleep_until(wake.into()) => {}
                () = &mut stop => return Ok(true),
            }
        }
    }

    /// Without waiting: handles what the server has sent so far and the keepalive (a client
    /// that writes as fast as it can calls this between writes).
    pub async fn serve_ready(&mut self, on_message: &mut impl FnMut(&[u8])) -> Result<(), End> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match self.stream.try_read(&mut chunk) {
                Ok(0) => return Err(End::NoCloseFrame),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(End::Error(format!("read: {e}"))),
            }
        }
        self.handle(on_message).await
    }

    /// Sends a Close 1000 and reads until the server ends the stream, within `wait`; messages
    /// read meanwhile go to `on_message`. The error names the step that failed.
    pub async fn close(
        &mut self,
        wait: Duration,
        on_message: &mut impl FnMut(&[u8]),
    ) -> Result<(), String> {
        if !self.closing {
            self.closing = true;
            self.stream
                .write_all(&frames::close_frame())
                .await
                .map_err(|e| format!("close write: {e}"))?;
        }
        self.read_to_end(Instant::now() + wait, on_message).await
    }

    /// After our Close or FIN: reads until the end of the stream, at the latest `until`;
    /// messages still read go to `on_message`, pings are not answered any more.
    async fn read_to_end(
        &mut self,
        until: Instant,
        on_message: &mut impl FnMut(&[u8]),
    ) -> Result<(), String> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let handled = take_frames(
                &mut self.buf,
                &mut self.keepalive,
                true,
                Instant::now(),
                on_message,
            );
            if let Some(end @ End::Invalid(_)) = handled.end {
                return Err(end.reason());
            }
            match tokio::time::timeout_at(until.into(), self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(format!("close read: {e}")),
                Err(_) => {
                    return Err("no end of stream from the server after the Close".to_owned());
                }
            }
        }
    }
}

/// The write half of a session whose reading runs in another task: the reader answers pings and
/// sends keepalive pings through it between the writer's messages.
pub type SharedWriter = Arc<Mutex<OwnedWriteHalf>>;

pub fn shared(writer: OwnedWriteHalf) -> SharedWriter {
    Arc::new(Mutex::new(writer))
}

/// Reads a session's frames until the end of the stream or `until`, as [`Conn`] does: pings
/// answered and keepalive pings sent through `writer` (until `closing` reads true: our Close or
/// FIN was sent), messages to `on_message` with the time they were read. `Ok` at the end of the
/// stream, the reason otherwise.
pub async fn read_frames(
    mut reader: OwnedReadHalf,
    writer: SharedWriter,
    closing: Arc<std::sync::atomic::AtomicBool>,
    until: Instant,
    mut on_message: impl FnMut(&[u8], Instant),
) -> (Pings, Result<(), String>) {
    let mut keepalive = Keepalive::new(Instant::now());
    let mut buf = Vec::new();
    let mut answered = 0;
    let mut chunk = [0u8; READ_CHUNK];
    let mut read_at = Instant::now();
    let mut ended_by_server = false;
    let outcome = loop {
        let closing_now = closing.load(Ordering::Relaxed) || ended_by_server;
        let handled = take_frames(
            &mut buf,
            &mut keepalive,
            closing_now,
            read_at,
            &mut |message| on_message(message, read_at),
        );
        answered += handled.answered;
        let mut writes = handled.replies;
        match handled.end {
            Some(end @ End::Invalid(_)) => break Err(end.reason()),
            // The server's Close: answered (if we had not closed); read on to the end.
            Some(_) => ended_by_server = true,
            None => {}
        }
        if !closing_now && !ended_by_server {
            match keepalive.poll(Instant::now()) {
                Due::Nothing => {}
                Due::Ping(payload) => writes.extend(frames::ping_frame(&payload)),
                Due::TimedOut => break Err(End::PongTimeout.reason()),
            }
        }
        if !writes.is_empty() {
            // A failed write shows in the reads (the server ends the stream).
            let _ = writer.lock().await.write_all(&writes).await;
        }
        let wake = if closing_now || ended_by_server {
            until
        } else {
            until.min(keepalive.deadline())
        };
        tokio::select! {
            read = reader.read(&mut chunk) => match read {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    read_at = Instant::now();
                }
                Err(e) => break Err(format!("read: {e}")),
            },
            () = tokio::time::sleep_until(wake.into()) => {
                if Instant::now() >= until {
                    break Err("no end of stream from the server after the Close".to_owned());
                }
            }
        }
    };
    let pings = Pings {
        answered,
        sent: keepalive.pings_sent,
        pongs: keepalive.pongs_received,
    };
    (pings, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() <= 125);
        let mut frame = vec![0x80 | opcode, payload.len() as u8];
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn a_ping_every_interval_after_the_last_pong_and_a_timeout_without_one() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut keepalive = Keepalive::new(t0);
        assert_eq!(keepalive.deadline(), t0 + s(30));
        assert_eq!(keepalive.poll(t0 + s(29)), Due::Nothing);
        let Due::Ping(first) = keepalive.poll(t0 + s(30)) else {
            panic!("a ping at 30 s")
        };
        assert_eq!(keepalive.deadline(), t0 + s(90), "the pong awaited 60 s");
        assert_eq!(
            keepalive.poll(t0 + s(60)),
            Due::Nothing,
            "one ping at a time"
        );
        keepalive.on_pong(b"other", t0 + s(31));
        keepalive.on_pong(&first, t0 + s(32));
        assert_eq!(keepalive.pongs_received, 1);
        assert_eq!(keepalive.deadline(), t0 + s(62), "30 s after the pong");
        let Due::Ping(second) = keepalive.poll(t0 + s(62)) else {
            panic!("a ping at 62 s")
        };
        assert_ne!(first, second, "each ping its own payload");
        assert_eq!(keepalive.poll(t0 + s(121)), Due::Nothing);
        assert_eq!(keepalive.poll(t0 + s(122)), Due::TimedOut);
        assert_eq!(keepalive.pings_sent, 2);
    }

    #[test]
    fn ping_counts_add_up_over_sessions() {
        let shared = SharedPings::default();
        let before = Pings {
            answered: 2,
            sent: 1,
            pongs: 1,
        };
        let after = Pings {
            answered: 5,
            sent: 3,
            pongs: 2,
        };
        shared.add(after.since(before));
        shared.add(after.since(before));
        assert_eq!(
            shared.get(),
            Pings {
                answered: 6,
                sent: 4,
                pongs: 2
            }
        );
    }

    #[test]
    fn frames_are_answered_counted_and_passed_on() {
        let t0 = Instant::now();
        let mut keepalive = Keepalive::with(t0, Duration::ZERO, Duration::from_secs(60));
        let Due::Ping(awaited) = keepalive.poll(t0) else {
            panic!("a ping at once")
        };
        let mut buf = Vec::new();
        buf.extend(server_frame(frames::OPCODE_PING, b"p1"));
        buf.extend(server_frame(frames::OPCODE_BINARY, b"\xc9\0\0\0{}"));
        buf.extend(server_frame(frames::OPCODE_PONG, &awaited));
        buf.extend(server_frame(frames::OPCODE_PING, b"")[..1].iter().copied());
        let mut messages = Vec::new();
        let handled = take_frames(&mut buf, &mut keepalive, false, t0, &mut |m| {
            messages.push(m.to_vec())
        });
        assert_eq!(messages, [b"\xc9\0\0\0{}".to_vec()]);
        assert_eq!(handled.answered, 1);
        assert_eq!(handled.replies, frames::pong_frame(b"p1"));
        assert_eq!(handled.end, None);
        assert_eq!(keepalive.pongs_received, 1);
        assert_eq!(buf.len(), 1, "the partial frame stays");

        // A Close ends the session and is answered; nothing after it is taken.
        let mut buf = server_frame(frames::OPCODE_CLOSE, &1001u16.to_be_bytes());
        buf.extend(server_frame(frames::OPCODE_BINARY, b"late"));
        let handled = take_frames(&mut buf, &mut keepalive, false, t0, &mut |_| {
            panic!("no message after the Close")
        });
        assert_eq!(handled.end, Some(End::Closed(Some(1001))));
        assert_eq!(handled.replies, frames::close_frame());
        // After our own Close: no pong, no Close answer.
        let mut buf = server_frame(frames::OPCODE_PING, b"x");
        buf.extend(server_frame(frames::OPCODE_CLOSE, b""));
        let handled = take_frames(&mut buf, &mut keepalive, true, t0, &mut |_| {});
        assert!(handled.replies.is_empty());
        assert_eq!(handled.end, Some(End::Closed(None)));
        // A masked frame cannot come from a server.
        let mut buf = frames::pong_frame(b"x");
        let handled = take_frames(&mut buf, &mut keepalive, false, t0, &mut |_| {});
        assert!(matches!(handled.end, Some(End::Invalid(_))));
    }

    /// A fake server that pings, reads the client's frames and answers its pings.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), server.unwrap().0)
    }

    /// The client frames in `wire` (masked) with the server's own decoder: (opcode, payload).
    fn client_frames(wire: &[u8]) -> Vec<(u8, Vec<u8>)> {
        use pusher::websocket::Event;
        frames::decode_client_frames(wire)
            .into_iter()
            .map(|(event, bytes)| {
                let opcode = match event {
                    Event::Ping { .. } => frames::OPCODE_PING,
                    Event::Pong => frames::OPCODE_PONG,
                    Event::Close { .. } => frames::OPCODE_CLOSE,
                    Event::Message { .. } => frames::OPCODE_BINARY,
                };
                (opcode, bytes)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_connection_answers_the_servers_pings_while_it_waits_and_closes_cleanly() {
        let (client, mut server) = pair().await;
        let mut conn = Conn::new(client);
        server
            .write_all(&server_frame(frames::OPCODE_PING, b"srv"))
            .await
            .unwrap();
        server
            .write_all(&server_frame(frames::OPCODE_BINARY, b"answer"))
            .await
            .unwrap();
        let mut messages = Vec::new();
        conn.wait_until(Instant::now() + Duration::from_millis(200), &mut |m| {
            messages.push(m.to_vec())
        })
        .await
        .unwrap();
        assert_eq!(messages, [b"answer".to_vec()]);
        assert_eq!(conn.pings().answered, 1);
        conn.send(&frames::binary_frame(b"data")).await.unwrap();
        // The server reads the pong and the message, then answers our Close and ends.
        let server_side = tokio::spawn(async move {
            let mut wire = Vec::new();
            let mut chunk = [0u8; 256];
            loop {
                let n = server.read(&mut chunk).await.unwrap();
                wire.extend_from_slice(&chunk[..n]);
                if client_frames(&wire)
                    .iter()
                    .any(|(op, _)| *op == frames::OPCODE_CLOSE)
                {
                    break;
                }
            }
            server
                .write_all(&server_frame(frames::OPCODE_CLOSE, &1000u16.to_be_bytes()))
                .await
                .unwrap();
            drop(server);
            client_frames(&wire)
        });
        conn.close(Duration::from_secs(5), &mut |_| {})
            .await
            .unwrap();
        let seen = server_side.await.unwrap();
        assert_eq!(
            seen,
            [
                (frames::OPCODE_PONG, Vec::new()),
                (frames::OPCODE_BINARY, b"data".to_vec()),
                (frames::OPCODE_CLOSE, Vec::new()),
            ]
        );
    }

    #[tokio::test]
    async fn a_server_close_ends_the_wait_and_is_answered() {
        let (client, mut server) = pair().await;
        let mut conn = Conn::new(client);
        server
            .write_all(&server_frame(frames::OPCODE_CLOSE, &1013u16.to_be_bytes()))
            .await
            .unwrap();
        let end = conn
            .wait_until(Instant::now() + Duration::from_secs(5), &mut |_| {})
            .await
            .unwrap_err();
        assert_eq!(end, End::Closed(Some(1013)));
        let mut chunk = [0u8; 64];
        let n = server.read(&mut chunk).await.unwrap();
        assert_eq!(
            client_frames(&chunk[..n]),
            [(frames::OPCODE_CLOSE, Vec::new())]
        );
    }

    #[tokio::test]
    async fn a_silent_server_gets_a_ping_and_then_fails_the_connection() {
        let (client, mut server) = pair().await;
        let ms = Duration::from_millis;
        let mut conn = Conn::with_keepalive(client, ms(30), ms(60));
        let started = Instant::now();
        let end = conn
            .wait_until(Instant::now() + Duration::from_secs(10), &mut |_| {})
            .await
            .unwrap_err();
        assert!(
            started.elapsed() >= ms(90),
            "a ping at 30 ms, no pong by 90 ms"
        );
        assert_eq!(end, End::PongTimeout);
        assert_eq!(conn.pings().sent, 1);
        let mut chunk = [0u8; 64];
        let n = server.read(&mut chunk).await.unwrap();
        let seen = client_frames(&chunk[..n]);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, frames::OPCODE_PING);
    }

    #[tokio::test]
    async fn a_split_session_answers_pings_through_the_shared_writer() {
        let (client, mut server) = pair().await;
        let (reader, writer) = client.into_split();
        let writer = shared(writer);
        let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        server
            .write_all(&server_frame(frames::OPCODE_PING, b"p"))
            .await
            .unwrap();
        server
            .write_all(&server_frame(frames::OPCODE_BINARY, b"201"))
            .await
            .unwrap();
        let reading = tokio::spawn(read_frames(
            reader,
            Arc::clone(&writer),
            Arc::clone(&closing),
            Instant::now() + Duration::from_secs(5),
            |message, _| assert_eq!(message, b"201"),
        ));
        let mut chunk = [0u8; 64];
        let n = server.read(&mut chunk).await.unwrap();
        assert_eq!(
            client_frames(&chunk[..n]),
            [(frames::OPCODE_PONG, Vec::new())]
        );
        drop(server);
        let (pings, outcome) = reading.await.unwrap();
        assert_eq!(outcome, Ok(()));
        assert_eq!(pings.answered, 1);
    }
}
