//! Configuration: embedded defaults, then the TOML file (`--config`), then environment
//! (`PUSHER_*`) and flags. Every limit the server relies on is a field here.
//!
//! Invariant: a [`Config`] returned by [`Config::load`] has passed [`Config::validate`], so the
//! rest of the server may rely on every bound being non-zero and within its documented range.

pub mod omi;
pub mod renamed;
pub mod store_location;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use renamed::Renamed;

use crate::websocket::codec::DecoderLimits;

/// Most worker threads (a thread and a runtime each; far beyond any machine's cores).
pub const WORKERS_MAX: usize = 1024;
/// Most global transcript hooks (each transcript item is sent to every one).
pub const TRANSCRIPT_HOOKS_MAX: usize = 16;
/// Bytes a 201 adds around the processor's answer (frame and JSON headers, the conversation id).
const REPLY_OVERHEAD_BYTES: usize = 512;

/// Which monoio driver the workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DriverChoice {
    /// io_uring when the kernel and seccomp allow it, else epoll.
    Auto,
    /// io_uring only; start fails if it is unavailable.
    Uring,
    /// epoll only.
    Epoll,
}

/// How log lines are written (`log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, coloured only on a terminal.
    Text,
    /// One JSON object per line with a Cloud Logging `severity`.
    Json,
}

