//! `chaos`: the seed's A/B chaos workload (omi PR #4784, "track background tasks + bound queues
//! to prevent memory leaks") against pusher with egress.
//!
//! Two kinds of clients, for `--seconds` (60):
//! - `--process-sessions` (30, `uid=chaos-proc-<i>`) each send a 104 every
//!   `--process-interval-ms` (100), a new conversation id each time (`chaos-proc-<i>-<n>`), to a
//!   processor that takes `--processor-delay-ms` (5 s). Beyond 8 calls in flight per session
//!   pusher answers at once with a 201 `busy`; the calls still in flight when the session ends
//!   must be cancelled (the seed's leak 1: processing tasks never cancelled).
//! - `--audio-sessions` (15, `uid=chaos-audio-<i>`, a 103 first) each send a 101 of
//!   `--audio-frame-bytes` (16,000) every `--audio-interval-ms` (50): 10× real time at 16 kHz.
//!   Private cloud is on (the default), so all of it goes to the spill log and then to a store
//!   taking `--store-delay-ms` (2 s) per put; each of these users has an app with trigger
//!   `audio_bytes` (the server's settings file) whose webhook takes `--webhook-delay-ms` (0.5 s),
//!   so app-audio items back up in their drop-oldest ring (the seed's leak 2: unbounded queues).
//!
//! The processor, the webhook and the store are this process's downstream simulator on
//! `--downstream-listen`: the server must run with `--processor-url http://ADDR/processor`, the
//! app webhook at `http://ADDR/webhook/...` and `--store s3://bucket/prefix` with
//! `AWS_ENDPOINT=http://ADDR` (bench/run.sh does this).
//!
//! `--mode` picks the kinds: `leak1` only the 104 sessions, `leak2` only the audio sessions,
//! `both` (the default) both. A goal about the kind a mode leaves out is not judged (`null`).
//!
//! With `--disconnect-interval-s N` every session ends its connection every N seconds (the
//! sessions' first disconnects spread evenly over the first N seconds) and opens a new one with
//! the same uid and a new conversation (a 103 `<prefix>-conv-<i>-r<n>`), then goes on with its
//! load at its own phase (ticks missed while reconnecting are skipped, not caught up).
//! `--disconnect close` (the default) ends a connection with a Close 1000; `drop` with a bare FIN
//! (no Close frame: the server sees the connection lost). Either way the client then reads to the
//! end of the stream, so that every 201 sent before the end is counted and every byte written
//! was read by the server: the accounting stays exact (an abrupt RST could discard bytes in
//! flight on either side, and nothing could be checked). A failed reconnect is retried every
//! second until the end of the load.
//!
//! At the end of the load every session sends a Close and reads to the end of the stream
//! (counting 201s until then). The tool keeps sampling for `--cooldown-s` (15), reads
//! `/debug/memory` and the sessions and 104 calls the server still holds, waits for the spill
//! log to drain (at most `--drain-timeout-s`) and compares what the simulator received with what
//! was sent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::task::JoinSet;

use super::answers::{Answers, read_201s};
use super::conn::{self, Pings, SharedWriter};
use super::private_cloud::{
    Lag, Reconciliation, reconcile, stored_objects, wait_for_drain, wait_for_sink,
};
use super::{
    BYTES_PER_MB, Failures, RssSeries, Schedule, Session, Target, count_json, counts_json,
    cpu_json, open_session, open_sessions, print_result_with_rss, round, rss_slope_mb_per_min,
    sample_metrics, series_json, spread, write_json,
};
use crate::downstream::{self, Route, RouteArgs};
use crate::frames;
use crate::http;
use crate::proc_stats::{Process, cpu_percent, split_usage};
use crate::prometheus::{self, Scrape};
use crate::sampler::Sampler;

const PROCESS_PREFIX: &str = "chaos-proc";
const AUDIO_PREFIX: &str = "chaos-audio";
/// How long a session reads after its Close for the end of the stream.
const CLOSE_WAIT: Duration = Duration::from_secs(60);
/// Period of the progress lines on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Time between a session's attempts to reconnect after a failed one.
const RECONNECT_RETRY: Duration = Duration::from_secs(1);
const KIB_PER_MIB: f64 = 1024.0;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    routes: RouteArgs,
    /// Which sessions run: `leak1` the 104 sessions, `leak2` the audio sessions, `both`
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// Every session ends its connection and reconnects (same uid, new conversation) every this
    /// many seconds, the sessions spread over the period; 0: never
    #[arg(long, default_value_t = 0, value_name = "S")]
    disconnect_interval_s: u64,
    /// How a session ends a connection to reconnect: `close` (Close 1000) or `drop` (a FIN
    /// without a Close frame)
    #[arg(long, value_enum, default_value_t = Ending::Close)]
    disconnect: Ending,
    /// Address of the downstream simulator run in this process (pusher's processor URL, the
    /// app webhook and the S3 endpoint point here)
    #[arg(long, default_value = "127.0.0.1:18766", value_name = "ADDR:PORT")]
    downstream_listen: SocketAddr,
    /// Sessions sending 104s
    #[arg(long, default_value_t = 30)]
    process_sessions: usize,
    /// Time between one session's 104s
    #[arg(long, default_value_t = 100, value_name = "MS")]
    process_interval_ms: u64,
    /// Sessions sending 101 audio (their users need an app with trigger audio_bytes)
    #[arg(long, default_value_t = 15)]
    audio_sessions: usize,
    /// Time between one session's 101s
    #[arg(long, default_value_t = 50, value_name = "MS")]
    audio_interval_ms: u64,
    /// PCM bytes per 101
    #[arg(long, default_value_t = 16_000, value_name = "BYTES")]
    audio_frame_bytes: usize,
    /// Seconds of load
    #[arg(long, default_value_t = 60, value_name = "S")]
    seconds: u64,
    /// Seconds of sampling after the load (the sessions closed)
    #[arg(long, default_value_t = 15, value_name = "S")]
    cooldown_s: u64,
    /// Seconds of load left out of the RSS slope
    #[arg(long, default_value_t = 10, value_name = "S")]
    warmup_s: u64,
    /// Period of the server RSS readings
    #[arg(long, default_value_t = 500, value_name = "MS")]
    rss_every_ms: u64,
    /// Period of the /metrics readings (calls and uploads in flight)
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    metrics_every_ms: u64,
    /// Longest wait after the cooldown for every private-cloud batch to be uploaded
    #[arg(long, default_value_t = 300, value_name = "S")]
    drain_timeout_s: u64,
    /// Also write every reading to this file (JSON: `rss` as [s, KiB], `cpu` as [s, % of one
    /// core over the interval ending at s], `gauges` as [s, 104 calls
    /// in flight, egress requests in flight, accumulator bytes, spill pending bytes, uploads in
    /// flight], s counted from the start of the load)
    #[arg(long, value_name = "FILE")]
    series: Option<PathBuf>,
    /// Goal: largest RSS slope from the warm-up to the end of the load
    #[arg(long, default_value_t = 1.0, value_name = "MB/MIN")]
    goal_rss_slope_mb_per_min: f64,
}

