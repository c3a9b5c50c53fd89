//! Inbound frame decoder (docs/protocol.md §2).
//!
//! Invariant: a successful decode builds nothing: raw JSON values are slices of the message, ids
//! are parsed inline from the (possibly unescaped) JSON string, and unknown fields are skipped as
//! `IgnoredAny`. The only heap use left is serde_json's internal scratch buffer (a few bytes), which
//! it fills when a skipped or raw value nests containers (a 102's segments always do) or when an id
//! has escapes: at most one small allocation per JSON parse, none for 100, 101 and 103.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::error::Category;
use serde_json::value::RawValue;

use super::{
    AUDIO, AUDIO_TIMESTAMP_BYTES, AUDIO_TIMESTAMP_SECONDS_MAX, CONVERSATION, FrameError,
    HEADER_BYTES, HEARTBEAT, Inbound, JSON_DEPTH_MAX, PROCESS_CONVERSATION, SPEAKER_SAMPLE,
    TRANSCRIPT,
};
use crate::id::{Id, IdError};

/// Decodes one binary WebSocket message.
pub fn decode(message: &[u8]) -> Result<Inbound<'_>, FrameError> {
    let Some((header, payload)) = message.split_first_chunk::<HEADER_BYTES>() else {
        return Err(FrameError::Truncated);
    };
    match u32::from_le_bytes(*header) {
        HEARTBEAT => Ok(Inbound::Heartbeat),
        AUDIO => decode_audio(payload),
        TRANSCRIPT => decode_transcript(utf8(payload)?),
        CONVERSATION => decode_conversation(utf8(payload)?),
        PROCESS_CONVERSATION => decode_process_conversation(utf8(payload)?),
        SPEAKER_SAMPLE => decode_speaker_sample(utf8(payload)?),
        other => Ok(Inbound::Unknown(other)),
    }
}

fn decode_audio(payload: &[u8]) -> Result<Inbound<'_>, FrameError> {
    let Some((timestamp, pcm)) = payload.split_first_chunk::<AUDIO_TIMESTAMP_BYTES>() else {
        return Err(FrameError::Truncated);
    };
    let timestamp = f64::from_le_bytes(*timestamp);
    // The range check is false for NaN, so NaN is refused too.
    if !(0.0..=AUDIO_TIMESTAMP_SECONDS_MAX).contains(&timestamp) {
        return Err(FrameError::BadTimestamp);
    }
    Ok(Inbound::Audio { timestamp, pcm })
}

/// The fields of a 102 pusher reads (any other field is skipped).
struct TranscriptWire<'a> {
    segments: &'a RawValue,
    memory_id: Option<IdField>,
}

impl<'de> Deserialize<'de> for TranscriptWire<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = TranscriptWire<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a transcript object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (mut segments, mut memory_id) = (None, None);
                while let Some(field) = map.next_key_seed(FieldSeed(&["segments", "memory_id"]))? {
                    match field {
                        Some(0) => segments = Some(map.next_value::<&'de RawValue>()?),
                        Some(1) => memory_id = map.next_value::<Option<IdField>>()?,
                        _ => drop(map.next_value::<IgnoredAny>()?),
                    }
                }
                Ok(TranscriptWire {
                    segments: segments.ok_or_else(|| de::Error::missing_field("segments"))?,
                    memory_id,
                })
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

fn decode_transcript(text: &str) -> Result<Inbound<'_>, FrameError> {
    let wire: TranscriptWire<'_> = json_object(text)?;
    let segments = wire.segments.get();
    if !segments.starts_with('[') {
        return Err(FrameError::WrongShape);
    }
    let memory_id = match wire.memory_id {
        None | Some(IdField(Err(IdError::Empty))) => None,
        Some(IdField(id)) => Some(id.map_err(FrameError::BadId)?),
    };
    Ok(Inbound::Transcript {
        segments,
        memory_id,
    })
}

fn decode_conversation(text: &str) -> Result<Inbound<'_>, FrameError> {
    let id = Id::parse(text.as_bytes()).map_err(FrameError::BadId)?;
    Ok(Inbound::Conversation(id))
}

/// The field of a 104 pusher reads (the payload is passed on whole).
struct ProcessConversationWire {
    conversation_id: IdField,
}

