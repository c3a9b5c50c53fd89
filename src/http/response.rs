//! Response encoding. Responses are small and rare next to WebSocket traffic; they are written
//! into a caller-provided buffer and the connection is closed after them (no keep-alive), except
//! the `101` that starts a session.

use std::io::Write;

/// Reason phrase of each status pusher sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// A complete response with `Connection: close`.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) {
    out.clear();
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason_phrase(status),
        body.len()
    );
    for (name, value) in extra_headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// The `101` that completes a WebSocket handshake, written into `out`; returns its length.
pub fn write_switching_protocols(out: &mut [u8], accept_key: &[u8; 28]) -> usize {
    const HEAD: &[u8] =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ";
    let len = HEAD.len() + accept_key.len() + 4;
    assert!(out.len() >= len, "101 response buffer too small");
    out[..HEAD.len()].copy_from_slice(HEAD);
    out[HEAD.len()..HEAD.len() + 28].copy_from_slice(accept_key);
    out[HEAD.len() + 28..len].copy_from_slice(b"\r\n\r\n");
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_has_length_and_close() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            503,
            "text/plain",
            &[("Retry-After", "5")],
            b"full\n",
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(text.contains("Content-Length: 5\r\n"));
        assert!(text.contains("Retry-After: 5\r\n"));
        assert!(text.ends_with("\r\n\r\nfull\n"));
    }

    #[test]
    fn switching_protocols_is_exact() {
        let mut out = [0u8; 256];
        let len = write_switching_protocols(&mut out, b"s3pPLMBiTxaQ9kYGzo+xOo6QZDg=");
        let text = std::str::from_utf8(&out[..len]).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(text.ends_with("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzo+xOo6QZDg=\r\n\r\n"));
    }
}
