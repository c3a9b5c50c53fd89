//! Prometheus metrics (`pusher_` prefix, `_total` counters, base units).
//!
//! Invariant: every handle a hot path touches is resolved once at start (no label lookup per
//! frame); label sets are closed (frame kinds, close codes, cores), so the registry never grows
//! with load.

pub mod exposition;

use crate::websocket::close;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Kinds of inbound message, in the order of [`FrameKind::label`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A 100 heartbeat.
    Heartbeat,
    /// A 101 audio frame.
    Audio,
    /// A 102 transcript frame.
    Transcript,
    /// A 103 conversation-id frame.
    Conversation,
    /// A 104 process-conversation frame.
    ProcessConversation,
    /// A 105 speaker-sample request.
    SpeakerSample,
    /// Any other header: ignored, but counted.
    Unknown,
}

/// Every [`FrameKind`], in the order their counters are registered and indexed.
pub const FRAME_KINDS: [FrameKind; 7] = [
    FrameKind::Heartbeat,
    FrameKind::Audio,
    FrameKind::Transcript,
    FrameKind::Conversation,
    FrameKind::ProcessConversation,
    FrameKind::SpeakerSample,
    FrameKind::Unknown,
];

impl FrameKind {
    /// The `kind` label value of `pusher_frames_received_total` and
    /// `pusher_frame_received_bytes_total`.
    pub fn label(self) -> &'static str {
        match self {
            FrameKind::Heartbeat => "heartbeat",
            FrameKind::Audio => "audio",
            FrameKind::Transcript => "transcript",
            FrameKind::Conversation => "conversation",
            FrameKind::ProcessConversation => "process_conversation",
            FrameKind::SpeakerSample => "speaker_sample",
            FrameKind::Unknown => "unknown",
        }
    }
}

/// Droppable streams (docs/protocol.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Transcript items (from 102s).
    Transcript,
    /// App-audio and webhook-audio items (one ring shared by both).
    AudioBytes,
    /// Speaker-sample requests (from 105s).
    SpeakerSample,
}

/// Every [`Stream`], in the order their counters and gauges are indexed.
pub const STREAMS: [Stream; 3] = [
    Stream::Transcript,
    Stream::AudioBytes,
    Stream::SpeakerSample,
];

impl Stream {
    /// The `stream` label value of the per-stream metrics.
    pub fn label(self) -> &'static str {
        match self {
            Stream::Transcript => "transcript",
            Stream::AudioBytes => "audio_bytes",
            Stream::SpeakerSample => "speaker_sample",
        }
    }
}

/// Close codes counted; anything else is counted under "other".
pub const CLOSE_CODES: [u16; 11] = [
    close::NORMAL,
    close::GOING_AWAY,
    close::PROTOCOL_ERROR,
    close::UNSUPPORTED_DATA,
    close::NO_STATUS_RECEIVED,
    close::CLOSED_ABNORMALLY,
    close::INVALID_PAYLOAD,
    close::POLICY_VIOLATION,
    close::MESSAGE_TOO_BIG,
    close::INTERNAL_ERROR,
    close::TRY_AGAIN_LATER,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabel {
    stream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CoreLabel {
    core: String,
}

/// Why an upgrade or request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A malformed head or query, or bad WebSocket headers (400, 405, 426, 431).
    BadRequest,
    /// A missing or wrong bearer token (401).
    Unauthorized,
    /// No capacity: registered as a label value, but sessions are now turned away after the
    /// upgrade instead ([`TurnAway::Full`]), so it stays 0.
    Capacity,
    /// Draining: registered as a label value, but sessions are now turned away after the upgrade
    /// instead ([`TurnAway::Draining`]), so it stays 0.
    Draining,
    /// The user's settings could not be loaded (503, `docs/downstream.md §5`).
    Settings,
    /// No complete answer within `handshake_timeout_ms` of the accept: closed without one.
    HandshakeTimeout,
}

const REFUSALS: [Refusal; 6] = [
    Refusal::BadRequest,
    Refusal::Unauthorized,
    Refusal::Capacity,
    Refusal::Draining,
    Refusal::Settings,
    Refusal::HandshakeTimeout,
];

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::BadRequest => "bad_request",
            Refusal::Unauthorized => "unauthorized",
            Refusal::Capacity => "capacity",
            Refusal::Draining => "draining",
            Refusal::Settings => "settings",
            Refusal::HandshakeTimeout => "handshake_timeout",
        }
    }
}