impl<'de> Deserialize<'de> for ProcessConversationWire {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = ProcessConversationWire;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a process-conversation object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut conversation_id = None;
                while let Some(field) = map.next_key_seed(FieldSeed(&["conversation_id"]))? {
                    match field {
                        Some(0) => conversation_id = Some(map.next_value::<IdField>()?),
                        _ => drop(map.next_value::<IgnoredAny>()?),
                    }
                }
                Ok(ProcessConversationWire {
                    conversation_id: conversation_id
                        .ok_or_else(|| de::Error::missing_field("conversation_id"))?,
                })
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

fn decode_process_conversation(text: &str) -> Result<Inbound<'_>, FrameError> {
    let wire: ProcessConversationWire = json_object(text)?;
    let conversation_id = wire.conversation_id.0.map_err(FrameError::BadId)?;
    Ok(Inbound::ProcessConversation {
        conversation_id,
        payload: text.trim_matches(is_json_whitespace),
    })
}

/// The fields of a 105.
struct SpeakerSampleWire<'a> {
    person_id: Option<IdField>,
    conversation_id: Option<IdField>,
    segment_ids: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for SpeakerSampleWire<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = SpeakerSampleWire<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a speaker-sample object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let names = &["person_id", "conversation_id", "segment_ids"];
                let mut wire = SpeakerSampleWire {
                    person_id: None,
                    conversation_id: None,
                    segment_ids: None,
                };
                while let Some(field) = map.next_key_seed(FieldSeed(names))? {
                    match field {
                        Some(0) => wire.person_id = map.next_value()?,
                        Some(1) => wire.conversation_id = map.next_value()?,
                        Some(2) => {
                            let raw: &'de RawValue = map.next_value()?;
                            wire.segment_ids = (raw.get() != "null").then_some(raw);
                        }
                        _ => drop(map.next_value::<IgnoredAny>()?),
                    }
                }
                Ok(wire)
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// Which of `names` a JSON object key is (None: a key pusher does not read). The wire structs
/// take a repeated key again, so the last one wins, as in the Python service (`json.loads`),
/// which accepted duplicate keys.
struct FieldSeed(&'static [&'static str]);

impl<'de> de::DeserializeSeed<'de> for FieldSeed {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for FieldSeed {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|name| *name == key))
    }
}

/// Shape errors come first, then emptiness (ignored), then id validity: a request that is ignored
/// anyway is not refused for an id it would never use.
fn decode_speaker_sample(text: &str) -> Result<Inbound<'_>, FrameError> {
    let wire: SpeakerSampleWire<'_> = json_object(text)?;
    let segment_count = match wire.segment_ids {
        None => 0,
        Some(raw) => string_array_len(raw.get())?,
    };
    let (Some(IdField(person_id)), Some(IdField(conversation_id)), Some(segment_ids)) =
        (wire.person_id, wire.conversation_id, wire.segment_ids)
    else {
        return Ok(Inbound::Ignored105);
    };
    if person_id == Err(IdError::Empty)
        || conversation_id == Err(IdError::Empty)
        || segment_count == 0
    {
        return Ok(Inbound::Ignored105);
    }
    Ok(Inbound::SpeakerSample {
        person_id: person_id.map_err(FrameError::BadId)?,
        conversation_id: conversation_id.map_err(FrameError::BadId)?,
        segment_ids: segment_ids.get(),
    })
}

fn utf8(payload: &[u8]) -> Result<&str, FrameError> {
    std::str::from_utf8(payload).map_err(|_| FrameError::InvalidUtf8)
}

fn is_json_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// Parses `text` as a JSON object into `T`. A derived struct also accepts a JSON array, so the
/// shape of the text itself is checked too.
fn json_object<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, FrameError> {
    if nested_deeper_than(text, JSON_DEPTH_MAX) {
        return Err(FrameError::TooDeep);
    }
    let value = serde_json::from_str(text).map_err(|error| match error.classify() {
        Category::Data => FrameError::WrongShape,
        Category::Syntax | Category::Eof | Category::Io => FrameError::InvalidJson,
    })?;
    if !text.trim_start_matches(is_json_whitespace).starts_with('{') {
        return Err(FrameError::WrongShape);
    }
    Ok(value)
}