/// The in-flight gauges of one /metrics reading.
#[derive(Debug, Clone, Copy, Default)]
struct Gauges {
    process_in_flight: f64,
    egress_in_flight: f64,
    accumulator_bytes: f64,
    lag: Lag,
}

impl Gauges {
    fn of(scrape: &Scrape) -> Gauges {
        Gauges {
            process_in_flight: scrape.value("pusher_process_calls_in_flight"),
            egress_in_flight: scrape.sum("pusher_egress_in_flight"),
            accumulator_bytes: scrape.value("pusher_audio_accumulator_bytes"),
            lag: Lag::of(scrape),
        }
    }
}

/// Which kinds of sessions a run has (the seed's `MODES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// Only the 104 sessions (the seed's leak 1: processing tasks never cancelled).
    Leak1,
    /// Only the audio sessions (the seed's leak 2: unbounded queues).
    Leak2,
    Both,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Leak1 => "leak1",
            Mode::Leak2 => "leak2",
            Mode::Both => "both",
        }
    }

    fn has_104(self) -> bool {
        self != Mode::Leak2
    }

    fn has_audio(self) -> bool {
        self != Mode::Leak1
    }

    /// The 104 and audio session counts of this mode, out of those asked for.
    fn sessions(self, process: usize, audio: usize) -> (usize, usize) {
        (
            if self.has_104() { process } else { 0 },
            if self.has_audio() { audio } else { 0 },
        )
    }
}

/// How a session ends a connection before reconnecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Ending {
    /// A Close 1000.
    Close,
    /// A FIN without a Close frame.
    Drop,
}

impl Ending {
    fn name(self) -> &'static str {
        match self {
            Ending::Close => "close",
            Ending::Drop => "drop",
        }
    }

    /// Ends the client's side of the connection (the load's end is always a Close); from then on
    /// the reader sends nothing (`closing`).
    async fn end(self, writer: &SharedWriter, closing: &AtomicBool) -> Result<(), String> {
        closing.store(true, Ordering::Relaxed);
        let mut writer = writer.lock().await;
        match self {
            Ending::Close => writer
                .write_all(&frames::close_frame())
                .await
                .map_err(|e| format!("close write: {e}")),
            Ending::Drop => writer
                .shutdown()
                .await
                .map_err(|e| format!("shutdown: {e}")),
        }
    }
}

/// Times session `index` of `count` ends its connection to reconnect, every `every` from
/// `start` (none when `every` is zero), before `deadline`: the first after `(index + 1) / count`
/// of a period, so that the sessions' reconnects are spread evenly over it.
fn disconnect_times(
    start: Instant,
    every: Duration,
    index: usize,
    count: usize,
    deadline: Instant,
) -> Vec<Instant> {
    if every.is_zero() {
        return Vec::new();
    }
    let first = start + every.mul_f64((index + 1) as f64 / count.max(1) as f64);
    let periods = deadline.saturating_duration_since(start).as_nanos() / every.as_nanos() + 1;
    (0..periods as u32)
        .map(|k| first + every * k)
        .take_while(|&at| at < deadline)
        .collect()
}

/// The first sending time `first + k * interval` (k ≥ 0) not before `at`.
fn next_tick(first: Instant, interval: Duration, at: Instant) -> Instant {
    let behind = at.saturating_duration_since(first).as_nanos();
    let step = interval.as_nanos().max(1);
    let periods = behind.div_ceil(step);
    first + Duration::from_nanos((periods * step).min(u64::MAX as u128) as u64)
}

/// How one session's connections follow each other.
struct Lifetime {
    target: Arc<Target>,
    uid_prefix: &'static str,
    index: usize,
    /// Its first sending time; later ones are every `interval` after it.
    first: Instant,
    interval: Duration,
    /// Where its connections end: the disconnect times, then the deadline.
    ends: Vec<Instant>,
    ending: Ending,
}

impl Lifetime {
    /// The sending schedule of connection `n`, opened now, until `end`.
    fn schedule(&self, n: usize, end: Instant) -> Schedule {
        let first = if n == 0 {
            self.first
        } else {
            next_tick(self.first, self.interval, Instant::now())
        };
        Schedule::new(first, self.interval, end)
    }

    /// Connection `n` (ending at `end`) split: its read half, its writer and `closing` flag for
    /// the reader, and its sending side.
    fn split(
        &self,
        stream: TcpStream,
        n: usize,
        end: Instant,
    ) -> (OwnedReadHalf, SharedWriter, Arc<AtomicBool>, Sending) {
        let (reader, writer) = stream.into_split();
        let writer = conn::shared(writer);
        let closing = Arc::new(AtomicBool::new(false));
        let sending = Sending {
            writer: Arc::clone(&writer),
            closing: Arc::clone(&closing),
            schedule: self.schedule(n, end),
            ending: self.ending(end),
        };
        (reader, writer, closing, sending)
    }

    /// How the connection that ends at `end` is ended: the last one with a Close, the others
    /// as `--disconnect` says.
    fn ending(&self, end: Instant) -> Ending {
        if self.ends.last() == Some(&end) {
            Ending::Close
        } else {
            self.ending
        }
    }

    /// After connection `n` (ending at `end`) is over: the stream of the next one, or `None`
    /// when that was the last, it `failed`, or no reconnect succeeded before the deadline. The
    /// disconnect and every reconnect attempt are counted in `cycles`.
    async fn next_connection(
        &self,
        n: usize,
        end: Instant,
        failed: bool,
        cycles: &mut Cycles,
    ) -> Option<TcpStream> {
        if self.ends.last() == Some(&end) || failed {
            return None;
        }
        cycles.disconnects += 1;
        Some(self.reconnect(n + 1, cycles).await?.stream)
    }

