//! Request-head parsing with `httparse`.
//!
//! Invariant: a head is accepted only when it ends within `max_head_bytes` and has at most
//! [`HEADERS_MAX`] header lines; the parsed [`Request`] borrows from the caller's buffer.

/// Header lines accepted in one request head; more → 431.
pub const HEADERS_MAX: usize = 48;

/// The parts of a request head pusher looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'b> {
    /// The method, as sent (`GET`, `HEAD`, `POST`, …).
    pub method: &'b str,
    /// The request target before any `?`, not percent-decoded.
    pub path: &'b str,
    /// What follows the first `?` of the target, if it has one.
    pub query: Option<&'b str>,
    /// `Upgrade: websocket` present.
    pub upgrade_websocket: bool,
    /// `Connection` lists `upgrade`.
    pub connection_upgrade: bool,
    /// `Sec-WebSocket-Key`, trimmed.
    pub websocket_key: Option<&'b [u8]>,
    /// `Sec-WebSocket-Version`, trimmed.
    pub websocket_version: Option<&'b [u8]>,
    /// `Authorization`, trimmed.
    pub authorization: Option<&'b [u8]>,
    /// `Accept` (content negotiation of `/metrics`).
    pub accept: Option<&'b [u8]>,
    /// A `Forwarded` or `X-Forwarded-For` header is present: the request came through a proxy,
    /// whatever its peer address says.
    pub forwarded: bool,
}

/// The outcome of [`parse`] on the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'b> {
    /// The head is not complete yet; read more.
    Partial,
    /// The head ends at `head_bytes`.
    Complete {
        /// The parsed head.
        request: Request<'b>,
        /// Bytes of the head, its final blank line included; what follows is the body or the
        /// session.
        head_bytes: usize,
    },
}

/// Why a request head is refused; maps to a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Longer than allowed, or too many header lines: 431.
    TooLarge,
    /// Not HTTP/1.x: 400.
    Malformed,
}

impl HeadError {
    /// The status to answer with: 431 or 400.
    pub fn status(self) -> u16 {
        match self {
            HeadError::TooLarge => 431,
            HeadError::Malformed => 400,
        }
    }
}

/// Parses the request head at the start of `buf`.
pub fn parse(buf: &[u8], max_head_bytes: usize) -> Result<Parsed<'_>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut raw = httparse::Request::new(&mut headers);
    let status = match raw.parse(buf) {
        Ok(status) => status,
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    let head_bytes = match status {
        httparse::Status::Partial if buf.len() >= max_head_bytes => {
            return Err(HeadError::TooLarge);
        }
        httparse::Status::Partial => return Ok(Parsed::Partial),
        httparse::Status::Complete(n) if n > max_head_bytes => return Err(HeadError::TooLarge),
        httparse::Status::Complete(n) => n,
    };
    let target = raw.path.ok_or(HeadError::Malformed)?;
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let mut request = Request {
        method: raw.method.ok_or(HeadError::Malformed)?,
        path,
        query,
        upgrade_websocket: false,
        connection_upgrade: false,
        websocket_key: None,
        websocket_version: None,
        authorization: None,
        accept: None,
        forwarded: false,
    };
    for header in raw.headers.iter() {
        apply_header(&mut request, header.name, header.value);
    }
    Ok(Parsed::Complete {
        request,
        head_bytes,
    })
}

fn apply_header<'b>(request: &mut Request<'b>, name: &str, value: &'b [u8]) {
    if name.eq_ignore_ascii_case("upgrade") {
        request.upgrade_websocket = has_token(value, b"websocket");
    } else if name.eq_ignore_ascii_case("connection") {
        request.connection_upgrade = has_token(value, b"upgrade");
    } else if name.eq_ignore_ascii_case("sec-websocket-key") {
        request.websocket_key = Some(trim(value));
    } else if name.eq_ignore_ascii_case("sec-websocket-version") {
        request.websocket_version = Some(trim(value));
    } else if name.eq_ignore_ascii_case("authorization") {
        request.authorization = Some(trim(value));
    } else if name.eq_ignore_ascii_case("accept") {
        request.accept = Some(trim(value));
    } else if name.eq_ignore_ascii_case("forwarded") || name.eq_ignore_ascii_case("x-forwarded-for")
    {
        request.forwarded = true;
    }
}

/// True when the comma-separated header `value` lists `token` (ASCII case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|part| trim(part).eq_ignore_ascii_case(token))
}

fn trim(value: &[u8]) -> &[u8] {
    value.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /v1/trigger/listen?uid=u1&sample_rate=16000 HTTP/1.1\r\n\
        Host: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
        Authorization: Bearer abc\r\n\r\n";

    #[test]
    fn parses_an_upgrade_request() {
        let Parsed::Complete {
            request,
            head_bytes,
        } = parse(UPGRADE, 8192).unwrap()
        else {
            panic!("incomplete");
        };
        assert_eq!(head_bytes, UPGRADE.len());
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/v1/trigger/listen");
        assert_eq!(request.query, Some("uid=u1&sample_rate=16000"));
        assert!(request.upgrade_websocket);
        assert!(request.connection_upgrade);
        assert_eq!(
            request.websocket_key,
            Some(&b"dGhlIHNhbXBsZSBub25jZQ=="[..])
        );
        assert_eq!(request.websocket_version, Some(&b"13"[..]));
        assert_eq!(request.authorization, Some(&b"Bearer abc"[..]));
        assert_eq!(request.accept, None);
        assert!(!request.forwarded);
    }

    #[test]
    fn reads_accept_and_sees_forwarding_headers() {
        for (forwarding, expected) in [
            ("", false),
            ("Forwarded: for=10.0.0.1\r\n", true),
            ("x-forwarded-for: 10.0.0.1\r\n", true),
            ("X-Forwarded-Host: a\r\n", false),
        ] {
            let head = format!(
                "POST /__internal/drain HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n{forwarding}\r\n"
            );
            let Ok(Parsed::Complete { request, .. }) = parse(head.as_bytes(), 8192) else {
                panic!("incomplete: {head}");
            };
            assert_eq!(request.accept, Some(&b"text/plain"[..]));
            assert_eq!(request.forwarded, expected, "{forwarding}");
        }
    }

    #[test]
    fn every_prefix_is_partial() {
        for end in 0..UPGRADE.len() {
            assert_eq!(
                parse(&UPGRADE[..end], 8192),
                Ok(Parsed::Partial),
                "prefix {end}"
            );
        }
    }

    #[test]
    fn oversized_and_malformed_heads_are_refused() {
        assert_eq!(parse(UPGRADE, 64), Err(HeadError::TooLarge));
        let long = vec![b'a'; 100];
        assert_eq!(parse(&long, 64), Err(HeadError::TooLarge));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=HEADERS_MAX {
            many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse(&many, 1 << 20), Err(HeadError::TooLarge));
        assert_eq!(
            parse(b"\x16\x03\x01\x02\x00", 8192),
            Err(HeadError::Malformed)
        );
    }
}
