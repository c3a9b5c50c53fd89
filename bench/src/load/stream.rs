//! `stream`: many sessions streaming private-cloud audio at real-time rate against a slow store:
//! server memory stays flat, the upload lag stays bounded, and no byte is lost.
//!
//! Opens N sessions (`uid=stream-<i>`, a 103 each), then every session sends one 101 per
//! `--frame-interval-ms` (the current time as its timestamp, `--frame-bytes` of PCM), session
//! `i` offset by `i/N` of an interval so that the frames are spread evenly in time. Every
//! `--conversation-s` a session switches conversation (a new 103, which closes its batch); the
//! switches are spread evenly over the period too (session `i` first switches after `i/N` of it,
//! at the latest after one period), as independent users would. After `--seconds` every session
//! sends a Close and waits for the server's, which pusher sends only once the session's audio
//! is durable in its spill log.
//!
//! Meanwhile the server's RSS is read every `--rss-every-ms` and its `/metrics` every
//! `--metrics-every-ms` (spill log pending bytes and batches, oldest pending batch age, uploads
//! in flight and queued). After the close the tool waits (at most `--drain-timeout-s`) until
//! nothing is pending, then reads what the S3 sink (`pusher-bench downstream`) recorded and
//! compares, per uid, the plaintext bytes stored with the PCM bytes sent.
//!
//! Results: the least-squares slope of RSS after `--warmup-s` until the end of streaming
//! (MB/min), the lag figures, the drain time, and the reconciliation (bytes missing or extra).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value, json};
use tokio::task::JoinSet;

use super::conn::{Conn, Pings};
use super::private_cloud::{
    Lag, Reconciliation, reconcile, stored_objects, wait_for_drain, wait_for_sink,
};
use super::{
    BYTES_PER_MB, Failures, RssSeries, Schedule, Session, Target, cpu_json, open_sessions,
    print_result_with_rss, round, rss_slope_mb_per_min, sample_metrics, series_json, spread,
    write_json,
};
use crate::frames;
use crate::http;
use crate::proc_stats::{Process, cpu_percent, split_usage};
use crate::prometheus::{self, Scrape};
use crate::sampler::Sampler;
use crate::stats;

/// How long a session waits for the server's Close (and end of stream) after sending its own.
const CLOSE_WAIT: Duration = Duration::from_secs(60);
/// Period of the progress lines on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);
const UID_PREFIX: &str = "stream";

/// The real-time load `stream` and `outage` share, and how it is observed.
#[derive(Debug, clap::Args)]
pub struct Load {
    #[command(flatten)]
    pub target: Target,
    /// Sessions streaming at once
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Seconds of streaming
    #[arg(long, default_value_t = 300, value_name = "S")]
    pub seconds: u64,
    /// PCM bytes per 101 message
    #[arg(long, default_value_t = 16_000, value_name = "BYTES")]
    pub frame_bytes: usize,
    /// Time between one session's 101 messages
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub frame_interval_ms: u64,
    /// Period of each session's conversation switches (a new 103); 0: never switch
    #[arg(long, default_value_t = 120, value_name = "S")]
    pub conversation_s: u64,
    /// Sessions being opened at once
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Period of the server RSS readings
    #[arg(long, default_value_t = 500, value_name = "MS")]
    pub rss_every_ms: u64,
    /// Period of the /metrics readings (upload lag)
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub metrics_every_ms: u64,
    /// Seconds of streaming left out of the RSS slope (start-up and the first batches)
    #[arg(long, default_value_t = 120, value_name = "S")]
    pub warmup_s: u64,
    /// Longest wait after the close for every batch to be uploaded
    #[arg(long, default_value_t = 300, value_name = "S")]
    pub drain_timeout_s: u64,
    /// Also write every reading to this file (JSON: `rss` as [s, KiB], `cpu` as [s, % of one
    /// core over the interval ending at s], `lag` as [s, pending
    /// bytes, pending batches, oldest pending age s, uploads in flight, queued, uploaded], with s
    /// counted from the start of streaming)
    #[arg(long, value_name = "FILE")]
    pub series: Option<PathBuf>,
    /// Goal: largest RSS slope after the warm-up
    #[arg(long, default_value_t = 1.0, value_name = "MB/MIN")]
    pub goal_rss_slope_mb_per_min: f64,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    load: Load,
    /// The S3 sink the server uploads to (`pusher-bench downstream`), read for the bytes stored
    #[arg(long, value_name = "ADDR:PORT")]
    sink: Option<SocketAddr>,
    /// Goal: largest age of the oldest pending batch while streaming
    #[arg(long, default_value_t = 120, value_name = "S")]
    goal_lag_s: u64,
}

