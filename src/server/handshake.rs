//! One connection from its accept to its upgrade (or its answer): reads the request head,
//! answers a plain route, refuses a bad request, turns a session away after its upgrade, or
//! opens the session and hands the socket to [`super::connection`]. Parsing and the upgrade
//! rules are the sans-I/O `http` modules; this file waits for readiness, peeks, writes.
//!
//! The request head is *peeked* into the core's one scratch buffer, not read into a buffer of
//! its own: a complete head is parsed, acted on and then dropped from the socket; an incomplete
//! one stays in the socket and is peeked again a little later. So a connection in its
//! handshake owns no buffer, silent or slow peers hold nothing but their slot, and the bytes
//! that follow the head (the first WebSocket frames) stay in the socket for the session.
//!
//! Invariants: a handshake holds its [`Ticket`] (its slot) until it ends; it ends by the
//! handshake deadline (from the accept; it does not move with trickled bytes); every refusal
//! is counted by reason; a session turned away (draining: 1001, full: 1013) completes its
//! upgrade first — an HTTP 503 would count as a failed connect in the listen client's circuit
//! breaker (docs/0008-turn-away-after-the-upgrade.md).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use super::connection::{self, Upgraded};
use super::core::Core;
use super::endpoints;
use super::handshake_slots::Ticket;
use super::outbound;
use super::outputs;
use super::slots::Slot;
use super::task::spawn_bounded;
use crate::egress::Ticket as EgressTicket;
use crate::egress::job::{Job, Work};
use crate::http::admission::{self, ListenParams, Route};
use crate::http::request::{self, Parsed, Request};
use crate::http::response::{write_response, write_switching_protocols};
use crate::id::Id;
use crate::metrics::{Refusal, TurnAway};
use crate::settings::UserSettings;
use crate::websocket::close;
use crate::websocket::frame;
use crate::websocket::handshake::accept_key;

/// Upper bound of one handshake task (its future plus the runtime's task header): checked at
/// every spawn, used by the budget.
pub const HANDSHAKE_TASK_BYTES_MAX: usize = 4096;
/// First wait before peeking again at an incomplete head (its bytes stay in the socket, so
/// readiness would fire at once); doubles up to [`PEEK_BACKOFF_MAX`].
const PEEK_BACKOFF_MIN: Duration = Duration::from_millis(2);
const PEEK_BACKOFF_MAX: Duration = Duration::from_millis(100);
/// How long a handshake waits for a settings fetch beyond the fetch's own timeout.
const SETTINGS_WAIT_MARGIN: Duration = Duration::from_secs(1);
/// A `Retry-After` for 503 refusals, in seconds.
const RETRY_AFTER_S: &str = "5";
/// After an answer with input still unread, how long pusher keeps reading and dropping what
/// the client sends: closing with unread input would reset the connection and could destroy
/// the answer before the client reads it (RFC 9112 §9.6).
const LINGER_MAX: Duration = Duration::from_secs(1);
/// The `Sec-WebSocket-Key` of a valid upgrade: 16 bytes in base64.
const WEBSOCKET_KEY_BYTES: usize = 24;
/// The 101 response: status line, three headers and the accept key.
const SWITCHING_PROTOCOLS_BYTES_MAX: usize = 160;
/// A close frame: header, code and at most 123 bytes of reason.
const CLOSE_FRAME_BYTES_MAX: usize = frame::HEADER_BYTES_MAX + 125;

/// Starts the handshake of an accepted connection; `ticket` is its slot.
pub fn spawn(core: Rc<Core>, stream: TcpStream, peer: SocketAddr, ticket: Ticket) {
    static LOGGED: std::sync::Once = std::sync::Once::new();
    let task = run(core, stream, peer, ticket);
    spawn_bounded(task, HANDSHAKE_TASK_BYTES_MAX, "handshake", &LOGGED);
}

async fn run(core: Rc<Core>, stream: TcpStream, peer: SocketAddr, ticket: Ticket) {
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let deadline = Instant::now() + Duration::from_millis(core.shared.config.handshake_timeout_ms);
    let upgraded = monoio::select! {
        upgraded = handshake(&core, &stream, fd, peer, &ticket, deadline) => upgraded,
        _ = ticket.evicted() => {
            core.shared.metrics.handshakes_evicted.inc();
            None
        }
    };
    drop(ticket);
    if let Some(upgraded) = upgraded {
        connection::spawn(core, stream, upgraded);
    }
}