/// Every setting of the server. Field docs state the default and the bound it imposes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the one HTTP/WebSocket port.
    pub listen: SocketAddr,
    /// Root of everything pusher writes to disk.
    pub data_dir: PathBuf,
    /// Worker threads, one per core; 0 = what the process may use (affinity mask and cgroup CPU
    /// quota, at least 1).
    pub workers: usize,
    /// Whether workers are pinned to CPUs of the affinity mask (`crate::cpus`).
    pub pin: crate::cpus::PinChoice,
    /// The io driver of the workers: io_uring, epoll, or the first that works.
    pub driver: DriverChoice,
    /// Text or JSON log lines (filtered by `RUST_LOG`).
    pub log_format: LogFormat,
    /// Per-user settings file (docs/downstream.md §5); none = every user gets the defaults.
    pub settings: Option<PathBuf>,
    /// `http` settings source (docs/downstream.md §5): `GET {settings_url}/{uid}` → one user's
    /// settings as JSON. Exclusive with `settings`.
    pub settings_url: Option<String>,
    /// How long a fetched user's settings are reused.
    pub settings_cache_ttl_ms: u64,
    /// Users whose settings the `http` source keeps cached.
    pub settings_cache_entries_max: usize,
    /// Bytes of settings the `http` source keeps cached (each entry weighs its JSON plus 512).
    pub settings_cache_bytes_max: u64,
    /// Time allowed for one settings fetch; past it the upgrade gets 503.
    pub settings_timeout_ms: u64,
    /// Conversation processor for 104s; none = every 104 gets 201 `processor_not_configured`.
    pub processor_url: Option<String>,
    /// Time allowed for one process-conversation call; past it the 201 says `timeout`.
    pub processor_timeout_ms: u64,
    /// Process-conversation calls in flight over all cores; beyond → 201 `busy`.
    pub processor_in_flight_max: usize,
    /// Largest processor answer read (it is merged into the 201); larger → 201 error.
    pub processor_response_bytes_max: usize,
    /// Largest 104 payload sent to the processor; larger → 201 error `payload_too_large`.
    pub process_payload_bytes_max: usize,
    /// Where due speaker-sample requests go; none = 105s are counted and dropped.
    pub speaker_sample_url: Option<String>,
    /// Delay from a 105's arrival to its request.
    pub speaker_sample_delay_s: u64,
    /// Per-worker delay queue of speaker-sample requests; full → oldest dropped (counted).
    /// Their bodies wait in an arena of 1 KiB per entry (`egress::delay::BODY_BYTES_PER_ENTRY`).
    pub speaker_sample_queue_per_core: usize,
    /// Time allowed for one speaker-sample request.
    pub speaker_sample_timeout_ms: u64,
    /// Global transcript hooks: every transcript item of every session is POSTed to each.
    pub transcript_hooks: Vec<String>,
    /// If set, a webhook's `200 {"message": …}` (longer than 5 characters) is POSTed here.
    pub response_relay_url: Option<String>,
    /// Time allowed for a transcript item to an app.
    pub app_webhook_timeout_ms: u64,
    /// Time allowed for a transcript item to the user's realtime-transcript webhook.
    pub transcript_webhook_timeout_ms: u64,
    /// Time allowed for a transcript item to a global hook.
    pub transcript_hook_timeout_ms: u64,
    /// Time allowed for an audio item to an app or the user's audio webhook.
    pub audio_webhook_timeout_ms: u64,
    /// Extra attempts of a delivery after a 5xx or a connection error (not after a timeout).
    pub webhook_retries: u32,
    /// Threads of the egress runtime (tokio, one shared HTTP client).
    pub egress_threads: usize,
    /// Deliveries in flight over all cores (transcripts, audio items, speaker samples); items
    /// beyond wait in their session's ring (drop-oldest).
    pub egress_in_flight_max: usize,
    /// Payload bytes those deliveries may hold, all cores (each core may pass its share by one item).
    pub egress_in_flight_bytes_max: usize,
    /// Largest webhook answer read (for the response relay); the rest is ignored.
    pub egress_response_bytes_max: usize,
    /// Session slots per worker, allocated at start; further upgrades get 503.
    pub sessions_per_core_max: usize,
    /// Receive buffers per worker, each `Decoder::buffer_bytes_required` bytes.
    pub recv_buffers_per_core: usize,
    /// Connections per worker between accept and upgrade (each a task, no buffer: heads are
    /// peeked into one scratch buffer per worker). None free → the accept loop waits and new
    /// connections wait in the kernel's accept backlog (the name is kept from when each held a
    /// head buffer).
    pub handshake_buffers_per_core: usize,
    /// Largest WebSocket message accepted; larger → close 1009.
    pub message_bytes_max: usize,
    /// Largest HTTP request head accepted; larger → 431.
    pub request_header_bytes_max: usize,
    /// Time from accept to a complete request head.
    pub handshake_timeout_ms: u64,
    /// No message and no ping for this long → close 1001.
    pub idle_timeout_ms: u64,
    /// Once a message has begun (part of it is held in a receive buffer), how long the peer
    /// has to complete it → else close 1008 (a trickled frame must not hold a pooled buffer).
    pub message_timeout_ms: u64,
    /// After pusher sends a Close, how long it waits for the peer's.
    pub close_timeout_ms: u64,
    /// Once a drain began (SIGTERM or `POST /__internal/drain`), how long open sessions get to
    /// end before close 1001.
    pub drain_grace_ms: u64,
    /// Bytes of outbound frames a session may have unsent; beyond it the peer is dropped.
    pub outbound_pending_bytes_max: usize,
    /// Per-worker bound on unsent outbound bytes over all sessions; a write past it drops that peer.
    pub outbound_pending_bytes_per_core: usize,
    /// Per-worker arena for droppable payloads (transcripts, audio-bytes items; speaker-sample
    /// bodies have their own, sized by `speaker_sample_queue_per_core`).
    pub payload_arena_bytes_per_core: usize,
    /// Per-worker bound on payload blocks alive in the arena.
    pub payload_blocks_per_core_max: usize,
    /// Per-worker bytes for app/webhook audio accumulators; a session that cannot get one
    /// runs without it (counted).
    pub audio_accumulator_bytes_per_core: usize,
    /// Longest audio-bytes webhook delay honoured, in seconds (bounds an accumulator).
    pub webhook_audio_delay_s_max: u32,
    /// Transcript items a session's ring holds for egress; full → the oldest is dropped
    /// (counted).
    pub transcript_ring_capacity: usize,
    /// Audio items (app audio, audio-bytes webhook) a session's ring holds; full → the oldest
    /// is dropped (counted).
    pub audio_bytes_ring_capacity: usize,
    /// Speaker-sample requests one session may have in its core's delay queue; beyond, its
    /// oldest is dropped (counted).
    pub speaker_sample_ring_capacity: usize,
    /// Process-conversation requests in flight per session; beyond → 201 "busy".
    pub process_in_flight_per_session_max: usize,
    /// If set, upgrades need `Authorization: Bearer <token>`.
    pub auth_token: Option<String>,
    /// If set, `/metrics` needs `Authorization: Bearer <token>`.
    pub metrics_token: Option<String>,
    /// Test only: serve an echo WebSocket route at `/test/echo` on the same codec (Autobahn).
    pub test_echo_route: bool,
    /// Size at which the spill log starts a new segment file.
    pub spill_segment_bytes: u64,
    /// Group commit: longest time between an append and its fdatasync.
    pub spill_sync_interval_ms: u64,
    /// Group commit: appended bytes that trigger an fdatasync before the interval ends.
    pub spill_sync_bytes: u64,
    /// Disk budget of the spill log; when reached, sessions that write audio are not read
    /// (backpressure) until uploads free space.
    pub spill_bytes_max: u64,
    /// Per-worker hand-off ring to the spill writer; when full, sessions that write audio are
    /// not read until the writer drains it.
    pub spill_handoff_bytes_per_core: usize,
    /// Batches the spill index holds (open, closed or uploading); when reached, no batch opens
    /// until uploads confirm (backpressure).
    pub spill_batches_max: usize,
    /// Object store for private-cloud audio: `file:///abs/dir`, `s3://bucket/prefix`,
    /// `gs://bucket/prefix` or `az://container/prefix` (credentials from the environment);
    /// none = `file://<data_dir>/cloud`.
    pub store: Option<String>,
    /// Uploads in flight at once (each holds one body buffer). The default, 32, uploads 160
    /// batches a second from a store answering in 200 ms: the batches of 9,600 private-cloud
    /// users (a batch is at most 60 s of a session's audio), more than 2 workers' sessions
    /// bring at 25 % private cloud (bench/RESULTS.md, "capacity"); 8 capped 2 workers at ~9,000
    /// sessions. Costs one `upload_buffer_bytes` each.
    pub upload_concurrency: usize,
    /// Body buffer of one upload slot, allocated at start (a larger batch grows it for its
    /// upload); the default holds a 60 s batch at 16 kHz plus one message.
    pub upload_buffer_bytes: usize,
    /// First retry delay of a failed upload; doubles up to `upload_backoff_ms_max` (with jitter).
    pub upload_backoff_ms_min: u64,
    /// Longest retry delay of a failed upload; uploads are retried forever.
    pub upload_backoff_ms_max: u64,
    /// Time allowed for one upload attempt (a timed-out attempt is retried).
    pub upload_timeout_ms: u64,
    /// At shutdown, after the sessions are gone: how long uploads of closed batches go on
    /// before the process exits anyway (what is left stays in the log); 0 = none.
    pub upload_drain_ms: u64,
    /// If set, `POST`ed after each upload so the backend can update the conversation's audio files.
    pub chunk_notification_url: Option<String>,
    /// Attempts per chunk notification before it is counted as failed and dropped.
    pub chunk_notification_attempts_max: u32,
    /// Time allowed for one chunk notification attempt.
    pub chunk_notification_timeout_ms: u64,
    /// Where the settings Omi's environment names can give came from (not an option).
    #[serde(skip)]
    pub origins: omi::Origins,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:8080".parse().expect("literal address"),
            data_dir: PathBuf::from("./data"),
            workers: 0,
            pin: crate::cpus::PinChoice::Auto,
            driver: DriverChoice::Auto,
            log_format: LogFormat::Text,
            settings: None,
            settings_url: None,
            settings_cache_ttl_ms: 60_000,
            settings_cache_entries_max: 100_000,
            settings_cache_bytes_max: 16 << 20,
            settings_timeout_ms: 2_000,
            processor_url: None,
            processor_timeout_ms: 300_000,
            processor_in_flight_max: 1024,
            processor_response_bytes_max: 32 * 1024,
            process_payload_bytes_max: 64 * 1024,
            speaker_sample_url: None,
            speaker_sample_delay_s: 120,
            speaker_sample_queue_per_core: 4096,
            speaker_sample_timeout_ms: 30_000,
            transcript_hooks: Vec::new(),
            response_relay_url: None,
            app_webhook_timeout_ms: 10_000,
            transcript_webhook_timeout_ms: 15_000,
            transcript_hook_timeout_ms: 10_000,
            audio_webhook_timeout_ms: 15_000,
            webhook_retries: 1,
            egress_threads: 1,
            egress_in_flight_max: 512,
            egress_in_flight_bytes_max: 64 << 20,
            egress_response_bytes_max: 64 * 1024,
            sessions_per_core_max: 12_288,
            recv_buffers_per_core: 64,
            handshake_buffers_per_core: 1024,
            message_bytes_max: 1 << 20,
            request_header_bytes_max: 8 * 1024,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 90_000,
            message_timeout_ms: 10_000,
            close_timeout_ms: 3_000,
            drain_grace_ms: 30_000,
            outbound_pending_bytes_max: 64 * 1024,
            outbound_pending_bytes_per_core: 8 << 20,
            payload_arena_bytes_per_core: 32 << 20,
            payload_blocks_per_core_max: 65_536,
            audio_accumulator_bytes_per_core: 64 << 20,
            webhook_audio_delay_s_max: 30,
            transcript_ring_capacity: 50,
            audio_bytes_ring_capacity: 20,
            speaker_sample_ring_capacity: 100,
            process_in_flight_per_session_max: 8,
            auth_token: None,
            metrics_token: None,
            test_echo_route: false,
            spill_segment_bytes: 64 << 20,
            spill_sync_interval_ms: 20,
            spill_sync_bytes: 1 << 20,
            spill_bytes_max: 8 << 30,
            spill_handoff_bytes_per_core: 16 << 20,
            spill_batches_max: 100_000,
            store: None,
            upload_concurrency: 32,
            upload_buffer_bytes: 3 << 20,
            upload_backoff_ms_min: 1_000,
            upload_backoff_ms_max: 60_000,
            upload_timeout_ms: 60_000,
            upload_drain_ms: 60_000,
            chunk_notification_url: None,
            chunk_notification_attempts_max: 3,
            chunk_notification_timeout_ms: 10_000,
            origins: omi::Origins::default(),
        }
    }
}

