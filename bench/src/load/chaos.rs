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
//! At the end of the load every session sends a Close and reads to the end of the stream
//! (counting 201s until then). The tool keeps sampling for `--cooldown-s` (15), reads
//! `/debug/memory`, waits for the spill log to drain (at most `--drain-timeout-s`) and compares
//! what the simulator received with what was sent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::task::JoinSet;

use super::answers::{Answers, read_201s};
use super::private_cloud::{Lag, reconcile, stored_objects, wait_for_drain};
use super::stream::{self, Plan};
use super::{
    BYTES_PER_MB, Failures, RssSeries, Schedule, Session, Target, count_json, counts_json,
    open_sessions, print_result_with_rss, round, rss_slope_mb_per_min, series_json, spread,
    write_json,
};
use crate::downstream::{self, Route, RouteArgs};
use crate::frames;
use crate::http;
use crate::proc_stats::Process;
use crate::prometheus::{self, Scrape};
use crate::sampler::Sampler;

const PROCESS_PREFIX: &str = "chaos-proc";
const AUDIO_PREFIX: &str = "chaos-audio";
/// How long a session reads after its Close for the end of the stream.
const CLOSE_WAIT: Duration = Duration::from_secs(60);
/// Period of the progress lines on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
const KIB_PER_MIB: f64 = 1024.0;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    routes: RouteArgs,
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
    /// Also write every reading to this file (JSON: `rss` as [s, KiB], `gauges` as [s, 104 calls
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

/// What one 104 session did.
#[derive(Debug, Default)]
struct ProcessOutcome {
    sent: u64,
    /// Ids sent that got no 201.
    unanswered: u64,
    answers: Answers,
    late_max: Duration,
    /// Why the session stopped early or did not end cleanly.
    error: Option<String>,
}

/// One 104 session: sends its 104s on schedule while reading 201s; at the deadline sends a
/// Close and reads on until the server ends the stream.
async fn process_client(session: Session, schedule: Schedule) -> ProcessOutcome {
    let uid = format!("{PROCESS_PREFIX}-{}", session.index);
    let read_until = schedule.deadline() + CLOSE_WAIT;
    let (reader, writer) = session.stream.into_split();
    let ((sent, late_max, write_error), (answered, mut answers, read_error)) = tokio::join!(
        send_104s(writer, &uid, schedule),
        read_201s(reader, &uid, read_until)
    );
    let known = answered.keys().filter(|&&n| n < sent).count() as u64;
    answers.unknown += answered.len() as u64 - known;
    ProcessOutcome {
        sent,
        unanswered: sent - known,
        answers,
        late_max,
        error: write_error.or(read_error),
    }
}

/// Sends a 104 per tick (conversation `<uid>-<n>`), then a Close: the count sent, the largest
/// lateness and the write error if any.
async fn send_104s(
    mut writer: OwnedWriteHalf,
    uid: &str,
    mut schedule: Schedule,
) -> (u64, Duration, Option<String>) {
    let mut sent = 0;
    while schedule.tick().await {
        let payload = json!({"conversation_id": format!("{uid}-{sent}"), "language": "en"});
        let message = frames::message(frames::PROCESS_CONVERSATION, payload.to_string().as_bytes());
        if let Err(e) = writer.write_all(&frames::binary_frame(&message)).await {
            return (sent, schedule.late_max(), Some(format!("104 write: {e}")));
        }
        sent += 1;
    }
    tokio::time::sleep_until(schedule.deadline().into()).await;
    let closed = writer.write_all(&frames::close_frame()).await;
    (
        sent,
        schedule.late_max(),
        closed.err().map(|e| format!("close write: {e}")),
    )
}

