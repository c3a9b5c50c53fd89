//! The server's part of the opening handshake (RFC 6455 §4.2.2).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};

/// The GUID RFC 6455 §1.3 appends to the client's key before hashing.
const HANDSHAKE_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Length of the Sec-WebSocket-Accept value: base64 of a 20-byte SHA-1 digest, padded.
pub const ACCEPT_KEY_BYTES: usize = 28;

/// Sec-WebSocket-Accept value: base64(SHA-1(key ‖ "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")), 28 ASCII bytes.
///
/// `sec_websocket_key` is the header value as received, without surrounding whitespace.
pub fn accept_key(sec_websocket_key: &[u8]) -> [u8; ACCEPT_KEY_BYTES] {
    let mut hasher = Sha1::new();
    hasher.update(sec_websocket_key);
    hasher.update(HANDSHAKE_GUID);
    let digest = hasher.finalize();
    let mut accept = [0; ACCEPT_KEY_BYTES];
    let written_bytes = STANDARD
        .encode_slice(digest, &mut accept)
        .expect("a 20-byte digest encodes to exactly 28 base64 bytes");
    debug_assert_eq!(written_bytes, ACCEPT_KEY_BYTES);
    accept
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of RFC 6455 §1.3 (also checked with `openssl sha1 -binary | base64`).
    #[test]
    fn rfc_6455_example() {
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn depends_on_every_key_byte() {
        assert_ne!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            accept_key(b"dGhlIHNhbXBsZSBub25jZA==")
        );
    }
}
