//! `idle`: the server's memory per open, idle session.
//!
//! Measures the server's RSS, opens N sessions (each sends one 103, then a 100 heartbeat every
//! 20 s, as the real client does between utterances), waits for them to settle, measures, holds
//! them while heartbeating, measures again. Sessions the server closes during the run are
//! counted as lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use super::{Session, Target, open_sessions, print_result, round};
use crate::frames;
use crate::proc_stats::Process;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Sessions to open
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Seconds to hold the sessions (heartbeating) between the second and third measurement
    #[arg(long, default_value_t = 30, value_name = "S")]
    hold_s: u64,
    /// Seconds from the last session's 103 to the second measurement
    #[arg(long, default_value_t = 5, value_name = "S")]
    settle_s: u64,
    /// Sessions being opened at once
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Seconds between a session's heartbeats (100)
    #[arg(long, default_value_t = 20, value_name = "S")]
    heartbeat_s: u64,
}

/// What the holding tasks count.
#[derive(Default)]
struct HoldStats {
    heartbeats: AtomicU64,
    /// Sessions that ended (server close, reset or write error) while being held.
    lost: AtomicUsize,
}

pub async fn run(args: Args) -> Result<(), String> {
    if args.sessions == 0 {
        return Err("--sessions must be at least 1".to_owned());
    }
    let server = Process::new(args.target.pid);
    let rss_before_kib = server.rss_kib().map_err(|e| e.to_string())?;
    eprintln!(
        "idle: opening {} sessions to {} ({} at a time)",
        args.sessions, args.target.addr, args.concurrency
    );
    let started = Instant::now();
    let opened = open_sessions(&args.target, "idle", args.sessions, args.concurrency).await;
    let open_s = started.elapsed().as_secs_f64();
    let open = opened.sessions.len();
    let failed = opened.failures.total();
    if open == 0 {
        return Err(format!(
            "no session could be opened: {}",
            opened.failures.to_json()
        ));
    }

    let stats = Arc::new(HoldStats::default());
    let heartbeat: Arc<[u8]> =
        frames::binary_frame(&frames::message(frames::HEARTBEAT, &[])).into();
    let every = Duration::from_secs(args.heartbeat_s.max(1));
    let mut holders = JoinSet::new();
    for session in opened.sessions {
        holders.spawn(hold(
            session,
            every,
            Arc::clone(&heartbeat),
            Arc::clone(&stats),
        ));
    }
    eprintln!(
        "idle: {open} open, {failed} failed in {open_s:.1}s; settling {}s",
        args.settle_s
    );
    tokio::time::sleep(Duration::from_secs(args.settle_s)).await;
    let rss_settled_kib = server.rss_kib().map_err(|e| e.to_string())?;
    eprintln!("idle: holding {}s", args.hold_s);
    tokio::time::sleep(Duration::from_secs(args.hold_s)).await;
    let rss_after_kib = server.rss_kib().map_err(|e| e.to_string())?;
    holders.shutdown().await;

    let lost = stats.lost.load(Ordering::Relaxed);
    let growth_kib = rss_after_kib as f64 - rss_before_kib as f64;
    let kib_per_session = growth_kib / open as f64;
    let human = format!(
        "idle: {open}/{} sessions open ({failed} failed to open, {lost} lost while held); \
         server RSS {:.1} MiB -> {:.1} MiB settled -> {:.1} MiB after {}s = {kib_per_session:.2} KiB/session",
        args.sessions,
        rss_before_kib as f64 / 1024.0,
        rss_settled_kib as f64 / 1024.0,
        rss_after_kib as f64 / 1024.0,
        args.hold_s,
    );
    print_result(
        "idle",
        &args.target,
        json!({
            "sessions_requested": args.sessions,
            "sessions": open,
            "failures": failed,
            "failure_reasons": opened.failures.to_json(),
            "sessions_lost": lost,
            "open_s": round(open_s, 2),
            "settle_s": args.settle_s,
            "hold_s": args.hold_s,
            "heartbeats_sent": stats.heartbeats.load(Ordering::Relaxed),
            "rss_before_kib": rss_before_kib,
            "rss_settled_kib": rss_settled_kib,
            "rss_after_kib": rss_after_kib,
            "kib_per_session": round(kib_per_session, 2),
        }),
        &human,
    )
}

/// Keeps one session open: a heartbeat every `every` (the first one `every` after the 103),
/// and a read that notices the server ending the session. Runs until aborted or lost.
async fn hold(mut session: Session, every: Duration, heartbeat: Arc<[u8]>, stats: Arc<HoldStats>) {
    let mut next = session.opened_at + every;
    // The server sends an idle session nothing but a Close (idle timeout, drain), so any bytes
    // mean the session is ending: answer with our Close and count it as lost.
    let mut received = [0u8; 256];
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next.into()) => {
                if session.stream.write_all(&heartbeat).await.is_err() {
                    break;
                }
                stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                next += every;
            }
            read = session.stream.read(&mut received) => {
                if matches!(read, Ok(n) if n > 0) {
                    // The session is lost either way; a failed write changes nothing.
                    let _ = session.stream.write_all(&frames::close_frame()).await;
                }
                break;
            }
        }
    }
    stats.lost.fetch_add(1, Ordering::Relaxed);
}