/// The sending schedule every session follows.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    /// Uids are `<uid_prefix>-<index>`.
    pub uid_prefix: &'static str,
    pub sessions: usize,
    pub frame_bytes: usize,
    pub interval: Duration,
    /// Frames between conversation switches; 0: none.
    pub switch_every_frames: u64,
}

impl Plan {
    /// Offset of session `index`'s frames within an interval.
    fn offset(&self, index: usize) -> Duration {
        spread(self.interval, index, self.sessions)
    }

    /// Whether session `index` starts a new conversation before frame `frame` (0-based): first
    /// after `index/sessions` of a period (at least one frame), then once per period.
    fn switches_before(&self, index: usize, frame: u64) -> bool {
        let period = self.switch_every_frames;
        if period == 0 || frame == 0 {
            return false;
        }
        let phase = (index as u64 * period / self.sessions as u64) % period;
        frame % period == phase
    }
}

/// What one session sent.
#[derive(Debug, Default)]
pub(super) struct Sent {
    pub index: usize,
    pub pcm_bytes: u64,
    pub frames: u64,
    pub conversations: u64,
    /// Largest delay of a frame behind its schedule (the client falling behind).
    pub late_max: Duration,
    /// Why the session stopped early or did not close cleanly.
    pub error: Option<String>,
    /// Pings answered and sent.
    pub pings: Pings,
}

/// What one run of the [`Load`] measured: the sessions, what they sent, the server's RSS and
/// upload-lag readings from before the first session to the end of the drain, and what the
/// store received.
pub(super) struct Measured {
    pub rss_before_kib: u64,
    /// The /metrics reading before the load; `None` against a target without pusher's
    /// metrics (a peer): no upload lag, no budget.
    pub first: Option<Scrape>,
    pub open: usize,
    pub failures: Failures,
    pub total: Sent,
    pub stream_errors: Failures,
    /// Start of streaming.
    pub start: Instant,
    /// End of streaming (every session closes then).
    pub deadline: Instant,
    /// End of the warm-up: the RSS slope is over `warm..deadline`.
    pub warm: Instant,
    /// Every session closed.
    pub closed: Instant,
    /// The reading that found nothing left to upload; `None`: not within the drain timeout.
    pub after_drain: Option<Lag>,
    pub drained_at: Instant,
    pub rss_samples: Vec<(Instant, u64)>,
    /// The server's CPU time so far (s), read with each RSS reading.
    pub cpu_samples: Vec<(Instant, f64)>,
    pub lag_samples: Vec<(Instant, Lag)>,
    pub rss_after_drain_kib: u64,
    /// Bytes sent vs stored, and the sink's `/_sink/objects` answer (with a sink).
    pub recorded: Option<(Reconciliation, Value)>,
}

