//! Session rules (docs/protocol.md §3), driven through the frame decoder with a simulated clock and
//! a recording [`Outputs`].

use super::*;
use crate::protocol::{
    AUDIO, CONVERSATION, HEARTBEAT, PROCESS_CONVERSATION, SPEAKER_SAMPLE, TRANSCRIPT, decode,
};
use crate::settings::{App, AudioBytesWebhook, Trigger};

const RATE_HZ: u32 = 8000;
/// One second of audio at `RATE_HZ`.
const SECOND_BYTES: usize = 16_000;
const BATCH_BYTES: usize = SECOND_BYTES * 60;
const APP_THRESHOLD_BYTES: usize = SECOND_BYTES * 4;

#[derive(Debug, Clone, PartialEq)]
enum Event {
    BatchOpen {
        conversation: String,
        timestamp: f64,
    },
    Append(Vec<u8>),
    BatchClose(BatchCloseReason),
    Transcript {
        conversation: Option<String>,
        segments: String,
    },
    AppAudio(Vec<u8>),
    WebhookAudio(Vec<u8>),
    Process {
        conversation: String,
        payload: String,
    },
    SpeakerSample {
        person: String,
        conversation: String,
        segment_ids: String,
    },
    ResultError {
        conversation: String,
        error: String,
    },
    UnknownHeader(u32),
}

#[derive(Default)]
struct Recorder {
    events: Vec<Event>,
}

impl Outputs for Recorder {
    fn audio_batch_open(
        &mut self,
        _uid: &Id,
        _sample_rate_hz: u32,
        conversation: &Id,
        timestamp: f64,
    ) {
        self.events.push(Event::BatchOpen {
            conversation: conversation.to_string(),
            timestamp,
        });
    }

    fn audio_append(&mut self, pcm: &[u8]) {
        self.events.push(Event::Append(pcm.to_vec()));
    }

    fn audio_batch_close(&mut self, reason: BatchCloseReason) {
        self.events.push(Event::BatchClose(reason));
    }

    fn transcript(&mut self, conversation: Option<&Id>, segments_json: &str) {
        self.events.push(Event::Transcript {
            conversation: conversation.map(Id::to_string),
            segments: segments_json.to_string(),
        });
    }

    fn app_audio(&mut self, pcm: &[u8]) {
        self.events.push(Event::AppAudio(pcm.to_vec()));
    }

    fn webhook_audio(&mut self, pcm: &[u8]) {
        self.events.push(Event::WebhookAudio(pcm.to_vec()));
    }

    fn process_conversation(&mut self, conversation: &Id, payload_json: &str) {
        self.events.push(Event::Process {
            conversation: conversation.to_string(),
            payload: payload_json.to_string(),
        });
    }

    fn speaker_sample(&mut self, person_id: &Id, conversation: &Id, segment_ids_json: &str) {
        self.events.push(Event::SpeakerSample {
            person: person_id.to_string(),
            conversation: conversation.to_string(),
            segment_ids: segment_ids_json.to_string(),
        });
    }

    fn result_error(&mut self, conversation: &Id, error: &str) {
        self.events.push(Event::ResultError {
            conversation: conversation.to_string(),
            error: error.to_string(),
        });
    }

    fn unknown_header(&mut self, header: u32) {
        self.events.push(Event::UnknownHeader(header));
    }
}

/// A session, its recorded effects, and a simulated clock.
struct Harness {
    session: Session,
    out: Recorder,
    now: Millis,
}

impl Harness {
    fn new(config: SessionConfig) -> Harness {
        Harness {
            session: Session::new(id("user-1"), RATE_HZ, config),
            out: Recorder::default(),
            now: Millis(1_000_000),
        }
    }

    fn advance_ms(&mut self, ms: u64) {
        self.now = self.now.saturating_add_ms(ms);
    }

    fn set_now(&mut self, now: Millis) {
        assert!(now >= self.now);
        self.now = now;
    }

    fn message(&mut self, header: u32, payload: &[u8]) {
        let mut bytes = header.to_le_bytes().to_vec();
        bytes.extend_from_slice(payload);
        let frame = decode(&bytes).expect("test frames are valid");
        self.session.on_frame(frame, self.now, &mut self.out);
    }

    fn audio(&mut self, timestamp: f64, pcm: &[u8]) {
        let mut payload = timestamp.to_le_bytes().to_vec();
        payload.extend_from_slice(pcm);
        self.message(AUDIO, &payload);
    }

