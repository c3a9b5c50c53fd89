//! `capacity`: how many real-time sessions a server sustains per core, the figure that decides
//! fleet size.
//!
//! Each session is one user as Omi's listen service streams it (16 kHz mono PCM16): a 103 at the
//! start, then every second one 101 of `--frame-bytes` (32,000 B: one second of audio) and one
//! 102 (a transcript segment carrying `sent_ns`), a 104 every `--process-interval-s` (the
//! conversation ends: then a 103 with a new conversation id) and a 105 every
//! `--speaker-interval-s`; pings are answered and sent as the listen service does
//! ([`super::conn`]). Session `i` (`uid=capacity-<i>`) has private-cloud sync, a realtime
//! transcript webhook and an audio-bytes app as the [`Mix`] says; `pusher-bench
//! capacity-settings` writes the settings file that gives the server the same mix (the
//! downstream simulator, run in this process, plays the webhooks, the app, the processor, the
//! speaker-sample service and S3).
//!
//! The sessions are held by `--clients` child processes (the hidden `capacity-client`
//! subcommand) over `--source-ips`. The tool ramps: `--start` sessions, then `--factor` times
//! more at each step up to `--sessions-max`; each step settles `--settle-s`, then is measured
//! for `--hold-s`: the server's CPU (all its threads) in % of its workers' cores (`--cores`), its
//! RSS, disk writes, the simulator's requests, the transcript delivery latency (102 send → the
//! webhook's arrival), the upload lag and backpressure (pusher's /metrics), the sessions lost,
//! and how late the clients sent (a session falling behind real time). The ramp stops at the
//! first step that breaks a bound: CPU above `--cpu-share` of the workers' cores, transcript
//! delivery p99 above `--transcript-p99-ms`, the oldest pending upload older than
//! `--upload-lag-s` or any spill backpressure, a frame sent more than `--behind-s` late, a
//! session lost or refused. Then `--refine` bisection steps between the last step that held and
//! the one that broke (sessions are closed or opened to get there). The result: the sustained
//! sessions (the largest step that held) per core, with the figures of that step.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::clients::{Answer, Clients, check_fits, share, target_args};
use super::conn::{Conn, Pings, SharedPings};
use super::private_cloud;
use super::{
    Failures, Target, count_json, open_session, print_result, raise_open_files_limit, round,
    rss_slope_mb_per_min,
};
use crate::downstream::{self, Route, RouteArgs, parse_rate};
use crate::frames;
use crate::proc_stats::Process;
use crate::prometheus::{self, Scrape};

const UID_PREFIX: &str = "capacity";
/// Upper bounds (ms) of the lateness histogram's buckets; the last one is open.
const LATE_BUCKETS_MS: [u64; 13] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000];
/// Time a client has to answer `report` or `close N`.
const ANSWER_WAIT: Duration = Duration::from_secs(60);
/// Oldest pending upload age (s) while uploads keep up: pusher closes a batch at 60 s, then
/// uploads it; the age grows past this only when the uploads fall behind.
const UPLOAD_LAG_STEADY_S: f64 = 65.0;
/// Growth of that age over a window (s) that counts as growing: the gauge is in whole seconds,
/// so one second is its jitter. (A backlog that grows at a quarter of real time, 40 uploads/s
/// against 53 closed, adds 5 s in a 20 s window.)
const UPLOAD_LAG_GROWTH_S: f64 = 2.0;
/// How long a closing session waits for the server's end of the stream.
const CLOSE_WAIT: Duration = Duration::from_secs(10);
/// Text of every transcript segment: one second of speech.
const SEGMENT_TEXT: &str = "so I was thinking we could meet tomorrow morning to go over the plan";
/// Irrational steps of the low-discrepancy sequences that pick each session's features and
/// phases, so that any first N sessions have close to the shares asked for, spread evenly.
const GOLDEN: f64 = 0.618_033_988_749_895;
const SQRT2_FRAC: f64 = 0.414_213_562_373_095;
const SQRT3_FRAC: f64 = 0.732_050_807_568_877;
const SQRT5_FRAC: f64 = 0.236_067_977_499_79;

/// Which users have which features: each a share of the sessions, picked by index.
#[derive(Debug, Clone, clap::Args)]
pub struct Mix {
    /// Share of the users with private-cloud sync on (their audio goes to the spill log and
    /// the store, encrypted at level `enhanced`)
    #[arg(long, default_value_t = 0.25, value_name = "RATE", value_parser = parse_rate)]
    pub private_cloud_share: f64,
    /// Share of the users with a realtime transcript webhook (every 102 posted to it; the
    /// transcript delivery latency is measured there)
    #[arg(long, default_value_t = 0.10, value_name = "RATE", value_parser = parse_rate)]
    pub transcript_webhook_share: f64,
    /// Share of the users with an app whose trigger is `audio_bytes` (audio posted to its
    /// webhook)
    #[arg(long, default_value_t = 0.05, value_name = "RATE", value_parser = parse_rate)]
    pub audio_app_share: f64,
}

/// The features of one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    pub private_cloud: bool,
    pub transcript_webhook: bool,
    pub audio_app: bool,
}

/// `(i × step) mod 1`: an evenly spread value in [0, 1) per index.
fn spread_of(index: usize, step: f64) -> f64 {
    (index as f64 * step).fract()
}

impl Mix {
    pub fn features(&self, index: usize) -> Features {
        Features {
            private_cloud: spread_of(index, GOLDEN) < self.private_cloud_share,
            transcript_webhook: spread_of(index, SQRT2_FRAC) < self.transcript_webhook_share,
            audio_app: spread_of(index, SQRT3_FRAC) < self.audio_app_share,
        }
    }

    /// How many of the first `sessions` users have each feature.
    fn counts(&self, sessions: usize) -> Value {
        let (mut cloud, mut webhook, mut app) = (0, 0, 0);
        for index in 0..sessions {
            let f = self.features(index);
            cloud += usize::from(f.private_cloud);
            webhook += usize::from(f.transcript_webhook);
            app += usize::from(f.audio_app);
        }
        json!({"private_cloud": cloud, "transcript_webhook": webhook, "audio_app": app})
    }

    fn to_json(&self) -> Value {
        json!({
            "private_cloud_share": self.private_cloud_share,
            "transcript_webhook_share": self.transcript_webhook_share,
            "audio_app_share": self.audio_app_share,
        })
    }

    fn to_args(&self) -> Vec<String> {
        vec![
            "--private-cloud-share".to_owned(),
            self.private_cloud_share.to_string(),
            "--transcript-webhook-share".to_owned(),
            self.transcript_webhook_share.to_string(),
            "--audio-app-share".to_owned(),
            self.audio_app_share.to_string(),
        ]
    }
}

/// Options of `pusher-bench capacity-settings`.
#[derive(Debug, clap::Args)]
pub struct SettingsArgs {
    #[command(flatten)]
    mix: Mix,
    /// Users `capacity-0` .. `capacity-<N-1>` get their features
    #[arg(long, value_name = "N")]
    sessions_max: usize,
    /// The downstream simulator the webhooks point at (`capacity --downstream-listen`)
    #[arg(long, default_value = "127.0.0.1:18766", value_name = "ADDR:PORT")]
    downstream: SocketAddr,
}

