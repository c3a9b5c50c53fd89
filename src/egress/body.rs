//! Request bodies (docs/downstream.md §1, §3, §4), built on the egress thread from what a session
//! handed over.
//!
//! Invariant: pure functions; segments and 104 fields are copied as the client wrote them (they
//! were validated as JSON when decoded), so a body is valid JSON whenever its inputs were.

use crate::id::Id;
use crate::protocol;

/// `{"session_id": uid, "segments": [...]}`: a transcript item for an app.
pub fn app_transcript(uid: &Id, segments: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(segments.len() + 64);
    out.extend_from_slice(b"{\"session_id\":\"");
    out.extend_from_slice(uid.as_str().as_bytes());
    out.extend_from_slice(b"\",\"segments\":");
    out.extend_from_slice(segments.as_bytes());
    out.push(b'}');
    out
}

/// `{"segments": [...], "session_id": uid}`: a transcript item for the user's realtime webhook.
pub fn transcript_webhook(uid: &Id, segments: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(segments.len() + 64);
    out.extend_from_slice(b"{\"segments\":");
    out.extend_from_slice(segments.as_bytes());
    out.extend_from_slice(b",\"session_id\":\"");
    out.extend_from_slice(uid.as_str().as_bytes());
    out.extend_from_slice(b"\"}");
    out
}

/// `{"session_id": uid, "conversation_id": id or null, "segments": [...]}`: a transcript item for
/// a global hook.
pub fn transcript_hook(uid: &Id, conversation: Option<&Id>, segments: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(segments.len() + 256);
    out.extend_from_slice(b"{\"session_id\":\"");
    out.extend_from_slice(uid.as_str().as_bytes());
    out.extend_from_slice(b"\",\"conversation_id\":");
    match conversation {
        Some(id) => {
            out.push(b'"');
            out.extend_from_slice(id.as_str().as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"segments\":");
    out.extend_from_slice(segments.as_bytes());
    out.push(b'}');
    out
}

/// The 104 payload with every field kept, plus `"uid"` last (a `uid` the client sent is
/// replaced: a session only processes its own user's conversations). `None` if the payload is
/// not a JSON object.
pub fn process(uid: &Id, payload: &str) -> Option<Vec<u8>> {
    let mut fields = Vec::with_capacity(payload.len() + 1);
    protocol::copy_fields(&mut fields, payload, &["uid"]).ok()?;
    let mut out = Vec::with_capacity(fields.len() + uid.as_str().len() + 16);
    out.push(b'{');
    if let Some(rest) = fields.strip_prefix(b",") {
        out.extend_from_slice(rest);
        out.push(b',');
    }
    out.extend_from_slice(b"\"uid\":\"");
    out.extend_from_slice(uid.as_str().as_bytes());
    out.extend_from_slice(b"\"}");
    Some(out)
}

/// `{"uid", "person_id", "conversation_id", "segment_ids", "sample_rate"}`: a due speaker-sample
/// request. `segment_ids` is the JSON array text of the 105.
pub fn speaker_sample(
    uid: &Id,
    person: &Id,
    conversation: &Id,
    segment_ids: &str,
    sample_rate_hz: u32,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(segment_ids.len() + 448);
    for (key, id) in [
        ("{\"uid\":\"", uid),
        ("\",\"person_id\":\"", person),
        ("\",\"conversation_id\":\"", conversation),
    ] {
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(id.as_str().as_bytes());
    }
    out.extend_from_slice(b"\",\"segment_ids\":");
    out.extend_from_slice(segment_ids.as_bytes());
    out.extend_from_slice(format!(",\"sample_rate\":{sample_rate_hz}}}").as_bytes());
    out
}

/// `{"uid", "app_id" or null, "message"}`: a webhook's message relayed to the backend.
pub fn relay(uid: &Id, app_id: Option<&str>, message: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Relay<'a> {
        uid: &'a str,
        app_id: Option<&'a str>,
        message: &'a str,
    }
    let relay = Relay {
        uid: uid.as_str(),
        app_id,
        message,
    };
    serde_json::to_vec(&relay).expect("strings always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn id(text: &str) -> Id {
        Id::parse(text.as_bytes()).unwrap()
    }

    fn parse(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn transcript_bodies_have_the_documented_shapes() {
        let segments = r#"[{"text":"hi","start":0.5}]"#;
        assert_eq!(
            app_transcript(&id("u1"), segments),
            br#"{"session_id":"u1","segments":[{"text":"hi","start":0.5}]}"#
        );
        assert_eq!(
            transcript_webhook(&id("u1"), segments),
            br#"{"segments":[{"text":"hi","start":0.5}],"session_id":"u1"}"#
        );
        assert_eq!(
            parse(&transcript_hook(&id("u1"), Some(&id("c1")), segments)),
            json!({"session_id": "u1", "conversation_id": "c1", "segments": [{"text": "hi", "start": 0.5}]})
        );
        assert_eq!(
            parse(&transcript_hook(&id("u1"), None, "[]")),
            json!({"session_id": "u1", "conversation_id": null, "segments": []})
        );
    }

    #[test]
    fn process_body_keeps_every_field_in_order_and_sets_uid() {
        let body = process(
            &id("u1"),
            r#"{"conversation_id":"c1","language":"en","byok_keys":{"a":"b"},"uid":"someone-else"}"#,
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"conversation_id":"c1","language":"en","byok_keys":{"a":"b"},"uid":"u1"}"#
        );
        assert_eq!(process(&id("u1"), "{}").unwrap(), br#"{"uid":"u1"}"#);
        assert!(process(&id("u1"), "[1]").is_none());
    }

    #[test]
    fn speaker_sample_and_relay_bodies() {
        assert_eq!(
            parse(&speaker_sample(
                &id("u1"),
                &id("p1"),
                &id("c1"),
                r#"["s1","s2"]"#,
                16000
            )),
            json!({"uid": "u1", "person_id": "p1", "conversation_id": "c1", "segment_ids": ["s1", "s2"], "sample_rate": 16000})
        );
        assert_eq!(
            relay(&id("u1"), None, "hello there"),
            br#"{"uid":"u1","app_id":null,"message":"hello there"}"#
        );
        assert_eq!(
            relay(&id("u1"), Some("app-1"), "say \"hi\""),
            br#"{"uid":"u1","app_id":"app-1","message":"say \"hi\""}"#
        );
    }
}
