//! `latency`: how long a transcript takes from the client to a backend hook.
//!
//! Opens `--sessions` (1,000, `uid=latency-<i>`, a 103 each); each sends one 102 every
//! `--interval-ms` (1,000), session `i` offset by `i/N` of an interval. A 102 carries one segment
//! shaped as the transcription service sends them, plus `sent_ns`: the wall-clock time just
//! before the write, ns since the epoch. pusher posts every 102 to each global transcript hook;
//! the server must run with `--transcript-hook http://ADDR/hook`, where ADDR is
//! `--downstream-listen`, the downstream simulator this process runs, which notes arrival −
//! `sent_ns` per segment. After `--seconds` every session closes; the tool waits until every
//! segment has arrived, at most `--settle-s`.
//!
//! Results: segments sent and received, latency percentiles (p50, p90, p99, p99.9, max) in ms,
//! the transcript ring's drops and the hook deliveries by result from `/metrics`, the server's
//! CPU time and RSS.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use super::{
    Failures, Schedule, Session, Target, close_session, count_json, counts_json, open_sessions,
    print_result, round, spread,
};
use crate::downstream::{self, Route, RouteArgs};
use crate::frames;
use crate::proc_stats::Process;
use crate::prometheus;

const UID_PREFIX: &str = "latency";
/// How long a session waits for the server's Close after sending its own.
const CLOSE_WAIT: Duration = Duration::from_secs(30);
/// Period of the checks for outstanding segments after the close.
const SETTLE_POLL: Duration = Duration::from_millis(100);
/// Text of every segment: one second of speech, as the transcription service sends it.
const SEGMENT_TEXT: &str = "so I was thinking we could meet tomorrow morning to go over the plan";

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    routes: RouteArgs,
    /// Address of the downstream simulator run in this process (the server's
    /// --transcript-hook is http://ADDR/hook)
    #[arg(long, default_value = "127.0.0.1:18766", value_name = "ADDR:PORT")]
    downstream_listen: SocketAddr,
    /// Sessions sending transcripts
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Seconds of sending
    #[arg(long, default_value_t = 60, value_name = "S")]
    seconds: u64,
    /// Time between one session's 102s
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    interval_ms: u64,
    /// Sessions being opened at once
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Longest wait after the close for the segments still on their way
    #[arg(long, default_value_t = 15, value_name = "S")]
    settle_s: u64,
}

/// What one session sent.
#[derive(Debug, Default)]
struct Sent {
    segments: u64,
    late_max: Duration,
    error: Option<String>,
}

/// The 102 of segment `n` of `uid`, sent at `sent_ns`.
fn transcript_message(uid: &str, n: u64, sent_ns: u64) -> Vec<u8> {
    let start = n as f64;
    let payload = json!({
        "segments": [{
            "id": format!("{uid}-{n}"),
            "text": SEGMENT_TEXT,
            "speaker": "SPEAKER_00",
            "speaker_id": 0,
            "is_user": false,
            "person_id": null,
            "start": start,
            "end": start + 1.0,
            "sent_ns": sent_ns,
        }],
        "memory_id": null,
    });
    frames::message(frames::TRANSCRIPT, payload.to_string().as_bytes())
}

/// Sends one 102 per tick, then at the deadline closes.
async fn transcribe(mut session: Session, mut schedule: Schedule) -> Sent {
    let uid = format!("{UID_PREFIX}-{}", session.index);
    let mut sent = Sent::default();
    while schedule.tick().await {
        let message = transcript_message(&uid, sent.segments, downstream::now_ns());
        if let Err(e) = session
            .stream
            .write_all(&frames::binary_frame(&message))
            .await
        {
            sent.error = Some(format!("write: {e}"));
            break;
        }
        sent.segments += 1;
    }
    sent.late_max = schedule.late_max();
    if sent.error.is_none() {
        tokio::time::sleep_until(schedule.deadline().into()).await;
        sent.error = close_session(&mut session.stream, CLOSE_WAIT).await.err();
    }
    sent
}