/// The per-user settings file (TOML, pusher's `file` source) of the mix: private-cloud sync
/// off by default, on (level `enhanced`) for the users of its share; the transcript webhook
/// and the audio app at the simulator.
pub fn settings_toml(mix: &Mix, sessions_max: usize, downstream: SocketAddr) -> String {
    let mut out = format!(
        "# pusher-bench capacity-settings: {} of {sessions_max} users (capacity-<i>)\n\
         [default]\nprivate_cloud_sync_enabled = false\ndata_protection_level = \"enhanced\"\n",
        mix.to_json()
    );
    for index in 0..sessions_max {
        let f = mix.features(index);
        if f == Features::default() {
            continue;
        }
        let uid = format!("{UID_PREFIX}-{index}");
        out.push_str(&format!("\n[users.\"{uid}\"]\n"));
        if f.private_cloud {
            out.push_str("private_cloud_sync_enabled = true\n");
        }
        if f.transcript_webhook {
            out.push_str(&format!(
                "realtime_transcript_webhook = \"http://{downstream}/webhook/transcript\"\n"
            ));
        }
        if f.audio_app {
            out.push_str(&format!(
                "[[users.\"{uid}\".apps]]\nid = \"audio-app\"\n\
                 webhook_url = \"http://{downstream}/webhook/audio\"\ntriggers = [\"audio_bytes\"]\n"
            ));
        }
    }
    out
}

pub fn write_settings(args: &SettingsArgs) -> Result<(), String> {
    print!(
        "{}",
        settings_toml(&args.mix, args.sessions_max, args.downstream)
    );
    Ok(())
}

/// What each session sends, and when.
#[derive(Debug, Clone, clap::Args)]
pub struct Plan {
    /// PCM bytes per 101 (one a second; 32,000 = 1 s at 16 kHz mono PCM16)
    #[arg(long, default_value_t = 32_000)]
    frame_bytes: usize,
    /// Seconds between a session's 104s (each ends its conversation; a 103 starts the next)
    #[arg(long, default_value_t = 240, value_name = "S")]
    process_interval_s: u64,
    /// Seconds between a session's 105s (speaker-sample requests)
    #[arg(long, default_value_t = 600, value_name = "S")]
    speaker_interval_s: u64,
}

impl Plan {
    fn to_args(&self) -> Vec<String> {
        vec![
            "--frame-bytes".to_owned(),
            self.frame_bytes.to_string(),
            "--process-interval-s".to_owned(),
            self.process_interval_s.to_string(),
            "--speaker-interval-s".to_owned(),
            self.speaker_interval_s.to_string(),
        ]
    }
}

#[derive(Debug, clap::Args)]
#[command(
    mut_arg("processor_delay_ms", |arg| arg.default_value("1000")),
    mut_arg("webhook_delay_ms", |arg| arg.default_value("100")),
    mut_arg("store_delay_ms", |arg| arg.default_value("200"))
)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    routes: RouteArgs,
    #[command(flatten)]
    mix: Mix,
    #[command(flatten)]
    plan: Plan,
    /// Address of the downstream simulator run in this process (webhooks, processor, speaker
    /// samples, S3)
    #[arg(long, default_value = "127.0.0.1:18766", value_name = "ADDR:PORT")]
    downstream_listen: SocketAddr,
    /// Cores the server's workers have: sessions per core = sessions / cores, and the CPU
    /// bound is `--cpu-share` of them (pusher: --workers; a single-process Python service: 1)
    #[arg(long, default_value_t = 1.0)]
    cores: f64,
    /// Client processes holding the sessions (each an equal share)
    #[arg(long, default_value_t = 3)]
    clients: usize,
    /// Sessions of the first step
    #[arg(long, default_value_t = 100)]
    start: usize,
    /// Each step has this many times the sessions of the one before
    #[arg(long, default_value_t = 2.0)]
    factor: f64,
    /// The last step (the open-files limits bound it: a session is a descriptor on each side)
    #[arg(long, default_value_t = 19_000)]
    sessions_max: usize,
    /// Bisection steps between the last step that held and the one that broke
    #[arg(long, default_value_t = 3)]
    refine: usize,
    /// Seconds from a step's last session opened to its measured window
    #[arg(long, default_value_t = 10, value_name = "S")]
    settle_s: u64,
    /// Seconds of a step's measured window
    #[arg(long, default_value_t = 20, value_name = "S")]
    hold_s: u64,
    /// Sessions being opened at once, per client process
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Bound: the server's CPU above this share of its workers' cores
    #[arg(long, default_value_t = 0.7, value_name = "RATE", value_parser = parse_rate)]
    cpu_share: f64,
    /// Bound: transcript delivery (102 send → webhook arrival) p99 above this
    #[arg(long, default_value_t = 10.0, value_name = "MS")]
    transcript_p99_ms: f64,
    /// Bound: the oldest pending upload (pusher's spill log) older than this
    #[arg(long, default_value_t = 120.0, value_name = "S")]
    upload_lag_s: f64,
    /// Bound: a frame sent more than this late (a session falling behind real time)
    #[arg(long, default_value_t = 2.0, value_name = "S")]
    behind_s: f64,
    /// Bound: the server's RSS growing faster than this over a window (a queue growing in
    /// memory: what shows uploads falling behind on a server without pusher's /metrics)
    #[arg(long, default_value_t = 60.0, value_name = "MB/MIN")]
    rss_growth_mb_per_min: f64,
    /// Before each bisection step every session is closed and the server gets this long to
    /// recover from the step that broke (then the step's sessions are opened afresh); pusher
    /// also until its uploads have drained (its /metrics), at most --recover-max-s
    #[arg(long, default_value_t = 30, value_name = "S")]
    recover_s: u64,
    /// The longest wait for pusher's uploads to drain before a bisection step
    #[arg(long, default_value_t = 600, value_name = "S")]
    recover_max_s: u64,
    /// The goal: sustained sessions per core at least this
    #[arg(long, default_value_t = 5000.0)]
    goal_sessions_per_core: f64,
}

/// The hidden `capacity-client` subcommand: one client process of `capacity`.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    mix: Mix,
    #[command(flatten)]
    plan: Plan,
    /// Sessions being opened at once
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
}

/// Lateness of the frames sent, as a histogram (atomic: sessions count, the report reads).
#[derive(Debug, Default)]
struct Lateness {
    buckets: [AtomicU64; LATE_BUCKETS_MS.len() + 1],
    max_us: AtomicU64,
}

impl Lateness {
    fn record(&self, late: Duration) {
        let ms = late.as_millis() as u64;
        let bucket = LATE_BUCKETS_MS
            .iter()
            .position(|&upper| ms < upper)
            .unwrap_or(LATE_BUCKETS_MS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.max_us
            .fetch_max(late.as_micros() as u64, Ordering::Relaxed);
    }

    /// The counts and the maximum since the last take, reset.
    fn take(&self) -> (Vec<u64>, u64) {
        let counts = self
            .buckets
            .iter()
            .map(|bucket| bucket.swap(0, Ordering::Relaxed))
            .collect();
        (counts, self.max_us.swap(0, Ordering::Relaxed))
    }
}

/// The upper bound (ms) of the bucket holding the `q` quantile of `counts`; `None` when empty
/// (the open bucket reports the largest bound).
fn late_quantile_ms(counts: &[u64], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, &count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(LATE_BUCKETS_MS[i.min(LATE_BUCKETS_MS.len() - 1)]);
        }
    }
    LATE_BUCKETS_MS.last().copied()
}

/// What a client's sessions did, counted as they go.
#[derive(Debug, Default)]
struct Counts {
    opened: AtomicU64,
    lost: AtomicU64,
    closed: AtomicU64,
    frames: AtomicU64,
    transcripts: AtomicU64,
    processes: AtomicU64,
    answers: AtomicU64,
    speakers: AtomicU64,
    pings: SharedPings,
    late: Lateness,
    failures: Mutex<Failures>,
    lost_reasons: Mutex<Failures>,
}