/// True when arrays and objects in `text` nest deeper than `max`. Nesting deeper than `max` needs
/// more than `max` opening brackets, and counting those is a loop the compiler vectorizes: only a
/// text that has that many is scanned byte by byte ([`nesting_depth`]), so an ordinary frame
/// costs a fraction of an instruction per byte here (`make perf`, the transcript case).
fn nested_deeper_than(text: &str, max: usize) -> bool {
    // `[` is 0x5B and `{` 0x7B: setting bit 5 maps exactly these two bytes to `{`. Counted in
    // u8 per chunk of 255 (cannot overflow), which the compiler turns into byte-wide SIMD.
    let openings: usize = text
        .as_bytes()
        .chunks(255)
        .map(|chunk| {
            let count: u8 = chunk.iter().map(|&b| u8::from(b | 0x20 == b'{')).sum();
            usize::from(count)
        })
        .sum();
    openings > max && nesting_depth(text) > max
}

/// The deepest nesting of arrays and objects in `text` (brackets inside strings do not count).
/// serde_json skips values it does not keep without recursion, so it sets no depth limit of its
/// own there; this bound keeps what pusher forwards (104 payloads, 102 segments) shallow.
fn nesting_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in text.bytes() {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The number of elements of `raw`, which must be a JSON array of strings.
fn string_array_len(raw: &str) -> Result<usize, FrameError> {
    if !raw.starts_with('[') {
        return Err(FrameError::WrongShape);
    }
    let StringArrayLen(len) = serde_json::from_str(raw).map_err(|_| FrameError::WrongShape)?;
    Ok(len)
}

/// A JSON string checked against the id rule. A failed check is kept rather than raised, so that
/// the decoder can tell a bad id (or an empty one, which some frames ignore) from bad JSON.
struct IdField(Result<Id, IdError>);

impl<'de> Deserialize<'de> for IdField {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(IdFieldVisitor)
    }
}

struct IdFieldVisitor;

impl Visitor<'_> for IdFieldVisitor {
    type Value = IdField;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an id string")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<IdField, E> {
        Ok(IdField(Id::parse(value.as_bytes())))
    }
}

/// Any JSON string, checked and dropped.
struct AnyString;

impl<'de> Deserialize<'de> for AnyString {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(AnyStringVisitor)
    }
}

struct AnyStringVisitor;

impl Visitor<'_> for AnyStringVisitor {
    type Value = AnyString;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, _value: &str) -> Result<AnyString, E> {
        Ok(AnyString)
    }
}

/// The length of a JSON array of strings, counted without building it.
struct StringArrayLen(usize);

impl<'de> Deserialize<'de> for StringArrayLen {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(StringArrayLenVisitor)
    }
}

struct StringArrayLenVisitor;