/// Flags and `PUSHER_*` variables; each overrides the file and the defaults when given.
#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct Overrides {
    /// Address to listen on, ADDR:PORT [default: 0.0.0.0:8080]
    #[arg(long, env = "PUSHER_LISTEN", value_name = "ADDR:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Directory for everything pusher writes [default: ./data]
    #[arg(long, env = "PUSHER_DATA_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Worker threads, one per core; 0 = what the process may use (affinity mask and CPU quota)
    /// [default: 0]
    #[arg(long, env = "PUSHER_WORKERS", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Pin workers to CPUs of the affinity mask: auto (only on an exclusive cpuset of the
    /// worker count), on, off [default: auto]
    #[arg(long, env = "PUSHER_PIN", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin: Option<crate::cpus::PinChoice>,
    /// io driver: auto (io_uring, else epoll), uring, epoll [default: auto]
    #[arg(long, env = "PUSHER_DRIVER", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<DriverChoice>,
    /// Log format: text or json; filter with RUST_LOG [default: text]
    #[arg(long, env = "PUSHER_LOG_FORMAT", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// Per-user settings file (TOML, docs/downstream.md §5)
    /// [default: none, every user gets defaults]
    #[arg(long, env = "PUSHER_SETTINGS", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings: Option<PathBuf>,
    /// Per-user settings over HTTP: GET {URL}/{uid} → JSON; exclusive with --settings [default: none]
    #[arg(long, env = "PUSHER_SETTINGS_URL", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings_url: Option<String>,
    /// How long fetched settings are reused [default: 60000]
    #[arg(long, env = "PUSHER_SETTINGS_CACHE_TTL_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings_cache_ttl_ms: Option<u64>,
    /// Users whose fetched settings are cached [default: 100000]
    #[arg(long, env = "PUSHER_SETTINGS_CACHE_ENTRIES_MAX", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings_cache_entries_max: Option<usize>,
    /// Bytes of settings the http source keeps cached [default: 16777216]
    #[arg(long, env = "PUSHER_SETTINGS_CACHE_BYTES_MAX", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings_cache_bytes_max: Option<u64>,
    /// Time allowed for one settings fetch; past it the upgrade gets 503 [default: 2000]
    #[arg(long, env = "PUSHER_SETTINGS_TIMEOUT_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings_timeout_ms: Option<u64>,
    /// Conversation processor for 104s [default: none, 104s get 201 processor_not_configured]
    #[arg(long, env = "PUSHER_PROCESSOR_URL", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processor_url: Option<String>,
    /// Time allowed for one process-conversation call [default: 300000]
    #[arg(long, env = "PUSHER_PROCESSOR_TIMEOUT_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processor_timeout_ms: Option<u64>,
    /// Process-conversation calls in flight, all cores; beyond → 201 busy [default: 1024]
    #[arg(long, env = "PUSHER_PROCESSOR_IN_FLIGHT_MAX", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processor_in_flight_max: Option<usize>,
    /// Largest processor answer merged into a 201 [default: 32768]
    #[arg(
        long,
        env = "PUSHER_PROCESSOR_RESPONSE_BYTES_MAX",
        value_name = "BYTES"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processor_response_bytes_max: Option<usize>,
    /// Largest 104 payload sent on; larger → 201 error payload_too_large [default: 65536]
    #[arg(long, env = "PUSHER_PROCESS_PAYLOAD_BYTES_MAX", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_payload_bytes_max: Option<usize>,
    /// Where due speaker-sample requests go [default: none, 105s are dropped]
    #[arg(long, env = "PUSHER_SPEAKER_SAMPLE_URL", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speaker_sample_url: Option<String>,
    /// Seconds from a 105 to its speaker-sample request [default: 120]
    #[arg(long, env = "PUSHER_SPEAKER_SAMPLE_DELAY_S", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speaker_sample_delay_s: Option<u64>,
    /// Per-worker delay queue of speaker-sample requests, oldest dropped [default: 4096]
    #[arg(long, env = "PUSHER_SPEAKER_SAMPLE_QUEUE_PER_CORE", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speaker_sample_queue_per_core: Option<usize>,
    /// Time allowed for one speaker-sample request [default: 30000]
    #[arg(long, env = "PUSHER_SPEAKER_SAMPLE_TIMEOUT_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speaker_sample_timeout_ms: Option<u64>,
    /// Global transcript hook; repeat the flag for several (the variable takes a comma-separated
    /// list) [default: none]
    #[arg(
        long = "transcript-hook",
        env = "PUSHER_TRANSCRIPT_HOOKS",
        value_name = "URL",
        value_delimiter = ','
    )]
    #[serde(rename = "transcript_hooks", skip_serializing_if = "Option::is_none")]
    pub transcript_hooks: Option<Vec<String>>,
    /// Where webhook answers with a message are relayed [default: none]
    #[arg(long, env = "PUSHER_RESPONSE_RELAY_URL", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_relay_url: Option<String>,
    /// Time allowed for a transcript item to an app [default: 10000]
    #[arg(long, env = "PUSHER_APP_WEBHOOK_TIMEOUT_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_webhook_timeout_ms: Option<u64>,
    /// Time allowed for a transcript item to the user's realtime webhook [default: 15000]
    #[arg(long, env = "PUSHER_TRANSCRIPT_WEBHOOK_TIMEOUT_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript_webhook_timeout_ms: Option<u64>,
    /// Time allowed for a transcript item to a global hook [default: 10000]
    #[arg(long, env = "PUSHER_TRANSCRIPT_HOOK_TIMEOUT_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript_hook_timeout_ms: Option<u64>,
    /// Time allowed for an audio item to an app or audio webhook [default: 15000]
    #[arg(long, env = "PUSHER_AUDIO_WEBHOOK_TIMEOUT_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_webhook_timeout_ms: Option<u64>,
    /// Extra attempts of a delivery after a 5xx or connection error [default: 1]
    #[arg(long, env = "PUSHER_WEBHOOK_RETRIES", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_retries: Option<u32>,
    /// Threads of the egress runtime [default: 1]
    #[arg(long, env = "PUSHER_EGRESS_THREADS", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_threads: Option<usize>,
    /// Deliveries in flight, all cores [default: 512]
    #[arg(long, env = "PUSHER_EGRESS_IN_FLIGHT_MAX", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_in_flight_max: Option<usize>,
    /// Payload bytes deliveries in flight may hold, all cores [default: 67108864]
    #[arg(long, env = "PUSHER_EGRESS_IN_FLIGHT_BYTES_MAX", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_in_flight_bytes_max: Option<usize>,
    /// Largest webhook answer read for the response relay [default: 65536]
    #[arg(long, env = "PUSHER_EGRESS_RESPONSE_BYTES_MAX", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_response_bytes_max: Option<usize>,
    /// Session slots per worker, allocated at start [default: 12288]
    #[arg(long, env = "PUSHER_SESSIONS_PER_CORE_MAX", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions_per_core_max: Option<usize>,
    /// Receive buffers per worker [default: 64]
    #[arg(long, env = "PUSHER_RECV_BUFFERS_PER_CORE", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recv_buffers_per_core: Option<usize>,
    /// Connections per worker between accept and upgrade; more wait in the accept backlog
    /// [default: 1024]
    #[arg(long, env = "PUSHER_HANDSHAKE_BUFFERS_PER_CORE", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_buffers_per_core: Option<usize>,
    /// Largest WebSocket message; larger closes with 1009 [default: 1048576]
    #[arg(long, env = "PUSHER_MESSAGE_BYTES_MAX", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_bytes_max: Option<usize>,
    /// Largest HTTP request head; larger gets 431 [default: 8192]
    #[arg(long, env = "PUSHER_REQUEST_HEADER_BYTES_MAX", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_header_bytes_max: Option<usize>,
    /// Time allowed from accept to a complete request head [default: 10000]
    #[arg(long, env = "PUSHER_HANDSHAKE_TIMEOUT_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_timeout_ms: Option<u64>,
    /// No message and no ping for this long closes with 1001 [default: 90000]
    #[arg(long, env = "PUSHER_IDLE_TIMEOUT_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// Time to complete a message once it has begun; past it, close 1008 [default: 10000]
    #[arg(long, env = "PUSHER_MESSAGE_TIMEOUT_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_timeout_ms: Option<u64>,
    /// Wait for the peer's Close after sending ours [default: 3000]
    #[arg(long, env = "PUSHER_CLOSE_TIMEOUT_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_timeout_ms: Option<u64>,
    /// Grace period for open sessions once a drain began (SIGTERM or POST /__internal/drain)
    /// [default: 30000]
    #[arg(long, env = "PUSHER_DRAIN_GRACE_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_grace_ms: Option<u64>,
    /// Unsent outbound bytes a session may hold before the peer is dropped [default: 65536]
    #[arg(long, env = "PUSHER_OUTBOUND_PENDING_BYTES_MAX", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_pending_bytes_max: Option<usize>,
    /// Per-worker bound on unsent outbound bytes over all sessions [default: 8388608]
    #[arg(
        long,
        env = "PUSHER_OUTBOUND_PENDING_BYTES_PER_CORE",
        value_name = "BYTES"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_pending_bytes_per_core: Option<usize>,
    /// Per-worker arena for droppable payloads [default: 33554432]
    #[arg(
        long,
        env = "PUSHER_PAYLOAD_ARENA_BYTES_PER_CORE",
        value_name = "BYTES"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_arena_bytes_per_core: Option<usize>,
    /// Per-worker bound on payload blocks in the arena [default: 65536]
    #[arg(long, env = "PUSHER_PAYLOAD_BLOCKS_PER_CORE_MAX", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_blocks_per_core_max: Option<usize>,
    /// Per-worker bytes for app/webhook audio accumulators [default: 67108864]
    #[arg(
        long,
        env = "PUSHER_AUDIO_ACCUMULATOR_BYTES_PER_CORE",
        value_name = "BYTES"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_accumulator_bytes_per_core: Option<usize>,
    /// Longest audio-bytes webhook delay honoured [default: 30]
    #[arg(long, env = "PUSHER_WEBHOOK_AUDIO_DELAY_S_MAX", value_name = "S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_audio_delay_s_max: Option<u32>,
    /// Transcript items held per session, oldest dropped [default: 50]
    #[arg(long, env = "PUSHER_TRANSCRIPT_RING_CAPACITY", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript_ring_capacity: Option<usize>,
    /// Audio-bytes items held per session, oldest dropped [default: 20]
    #[arg(long, env = "PUSHER_AUDIO_BYTES_RING_CAPACITY", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_bytes_ring_capacity: Option<usize>,
    /// Speaker-sample requests one session may have waiting, oldest dropped [default: 100]
    #[arg(long, env = "PUSHER_SPEAKER_SAMPLE_RING_CAPACITY", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speaker_sample_ring_capacity: Option<usize>,
    /// Process-conversation requests in flight per session, 1..=16; beyond → 201 "busy"
    /// [default: 8]
    #[arg(
        long,
        env = "PUSHER_PROCESS_IN_FLIGHT_PER_SESSION_MAX",
        value_name = "N"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_in_flight_per_session_max: Option<usize>,
    /// Bearer token required for upgrades (prefer the environment variable) [default: none]
    #[arg(
        long,
        env = "PUSHER_AUTH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    /// Bearer token required for /metrics [default: none]
    #[arg(
        long,
        env = "PUSHER_METRICS_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_token: Option<String>,
    /// TEST ONLY: serve a WebSocket echo route at /test/echo (Autobahn conformance) [default: false]
    #[arg(long, env = "PUSHER_TEST_ECHO_ROUTE", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_echo_route: Option<bool>,
    /// Size at which the spill log starts a new segment file [default: 67108864]
    #[arg(long, env = "PUSHER_SPILL_SEGMENT_BYTES", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spill_segment_bytes: Option<u64>,
    /// Group commit: longest time from an append to its fdatasync [default: 20]
    #[arg(long, env = "PUSHER_SPILL_SYNC_INTERVAL_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spill_sync_interval_ms: Option<u64>,
    /// Group commit: appended bytes that trigger an early fdatasync [default: 1048576]
    #[arg(long, env = "PUSHER_SPILL_SYNC_BYTES", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spill_sync_bytes: Option<u64>,
    /// Disk budget of the spill log; when reached, audio senders are not read [default: 8589934592]
    #[arg(long, env = "PUSHER_SPILL_BYTES_MAX", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spill_bytes_max: Option<u64>,
    /// Per-worker hand-off ring to the spill writer [default: 16777216]
    #[arg(
        long,
        env = "PUSHER_SPILL_HANDOFF_BYTES_PER_CORE",
        value_name = "BYTES"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spill_handoff_bytes_per_core: Option<usize>,
    /// Batches the spill index holds before new batches wait for uploads [default: 100000]
    #[arg(long, env = "PUSHER_SPILL_BATCHES_MAX", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spill_batches_max: Option<usize>,
    /// Object store for private-cloud audio: file:///abs/dir, s3://bucket/prefix, gs://bucket/prefix
    /// or az://container/prefix; credentials from the environment [default: file://<data_dir>/cloud]
    #[arg(long, env = "PUSHER_STORE", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// Uploads in flight at once [default: 32]
    #[arg(long, env = "PUSHER_UPLOAD_CONCURRENCY", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_concurrency: Option<usize>,
    /// Body buffer per upload slot, allocated at start [default: 3145728]
    #[arg(long, env = "PUSHER_UPLOAD_BUFFER_BYTES", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_buffer_bytes: Option<usize>,
    /// First retry delay of a failed upload [default: 1000]
    #[arg(long, env = "PUSHER_UPLOAD_BACKOFF_MS_MIN", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_backoff_ms_min: Option<u64>,
    /// Longest retry delay of a failed upload; uploads are retried forever [default: 60000]
    #[arg(long, env = "PUSHER_UPLOAD_BACKOFF_MS_MAX", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_backoff_ms_max: Option<u64>,
    /// Time allowed for one upload attempt [default: 60000]
    #[arg(long, env = "PUSHER_UPLOAD_TIMEOUT_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_timeout_ms: Option<u64>,
    /// At shutdown, how long uploads of closed batches go on after the sessions are gone; also
    /// the limit of `pusher spill drain` [default: 60000]
    #[arg(long, env = "PUSHER_UPLOAD_DRAIN_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_drain_ms: Option<u64>,
    /// URL POSTed after each upload (uid, conversation_id, key, timestamp, bytes, sample_rate)
    /// [default: none]
    #[arg(long, env = "PUSHER_CHUNK_NOTIFICATION_URL", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_notification_url: Option<String>,
    /// Attempts per chunk notification before it is counted as failed [default: 3]
    #[arg(long, env = "PUSHER_CHUNK_NOTIFICATION_ATTEMPTS_MAX", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_notification_attempts_max: Option<u32>,
    /// Time allowed for one chunk notification attempt [default: 10000]
    #[arg(long, env = "PUSHER_CHUNK_NOTIFICATION_TIMEOUT_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_notification_timeout_ms: Option<u64>,

    // Old names of renamed options ([`renamed::RENAMED_OPTIONS`]), still accepted; hidden from
    // `--help`. [`Config::load_with_env`] reads each as its current name.
    /// Old name of --sessions-per-core-max
    #[arg(
        long,
        env = "PUSHER_MAX_SESSIONS_PER_CORE",
        value_name = "N",
        hide = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sessions_per_core: Option<usize>,
    /// Old name of --message-bytes-max
    #[arg(
        long,
        env = "PUSHER_MAX_MESSAGE_BYTES",
        value_name = "BYTES",
        hide = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<usize>,
    /// Old name of --request-header-bytes-max
    #[arg(
        long,
        env = "PUSHER_MAX_REQUEST_HEADER_BYTES",
        value_name = "BYTES",
        hide = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_header_bytes: Option<usize>,
    /// Old name of --payload-blocks-per-core-max
    #[arg(
        long,
        env = "PUSHER_PAYLOAD_BLOCKS_MAX_PER_CORE",
        value_name = "N",
        hide = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_blocks_max_per_core: Option<usize>,
    /// Old name of --spill-bytes-max
    #[arg(
        long,
        env = "PUSHER_SPILL_MAX_BYTES",
        value_name = "BYTES",
        hide = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spill_max_bytes: Option<u64>,
}

