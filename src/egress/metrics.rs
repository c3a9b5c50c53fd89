//! Egress metrics (`pusher_egress_*`, `pusher_process_calls_*`, `pusher_speaker_sample*`),
//! resolved once at start; every label set is closed (target kinds and results are enums).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::answer::ProcessOutcome;
use super::target::{TARGET_KINDS, TargetKind};
use crate::metrics::{counter, gauge};

/// How one HTTP attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    /// 2xx.
    Delivered,
    /// Any other status, or the connection failed.
    Failed,
    /// No complete answer within the target's timeout.
    TimedOut,
    /// Dropped because its session ended.
    Cancelled,
}

const ATTEMPT_RESULTS: [AttemptResult; 4] = [
    AttemptResult::Delivered,
    AttemptResult::Failed,
    AttemptResult::TimedOut,
    AttemptResult::Cancelled,
];

impl AttemptResult {
    fn label(self) -> &'static str {
        match self {
            AttemptResult::Delivered => "delivered",
            AttemptResult::Failed => "failed",
            AttemptResult::TimedOut => "timed_out",
            AttemptResult::Cancelled => "cancelled",
        }
    }
}

const PROCESS_RESULTS: [&str; 4] = ["success", "not_found", "error", "timeout"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    target: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetResultLabel {
    target: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Per target kind: attempts by result, items given up, latency, in flight.
#[derive(Clone)]
struct TargetMetrics {
    attempts: [Counter; ATTEMPT_RESULTS.len()],
    dropped: Counter,
    duration: Histogram,
    in_flight: Gauge,
}

/// Egress's metric handles (registered once at start; clones share the values).
#[derive(Clone)]
pub struct EgressMetrics {
    targets: Vec<TargetMetrics>,
    /// `pusher_process_calls_created_total`: process-conversation calls started.
    pub process_created: Counter,
    process_done: [Counter; PROCESS_RESULTS.len()],
    /// `pusher_process_calls_cancelled_total`: calls dropped because their session ended.
    pub process_cancelled: Counter,
    /// `pusher_process_calls_in_flight`: calls started and not yet answered or cancelled.
    pub process_in_flight: Gauge,
    /// `pusher_process_busy_total`: 104s answered at once with a `busy` 201 (the session's or the
    /// core's bound reached).
    pub process_busy: Counter,
    /// `pusher_process_duplicates_total`: 104s not sent because their conversation was in flight.
    pub process_duplicates: Counter,
    /// 201s whose session had ended (or forgotten the call) when they came back.
    pub process_replies_dropped: Counter,
    /// `pusher_egress_items_discarded_at_session_end_total`: transcript and audio items still in
    /// their rings when their session ended.
    pub items_discarded_at_end: Counter,
    /// `pusher_speaker_samples_queued_total`: speaker-sample requests put in a delay queue.
    pub speaker_samples_queued: Counter,
    /// `pusher_speaker_samples_dropped_total`: speaker-sample requests dropped (a full queue, a
    /// session over its bound, no `speaker_sample_url`), docs/downstream.md §4.
    pub speaker_samples_dropped: Counter,
    /// `pusher_speaker_sample_queue_len`: requests waiting for their due time, all cores.
    pub speaker_sample_queue_len: Gauge,
    /// `pusher_audio_accumulator_bytes`: bytes reserved by open sessions' audio accumulators.
    pub accumulator_bytes: Gauge,
    /// `pusher_settings_cache_hits_total`: `http` settings lookups answered from the cache.
    pub settings_cache_hits: Counter,
    /// `pusher_settings_cache_misses_total`: `http` settings lookups that fetched.
    pub settings_cache_misses: Counter,
}

impl EgressMetrics {
    /// Registers in `registry` (expected to carry the `pusher` prefix).
    pub fn register(registry: &mut Registry) -> EgressMetrics {
        let attempts = Family::<TargetResultLabel, Counter>::default();
        registry.register(
            "egress_requests",
            "HTTP attempts to downstreams, by target kind and result (delivered, failed, timed_out, cancelled)",
            attempts.clone(),
        );
        let dropped = Family::<TargetLabel, Counter>::default();
        registry.register(
            "egress_dropped_items",
            "items given up for a target after their last attempt failed, timed out or was cancelled",
            dropped.clone(),
        );
        let duration = Family::<TargetLabel, Histogram>::new_with_constructor(|| {
            // 1 ms .. ~33 s.
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "egress_request_duration_seconds",
            "time of completed HTTP attempts (answered or timed out), by target kind",
            duration.clone(),
        );
        let in_flight = Family::<TargetLabel, Gauge>::default();
        registry.register(
            "egress_in_flight",
            "HTTP attempts in flight, by target kind",
            in_flight.clone(),
        );
        let targets = TARGET_KINDS
            .iter()
            .map(|kind| {
                let target = kind.label();
                TargetMetrics {
                    attempts: ATTEMPT_RESULTS.map(|r| {
                        attempts
                            .get_or_create(&TargetResultLabel {
                                target,
                                result: r.label(),
                            })
                            .clone()
                    }),
                    dropped: dropped.get_or_create(&TargetLabel { target }).clone(),
                    duration: duration.get_or_create(&TargetLabel { target }).clone(),
                    in_flight: in_flight.get_or_create(&TargetLabel { target }).clone(),
                }
            })
            .collect();
        let done = Family::<ResultLabel, Counter>::default();
        registry.register(
            "process_calls_done",
            "process-conversation calls answered, by result (success, not_found, error, timeout)",
            done.clone(),
        );
        EgressMetrics {
            targets,
            process_created: counter(
                registry,
                "process_calls_created",
                "process-conversation calls started",
            ),
            process_done: PROCESS_RESULTS
                .map(|result| done.get_or_create(&ResultLabel { result }).clone()),
            process_cancelled: counter(
                registry,
                "process_calls_cancelled",
                "process-conversation calls dropped because their session ended",
            ),
            process_in_flight: gauge(
                registry,
                "process_calls_in_flight",
                "process-conversation calls started and not yet answered or cancelled",
            ),
            process_busy: counter(
                registry,
                "process_busy",
                "104s answered at once with 201 busy (per-session or per-core bound reached)",
            ),
            process_duplicates: counter(
                registry,
                "process_duplicates",
                "104s not sent because the same conversation was in flight in the session",
            ),
            process_replies_dropped: counter(
                registry,
                "process_replies_dropped",
                "201s not sent because their session ended before the answer came back",
            ),
            items_discarded_at_end: counter(
                registry,
                "egress_items_discarded_at_session_end",
                "transcript and audio items still waiting in their rings when their session ended",
            ),
            speaker_samples_queued: counter(
                registry,
                "speaker_samples_queued",
                "speaker-sample requests put in a core's delay queue",
            ),
            speaker_samples_dropped: counter(
                registry,
                "speaker_samples_dropped",
                "speaker-sample requests dropped (oldest first) from a full delay queue or a session over its bound, or without a speaker-sample URL",
            ),
            speaker_sample_queue_len: gauge(
                registry,
                "speaker_sample_queue_len",
                "speaker-sample requests waiting for their due time, all cores",
            ),
            accumulator_bytes: gauge(
                registry,
                "audio_accumulator_bytes",
                "bytes reserved by open sessions' app/webhook audio accumulators",
            ),
            settings_cache_hits: counter(
                registry,
                "settings_cache_hits",
                "http settings source: lookups answered from the cache",
            ),
            settings_cache_misses: counter(
                registry,
                "settings_cache_misses",
                "http settings source: lookups that fetched the settings",
            ),
        }
    }

    /// Starts one attempt at `target`: counted in flight until finished (or dropped: cancelled).
    pub fn attempt(&self, target: TargetKind) -> Attempt<'_> {
        let metrics = &self.targets[target.index()];
        metrics.in_flight.inc();
        Attempt {
            metrics,
            started: std::time::Instant::now(),
            finished: false,
        }
    }

    /// An item given up for `target`.
    pub fn dropped(&self, target: TargetKind) {
        self.targets[target.index()].dropped.inc();
    }

    /// Counts a finished call in `pusher_process_calls_done_total{result}` by its outcome's label.
    pub fn process_done(&self, outcome: &ProcessOutcome) {
        let index = PROCESS_RESULTS
            .iter()
            .position(|&r| r == outcome.label())
            .expect("every result is listed");
        self.process_done[index].inc();
    }

    /// HTTP attempts in flight over every target kind (for `/debug/memory`).
    pub fn attempts_in_flight(&self) -> i64 {
        self.targets.iter().map(|t| t.in_flight.get()).sum()
    }
}

/// One attempt in flight; dropping it unfinished counts it cancelled.
pub struct Attempt<'m> {
    metrics: &'m TargetMetrics,
    started: std::time::Instant,
    finished: bool,
}

impl Attempt<'_> {
    /// Ends the attempt: counts it by `result` and, unless cancelled, observes its duration.
    pub fn finish(mut self, result: AttemptResult) {
        self.record(result);
    }

    fn record(&mut self, result: AttemptResult) {
        self.finished = true;
        self.metrics.in_flight.dec();
        let index = ATTEMPT_RESULTS
            .iter()
            .position(|&r| r == result)
            .expect("every result is listed");
        self.metrics.attempts[index].inc();
        if result != AttemptResult::Cancelled {
            self.metrics
                .duration
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.record(AttemptResult::Cancelled);
        }
    }
}
