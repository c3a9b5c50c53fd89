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
//! The first `--process-share` (all) of the sessions also send a 104 every
//! `--process-interval-ms` (10,000), a new conversation id each time (`latency-<i>-<n>`),
//! spread over the interval like the 102s. The server must run with `--processor-url
//! http://ADDR/processor`; the simulated processor answers after `--processor-delay-ms` (0 here).
//! The client times each 104 from just before its write to the read of its 201: the process
//! round trip. The Close waits for the end of the stream, so a 104 unanswered by then is missing.
//!
//! Results: segments sent and received, latency percentiles (p50, p90, p99, p99.9, max) in ms,
//! the 104s sent, their 201s by kind (success, busy, other errors) and the missing ones, the
//! round-trip percentiles of every answered 104, the transcript ring's drops and the hook
//! deliveries by result from `/metrics`, the server's CPU time and RSS.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use super::answers::{Answers, read_201s};
use super::conn::{self, Pings, SharedWriter};
use super::{
    Failures, Schedule, Session, Target, count_json, counts_json, open_sessions, print_result,
    round, spawn_progress, spread,
};
use crate::downstream::{self, Route, RouteArgs, parse_rate};
use crate::frames;
use crate::proc_stats::Process;
use crate::prometheus::{self, Scrape};

const UID_PREFIX: &str = "latency";
/// How long a session waits for the end of the stream after sending its Close.
const CLOSE_WAIT: Duration = Duration::from_secs(30);
/// Period of the checks for outstanding segments after the close.
const SETTLE_POLL: Duration = Duration::from_millis(100);
/// Time between progress lines while sending.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Text of every segment: one second of speech, as the transcription service sends it.
const SEGMENT_TEXT: &str = "so I was thinking we could meet tomorrow morning to go over the plan";

#[derive(Debug, clap::Args)]
#[command(mut_arg("processor_delay_ms", |arg| arg.default_value("0")))]
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
    /// Share of the sessions that also send 104s (the first of them by index)
    #[arg(long, default_value_t = 1.0, value_name = "RATE", value_parser = parse_rate)]
    process_share: f64,
    /// Time between one session's 104s
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    process_interval_ms: u64,
    /// Sessions being opened at once
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Longest wait after the close for the segments still on their way
    #[arg(long, default_value_t = 15, value_name = "S")]
    settle_s: u64,
}