/// One line per problem in the layered configuration: the key (without figment's profile
/// prefix), where it came from and, for a misspelt key, the nearest known one.
fn describe_figment_error(error: figment::Error) -> String {
    let lines: Vec<String> = error.into_iter().map(|e| describe_one(&e)).collect();
    format!("configuration: {}", lines.join("; "))
}

fn describe_one(error: &figment::Error) -> String {
    let origin = match error.metadata.as_ref().and_then(|m| m.source.as_ref()) {
        Some(figment::Source::File(path)) => format!(" in {}", path.display()),
        _ => String::new(),
    };
    match &error.kind {
        figment::error::Kind::UnknownField(key, known) => {
            let hint = match nearest_key(key, known) {
                Some(near) => format!("; did you mean `{near}`?"),
                None => "; `pusher serve --help` lists the options".to_string(),
            };
            format!("unknown key `{key}`{origin}{hint}")
        }
        kind => {
            let key = error.path.join(".");
            if key.is_empty() {
                format!("{kind}{origin}")
            } else {
                format!("key `{key}`{origin}: {kind}")
            }
        }
    }
}

/// The known key most like `key`, if any is close enough to be a likely misspelling.
fn nearest_key<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    const SIMILARITY_MIN: f64 = 0.8;
    known
        .iter()
        .map(|candidate| (strsim::jaro_winkler(key, candidate), *candidate))
        .filter(|(similarity, _)| *similarity >= SIMILARITY_MIN)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