impl<'de> Visitor<'de> for StringArrayLenVisitor {
    type Value = StringArrayLen;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of strings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StringArrayLen, A::Error> {
        let mut len = 0;
        while seq.next_element::<AnyString>()?.is_some() {
            len += 1;
        }
        Ok(StringArrayLen(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{CLOSE_INVALID_PAYLOAD, RESULT};

    fn message(header: u32, payload: &[u8]) -> Vec<u8> {
        let mut bytes = header.to_le_bytes().to_vec();
        bytes.extend_from_slice(payload);
        bytes
    }

    fn audio(timestamp: f64, pcm: &[u8]) -> Vec<u8> {
        let mut payload = timestamp.to_le_bytes().to_vec();
        payload.extend_from_slice(pcm);
        message(AUDIO, &payload)
    }

    fn id(text: &str) -> Id {
        Id::parse(text.as_bytes()).unwrap()
    }

    fn decode_json(header: u32, json: &str) -> Result<Inbound<'static>, FrameError> {
        let leaked: &'static [u8] = Box::leak(message(header, json.as_bytes()).into_boxed_slice());
        decode(leaked)
    }

    #[test]
    fn heartbeat_exact_and_with_trailing_bytes() {
        assert_eq!(decode(&message(HEARTBEAT, b"")), Ok(Inbound::Heartbeat));
        assert_eq!(decode(&message(HEARTBEAT, b"xyz")), Ok(Inbound::Heartbeat));
    }

    #[test]
    fn shorter_than_a_header_is_truncated() {
        for len in 0..4 {
            assert_eq!(decode(&[100, 0, 0, 0][..len]), Err(FrameError::Truncated));
        }
    }

    #[test]
    fn audio_splits_timestamp_and_pcm() {
        let bytes = audio(1_700_000_000.125, &[1, 2, 3, 4]);
        assert_eq!(
            decode(&bytes),
            Ok(Inbound::Audio {
                timestamp: 1_700_000_000.125,
                pcm: &[1, 2, 3, 4],
            })
        );
    }

    #[test]
    fn audio_with_empty_or_odd_pcm_is_passed_through() {
        let empty = audio(1.0, &[]);
        assert_eq!(
            decode(&empty),
            Ok(Inbound::Audio {
                timestamp: 1.0,
                pcm: &[],
            })
        );
        let odd = audio(1.0, &[7, 8, 9]);
        assert_eq!(
            decode(&odd),
            Ok(Inbound::Audio {
                timestamp: 1.0,
                pcm: &[7, 8, 9],
            })
        );
    }

    #[test]
    fn audio_without_a_whole_timestamp_is_truncated() {
        for len in 0..8 {
            assert_eq!(
                decode(&message(AUDIO, &[0u8; 8][..len])),
                Err(FrameError::Truncated)
            );
        }
    }

    #[test]
    fn audio_timestamp_must_be_finite_and_in_range() {
        for bad in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -1.0,
            AUDIO_TIMESTAMP_SECONDS_MAX * 2.0,
        ] {
            assert_eq!(decode(&audio(bad, &[0, 0])), Err(FrameError::BadTimestamp));
        }
        assert!(decode(&audio(0.0, &[])).is_ok());
        assert!(decode(&audio(AUDIO_TIMESTAMP_SECONDS_MAX, &[])).is_ok());
    }

    #[test]
    fn transcript_passes_segments_through_unchanged() {
        let segments = r#"[{"text":"hi \"there\"","speaker":"SPEAKER_0","start":0.5}, {}]"#;
        let json = format!(r#"{{"segments": {segments}, "memory_id": "conv-1"}}"#);
        assert_eq!(
            decode_json(TRANSCRIPT, &json),
            Ok(Inbound::Transcript {
                segments,
                memory_id: Some(id("conv-1")),
            })
        );
    }

    #[test]
    fn transcript_memory_id_null_absent_or_empty_is_none() {
        for json in [
            r#"{"segments": [], "memory_id": null}"#,
            r#"{"segments": []}"#,
            r#"{"segments": [], "memory_id": ""}"#,
        ] {
            assert_eq!(
                decode_json(TRANSCRIPT, json),
                Ok(Inbound::Transcript {
                    segments: "[]",
                    memory_id: None,
                }),
                "{json}"
            );
        }
    }

    #[test]
    fn transcript_ignores_unknown_fields_and_unescapes_ids() {
        let json = r#"{"extra": {"a": [1, 2]}, "segments": [1], "memory_id": "a\u0062c"}"#;
        assert_eq!(
            decode_json(TRANSCRIPT, json),
            Ok(Inbound::Transcript {
                segments: "[1]",
                memory_id: Some(id("abc")),
            })
        );
    }

    #[test]
    fn transcript_of_the_wrong_shape_is_refused() {
        for json in [
            r#"{"memory_id": "c"}"#,
            r#"{"segments": null}"#,
            r#"{"segments": {}}"#,
            r#"{"segments": "[]"}"#,
            r#"{"segments": [], "memory_id": 5}"#,
            r#"[[], "c"]"#,
            r#""text""#,
        ] {
            assert_eq!(
                decode_json(TRANSCRIPT, json),
                Err(FrameError::WrongShape),
                "{json}"
            );
        }
    }

    #[test]
    fn transcript_with_a_bad_memory_id_is_refused() {
        assert_eq!(
            decode_json(TRANSCRIPT, r#"{"segments": [], "memory_id": "a/b"}"#),
            Err(FrameError::BadId(IdError::BadCharacter))
        );
        assert_eq!(
            decode_json(TRANSCRIPT, r#"{"segments": [], "memory_id": ".."}"#),
            Err(FrameError::BadId(IdError::DotPath))
        );
    }

    #[test]
    fn json_frames_refuse_invalid_utf8() {
        for header in [
            TRANSCRIPT,
            CONVERSATION,
            PROCESS_CONVERSATION,
            SPEAKER_SAMPLE,
        ] {
            assert_eq!(
                decode(&message(header, b"{\"a\": \"\xff\"}")),
                Err(FrameError::InvalidUtf8)
            );
        }
    }

    #[test]
    fn json_frames_refuse_invalid_json() {
        for header in [TRANSCRIPT, PROCESS_CONVERSATION, SPEAKER_SAMPLE] {
            for json in ["", "{", "nope", "{\"a\": [}", "{\"a\": tru}", "{\"a\" 1}"] {
                assert_eq!(
                    decode_json(header, json),
                    Err(FrameError::InvalidJson),
                    "{header} {json}"
                );
            }
        }
    }

    #[test]
    fn trailing_data_after_the_object_is_invalid_json() {
        for header in [TRANSCRIPT, PROCESS_CONVERSATION, SPEAKER_SAMPLE] {
            let json = r#"{"segments": [], "conversation_id": "c", "person_id": "p"} {}"#;
            assert_eq!(
                decode_json(header, json),
                Err(FrameError::InvalidJson),
                "{header}"
            );
        }
    }

    #[test]
    fn conversation_is_a_raw_id() {
        assert_eq!(
            decode(&message(CONVERSATION, b"conv-1")),
            Ok(Inbound::Conversation(id("conv-1")))
        );
    }

    #[test]
    fn conversation_with_a_bad_id_is_refused() {
        let cases: [(&[u8], IdError); 5] = [
            (b"", IdError::Empty),
            (b"\"conv\"", IdError::BadCharacter),
            (b"conv\n", IdError::BadCharacter),
            (b".", IdError::DotPath),
            (&[b'a'; 129], IdError::TooLong),
        ];
        for (payload, error) in cases {
            assert_eq!(
                decode(&message(CONVERSATION, payload)),
                Err(FrameError::BadId(error))
            );
        }
    }

    #[test]
    fn process_conversation_keeps_the_whole_object() {
        let json = r#" {"conversation_id": "c-1", "language": "fr", "byok_keys": {"k": "v"}, "dispatch_generation": 3} "#;
        assert_eq!(
            decode_json(PROCESS_CONVERSATION, json),
            Ok(Inbound::ProcessConversation {
                conversation_id: id("c-1"),
                payload: json.trim(),
            })
        );
    }

    #[test]
    fn process_conversation_of_the_wrong_shape_is_refused() {
        for json in [
            r#"{}"#,
            r#"{"conversation_id": null}"#,
            r#"{"conversation_id": 7}"#,
            r#"["c-1"]"#,
        ] {
            assert_eq!(
                decode_json(PROCESS_CONVERSATION, json),
                Err(FrameError::WrongShape),
                "{json}"
            );
        }
    }

    #[test]
    fn a_repeated_key_is_accepted_and_the_last_one_wins_as_in_python() {
        let json = r#"{"conversation_id": "a", "language": "en", "conversation_id": "b"}"#;
        assert_eq!(
            decode_json(PROCESS_CONVERSATION, json),
            Ok(Inbound::ProcessConversation {
                conversation_id: id("b"),
                payload: json,
            })
        );
        let json =
            r#"{"segments": [], "memory_id": "m1", "segments": [{"t": 1}], "memory_id": "m2"}"#;
        assert_eq!(
            decode_json(TRANSCRIPT, json),
            Ok(Inbound::Transcript {
                segments: r#"[{"t": 1}]"#,
                memory_id: Some(id("m2")),
            })
        );
        let json = r#"{"person_id": "p", "conversation_id": "x", "segment_ids": ["s"], "conversation_id": "c"}"#;
        assert!(matches!(
            decode_json(SPEAKER_SAMPLE, json),
            Ok(Inbound::SpeakerSample { conversation_id, .. }) if conversation_id == id("c")
        ));
    }

    #[test]
    fn nesting_deeper_than_the_bound_is_refused_and_strings_do_not_count() {
        let nested = |depth: usize| {
            format!(
                r#"{{"conversation_id": "c", "x": {}1{}}}"#,
                "[".repeat(depth - 1),
                "]".repeat(depth - 1)
            )
        };
        assert!(decode_json(PROCESS_CONVERSATION, &nested(JSON_DEPTH_MAX)).is_ok());
        assert_eq!(
            decode_json(PROCESS_CONVERSATION, &nested(JSON_DEPTH_MAX + 1)),
            Err(FrameError::TooDeep)
        );
        assert_eq!(
            decode_json(PROCESS_CONVERSATION, &nested(200_000)),
            Err(FrameError::TooDeep)
        );
        let brackets_in_a_string = format!(
            r#"{{"conversation_id": "c", "s": "{}\"{}"}}"#,
            "[".repeat(500),
            "{".repeat(500)
        );
        assert!(decode_json(PROCESS_CONVERSATION, &brackets_in_a_string).is_ok());
        // Many brackets, shallow: more openings than the bound is not by itself too deep.
        let siblings = format!(
            r#"{{"conversation_id": "c", "x": [{}[]]}}"#,
            "[],".repeat(2 * JSON_DEPTH_MAX)
        );
        assert!(decode_json(PROCESS_CONVERSATION, &siblings).is_ok());
    }

    #[test]
    fn process_conversation_with_a_bad_id_is_refused() {
        assert_eq!(
            decode_json(PROCESS_CONVERSATION, r#"{"conversation_id": ""}"#),
            Err(FrameError::BadId(IdError::Empty))
        );
        assert_eq!(
            decode_json(PROCESS_CONVERSATION, r#"{"conversation_id": "a b"}"#),
            Err(FrameError::BadId(IdError::BadCharacter))
        );
    }

    #[test]
    fn speaker_sample_with_all_fields() {
        let json =
            r#"{"person_id": "p-1", "conversation_id": "c-1", "segment_ids": ["s1", "s\"2"]}"#;
        assert_eq!(
            decode_json(SPEAKER_SAMPLE, json),
            Ok(Inbound::SpeakerSample {
                person_id: id("p-1"),
                conversation_id: id("c-1"),
                segment_ids: r#"["s1", "s\"2"]"#,
            })
        );
    }

    #[test]
    fn speaker_sample_with_an_empty_field_is_ignored() {
        for json in [
            r#"{"conversation_id": "c", "segment_ids": ["s"]}"#,
            r#"{"person_id": null, "conversation_id": "c", "segment_ids": ["s"]}"#,
            r#"{"person_id": "", "conversation_id": "c", "segment_ids": ["s"]}"#,
            r#"{"person_id": "p", "segment_ids": ["s"]}"#,
            r#"{"person_id": "p", "conversation_id": "", "segment_ids": ["s"]}"#,
            r#"{"person_id": "p", "conversation_id": "c"}"#,
            r#"{"person_id": "p", "conversation_id": "c", "segment_ids": null}"#,
            r#"{"person_id": "p", "conversation_id": "c", "segment_ids": []}"#,
            r#"{"person_id": "bad/id", "conversation_id": "", "segment_ids": ["s"]}"#,
            r#"{}"#,
        ] {
            assert_eq!(
                decode_json(SPEAKER_SAMPLE, json),
                Ok(Inbound::Ignored105),
                "{json}"
            );
        }
    }

    #[test]
    fn speaker_sample_of_the_wrong_shape_is_refused() {
        for json in [
            r#"{"person_id": 1, "conversation_id": "c", "segment_ids": ["s"]}"#,
            r#"{"person_id": "p", "conversation_id": "c", "segment_ids": "s"}"#,
            r#"{"person_id": "p", "conversation_id": "c", "segment_ids": [1]}"#,
            r#"{"person_id": "p", "conversation_id": "c", "segment_ids": {}}"#,
            r#"["p", "c", ["s"]]"#,
        ] {
            assert_eq!(
                decode_json(SPEAKER_SAMPLE, json),
                Err(FrameError::WrongShape),
                "{json}"
            );
        }
    }

    #[test]
    fn speaker_sample_with_a_bad_id_is_refused() {
        assert_eq!(
            decode_json(
                SPEAKER_SAMPLE,
                r#"{"person_id": "p", "conversation_id": "c/1", "segment_ids": ["s"]}"#
            ),
            Err(FrameError::BadId(IdError::BadCharacter))
        );
    }

    #[test]
    fn unknown_headers_are_reported_with_their_value() {
        assert_eq!(
            decode(&message(RESULT, b"{}")),
            Ok(Inbound::Unknown(RESULT))
        );
        assert_eq!(decode(&message(0, b"")), Ok(Inbound::Unknown(0)));
        assert_eq!(
            decode(&message(u32::MAX, b"\xff")),
            Ok(Inbound::Unknown(u32::MAX))
        );
    }

    #[test]
    fn every_frame_error_closes_with_1007_and_a_short_reason() {
        let errors = [
            FrameError::Truncated,
            FrameError::BadTimestamp,
            FrameError::InvalidUtf8,
            FrameError::InvalidJson,
            FrameError::WrongShape,
            FrameError::BadId(IdError::Empty),
            FrameError::BadId(IdError::TooLong),
            FrameError::BadId(IdError::BadCharacter),
            FrameError::BadId(IdError::DotPath),
        ];
        for error in errors {
            assert_eq!(error.close_code(), CLOSE_INVALID_PAYLOAD);
            assert!(!error.reason().is_empty() && error.reason().len() <= 123);
        }
    }
}