/// A client's answer: counts so far, and the lateness since its last answer.
#[derive(Debug, Default, Clone, PartialEq)]
struct Report {
    opened: u64,
    lost: u64,
    closed: u64,
    frames: u64,
    transcripts: u64,
    processes: u64,
    answers: u64,
    speakers: u64,
    pings: Pings,
    late_counts: Vec<u64>,
    late_max_us: u64,
    failures: BTreeMap<String, u64>,
    lost_reasons: BTreeMap<String, u64>,
    cpu_s: f64,
}

impl Report {
    fn of(counts: &Counts) -> Report {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let (late_counts, late_max_us) = counts.late.take();
        let reasons = |failures: &Mutex<Failures>| -> BTreeMap<String, u64> {
            let json = failures.lock().expect("no panic while counting").to_json();
            json.as_object()
                .into_iter()
                .flatten()
                .map(|(reason, count)| (reason.clone(), count.as_u64().unwrap_or(0)))
                .collect()
        };
        Report {
            opened: load(&counts.opened),
            lost: load(&counts.lost),
            closed: load(&counts.closed),
            frames: load(&counts.frames),
            transcripts: load(&counts.transcripts),
            processes: load(&counts.processes),
            answers: load(&counts.answers),
            speakers: load(&counts.speakers),
            pings: counts.pings.get(),
            late_counts,
            late_max_us,
            failures: reasons(&counts.failures),
            lost_reasons: reasons(&counts.lost_reasons),
            cpu_s: Process::current().cpu_s().unwrap_or(0.0),
        }
    }

    fn to_line(&self) -> String {
        json!({
            "opened": self.opened, "lost": self.lost, "closed": self.closed,
            "frames": self.frames, "transcripts": self.transcripts,
            "processes": self.processes, "answers": self.answers, "speakers": self.speakers,
            "pings": [self.pings.answered, self.pings.sent, self.pings.pongs],
            "late_counts": self.late_counts, "late_max_us": self.late_max_us,
            "failures": self.failures, "lost_reasons": self.lost_reasons, "cpu_s": self.cpu_s,
        })
        .to_string()
    }

    fn parse(line: &str) -> Result<Report, String> {
        let answer = Answer::parse(line)?;
        let (value, count) = (&answer.value, |key: &str| answer.count(key));
        let counts = |key: &str| -> Vec<u64> {
            value[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64)
                .collect()
        };
        let reasons = |key: &str| -> BTreeMap<String, u64> {
            value[key]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(reason, count)| (reason.clone(), count.as_u64().unwrap_or(0)))
                .collect()
        };
        let pings = counts("pings");
        Ok(Report {
            opened: count("opened")?,
            lost: count("lost")?,
            closed: count("closed")?,
            frames: count("frames")?,
            transcripts: count("transcripts")?,
            processes: count("processes")?,
            answers: count("answers")?,
            speakers: count("speakers")?,
            pings: Pings {
                answered: pings.first().copied().unwrap_or(0),
                sent: pings.get(1).copied().unwrap_or(0),
                pongs: pings.get(2).copied().unwrap_or(0),
            },
            late_counts: counts("late_counts"),
            late_max_us: count("late_max_us")?,
            failures: reasons("failures"),
            lost_reasons: reasons("lost_reasons"),
            cpu_s: value["cpu_s"].as_f64().unwrap_or(0.0),
        })
    }

    /// The sum of several clients' reports.
    fn sum(reports: &[Report]) -> Report {
        let mut total = Report {
            late_counts: vec![0; LATE_BUCKETS_MS.len() + 1],
            ..Report::default()
        };
        for r in reports {
            total.opened += r.opened;
            total.lost += r.lost;
            total.closed += r.closed;
            total.frames += r.frames;
            total.transcripts += r.transcripts;
            total.processes += r.processes;
            total.answers += r.answers;
            total.speakers += r.speakers;
            total.pings.add(r.pings);
            for (sum, count) in total.late_counts.iter_mut().zip(&r.late_counts) {
                *sum += count;
            }
            total.late_max_us = total.late_max_us.max(r.late_max_us);
            for (reason, count) in &r.failures {
                *total.failures.entry(reason.clone()).or_default() += count;
            }
            for (reason, count) in &r.lost_reasons {
                *total.lost_reasons.entry(reason.clone()).or_default() += count;
            }
            total.cpu_s += r.cpu_s;
        }
        total
    }

    fn failures_total(&self) -> u64 {
        self.failures.values().sum()
    }

    /// Sessions open now.
    fn open(&self) -> u64 {
        self.opened.saturating_sub(self.lost + self.closed)
    }
}

/// A masked 101 frame of `pcm_bytes` of silence whose timestamp is patched per send.
struct AudioTemplate {
    wire: Vec<u8>,
    /// Where the masked timestamp's 8 bytes are in `wire`.
    timestamp_at: usize,
}

impl AudioTemplate {
    fn new(pcm_bytes: usize) -> AudioTemplate {
        let message = frames::audio_message(0.0, pcm_bytes);
        let wire = frames::binary_frame(&message);
        let timestamp_at = wire.len() - message.len() + 4;
        AudioTemplate { wire, timestamp_at }
    }

    /// Appends the frame with `timestamp_s` to `out`.
    fn push(&self, timestamp_s: f64, out: &mut Vec<u8>) {
        let at = out.len() + self.timestamp_at;
        out.extend_from_slice(&self.wire);
        // The timestamp starts at payload offset 4, a multiple of the key's length.
        for (k, byte) in timestamp_s.to_le_bytes().iter().enumerate() {
            out[at + k] = byte ^ frames::MASK_KEY[k % frames::MASK_KEY.len()];
        }
    }
}