/// What one session sent and read.
#[derive(Debug, Default)]
struct Sent {
    segments: u64,
    /// 104s sent.
    processes: u64,
    /// 104s that got no 201 before the end of the stream.
    missing: u64,
    answers: Answers,
    /// Send → 201 of every answered 104, ns.
    round_trips_ns: Vec<u64>,
    late_max: Duration,
    error: Option<String>,
    pings: Pings,
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

/// The 104 of conversation `n` of `uid`.
fn process_message(uid: &str, n: u64) -> Vec<u8> {
    let payload = json!({"conversation_id": format!("{uid}-{n}"), "language": "en"});
    frames::message(frames::PROCESS_CONVERSATION, payload.to_string().as_bytes())
}

/// One session: sends a 102 per tick of `transcripts` and a 104 per tick of `processes` while
/// reading the 201s; at the deadline sends a Close and reads on until the server ends the stream.
async fn transcribe(session: Session, transcripts: Schedule, processes: Option<Schedule>) -> Sent {
    let uid = format!("{UID_PREFIX}-{}", session.index);
    let read_until = transcripts.deadline() + CLOSE_WAIT;
    let (reader, writer) = session.stream.into_split();
    let writer = conn::shared(writer);
    let closing = Arc::new(AtomicBool::new(false));
    let ((mut sent, process_sent_at), (answered, answers, read_error, pings)) = tokio::join!(
        send(
            Arc::clone(&writer),
            Arc::clone(&closing),
            &uid,
            transcripts,
            processes
        ),
        read_201s(reader, writer, closing, &uid, read_until)
    );
    sent.pings = pings;
    for (n, read_at) in answered {
        match process_sent_at.get(n as usize) {
            Some(&sent_at) => sent
                .round_trips_ns
                .push(read_at.saturating_duration_since(sent_at).as_nanos() as u64),
            None => sent.answers.unknown += 1,
        }
    }
    sent.missing = sent.processes - sent.round_trips_ns.len() as u64;
    sent.answers.add(answers);
    sent.error = sent.error.or(read_error);
    sent
}

/// Writes the 102s and 104s on their schedules, then at the deadline a Close: what was sent
/// (the error is the first write that failed) and the time each 104 was sent, by number.
async fn send(
    writer: SharedWriter,
    closing: Arc<AtomicBool>,
    uid: &str,
    mut transcripts: Schedule,
    mut processes: Option<Schedule>,
) -> (Sent, Vec<Instant>) {
    let mut sent = Sent::default();
    let mut process_sent_at = Vec::new();
    let (mut transcribing, mut processing) = (true, processes.is_some());
    loop {
        let (message, process) = tokio::select! {
            more = transcripts.tick(), if transcribing => {
                transcribing = more;
                if !more {
                    continue;
                }
                (transcript_message(uid, sent.segments, downstream::now_ns()), false)
            }
            more = async {
                match processes.as_mut() {
                    Some(schedule) => schedule.tick().await,
                    None => false,
                }
            }, if processing => {
                processing = more;
                if !more {
                    continue;
                }
                process_sent_at.push(Instant::now());
                (process_message(uid, process_sent_at.len() as u64 - 1), true)
            }
            else => break,
        };
        let written = writer
            .lock()
            .await
            .write_all(&frames::binary_frame(&message))
            .await;
        if let Err(e) = written {
            if process {
                process_sent_at.pop();
            }
            sent.error = Some(format!("write: {e}"));
            break;
        }
        if !process {
            sent.segments += 1;
        }
    }
    sent.processes = process_sent_at.len() as u64;
    let processes_late = processes
        .as_ref()
        .map_or(Duration::ZERO, Schedule::late_max);
    sent.late_max = transcripts.late_max().max(processes_late);
    if sent.error.is_none() {
        tokio::time::sleep_until(transcripts.deadline().into()).await;
        closing.store(true, Ordering::Relaxed);
        if let Err(e) = writer.lock().await.write_all(&frames::close_frame()).await {
            sent.error = Some(format!("close write: {e}"));
        }
    }
    (sent, process_sent_at)
}

pub async fn run(args: Args) -> Result<(), String> {
    if args.sessions == 0 || args.seconds == 0 || args.interval_ms == 0 {
        return Err("--sessions, --seconds and --interval-ms must be at least 1".to_owned());
    }
    if args.process_interval_ms == 0 {
        return Err("--process-interval-ms must be at least 1".to_owned());
    }
    // The first sessions by index send 104s.
    let process_sessions = (args.sessions as f64 * args.process_share).round() as usize;
    let downstream = downstream::start(args.downstream_listen, args.routes.clone()).await?;
    let server = Process::new(args.target.pid);
    let addr = args.target.addr;
    let before = prometheus::scrape_pusher(addr, "ring drops and deliveries").await;
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
    let process_interval = Duration::from_millis(args.process_interval_ms);
    let progress = spawn_progress(start, deadline, PROGRESS_EVERY, move || {
        match (server.rss_kib(), server.cpu_s()) {
            (Ok(kib), Ok(cpu_s)) => format!(
                "server RSS {:.1} MiB, CPU {:.1}s",
                kib as f64 / 1024.0,
                cpu_s - cpu_before_s
            ),
            (Err(e), _) | (_, Err(e)) => format!("server not readable: {e}"),
        }
    });
    let mut clients = JoinSet::new();
    for session in opened.sessions {
        let first = start + spread(interval, session.index, args.sessions);
        let processes = (session.index < process_sessions).then(|| {
            let first = start + spread(process_interval, session.index, process_sessions);
            Schedule::new(first, process_interval, deadline)
        });
        clients.spawn(transcribe(
            session,
            Schedule::new(first, interval, deadline),
            processes,
        ));
    }
    let (mut sent, mut late_max) = (0u64, Duration::ZERO);
    let (mut processes_sent, mut processes_missing) = (0u64, 0u64);
    let mut answers = Answers::default();
    let mut round_trips_ns = Vec::new();
    let mut stream_errors = Failures::default();
    let mut pings = Pings::default();
    while let Some(joined) = clients.join_next().await {
        let session = joined.map_err(|e| format!("session task: {e}"))?;
        sent += session.segments;
        processes_sent += session.processes;
        processes_missing += session.missing;
        answers.add(session.answers);
        round_trips_ns.extend(session.round_trips_ns);
        late_max = late_max.max(session.late_max);
        pings.add(session.pings);
        if let Some(error) = session.error {
            stream_errors.add(error);
        }
    }
    progress.abort();
    let closed = Instant::now();
    let settle_deadline = closed + Duration::from_secs(args.settle_s);
    while downstream.route(Route::Hook).segments < sent && Instant::now() < settle_deadline {
        tokio::time::sleep(SETTLE_POLL).await;
    }
    let settle_s = closed.elapsed().as_secs_f64();
    let cpu_s = server.cpu_s().map_err(|e| e.to_string())? - cpu_before_s;
    let rss_after_kib = server.rss_kib().map_err(|e| e.to_string())?;
    let counts = match &before {
        Some(before) => prometheus::scrape_pusher(addr, "ring drops and deliveries")
            .await
            .map(|after| Counts::between(before, &after)),
        None => None,
    };

    let hook = downstream.route(Route::Hook);
    let latency = downstream::latency_summary(&downstream.latencies_ns(Route::Hook));
    let processor = downstream.route(Route::Processor);
    let round_trip = downstream::latency_summary(&round_trips_ns);
    let missing = sent as i64 - hook.segments as i64;
    let percentiles = |summary: &serde_json::Value| {
        let ms = |field: &str| {
            summary[field]
                .as_f64()
                .map_or("n/a".to_owned(), |v| format!("{v:.1}"))
        };
        format!(
            "p50 {} ms, p90 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
            ms("p50"),
            ms("p90"),
            ms("p99"),
            ms("p999"),
            ms("max")
        )
    };
    let process_errors = answers.errors.values().sum::<u64>();
    let human = format!(
        "latency: {open}/{} sessions ({} failed to open, {} stream errors), a 102 every {} ms for {}s; \
         client at most {} ms late\n\
         \x20 segments: {sent} sent, {} received at the hook ({missing} missing) in {} requests, \
         {} failed, {} bad; settled {settle_s:.1}s after the close\n\
         \x20 latency (hook arrival − send): {}\n\
         \x20 104s from {process_sessions} sessions, one every {} ms: {processes_sent} sent; 201: {} success, {} busy, \
         {process_errors} other errors {}; {processes_missing} missing; {} unknown, {} repeated, {} malformed; \
         processor {} requests, {} failed\n\
         \x20 104 → 201 round trip: {}\n\
         \x20 ring drops {}; {} items discarded at session end; deliveries {}; server CPU {cpu_s:.1}s, RSS {:.1} → {:.1} MiB",
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
        percentiles(&latency),
        args.process_interval_ms,
        answers.success,
        answers.busy,
        json!(answers.errors),
        answers.unknown,
        answers.repeated,
        answers.malformed,
        processor.requests,
        processor.failed,
        percentiles(&round_trip),
        counts
            .as_ref()
            .map_or(json!("n/a"), |c| counts_json(&c.ring_drops)),
        counts
            .as_ref()
            .map_or(json!("n/a"), |c| count_json(c.discarded)),
        counts
            .as_ref()
            .map_or(json!("n/a"), |c| counts_json(&c.deliveries)),
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
            "keepalive": pings.to_json(),
            "segments_sent": sent,
            "segments_received": hook.segments,
            "segments_missing": missing,
            "hook_requests": hook.requests,
            "hook_failed": hook.failed,
            "hook_bad_requests": hook.bad_requests,
            "settle_s": round(settle_s, 2),
            "latency_ms": latency,
            "process_sessions": process_sessions,
            "process_interval_ms": args.process_interval_ms,
            "processor_delay_ms": args.routes.processor_delay_ms,
            "process": {
                "sent": processes_sent,
                "answered": answers.total(),
                "success": answers.success,
                "busy": answers.busy,
                "errors": answers.errors,
                "missing": processes_missing,
                "repeated": answers.repeated,
                "unknown": answers.unknown,
                "malformed": answers.malformed,
                "processor_requests": processor.requests,
                "processor_failed": processor.failed,
            },
            "process_latency_ms": round_trip,
            "ring_drops": counts.as_ref().map(|c| counts_json(&c.ring_drops)),
            "egress_requests": counts.as_ref().map(|c| counts_json(&c.deliveries)),
            "egress_dropped_items": counts.as_ref().map(|c| counts_json(&c.dropped)),
            "items_discarded_at_session_end": counts.as_ref().map(|c| count_json(c.discarded)),
            "server_cpu_s": round(cpu_s, 2),
            "rss_before_kib": rss_before_kib,
            "rss_after_kib": rss_after_kib,
        }),
        &human,
    )
}