impl Config {
    /// The WebSocket decoder's limits this configuration sets (receive buffers are sized from
    /// them: `Decoder::buffer_bytes_required`).
    pub fn decoder_limits(&self) -> DecoderLimits {
        DecoderLimits {
            max_message_bytes: self.message_bytes_max,
        }
    }

    /// Defaults, then `file` (if any), then `overrides`, then Omi's environment names where
    /// pusher's are unset ([`omi`]); validated.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, String> {
        Config::load_with_env(file, overrides, &|name| std::env::var(name).ok())
    }

    /// [`Config::load`] with the environment read through `env`.
    pub fn load_with_env(
        file: Option<&Path>,
        overrides: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, String> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(format!("config file {} does not exist", path.display()));
            }
            figment = figment.merge(Renamed(Toml::file_exact(path)));
        }
        let mut config: Config = figment
            .merge(Renamed(Serialized::defaults(overrides)))
            .extract()
            .map_err(describe_figment_error)?;
        omi::apply(&mut config, env)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every bound; the message names the field and the accepted range.
    pub fn validate(&self) -> Result<(), String> {
        check_range("workers", self.workers, 0, WORKERS_MAX)?;
        check_range(
            "sessions_per_core_max",
            self.sessions_per_core_max,
            1,
            1 << 20,
        )?;
        check_range(
            "recv_buffers_per_core",
            self.recv_buffers_per_core,
            1,
            65_536,
        )?;
        check_range(
            "handshake_buffers_per_core",
            self.handshake_buffers_per_core,
            1,
            65_536,
        )?;
        check_range("message_bytes_max", self.message_bytes_max, 1024, 64 << 20)?;
        check_range(
            "request_header_bytes_max",
            self.request_header_bytes_max,
            512,
            1 << 20,
        )?;
        check_range(
            "handshake_timeout_ms",
            self.handshake_timeout_ms as usize,
            10,
            600_000,
        )?;
        check_range(
            "idle_timeout_ms",
            self.idle_timeout_ms as usize,
            10,
            86_400_000,
        )?;
        check_range(
            "message_timeout_ms",
            self.message_timeout_ms as usize,
            10,
            600_000,
        )?;
        check_range(
            "close_timeout_ms",
            self.close_timeout_ms as usize,
            1,
            600_000,
        )?;
        check_range("drain_grace_ms", self.drain_grace_ms as usize, 0, 3_600_000)?;
        check_range(
            "outbound_pending_bytes_max",
            self.outbound_pending_bytes_max,
            1024,
            64 << 20,
        )?;
        check_range(
            "outbound_pending_bytes_per_core",
            self.outbound_pending_bytes_per_core,
            1024,
            16 << 30,
        )?;
        check_range(
            "payload_arena_bytes_per_core",
            self.payload_arena_bytes_per_core,
            64 * 1024,
            16 << 30,
        )?;
        check_range(
            "payload_blocks_per_core_max",
            self.payload_blocks_per_core_max,
            16,
            1 << 24,
        )?;
        check_range(
            "audio_accumulator_bytes_per_core",
            self.audio_accumulator_bytes_per_core,
            0,
            16 << 30,
        )?;
        check_range(
            "webhook_audio_delay_s_max",
            self.webhook_audio_delay_s_max as usize,
            0,
            3_600,
        )?;
        check_range(
            "transcript_ring_capacity",
            self.transcript_ring_capacity,
            1,
            65_536,
        )?;
        check_range(
            "audio_bytes_ring_capacity",
            self.audio_bytes_ring_capacity,
            1,
            65_536,
        )?;
        check_range(
            "speaker_sample_ring_capacity",
            self.speaker_sample_ring_capacity,
            1,
            65_536,
        )?;
        check_range(
            "process_in_flight_per_session_max",
            self.process_in_flight_per_session_max,
            1,
            // A session's in-flight set is inline, of this many slots.
            crate::session::PROCESS_IN_FLIGHT_LIMIT,
        )?;
        check_range("upload_concurrency", self.upload_concurrency, 1, 256)?;
        check_range(
            "upload_buffer_bytes",
            self.upload_buffer_bytes,
            64 * 1024,
            1 << 30,
        )?;
        check_range(
            "upload_backoff_ms_min",
            self.upload_backoff_ms_min as usize,
            1,
            3_600_000,
        )?;
        check_range(
            "upload_backoff_ms_max",
            self.upload_backoff_ms_max as usize,
            self.upload_backoff_ms_min as usize,
            3_600_000,
        )?;
        check_range(
            "upload_timeout_ms",
            self.upload_timeout_ms as usize,
            100,
            3_600_000,
        )?;
        check_range(
            "upload_drain_ms",
            self.upload_drain_ms as usize,
            0,
            86_400_000,
        )?;
        check_range(
            "chunk_notification_attempts_max",
            self.chunk_notification_attempts_max as usize,
            1,
            100,
        )?;
        check_range(
            "chunk_notification_timeout_ms",
            self.chunk_notification_timeout_ms as usize,
            100,
            600_000,
        )?;
        if let Some(store) = &self.store {
            store_location::StoreLocation::parse(store)?;
        }
        self.validate_egress()?;
        self.validate_spill()?;
        for (name, token) in [
            ("auth_token", &self.auth_token),
            ("metrics_token", &self.metrics_token),
        ] {
            if token.as_deref().is_some_and(str::is_empty) {
                return Err(format!("{name} is set but empty"));
            }
        }
        Ok(())
    }

    /// The egress bounds and URLs.
    fn validate_egress(&self) -> Result<(), String> {
        for (name, value, min, max) in [
            (
                "settings_cache_ttl_ms",
                self.settings_cache_ttl_ms,
                0,
                86_400_000,
            ),
            ("settings_timeout_ms", self.settings_timeout_ms, 10, 60_000),
            (
                "processor_timeout_ms",
                self.processor_timeout_ms,
                10,
                3_600_000,
            ),
            (
                "speaker_sample_delay_s",
                self.speaker_sample_delay_s,
                0,
                86_400,
            ),
            (
                "speaker_sample_timeout_ms",
                self.speaker_sample_timeout_ms,
                10,
                600_000,
            ),
            (
                "app_webhook_timeout_ms",
                self.app_webhook_timeout_ms,
                10,
                600_000,
            ),
            (
                "transcript_webhook_timeout_ms",
                self.transcript_webhook_timeout_ms,
                10,
                600_000,
            ),
            (
                "transcript_hook_timeout_ms",
                self.transcript_hook_timeout_ms,
                10,
                600_000,
            ),
            (
                "audio_webhook_timeout_ms",
                self.audio_webhook_timeout_ms,
                10,
                600_000,
            ),
            ("webhook_retries", u64::from(self.webhook_retries), 0, 10),
        ] {
            check_range(name, value as usize, min, max)?;
        }
        check_range(
            "settings_cache_entries_max",
            self.settings_cache_entries_max,
            1,
            10_000_000,
        )?;
        check_range(
            "settings_cache_bytes_max",
            self.settings_cache_bytes_max as usize,
            64 << 10,
            1 << 30,
        )?;
        check_range(
            "processor_in_flight_max",
            self.processor_in_flight_max,
            1,
            1 << 20,
        )?;
        check_range(
            "processor_response_bytes_max",
            self.processor_response_bytes_max,
            1024,
            self.outbound_pending_bytes_max
                .saturating_sub(REPLY_OVERHEAD_BYTES),
        )?;
        check_range(
            "process_payload_bytes_max",
            self.process_payload_bytes_max,
            1024,
            64 << 20,
        )?;
        check_range(
            "speaker_sample_queue_per_core",
            self.speaker_sample_queue_per_core,
            1,
            1 << 20,
        )?;
        check_range("egress_threads", self.egress_threads, 1, 64)?;
        check_range(
            "egress_in_flight_max",
            self.egress_in_flight_max,
            1,
            1 << 20,
        )?;
        check_range(
            "egress_in_flight_bytes_max",
            self.egress_in_flight_bytes_max,
            64 * 1024,
            16 << 30,
        )?;
        check_range(
            "egress_response_bytes_max",
            self.egress_response_bytes_max,
            1024,
            16 << 20,
        )?;
        check_range(
            "transcript_hooks",
            self.transcript_hooks.len(),
            0,
            TRANSCRIPT_HOOKS_MAX,
        )?;
        if self.settings.is_some() && self.settings_url.is_some() {
            return Err("settings and settings_url are exclusive: give one source".into());
        }
        let urls = [
            ("settings_url", self.settings_url.as_ref()),
            ("processor_url", self.processor_url.as_ref()),
            ("speaker_sample_url", self.speaker_sample_url.as_ref()),
            ("response_relay_url", self.response_relay_url.as_ref()),
            (
                "chunk_notification_url",
                self.chunk_notification_url.as_ref(),
            ),
        ];
        let hooks = self
            .transcript_hooks
            .iter()
            .map(|h| ("transcript_hooks", Some(h)));
        for (name, raw) in urls.into_iter().chain(hooks) {
            if let Some(raw) = raw {
                check_http_url(name, raw)?;
            }
        }
        Ok(())
    }

    /// The spill log's bounds, and how they relate to the largest message: a record must fit in
    /// half a hand-off ring (with its pads) and in a segment.
    fn validate_spill(&self) -> Result<(), String> {
        let record_bytes_max = self.message_bytes_max + 1024;
        check_range(
            "spill_sync_interval_ms",
            self.spill_sync_interval_ms as usize,
            1,
            10_000,
        )?;
        check_range(
            "spill_sync_bytes",
            self.spill_sync_bytes as usize,
            4096,
            1 << 30,
        )?;
        check_range("spill_batches_max", self.spill_batches_max, 16, 10_000_000)?;
        check_range(
            "spill_segment_bytes",
            self.spill_segment_bytes as usize,
            (2 * record_bytes_max).max(1 << 20),
            4 << 30,
        )?;
        check_range(
            "spill_handoff_bytes_per_core",
            self.spill_handoff_bytes_per_core,
            3 * record_bytes_max,
            16 << 30,
        )?;
        if !self.spill_handoff_bytes_per_core.is_multiple_of(8) {
            return Err("spill_handoff_bytes_per_core must be a multiple of 8".into());
        }
        if self.spill_bytes_max < 2 * self.spill_segment_bytes {
            return Err(format!(
                "spill_bytes_max = {} must be at least twice spill_segment_bytes = {}",
                self.spill_bytes_max, self.spill_segment_bytes
            ));
        }
        Ok(())
    }
}