    /// Opens the session again with conversation `<prefix>-conv-<index>-r<n>`, every
    /// [`RECONNECT_RETRY`] until the load's deadline; each failed attempt is counted in `cycles`.
    async fn reconnect(&self, n: usize, cycles: &mut Cycles) -> Option<Session> {
        let uid = format!("{}-{}", self.uid_prefix, self.index);
        let conversation = format!("{}-conv-{}-r{n}", self.uid_prefix, self.index);
        let deadline = *self.ends.last()?;
        let timeout = Duration::from_secs(self.target.connect_timeout_s);
        while Instant::now() < deadline {
            let attempt = open_session(&self.target, self.index, &uid, &conversation);
            match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok(session)) => {
                    cycles.reconnects += 1;
                    return Some(session);
                }
                Ok(Err(reason)) => cycles.failed.add(format!("reconnect: {reason}")),
                Err(_) => cycles.failed.add(format!(
                    "reconnect: timeout after {}s",
                    self.target.connect_timeout_s
                )),
            }
            tokio::time::sleep(RECONNECT_RETRY).await;
        }
        None
    }
}

/// One session's disconnects and reconnects.
#[derive(Debug, Default)]
struct Cycles {
    disconnects: u64,
    reconnects: u64,
    /// Failed reconnect attempts, by reason.
    failed: Failures,
}

impl Cycles {
    fn add(&mut self, other: Cycles) {
        self.disconnects += other.disconnects;
        self.reconnects += other.reconnects;
        self.failed.merge(other.failed);
    }
}

/// What one 104 session did, over all its connections.
#[derive(Debug, Default)]
struct ProcessOutcome {
    sent: u64,
    /// Ids sent that got no 201.
    unanswered: u64,
    answers: Answers,
    late_max: Duration,
    cycles: Cycles,
    /// Why the session stopped early or did not end cleanly.
    error: Option<String>,
    /// Pings answered and sent, over all its connections.
    pings: Pings,
}

/// One 104 session: on each connection sends its 104s on schedule while reading 201s, then ends
/// the connection and reads on until the server ends the stream; reconnects after each but the
/// last (which ends with a Close).
async fn process_client(session: Session, life: Lifetime) -> ProcessOutcome {
    let uid = format!("{PROCESS_PREFIX}-{}", session.index);
    let mut outcome = ProcessOutcome::default();
    let mut stream = session.stream;
    for (n, &end) in life.ends.iter().enumerate() {
        let from = outcome.sent;
        let (reader, writer, closing, sending) = life.split(stream, n, end);
        let ((sent, late_max, write_error), (answered, mut answers, read_error, pings)) = tokio::join!(
            send_104s(sending, &uid, from),
            read_201s(reader, writer, closing, &uid, end + CLOSE_WAIT)
        );
        outcome.pings.add(pings);
        let ids = from..from + sent;
        let known = answered.keys().filter(|&id| ids.contains(id)).count() as u64;
        answers.unknown += answered.len() as u64 - known;
        outcome.sent += sent;
        outcome.unanswered += sent - known;
        outcome.answers.add(answers);
        outcome.late_max = outcome.late_max.max(late_max);
        outcome.error = write_error.or(read_error);
        let failed = outcome.error.is_some();
        match life
            .next_connection(n, end, failed, &mut outcome.cycles)
            .await
        {
            Some(next) => stream = next,
            None => break,
        }
    }
    outcome
}

/// Sends a 104 per tick (conversation `<uid>-<n>`, n counting from `first_id`), then at the
/// schedule's deadline ends the connection: see [`send_per_tick`].
async fn send_104s(sending: Sending, uid: &str, first_id: u64) -> (u64, Duration, Option<String>) {
    send_per_tick(sending, "104", |sent, wire| {
        let payload =
            json!({"conversation_id": format!("{uid}-{}", first_id + sent), "language": "en"});
        let message = frames::message(frames::PROCESS_CONVERSATION, payload.to_string().as_bytes());
        frames::push_binary_frame(&message, wire);
    })
    .await
}

/// Writes the frame `frame(sent_so_far, wire)` puts into `wire` once per tick of `schedule`,
/// then at its deadline ends the connection: the count sent, the largest lateness and the
/// first write error (named after `what`) if any.
async fn send_per_tick(
    sending: Sending,
    what: &str,
    mut frame: impl FnMut(u64, &mut Vec<u8>),
) -> (u64, Duration, Option<String>) {
    let Sending {
        writer,
        closing,
        mut schedule,
        ending,
    } = sending;
    let mut sent = 0;
    let mut wire = Vec::new();
    while schedule.tick().await {
        wire.clear();
        frame(sent, &mut wire);
        let written = writer.lock().await.write_all(&wire).await;
        if let Err(e) = written {
            return (
                sent,
                schedule.late_max(),
                Some(format!("{what} write: {e}")),
            );
        }
        sent += 1;
    }
    tokio::time::sleep_until(schedule.deadline().into()).await;
    (
        sent,
        schedule.late_max(),
        ending.end(&writer, &closing).await.err(),
    )
}

/// One connection's sending side: its writer (shared with the reader, which answers pings),
/// the flag that tells the reader our side has ended, the schedule and how it ends.
struct Sending {
    writer: SharedWriter,
    closing: Arc<AtomicBool>,
    schedule: Schedule,
    ending: Ending,
}

/// What one audio session sent, over all its connections.
#[derive(Debug, Default)]
struct AudioOutcome {
    index: usize,
    pcm_bytes: u64,
    frames: u64,
    late_max: Duration,
    cycles: Cycles,
    /// Why the session stopped early or did not end cleanly.
    error: Option<String>,
    /// Pings answered and sent, over all its connections.
    pings: Pings,
}

/// One audio session: on each connection sends a 101 of `frame_bytes` per tick, then ends the
/// connection and reads until the server ends the stream (pusher closes only once the session's
/// audio is in its spill log); reconnects after each but the last (which ends with a Close).
async fn audio_client(session: Session, life: Lifetime, frame_bytes: usize) -> AudioOutcome {
    let mut outcome = AudioOutcome {
        index: session.index,
        ..AudioOutcome::default()
    };
    let mut stream = session.stream;
    for (n, &end) in life.ends.iter().enumerate() {
        let (reader, writer, closing, sending) = life.split(stream, n, end);
        // The server sends audio sessions nothing but pings and its Close.
        let ((frames, late_max, write_error), (pings, read_outcome)) = tokio::join!(
            send_audio(sending, frame_bytes),
            conn::read_frames(reader, writer, closing, end + CLOSE_WAIT, |_, _| {})
        );
        outcome.pings.add(pings);
        let read_error = read_outcome.err();
        outcome.frames += frames;
        outcome.pcm_bytes += frames * frame_bytes as u64;
        outcome.late_max = outcome.late_max.max(late_max);
        outcome.error = write_error.or(read_error);
        let failed = outcome.error.is_some();
        match life
            .next_connection(n, end, failed, &mut outcome.cycles)
            .await
        {
            Some(next) => stream = next,
            None => break,
        }
    }
    outcome
}