/// What a complete request head calls for, decided without waiting.
enum Answer {
    /// A plain route's response; the connection closes after it.
    Respond(Vec<u8>),
    /// An HTTP refusal.
    Refuse(Refused),
    /// Complete the upgrade, then close at once.
    TurnAway {
        key: [u8; WEBSOCKET_KEY_BYTES],
        reason: TurnAway,
    },
    /// An upgrade that passed the rules; for the listen route, its query.
    Upgrade {
        key: [u8; WEBSOCKET_KEY_BYTES],
        params: Option<ListenParams>,
    },
}

/// A refusal: the reason counted, the status and a one-line reason.
type Refused = (Refusal, u16, &'static str);

/// Reads the request head within `deadline` and answers it; the session's slot and the 101
/// when it is an upgrade.
async fn handshake(
    core: &Rc<Core>,
    stream: &TcpStream,
    fd: RawFd,
    peer: SocketAddr,
    ticket: &Ticket,
    deadline: Instant,
) -> Option<Upgraded> {
    let mut backoff = PEEK_BACKOFF_MIN;
    loop {
        match monoio::time::timeout_at(deadline.into(), stream.readable(false)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return None,
            Err(_) => return timed_out(core),
        }
        match read_head(core, fd, peer) {
            Head::Nothing => continue,
            Head::Gone => return None,
            Head::Partial => {
                ticket.reading_partial();
                let wake = (Instant::now() + backoff).min(deadline);
                monoio::time::sleep_until(wake.into()).await;
                if Instant::now() >= deadline {
                    return timed_out(core);
                }
                backoff = (backoff * 2).min(PEEK_BACKOFF_MAX);
            }
            Head::Bad(refused) => {
                refuse(core, stream, fd, refused, deadline).await;
                return None;
            }
            Head::Complete(answer) => {
                ticket.answering();
                return act(core, stream, fd, answer, deadline).await;
            }
        }
    }
}

fn timed_out(core: &Core) -> Option<Upgraded> {
    core.shared.metrics.refused(Refusal::HandshakeTimeout).inc();
    None
}

/// What a peek at the socket found.
enum Head {
    /// Nothing to read after all.
    Nothing,
    /// End of stream or an error: the peer is gone.
    Gone,
    /// An incomplete head (left in the socket).
    Partial,
    /// A malformed or oversized head.
    Bad(Refused),
    /// A complete head, now dropped from the socket, and what it calls for.
    Complete(Answer),
}

/// Peeks the request head into the core's scratch buffer and, when it is complete, decides the
/// answer and drops the head from the socket.
fn read_head(core: &Core, fd: RawFd, peer: SocketAddr) -> Head {
    let mut scratch = core.head_scratch.borrow_mut();
    let peeked = match outbound::peek(fd, &mut scratch) {
        Ok(0) => return Head::Gone,
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Head::Nothing,
        Err(_) => return Head::Gone,
    };
    let max_head_bytes = core.shared.config.request_header_bytes_max;
    match request::parse(&scratch[..peeked], max_head_bytes) {
        Ok(Parsed::Partial) => Head::Partial,
        Ok(Parsed::Complete {
            request,
            head_bytes,
        }) => {
            if outbound::discard(fd, head_bytes).is_err() {
                return Head::Gone;
            }
            Head::Complete(decide(core, &request, peer))
        }
        Err(err) => {
            let reason = match err.status() {
                431 => "request head too large",
                _ => "bad request head",
            };
            Head::Bad((Refusal::BadRequest, err.status(), reason))
        }
    }
}

/// The answer to a complete head: plain routes are answered here; upgrades go through the
/// rules in order — token (401), query (400), handshake headers (400/405/426) — then the drain
/// (turned away with 1001) and capacity (1013). Settings (503) and the slot come next.
fn decide(core: &Core, request: &Request<'_>, peer: SocketAddr) -> Answer {
    let shared = &core.shared;
    let route = admission::route(request.path, shared.config.test_echo_route);
    if !matches!(route, Route::Listen | Route::Echo) {
        let mut out = Vec::new();
        endpoints::respond(shared, route, request, peer, &mut out);
        return Answer::Respond(out);
    }
    let as_refused = |r: admission::Refusal, kind| (kind, r.status, r.reason);
    let checked = admission::check_bearer(request, shared.config.auth_token.as_deref())
        .map_err(|r| as_refused(r, Refusal::Unauthorized))
        .and_then(|()| match route {
            Route::Listen => admission::parse_listen_query(request.query)
                .map(Some)
                .map_err(|r| as_refused(r, Refusal::BadRequest)),
            _ => Ok(None),
        })
        .and_then(|params| {
            admission::check_websocket(request)
                .map(|key| (key, params))
                .map_err(|r| as_refused(r, Refusal::BadRequest))
        });
    let (key, params) = match checked {
        Ok(checked) => checked,
        Err(refused) => return Answer::Refuse(refused),
    };
    let key: [u8; WEBSOCKET_KEY_BYTES] = key.try_into().expect("check_websocket checks the length");
    match turn_away_reason(core) {
        Some(reason) => Answer::TurnAway { key, reason },
        None => Answer::Upgrade { key, params },
    }
}

/// Why a session cannot be opened now, if it cannot. (A session needs no receive buffer to
/// open: it borrows one when bytes arrive, and buffers held by incomplete messages are taken
/// back when others need them.)
fn turn_away_reason(core: &Core) -> Option<TurnAway> {
    if core.shared.is_draining() {
        Some(TurnAway::Draining)
    } else if core.slots.is_full() {
        Some(TurnAway::Full)
    } else {
        None
    }
}

async fn act(
    core: &Rc<Core>,
    stream: &TcpStream,
    fd: RawFd,
    answer: Answer,
    deadline: Instant,
) -> Option<Upgraded> {
    match answer {
        Answer::Respond(out) => {
            if write_all(stream, fd, &out, deadline).await && outbound::has_input(fd) {
                linger(stream, fd).await;
            }
            None
        }
        Answer::Refuse(refused) => {
            refuse(core, stream, fd, refused, deadline).await;
            None
        }
        Answer::TurnAway { key, reason } => {
            turn_away(core, stream, fd, &key, reason, deadline).await;
            None
        }
        Answer::Upgrade { key, params } => upgrade(core, stream, fd, key, params, deadline).await,
    }
}

/// Loads the user's settings, takes the slot and writes the 101.
async fn upgrade(
    core: &Rc<Core>,
    stream: &TcpStream,
    fd: RawFd,
    key: [u8; WEBSOCKET_KEY_BYTES],
    params: Option<ListenParams>,
    deadline: Instant,
) -> Option<Upgraded> {
    let settings = match &params {
        Some(params) => match settings_for(core, &params.uid, deadline).await {
            Ok(settings) => Some(settings),
            Err(refused) => {
                refuse(core, stream, fd, refused, deadline).await;
                return None;
            }
        },
        None => None,
    };
    // The settings fetch may have waited: the drain may have begun, the slots filled up.
    if let Some(reason) = turn_away_reason(core) {
        turn_away(core, stream, fd, &key, reason, deadline).await;
        return None;
    }
    let upgraded = open(core, params, settings);
    let mut response = [0u8; SWITCHING_PROTOCOLS_BYTES_MAX];
    let len = write_switching_protocols(&mut response, &accept_key(&key));
    if !write_all(stream, fd, &response[..len], deadline).await {
        connection::close_slot(core, upgraded.key, close::GOING_AWAY);
        return None;
    }
    Some(upgraded)
}

/// Takes the slot and opens the session (the caller checked that a slot is free).
fn open(
    core: &Core,
    params: Option<ListenParams>,
    settings: Option<Arc<UserSettings>>,
) -> Upgraded {
    let slot = match (params, settings) {
        (Some(params), Some(settings)) => outputs::open_session(core, params, settings),
        _ => Slot::new(None, super::streams::Streams::none()),
    };
    let key = core.slots.insert(slot).expect("checked not full");
    core.session_opened();
    Upgraded {
        key,
        echo: params.is_none(),
    }
}

/// Completes the upgrade and closes at once: 1001 while draining, 1013 when full. The client
/// reconnects through its load balancer; its circuit breaker counts nothing.
async fn turn_away(
    core: &Core,
    stream: &TcpStream,
    fd: RawFd,
    key: &[u8; WEBSOCKET_KEY_BYTES],
    reason: TurnAway,
    deadline: Instant,
) {
    core.shared.metrics.turned_away(reason).inc();
    let (code, text) = match reason {
        TurnAway::Draining => (close::GOING_AWAY, "draining: reconnect to another instance"),
        TurnAway::Full => (close::TRY_AGAIN_LATER, "full: reconnect later"),
    };
    let mut out = [0u8; SWITCHING_PROTOCOLS_BYTES_MAX + CLOSE_FRAME_BYTES_MAX];
    let head = write_switching_protocols(&mut out, &accept_key(key));
    let close_len = frame::encode_close(code, text, &mut out[head..]);
    if write_all(stream, fd, &out[..head + close_len], deadline).await {
        linger(stream, fd).await;
    }
}

/// Answers a refused request with its status and one-line reason.
async fn refuse(core: &Core, stream: &TcpStream, fd: RawFd, refused: Refused, deadline: Instant) {
    let (refusal, status, reason) = refused;
    core.shared.metrics.refused(refusal).inc();
    let retry: &[(&str, &str)] = if status == 503 {
        &[("Retry-After", RETRY_AFTER_S)]
    } else {
        &[]
    };
    let mut body = reason.as_bytes().to_vec();
    body.push(b'\n');
    let mut out = Vec::new();
    write_response(&mut out, status, "text/plain; charset=utf-8", retry, &body);
    if write_all(stream, fd, &out, deadline).await {
        linger(stream, fd).await;
    }
}

/// The user's settings: from the file or a fresh cache entry at once, else fetched through
/// egress within the settings timeout (and the handshake deadline). Failure → 503.
async fn settings_for(
    core: &Core,
    uid: &Id,
    deadline: Instant,
) -> Result<Arc<UserSettings>, Refused> {
    let shared = &core.shared;
    if let Some(settings) = shared.settings.cached(uid) {
        if shared.settings.http().is_some() {
            shared.egress_metrics.settings_cache_hits.inc();
        }
        return Ok(settings);
    }
    shared.egress_metrics.settings_cache_misses.inc();
    const UNAVAILABLE: Refused = (Refusal::Settings, 503, "cannot load the user's settings");
    if !core.egress.start_settings_fetch() {
        return Err((
            Refusal::Settings,
            503,
            "too many settings fetches in flight",
        ));
    }
    let (reply, answer) = futures_channel::oneshot::channel();
    let job = Job {
        ticket: EgressTicket {
            key: usize::MAX,
            generation: 0,
        },
        session: None,
        work: Box::new(Work::Settings { uid: *uid, reply }),
        bytes: 0,
    };
    if core.egress.link.submit(job).is_err() {
        core.egress.settings_fetched();
        return Err(UNAVAILABLE);
    }
    // Egress applies the settings timeout to the request; this bound only backs it up.
    let wait = Duration::from_millis(shared.config.settings_timeout_ms) + SETTINGS_WAIT_MARGIN;
    let until = deadline.min(Instant::now() + wait);
    let answer = monoio::time::timeout_at(until.into(), answer).await;
    core.egress.settings_fetched();
    match answer {
        Ok(Ok(Ok(settings))) => Ok(settings),
        _ => Err(UNAVAILABLE),
    }
}

/// Writes all of `bytes` before `deadline`; false if the peer is gone or too slow.
async fn write_all(stream: &TcpStream, fd: RawFd, bytes: &[u8], deadline: Instant) -> bool {
    let mut sent = 0;
    while sent < bytes.len() {
        match outbound::send_now(fd, &[&bytes[sent..]]) {
            Ok(0) => {
                match monoio::time::timeout_at(deadline.into(), stream.writable(false)).await {
                    Ok(Ok(())) => {}
                    _ => return false,
                }
            }
            Ok(n) => sent += n,
            Err(_) => return false,
        }
    }
    true
}

/// Half-closes, then reads and drops input until the client closes too, for at most
/// [`LINGER_MAX`], so the answer just written is not lost to a reset.
async fn linger(stream: &TcpStream, fd: RawFd) {
    // SAFETY: shutdown on our own descriptor; an error (peer gone) changes nothing.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    let until = Instant::now() + LINGER_MAX;
    loop {
        match monoio::time::timeout_at(until.into(), stream.readable(false)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        match outbound::discard_available(fd) {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
    }
}