pub async fn run(args: Args) -> Result<(), String> {
    if args.seconds == 0 || args.process_interval_ms == 0 || args.audio_interval_ms == 0 {
        return Err("--seconds and the intervals must be at least 1".to_owned());
    }
    let downstream = downstream::start(args.downstream_listen, args.routes.clone()).await?;
    let server = Process::new(args.target.pid);
    let addr = args.target.addr;
    let before = prometheus::scrape(addr).await?;
    if before.get("pusher_process_calls_created_total").is_none() {
        eprintln!("chaos: warning: no pusher_process_* metrics: a server without egress?");
    }
    let budget_bytes = before.get("pusher_memory_budget_bytes");
    let rss_start_kib = server.rss_kib().map_err(|e| e.to_string())?;
    let rss = Sampler::start(
        Duration::from_millis(args.rss_every_ms.max(10)),
        move || async move { server.rss_kib().ok() },
    );
    let t0 = Instant::now();
    let progress_every = (PROGRESS_EVERY.as_millis() as u64 / args.metrics_every_ms.max(1)).max(1);
    let mut readings = 0u64;
    let gauges = Sampler::start(
        Duration::from_millis(args.metrics_every_ms.max(10)),
        move || {
            let reading = readings;
            readings += 1;
            async move {
                let gauges = Gauges::of(&prometheus::scrape(addr).await.ok()?);
                if reading.is_multiple_of(progress_every) {
                    print_progress(t0, &server, &gauges);
                }
                Some(gauges)
            }
        },
    );

    let concurrency = args.process_sessions + args.audio_sessions;
    let processes = open_sessions(
        &args.target,
        PROCESS_PREFIX,
        args.process_sessions,
        concurrency,
    )
    .await;
    let audio = open_sessions(&args.target, AUDIO_PREFIX, args.audio_sessions, concurrency).await;
    let mut failures = processes.failures;
    failures.merge(audio.failures);
    let (process_open, audio_open) = (processes.sessions.len(), audio.sessions.len());
    if process_open + audio_open == 0 {
        rss.finish().await;
        gauges.finish().await;
        return Err(format!(
            "no session could be opened: {}",
            failures.to_json()
        ));
    }
    eprintln!(
        "chaos: {process_open} sessions sending a 104 every {} ms, {audio_open} sending {} B of \
         audio every {} ms, for {}s ({} failed to open)",
        args.process_interval_ms,
        args.audio_frame_bytes,
        args.audio_interval_ms,
        args.seconds,
        failures.total()
    );

    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let process_interval = Duration::from_millis(args.process_interval_ms);
    let mut process_clients = JoinSet::new();
    for session in processes.sessions {
        let first = start + spread(process_interval, session.index, args.process_sessions);
        let schedule = Schedule::new(first, process_interval, deadline);
        process_clients.spawn(process_client(session, schedule));
    }
    let plan = Plan {
        uid_prefix: AUDIO_PREFIX,
        sessions: args.audio_sessions,
        frame_bytes: args.audio_frame_bytes,
        interval: Duration::from_millis(args.audio_interval_ms),
        switch_every_frames: 0,
    };
    let mut audio_clients = JoinSet::new();
    for session in audio.sessions {
        audio_clients.spawn(stream::stream(session, plan, start, deadline));
    }

    let mut stream_errors = Failures::default();
    let mut process = ProcessOutcome::default();
    while let Some(joined) = process_clients.join_next().await {
        let outcome = joined.map_err(|e| format!("104 task: {e}"))?;
        process.sent += outcome.sent;
        process.unanswered += outcome.unanswered;
        process.answers.add(outcome.answers);
        process.late_max = process.late_max.max(outcome.late_max);
        if let Some(error) = outcome.error {
            stream_errors.add(error);
        }
    }
    let mut audio_sent_by_uid = BTreeMap::new();
    let (mut audio_frames, mut audio_late_max) = (0, Duration::ZERO);
    while let Some(joined) = audio_clients.join_next().await {
        let sent = joined.map_err(|e| format!("audio task: {e}"))?;
        audio_sent_by_uid.insert(format!("{AUDIO_PREFIX}-{}", sent.index), sent.pcm_bytes);
        audio_frames += sent.frames;
        audio_late_max = audio_late_max.max(sent.late_max);
        if let Some(error) = sent.error {
            stream_errors.add(error);
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
    let debug_memory = http::get_ok_text(addr, "/debug/memory", Duration::from_secs(5))
        .await
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok());
    let rss_samples = rss.finish().await;
    let gauge_samples = gauges.finish().await;
    if let Some(path) = &args.series {
        let series = json!({
            "rss": series_json(start, &rss_samples, |&kib| json!(kib)),
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
    let after_drain =
        wait_for_drain(addr, drain_from + Duration::from_secs(args.drain_timeout_s)).await;
    let drain_s = drain_from.elapsed().as_secs_f64();
    let rss_after_drain_kib = server.rss_kib().map_err(|e| e.to_string())?;
    let after = prometheus::scrape(addr).await?;
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
    let answers = &process.answers;

    let rss_flat = slope_load.map(|s| s < args.goal_rss_slope_mb_per_min);
    let all_answered = answers.repeated == 0
        && answers.unknown == 0
        && answers.malformed == 0
        && process.unanswered as f64 == cancelled + replies_dropped
        && process.sent == answers.total() + process.unanswered;
    let no_loss = after_drain.is_some()
        && stored.bytes_missing == 0
        && stored.uids_short == 0
        && stream_errors.total() == 0
        && failures.total() == 0;

    let mib = |kib: u64| kib as f64 / KIB_PER_MIB;
    let slope_text = |slope: Option<f64>| slope.map_or("n/a".to_owned(), |s| format!("{s:.2}"));
    let human = format!(
        "chaos: {process_open} 104 sessions, {audio_open} audio sessions ({} failed to open, {} \
         stream errors); {}s of load, {}s of cooldown\n\
         \x20 server RSS {:.1} MiB at the start, {:.1} MiB peak, {:.1} MiB after the cooldown, \
         {:.1} MiB after the drain; slope after {}s: {} MB/min over the load (goal < {}), {} MB/min \
         with the cooldown, {} MB/min over the second half of the load; budget {}\n\
         \x20 104: {} sent; 201: {} success, {} busy, {} other errors {}; {} unanswered: {} cancelled, {} \
         replies dropped; the processor saw {} calls, {} abandoned\n\
         \x20 ring drops {}; app audio: {:.1} MB sent, {:.1} MB delivered to the webhook in {} \
         requests ({} abandoned), {} items discarded at session end\n\
         \x20 private cloud: {} in {drain_s:.1}s after the cooldown; {}\n\
         \x20 goals: RSS flat {}, peak under budget {}, every 104 answered or cancelled {}, \
         no audio lost {}",
        failures.total(),
        stream_errors.total(),
        args.seconds,
        args.cooldown_s,
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
        if after_drain.is_some() {
            "drained"
        } else {
            "NOT drained"
        },
        stored.summary(),
        rss_flat.map_or("n/a".to_owned(), |met| met.to_string()),
        peak_under_budget.map_or("n/a".to_owned(), |met| met.to_string()),
        all_answered,
        no_loss,
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
        budget_bytes,
    };
    print_result_with_rss(
        "chaos",
        &args.target,
        json!({
            "process_sessions": process_open,
            "audio_sessions": audio_open,
            "failures": failures.total(),
            "failure_reasons": failures.to_json(),
            "stream_errors": stream_errors.total(),
            "stream_error_reasons": stream_errors.to_json(),
            "seconds": args.seconds,
            "cooldown_s": args.cooldown_s,
            "warmup_s": args.warmup_s,
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
            "in_flight_max": {
                "process_calls": gauge_max(|g| g.process_in_flight),
                "egress": gauge_max(|g| g.egress_in_flight),
                "audio_accumulator_bytes": gauge_max(|g| g.accumulator_bytes),
                "spill_pending_bytes": gauge_max(|g| g.lag.pending_bytes),
                "uploads": gauge_max(|g| g.lag.in_flight),
            },
            "debug_memory_after_cooldown": debug_memory,
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
                "cancelled": count_json(cancelled),
                "replies_dropped": count_json(replies_dropped),
                "created": count_json(grown("pusher_process_calls_created_total")),
                "done": counts_json(&done),
                "busy_total": count_json(grown("pusher_process_busy_total")),
                "duplicates_total": count_json(grown("pusher_process_duplicates_total")),
                "processor": route_json(processor),
            },
            "ring_drops": counts_json(&ring_drops),
            "egress_requests": counts_json(&egress),
            "egress_dropped_items": counts_json(&egress_dropped),
            "audio": {
                "frames_sent": audio_frames,
                "pcm_bytes_sent": audio_pcm_sent,
                "webhook": route_json(webhook),
                "items_discarded_at_session_end": count_json(discarded),
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
                "all_104_answered_or_cancelled": all_answered,
                "no_loss": no_loss,
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
    use super::*;

    /// A fake server: answers two of three 104s, then closes after the client's Close.
    #[tokio::test]
    async fn a_process_client_counts_answers_and_unanswered_ids() {
        use crate::load::answers::fake_server::{answer_frames, read_until_close};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
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
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let session = Session {
            index: 0,
            stream,
            opened_at: Instant::now(),
        };
        let now = Instant::now();
        let schedule = Schedule::new(
            now,
            Duration::from_millis(20),
            now + Duration::from_millis(50),
        );
        let outcome = process_client(session, schedule).await;
        server.await.unwrap();
        assert_eq!(outcome.sent, 3);
        assert_eq!(outcome.unanswered, 1);
        assert_eq!(outcome.error, None);
        let answers = outcome.answers;
        assert_eq!((answers.success, answers.busy, answers.repeated), (1, 1, 1));
        assert_eq!((answers.unknown, answers.malformed), (0, 0));
    }
}