/// Sends a 101 of `frame_bytes` per tick (the current time as its timestamp), then at the
/// schedule's deadline ends the connection: see [`send_per_tick`].
async fn send_audio(sending: Sending, frame_bytes: usize) -> (u64, Duration, Option<String>) {
    send_per_tick(sending, "101", |_, wire| {
        let timestamp_s = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        frames::push_binary_frame(&frames::audio_message(timestamp_s, frame_bytes), wire);
    })
    .await
}

/// What the goals about the 104s, the audio and the reconnects are judged on.
#[derive(Debug, Default)]
struct Facts {
    /// Every 104 session's outcome, added up.
    process: ProcessOutcome,
    /// 104 sessions that failed to open or ended with an error.
    process_errors: usize,
    /// Growth of `pusher_process_calls_cancelled_total` and `..._replies_dropped_total`.
    cancelled: f64,
    replies_dropped: f64,
    /// The spill log drained within the timeout.
    drained: bool,
    stored: Reconciliation,
    /// Audio sessions that failed to open or ended with an error.
    audio_errors: usize,
    /// Failed reconnect attempts.
    reconnect_failures: usize,
    /// After the cooldown: sessions the server still holds, and its 104 calls in flight (`None`:
    /// not in its /metrics).
    sessions_open_after: Option<f64>,
    process_in_flight_after: Option<f64>,
}

/// The chaos goals but the memory ones; `None`: not judged in this run.
#[derive(Debug, PartialEq)]
struct Verdicts {
    /// Every 104 got exactly one 201 or is counted by the server as cancelled (or its reply
    /// dropped); no 104 session failed. Not judged without 104 sessions.
    all_answered: Option<bool>,
    /// Every private-cloud byte stored; no audio session failed. Not judged without audio.
    no_loss: Option<bool>,
    /// Every reconnect succeeded at once. Not judged without disconnect cycling.
    reconnected: Option<bool>,
    /// No session and no 104 call left on the server after the cooldown.
    cleaned_up: Option<bool>,
}

fn judge(mode: Mode, cycling: bool, facts: &Facts) -> Verdicts {
    let process = &facts.process;
    let answers = &process.answers;
    let all_answered = answers.repeated == 0
        && answers.unknown == 0
        && answers.malformed == 0
        && process.unanswered as f64 == facts.cancelled + facts.replies_dropped
        && process.sent == answers.total() + process.unanswered
        && facts.process_errors == 0;
    let no_loss = facts.drained
        && facts.stored.bytes_missing == 0
        && facts.stored.uids_short == 0
        && facts.audio_errors == 0;
    let cleaned_up = match (facts.sessions_open_after, facts.process_in_flight_after) {
        (Some(sessions), Some(calls)) => Some(sessions == 0.0 && calls == 0.0),
        _ => None,
    };
    Verdicts {
        all_answered: mode.has_104().then_some(all_answered),
        no_loss: mode.has_audio().then_some(no_loss),
        reconnected: cycling.then_some(facts.reconnect_failures == 0),
        cleaned_up,
    }
}