/// Runs the [`Load`] as sessions `<uid_prefix>-<i>`: opens them, streams until the deadline
/// (`on_start` is called as streaming starts), closes them, waits for the uploads to drain, and
/// reads what `sink` stored. The RSS and /metrics readings (and `--series`) cover all of it.
pub(super) async fn run_load(
    load: &Load,
    uid_prefix: &'static str,
    sink: Option<SocketAddr>,
    on_start: impl FnOnce(),
) -> Result<Measured, String> {
    if load.sessions == 0 || load.seconds == 0 || load.frame_interval_ms == 0 {
        return Err("--sessions, --seconds and --frame-interval-ms must be at least 1".to_owned());
    }
    let plan = Plan {
        uid_prefix,
        sessions: load.sessions,
        frame_bytes: load.frame_bytes,
        interval: Duration::from_millis(load.frame_interval_ms),
        switch_every_frames: load.conversation_s * 1000 / load.frame_interval_ms,
    };
    let server = Process::new(load.target.pid);
    let addr = load.target.addr;
    let rss_before_kib = server.rss_kib().map_err(|e| e.to_string())?;
    let first = prometheus::scrape_pusher(addr, "upload lag and memory budget").await;
    if first
        .as_ref()
        .is_some_and(|first| first.get("pusher_spill_pending_bytes").is_none())
    {
        return Err("pusher_spill_pending_bytes is not in the server's /metrics".to_owned());
    }
    if let Some(sink) = sink {
        http::get_ok_text(sink, "/_sink/health", Duration::from_secs(5)).await?;
    }

    let rss = Sampler::start(
        Duration::from_millis(load.rss_every_ms.max(10)),
        move || async move { server.usage().ok() },
    );
    let t0 = Instant::now();
    let lag = sample_metrics(
        addr,
        Duration::from_millis(load.metrics_every_ms.max(10)),
        PROGRESS_EVERY,
        Lag::of,
        move |lag| print_progress(t0, &server, lag),
    );

    eprintln!(
        "{uid_prefix}: opening {} sessions to {addr} ({} at a time)",
        load.sessions, load.concurrency
    );
    let opened = open_sessions(&load.target, uid_prefix, load.sessions, load.concurrency).await;
    let failures = opened.failures;
    let open = opened.sessions.len();
    if open == 0 {
        rss.finish().await;
        lag.finish().await;
        return Err(format!(
            "no session could be opened: {}",
            failures.to_json()
        ));
    }
    eprintln!(
        "{uid_prefix}: {open} open, {} failed; streaming {} B every {} ms each for {}s, \
         conversation switch every {}s",
        failures.total(),
        load.frame_bytes,
        load.frame_interval_ms,
        load.seconds,
        load.conversation_s
    );
    let start = Instant::now();
    on_start();
    let deadline = start + Duration::from_secs(load.seconds);
    let mut streams = JoinSet::new();
    for session in opened.sessions {
        streams.spawn(stream(session, plan, start, deadline));
    }
    let mut sent_by_uid = BTreeMap::new();
    let mut total = Sent::default();
    let mut stream_errors = Failures::default();
    while let Some(joined) = streams.join_next().await {
        let sent = joined.map_err(|e| format!("streaming task: {e}"))?;
        sent_by_uid.insert(format!("{uid_prefix}-{}", sent.index), sent.pcm_bytes);
        total.pcm_bytes += sent.pcm_bytes;
        total.frames += sent.frames;
        total.conversations += sent.conversations;
        total.late_max = total.late_max.max(sent.late_max);
        total.pings.add(sent.pings);
        if let Some(error) = sent.error {
            stream_errors.add(error);
        }
    }
    let closed = Instant::now();
    eprintln!(
        "{uid_prefix}: all sessions closed {:.1}s after the deadline; waiting for the uploads",
        closed.saturating_duration_since(deadline).as_secs_f64()
    );

    let drain_deadline = closed + Duration::from_secs(load.drain_timeout_s);
    let after_drain = match (&first, sink) {
        (Some(_), _) => wait_for_drain(addr, drain_deadline).await,
        // No upload lag to read: wait until the sink has every byte (or the timeout).
        (None, Some(sink)) => {
            wait_for_sink(sink, &sent_by_uid, drain_deadline).await;
            None
        }
        (None, None) => None,
    };
    let drained_at = Instant::now();
    let (rss_samples, cpu_samples) = split_usage(&rss.finish().await);
    let lag_samples = lag.finish().await;
    let rss_after_drain_kib = server.rss_kib().map_err(|e| e.to_string())?;
    if let Some(path) = &load.series {
        write_series(path, start, &rss_samples, &cpu_samples, &lag_samples)?;
    }

    let recorded = match sink {
        Some(sink) => {
            let text = http::get_ok_text(sink, "/_sink/objects", Duration::from_secs(30)).await?;
            let recorded: Value =
                serde_json::from_str(&text).map_err(|e| format!("sink answer: {e}"))?;
            Some((
                reconcile(&sent_by_uid, &stored_objects(&recorded)?),
                recorded,
            ))
        }
        None => None,
    };
    Ok(Measured {
        rss_before_kib,
        first,
        open,
        failures,
        total,
        stream_errors,
        start,
        deadline,
        warm: start + Duration::from_secs(load.warmup_s),
        closed,
        after_drain,
        drained_at,
        rss_samples,
        cpu_samples,
        lag_samples,
        rss_after_drain_kib,
        recorded,
    })
}