/// Why a session was closed right after its upgrade (docs/protocol.md §1: never an HTTP 503 for
/// these, so the client's circuit breaker does not count them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnAway {
    /// The drain began: close 1001.
    Draining,
    /// No session slot free on the core: close 1013.
    Full,
}

const TURN_AWAYS: [TurnAway; 2] = [TurnAway::Draining, TurnAway::Full];

impl TurnAway {
    fn label(self) -> &'static str {
        match self {
            TurnAway::Draining => "draining",
            TurnAway::Full => "full",
        }
    }
}

/// Gauges one worker owns.
#[derive(Clone)]
pub struct CoreGauges {
    /// `pusher_sessions_open{core}`: sessions open on this core.
    pub sessions_open: Gauge,
    /// `pusher_sessions_capacity{core}`: this core's session slots.
    pub sessions_capacity: Gauge,
    /// `pusher_recv_buffers_in_use{core}`: receive buffers lent out from this core's pool.
    pub recv_buffers_in_use: Gauge,
    /// `pusher_recv_buffers_capacity{core}`: receive buffers in this core's pool.
    pub recv_buffers_capacity: Gauge,
    /// `pusher_recv_buffers_parked{core}`: receive buffers held by incomplete messages (sampled
    /// every 10 ms).
    pub recv_buffers_parked: Gauge,
    /// `pusher_payload_arena_used_bytes{core}`: payload arena bytes in use.
    pub arena_used_bytes: Gauge,
    /// `pusher_payload_arena_capacity_bytes{core}`: the payload arena's size in bytes.
    pub arena_capacity_bytes: Gauge,
    /// `pusher_outbound_pending_bytes{core}`: outbound bytes the kernel has not taken yet.
    pub outbound_pending_bytes: Gauge,
    /// `pusher_handshakes_in_flight{core}`: connections between accept and upgrade (sampled every
    /// 10 ms).
    pub handshakes_in_flight: Gauge,
    /// `pusher_handshakes_capacity{core}`: handshake slots (`handshake_buffers_per_core`).
    pub handshakes_capacity: Gauge,
    /// `pusher_spill_waiters{core}`: sessions stalled on the spill log, queued to be woken when
    /// it has room (sampled every 10 ms; at most this core's session slots; a session that
    /// ended while queued counts until the wake-up reaches its entry).
    pub spill_waiters: Gauge,
    /// `pusher_speaker_sample_arena_used_bytes{core}`: bytes of the speaker-sample arena held
    /// by queued request bodies (sampled every 10 ms; at most `speaker_sample_queue_per_core`
    /// KiB).
    pub speaker_arena_used_bytes: Gauge,
}

/// The core metrics: the registry (which egress, spill and upload register into at start) and
/// the resolved handles the workers touch.
pub struct Metrics {
    registry: Registry,
    /// `pusher_sessions_opened_total`: WebSocket sessions upgraded.
    pub sessions_opened: Counter,
    refused: Vec<(Refusal, Counter)>,
    turned_away: Vec<(TurnAway, Counter)>,
    closed: Vec<(u16, Counter)>,
    closed_other: Counter,
    frames: Vec<Counter>,
    frame_bytes: Vec<Counter>,
    ring_drops: Vec<Counter>,
    ring_high_water: Vec<Gauge>,
    /// `pusher_payload_arena_evicted_blocks_total`: live payload blocks evicted from a full arena.
    pub ring_arena_evictions: Counter,
    /// `pusher_results_sent_total`: 201 frames sent.
    pub results_sent: Counter,
    /// `pusher_peers_dropped_slow_total`: connections dropped because their unsent bytes passed the
    /// per-session or per-core bound (docs/protocol.md §4).
    pub peers_dropped_slow: Counter,
    /// `pusher_audio_accumulators_refused_total`: sessions denied an app/webhook audio accumulator
    /// by the per-core accumulator budget (docs/protocol.md §3).
    pub accumulators_refused: Counter,
    /// `pusher_http_requests_total`: plain HTTP requests answered (not upgrades).
    pub http_requests: Counter,
    /// `pusher_handshakes_evicted_total`: connections closed before their head was complete to free
    /// a handshake slot (docs/protocol.md §1).
    pub handshakes_evicted: Counter,
    /// `pusher_recv_buffers_evicted_total`: receive buffers taken back from incomplete messages
    /// (their connections closed 1008, docs/protocol.md §2).
    pub recv_buffers_evicted: Counter,
    /// `pusher_accept_errors_total`: failed `accept(2)` calls (e.g. EMFILE).
    pub accept_errors: Counter,
    /// `pusher_draining`: 1 once a drain began (docs/protocol.md §5).
    pub draining: Gauge,
    /// Omi's name for `draining` (its dashboards and rollout gate read it).
    pub drain_in_progress: Gauge,
    /// 1 while `/ready` answers 200 (set when scraped), Omi's `pusher_ready`.
    pub ready: Gauge,
    /// Sessions open over all cores, Omi's `pusher_active_ws_connections`.
    pub active_ws_connections: Gauge,
    /// `pusher_memory_budget_bytes`: the worst-case memory computed from the config at start.
    pub budget_bytes: Gauge,
    /// The process's resident set size (set when scraped), to read against `budget_bytes`.
    pub resident_bytes: Gauge,
    cores: Vec<CoreGauges>,
}