pub async fn run(args: Args) -> Result<(), String> {
    if args.seconds == 0 || args.process_interval_ms == 0 || args.audio_interval_ms == 0 {
        return Err("--seconds and the intervals must be at least 1".to_owned());
    }
    let downstream = downstream::start(args.downstream_listen, args.routes.clone()).await?;
    let server = Process::new(args.target.pid);
    let addr = args.target.addr;
    let before = prometheus::scrape_pusher(addr, "server-side counts and memory budget").await;
    if before
        .as_ref()
        .is_some_and(|before| before.get("pusher_process_calls_created_total").is_none())
    {
        eprintln!("chaos: warning: no pusher_process_* metrics: a server without egress?");
    }
    let budget_bytes = before
        .as_ref()
        .and_then(|before| before.get("pusher_memory_budget_bytes"));
    let rss_start_kib = server.rss_kib().map_err(|e| e.to_string())?;
    let rss = Sampler::start(
        Duration::from_millis(args.rss_every_ms.max(10)),
        move || async move { server.usage().ok() },
    );
    let t0 = Instant::now();
    let gauges = sample_metrics(
        addr,
        Duration::from_millis(args.metrics_every_ms.max(10)),
        PROGRESS_EVERY,
        Gauges::of,
        move |gauges| print_progress(t0, &server, gauges),
    );

    let (process_sessions, audio_sessions) = args
        .mode
        .sessions(args.process_sessions, args.audio_sessions);
    let concurrency = process_sessions + audio_sessions;
    let processes =
        open_sessions(&args.target, PROCESS_PREFIX, process_sessions, concurrency).await;
    let audio = open_sessions(&args.target, AUDIO_PREFIX, audio_sessions, concurrency).await;
    let (process_open, audio_open) = (processes.sessions.len(), audio.sessions.len());
    let (process_failures, audio_failures) = (processes.failures, audio.failures);
    if process_open + audio_open == 0 {
        rss.finish().await;
        gauges.finish().await;
        let mut failures = Failures::default();
        failures.merge(process_failures);
        failures.merge(audio_failures);
        return Err(format!(
            "no session could be opened: {}",
            failures.to_json()
        ));
    }
    eprintln!(
        "chaos: mode {}: {process_open} sessions sending a 104 every {} ms, {audio_open} sending \
         {} B of audio every {} ms, for {}s ({} failed to open); reconnecting every {}",
        args.mode.name(),
        args.process_interval_ms,
        args.audio_frame_bytes,
        args.audio_interval_ms,
        args.seconds,
        process_failures.total() + audio_failures.total(),
        if args.disconnect_interval_s == 0 {
            "never".to_owned()
        } else {
            format!(
                "{}s ({})",
                args.disconnect_interval_s,
                args.disconnect.name()
            )
        },
    );

    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let target = Arc::new(args.target.clone());
    let every = Duration::from_secs(args.disconnect_interval_s);
    // Every session of the run has its own place in the reconnect period.
    let lifetime = |uid_prefix, index: usize, first, interval| {
        let slot = if uid_prefix == PROCESS_PREFIX {
            index
        } else {
            process_sessions + index
        };
        let mut ends = disconnect_times(start, every, slot, concurrency, deadline);
        ends.push(deadline);
        Lifetime {
            target: Arc::clone(&target),
            uid_prefix,
            index,
            first,
            interval,
            ends,
            ending: args.disconnect,
        }
    };
    let process_interval = Duration::from_millis(args.process_interval_ms);
    let mut process_clients = JoinSet::new();
    for session in processes.sessions {
        let first = start + spread(process_interval, session.index, process_sessions);
        let life = lifetime(PROCESS_PREFIX, session.index, first, process_interval);
        process_clients.spawn(process_client(session, life));
    }
    let audio_interval = Duration::from_millis(args.audio_interval_ms);
    let mut audio_clients = JoinSet::new();
    for session in audio.sessions {
        let first = start + spread(audio_interval, session.index, audio_sessions);
        let life = lifetime(AUDIO_PREFIX, session.index, first, audio_interval);
        audio_clients.spawn(audio_client(session, life, args.audio_frame_bytes));
    }

    let (mut process_errors, mut audio_errors) = (Failures::default(), Failures::default());
    let mut cycles = Cycles::default();
    let mut pings = Pings::default();
    let mut process = ProcessOutcome::default();
    while let Some(joined) = process_clients.join_next().await {
        let outcome = joined.map_err(|e| format!("104 task: {e}"))?;
        process.sent += outcome.sent;
        process.unanswered += outcome.unanswered;
        process.answers.add(outcome.answers);
        process.late_max = process.late_max.max(outcome.late_max);
        cycles.add(outcome.cycles);
        pings.add(outcome.pings);
        if let Some(error) = outcome.error {
            process_errors.add(error);
        }
    }
    let mut audio_sent_by_uid = BTreeMap::new();
    let (mut audio_frames, mut audio_late_max) = (0, Duration::ZERO);
    while let Some(joined) = audio_clients.join_next().await {
        let sent = joined.map_err(|e| format!("audio task: {e}"))?;
        audio_sent_by_uid.insert(format!("{AUDIO_PREFIX}-{}", sent.index), sent.pcm_bytes);
        audio_frames += sent.frames;
        audio_late_max = audio_late_max.max(sent.late_max);
        cycles.add(sent.cycles);
        pings.add(sent.pings);
        if let Some(error) = sent.error {
            audio_errors.add(error);
        }
    }
    let closed = Instant::now();
    let cooldown_end = deadline + Duration::from_secs(args.cooldown_s);
    eprintln!(
        "chaos: every session closed {:.1}s after the load; cooling down until {}s",
        closed.saturating_duration_since(deadline).as_secs_f64(),
        args.seconds + args.cooldown_s
    );
    tokio::time::sleep_until(cooldown_end.into()).await;
    let rss_end_kib = server.rss_kib().map_err(|e| e.to_string())?;
    // What the server still holds: every session ended, so no session and no 104 call.
    let held = prometheus::scrape(addr).await.ok();
    let held_gauge = |name: &str| {
        let held = held.as_ref()?;
        (!held.by_labels(name, &[]).is_empty()).then(|| held.sum(name))
    };
    let sessions_open_after = held_gauge("pusher_sessions_open");
    let process_in_flight_after = held_gauge("pusher_process_calls_in_flight");
    let egress_in_flight_after = held_gauge("pusher_egress_in_flight");
    let debug_memory = http::get_ok_text(addr, "/debug/memory", Duration::from_secs(5))
        .await
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok());
    let (rss_samples, cpu_samples) = split_usage(&rss.finish().await);
    let gauge_samples = gauges.finish().await;
    if let Some(path) = &args.series {
        let series = json!({
            "rss": series_json(start, &rss_samples, |&kib| json!(kib)),
            "cpu": series_json(start, &cpu_percent(&cpu_samples), |&pct| json!(round(pct, 1))),
            "gauges": series_json(start, &gauge_samples, |g| {
                json!([
                    g.process_in_flight,
                    g.egress_in_flight,
                    g.accumulator_bytes,
                    g.lag.pending_bytes,
                    g.lag.in_flight
                ])
            }),
        });
        write_json(path, &series)?;
    }

    eprintln!("chaos: waiting for the private-cloud uploads");
    let drain_from = Instant::now();
    let drain_deadline = drain_from + Duration::from_secs(args.drain_timeout_s);
    let after_drain = match &before {
        Some(_) => wait_for_drain(addr, drain_deadline).await,
        // A peer: no upload lag to read; drained when the store has every byte sent.
        None => wait_for_sink(args.downstream_listen, &audio_sent_by_uid, drain_deadline)
            .await
            .then(Lag::default),
    };
    let drain_s = drain_from.elapsed().as_secs_f64();
    let rss_after_drain_kib = server.rss_kib().map_err(|e| e.to_string())?;
    let after = match &before {
        Some(_) => prometheus::scrape_pusher(addr, "server-side counts").await,
        None => None,
    };
    // Without pusher's /metrics (a peer) the server-side counts are unknown: null, not 0.
    let counted = before.is_some() && after.is_some();
    let counted_json = |value: Value| if counted { value } else { Value::Null };
    let (before, after) = (before.unwrap_or_default(), after.unwrap_or_default());
    let stored = reconcile(
        &audio_sent_by_uid,
        &stored_objects(&downstream.objects_json())?,
    );

    // Memory.
    let rss_peak_kib = rss_samples
        .iter()
        .map(|&(_, kib)| kib)
        .chain([rss_start_kib, rss_end_kib])
        .max()
        .unwrap_or(0);
    let warm = start + Duration::from_secs(args.warmup_s);
    let slope_load = rss_slope_mb_per_min(&rss_samples, warm, deadline);
    let slope_with_cooldown = rss_slope_mb_per_min(&rss_samples, warm, cooldown_end);
    let second_half = start + Duration::from_secs(args.seconds) / 2;
    let slope_second_half = rss_slope_mb_per_min(&rss_samples, second_half, deadline);
    let peak_under_budget = budget_bytes.map(|budget| (rss_peak_kib as f64 * 1024.0) < budget);
    let gauge_max = |f: fn(&Gauges) -> f64| {
        if gauge_samples.is_empty() {
            return Value::Null;
        }
        let max = gauge_samples.iter().map(|(_, gauges)| f(gauges));
        count_json(max.fold(0.0, f64::max))
    };

    // Calls, drops and deliveries, from the server's counters.
    let grown = |name: &str| after.value(name) - before.value(name);
    let cancelled = grown("pusher_process_calls_cancelled_total");
    let replies_dropped = grown("pusher_process_replies_dropped_total");
    let discarded = grown("pusher_egress_items_discarded_at_session_end_total");
    let done = after.growth_by_labels(&before, "pusher_process_calls_done_total", &["result"]);
    let ring_drops =
        after.growth_by_labels(&before, "pusher_ring_dropped_items_total", &["stream"]);
    let egress = after.growth_by_labels(
        &before,
        "pusher_egress_requests_total",
        &["target", "result"],
    );
    let egress_dropped =
        after.growth_by_labels(&before, "pusher_egress_dropped_items_total", &["target"]);
    let processor = downstream.route(Route::Processor);
    let webhook = downstream.route(Route::Webhook);
    let store = downstream.route(Route::Store);
    let audio_pcm_sent: u64 = audio_sent_by_uid.values().sum();
    let rss_flat = slope_load.map(|s| s < args.goal_rss_slope_mb_per_min);
    let facts = Facts {
        process,
        process_errors: process_failures.total() + process_errors.total(),
        cancelled,
        replies_dropped,
        drained: after_drain.is_some(),
        stored,
        audio_errors: audio_failures.total() + audio_errors.total(),
        reconnect_failures: cycles.failed.total(),
        sessions_open_after,
        process_in_flight_after,
    };
    let mut verdicts = judge(args.mode, args.disconnect_interval_s > 0, &facts);
    if !counted {
        // Without the server's count of cancelled calls an unanswered 104 cannot be judged.
        verdicts.all_answered = None;
    }
    let (process, stored) = (&facts.process, &facts.stored);
    let answers = &process.answers;
    let mut failures = process_failures;
    failures.merge(audio_failures);
    let mut stream_errors = process_errors;
    stream_errors.merge(audio_errors);
    let verdict = |met: Option<bool>| met.map_or("not judged".to_owned(), |met| met.to_string());
    let held_text = |count: Option<f64>| count.map_or("?".to_owned(), |count| count.to_string());

    let mib = |kib: u64| kib as f64 / KIB_PER_MIB;
    let slope_text = |slope: Option<f64>| slope.map_or("n/a".to_owned(), |s| format!("{s:.2}"));
    let human = format!(
        "chaos: mode {}: {process_open} 104 sessions, {audio_open} audio sessions ({} failed to \
         open, {} stream errors); {}s of load, {}s of cooldown; {} disconnects, {} reconnects, {} \
         failed reconnect attempts {}\n\
         \x20 server RSS {:.1} MiB at the start, {:.1} MiB peak, {:.1} MiB after the cooldown, \
         {:.1} MiB after the drain; slope after {}s: {} MB/min over the load (goal < {}), {} MB/min \
         with the cooldown, {} MB/min over the second half of the load; budget {}\n\
         \x20 104: {} sent; 201: {} success, {} busy, {} other errors {}; {} unanswered: {} cancelled, {} \
         replies dropped; the processor saw {} calls, {} abandoned\n\
         \x20 ring drops {}; app audio: {:.1} MB sent, {:.1} MB delivered to the webhook in {} \
         requests ({} abandoned), {} items discarded at session end\n\
         \x20 after the cooldown the server holds {} sessions, {} 104 calls, {} egress requests\n\
         \x20 private cloud: {} in {drain_s:.1}s after the cooldown; {}\n\
         \x20 goals: RSS flat {}, peak under budget {}, every 104 answered or cancelled {}, \
         no audio lost {}, every reconnect succeeded {}, cleaned up {}",
        args.mode.name(),
        failures.total(),
        stream_errors.total(),
        args.seconds,
        args.cooldown_s,
        cycles.disconnects,
        cycles.reconnects,
        cycles.failed.total(),
        cycles.failed.to_json(),
        mib(rss_start_kib),
        mib(rss_peak_kib),
        mib(rss_end_kib),
        mib(rss_after_drain_kib),
        args.warmup_s,
        slope_text(slope_load),
        args.goal_rss_slope_mb_per_min,
        slope_text(slope_with_cooldown),
        slope_text(slope_second_half),
        budget_bytes.map_or("unknown".to_owned(), |b| format!(
            "{:.1} MiB",
            b / KIB_PER_MIB / KIB_PER_MIB
        )),
        process.sent,
        answers.success,
        answers.busy,
        answers.errors.values().sum::<u64>(),
        json!(answers.errors),
        process.unanswered,
        cancelled,
        replies_dropped,
        processor.requests,
        processor.abandoned,
        counts_json(&ring_drops),
        audio_pcm_sent as f64 / BYTES_PER_MB,
        webhook.body_bytes as f64 / BYTES_PER_MB,
        webhook.requests,
        webhook.abandoned,
        discarded,
        held_text(sessions_open_after),
        held_text(process_in_flight_after),
        held_text(egress_in_flight_after),
        if after_drain.is_some() {
            "drained"
        } else {
            "NOT drained"
        },
        stored.summary(),
        rss_flat.map_or("n/a".to_owned(), |met| met.to_string()),
        peak_under_budget.map_or("n/a".to_owned(), |met| met.to_string()),
        verdict(verdicts.all_answered),
        verdict(verdicts.no_loss),
        verdict(verdicts.reconnected),
        verdict(verdicts.cleaned_up),
    );
    let route_json = |stats: downstream::RouteStats| {
        json!({
            "requests": stats.requests,
            "body_bytes": stats.body_bytes,
            "ok": stats.ok,
            "failed": stats.failed,
            "abandoned": stats.abandoned,
            "in_flight_max": stats.in_flight_max,
        })
    };
    let rss_series = RssSeries {
        start,
        samples: &rss_samples,
        cpu: &cpu_samples,
        budget_bytes,
    };
    print_result_with_rss(
        "chaos",
        &args.target,
        json!({
            "mode": args.mode.name(),
            "process_sessions": process_open,
            "audio_sessions": audio_open,
            "failures": failures.total(),
            "failure_reasons": failures.to_json(),
            "stream_errors": stream_errors.total(),
            "stream_error_reasons": stream_errors.to_json(),
            "seconds": args.seconds,
            "cooldown_s": args.cooldown_s,
            "warmup_s": args.warmup_s,
            "keepalive": pings.to_json(),
            "reconnect": {
                "interval_s": args.disconnect_interval_s,
                "ending": args.disconnect.name(),
                "disconnects": cycles.disconnects,
                "reconnects": cycles.reconnects,
                "failed": cycles.failed.total(),
                "failure_reasons": cycles.failed.to_json(),
            },
            "delays_ms": {
                "processor": args.routes.processor_delay_ms,
                "webhook": args.routes.webhook_delay_ms,
                "store": args.routes.store_delay_ms,
            },
            "client_late_max_ms": process.late_max.max(audio_late_max).as_millis() as u64,
            "rss": {
                "samples": rss_samples.len(),
                "start_kib": rss_start_kib,
                "peak_kib": rss_peak_kib,
                "end_kib": rss_end_kib,
                "after_drain_kib": rss_after_drain_kib,
                "slope_mb_per_min": slope_load.map(|s| round(s, 3)),
                "slope_with_cooldown_mb_per_min": slope_with_cooldown.map(|s| round(s, 3)),
                "slope_second_half_mb_per_min": slope_second_half.map(|s| round(s, 3)),
                "budget_bytes": budget_bytes,
            },
            "cpu": cpu_json(&cpu_samples, start, deadline),
            "in_flight_max": {
                "process_calls": gauge_max(|g| g.process_in_flight),
                "egress": gauge_max(|g| g.egress_in_flight),
                "audio_accumulator_bytes": gauge_max(|g| g.accumulator_bytes),
                "spill_pending_bytes": gauge_max(|g| g.lag.pending_bytes),
                "uploads": gauge_max(|g| g.lag.in_flight),
            },
            "debug_memory_after_cooldown": debug_memory,
            "held_after_cooldown": {
                "sessions": sessions_open_after.map(count_json),
                "process_calls": process_in_flight_after.map(count_json),
                "egress": egress_in_flight_after.map(count_json),
            },
            "process": {
                "sent": process.sent,
                "answered": answers.total(),
                "success": answers.success,
                "busy": answers.busy,
                "errors": answers.errors,
                "unanswered": process.unanswered,
                "repeated": answers.repeated,
                "unknown": answers.unknown,
                "malformed": answers.malformed,
                "cancelled": counted_json(count_json(cancelled)),
                "replies_dropped": counted_json(count_json(replies_dropped)),
                "created": counted_json(count_json(grown("pusher_process_calls_created_total"))),
                "done": counted_json(counts_json(&done)),
                "busy_total": counted_json(count_json(grown("pusher_process_busy_total"))),
                "duplicates_total": counted_json(count_json(grown("pusher_process_duplicates_total"))),
                "processor": route_json(processor),
            },
            "ring_drops": counted_json(counts_json(&ring_drops)),
            "egress_requests": counted_json(counts_json(&egress)),
            "egress_dropped_items": counted_json(counts_json(&egress_dropped)),
            "audio": {
                "frames_sent": audio_frames,
                "pcm_bytes_sent": audio_pcm_sent,
                "webhook": route_json(webhook),
                "items_discarded_at_session_end": counted_json(count_json(discarded)),
            },
            "private_cloud": {
                "drained": after_drain.is_some(),
                "drain_s": round(drain_s, 1),
                "store": route_json(store),
                "sink": stored.to_json(),
            },
            "goals": {
                "rss_slope_mb_per_min_max": args.goal_rss_slope_mb_per_min,
                "rss_flat": rss_flat,
                "peak_under_budget": peak_under_budget,
                "all_104_answered_or_cancelled": verdicts.all_answered,
                "no_loss": verdicts.no_loss,
                "reconnected": verdicts.reconnected,
                "cleaned_up": verdicts.cleaned_up,
            },
        }),
        &human,
        Some(rss_series),
    )
}

