//! What a downstream's answer means: the 201 a process-conversation call becomes
//! (docs/downstream.md §3) and the message a webhook's answer may carry for the response relay
//! (§1).
//!
//! Invariant: pure functions of (status, body); every answer maps to exactly one outcome.

use crate::id::Id;
use crate::protocol::{self, ResultOutcome};

/// Longest 201 error reason this module produces (`http_` and a status code).
const REASON_BYTES_MAX: usize = 32;
/// Room around the merged fields in a 201: header, conversation id (≤ 128), keys.
const REPLY_OVERHEAD_BYTES: usize = 256;

/// How a process-conversation call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessOutcome {
    /// 2xx with a JSON object: its text, merged into the 201.
    Success(String),
    /// 404.
    NotFound,
    /// Anything else; the reason is the 201's `error`.
    Failed(FailReason),
    /// No answer within the processor timeout.
    TimedOut,
}

/// Why a call failed, as the 201 `error` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// A status other than 2xx and 404.
    Status(u16),
    /// The processor could not be reached.
    ConnectFailed,
    /// The connection broke mid-request or mid-answer.
    RequestFailed,
    /// 2xx, but the body is not a JSON object.
    BadResponse,
    /// The answer is longer than `processor_response_bytes_max`.
    ResponseTooLarge,
}

impl ProcessOutcome {
    /// The outcome of an answer with `status` and `body`.
    pub fn of_answer(status: u16, body: &[u8]) -> ProcessOutcome {
        match status {
            200..=299 => match std::str::from_utf8(body) {
                Ok(text) if is_json_object(text) => ProcessOutcome::Success(text.to_owned()),
                _ => ProcessOutcome::Failed(FailReason::BadResponse),
            },
            404 => ProcessOutcome::NotFound,
            other => ProcessOutcome::Failed(FailReason::Status(other)),
        }
    }

    /// The `result` label of `pusher_process_calls_done_total`.
    pub fn label(&self) -> &'static str {
        match self {
            ProcessOutcome::Success(_) => "success",
            ProcessOutcome::NotFound => "not_found",
            ProcessOutcome::Failed(_) => "error",
            ProcessOutcome::TimedOut => "timeout",
        }
    }

    /// The 201 payload (`u32 LE 201 ‖ JSON`) for `conversation`.
    pub fn reply(&self, conversation: &Id) -> Vec<u8> {
        let mut reason = [0u8; REASON_BYTES_MAX];
        let outcome = match self {
            ProcessOutcome::Success(fields) => ResultOutcome::Success {
                merged_fields: Some(fields),
            },
            ProcessOutcome::NotFound => ResultOutcome::Error("conversation_not_found"),
            ProcessOutcome::TimedOut => ResultOutcome::Error("timeout"),
            ProcessOutcome::Failed(why) => ResultOutcome::Error(why.text(&mut reason)),
        };
        let merged = match self {
            ProcessOutcome::Success(fields) => fields.len(),
            _ => 0,
        };
        let mut out = vec![0u8; merged + REPLY_OVERHEAD_BYTES];
        let len = protocol::encode_result(&mut out, conversation, outcome).expect(
            "the buffer holds the merged fields and the overhead; the fields are an object",
        );
        out.truncate(len);
        out
    }
}

impl FailReason {
    fn text(self, buf: &mut [u8; REASON_BYTES_MAX]) -> &str {
        match self {
            FailReason::Status(status) => {
                use std::io::Write;
                let mut cursor = std::io::Cursor::new(&mut buf[..]);
                write!(cursor, "http_{status}").expect("fits REASON_BYTES_MAX");
                let len = cursor.position() as usize;
                std::str::from_utf8(&buf[..len]).expect("ASCII")
            }
            FailReason::ConnectFailed => "connect_failed",
            FailReason::RequestFailed => "request_failed",
            FailReason::BadResponse => "bad_response",
            FailReason::ResponseTooLarge => "response_too_large",
        }
    }
}

fn is_json_object(text: &str) -> bool {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    serde::de::Deserializer::deserialize_map(&mut deserializer, serde::de::IgnoredAny).is_ok()
        && deserializer.end().is_ok()
}

/// The message to relay from a webhook's answer: `200` with a JSON object whose `message` is a
/// string longer than 5 characters.
pub fn relay_message(status: u16, body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        message: Option<serde_json::Value>,
    }
    if status != 200 {
        return None;
    }
    let answer: Answer = serde_json::from_slice(body).ok()?;
    match answer.message? {
        serde_json::Value::String(message) if message.chars().count() > 5 => Some(message),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn reply_json(outcome: &ProcessOutcome) -> Value {
        let id = Id::parse(b"c1").unwrap();
        let payload = outcome.reply(&id);
        assert_eq!(payload[..4], 201u32.to_le_bytes());
        serde_json::from_slice(&payload[4..]).unwrap()
    }

    #[test]
    fn answers_map_to_the_documented_201s() {
        let success = ProcessOutcome::of_answer(
            200,
            br#"{"foo":1,"success":false,"conversation_id":"x","memory":{"a":[1]}}"#,
        );
        assert_eq!(
            reply_json(&success),
            json!({"conversation_id": "c1", "success": true, "foo": 1, "memory": {"a": [1]}})
        );
        assert_eq!(
            reply_json(&ProcessOutcome::of_answer(404, b"")),
            json!({"conversation_id": "c1", "error": "conversation_not_found"})
        );
        assert_eq!(
            reply_json(&ProcessOutcome::of_answer(500, b"{}")),
            json!({"conversation_id": "c1", "error": "http_500"})
        );
        assert_eq!(
            reply_json(&ProcessOutcome::of_answer(204, b"")),
            json!({"conversation_id": "c1", "error": "bad_response"})
        );
        assert_eq!(
            reply_json(&ProcessOutcome::of_answer(200, b"[1,2]")),
            json!({"conversation_id": "c1", "error": "bad_response"})
        );
        assert_eq!(
            reply_json(&ProcessOutcome::TimedOut),
            json!({"conversation_id": "c1", "error": "timeout"})
        );
        assert_eq!(
            reply_json(&ProcessOutcome::Failed(FailReason::ConnectFailed)),
            json!({"conversation_id": "c1", "error": "connect_failed"})
        );
    }

    #[test]
    fn only_long_string_messages_of_200_answers_are_relayed() {
        assert_eq!(
            relay_message(200, br#"{"message":"hello there"}"#).as_deref(),
            Some("hello there")
        );
        assert_eq!(relay_message(200, br#"{"message":"hello"}"#), None);
        assert_eq!(relay_message(200, br#"{"message":12345678}"#), None);
        assert_eq!(relay_message(201, br#"{"message":"hello there"}"#), None);
        assert_eq!(relay_message(200, b"not json"), None);
        assert_eq!(relay_message(200, br#"{"other":"hello there"}"#), None);
    }
}