impl Metrics {
    /// Registers every core metric (and `pusher_driver_info{driver}`) with per-core gauges for
    /// `workers` cores, and resolves every label set's handle.
    pub fn new(driver: &str, workers: usize) -> Metrics {
        let mut registry = Registry::with_prefix("pusher");
        registry.register(
            "driver",
            "io driver the workers run (io_uring or epoll)",
            Info::new(vec![("driver".to_string(), driver.to_string())]),
        );
        let sessions_opened = counter(
            &mut registry,
            "sessions_opened",
            "WebSocket sessions upgraded",
        );
        let refused_family = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "sessions_refused",
            "upgrades refused before the 101, by reason (bad request, query or token, header too large, handshake timeout; capacity and draining stay 0: those sessions are turned away after the upgrade, pusher_sessions_turned_away_total)",
            refused_family.clone(),
        );
        let refused = REFUSALS
            .iter()
            .map(|&r| {
                (
                    r,
                    refused_family
                        .get_or_create(&ReasonLabel { reason: r.label() })
                        .clone(),
                )
            })
            .collect();
        let turned_family = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "sessions_turned_away",
            "sessions closed right after their upgrade, by reason (draining: 1001, full: 1013)",
            turned_family.clone(),
        );
        let turned_away = TURN_AWAYS
            .iter()
            .map(|&t| {
                (
                    t,
                    turned_family
                        .get_or_create(&ReasonLabel { reason: t.label() })
                        .clone(),
                )
            })
            .collect();
        let closed_family = Family::<CodeLabel, Counter>::default();
        registry.register(
            "sessions_closed",
            "sessions ended, by WebSocket close code (1006 = connection lost without a close)",
            closed_family.clone(),
        );
        let closed = CLOSE_CODES
            .iter()
            .map(|&c| {
                (
                    c,
                    closed_family
                        .get_or_create(&CodeLabel {
                            code: c.to_string(),
                        })
                        .clone(),
                )
            })
            .collect();
        let closed_other = closed_family
            .get_or_create(&CodeLabel {
                code: "other".into(),
            })
            .clone();
        let frames_family = Family::<KindLabel, Counter>::default();
        registry.register(
            "frames_received",
            "inbound pusher messages, by header kind",
            frames_family.clone(),
        );
        let bytes_family = Family::<KindLabel, Counter>::default();
        registry.register(
            "frame_received_bytes",
            "inbound pusher message bytes (header included), by kind",
            bytes_family.clone(),
        );
        let frames = FRAME_KINDS
            .iter()
            .map(|k| {
                frames_family
                    .get_or_create(&KindLabel { kind: k.label() })
                    .clone()
            })
            .collect();
        let frame_bytes = FRAME_KINDS
            .iter()
            .map(|k| {
                bytes_family
                    .get_or_create(&KindLabel { kind: k.label() })
                    .clone()
            })
            .collect();
        let drops_family = Family::<StreamLabel, Counter>::default();
        registry.register(
            "ring_dropped_items",
            "droppable items dropped (oldest first) because a ring or the payload arena was full",
            drops_family.clone(),
        );
        let high_family = Family::<StreamLabel, Gauge>::default();
        registry.register(
            "ring_high_water_items",
            "most items any one session's ring has held",
            high_family.clone(),
        );
        let ring_drops = STREAMS
            .iter()
            .map(|s| {
                drops_family
                    .get_or_create(&StreamLabel { stream: s.label() })
                    .clone()
            })
            .collect();
        let ring_high_water = STREAMS
            .iter()
            .map(|s| {
                high_family
                    .get_or_create(&StreamLabel { stream: s.label() })
                    .clone()
            })
            .collect();
        let ring_arena_evictions = counter(
            &mut registry,
            "payload_arena_evicted_blocks",
            "live payload blocks evicted from a full arena (oldest first)",
        );
        let results_sent = counter(&mut registry, "results_sent", "201 frames sent");
        let peers_dropped_slow = counter(
            &mut registry,
            "peers_dropped_slow",
            "connections dropped because their unsent outbound bytes passed the bound",
        );
        let accumulators_refused = counter(
            &mut registry,
            "audio_accumulators_refused",
            "sessions that got no app/webhook audio accumulator because the per-core accumulator budget was used up",
        );
        let http_requests = counter(
            &mut registry,
            "http_requests",
            "plain HTTP requests answered",
        );
        let handshakes_evicted = counter(
            &mut registry,
            "handshakes_evicted",
            "connections closed before their request head was complete because every handshake slot was taken and another connection waited",
        );
        let recv_buffers_evicted = counter(
            &mut registry,
            "recv_buffers_evicted",
            "receive buffers taken back from connections whose message stayed incomplete, because every buffer was lent and another connection needed one (closed 1008)",
        );
        let accept_errors = counter(
            &mut registry,
            "accept_errors",
            "accept(2) failures (e.g. EMFILE: the open-files limit reached)",
        );
        let draining = gauge(
            &mut registry,
            "draining",
            "1 once a drain began (SIGTERM or POST /__internal/drain)",
        );
        let drain_in_progress = gauge(
            &mut registry,
            "drain_in_progress",
            "1 once a drain began (the same as pusher_draining, under the Omi chart's name)",
        );
        let ready = gauge(
            &mut registry,
            "ready",
            "1 while /ready answers 200 (serving, not draining, a session slot free), else 0",
        );
        let active_ws_connections = gauge(
            &mut registry,
            "active_ws_connections",
            "WebSocket sessions open, all cores",
        );
        let budget_bytes = gauge(
            &mut registry,
            "memory_budget_bytes",
            "worst-case memory computed from the config at start",
        );
        let resident_bytes = gauge(
            &mut registry,
            "resident_memory_bytes",
            "resident set size of the process (VmRSS), read when /metrics is scraped",
        );
        let cores = register_cores(&mut registry, workers);
        Metrics {
            registry,
            sessions_opened,
            refused,
            turned_away,
            closed,
            closed_other,
            frames,
            frame_bytes,
            ring_drops,
            ring_high_water,
            ring_arena_evictions,
            results_sent,
            peers_dropped_slow,
            accumulators_refused,
            http_requests,
            handshakes_evicted,
            recv_buffers_evicted,
            accept_errors,
            draining,
            drain_in_progress,
            ready,
            active_ws_connections,
            budget_bytes,
            resident_bytes,
            cores,
        }
    }

    /// The registry, for modules that register their own metrics at start.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// `pusher_sessions_refused_total{reason}` for `reason`.
    pub fn refused(&self, reason: Refusal) -> &Counter {
        &self
            .refused
            .iter()
            .find(|(r, _)| *r == reason)
            .expect("every refusal registered")
            .1
    }

    /// `pusher_sessions_turned_away_total{reason}` for `reason`.
    pub fn turned_away(&self, reason: TurnAway) -> &Counter {
        &self
            .turned_away
            .iter()
            .find(|(t, _)| *t == reason)
            .expect("every reason registered")
            .1
    }

    /// The drain began: both drain gauges go to 1, readiness to 0.
    pub fn drain_began(&self) {
        self.draining.set(1);
        self.drain_in_progress.set(1);
        self.ready.set(0);
    }

    /// `pusher_sessions_closed_total{code}` for a close code; a code not in [`CLOSE_CODES`] counts
    /// under `code="other"`.
    pub fn closed(&self, code: u16) -> &Counter {
        self.closed
            .iter()
            .find(|(c, _)| *c == code)
            .map_or(&self.closed_other, |(_, counter)| counter)
    }

    /// Counts one inbound message of `kind` and its `bytes` (the 4-byte header included).
    pub fn frame(&self, kind: FrameKind, bytes: usize) {
        let index = FRAME_KINDS
            .iter()
            .position(|&k| k == kind)
            .expect("kind listed");
        self.frames[index].inc();
        self.frame_bytes[index].inc_by(bytes as u64);
    }

    /// Adds `items` to `pusher_ring_dropped_items_total{stream}`.
    pub fn ring_dropped(&self, stream: Stream, items: u64) {
        self.ring_drops[stream_index(stream)].inc_by(items);
    }

    /// Raises the stream's high-water mark to `items` if it is higher.
    pub fn ring_len_seen(&self, stream: Stream, items: usize) {
        let gauge = &self.ring_high_water[stream_index(stream)];
        if items as i64 > gauge.get() {
            gauge.set(items as i64);
        }
    }

    /// The gauges of worker `core` (`0..workers`; panics beyond).
    pub fn core(&self, core: usize) -> &CoreGauges {
        &self.cores[core]
    }

    /// Every metric in `format` (OpenMetrics, or Prometheus' classic text derived from it).
    pub fn encode(&self, format: exposition::Format) -> String {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        match format {
            exposition::Format::OpenMetrics => out,
            exposition::Format::Classic => exposition::to_classic(&out),
        }
    }

    /// Drops per stream, for /debug/memory.
    pub fn ring_drops_by_stream(&self) -> impl Iterator<Item = (&'static str, u64, i64)> + '_ {
        STREAMS.iter().map(|&s| {
            let i = stream_index(s);
            (
                s.label(),
                self.ring_drops[i].get(),
                self.ring_high_water[i].get(),
            )
        })
    }
}

