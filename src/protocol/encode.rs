//! Outbound 201 encoder (docs/protocol.md §4).
//!
//! Invariant: the frame is written into the caller's buffer; the JSON written is valid whenever
//! `Ok` is returned, and starts with `conversation_id` followed by `success: true` or `error`. On
//! `Err` the buffer's contents are unspecified. Nothing is allocated, except serde_json's scratch
//! buffer (a few bytes) when merged fields nest containers or have escaped keys.

use std::fmt;
use std::io::{Cursor, Write};

use serde::de::{self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::RESULT;
use crate::id::Id;

/// What the 201 reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultOutcome<'a> {
    /// `{"conversation_id", "success": true, ...}`. `merged_fields` is the text of a JSON object
    /// (the processor's answer) whose fields are copied in, in order, except `conversation_id` and
    /// `success`: those two always keep pusher's values.
    Success {
        /// The processor's JSON object to merge in; `None`: nothing more than the two fields.
        merged_fields: Option<&'a str>,
    },
    /// `{"conversation_id", "error": reason}`, the reason escaped as a JSON string.
    Error(&'a str),
}

/// Why a 201 could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The frame does not fit the buffer.
    BufferTooSmall,
    /// `merged_fields` is not the text of one JSON object.
    MergedFieldsNotObject,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EncodeError::BufferTooSmall => "201 frame does not fit the buffer",
            EncodeError::MergedFieldsNotObject => "merged fields are not a JSON object",
        })
    }
}

impl std::error::Error for EncodeError {}

/// Fields of the 201 that merged fields never override.
const RESERVED_KEYS: [&str; 2] = ["conversation_id", "success"];

/// Writes `u32 LE 201 ‖ JSON` into `out` and returns the number of bytes written.
pub fn encode_result(
    out: &mut [u8],
    conversation_id: &Id,
    outcome: ResultOutcome<'_>,
) -> Result<usize, EncodeError> {
    let mut writer = Cursor::new(out);
    put(&mut writer, &RESULT.to_le_bytes())?;
    put(&mut writer, b"{\"conversation_id\":\"")?;
    // Id characters never need escaping in JSON.
    put(&mut writer, conversation_id.as_str().as_bytes())?;
    put(&mut writer, b"\"")?;
    match outcome {
        ResultOutcome::Success { merged_fields } => {
            put(&mut writer, b",\"success\":true")?;
            if let Some(fields) = merged_fields {
                copy_fields(&mut writer, fields, &RESERVED_KEYS)?;
            }
        }
        ResultOutcome::Error(reason) => {
            put(&mut writer, b",\"error\":")?;
            serde_json::to_writer(&mut writer, reason).map_err(|_| EncodeError::BufferTooSmall)?;
        }
    }
    put(&mut writer, b"}")?;
    Ok(writer.position() as usize)
}

fn put(writer: &mut impl Write, bytes: &[u8]) -> Result<(), EncodeError> {
    writer
        .write_all(bytes)
        .map_err(|_| EncodeError::BufferTooSmall)
}

/// Copies the fields of the JSON object `fields`, in order, as `,"key":value` pairs, leaving out
/// the keys in `skip`. Values are copied as written; keys are re-escaped.
pub fn copy_fields(
    writer: &mut impl Write,
    fields: &str,
    skip: &[&str],
) -> Result<(), EncodeError> {
    let mut overflowed = false;
    let mut deserializer = serde_json::Deserializer::from_str(fields);
    let visitor = MergeVisitor {
        writer,
        skip,
        overflowed: &mut overflowed,
    };
    let merged = deserializer
        .deserialize_map(visitor)
        .and_then(|()| deserializer.end());
    match merged {
        Ok(()) => Ok(()),
        Err(_) if overflowed => Err(EncodeError::BufferTooSmall),
        Err(_) => Err(EncodeError::MergedFieldsNotObject),
    }
}

/// Walks the object's entries, writing kept keys (re-escaped) and their raw values.
struct MergeVisitor<'w, W> {
    writer: &'w mut W,
    skip: &'w [&'w str],
    overflowed: &'w mut bool,
}

impl<'de, W: Write> Visitor<'de> for MergeVisitor<'_, W> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        loop {
            let key = KeySeed {
                writer: &mut *self.writer,
                skip: self.skip,
                overflowed: &mut *self.overflowed,
            };
            match map.next_key_seed(key)? {
                None => return Ok(()),
                Some(false) => {
                    map.next_value::<IgnoredAny>()?;
                }
                Some(true) => {
                    let value: &'de RawValue = map.next_value()?;
                    if put(self.writer, value.get().as_bytes()).is_err() {
                        *self.overflowed = true;
                        return Err(de::Error::custom("buffer too small"));
                    }
                }
            }
        }
    }
}

/// Reads one key; unless it is skipped, writes `,"key":` and yields `true`.
struct KeySeed<'w, W> {
    writer: &'w mut W,
    skip: &'w [&'w str],
    overflowed: &'w mut bool,
}