    fn audio_len(&mut self, timestamp: f64, len: usize) {
        self.audio(timestamp, &vec![0x11; len]);
    }

    fn conversation(&mut self, conversation: &str) {
        self.message(CONVERSATION, conversation.as_bytes());
    }

    fn transcript(&mut self, json: &str) {
        self.message(TRANSCRIPT, json.as_bytes());
    }

    fn process(&mut self, conversation: &str) {
        let json = format!(r#"{{"conversation_id": "{conversation}", "language": "en"}}"#);
        self.message(PROCESS_CONVERSATION, json.as_bytes());
    }

    fn deadline(&mut self) {
        self.session.on_deadline(self.now, &mut self.out);
    }

    fn end(&mut self) {
        self.session.end(self.now, &mut self.out);
    }

    fn take(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.out.events)
    }

    /// Recorded events with appends reduced to their total length, for compact assertions.
    fn take_batch_events(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        for event in self.take() {
            match (events.last_mut(), event) {
                (Some(Event::Append(total)), Event::Append(more)) => total.extend(more),
                (_, event) => events.push(event),
            }
        }
        events
            .into_iter()
            .map(|event| match event {
                Event::Append(bytes) => Event::Append(vec![0; bytes.len()]),
                other => other,
            })
            .collect()
    }
}

fn id(text: &str) -> Id {
    Id::parse(text.as_bytes()).unwrap()
}

fn open(conversation: &str, timestamp: f64) -> Event {
    Event::BatchOpen {
        conversation: conversation.to_string(),
        timestamp,
    }
}

fn appended(len: usize) -> Event {
    Event::Append(vec![0; len])
}

fn close(reason: BatchCloseReason) -> Event {
    Event::BatchClose(reason)
}

fn transcript(conversation: Option<&str>, segments: &str) -> Event {
    Event::Transcript {
        conversation: conversation.map(str::to_string),
        segments: segments.to_string(),
    }
}