/// Registers a counter under `name` (exposed as `pusher_{name}_total`) and returns its handle.
pub fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let counter = Counter::default();
    registry.register(name, help, counter.clone());
    counter
}

/// Registers a gauge under `name` (exposed as `pusher_{name}`) and returns its handle.
pub fn gauge(registry: &mut Registry, name: &str, help: &str) -> Gauge {
    let gauge = Gauge::default();
    registry.register(name, help, gauge.clone());
    gauge
}

fn stream_index(stream: Stream) -> usize {
    STREAMS
        .iter()
        .position(|&s| s == stream)
        .expect("stream listed")
}

/// Registers the per-core gauges once and resolves each core's handles.
fn register_cores(registry: &mut Registry, workers: usize) -> Vec<CoreGauges> {
    let mut family = |name: &str, help: &str| {
        let family = Family::<CoreLabel, Gauge>::default();
        registry.register(name, help, family.clone());
        family
    };
    let sessions_open = family("sessions_open", "sessions open, per core");
    let sessions_capacity = family("sessions_capacity", "session slots, per core");
    let buffers_in_use = family("recv_buffers_in_use", "receive buffers lent out, per core");
    let buffers_capacity = family(
        "recv_buffers_capacity",
        "receive buffers in the pool, per core",
    );
    let buffers_parked = family(
        "recv_buffers_parked",
        "receive buffers held by incomplete messages, per core (sampled every 10 ms)",
    );
    let arena_used = family(
        "payload_arena_used_bytes",
        "payload arena bytes in use, per core",
    );
    let arena_capacity = family(
        "payload_arena_capacity_bytes",
        "payload arena size, per core",
    );
    let outbound = family(
        "outbound_pending_bytes",
        "outbound bytes waiting for slow peers, per core",
    );
    let handshakes = family(
        "handshakes_in_flight",
        "connections between accept and upgrade, per core (sampled every 10 ms)",
    );
    let handshakes_capacity = family(
        "handshakes_capacity",
        "handshake slots, per core (handshake_buffers_per_core)",
    );
    let spill_waiters = family(
        "spill_waiters",
        "sessions stalled on the spill log, waiting to be woken when it has room, per core (sampled every 10 ms)",
    );
    let speaker_arena_used = family(
        "speaker_sample_arena_used_bytes",
        "speaker-sample arena bytes held by queued request bodies, per core (sampled every 10 ms)",
    );
    (0..workers)
        .map(|core| {
            let label = CoreLabel {
                core: core.to_string(),
            };
            CoreGauges {
                sessions_open: sessions_open.get_or_create(&label).clone(),
                sessions_capacity: sessions_capacity.get_or_create(&label).clone(),
                recv_buffers_in_use: buffers_in_use.get_or_create(&label).clone(),
                recv_buffers_capacity: buffers_capacity.get_or_create(&label).clone(),
                recv_buffers_parked: buffers_parked.get_or_create(&label).clone(),
                arena_used_bytes: arena_used.get_or_create(&label).clone(),
                arena_capacity_bytes: arena_capacity.get_or_create(&label).clone(),
                outbound_pending_bytes: outbound.get_or_create(&label).clone(),
                handshakes_in_flight: handshakes.get_or_create(&label).clone(),
                handshakes_capacity: handshakes_capacity.get_or_create(&label).clone(),
                spill_waiters: spill_waiters.get_or_create(&label).clone(),
                speaker_arena_used_bytes: speaker_arena_used.get_or_create(&label).clone(),
            }
        })
        .collect()
}