pub async fn run(args: Args) -> Result<(), String> {
    if args.sessions == 0 || args.seconds == 0 || args.interval_ms == 0 {
        return Err("--sessions, --seconds and --interval-ms must be at least 1".to_owned());
    }
    let downstream = downstream::start(args.downstream_listen, args.routes.clone()).await?;
    let server = Process::new(args.target.pid);
    let addr = args.target.addr;
    let before = prometheus::scrape(addr).await?;
    let rss_before_kib = server.rss_kib().map_err(|e| e.to_string())?;
    eprintln!(
        "latency: opening {} sessions to {addr} ({} at a time)",
        args.sessions, args.concurrency
    );
    let opened = open_sessions(&args.target, UID_PREFIX, args.sessions, args.concurrency).await;
    let failures = opened.failures;
    let open = opened.sessions.len();
    if open == 0 {
        return Err(format!(
            "no session could be opened: {}",
            failures.to_json()
        ));
    }
    eprintln!(
        "latency: {open} open, {} failed; each sends a 102 every {} ms for {}s",
        failures.total(),
        args.interval_ms,
        args.seconds
    );
    let cpu_before_s = server.cpu_s().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let interval = Duration::from_millis(args.interval_ms);
    let mut clients = JoinSet::new();
    for session in opened.sessions {
        let first = start + spread(interval, session.index, args.sessions);
        clients.spawn(transcribe(
            session,
            Schedule::new(first, interval, deadline),
        ));
    }
    let (mut sent, mut late_max) = (0u64, Duration::ZERO);
    let mut stream_errors = Failures::default();
    while let Some(joined) = clients.join_next().await {
        let session = joined.map_err(|e| format!("session task: {e}"))?;
        sent += session.segments;
        late_max = late_max.max(session.late_max);
        if let Some(error) = session.error {
            stream_errors.add(error);
        }
    }
    let closed = Instant::now();
    let settle_deadline = closed + Duration::from_secs(args.settle_s);
    while downstream.route(Route::Hook).segments < sent && Instant::now() < settle_deadline {
        tokio::time::sleep(SETTLE_POLL).await;
    }
    let settle_s = closed.elapsed().as_secs_f64();
    let cpu_s = server.cpu_s().map_err(|e| e.to_string())? - cpu_before_s;
    let rss_after_kib = server.rss_kib().map_err(|e| e.to_string())?;
    let after = prometheus::scrape(addr).await?;

    let hook = downstream.route(Route::Hook);
    let latency = downstream::latency_summary(&downstream.latencies_ns(Route::Hook));
    let ring_drops =
        after.growth_by_labels(&before, "pusher_ring_dropped_items_total", &["stream"]);
    let deliveries = after.growth_by_labels(
        &before,
        "pusher_egress_requests_total",
        &["target", "result"],
    );
    let dropped = after.growth_by_labels(&before, "pusher_egress_dropped_items_total", &["target"]);
    let discarded = after.value("pusher_egress_items_discarded_at_session_end_total")
        - before.value("pusher_egress_items_discarded_at_session_end_total");
    let missing = sent as i64 - hook.segments as i64;
    let ms = |field: &str| {
        latency[field]
            .as_f64()
            .map_or("n/a".to_owned(), |v| format!("{v:.1}"))
    };
    let human = format!(
        "latency: {open}/{} sessions ({} failed to open, {} stream errors), a 102 every {} ms for {}s; \
         client at most {} ms late\n\
         \x20 segments: {sent} sent, {} received at the hook ({missing} missing) in {} requests, \
         {} failed, {} bad; settled {settle_s:.1}s after the close\n\
         \x20 latency (hook arrival − send): p50 {} ms, p90 {} ms, p99 {} ms, p99.9 {} ms, max {} ms\n\
         \x20 ring drops {}; {discarded} items discarded at session end; deliveries {}; server CPU {cpu_s:.1}s, RSS {:.1} → {:.1} MiB",
        args.sessions,
        failures.total(),
        stream_errors.total(),
        args.interval_ms,
        args.seconds,
        late_max.as_millis(),
        hook.segments,
        hook.requests,
        hook.failed,
        hook.bad_requests,
        ms("p50"),
        ms("p90"),
        ms("p99"),
        ms("p999"),
        ms("max"),
        counts_json(&ring_drops),
        counts_json(&deliveries),
        rss_before_kib as f64 / 1024.0,
        rss_after_kib as f64 / 1024.0,
    );
    print_result(
        "latency",
        &args.target,
        json!({
            "sessions_requested": args.sessions,
            "sessions": open,
            "failures": failures.total(),
            "failure_reasons": failures.to_json(),
            "stream_errors": stream_errors.total(),
            "stream_error_reasons": stream_errors.to_json(),
            "seconds": args.seconds,
            "interval_ms": args.interval_ms,
            "hook_delay_ms": args.routes.hook_delay_ms,
            "client_late_max_ms": late_max.as_millis() as u64,
            "segments_sent": sent,
            "segments_received": hook.segments,
            "segments_missing": missing,
            "hook_requests": hook.requests,
            "hook_failed": hook.failed,
            "hook_bad_requests": hook.bad_requests,
            "settle_s": round(settle_s, 2),
            "latency_ms": latency,
            "ring_drops": counts_json(&ring_drops),
            "egress_requests": counts_json(&deliveries),
            "egress_dropped_items": counts_json(&dropped),
            "items_discarded_at_session_end": count_json(discarded),
            "server_cpu_s": round(cpu_s, 2),
            "rss_before_kib": rss_before_kib,
            "rss_after_kib": rss_after_kib,
        }),
        &human,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transcript_carries_its_send_time_in_a_segment() {
        let message = transcript_message("latency-7", 12, 1_700_000_000_123_456_789);
        assert_eq!(message[..4], frames::TRANSCRIPT.to_le_bytes());
        let payload: serde_json::Value = serde_json::from_slice(&message[4..]).unwrap();
        assert_eq!(payload["memory_id"], serde_json::Value::Null);
        let segment = &payload["segments"][0];
        assert_eq!(segment["id"], "latency-7-12");
        assert_eq!(segment["sent_ns"], 1_700_000_000_123_456_789u64);
        assert_eq!(segment["start"], 12.0);
        assert_eq!(segment["end"], 13.0);
    }
}