impl Measured {
    /// RSS readings in `from..to`, KiB.
    fn rss_in(&self, from: Instant, to: Instant) -> impl DoubleEndedIterator<Item = u64> + '_ {
        self.rss_samples
            .iter()
            .filter(move |&&(at, _)| at >= from && at < to)
            .map(|&(_, kib)| kib)
    }

    /// RSS slope after the warm-up until the end of streaming, MB/min.
    pub fn rss_slope(&self) -> Option<f64> {
        rss_slope_mb_per_min(&self.rss_samples, self.warm, self.deadline)
    }

    pub fn rss_max_kib(&self) -> u64 {
        self.rss_samples
            .iter()
            .map(|&(_, kib)| kib)
            .max()
            .unwrap_or(0)
    }

    /// `pusher_memory_budget_bytes` before the load, if exposed.
    pub fn budget_bytes(&self) -> Option<f64> {
        self.first.as_ref()?.get("pusher_memory_budget_bytes")
    }

    /// The upload-lag readings while streaming.
    pub fn streaming_lags(&self) -> Vec<Lag> {
        self.lag_samples
            .iter()
            .filter(|&&(at, _)| at >= self.start && at < self.deadline)
            .map(|&(_, lag)| lag)
            .collect()
    }

    /// Seconds from the close to the end of the drain wait.
    pub fn drain_s(&self) -> f64 {
        (self.drained_at - self.closed).as_secs_f64()
    }

    /// No byte missing in the store, every session opened and streamed without error; `None`
    /// without a sink.
    pub fn no_loss(&self) -> Option<bool> {
        self.recorded.as_ref().map(|(r, _)| {
            r.bytes_missing == 0
                && r.uids_short == 0
                && self.stream_errors.total() == 0
                && self.failures.total() == 0
        })
    }

    /// The reconciliation as the result's `sink` object, with `fields` of the sink's answer.
    pub fn sink_json(&self, fields: &[&str]) -> Option<Value> {
        self.recorded.as_ref().map(|(r, recorded)| {
            let mut sink = r.to_json();
            for &field in fields {
                sink[field] = recorded[field].clone();
            }
            sink
        })
    }

    /// The reconciliation's summary line.
    pub fn sink_summary(&self) -> String {
        match &self.recorded {
            Some((r, _)) => r.summary(),
            None => "no --sink: bytes stored not checked".to_owned(),
        }
    }

    /// The result's `rss` object.
    pub fn rss_json(&self) -> Value {
        let kib_to_mib = |kib: u64| round(kib as f64 / 1024.0, 1);
        json!({
            "samples": self.rss_samples.len(),
            "window_samples": self.rss_in(self.warm, self.deadline).count(),
            "before_kib": self.rss_before_kib,
            "at_warmup_kib": self.rss_in(self.warm, self.deadline).next(),
            "at_end_kib": self.rss_in(self.start, self.deadline).next_back(),
            "window_min_kib": self.rss_in(self.warm, self.deadline).min(),
            "window_max_kib": self.rss_in(self.warm, self.deadline).max(),
            "max_mib": kib_to_mib(self.rss_max_kib()),
            "peak_kib": self.rss_max_kib(),
            "budget_bytes": self.budget_bytes(),
            "after_drain_kib": self.rss_after_drain_kib,
            "slope_mb_per_min": self.rss_slope().map(|s| round(s, 4)),
        })
    }

    /// The result's fields describing the load (`rss`, `lag`, `sink` and `goals` are the
    /// scenario's).
    pub fn load_json(&self, load: &Load) -> Value {
        json!({
            "sessions_requested": load.sessions,
            "sessions": self.open,
            "failures": self.failures.total(),
            "failure_reasons": self.failures.to_json(),
            "stream_errors": self.stream_errors.total(),
            "stream_error_reasons": self.stream_errors.to_json(),
            "seconds": load.seconds,
            "frame_pcm_bytes": load.frame_bytes,
            "frame_interval_ms": load.frame_interval_ms,
            "conversation_s": load.conversation_s,
            "pcm_bytes_sent": self.total.pcm_bytes,
            "frames_sent": self.total.frames,
            "conversations": self.total.conversations,
            "client_late_max_ms": self.total.late_max.as_millis() as u64,
            "keepalive": self.total.pings.to_json(),
            "close_s": round(self.closed.saturating_duration_since(self.deadline).as_secs_f64(), 2),
            "warmup_s": load.warmup_s,
            "cpu": self.cpu_json(),
        })
    }

    /// The server's CPU use while streaming (`start..deadline`), from the periodic readings.
    fn cpu_json(&self) -> Value {
        cpu_json(&self.cpu_samples, self.start, self.deadline)
    }

    /// The first two lines of the human summary: the load and the server's RSS and CPU.
    pub fn summary(&self, name: &str, load: &Load) -> String {
        let cpu = self.cpu_json();
        format!(
            "{name}: {}/{} sessions ({} failed to open, {} stream errors), {:.1} MB of PCM in {} \
             frames, {} conversations, client late by at most {} ms\n\
             \x20 server RSS {:.1} MiB before, {:.1}..{:.1} MiB after the {}s warm-up, {:.1} MiB \
             max{}, {:.1} MiB after the drain; slope after warm-up {} MB/min (goal < {}); server \
             CPU while streaming {} % of a core on average, {} % at most",
            self.open,
            load.sessions,
            self.failures.total(),
            self.stream_errors.total(),
            self.total.pcm_bytes as f64 / BYTES_PER_MB,
            self.total.frames,
            self.total.conversations,
            self.total.late_max.as_millis(),
            self.rss_before_kib as f64 / 1024.0,
            self.rss_in(self.warm, self.deadline).min().unwrap_or(0) as f64 / 1024.0,
            self.rss_in(self.warm, self.deadline).max().unwrap_or(0) as f64 / 1024.0,
            load.warmup_s,
            self.rss_max_kib() as f64 / 1024.0,
            self.budget_bytes().map_or(String::new(), |b| format!(
                " (budget {:.1} MiB)",
                b / 1024.0 / 1024.0
            )),
            self.rss_after_drain_kib as f64 / 1024.0,
            self.rss_slope()
                .map_or("n/a".to_owned(), |s| format!("{s:.3}")),
            load.goal_rss_slope_mb_per_min,
            cpu["avg_pct"],
            cpu["peak_pct"],
        )
    }

    /// Prints the result of `scenario`: the load, `rss`, `lag` (null without pusher's /metrics:
    /// there is no upload lag to report), `sink`, `goals` and the scenario's `extra` fields.
    pub fn print_result(
        &self,
        scenario: &str,
        load: &Load,
        lag: Value,
        goals: Value,
        extra: Map<String, Value>,
        human: &str,
    ) -> Result<(), String> {
        let mut fields = self.load_json(load);
        fields["rss"] = self.rss_json();
        fields["lag"] = if self.first.is_some() {
            lag
        } else {
            Value::Null
        };
        fields["sink"] = json!(self.sink_json(&["puts", "puts_in_flight_max", "delay_ms"]));
        fields["goals"] = goals;
        for (key, value) in extra {
            fields[key] = value;
        }
        print_result_with_rss(
            scenario,
            &load.target,
            fields,
            human,
            Some(self.rss_series()),
        )
    }

    /// The RSS readings for the result file and the plot.
    pub fn rss_series(&self) -> RssSeries<'_> {
        RssSeries {
            start: self.start,
            samples: &self.rss_samples,
            cpu: &self.cpu_samples,
            budget_bytes: self.budget_bytes(),
        }
    }
}