fn process(conversation: &str) -> Event {
    Event::Process {
        conversation: conversation.to_string(),
        payload: format!(r#"{{"conversation_id": "{conversation}", "language": "en"}}"#),
    }
}

fn busy(conversation: &str) -> Event {
    Event::ResultError {
        conversation: conversation.to_string(),
        error: BUSY.to_string(),
    }
}

fn with_transcripts() -> SessionConfig {
    SessionConfig {
        transcripts_wanted: true,
        ..SessionConfig::default()
    }
}

// Private cloud.

#[test]
fn no_storage_without_a_conversation() {
    let mut h = Harness::new(SessionConfig::default());
    h.audio_len(1.0, SECOND_BYTES);
    assert_eq!(h.take(), []);
    assert_eq!(h.session.next_deadline(), None);
}

#[test]
fn no_storage_with_private_cloud_off() {
    let mut h = Harness::new(SessionConfig {
        private_cloud_enabled: false,
        ..SessionConfig::default()
    });
    h.conversation("c-1");
    for second in 0..70 {
        h.audio_len(f64::from(second), SECOND_BYTES);
    }
    h.end();
    assert_eq!(h.take(), []);
}

#[test]
fn batch_takes_the_first_frames_timestamp_and_appends_the_pcm() {
    let mut h = Harness::new(SessionConfig::default());
    h.conversation("c-1");
    h.audio(1_700_000_000.25, &[1, 2, 3, 4]);
    h.advance_ms(1000);
    h.audio(1_700_000_001.25, &[5, 6]);
    assert_eq!(
        h.take(),
        [
            open("c-1", 1_700_000_000.25),
            Event::Append(vec![1, 2, 3, 4]),
            Event::Append(vec![5, 6]),
        ]
    );
}

#[test]
fn audio_before_the_conversation_is_not_stored() {
    let mut h = Harness::new(SessionConfig::default());
    h.audio_len(1.0, 100);
    h.conversation("c-1");
    h.audio_len(2.0, 200);
    assert_eq!(h.take_batch_events(), [open("c-1", 2.0), appended(200)]);
}

#[test]
fn empty_audio_opens_no_batch() {
    let mut h = Harness::new(SessionConfig::default());
    h.conversation("c-1");
    h.audio(1.0, &[]);
    assert_eq!(h.take(), []);
    assert_eq!(h.session.next_deadline(), None);
}

#[test]
fn batch_closes_when_it_reaches_sixty_seconds_of_audio_exactly() {
    let mut h = Harness::new(SessionConfig::default());
    h.conversation("c-1");
    for second in 0..59 {
        h.audio_len(f64::from(second), SECOND_BYTES);
    }
    h.audio_len(59.0, SECOND_BYTES - 1);
    assert_eq!(
        h.take_batch_events(),
        [open("c-1", 0.0), appended(BATCH_BYTES - 1)],
        "one byte short stays open"
    );
    h.audio_len(60.0, 1);
    assert_eq!(
        h.take_batch_events(),
        [appended(1), close(BatchCloseReason::Full)]
    );
    h.audio_len(61.0, 10);
    assert_eq!(h.take_batch_events(), [open("c-1", 61.0), appended(10)]);
}

#[test]
fn the_frame_that_crosses_the_size_limit_goes_in_whole_before_the_close() {
    let mut h = Harness::new(SessionConfig::default());
    h.conversation("c-1");
    h.audio_len(0.0, BATCH_BYTES - 10);
    h.audio_len(1.0, 100);
    assert_eq!(
        h.take_batch_events(),
        [
            open("c-1", 0.0),
            appended(BATCH_BYTES + 90),
            close(BatchCloseReason::Full)
        ]
    );
}

#[test]
fn batch_closes_at_its_age_limit_through_the_deadline() {
    let mut h = Harness::new(SessionConfig::default());
    h.conversation("c-1");
    let opened_at = h.now;
    h.audio_len(5.0, 100);
    let deadline = opened_at.saturating_add_ms(60_000);
    assert_eq!(h.session.next_deadline(), Some(deadline));
    h.advance_ms(30_000);
    h.audio_len(35.0, 100);
    assert_eq!(
        h.session.next_deadline(),
        Some(deadline),
        "appending does not move the deadline"
    );
    h.set_now(Millis(deadline.0 - 1));
    h.deadline();
    assert_eq!(h.take_batch_events(), [open("c-1", 5.0), appended(200)]);
    h.set_now(deadline);
    h.deadline();
    assert_eq!(h.take(), [close(BatchCloseReason::Age)]);
    assert_eq!(h.session.next_deadline(), None);
    h.deadline();
    assert_eq!(h.take(), [], "nothing left to close");
}

#[test]
fn an_aged_batch_is_closed_by_the_next_frame_if_the_deadline_was_missed() {
    let mut h = Harness::new(SessionConfig::default());
    h.conversation("c-1");
    h.audio_len(1.0, 100);
    h.advance_ms(61_000);
    h.audio_len(62.0, 50);
    assert_eq!(
        h.take_batch_events(),
        [
            open("c-1", 1.0),
            appended(100),
            close(BatchCloseReason::Age),
            open("c-1", 62.0),
            appended(50),
        ]
    );
    assert_eq!(
        h.session.next_deadline(),
        Some(h.now.saturating_add_ms(60_000))
    );
}

#[test]
fn batch_limits_come_from_the_config() {
    let mut h = Harness::new(SessionConfig {
        batch_audio_seconds: 2,
        batch_age_ms_max: 500,
        ..SessionConfig::default()
    });
    h.conversation("c-1");
    h.audio_len(0.0, 2 * SECOND_BYTES);
    assert_eq!(
        h.take_batch_events(),
        [
            open("c-1", 0.0),
            appended(2 * SECOND_BYTES),
            close(BatchCloseReason::Full)
        ]
    );
    h.audio_len(1.0, 1);
    assert_eq!(
        h.session.next_deadline(),
        Some(h.now.saturating_add_ms(500))
    );
}

#[test]
fn a_103_switch_closes_the_old_batch_first() {
    let mut h = Harness::new(SessionConfig::default());
    h.conversation("c-1");
    h.audio_len(1.0, 100);
    h.conversation("c-2");
    h.audio_len(2.0, 200);
    assert_eq!(
        h.take_batch_events(),
        [
            open("c-1", 1.0),
            appended(100),
            close(BatchCloseReason::ConversationChanged),
            open("c-2", 2.0),
            appended(200),
        ]
    );
    assert_eq!(h.session.conversation(), Some(&id("c-2")));
}

#[test]
fn a_103_for_the_current_conversation_changes_nothing() {
    let mut h = Harness::new(SessionConfig::default());
    h.conversation("c-1");
    h.audio_len(1.0, 100);
    h.conversation("c-1");
    h.audio_len(2.0, 100);
    assert_eq!(h.take_batch_events(), [open("c-1", 1.0), appended(200)]);
}

#[test]
fn a_switch_without_an_open_batch_emits_nothing() {
    let mut h = Harness::new(SessionConfig::default());
    h.conversation("c-1");
    h.conversation("c-2");
    h.transcript(r#"{"segments": [], "memory_id": "c-3"}"#);
    assert_eq!(h.take(), []);
    assert_eq!(h.session.conversation(), Some(&id("c-3")));
}

#[test]
fn a_102_with_a_new_memory_id_closes_the_old_batch_first() {
    let mut h = Harness::new(with_transcripts());
    h.conversation("c-1");
    h.audio_len(1.0, 100);
    h.transcript(r#"{"segments": [{"text": "hi"}], "memory_id": "c-2"}"#);
    h.audio_len(2.0, 200);
    assert_eq!(
        h.take_batch_events(),
        [
            open("c-1", 1.0),
            appended(100),
            close(BatchCloseReason::ConversationChanged),
            transcript(Some("c-2"), r#"[{"text": "hi"}]"#),
            open("c-2", 2.0),
            appended(200),
        ]
    );
}

#[test]
fn a_102_with_the_same_null_or_empty_memory_id_keeps_the_batch() {
    let mut h = Harness::new(with_transcripts());
    h.conversation("c-1");
    h.audio_len(1.0, 100);
    for json in [
        r#"{"segments": [], "memory_id": "c-1"}"#,
        r#"{"segments": [], "memory_id": null}"#,
        r#"{"segments": [], "memory_id": ""}"#,
        r#"{"segments": []}"#,
    ] {
        h.transcript(json);
    }
    h.audio_len(2.0, 100);
    let same = transcript(Some("c-1"), "[]");
    assert_eq!(
        h.take_batch_events(),
        [
            open("c-1", 1.0),
            appended(100),
            same.clone(),
            same.clone(),
            same.clone(),
            same,
            appended(100),
        ]
    );
}

#[test]
fn a_102_memory_id_sets_the_conversation_even_without_transcript_consumers() {
    let mut h = Harness::new(SessionConfig::default());
    h.transcript(r#"{"segments": [1], "memory_id": "c-9"}"#);
    h.audio_len(3.0, 10);
    assert_eq!(h.take_batch_events(), [open("c-9", 3.0), appended(10)]);
}

#[test]
fn session_end_closes_the_open_batch_once() {
    let mut h = Harness::new(SessionConfig::default());
    h.conversation("c-1");
    h.audio_len(1.0, 100);
    h.end();
    h.end();
    assert_eq!(
        h.take_batch_events(),
        [
            open("c-1", 1.0),
            appended(100),
            close(BatchCloseReason::SessionEnded)
        ]
    );
    assert!(h.session.is_ended());
    assert_eq!(h.session.next_deadline(), None);
    h.advance_ms(120_000);
    h.deadline();
    assert_eq!(h.take(), []);
}

#[test]
fn session_end_without_a_batch_emits_nothing() {
    let mut h = Harness::new(SessionConfig::default());
    h.conversation("c-1");
    h.end();
    assert_eq!(h.take(), []);
}

// Transcripts.

#[test]
fn transcript_carries_memory_id_or_current_or_none() {
    let mut h = Harness::new(with_transcripts());
    h.transcript(r#"{"segments": [{"a": 1}]}"#);
    h.conversation("c-1");
    h.transcript(r#"{"segments": [{"b": 2}], "memory_id": null}"#);
    h.transcript(r#"{"segments": [], "memory_id": "c-2"}"#);
    assert_eq!(
        h.take(),
        [
            transcript(None, r#"[{"a": 1}]"#),
            transcript(Some("c-1"), r#"[{"b": 2}]"#),
            transcript(Some("c-2"), "[]"),
        ]
    );
}

#[test]
fn no_transcript_items_without_a_consumer() {
    let mut h = Harness::new(SessionConfig::default());
    h.conversation("c-1");
    h.transcript(r#"{"segments": [{"a": 1}], "memory_id": "c-1"}"#);
    assert_eq!(h.take(), []);
    assert_eq!(h.session.counters().transcript_frames, 1);
}

// Accumulators.

#[test]
fn app_audio_emits_only_above_four_seconds() {
    let mut h = Harness::new(SessionConfig {
        app_audio_seconds: Some(APP_AUDIO_SECONDS),
        ..SessionConfig::default()
    });
    for second in 0..4 {
        h.audio(f64::from(second), &vec![second as u8; SECOND_BYTES]);
    }
    assert_eq!(h.take(), [], "exactly R*2*4 bytes do not emit");
    h.audio(4.0, &[0xAB]);
    let events = h.take();
    let [Event::AppAudio(bytes)] = events.as_slice() else {
        panic!("one app-audio item expected, got {events:?}");
    };
    assert_eq!(bytes.len(), APP_THRESHOLD_BYTES + 1);
    assert_eq!(bytes[0], 0);
    assert_eq!(bytes[SECOND_BYTES * 3], 3);
    assert_eq!(bytes[APP_THRESHOLD_BYTES], 0xAB);
    h.audio(5.0, &[1, 2]);
    assert_eq!(h.take(), [], "the accumulator starts over");
}

#[test]
fn app_audio_does_not_need_a_conversation_or_private_cloud() {
    let mut h = Harness::new(SessionConfig {
        private_cloud_enabled: false,
        app_audio_seconds: Some(APP_AUDIO_SECONDS),
        ..SessionConfig::default()
    });
    h.audio_len(0.0, APP_THRESHOLD_BYTES + 2);
    assert_eq!(
        h.take(),
        [Event::AppAudio(vec![0x11; APP_THRESHOLD_BYTES + 2])]
    );
}

#[test]
fn webhook_audio_with_a_delay_emits_above_its_threshold() {
    let mut h = Harness::new(SessionConfig {
        webhook_audio_seconds: Some(2),
        ..SessionConfig::default()
    });
    h.audio_len(0.0, SECOND_BYTES);
    h.audio_len(1.0, SECOND_BYTES);
    assert_eq!(h.take(), []);
    h.audio_len(2.0, 2);
    assert_eq!(
        h.take(),
        [Event::WebhookAudio(vec![0x11; 2 * SECOND_BYTES + 2])]
    );
}

#[test]
fn webhook_audio_with_zero_delay_sends_every_frame() {
    let mut h = Harness::new(SessionConfig {
        webhook_audio_seconds: Some(0),
        ..SessionConfig::default()
    });
    h.audio(0.0, &[1, 2]);
    h.audio(1.0, &[3]);
    h.audio(2.0, &[]);
    assert_eq!(
        h.take(),
        [
            Event::WebhookAudio(vec![1, 2]),
            Event::WebhookAudio(vec![3])
        ]
    );
}

#[test]
fn app_and_webhook_audio_accumulate_independently_after_storage() {
    let mut h = Harness::new(SessionConfig {
        app_audio_seconds: Some(APP_AUDIO_SECONDS),
        webhook_audio_seconds: Some(0),
        ..SessionConfig::default()
    });
    h.conversation("c-1");
    h.audio(0.0, &[9; 4]);
    assert_eq!(
        h.take(),
        [
            open("c-1", 0.0),
            Event::Append(vec![9; 4]),
            Event::WebhookAudio(vec![9; 4]),
        ]
    );
    h.audio_len(1.0, APP_THRESHOLD_BYTES);
    let kinds: Vec<&str> = h
        .take()
        .iter()
        .map(|event| match event {
            Event::Append(_) => "append",
            Event::AppAudio(bytes) if bytes.len() == APP_THRESHOLD_BYTES + 4 => "app",
            Event::WebhookAudio(bytes) if bytes.len() == APP_THRESHOLD_BYTES => "webhook",
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["append", "app", "webhook"]);
}

#[test]
fn without_accumulators_no_audio_items() {
    let mut h = Harness::new(SessionConfig::default());
    for second in 0..10 {
        h.audio_len(f64::from(second), SECOND_BYTES);
    }
    assert_eq!(h.take(), []);
}

#[test]
#[should_panic(expected = "would grow the accumulator")]
fn audio_larger_than_the_message_limit_is_a_caller_bug() {
    let mut h = Harness::new(SessionConfig {
        webhook_audio_seconds: Some(1),
        message_bytes_max: 1000,
        ..SessionConfig::default()
    });
    h.audio_len(0.0, SECOND_BYTES - 1);
    h.audio_len(1.0, 1002);
}

// Process conversation.

#[test]
fn process_conversation_is_sent_once_while_in_flight() {
    let mut h = Harness::new(SessionConfig::default());
    h.process("c-1");
    h.process("c-1");
    assert_eq!(h.take(), [process("c-1")]);
    assert_eq!(h.session.process_in_flight(), 1);
    assert_eq!(h.session.counters().process_duplicates, 1);
    assert!(h.session.on_process_done(&id("c-1")));
    assert!(!h.session.on_process_done(&id("c-1")));
    h.process("c-1");
    assert_eq!(h.take(), [process("c-1")], "sent again once done");
}

#[test]
fn process_conversation_beyond_the_bound_is_busy() {
    let mut h = Harness::new(SessionConfig::default());
    for n in 0..8 {
        h.process(&format!("c-{n}"));
    }
    assert_eq!(h.take().len(), 8);
    h.process("c-8");
    assert_eq!(h.take(), [busy("c-8")]);
    h.process("c-3");
    assert_eq!(h.take(), [], "a duplicate at the bound is not busy");
    assert_eq!(h.session.process_in_flight(), 8);
    assert!(h.session.on_process_done(&id("c-3")));
    h.process("c-8");
    assert_eq!(h.take(), [process("c-8")]);
    h.process("c-9");
    assert_eq!(h.take(), [busy("c-9")]);
    assert_eq!(h.session.counters().process_busy, 2);
}

#[test]
fn process_in_flight_max_comes_from_the_config() {
    let mut h = Harness::new(SessionConfig {
        process_in_flight_max: 1,
        ..SessionConfig::default()
    });
    h.process("a");
    h.process("b");
    assert_eq!(h.take(), [process("a"), busy("b")]);
}

#[test]
fn process_payload_keeps_unknown_fields() {
    let mut h = Harness::new(SessionConfig::default());
    let json =
        r#"{"conversation_id": "c-1", "byok_keys": {"openai": "k"}, "finalization_job_id": "j"}"#;
    h.message(PROCESS_CONVERSATION, json.as_bytes());
    assert_eq!(
        h.take(),
        [Event::Process {
            conversation: "c-1".to_string(),
            payload: json.to_string(),
        }]
    );
}

#[test]
fn session_end_forgets_in_flight_calls() {
    let mut h = Harness::new(SessionConfig::default());
    h.process("c-1");
    h.end();
    assert_eq!(h.session.process_in_flight(), 0);
}

// Speaker samples, heartbeats and unknown headers.

#[test]
fn speaker_sample_is_forwarded() {
    let mut h = Harness::new(SessionConfig::default());
    h.message(
        SPEAKER_SAMPLE,
        br#"{"person_id": "p-1", "conversation_id": "c-1", "segment_ids": ["s1"]}"#,
    );
    assert_eq!(
        h.take(),
        [Event::SpeakerSample {
            person: "p-1".to_string(),
            conversation: "c-1".to_string(),
            segment_ids: r#"["s1"]"#.to_string(),
        }]
    );
}

#[test]
fn ignored_speaker_samples_emit_nothing() {
    let mut h = Harness::new(SessionConfig::default());
    for json in [
        r#"{"person_id": "", "conversation_id": "c-1", "segment_ids": ["s1"]}"#,
        r#"{"person_id": "p-1", "conversation_id": "", "segment_ids": ["s1"]}"#,
        r#"{"person_id": "p-1", "conversation_id": "c-1", "segment_ids": []}"#,
        r#"{"person_id": "p-1", "conversation_id": "c-1"}"#,
    ] {
        h.message(SPEAKER_SAMPLE, json.as_bytes());
    }
    assert_eq!(h.take(), []);
    assert_eq!(h.session.counters().ignored_speaker_sample_frames, 4);
}

#[test]
fn heartbeats_do_nothing_and_unknown_headers_are_reported() {
    let mut h = Harness::new(SessionConfig::default());
    h.message(HEARTBEAT, b"");
    h.message(999, b"whatever");
    assert_eq!(h.take(), [Event::UnknownHeader(999)]);
}

#[test]
fn counters_count_frames_by_kind_and_audio_bytes() {
    let mut h = Harness::new(with_transcripts());
    h.message(HEARTBEAT, b"");
    h.conversation("c-1");
    h.audio_len(0.0, 10);
    h.audio_len(1.0, 20);
    h.transcript(r#"{"segments": []}"#);
    h.process("c-1");
    h.message(
        SPEAKER_SAMPLE,
        br#"{"person_id": "p", "conversation_id": "c", "segment_ids": ["s"]}"#,
    );
    h.message(7, b"");
    assert_eq!(
        *h.session.counters(),
        SessionCounters {
            audio_bytes: 30,
            heartbeat_frames: 1,
            audio_frames: 2,
            transcript_frames: 1,
            conversation_frames: 1,
            process_conversation_frames: 1,
            speaker_sample_frames: 1,
            ignored_speaker_sample_frames: 0,
            unknown_frames: 1,
            process_duplicates: 0,
            process_busy: 0,
        }
    );
}

// Construction.

#[test]
fn config_from_settings() {
    let mut settings = UserSettings::default();
    let plain = SessionConfig::from_settings(&settings, false);
    assert_eq!(plain, SessionConfig::default());
    assert!(SessionConfig::from_settings(&settings, true).transcripts_wanted);

    settings.private_cloud_sync_enabled = false;
    settings.apps.push(App {
        id: "app-1".to_string(),
        webhook_url: "http://127.0.0.1:9/app".to_string(),
        triggers: vec![Trigger::TranscriptProcessed, Trigger::AudioBytes],
    });
    settings.audio_bytes_webhook = Some(AudioBytesWebhook {
        url: "http://127.0.0.1:9/audio".to_string(),
        delay_seconds: 3600,
    });
    let config = SessionConfig::from_settings(&settings, false);
    assert!(!config.private_cloud_enabled);
    assert!(config.transcripts_wanted);
    assert_eq!(config.app_audio_seconds, Some(APP_AUDIO_SECONDS));
    assert_eq!(config.webhook_audio_seconds, Some(ACCUMULATOR_SECONDS_MAX));
}

#[test]
fn a_session_stays_small() {
    assert!(
        std::mem::size_of::<Session>() <= 640,
        "Session is {} bytes",
        std::mem::size_of::<Session>()
    );
}

#[test]
fn new_session_state() {
    let session = Session::new(id("user-1"), 16000, SessionConfig::default());
    assert_eq!(session.uid(), &id("user-1"));
    assert_eq!(session.sample_rate_hz(), 16000);
    assert_eq!(session.conversation(), None);
    assert_eq!(session.next_deadline(), None);
    assert!(!session.is_ended());
}

#[test]
#[should_panic(expected = "sample rate out of range")]
fn sample_rate_outside_the_protocol_range_is_refused() {
    Session::new(id("user-1"), 7999, SessionConfig::default());
}

/// A long scripted run: every batch is opened before it is appended to and closed exactly once,
/// holds only its own conversation's audio, never exceeds its size limit by more than one frame,
/// and every stored byte arrives in some batch.
#[test]
fn long_run_batches_are_well_formed() {
    let mut h = Harness::new(SessionConfig::default());
    let mut state = 7u64;
    let mut stored = 0usize;
    for step in 0..3000u32 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let roll = (state >> 33) as u32;
        h.advance_ms(u64::from(roll % 3000));
        match roll % 10 {
            0 => h.conversation(&format!("c-{}", roll % 4)),
            1 => h.transcript(&format!(
                r#"{{"segments": [], "memory_id": "c-{}"}}"#,
                roll % 4
            )),
            2 => h.deadline(),
            _ => {
                let len = (roll as usize % 3) * SECOND_BYTES;
                if h.session.conversation().is_some() && len > 0 {
                    stored += len;
                }
                h.audio_len(f64::from(step), len);
            }
        }
    }
    h.end();
    let mut open_bytes: Option<usize> = None;
    let mut total = 0usize;
    for event in h.take() {
        match event {
            Event::BatchOpen { .. } => {
                assert_eq!(open_bytes, None, "opened twice");
                open_bytes = Some(0);
            }
            Event::Append(bytes) => {
                let held = open_bytes.as_mut().expect("append without a batch");
                assert!(*held < BATCH_BYTES, "append after the size limit");
                *held += bytes.len();
                total += bytes.len();
            }
            Event::BatchClose(_) => {
                assert!(open_bytes.take().is_some(), "closed without a batch");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(open_bytes, None, "the end closes the last batch");
    assert_eq!(total, stored);
}
