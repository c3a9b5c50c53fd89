//! Where egress sends things: the kinds of target (each with its own timeout and metric label) and
//! how a target's URL gets its query (docs/downstream.md, "Query strings": `?` or `&`, whichever
//! the URL needs).
//!
//! Invariant: pure functions; the uid and sample rate are appended unencoded, as the Python
//! service did (a uid's characters, `[A-Za-z0-9._:@-]`, are all legal in a query).

use std::time::Duration;

use crate::config::Config;

/// One kind of downstream call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetKind {
    /// A transcript item to an app with the `transcript_processed` trigger.
    AppTranscript,
    /// A transcript item to the user's realtime-transcript webhook.
    TranscriptWebhook,
    /// A transcript item to a global transcript hook.
    TranscriptHook,
    /// An app-audio item to an app with the `audio_bytes` trigger.
    AppAudio,
    /// A webhook-audio item to the user's audio-bytes webhook.
    AudioWebhook,
    /// A process-conversation call (104).
    Processor,
    /// A due speaker-sample request (105).
    SpeakerSample,
    /// A webhook's `message` relayed to the backend.
    ResponseRelay,
    /// A user's settings from the `http` settings source.
    Settings,
}

/// Every [`TargetKind`], in the order their metrics are indexed ([`TargetKind::index`]).
pub const TARGET_KINDS: [TargetKind; 9] = [
    TargetKind::AppTranscript,
    TargetKind::TranscriptWebhook,
    TargetKind::TranscriptHook,
    TargetKind::AppAudio,
    TargetKind::AudioWebhook,
    TargetKind::Processor,
    TargetKind::SpeakerSample,
    TargetKind::ResponseRelay,
    TargetKind::Settings,
];

impl TargetKind {
    /// The `target` label value of the `pusher_egress_*` metrics.
    pub fn label(self) -> &'static str {
        match self {
            TargetKind::AppTranscript => "app_transcript",
            TargetKind::TranscriptWebhook => "transcript_webhook",
            TargetKind::TranscriptHook => "transcript_hook",
            TargetKind::AppAudio => "app_audio",
            TargetKind::AudioWebhook => "audio_webhook",
            TargetKind::Processor => "processor",
            TargetKind::SpeakerSample => "speaker_sample",
            TargetKind::ResponseRelay => "response_relay",
            TargetKind::Settings => "settings",
        }
    }

    /// The kind's position in [`TARGET_KINDS`].
    pub fn index(self) -> usize {
        TARGET_KINDS
            .iter()
            .position(|&k| k == self)
            .expect("every kind is listed")
    }

    /// Time allowed for one attempt (connect, request, response body), from the config.
    pub fn timeout(self, config: &Config) -> Duration {
        Duration::from_millis(match self {
            TargetKind::AppTranscript => config.app_webhook_timeout_ms,
            TargetKind::TranscriptWebhook => config.transcript_webhook_timeout_ms,
            TargetKind::TranscriptHook => config.transcript_hook_timeout_ms,
            TargetKind::AppAudio | TargetKind::AudioWebhook => config.audio_webhook_timeout_ms,
            TargetKind::Processor => config.processor_timeout_ms,
            TargetKind::SpeakerSample => config.speaker_sample_timeout_ms,
            TargetKind::ResponseRelay => config.app_webhook_timeout_ms,
            TargetKind::Settings => config.settings_timeout_ms,
        })
    }

    /// Whether an attempt may use a pooled connection and leave it for the next. A process
    /// call runs for seconds, so a kept connection saves little, and each pooled one (up to
    /// `processor_in_flight_max`) touched a little more of its buffers with every call it
    /// carried, raising resident memory for minutes (`docs/0007-resident-memory-under-churn.md`):
    /// it asks for `Connection: close` instead.
    pub fn keeps_connection(self) -> bool {
        self != TargetKind::Processor
    }

    /// True for deliveries whose `200 {"message": …}` answer may be relayed
    /// (docs/downstream.md §1).
    pub fn may_relay(self) -> bool {
        matches!(
            self,
            TargetKind::AppTranscript
                | TargetKind::TranscriptWebhook
                | TargetKind::AppAudio
                | TargetKind::AudioWebhook
        )
    }
}

/// `url` with `query` (already `k=v&k=v`) appended after `?`, or after `&` when the URL already
/// has a query. A fragment, if any, stays last.
pub fn with_query(url: &str, query: &str) -> String {
    let (base, fragment) = match url.find('#') {
        Some(at) => url.split_at(at),
        None => (url, ""),
    };
    let separator = match base.find('?') {
        None => "?",
        Some(at) if at + 1 == base.len() || base.ends_with('&') => "",
        Some(_) => "&",
    };
    let mut out = String::with_capacity(url.len() + query.len() + 1);
    out.push_str(base);
    out.push_str(separator);
    out.push_str(query);
    out.push_str(fragment);
    out
}

/// `?uid={uid}` joined onto `url`.
pub fn uid_url(url: &str, uid: &str) -> String {
    with_query(url, &format!("uid={uid}"))
}

/// `?sample_rate={R}&uid={uid}` joined onto `url`.
pub fn audio_url(url: &str, sample_rate_hz: u32, uid: &str) -> String {
    with_query(url, &format!("sample_rate={sample_rate_hz}&uid={uid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_with_question_mark_or_ampersand() {
        assert_eq!(uid_url("http://h/p", "u1"), "http://h/p?uid=u1");
        assert_eq!(uid_url("http://h/p?t=1", "u1"), "http://h/p?t=1&uid=u1");
        assert_eq!(uid_url("http://h/p?", "u1"), "http://h/p?uid=u1");
        assert_eq!(uid_url("http://h/p?t=1&", "u1"), "http://h/p?t=1&uid=u1");
        assert_eq!(uid_url("http://h/p#frag", "u1"), "http://h/p?uid=u1#frag");
        assert_eq!(
            audio_url("http://h/a?k=v", 16000, "a.b:c@d-e"),
            "http://h/a?k=v&sample_rate=16000&uid=a.b:c@d-e"
        );
    }

    #[test]
    fn every_kind_has_a_distinct_label_and_index() {
        let labels: std::collections::HashSet<_> = TARGET_KINDS.iter().map(|k| k.label()).collect();
        assert_eq!(labels.len(), TARGET_KINDS.len());
        for (i, kind) in TARGET_KINDS.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }

    #[test]
    fn only_process_calls_close_their_connection() {
        for kind in TARGET_KINDS {
            assert_eq!(
                kind.keeps_connection(),
                kind != TargetKind::Processor,
                "{kind:?}"
            );
        }
    }
}