pub async fn run(args: Args) -> Result<(), String> {
    let load = &args.load;
    let m = run_load(load, UID_PREFIX, args.sink, || {}).await?;
    let uploaded_before = m.first.as_ref().map(|first| Lag::of(first).uploaded);
    let minutes_since_start =
        |at: Instant| at.saturating_duration_since(m.start).as_secs_f64() / 60.0;
    let rss_slope = m.rss_slope();

    // Upload lag while streaming, and over the whole run.
    let streaming = m.streaming_lags();
    let max_of = |values: &[Lag], f: fn(&Lag) -> f64| stats::max(values.iter().map(f));
    let all: Vec<Lag> = m.lag_samples.iter().map(|&(_, lag)| lag).collect();
    let oldest_age_max_s = max_of(&streaming, |l| l.oldest_age_s);
    let pending_bytes_window: Vec<(f64, f64)> = m
        .lag_samples
        .iter()
        .filter(|&&(at, _)| at >= m.warm && at < m.deadline)
        .map(|&(at, lag)| (minutes_since_start(at), lag.pending_bytes / BYTES_PER_MB))
        .collect();
    let drained = m.after_drain.is_some();
    let drain_s = m.drain_s();
    let uploads = m
        .after_drain
        .zip(uploaded_before)
        .map(|(lag, before)| lag.uploaded - before);

    let rss_flat = rss_slope.map(|s| s < load.goal_rss_slope_mb_per_min);
    let lag_bounded = oldest_age_max_s.map(|age| drained && age <= args.goal_lag_s as f64);
    let no_loss = m.no_loss();

    let human = format!(
        "{}\n\
         \x20 upload lag while streaming: pending max {:.1} MB in {} batches, oldest pending batch {}s max \
         (goal ≤ {}s), uploads in flight max {}, queued max {}; drain {} in {drain_s:.1}s\n\
         \x20 {}",
        m.summary("stream", load),
        max_of(&streaming, |l| l.pending_bytes).unwrap_or(0.0) / BYTES_PER_MB,
        max_of(&streaming, |l| l.pending_batches).unwrap_or(0.0),
        oldest_age_max_s.unwrap_or(0.0),
        args.goal_lag_s,
        max_of(&streaming, |l| l.in_flight).unwrap_or(0.0),
        max_of(&streaming, |l| l.queued).unwrap_or(0.0),
        if drained { "complete" } else { "NOT complete" },
        m.sink_summary(),
    );
    let lag_json = json!({
        "samples": m.lag_samples.len(),
        "pending_bytes_max": max_of(&streaming, |l| l.pending_bytes),
        "pending_bytes_slope_mb_per_min": stats::slope(&pending_bytes_window).map(|s| round(s, 3)),
        "pending_batches_max": max_of(&streaming, |l| l.pending_batches),
        "oldest_pending_age_s_max": oldest_age_max_s,
        "oldest_pending_age_s_max_with_drain": max_of(&all, |l| l.oldest_age_s),
        "upload_in_flight_max": max_of(&streaming, |l| l.in_flight),
        "upload_queued_max": max_of(&streaming, |l| l.queued),
        "upload_failed_attempts": stats::max(all.iter().map(|l| l.failed_attempts)),
        "spill_full_seen": all.iter().any(|l| l.full > 0.0),
        "drained": drained,
        "drain_s": round(drain_s, 1),
        "uploads": uploads,
    });
    let goals_json = json!({
        "rss_slope_mb_per_min_max": load.goal_rss_slope_mb_per_min,
        "oldest_pending_age_s_max": args.goal_lag_s,
        "rss_flat": rss_flat,
        "lag_bounded": lag_bounded,
        "no_loss": no_loss,
    });
    m.print_result("stream", load, lag_json, goals_json, Map::new(), &human)
}