fn check_http_url(name: &str, raw: &str) -> Result<(), String> {
    match url::Url::parse(raw) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(()),
        _ => Err(format!("{name}: {raw:?} is not an http(s) URL")),
    }
}

fn check_range(name: &str, value: usize, min: usize, max: usize) -> Result<(), String> {
    if value < min || value > max {
        return Err(format!("{name} = {value} is outside {min}..={max}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_overrides_win_in_order() {
        let dir = std::env::temp_dir().join(format!("pusher-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pusher.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nidle_timeout_ms = 5000\n",
        )
        .unwrap();
        let overrides = Overrides {
            idle_timeout_ms: Some(7000),
            ..Overrides::default()
        };
        let config = Config::load(Some(&path), &overrides).unwrap();
        assert_eq!(config.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(config.idle_timeout_ms, 7000);
        assert_eq!(config.message_bytes_max, 1 << 20);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_shipped_sample_lists_exactly_the_defaults() {
        let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/config/pusher.sample.toml");
        let config = Config::load(Some(Path::new(sample)), &Overrides::default()).unwrap();
        assert_eq!(config, Config::default());
        let text = std::fs::read_to_string(sample).unwrap();
        let fields = serde_json::to_value(Config::default()).unwrap();
        for key in fields.as_object().unwrap().keys() {
            let listed =
                text.contains(&format!("\n{key} = ")) || text.contains(&format!("\n# {key} = "));
            assert!(listed, "config/pusher.sample.toml does not list `{key}`");
        }
    }

    /// The default as the docs write it: strings and numbers bare, `none` for an unset option.
    fn written(value: &serde_json::Value) -> String {
        match value {
            serde_json::Value::Null => "none".to_string(),
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Array(items) if items.is_empty() => "none".to_string(),
            other => other.to_string(),
        }
    }

    /// Each option is written by hand in several places; they must agree with the code: every
    /// key of [`Config`] has a flag `--<key>` and a variable `PUSHER_<KEY>` (in [`Overrides`]),
    /// the flag's `[default: …]` is the real default, and README.md's table has a row for it
    /// whose first default word is the real default. (The sample file is checked above; the
    /// validation ranges are in `validate`, one `check_range` per option.)
    #[test]
    fn every_option_agrees_with_its_flag_variable_help_and_readme_row() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            overrides: Overrides,
        }
        let command = Cli::command();
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        let defaults = serde_json::to_value(Config::default()).unwrap();
        let mut problems = Vec::new();
        for (key, value) in defaults.as_object().unwrap() {
            // A list option takes one value per flag: its flag is singular.
            let flag = match key.as_str() {
                "transcript_hooks" => "transcript-hook".to_string(),
                _ => key.replace('_', "-"),
            };
            let Some(arg) = command
                .get_arguments()
                .find(|a| a.get_long() == Some(&flag))
            else {
                problems.push(format!("`{key}` has no flag --{flag}"));
                continue;
            };
            let variable = format!("PUSHER_{}", key.to_uppercase());
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            if env.as_deref() != Some(variable.as_str()) {
                problems.push(format!("--{flag} reads {env:?}, not {variable}"));
            }
            let default = written(value);
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let help_default = help
                .split("[default: ")
                .nth(1)
                .and_then(|rest| rest.split(']').next());
            match help_default {
                Some(shown) if shown.split(' ').next() == Some(default.as_str()) => {}
                shown if !(value.is_null() || default == "none" && shown.is_none()) => problems
                    .push(format!(
                        "--{flag} help says [default: {shown:?}], the default is {default}"
                    )),
                _ => {}
            }
            // A row is `| `a` / `b` | `1` / `2` | … |`: the n-th key has the n-th default.
            let row = readme.lines().find_map(|line| {
                let mut cells = line.split('|').skip(1);
                let keys = cells.next()?;
                let at = keys
                    .split(" / ")
                    .position(|k| k.trim() == format!("`{key}`"))?;
                Some(
                    cells
                        .next()?
                        .split(" / ")
                        .nth(at)
                        .unwrap_or_default()
                        .trim(),
                )
            });
            match row {
                None => problems.push(format!("README.md has no row for `{key}`")),
                // An unset option may document what it then means (`store`: a directory under
                // `data_dir`); a set one must show its value first.
                Some(_) if value.is_null() => {}
                Some(cell) => {
                    let first = cell
                        .trim_start_matches('`')
                        .split(['`', ' '])
                        .next()
                        .unwrap_or_default();
                    if first != default {
                        problems.push(format!(
                            "README.md says `{key}` defaults to {cell}, the default is {default}"
                        ));
                    }
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    /// Limits on everything: every numeric option has its range checked in `validate` (or one
    /// of the functions it calls), found there by name.
    #[test]
    fn every_numeric_option_is_validated() {
        let source = include_str!("mod.rs");
        let start = source.find("    pub fn validate(&self)").expect("validate");
        let end = source.find("\nfn check_range(").expect("check_range");
        let validation = &source[start..end];
        let defaults = serde_json::to_value(Config::default()).unwrap();
        let unchecked: Vec<&String> = defaults
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, value)| value.is_number())
            .map(|(key, _)| key)
            .filter(|key| !validation.contains(&format!("self.{key}")))
            .collect();
        assert!(
            unchecked.is_empty(),
            "options with no range check: {unchecked:?}"
        );
    }

    #[test]
    fn bad_values_and_unknown_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("pusher-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pusher.toml");
        std::fs::write(&path, "idle_timeout = 5\n").unwrap();
        assert!(Config::load(Some(&path), &Overrides::default()).is_err());
        let zero = Overrides {
            recv_buffers_per_core: Some(0),
            ..Overrides::default()
        };
        let err = Config::load(None, &zero).unwrap_err();
        assert!(err.contains("recv_buffers_per_core"), "{err}");
        // Accepted values never panic later: the in-flight set has 16 slots.
        let too_many = Overrides {
            process_in_flight_per_session_max: Some(17),
            ..Overrides::default()
        };
        let err = Config::load(None, &too_many).unwrap_err();
        assert!(err.contains("process_in_flight_per_session_max"), "{err}");
        assert!(Config::load(Some(&dir.join("missing.toml")), &Overrides::default()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        overrides: Overrides,
    }

    #[test]
    fn egress_options_keep_their_names_and_are_checked() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "pusher",
            "--processor-url",
            "http://127.0.0.1:9/process",
            "--speaker-sample-url",
            "http://127.0.0.1:9/speaker",
            "--speaker-sample-delay-s",
            "5",
            "--transcript-hook",
            "http://127.0.0.1:9/a?x=1",
            "--transcript-hook",
            "http://127.0.0.1:9/b",
            "--settings-url",
            "http://127.0.0.1:9/settings",
        ])
        .unwrap();
        let config = Config::load(None, &cli.overrides).unwrap();
        assert_eq!(
            config.processor_url.as_deref(),
            Some("http://127.0.0.1:9/process")
        );
        assert_eq!(config.speaker_sample_delay_s, 5);
        assert_eq!(
            config.transcript_hooks,
            ["http://127.0.0.1:9/a?x=1", "http://127.0.0.1:9/b"]
        );
        assert_eq!(
            config.settings_url.as_deref(),
            Some("http://127.0.0.1:9/settings")
        );
        for (overrides, field) in [
            (
                Overrides {
                    processor_url: Some("processor".into()),
                    ..Overrides::default()
                },
                "processor_url",
            ),
            (
                Overrides {
                    transcript_hooks: Some(vec!["ftp://h/x".into()]),
                    ..Overrides::default()
                },
                "transcript_hooks",
            ),
            (
                Overrides {
                    settings: Some("s.toml".into()),
                    settings_url: Some("http://h/s".into()),
                    ..Overrides::default()
                },
                "exclusive",
            ),
            (
                Overrides {
                    processor_response_bytes_max: Some(1 << 20),
                    ..Overrides::default()
                },
                "processor_response_bytes_max",
            ),
        ] {
            let err = Config::load(None, &overrides).unwrap_err();
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn upload_options_are_checked() {
        let config = Config::load(
            None,
            &Overrides {
                store: Some("s3://bucket/prefix".into()),
                chunk_notification_url: Some("https://backend/chunks?x=1".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(config.store.as_deref(), Some("s3://bucket/prefix"));
        assert_eq!(config.upload_concurrency, 32);
        assert_eq!(
            (config.upload_backoff_ms_min, config.upload_backoff_ms_max),
            (1_000, 60_000)
        );
        for (overrides, field) in [
            (
                Overrides {
                    upload_concurrency: Some(0),
                    ..Overrides::default()
                },
                "upload_concurrency",
            ),
            (
                Overrides {
                    upload_concurrency: Some(257),
                    ..Overrides::default()
                },
                "upload_concurrency",
            ),
            (
                Overrides {
                    upload_backoff_ms_min: Some(5_000),
                    upload_backoff_ms_max: Some(1_000),
                    ..Overrides::default()
                },
                "upload_backoff_ms_max",
            ),
            (
                Overrides {
                    upload_timeout_ms: Some(0),
                    ..Overrides::default()
                },
                "upload_timeout_ms",
            ),
            (
                Overrides {
                    store: Some("ftp://host/dir".into()),
                    ..Overrides::default()
                },
                "store URL",
            ),
            (
                Overrides {
                    chunk_notification_url: Some("backend/chunks".into()),
                    ..Overrides::default()
                },
                "chunk_notification_url",
            ),
            (
                Overrides {
                    chunk_notification_attempts_max: Some(0),
                    ..Overrides::default()
                },
                "chunk_notification_attempts_max",
            ),
        ] {
            let err = Config::load(None, &overrides).unwrap_err();
            assert!(err.contains(field), "{field}: {err}");
        }
    }
}