/// pusher's counts over the run, from its /metrics before and after (none against a peer).
struct Counts {
    ring_drops: BTreeMap<String, f64>,
    deliveries: BTreeMap<String, f64>,
    dropped: BTreeMap<String, f64>,
    discarded: f64,
}

impl Counts {
    fn between(before: &Scrape, after: &Scrape) -> Counts {
        let discarded = "pusher_egress_items_discarded_at_session_end_total";
        Counts {
            ring_drops: after.growth_by_labels(
                before,
                "pusher_ring_dropped_items_total",
                &["stream"],
            ),
            deliveries: after.growth_by_labels(
                before,
                "pusher_egress_requests_total",
                &["target", "result"],
            ),
            dropped: after.growth_by_labels(
                before,
                "pusher_egress_dropped_items_total",
                &["target"],
            ),
            discarded: after.value(discarded) - before.value(discarded),
        }
    }
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

    #[test]
    fn a_104_carries_a_conversation_id_per_number() {
        let message = process_message("latency-3", 4);
        assert_eq!(message[..4], frames::PROCESS_CONVERSATION.to_le_bytes());
        let payload: serde_json::Value = serde_json::from_slice(&message[4..]).unwrap();
        assert_eq!(payload["conversation_id"], "latency-3-4");
    }

    /// A fake server: after the client's Close and a pause of `ANSWER_DELAY`, answers 104 #0
    /// (twice) and an id never sent, not #1, then ends the stream.
    #[tokio::test]
    async fn a_session_times_its_104s_and_counts_the_missing() {
        const ANSWER_DELAY: Duration = Duration::from_millis(60);
        use crate::load::answers::fake_server::{answer_frames, read_until_close};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_until_close(&mut stream).await;
            tokio::time::sleep(ANSWER_DELAY).await;
            let wire = answer_frames(&[
                r#"{"conversation_id":"latency-0-0","success":true}"#,
                r#"{"conversation_id":"latency-0-0","success":true}"#,
                r#"{"conversation_id":"latency-0-7","error":"timeout"}"#,
            ]);
            stream.write_all(&wire).await.unwrap();
        });
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let session = Session {
            index: 0,
            stream,
            opened_at: Instant::now(),
        };
        let now = Instant::now();
        let deadline = now + Duration::from_millis(50);
        let transcripts = Schedule::new(now, Duration::from_millis(20), deadline);
        let processes = Schedule::new(now, Duration::from_millis(30), deadline);
        let sent = transcribe(session, transcripts, Some(processes)).await;
        server.await.unwrap();
        assert_eq!(sent.error, None);
        assert_eq!((sent.segments, sent.processes, sent.missing), (3, 2, 1));
        assert_eq!(sent.round_trips_ns.len(), 1);
        // 104 #0 went out before the Close and its answer came `ANSWER_DELAY` after it, however
        // late the scheduler ran the first tick.
        assert!(sent.round_trips_ns[0] >= ANSWER_DELAY.as_nanos() as u64);
        let answers = sent.answers;
        assert_eq!(
            (answers.success, answers.repeated, answers.unknown),
            (1, 1, 1)
        );
        assert_eq!(answers.malformed, 0);
    }
}