/// Writes the readings (see `--series`).
fn write_series(
    path: &std::path::Path,
    start: Instant,
    rss: &[(Instant, u64)],
    cpu: &[(Instant, f64)],
    lag: &[(Instant, Lag)],
) -> Result<(), String> {
    let series = json!({
        "rss": series_json(start, rss, |&kib| json!([kib])),
        "cpu": series_json(start, &cpu_percent(cpu), |&percent| json!([round(percent, 1)])),
        "lag": series_json(start, lag, |l| {
            json!([
                l.pending_bytes,
                l.pending_batches,
                l.oldest_age_s,
                l.in_flight,
                l.queued,
                l.uploaded
            ])
        }),
    });
    write_json(path, &series)
}

fn print_progress(t0: Instant, server: &Process, lag: &Lag) {
    eprintln!(
        "  {:>5.0}s: RSS {:.1} MiB; pending {:.1} MB in {} batches, oldest {}s; uploads in flight {}, \
         queued {}, done {}",
        t0.elapsed().as_secs_f64(),
        server.rss_kib().unwrap_or(0) as f64 / 1024.0,
        lag.pending_bytes / BYTES_PER_MB,
        lag.pending_batches,
        lag.oldest_age_s,
        lag.in_flight,
        lag.queued,
        lag.uploaded,
    );
}

