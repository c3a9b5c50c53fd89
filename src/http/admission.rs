//! Routing and the upgrade rules of docs/protocol.md §1: which route a request names, whether its
//! token, query and WebSocket headers are acceptable. Capacity and settings are checked by the
//! server after these pass.
//!
//! Invariant: every refusal carries a status and a one-line reason; nothing here allocates.

use subtle::ConstantTimeEq;

use super::request::Request;
use crate::id::Id;
use crate::session::{SAMPLE_RATE_HZ_MAX, SAMPLE_RATE_HZ_MIN};

/// The path of the session upgrade (docs/protocol.md §1).
pub const LISTEN_PATH: &str = "/v1/trigger/listen";
/// The echo WebSocket's path, served only with `test_echo_route` (Autobahn).
pub const ECHO_PATH: &str = "/test/echo";
/// The path that begins the drain (`POST`, loopback peers only; docs/protocol.md §5).
pub const DRAIN_PATH: &str = "/__internal/drain";

/// Sample rate when the query has none (docs/protocol.md §1).
pub const SAMPLE_RATE_HZ_DEFAULT: u32 = 8_000;

/// What a request's path names (docs/protocol.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/v1/trigger/listen`: a session upgrade.
    Listen,
    /// `/test/echo`: an echo WebSocket (only with `test_echo_route`).
    Echo,
    /// `/health`: liveness.
    Health,
    /// `/ready` (the Omi chart's readiness probe) and `/readyz` (kept for existing users).
    Ready,
    /// `POST /__internal/drain`: the chart's preStop hook.
    Drain,
    /// `/metrics`: Prometheus text, guarded by `metrics_token` when set.
    Metrics,
    /// `/debug/memory`: memory figures as JSON, guarded like `/metrics`.
    DebugMemory,
    /// Any other path: 404.
    NotFound,
}

/// The route of `path`; the echo route exists only when enabled by the test flag.
pub fn route(path: &str, echo_enabled: bool) -> Route {
    match path {
        LISTEN_PATH => Route::Listen,
        ECHO_PATH if echo_enabled => Route::Echo,
        "/health" => Route::Health,
        "/ready" | "/readyz" => Route::Ready,
        DRAIN_PATH => Route::Drain,
        "/metrics" => Route::Metrics,
        "/debug/memory" => Route::DebugMemory,
        _ => Route::NotFound,
    }
}

/// A refusal: status code and a one-line plain-text reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status to answer with.
    pub status: u16,
    /// The one-line plain-text body.
    pub reason: &'static str,
}

const fn refuse(status: u16, reason: &'static str) -> Refusal {
    Refusal { status, reason }
}

/// What a listen upgrade asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenParams {
    /// The `uid`, percent-decoded and validated.
    pub uid: Id,
    /// The `sample_rate` in Hz, within `SAMPLE_RATE_HZ_MIN ..= SAMPLE_RATE_HZ_MAX`, default
    /// [`SAMPLE_RATE_HZ_DEFAULT`].
    pub sample_rate_hz: u32,
}

/// The authorization scheme pusher accepts.
const BEARER: &[u8] = b"bearer";

/// Checks `Authorization: Bearer <token>` in constant time when a token is configured.
pub fn check_bearer(request: &Request<'_>, token: Option<&str>) -> Result<(), Refusal> {
    let Some(token) = token else {
        return Ok(());
    };
    // The scheme is case-insensitive (RFC 9110 §11.1); one or more spaces follow it.
    let presented = request
        .authorization
        .and_then(|value| {
            let (scheme, rest) = value.split_at_checked(BEARER.len())?;
            scheme
                .eq_ignore_ascii_case(BEARER)
                .then(|| rest.trim_ascii_start())
                .filter(|_| rest.first() == Some(&b' '))
        })
        .unwrap_or(b"");
    if bool::from(presented.ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(refuse(401, "missing or wrong bearer token"))
    }
}

/// Checks the RFC 6455 handshake headers; returns the client's key.
pub fn check_websocket<'b>(request: &Request<'b>) -> Result<&'b [u8], Refusal> {
    if request.method != "GET" {
        return Err(refuse(405, "WebSocket upgrades use GET"));
    }
    if !request.upgrade_websocket || !request.connection_upgrade {
        return Err(refuse(
            400,
            "expected Upgrade: websocket and Connection: Upgrade",
        ));
    }
    if request.websocket_version != Some(b"13") {
        return Err(refuse(426, "Sec-WebSocket-Version must be 13"));
    }
    match request.websocket_key {
        Some(key) if key.len() == 24 => Ok(key),
        _ => Err(refuse(400, "Sec-WebSocket-Key must be 16 bytes in base64")),
    }
}

/// Parses `uid` and `sample_rate` from the listen query (docs/protocol.md §1).
pub fn parse_listen_query(query: Option<&str>) -> Result<ListenParams, Refusal> {
    let mut uid = None;
    let mut sample_rate_hz = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "uid" if uid.is_some() => return Err(refuse(400, "uid given twice")),
            "uid" => uid = Some(parse_uid(value)?),
            "sample_rate" if sample_rate_hz.is_some() => {
                return Err(refuse(400, "sample_rate given twice"));
            }
            "sample_rate" => sample_rate_hz = Some(parse_sample_rate(value)?),
            _ => {}
        }
    }
    Ok(ListenParams {
        uid: uid.ok_or(refuse(400, "uid is required"))?,
        sample_rate_hz: sample_rate_hz.unwrap_or(SAMPLE_RATE_HZ_DEFAULT),
    })
}