fn print_progress(t0: Instant, server: &Process, gauges: &Gauges) {
    eprintln!(
        "  [{:>4.0}s] RSS {:.1} MiB; 104 calls in flight {}, egress in flight {}; spill pending \
         {:.1} MB, uploads in flight {}",
        t0.elapsed().as_secs_f64(),
        server.rss_kib().unwrap_or(0) as f64 / KIB_PER_MIB,
        gauges.process_in_flight,
        gauges.egress_in_flight,
        gauges.lag.pending_bytes / BYTES_PER_MB,
        gauges.lag.in_flight,
    );
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;
    use crate::load::answers::fake_server::{answer_frames, read_until_close};
    use tokio::io::AsyncReadExt;

    /// A target at `addr`, as the command line gives it.
    fn target(addr: SocketAddr) -> Arc<Target> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            target: Target,
        }
        let addr = addr.to_string();
        let cli = <Cli as clap::Parser>::parse_from(["chaos", "--target", &addr, "--pid", "1"]);
        Arc::new(cli.target)
    }

    /// Sends every 20 ms from `first`; `ends` are measured from the same instant, so the count
    /// of ticks before an end does not depend on how long the connect took.
    fn lifetime(addr: SocketAddr, first: Instant, ends: Vec<Instant>, ending: Ending) -> Lifetime {
        Lifetime {
            target: target(addr),
            uid_prefix: PROCESS_PREFIX,
            index: 0,
            first,
            interval: Duration::from_millis(20),
            ends,
            ending,
        }
    }

    async fn session(addr: SocketAddr) -> Session {
        Session {
            index: 0,
            stream: TcpStream::connect(addr).await.unwrap(),
            opened_at: Instant::now(),
        }
    }

    /// A fake server: answers two of three 104s, then closes after the client's Close.
    #[tokio::test]
    async fn a_process_client_counts_answers_and_unanswered_ids() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let wire = answer_frames(&[
                r#"{"conversation_id":"chaos-proc-0-0","success":true}"#,
                r#"{"conversation_id":"chaos-proc-0-2","error":"busy"}"#,
                r#"{"conversation_id":"chaos-proc-0-2","error":"busy"}"#,
            ]);
            stream.write_all(&wire).await.unwrap();
            read_until_close(&mut stream).await;
        });
        let now = Instant::now();
        let end = now + Duration::from_millis(50);
        let outcome = process_client(
            session(addr).await,
            lifetime(addr, now, vec![end], Ending::Close),
        )
        .await;
        server.await.unwrap();
        assert_eq!(outcome.sent, 3);
        assert_eq!(outcome.unanswered, 1);
        assert_eq!(outcome.error, None);
        let answers = outcome.answers;
        assert_eq!((answers.success, answers.busy, answers.repeated), (1, 1, 1));
        assert_eq!((answers.unknown, answers.malformed), (0, 0));
        assert_eq!(
            (outcome.cycles.disconnects, outcome.cycles.reconnects),
            (0, 0)
        );
    }

    /// A fake server: on the first connection answers id 0 and reads until the client's FIN; the
    /// client reconnects (upgrade, a 103 with a new conversation), numbers its ids on, and ends
    /// the last connection with a Close.
    #[tokio::test]
    async fn a_process_client_reconnects_with_a_new_conversation_and_counts_across() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut first, _) = listener.accept().await.unwrap();
            let wire = answer_frames(&[r#"{"conversation_id":"chaos-proc-0-0","success":true}"#]);
            first.write_all(&wire).await.unwrap();
            let mut rest = Vec::new();
            first.read_to_end(&mut rest).await.unwrap();
            assert!(
                !rest.ends_with(&frames::close_frame()),
                "a drop sends no Close"
            );
            drop(first);
            let (mut second, _) = listener.accept().await.unwrap();
            let mut received = Vec::new();
            let mut buf = [0u8; 4096];
            while !received.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = second.read(&mut buf).await.unwrap();
                assert!(n > 0);
                received.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8_lossy(&received).into_owned();
            second
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
                .await
                .unwrap();
            let conversation = frames::binary_frame(&frames::message(
                frames::CONVERSATION_ID,
                b"chaos-proc-conv-0-r1",
            ));
            let mut opening = vec![0u8; conversation.len()];
            second.read_exact(&mut opening).await.unwrap();
            read_until_close(&mut second).await;
            (head, opening == conversation)
        });
        let now = Instant::now();
        let ends = vec![
            now + Duration::from_millis(50),
            // Room for the reconnect and at least one tick after it on a loaded machine.
            now + Duration::from_millis(400),
        ];
        let outcome =
            process_client(session(addr).await, lifetime(addr, now, ends, Ending::Drop)).await;
        let (head, new_conversation) = server.await.unwrap();
        assert!(head.contains("uid=chaos-proc-0"), "{head}");
        assert!(
            new_conversation,
            "the reconnect's 103 names conversation r1"
        );
        assert_eq!(outcome.error, None);
        assert_eq!(
            (outcome.cycles.disconnects, outcome.cycles.reconnects),
            (1, 1)
        );
        assert_eq!(outcome.cycles.failed.total(), 0);
        assert!(
            outcome.sent >= 4,
            "3 before the drop, more after: {}",
            outcome.sent
        );
        assert_eq!(outcome.answers.success, 1);
        assert_eq!(outcome.unanswered, outcome.sent - 1);
        assert_eq!(outcome.answers.unknown, 0);
    }

    #[test]
    fn a_mode_selects_its_sessions() {
        assert_eq!(Mode::Leak1.sessions(30, 15), (30, 0));
        assert_eq!(Mode::Leak2.sessions(30, 15), (0, 15));
        assert_eq!(Mode::Both.sessions(30, 15), (30, 15));
        let names: Vec<&str> = [Mode::Leak1, Mode::Leak2, Mode::Both]
            .iter()
            .map(|m| m.name())
            .collect();
        assert_eq!(names, ["leak1", "leak2", "both"]);
    }

    #[test]
    fn disconnects_are_spread_over_the_period_and_repeat_until_the_deadline() {
        let start = Instant::now();
        let every = Duration::from_secs(5);
        let deadline = start + Duration::from_secs(15);
        let all: Vec<Vec<Instant>> = (0..45)
            .map(|index| disconnect_times(start, every, index, 45, deadline))
            .collect();
        for (index, times) in all.iter().enumerate() {
            let first = times[0] - start;
            assert!(
                first > Duration::ZERO && first <= every,
                "session {index}: {first:?}"
            );
            assert!(times.windows(2).all(|w| w[1] - w[0] == every));
            assert!(times.iter().all(|&at| at < deadline));
            assert!(times.last().copied().unwrap() + every >= deadline);
        }
        // First disconnects 1/45 of a period apart: no two sessions at once.
        let firsts: Vec<Duration> = all.iter().map(|times| times[0] - start).collect();
        assert!(firsts.windows(2).all(|w| {
            let gap = w[1] - w[0];
            gap > Duration::from_millis(110) && gap < Duration::from_millis(112)
        }));
        // The last session first disconnects after a whole period: at 5 and 10 s, not at 15.
        assert_eq!(all[44].len(), 2);
        assert!(disconnect_times(start, Duration::ZERO, 3, 45, deadline).is_empty());
        let short = start + Duration::from_secs(2);
        assert!(disconnect_times(start, every, 0, 1, short).is_empty());
    }

    #[test]
    fn after_a_reconnect_sending_resumes_at_the_sessions_phase() {
        let first = Instant::now();
        let interval = Duration::from_millis(100);
        assert_eq!(
            next_tick(first, interval, first - Duration::from_secs(1)),
            first
        );
        assert_eq!(next_tick(first, interval, first), first);
        assert_eq!(
            next_tick(first, interval, first + Duration::from_millis(250)),
            first + Duration::from_millis(300)
        );
        assert_eq!(
            next_tick(first, interval, first + Duration::from_millis(300)),
            first + Duration::from_millis(300)
        );
    }

    /// Facts of a run where everything went right: 10 104s, 7 answered, 3 cancelled; every
    /// byte stored; nothing left on the server.
    fn good_facts() -> Facts {
        let mut process = ProcessOutcome {
            sent: 10,
            unanswered: 3,
            ..ProcessOutcome::default()
        };
        for _ in 0..7 {
            process.answers.count(crate::load::answers::Kind::Busy);
        }
        Facts {
            process,
            cancelled: 2.0,
            replies_dropped: 1.0,
            drained: true,
            stored: Reconciliation {
                uids: 1,
                uids_exact: 1,
                bytes_sent: 100,
                bytes_stored: 100,
                ..Reconciliation::default()
            },
            sessions_open_after: Some(0.0),
            process_in_flight_after: Some(0.0),
            ..Facts::default()
        }
    }

    #[test]
    fn a_goal_about_sessions_a_mode_leaves_out_is_not_judged() {
        let facts = good_facts();
        let all = |all_answered, no_loss, reconnected| Verdicts {
            all_answered,
            no_loss,
            reconnected,
            cleaned_up: Some(true),
        };
        assert_eq!(
            judge(Mode::Both, false, &facts),
            all(Some(true), Some(true), None)
        );
        assert_eq!(
            judge(Mode::Leak1, false, &facts),
            all(Some(true), None, None)
        );
        assert_eq!(
            judge(Mode::Leak2, true, &facts),
            all(None, Some(true), Some(true))
        );
    }

    #[test]
    fn every_goal_fails_on_what_it_checks() {
        let judged = |change: fn(&mut Facts)| {
            let mut facts = good_facts();
            change(&mut facts);
            judge(Mode::Both, true, &facts)
        };
        assert_eq!(judged(|f| f.cancelled = 1.0).all_answered, Some(false));
        assert_eq!(judged(|f| f.process_errors = 1).all_answered, Some(false));
        assert_eq!(
            judged(|f| f.process.answers.unknown = 1).all_answered,
            Some(false)
        );
        assert_eq!(judged(|f| f.stored.bytes_missing = 1).no_loss, Some(false));
        assert_eq!(judged(|f| f.drained = false).no_loss, Some(false));
        assert_eq!(judged(|f| f.audio_errors = 1).no_loss, Some(false));
        assert_eq!(
            judged(|f| f.reconnect_failures = 2).reconnected,
            Some(false)
        );
        assert_eq!(
            judged(|f| f.sessions_open_after = Some(1.0)).cleaned_up,
            Some(false)
        );
        assert_eq!(
            judged(|f| f.process_in_flight_after = Some(8.0)).cleaned_up,
            Some(false)
        );
        assert_eq!(
            judged(|f| f.process_in_flight_after = None).cleaned_up,
            None
        );
        let good = judged(|_| {});
        assert_eq!(good.all_answered, Some(true));
        assert_eq!(good.cleaned_up, Some(true));
    }
}