/// The 102 of second `n` of `uid`, sent at `sent_ns`.
fn transcript_message(uid: &str, n: u64, sent_ns: u64) -> Vec<u8> {
    let start = n as f64;
    let payload = json!({
        "segments": [{
            "id": format!("{uid}-{n}"), "text": SEGMENT_TEXT, "speaker": "SPEAKER_00",
            "speaker_id": 0, "is_user": false, "person_id": null,
            "start": start, "end": start + 1.0, "sent_ns": sent_ns,
        }],
    });
    frames::message(frames::TRANSCRIPT, payload.to_string().as_bytes())
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// One session: opens (`uid=capacity-<index>`, its first 103), then streams on its schedule
/// until `stop` fires (it closes with a Close) or the server ends it (lost).
async fn session(
    target: Arc<Target>,
    index: usize,
    plan: Arc<Plan>,
    audio: Arc<AudioTemplate>,
    counts: Arc<Counts>,
    stop: oneshot::Receiver<()>,
    permits: Arc<tokio::sync::Semaphore>,
) {
    let uid = format!("{UID_PREFIX}-{index}");
    // At most `--concurrency` sessions opening at once; the permit is held until it is open.
    let permit = permits.acquire_owned().await;
    let mut conversation = 0u64;
    let conversation_id = |n: u64| format!("{uid}-c{n}");
    let timeout = Duration::from_secs(target.connect_timeout_s);
    let opened = tokio::time::timeout(
        timeout,
        open_session(&target, index, &uid, &conversation_id(0)),
    )
    .await
    .unwrap_or_else(|_| Err(format!("timeout after {}s", target.connect_timeout_s)));
    drop(permit);
    let session = match opened {
        Ok(session) => session,
        Err(reason) => {
            counts
                .failures
                .lock()
                .expect("no panic while counting")
                .add(reason);
            return;
        }
    };
    counts.opened.fetch_add(1, Ordering::Relaxed);
    let mut conn = Conn::new(session.stream);
    let second = Duration::from_secs(1);
    let now = Instant::now();
    let mut next_audio = now + second.mul_f64(spread_of(index, SQRT5_FRAC));
    let process_every = Duration::from_secs(plan.process_interval_s.max(1));
    let mut next_process = now + process_every.mul_f64(spread_of(index, GOLDEN));
    let speaker_every = Duration::from_secs(plan.speaker_interval_s.max(1));
    let mut next_speaker = now + speaker_every.mul_f64(spread_of(index, SQRT2_FRAC));
    let mut wire = Vec::with_capacity(audio.wire.len() + 1024);
    let mut seconds = 0u64;
    let stop = async {
        let _ = stop.await;
    };
    tokio::pin!(stop);
    let answers = &counts.answers;
    let outcome = loop {
        let at = next_audio.min(next_process).min(next_speaker);
        let before = conn.pings();
        let waited = conn
            .wait_until_or(at, stop.as_mut(), &mut |_| {
                answers.fetch_add(1, Ordering::Relaxed);
            })
            .await;
        counts.pings.add(conn.pings().since(before));
        match waited {
            Ok(true) => break None,
            Ok(false) => {}
            Err(end) => break Some(end.reason()),
        }
        let now = Instant::now();
        wire.clear();
        if now >= next_audio {
            counts.late.record(now - next_audio);
            audio.push(now_s(), &mut wire);
            let message = transcript_message(&uid, seconds, downstream::now_ns());
            frames::push_binary_frame(&message, &mut wire);
            seconds += 1;
            next_audio += second;
            counts.frames.fetch_add(1, Ordering::Relaxed);
            counts.transcripts.fetch_add(1, Ordering::Relaxed);
        }
        if now >= next_process {
            let payload =
                json!({"conversation_id": conversation_id(conversation), "language": "en"});
            frames::push_binary_frame(
                &frames::message(frames::PROCESS_CONVERSATION, payload.to_string().as_bytes()),
                &mut wire,
            );
            conversation += 1;
            frames::push_binary_frame(
                &frames::message(
                    frames::CONVERSATION_ID,
                    conversation_id(conversation).as_bytes(),
                ),
                &mut wire,
            );
            next_process += process_every;
            counts.processes.fetch_add(1, Ordering::Relaxed);
        }
        if now >= next_speaker {
            let payload = json!({
                "person_id": format!("{uid}-person"),
                "conversation_id": conversation_id(conversation),
                "segment_ids": [format!("{uid}-{}", seconds.saturating_sub(1))],
            });
            frames::push_binary_frame(
                &frames::message(frames::SPEAKER_SAMPLE, payload.to_string().as_bytes()),
                &mut wire,
            );
            next_speaker += speaker_every;
            counts.speakers.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(end) = conn.send(&wire).await {
            break Some(end.reason());
        }
    };
    match outcome {
        None => {
            // Closed on command; how the close went is not counted.
            let _ = conn
                .close(CLOSE_WAIT, &mut |_| {
                    answers.fetch_add(1, Ordering::Relaxed);
                })
                .await;
            counts.closed.fetch_add(1, Ordering::Relaxed);
        }
        Some(reason) => {
            counts
                .lost_reasons
                .lock()
                .expect("no panic while counting")
                .add(reason);
            counts.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A client's command: `open FIRST COUNT`, `close COUNT` or `report`.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Open { first: usize, count: usize },
    Close(usize),
    Report,
}

fn parse_command(line: &str) -> Result<Command, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let number = |word: &str| word.parse::<usize>().ok();
    match words[..] {
        ["open", first, count] => match (number(first), number(count)) {
            (Some(first), Some(count)) => Ok(Command::Open { first, count }),
            _ => Err(format!("capacity-client: bad command {line:?}")),
        },
        ["close", count] => number(count)
            .map(Command::Close)
            .ok_or_else(|| format!("capacity-client: bad command {line:?}")),
        ["report"] => Ok(Command::Report),
        _ => Err(format!("capacity-client: bad command {line:?}")),
    }
}

/// One client process: opens, closes and reports on command, until its stdin ends (then it
/// closes every session and exits).
pub async fn run_client(args: ClientArgs) -> Result<(), String> {
    let target = Arc::new(args.target);
    let plan = Arc::new(args.plan);
    let audio = Arc::new(AudioTemplate::new(plan.frame_bytes));
    let counts = Arc::new(Counts::default());
    let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let mut sessions = JoinSet::new();
    // The stop of each session, newest last.
    let mut stops: Vec<oneshot::Sender<()>> = Vec::new();
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    loop {
        let Some(line) = commands
            .next_line()
            .await
            .map_err(|e| format!("capacity-client: stdin: {e}"))?
        else {
            break;
        };
        match parse_command(&line)? {
            Command::Open { first, count } => {
                let attempts_before = attempts(&counts);
                for index in first..first + count {
                    let (stop_to, stop) = oneshot::channel();
                    stops.push(stop_to);
                    let permits = Arc::clone(&permits);
                    let (target, plan, audio, counts) = (
                        Arc::clone(&target),
                        Arc::clone(&plan),
                        Arc::clone(&audio),
                        Arc::clone(&counts),
                    );
                    sessions.spawn(session(target, index, plan, audio, counts, stop, permits));
                }
                // Wait until every attempt of this command has ended (opened or failed).
                while attempts(&counts) < attempts_before + count as u64 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Command::Close(count) => {
                let closed_before = counts.closed.load(Ordering::Relaxed);
                let mut asked = 0;
                while asked < count {
                    let Some(stop) = stops.pop() else { break };
                    // A session already lost has dropped its receiver.
                    if stop.send(()).is_ok() {
                        asked += 1;
                    }
                }
                let deadline = Instant::now() + CLOSE_WAIT + Duration::from_secs(5);
                while counts.closed.load(Ordering::Relaxed) < closed_before + asked as u64
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Command::Report => {}
        }
        let line = Report::of(&counts).to_line() + "\n";
        let written = async {
            out.write_all(line.as_bytes()).await?;
            out.flush().await
        };
        written
            .await
            .map_err(|e| format!("capacity-client: stdout: {e}"))?;
    }
    for stop in stops.drain(..) {
        let _ = stop.send(());
    }
    let _ = tokio::time::timeout(CLOSE_WAIT + Duration::from_secs(5), async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

fn failures_of(counts: &Counts) -> u64 {
    counts
        .failures
        .lock()
        .expect("no panic while counting")
        .total() as u64
}

/// Sessions attempted so far: opened or failed to open.
fn attempts(counts: &Counts) -> u64 {
    counts.opened.load(Ordering::Relaxed) + failures_of(counts)
}

/// The steps of the ramp: `start`, then `factor` times more each, up to and including `max`.
fn ramp(start: usize, factor: f64, max: usize) -> Vec<usize> {
    let mut steps = Vec::new();
    let mut sessions = start.max(1) as f64;
    while (sessions.round() as usize) < max {
        let step = sessions.round() as usize;
        if steps.last() != Some(&step) {
            steps.push(step);
        }
        sessions *= factor.max(1.01);
    }
    steps.push(max);
    steps
}

/// The next step of the bisection between `held` (sessions that held; 0 if none) and `broke`:
/// their middle, `None` when they are within 5 % (or 10 sessions) of each other.
fn bisect(held: usize, broke: usize) -> Option<usize> {
    let gap = broke.saturating_sub(held);
    (gap > 10 && gap as f64 > 0.05 * broke as f64).then(|| held + gap / 2)
}

/// The figures of one step's measured window.
#[derive(Debug, Clone, Default)]
struct Window {
    sessions: usize,
    open: u64,
    seconds: f64,
    server_cpu_pct: f64,
    worker_cpu_pct: Option<f64>,
    cores: f64,
    rss_kib: u64,
    /// RSS growth over the window.
    rss_growth_mb_per_min: f64,
    disk_write_bytes: Option<u64>,
    client_cpu_pct: f64,
    transcript_latency_ms: Value,
    transcript_p99_ms: Option<f64>,
    upload_lag_s: Option<f64>,
    /// The same at the start of the window.
    upload_lag_start_s: Option<f64>,
    backpressure_s: Option<f64>,
    ring_drops: Option<f64>,
    spill_appended_bytes: Option<f64>,
    late_p99_ms: Option<u64>,
    late_max_ms: f64,
    lost: u64,
    failed: u64,
    egress: Value,
    process_201s: u64,
}

impl Window {
    fn cpu_pct_of_cores(&self) -> f64 {
        self.server_cpu_pct / self.cores
    }

    /// The oldest pending upload is past its steady age and still growing over the window: the
    /// uploads fall behind.
    fn upload_lag_growing(&self) -> bool {
        match (self.upload_lag_start_s, self.upload_lag_s) {
            (Some(start), Some(end)) => {
                end > UPLOAD_LAG_STEADY_S && end - start >= UPLOAD_LAG_GROWTH_S
            }
            _ => false,
        }
    }

    /// The bounds this window broke, by name.
    fn broken(&self, args: &Args) -> Vec<&'static str> {
        let mut broken = Vec::new();
        if self.cpu_pct_of_cores() > args.cpu_share * 100.0 {
            broken.push("cpu");
        }
        if self
            .transcript_p99_ms
            .is_some_and(|p99| p99 > args.transcript_p99_ms)
        {
            broken.push("transcript_p99");
        }
        if self.upload_lag_s.is_some_and(|s| s > args.upload_lag_s) || self.upload_lag_growing() {
            broken.push("upload_lag");
        }
        if self.backpressure_s.is_some_and(|s| s > 0.0) {
            broken.push("backpressure");
        }
        if self.rss_growth_mb_per_min > args.rss_growth_mb_per_min {
            broken.push("rss_growing");
        }
        if self.late_max_ms > args.behind_s * 1000.0 {
            broken.push("behind_real_time");
        }
        if self.lost > 0 {
            broken.push("sessions_lost");
        }
        if self.failed > 0 {
            broken.push("sessions_refused");
        }
        if self.open < self.sessions as u64 {
            broken.push("sessions_not_open");
        }
        broken
    }

    fn to_json(&self, broken: &[&str]) -> Value {
        let mb_per_s = |bytes: Option<f64>| bytes.map(|b| round(b / self.seconds / 1e6, 2));
        json!({
            "sessions": self.sessions,
            "open": self.open,
            "window_s": round(self.seconds, 1),
            "cpu_pct_of_cores": round(self.cpu_pct_of_cores(), 1),
            "server_cpu_pct": round(self.server_cpu_pct, 1),
            "worker_threads_cpu_pct": self.worker_cpu_pct.map(|pct| round(pct, 1)),
            "rss_kib": self.rss_kib,
            "rss_growth_mb_per_min": round(self.rss_growth_mb_per_min, 1),
            "disk_write_mb_per_s": mb_per_s(self.disk_write_bytes.map(|b| b as f64)),
            "spill_appended_mb_per_s": mb_per_s(self.spill_appended_bytes),
            "client_cpu_pct": round(self.client_cpu_pct, 1),
            "transcript_latency_ms": self.transcript_latency_ms,
            "upload_lag_s": self.upload_lag_s,
            "upload_lag_start_s": self.upload_lag_start_s,
            "backpressure_session_s": self.backpressure_s,
            "ring_drops": self.ring_drops.map(count_json),
            "late_p99_ms": self.late_p99_ms,
            "late_max_ms": round(self.late_max_ms, 1),
            "lost": self.lost,
            "refused": self.failed,
            "egress_per_s": self.egress,
            "process_201s": self.process_201s,
            "broken": broken,
        })
    }
}

/// `write_bytes` of `/proc/PID/io` (what the process made the disk write).
fn disk_write_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|value| value.trim().parse().ok())
}

/// CPU time of the threads of `server` whose name starts with `pusher-core` (its workers);
/// `None` when it has none.
fn worker_cpu_s(server: &Process) -> Option<f64> {
    let threads = server.threads().ok()?;
    let workers: Vec<f64> = threads
        .iter()
        .filter(|thread| thread.name.starts_with("pusher-core"))
        .map(|thread| thread.cpu_s)
        .collect();
    (!workers.is_empty()).then(|| workers.iter().sum())
}

/// The rate per second of what the simulator's routes received in a window.
fn egress_json(
    before: &[downstream::RouteStats],
    after: &[downstream::RouteStats],
    s: f64,
) -> Value {
    let routes = [
        Route::Webhook,
        Route::Processor,
        Route::Speaker,
        Route::Store,
    ];
    let mut out = serde_json::Map::new();
    for (i, route) in routes.iter().enumerate() {
        let requests = after[i].requests.saturating_sub(before[i].requests) as f64;
        let bytes = after[i].body_bytes.saturating_sub(before[i].body_bytes) as f64;
        out.insert(
            route.name().to_owned(),
            json!({"requests": round(requests / s, 1), "mb": round(bytes / s / 1e6, 2)}),
        );
    }
    Value::Object(out)
}

fn routes_now(downstream: &downstream::Downstream) -> Vec<downstream::RouteStats> {
    [
        Route::Webhook,
        Route::Processor,
        Route::Speaker,
        Route::Store,
    ]
    .iter()
    .map(|&route| downstream.route(route))
    .collect()
}

/// Waits until pusher's oldest pending upload is back to its steady age and nothing waits to be
/// uploaded; `false` at `deadline`.
async fn wait_for_steady_uploads(addr: SocketAddr, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if let Ok(scrape) = prometheus::scrape(addr).await {
            let lag = private_cloud::Lag::of(&scrape);
            if lag.oldest_age_s <= UPLOAD_LAG_STEADY_S && lag.queued == 0.0 {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    false
}

/// How many sessions each client closes so that `fewer` are closed in all: equal shares where
/// the clients hold enough, the rest from those that hold more (a client's holdings are the sum
/// of its shares of every step, so they differ by a session per step).
fn close_counts(held: &[usize], fewer: usize) -> Vec<usize> {
    let clients = held.len();
    let mut counts: Vec<usize> = (0..clients)
        .map(|c| share(fewer, clients, c).min(held[c]))
        .collect();
    let mut left = fewer.saturating_sub(counts.iter().sum());
    for (count, &holds) in counts.iter_mut().zip(held) {
        let more = left.min(holds - *count);
        *count += more;
        left -= more;
    }
    counts
}

/// The state of the ramp: the clients, which sessions they hold.
struct Ramp<'a> {
    args: &'a Args,
    clients: Clients,
    /// Sessions asked of each client (open or lost), in index order: client `c` holds indices
    /// it was given.
    held: Vec<usize>,
    next_index: usize,
    last: Report,
}

impl Ramp<'_> {
    async fn ask(
        &mut self,
        command: impl Fn(usize) -> String,
        wait: Duration,
    ) -> Result<Report, String> {
        self.clients.send(command).await?;
        let reports = self
            .clients
            .answers(wait)
            .await?
            .iter()
            .enumerate()
            .map(|(i, line)| Report::parse(line).map_err(|e| format!("client process {i}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        self.last = Report::sum(&reports);
        Ok(self.last.clone())
    }

    /// Closes every session still open; the next opened are users `capacity-0` on again (the
    /// settings file covers the first `--sessions-max`).
    async fn reset(&mut self) -> Result<(), String> {
        self.go_to(0).await?;
        self.next_index = 0;
        Ok(())
    }

    /// Opens or closes sessions so that `sessions` are asked for in all.
    async fn go_to(&mut self, sessions: usize) -> Result<(), String> {
        let total: usize = self.held.iter().sum();
        let clients = self.held.len();
        if sessions > total {
            let more = sessions - total;
            let mut commands = Vec::with_capacity(clients);
            for c in 0..clients {
                let count = share(more, clients, c);
                commands.push(format!("open {} {count}", self.next_index));
                self.next_index += count;
                self.held[c] += count;
            }
            let rounds = (more / clients / self.args.concurrency.max(1) + 1) as u64;
            let wait = Duration::from_secs(rounds * self.args.target.connect_timeout_s + 60);
            self.ask(|c| commands[c].clone(), wait).await?;
        } else if sessions < total {
            let fewer = total - sessions;
            let counts = close_counts(&self.held, fewer);
            for (held, count) in self.held.iter_mut().zip(&counts) {
                *held -= count;
            }
            self.ask(|c| format!("close {}", counts[c]), ANSWER_WAIT)
                .await?;
        }
        Ok(())
    }
}

pub async fn run(args: Args) -> Result<(), String> {
    let open_files_limit =
        raise_open_files_limit().map_err(|e| format!("open-files limit: {e}"))?;
    check_fits(args.sessions_max, args.clients, open_files_limit)?;
    if args.cores <= 0.0 || args.hold_s == 0 {
        return Err("--cores and --hold-s must be above 0".to_owned());
    }
    let downstream = downstream::start(args.downstream_listen, args.routes.clone()).await?;
    let server = Process::new(args.target.pid);
    let addr = args.target.addr;
    let pusher_metrics = prometheus::scrape_pusher(addr, "upload lag and spill")
        .await
        .is_some();
    let client_args = |index: usize| {
        let mut words = vec!["capacity-client".to_owned()];
        words.extend(target_args(&args.target));
        words.extend(args.mix.to_args());
        words.extend(args.plan.to_args());
        words.extend(["--concurrency".to_owned(), args.concurrency.to_string()]);
        let _ = index;
        words
    };
    let clients = Clients::spawn(args.clients, client_args)?;
    let mut ramp_state = Ramp {
        args: &args,
        clients,
        held: vec![0; args.clients],
        next_index: 0,
        last: Report::default(),
    };
    let steps = ramp(args.start, args.factor, args.sessions_max);
    eprintln!(
        "capacity: {} client processes; ramp {steps:?}; mix {}; bounds: CPU > {} % of {} cores, \
         transcript p99 > {} ms, upload lag > {} s, backpressure, RSS > {} MB/min, > {} s behind, \
         a session lost or refused",
        args.clients,
        args.mix.to_json(),
        args.cpu_share * 100.0,
        args.cores,
        args.transcript_p99_ms,
        args.upload_lag_s,
        args.rss_growth_mb_per_min,
        args.behind_s
    );
    let run_start = Instant::now();
    let server_cpu_start = server.cpu_s().map_err(|e| e.to_string())?;
    let mut windows: Vec<(Window, Vec<&'static str>)> = Vec::new();
    let mut held_best: Option<usize> = None;
    let mut broke_at: Option<(usize, Vec<&'static str>)> = None;
    let measure = async |sessions: usize,
                         ramp: &mut Ramp<'_>|
           -> Result<(Window, Vec<&'static str>), String> {
        // Lost and refused are counted from the start of the step (its opening and settling).
        let (lost_before, failed_before) = (ramp.last.lost, ramp.last.failures_total());
        ramp.go_to(sessions).await?;
        tokio::time::sleep(Duration::from_secs(args.settle_s)).await;
        let report_before = ramp.ask(|_| "report".to_owned(), ANSWER_WAIT).await?;
        let cpu_before = server.cpu_s().map_err(|e| e.to_string())?;
        let workers_before = worker_cpu_s(&server);
        let disk_before = disk_write_bytes(args.target.pid);
        let self_before = Process::current().cpu_s().unwrap_or(0.0);
        let metrics_before = if pusher_metrics {
            prometheus::scrape(addr).await.ok()
        } else {
            None
        };
        let latencies_before = downstream.latencies_ns(Route::Webhook).len();
        let routes_before = routes_now(&downstream);
        let started = Instant::now();
        // The server's RSS every second of the window, for its slope.
        let mut rss = Vec::new();
        let end = started + Duration::from_secs(args.hold_s);
        loop {
            if let Ok(kib) = server.rss_kib() {
                rss.push((Instant::now(), kib));
            }
            let now = Instant::now();
            if now >= end {
                break;
            }
            tokio::time::sleep((end - now).min(Duration::from_secs(1))).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        let cpu_after = server.cpu_s().map_err(|e| e.to_string())?;
        let workers_after = worker_cpu_s(&server);
        let disk_after = disk_write_bytes(args.target.pid);
        let self_after = Process::current().cpu_s().unwrap_or(0.0);
        let metrics_after = if pusher_metrics {
            prometheus::scrape(addr).await.ok()
        } else {
            None
        };
        let latencies = downstream.latencies_ns(Route::Webhook);
        let routes_after = routes_now(&downstream);
        let report = ramp.ask(|_| "report".to_owned(), ANSWER_WAIT).await?;
        let window_latencies = &latencies[latencies_before.min(latencies.len())..];
        let latency = downstream::latency_summary(window_latencies);
        let growth = |name: &str| -> Option<f64> {
            let (before, after): (&Scrape, &Scrape) =
                (metrics_before.as_ref()?, metrics_after.as_ref()?);
            (!after.by_labels(name, &[]).is_empty()).then(|| after.sum(name) - before.sum(name))
        };
        let upload_lag = |metrics: &Option<Scrape>| {
            metrics
                .as_ref()
                .and_then(|m| m.get("pusher_spill_oldest_pending_batch_age_seconds"))
        };
        let upload_lag_s = upload_lag(&metrics_after);
        let client_cpu_s = (report.cpu_s - report_before.cpu_s) + (self_after - self_before);
        let window = Window {
            sessions,
            open: report.open(),
            seconds,
            server_cpu_pct: (cpu_after - cpu_before) / seconds * 100.0,
            worker_cpu_pct: workers_before
                .zip(workers_after)
                .map(|(before, after)| (after - before) / seconds * 100.0),
            cores: args.cores,
            rss_kib: server.rss_kib().map_err(|e| e.to_string())?,
            rss_growth_mb_per_min: rss_slope_mb_per_min(&rss, started, Instant::now())
                .unwrap_or(0.0),
            disk_write_bytes: disk_before
                .zip(disk_after)
                .map(|(b, a)| a.saturating_sub(b)),
            client_cpu_pct: client_cpu_s / seconds * 100.0,
            transcript_p99_ms: latency["p99"].as_f64(),
            transcript_latency_ms: latency,
            upload_lag_s,
            upload_lag_start_s: upload_lag(&metrics_before),
            backpressure_s: growth("pusher_spill_backpressure_seconds_total"),
            ring_drops: growth("pusher_ring_dropped_items_total"),
            spill_appended_bytes: growth("pusher_spill_appended_bytes_total"),
            late_p99_ms: late_quantile_ms(&report.late_counts, 0.99),
            late_max_ms: report.late_max_us as f64 / 1000.0,
            lost: report.lost.saturating_sub(lost_before),
            failed: report.failures_total().saturating_sub(failed_before),
            egress: egress_json(&routes_before, &routes_after, seconds),
            process_201s: report.answers - report_before.answers,
        };
        let broken = window.broken(&args);
        eprintln!(
            "capacity: {sessions} sessions ({} open): server CPU {:.1} % of {} cores, RSS {:.1} MiB ({:+.0} MB/min), \
             transcript p99 {} ms, upload lag {} s, late max {:.0} ms, client CPU {:.0} %{}",
            window.open,
            window.cpu_pct_of_cores(),
            args.cores,
            window.rss_kib as f64 / 1024.0,
            window.rss_growth_mb_per_min,
            window
                .transcript_p99_ms
                .map_or("n/a".to_owned(), |v| format!("{v:.2}")),
            window
                .upload_lag_s
                .map_or("n/a".to_owned(), |v| format!("{v:.0}")),
            window.late_max_ms,
            window.client_cpu_pct,
            if broken.is_empty() {
                String::new()
            } else {
                format!("; BROKEN: {}", broken.join(", "))
            }
        );
        Ok((window, broken))
    };
    for &step in &steps {
        let (window, broken) = measure(step, &mut ramp_state).await?;
        let held = broken.is_empty();
        windows.push((window, broken.clone()));
        if held {
            held_best = Some(step);
        } else {
            broke_at = Some((step, broken));
            break;
        }
    }
    if let Some((mut broke, _)) = broke_at.clone() {
        for _ in 0..args.refine {
            let Some(next) = bisect(held_best.unwrap_or(0), broke) else {
                break;
            };
            // The step that broke may have left the server behind (a backlog, sessions lost).
            // pusher: the sessions are closed down to the step's (the rest keep their spread
            // batch phases, so their uploads are measured in steady state) and the step waits
            // until the upload backlog is gone; a server without /metrics starts from no
            // session after --recover-s.
            let recovering = Instant::now();
            let recovered = if pusher_metrics {
                ramp_state.go_to(next).await?;
                tokio::time::sleep(Duration::from_secs(args.recover_s)).await;
                let deadline = recovering + Duration::from_secs(args.recover_max_s);
                if wait_for_steady_uploads(addr, deadline).await {
                    "the upload backlog gone"
                } else {
                    "the upload backlog NOT gone"
                }
            } else {
                ramp_state.reset().await?;
                tokio::time::sleep(Duration::from_secs(args.recover_s)).await;
                "every session closed"
            };
            eprintln!(
                "capacity: the server recovered for {:.0} s ({recovered})",
                recovering.elapsed().as_secs_f64()
            );
            let (window, broken) = measure(next, &mut ramp_state).await?;
            let held = broken.is_empty();
            windows.push((window, broken.clone()));
            if held {
                held_best = Some(next);
            } else {
                broke = next;
                broke_at = Some((next, broken));
            }
        }
    }
    let final_report = ramp_state.last.clone();
    ramp_state.clients.shutdown().await?;
    let run_s = run_start.elapsed().as_secs_f64();
    let server_cpu_s = server.cpu_s().map_err(|e| e.to_string())? - server_cpu_start;

    let sustained = held_best.unwrap_or(0);
    let per_core = sustained as f64 / args.cores;
    let at_capacity = windows
        .iter()
        .rfind(|(w, broken)| broken.is_empty() && w.sessions == sustained)
        .map(|(w, broken)| w.to_json(broken));
    let stopped_by = match &broke_at {
        Some((_, broken)) => broken.join(", "),
        None => "the ramp's end (--sessions-max), no bound broken".to_owned(),
    };
    let steps_json: Vec<Value> = windows.iter().map(|(w, b)| w.to_json(b)).collect();
    let human = format!(
        "capacity: {sustained} sustained real-time sessions on {} cores = {per_core:.0} per core \
         (goal >= {}); stopped by: {stopped_by}{}\n  mix {} of {} sessions; {} steps in {:.0} s; \
         the server and the {} client processes share this machine's CPUs",
        args.cores,
        args.goal_sessions_per_core,
        broke_at
            .as_ref()
            .map_or(String::new(), |(n, _)| format!(" at {n} sessions")),
        args.mix.to_json(),
        sustained,
        windows.len(),
        run_s,
        args.clients,
    );
    print_result(
        "capacity",
        &args.target,
        json!({
            "sessions_per_core": round(per_core, 1),
            "sessions": sustained,
            "cores": args.cores,
            "stopped_by": stopped_by,
            "stopped_at_sessions": broke_at.as_ref().map(|(n, _)| n),
            "at_capacity": at_capacity,
            "mix": args.mix.to_json(),
            "mix_counts": args.mix.counts(sustained),
            "load": {
                "frame_pcm_bytes": args.plan.frame_bytes,
                "frames_per_s": 1,
                "transcripts_per_s": 1,
                "process_interval_s": args.plan.process_interval_s,
                "speaker_interval_s": args.plan.speaker_interval_s,
                "processor_delay_ms": args.routes.processor_delay_ms,
                "webhook_delay_ms": args.routes.webhook_delay_ms,
                "store_delay_ms": args.routes.store_delay_ms,
            },
            "bounds": {
                "cpu_pct_of_cores_max": args.cpu_share * 100.0,
                "transcript_p99_ms_max": args.transcript_p99_ms,
                "upload_lag_s_max": args.upload_lag_s,
                "behind_s_max": args.behind_s,
                "rss_growth_mb_per_min_max": args.rss_growth_mb_per_min,
            },
            "ramp": {"start": args.start, "factor": args.factor,
                     "sessions_max": args.sessions_max, "refine": args.refine,
                     "settle_s": args.settle_s, "hold_s": args.hold_s,
                     "recover_s": args.recover_s, "recover_max_s": args.recover_max_s},
            "clients": args.clients,
            "steps": steps_json,
            "sent": {
                "frames": final_report.frames, "transcripts": final_report.transcripts,
                "processes": final_report.processes, "process_201s": final_report.answers,
                "speaker_samples": final_report.speakers,
            },
            "keepalive": final_report.pings.to_json(),
            "lost_reasons": final_report.lost_reasons,
            "refused_reasons": final_report.failures,
            "goal_sessions_per_core": args.goal_sessions_per_core,
            "run_s": round(run_s, 1),
            "server_cpu_s": round(server_cpu_s, 1),
        }),
        &human,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix() -> Mix {
        Mix {
            private_cloud_share: 0.25,
            transcript_webhook_share: 0.10,
            audio_app_share: 0.05,
        }
    }

    #[test]
    fn any_first_sessions_have_the_shares_of_the_mix() {
        let mix = mix();
        for n in [100, 1000, 19_000] {
            let counts = mix.counts(n);
            let near = |key: &str, share: f64| {
                let count = counts[key].as_u64().unwrap() as f64;
                assert!(
                    (count - share * n as f64).abs() <= 2.0,
                    "{key}: {count} of {n}"
                );
            };
            near("private_cloud", 0.25);
            near("transcript_webhook", 0.10);
            near("audio_app", 0.05);
        }
        let none = Mix {
            private_cloud_share: 0.0,
            transcript_webhook_share: 0.0,
            audio_app_share: 0.0,
        };
        assert_eq!(none.features(7), Features::default());
    }

    #[test]
    fn the_settings_file_gives_each_user_its_features() {
        let mix = mix();
        let toml = settings_toml(&mix, 40, "127.0.0.1:9".parse().unwrap());
        assert!(toml.contains("[default]\nprivate_cloud_sync_enabled = false\n"));
        for index in 0..40 {
            let f = mix.features(index);
            let section = format!("[users.\"capacity-{index}\"]\n");
            assert_eq!(toml.contains(&section), f != Features::default(), "{index}");
            if f.audio_app {
                assert!(toml.contains(&format!("[[users.\"capacity-{index}\".apps]]")));
            }
        }
        assert!(
            toml.contains(
                "realtime_transcript_webhook = \"http://127.0.0.1:9/webhook/transcript\""
            )
        );
        // pusher reads it so.
        let settings = pusher::settings::SettingsFile::parse(&toml).unwrap();
        for index in 0..40 {
            let f = mix.features(index);
            let user = settings.lookup(&format!("capacity-{index}"));
            assert_eq!(user.private_cloud_sync_enabled, f.private_cloud, "{index}");
            assert_eq!(
                user.realtime_transcript_webhook.is_some(),
                f.transcript_webhook
            );
            assert_eq!(user.has_audio_app(), f.audio_app);
        }
    }

    #[test]
    fn the_ramp_grows_by_the_factor_to_the_maximum_and_bisects() {
        assert_eq!(ramp(100, 2.0, 1000), [100, 200, 400, 800, 1000]);
        assert_eq!(ramp(100, 2.0, 800), [100, 200, 400, 800]);
        assert_eq!(ramp(500, 1.0, 503), [500, 503]);
        assert_eq!(bisect(6400, 12_800), Some(9600));
        assert_eq!(bisect(0, 100), Some(50));
        assert_eq!(bisect(9000, 10_000), Some(9500));
        assert_eq!(bisect(9600, 10_000), None, "within 5 %");
        assert_eq!(bisect(0, 8), None);
    }

    #[test]
    fn closing_takes_every_session_a_client_holds() {
        // Steps of 100 and 200 over 3 clients: the first holds one more per step.
        let held = [34 + 67, 33 + 67, 33 + 66];
        assert_eq!(close_counts(&held, 300), held, "all of them");
        assert_eq!(close_counts(&held, 150), [50, 50, 50]);
        assert_eq!(
            close_counts(&[10, 0, 5], 12),
            [8, 0, 4],
            "the rest from the first"
        );
        assert_eq!(close_counts(&[1, 1, 1], 5), [1, 1, 1], "no more than held");
    }

    #[test]
    fn lateness_quantiles_are_bucket_bounds() {
        let late = Lateness::default();
        for ms in [0, 0, 0, 3, 3, 40, 700] {
            late.record(Duration::from_millis(ms));
        }
        let (counts, max_us) = late.take();
        assert_eq!(max_us, 700_000);
        assert_eq!(counts.iter().sum::<u64>(), 7);
        assert_eq!(late_quantile_ms(&counts, 0.5), Some(5));
        assert_eq!(late_quantile_ms(&counts, 0.99), Some(1000));
        assert_eq!(late_quantile_ms(&[0; 14], 0.99), None);
        assert_eq!(late.take().1, 0, "taken and reset");
    }

    #[test]
    fn a_report_survives_its_line_and_reports_add_up() {
        let report = Report {
            opened: 10,
            lost: 1,
            closed: 2,
            frames: 300,
            transcripts: 300,
            processes: 3,
            answers: 2,
            speakers: 1,
            pings: Pings {
                answered: 4,
                sent: 5,
                pongs: 5,
            },
            late_counts: vec![1; 14],
            late_max_us: 1234,
            failures: BTreeMap::from([("connect: refused".to_owned(), 2)]),
            lost_reasons: BTreeMap::from([("closed by the server: 1001".to_owned(), 1)]),
            cpu_s: 1.5,
        };
        let parsed = Report::parse(&report.to_line()).unwrap();
        assert_eq!(parsed, report);
        assert_eq!(parsed.open(), 7);
        let sum = Report::sum(&[report.clone(), report]);
        assert_eq!(
            (sum.opened, sum.failures_total(), sum.late_counts[0]),
            (20, 4, 2)
        );
        assert_eq!(sum.pings.sent, 10);
        assert!(Report::parse("{}").is_err());
    }

    #[test]
    fn commands_are_open_close_and_report() {
        assert_eq!(
            parse_command("open 100 50"),
            Ok(Command::Open {
                first: 100,
                count: 50
            })
        );
        assert_eq!(parse_command("close 7"), Ok(Command::Close(7)));
        assert_eq!(parse_command("report"), Ok(Command::Report));
        for bad in ["open 1", "close x", "", "stop"] {
            assert!(parse_command(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_audio_template_is_a_101_with_the_timestamp_patched() {
        let template = AudioTemplate::new(32_000);
        let mut wire = vec![0xAA];
        template.push(1.7e9 + 0.25, &mut wire);
        let events = frames::decode_client_frames(&wire[1..]);
        assert_eq!(events.len(), 1);
        assert!(matches!(
            events[0].0,
            pusher::websocket::Event::Message { .. }
        ));
        let message = &events[0].1[..];
        assert_eq!(message, &frames::audio_message(1.7e9 + 0.25, 32_000)[..]);
    }

    #[test]
    fn a_window_names_the_bounds_it_broke() {
        let args = <crate::Cli as clap::Parser>::try_parse_from([
            "pusher-bench",
            "capacity",
            "--target",
            "127.0.0.1:1",
            "--pid",
            "1",
            "--cores",
            "2",
        ])
        .unwrap();
        let crate::Scenario::Capacity(args) = args.scenario else {
            panic!("capacity")
        };
        let ok = Window {
            sessions: 1000,
            open: 1000,
            rss_growth_mb_per_min: 5.0,
            cores: 2.0,
            server_cpu_pct: 100.0,
            transcript_p99_ms: Some(2.0),
            upload_lag_s: Some(61.0),
            upload_lag_start_s: Some(60.0),
            seconds: 20.0,
            backpressure_s: Some(0.0),
            late_max_ms: 150.0,
            ..Window::default()
        };
        assert!(ok.broken(&args).is_empty());
        assert_eq!(ok.cpu_pct_of_cores(), 50.0);
        let bad = Window {
            server_cpu_pct: 141.0,
            transcript_p99_ms: Some(12.0),
            upload_lag_s: Some(130.0),
            backpressure_s: Some(3.0),
            rss_growth_mb_per_min: 61.0,
            late_max_ms: 2500.0,
            lost: 1,
            failed: 2,
            open: 997,
            ..ok.clone()
        };
        assert_eq!(
            bad.broken(&args),
            [
                "cpu",
                "transcript_p99",
                "upload_lag",
                "backpressure",
                "rss_growing",
                "behind_real_time",
                "sessions_lost",
                "sessions_refused",
                "sessions_not_open"
            ]
        );
        // The oldest upload past its steady age and growing with the window: falling behind.
        let growing = Window {
            upload_lag_start_s: Some(62.0),
            upload_lag_s: Some(68.0),
            ..ok.clone()
        };
        assert_eq!(growing.broken(&args), ["upload_lag"]);
        let behind_but_steady = Window {
            upload_lag_start_s: Some(70.0),
            upload_lag_s: Some(71.0),
            ..ok.clone()
        };
        assert!(
            behind_but_steady.broken(&args).is_empty(),
            "a steady backlog"
        );
        let steady = Window {
            upload_lag_start_s: Some(60.0),
            upload_lag_s: Some(64.0),
            ..ok.clone()
        };
        assert!(steady.broken(&args).is_empty(), "below the steady age");
        // Without pusher's /metrics or webhook samples those bounds are not judged.
        let peer = Window {
            transcript_p99_ms: None,
            upload_lag_s: None,
            upload_lag_start_s: None,
            backpressure_s: None,
            ..ok
        };
        assert!(peer.broken(&args).is_empty());
    }
}
