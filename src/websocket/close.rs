//! WebSocket close status codes (RFC 6455 §7.4).

/// Normal closure: the purpose of the connection is fulfilled.
pub const NORMAL: u16 = 1000;
/// The server is going away (drain) or the peer was idle too long.
pub const GOING_AWAY: u16 = 1001;
/// The peer broke the framing rules of RFC 6455.
pub const PROTOCOL_ERROR: u16 = 1002;
/// The peer sent a kind of message pusher does not accept (a text message).
pub const UNSUPPORTED_DATA: u16 = 1003;
/// Counted, never sent: the peer's Close carried no code (RFC 6455 §7.1.5).
pub const NO_STATUS_RECEIVED: u16 = 1005;
/// Counted, never sent: the session ended without a close handshake (RFC 6455 §7.1.5).
pub const CLOSED_ABNORMALLY: u16 = 1006;
/// A message's content is inconsistent with its type (invalid UTF-8, bad JSON).
pub const INVALID_PAYLOAD: u16 = 1007;
/// The peer broke a rule not covered by a more specific code.
pub const POLICY_VIOLATION: u16 = 1008;
/// A message is larger than the configured maximum.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// pusher hit an unexpected condition.
pub const INTERNAL_ERROR: u16 = 1011;
/// pusher is overloaded; the client should reconnect later.
pub const TRY_AGAIN_LATER: u16 = 1013;

/// Whether a peer may put `code` in a Close frame (RFC 6455 §7.4): 1000-1003, 1007-1014, 3000-4999.
///
/// 1004 is reserved, 1005, 1006 and 1015 are reserved for reporting and must never be sent,
/// 1016-2999 are unassigned or reserved for future RFCs, 3000-4999 belong to libraries and
/// applications, and everything below 1000 or above 4999 is out of range.
pub fn is_valid_on_wire(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_table() {
        let table = [
            (0, false),
            (999, false),
            (1000, true),
            (1001, true),
            (1002, true),
            (1003, true),
            (1004, false),
            (1005, false),
            (1006, false),
            (1007, true),
            (1011, true),
            (1012, true),
            (1013, true),
            (1014, true),
            (1015, false),
            (1016, false),
            (2999, false),
            (3000, true),
            (4999, true),
            (5000, false),
            (u16::MAX, false),
        ];
        for (code, valid) in table {
            assert_eq!(is_valid_on_wire(code), valid, "code {code}");
        }
    }

    #[test]
    fn codes_pusher_sends_are_valid_on_wire() {
        let sent = [
            NORMAL,
            GOING_AWAY,
            PROTOCOL_ERROR,
            UNSUPPORTED_DATA,
            INVALID_PAYLOAD,
            POLICY_VIOLATION,
            MESSAGE_TOO_BIG,
            INTERNAL_ERROR,
            TRY_AGAIN_LATER,
        ];
        assert!(sent.into_iter().all(is_valid_on_wire));
    }
}
