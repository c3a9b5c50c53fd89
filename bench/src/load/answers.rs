//! The server's 201 answers to 104s (docs/protocol.md §4), as the load clients that send 104s read
//! them: which conversation id each answers and what it says.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde_json::Value;
use tokio::net::tcp::OwnedReadHalf;

use super::conn::{Pings, SharedWriter, read_frames};
use crate::frames;

/// What a 201 says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Success,
    Busy,
    /// Any other error, with its reason.
    Error(String),
}

/// The 201s one or more sessions received.
#[derive(Debug, Default)]
pub struct Answers {
    pub success: u64,
    pub busy: u64,
    pub errors: BTreeMap<String, u64>,
    /// Answers to an id answered before.
    pub repeated: u64,
    /// Answers to an id the session did not send.
    pub unknown: u64,
    /// Server messages that are not a 201 with a JSON object.
    pub malformed: u64,
}

impl Answers {
    /// Distinct ids answered.
    pub fn total(&self) -> u64 {
        self.success + self.busy + self.errors.values().sum::<u64>()
    }

    pub fn count(&mut self, kind: Kind) {
        match kind {
            Kind::Success => self.success += 1,
            Kind::Busy => self.busy += 1,
            Kind::Error(reason) => *self.errors.entry(reason).or_default() += 1,
        }
    }

    pub fn add(&mut self, other: Answers) {
        self.success += other.success;
        self.busy += other.busy;
        for (reason, count) in other.errors {
            *self.errors.entry(reason).or_default() += count;
        }
        self.repeated += other.repeated;
        self.unknown += other.unknown;
        self.malformed += other.malformed;
    }
}

/// Classifies a server message: the number `n` of its conversation id `<uid>-<n>` (`None` when
/// it is not an id of this session) and what it says. An error for a message that is not a 201
/// with a JSON object.
pub fn classify(message: &[u8], uid: &str) -> Result<(Option<u64>, Kind), String> {
    let (header, json) = message
        .split_first_chunk::<4>()
        .ok_or("a message shorter than its header")?;
    let header = u32::from_le_bytes(*header);
    if header != frames::PROCESS_RESULT {
        return Err(format!("header {header}"));
    }
    let answer: Value = serde_json::from_slice(json).map_err(|e| format!("201 JSON: {e}"))?;
    let answer = answer.as_object().ok_or("201 is not an object")?;
    let n = answer
        .get("conversation_id")
        .and_then(Value::as_str)
        .and_then(|id| id.strip_prefix(uid)?.strip_prefix('-')?.parse().ok());
    let kind = match (answer.get("success"), answer.get("error")) {
        (Some(Value::Bool(true)), _) => Kind::Success,
        (_, Some(Value::String(error))) if error == "busy" => Kind::Busy,
        (_, Some(Value::String(error))) => Kind::Error(error.clone()),
        _ => Kind::Error("neither success nor error".to_owned()),
    };
    Ok((n, kind))
}

/// Reads server frames until the end of the stream (or `until`), answering pings and sending
/// keepalive pings through `writer` until `closing` ([`read_frames`]): the ids answered, each
/// with the time its first answer was read off the socket; the answers; the read error if any;
/// and the pings.
pub async fn read_201s(
    reader: OwnedReadHalf,
    writer: SharedWriter,
    closing: Arc<AtomicBool>,
    uid: &str,
    until: Instant,
) -> (HashMap<u64, Instant>, Answers, Option<String>, Pings) {
    let mut answered = HashMap::new();
    let mut answers = Answers::default();
    let (pings, outcome) =
        read_frames(
            reader,
            writer,
            closing,
            until,
            |payload, read_at| match classify(payload, uid) {
                Ok((Some(n), kind)) => match answered.entry(n) {
                    Entry::Vacant(slot) => {
                        slot.insert(read_at);
                        answers.count(kind);
                    }
                    Entry::Occupied(_) => answers.repeated += 1,
                },
                Ok((None, _)) => answers.unknown += 1,
                Err(_) => answers.malformed += 1,
            },
        )
        .await;
    (answered, answers, outcome.err(), pings)
}

/// A fake server's side of a 104 test: what it writes and how it waits for the client's Close.
#[cfg(test)]
pub mod fake_server {
    use pusher::websocket::Opcode;
    use pusher::websocket::frame::encode_header;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    use crate::frames;

    /// Server frames carrying a 201 with each of `answers` (JSON text).
    pub fn answer_frames(answers: &[&str]) -> Vec<u8> {
        let mut wire = Vec::new();
        for answer in answers {
            let message = frames::message(frames::PROCESS_RESULT, answer.as_bytes());
            let mut header = [0u8; 14];
            let len = encode_header(Opcode::Binary, message.len(), &mut header);
            wire.extend_from_slice(&header[..len]);
            wire.extend_from_slice(&message);
        }
        wire
    }

    /// Reads until the client's Close (its last frame).
    pub async fn read_until_close(stream: &mut TcpStream) {
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        while !received.ends_with(&frames::close_frame()) {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0);
            received.extend_from_slice(&buf[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(json: &str) -> Vec<u8> {
        frames::message(frames::PROCESS_RESULT, json.as_bytes())
    }

    #[test]
    fn answers_are_classified_by_id_and_kind() {
        let uid = "chaos-proc-3";
        assert_eq!(
            classify(
                &result(r#"{"conversation_id":"chaos-proc-3-17","success":true,"processed":true}"#),
                uid
            ),
            Ok((Some(17), Kind::Success))
        );
        assert_eq!(
            classify(
                &result(r#"{"conversation_id":"chaos-proc-3-0","error":"busy"}"#),
                uid
            ),
            Ok((Some(0), Kind::Busy))
        );
        assert_eq!(
            classify(
                &result(r#"{"conversation_id":"chaos-proc-3-2","error":"timeout"}"#),
                uid
            ),
            Ok((Some(2), Kind::Error("timeout".to_owned())))
        );
        // Another session's id, or none.
        assert_eq!(
            classify(
                &result(r#"{"conversation_id":"chaos-proc-31-2","success":true}"#),
                uid
            ),
            Ok((None, Kind::Success))
        );
        assert_eq!(
            classify(&result(r#"{"success":false}"#), uid),
            Ok((None, Kind::Error("neither success nor error".to_owned())))
        );
        assert!(classify(&result("[]"), uid).is_err());
        assert!(classify(&result("{"), uid).is_err());
        assert!(classify(&frames::message(frames::TRANSCRIPT, b"{}"), uid).is_err());
        assert!(classify(&[201, 0], uid).is_err());
    }

    #[test]
    fn answers_add_up() {
        let mut total = Answers::default();
        let mut one = Answers::default();
        one.count(Kind::Success);
        one.count(Kind::Busy);
        one.count(Kind::Busy);
        one.count(Kind::Error("timeout".to_owned()));
        one.repeated = 1;
        total.add(one);
        let mut two = Answers::default();
        two.count(Kind::Error("timeout".to_owned()));
        two.count(Kind::Error("http_500".to_owned()));
        two.malformed = 2;
        total.add(two);
        assert_eq!((total.success, total.busy, total.total()), (1, 2, 6));
        assert_eq!(total.errors["timeout"], 2);
        assert_eq!((total.repeated, total.malformed), (1, 2));
    }
}