fn parse_uid(value: &str) -> Result<Id, Refusal> {
    let mut decoded = [0u8; crate::id::ID_BYTES_MAX];
    let len = percent_decode(value.as_bytes(), &mut decoded)
        .ok_or(refuse(400, "uid must be 1-128 bytes of [A-Za-z0-9._:@-]"))?;
    Id::parse(&decoded[..len]).map_err(|_| {
        refuse(
            400,
            "uid must be 1-128 bytes of [A-Za-z0-9._:@-], not '.' or '..'",
        )
    })
}

fn parse_sample_rate(value: &str) -> Result<u32, Refusal> {
    let bad = refuse(400, "sample_rate must be an integer in 8000..=48000");
    let hz: u32 = value.parse().map_err(|_| bad)?;
    if !(SAMPLE_RATE_HZ_MIN..=SAMPLE_RATE_HZ_MAX).contains(&hz) {
        return Err(bad);
    }
    Ok(hz)
}

/// Decodes `%XX` escapes into `out`; None if an escape is malformed or `out` is too small.
fn percent_decode(input: &[u8], out: &mut [u8]) -> Option<usize> {
    let mut len = 0;
    let mut i = 0;
    while i < input.len() {
        let byte = if input[i] == b'%' {
            let hex = input.get(i + 1..i + 3)?;
            let text = std::str::from_utf8(hex).ok()?;
            i += 3;
            u8::from_str_radix(text, 16).ok()?
        } else {
            i += 1;
            input[i - 1]
        };
        *out.get_mut(len)? = byte;
        len += 1;
    }
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(authorization: Option<&'static [u8]>) -> Request<'static> {
        Request {
            method: "GET",
            path: LISTEN_PATH,
            query: None,
            upgrade_websocket: true,
            connection_upgrade: true,
            websocket_key: Some(b"dGhlIHNhbXBsZSBub25jZQ=="),
            websocket_version: Some(b"13"),
            authorization,
            accept: None,
            forwarded: false,
        }
    }

    #[test]
    fn routes() {
        assert_eq!(route("/v1/trigger/listen", false), Route::Listen);
        assert_eq!(route("/test/echo", false), Route::NotFound);
        assert_eq!(route("/test/echo", true), Route::Echo);
        assert_eq!(route("/metrics", false), Route::Metrics);
        assert_eq!(route("/ready", false), Route::Ready);
        assert_eq!(route("/readyz", false), Route::Ready);
        assert_eq!(route("/__internal/drain", false), Route::Drain);
        assert_eq!(route("/nope", false), Route::NotFound);
    }

    #[test]
    fn query_rules() {
        let p = parse_listen_query(Some("uid=abc&sample_rate=16000")).unwrap();
        assert_eq!(p.uid.as_str(), "abc");
        assert_eq!(p.sample_rate_hz, 16_000);
        let p = parse_listen_query(Some("uid=a%40b&other=1")).unwrap();
        assert_eq!(p.uid.as_str(), "a@b");
        assert_eq!(p.sample_rate_hz, 8_000);
        for bad in [
            None,
            Some(""),
            Some("uid="),
            Some("uid=.."),
            Some("uid=a/b"),
            Some("uid=a%2"),
            Some("uid=a%2Fb"),
            Some("uid=a&uid=b"),
            Some("uid=a&sample_rate=7999"),
            Some("uid=a&sample_rate=48001"),
            Some("uid=a&sample_rate=16k"),
        ] {
            let err = parse_listen_query(bad).unwrap_err();
            assert_eq!(err.status, 400, "{bad:?}");
        }
        let long = format!("uid={}", "a".repeat(129));
        assert_eq!(parse_listen_query(Some(&long)).unwrap_err().status, 400);
    }

    #[test]
    fn bearer_rules() {
        assert!(check_bearer(&request(None), None).is_ok());
        assert_eq!(
            check_bearer(&request(None), Some("t0k"))
                .unwrap_err()
                .status,
            401
        );
        assert!(check_bearer(&request(Some(b"Bearer t0k")), Some("t0k")).is_ok());
        assert!(check_bearer(&request(Some(b"Bearer t0")), Some("t0k")).is_err());
        assert!(check_bearer(&request(Some(b"Basic t0k")), Some("t0k")).is_err());
        assert!(check_bearer(&request(Some(b"bearer t0k")), Some("t0k")).is_ok());
        assert!(check_bearer(&request(Some(b"BEARER  t0k")), Some("t0k")).is_ok());
        assert!(check_bearer(&request(Some(b"Bearert0k")), Some("t0k")).is_err());
    }

    #[test]
    fn websocket_header_rules() {
        assert!(check_websocket(&request(None)).is_ok());
        let mut r = request(None);
        r.websocket_version = Some(b"8");
        assert_eq!(check_websocket(&r).unwrap_err().status, 426);
        let mut r = request(None);
        r.upgrade_websocket = false;
        assert_eq!(check_websocket(&r).unwrap_err().status, 400);
        let mut r = request(None);
        r.method = "POST";
        assert_eq!(check_websocket(&r).unwrap_err().status, 405);
        let mut r = request(None);
        r.websocket_key = Some(b"short");
        assert_eq!(check_websocket(&r).unwrap_err().status, 400);
    }
}