impl<'de, W: Write> DeserializeSeed<'de> for KeySeed<'_, W> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<W: Write> Visitor<'_> for KeySeed<'_, W> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        if self.skip.contains(&key) {
            return Ok(false);
        }
        let written = put(self.writer, b",")
            .and_then(|()| {
                serde_json::to_writer(&mut *self.writer, key)
                    .map_err(|_| EncodeError::BufferTooSmall)
            })
            .and_then(|()| put(self.writer, b":"));
        if written.is_err() {
            *self.overflowed = true;
            return Err(E::custom("buffer too small"));
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn id(text: &str) -> Id {
        Id::parse(text.as_bytes()).unwrap()
    }

    /// Encodes into a roomy buffer, checks the header, and parses the JSON.
    fn encode(conversation: &str, outcome: ResultOutcome<'_>) -> Value {
        let mut buffer = [0u8; 1024];
        let len = encode_result(&mut buffer, &id(conversation), outcome).unwrap();
        assert_eq!(buffer[..4], 201u32.to_le_bytes());
        serde_json::from_slice(&buffer[4..len]).unwrap()
    }

    #[test]
    fn success_without_merged_fields() {
        let mut buffer = [0u8; 64];
        let len = encode_result(
            &mut buffer,
            &id("c-1"),
            ResultOutcome::Success {
                merged_fields: None,
            },
        )
        .unwrap();
        assert_eq!(
            &buffer[4..len],
            br#"{"conversation_id":"c-1","success":true}"#
        );
    }

    #[test]
    fn success_merges_fields_in_order() {
        let fields = r#" {"memories": [1, {"a": "b"}], "note": "x\"y", "n": null} "#;
        let value = encode(
            "c-1",
            ResultOutcome::Success {
                merged_fields: Some(fields),
            },
        );
        assert_eq!(
            value,
            json!({"conversation_id": "c-1", "success": true, "memories": [1, {"a": "b"}], "note": "x\"y", "n": null})
        );
    }

    #[test]
    fn merged_fields_never_override_conversation_id_or_success() {
        let fields = r#"{"conversation_id": "other", "success": false, "kept": 1}"#;
        let value = encode(
            "c-1",
            ResultOutcome::Success {
                merged_fields: Some(fields),
            },
        );
        assert_eq!(
            value,
            json!({"conversation_id": "c-1", "success": true, "kept": 1})
        );
    }

    #[test]
    fn merged_keys_with_escapes_stay_valid_json() {
        let fields = r#"{"a\"b\u00e9\n": 1, "\u0073uccess": 2}"#;
        let value = encode(
            "c-1",
            ResultOutcome::Success {
                merged_fields: Some(fields),
            },
        );
        assert_eq!(
            value,
            json!({"conversation_id": "c-1", "success": true, "a\"b\u{e9}\n": 1})
        );
    }

    #[test]
    fn empty_merged_object_adds_nothing() {
        let value = encode(
            "c-1",
            ResultOutcome::Success {
                merged_fields: Some("{}"),
            },
        );
        assert_eq!(value, json!({"conversation_id": "c-1", "success": true}));
    }

    #[test]
    fn merged_fields_must_be_one_object() {
        for fields in ["[1]", "1", "\"x\"", "null", "{", "{} {}", "{\"a\": }", ""] {
            let mut buffer = [0u8; 256];
            assert_eq!(
                encode_result(
                    &mut buffer,
                    &id("c"),
                    ResultOutcome::Success {
                        merged_fields: Some(fields),
                    },
                ),
                Err(EncodeError::MergedFieldsNotObject),
                "{fields}"
            );
        }
    }

    #[test]
    fn error_reason_is_escaped() {
        let value = encode("c-1", ResultOutcome::Error("bad \"thing\"\n\\ \u{1}"));
        assert_eq!(
            value,
            json!({"conversation_id": "c-1", "error": "bad \"thing\"\n\\ \u{1}"})
        );
        let busy = encode("c-1", ResultOutcome::Error("busy"));
        assert_eq!(busy, json!({"conversation_id": "c-1", "error": "busy"}));
    }

    #[test]
    fn too_small_a_buffer_is_refused_at_every_length() {
        let outcomes = [
            ResultOutcome::Success {
                merged_fields: None,
            },
            ResultOutcome::Success {
                merged_fields: Some(r#"{"k": "value", "key2": [1, 2, 3]}"#),
            },
            ResultOutcome::Error("conversation_not_found"),
        ];
        for outcome in outcomes {
            let mut roomy = [0u8; 256];
            let needed = encode_result(&mut roomy, &id("c-1"), outcome).unwrap();
            for len in 0..needed {
                let mut buffer = vec![0u8; len];
                assert_eq!(
                    encode_result(&mut buffer, &id("c-1"), outcome),
                    Err(EncodeError::BufferTooSmall),
                    "{len}"
                );
            }
            let mut exact = vec![0u8; needed];
            assert_eq!(encode_result(&mut exact, &id("c-1"), outcome), Ok(needed));
            assert_eq!(exact[..], roomy[..needed]);
        }
    }
}