/// Sends one 101 per interval on schedule until `deadline` (a 103 first when the plan switches
/// conversation), then at the deadline closes: sends a Close and reads until the server has
/// answered and ended the stream.
pub(super) async fn stream(
    session: Session,
    plan: Plan,
    start: Instant,
    deadline: Instant,
) -> Sent {
    let index = session.index;
    let mut sent = Sent {
        index,
        conversations: 1,
        ..Sent::default()
    };
    let mut conn = Conn::new(session.stream);
    let mut schedule = Schedule::new(start + plan.offset(index), plan.interval, deadline);
    let mut wire = Vec::with_capacity(frames::frame_bytes(plan.frame_bytes + 12) + 256);
    while let Some(at) = schedule.due() {
        // Meanwhile pings are answered and sent as the listen service does.
        if let Err(end) = conn.wait_until(at, &mut |_| {}).await {
            sent.pings = conn.pings();
            sent.error = Some(end.reason());
            return sent;
        }
        schedule.advance();
        sent.late_max = schedule.late_max();
        wire.clear();
        if plan.switches_before(index, sent.frames) {
            let conversation = format!("{}-conv-{index}-{}", plan.uid_prefix, sent.conversations);
            frames::push_binary_frame(
                &frames::message(frames::CONVERSATION_ID, conversation.as_bytes()),
                &mut wire,
            );
            sent.conversations += 1;
        }
        let timestamp_s = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        frames::push_binary_frame(
            &frames::audio_message(timestamp_s, plan.frame_bytes),
            &mut wire,
        );
        if let Err(end) = conn.send(&wire).await {
            sent.pings = conn.pings();
            sent.error = Some(end.reason());
            return sent;
        }
        sent.pcm_bytes += plan.frame_bytes as u64;
        sent.frames += 1;
    }
    // Every session closes at the deadline (not after its last frame), so that the batches
    // closed by the session ends fall after the measured window.
    sent.error = match conn.wait_until(deadline, &mut |_| {}).await {
        Ok(()) => conn.close(CLOSE_WAIT, &mut |_| {}).await.err(),
        Err(end) => Some(end.reason()),
    };
    sent.pings = conn.pings();
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(sessions: usize, switch_every_frames: u64) -> Plan {
        Plan {
            uid_prefix: UID_PREFIX,
            sessions,
            frame_bytes: 16_000,
            interval: Duration::from_secs(1),
            switch_every_frames,
        }
    }

    #[test]
    fn frames_are_spread_over_the_interval() {
        let plan = plan(1000, 120);
        assert_eq!(plan.offset(0), Duration::ZERO);
        assert_eq!(plan.offset(500), Duration::from_millis(500));
        assert_eq!(plan.offset(999), Duration::from_millis(999));
    }

    #[test]
    fn every_session_switches_once_per_period_at_its_own_phase() {
        let plan = plan(1000, 120);
        let mut first_switch = vec![0u64; 120 + 1];
        for index in 0..1000 {
            let switches: Vec<u64> = (0..=600)
                .filter(|&frame| plan.switches_before(index, frame))
                .collect();
            // One switch per period; the first within the first period.
            assert_eq!(switches.len(), 5, "session {index}: {switches:?}");
            assert!((1..=120).contains(&switches[0]), "session {index}");
            assert!(switches.windows(2).all(|w| w[1] - w[0] == 120));
            first_switch[switches[0] as usize] += 1;
        }
        // Spread evenly: every second of the period has 8 or 9 first switches.
        assert!(
            first_switch[1..].iter().all(|&n| (8..=9).contains(&n)),
            "{first_switch:?}"
        );
    }

    #[test]
    fn no_switch_before_the_first_frame_or_without_a_period() {
        let plan_with = plan(10, 5);
        assert!((0..10).all(|index| !plan_with.switches_before(index, 0)));
        let plan_without = plan(10, 0);
        assert!((0..10).all(|index| (0..100).all(|f| !plan_without.switches_before(index, f))));
        let one_session = plan(1, 3);
        let switches: Vec<u64> = (0..10)
            .filter(|&f| one_session.switches_before(0, f))
            .collect();
        assert_eq!(switches, [3, 6, 9]);
    }
}
