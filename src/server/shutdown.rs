//! Drain on SIGTERM (protocol.md §5): readiness turns 503 and new upgrades are refused at once;
//! open sessions get `drain_grace_ms` to end, then are closed with 1001; a second SIGTERM or
//! SIGINT exits at once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::Shared;

/// How often the drain loop looks at the open-session count and for a second signal.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// Longest wait for the spill writer to sync what the sessions handed over before exiting.
const SPILL_FLUSH_LIMIT: Duration = Duration::from_secs(5);
/// Extra time after the close timeout for workers to finish their close handshakes.
const CLOSE_SLACK: Duration = Duration::from_millis(500);

/// Blocks until a signal has been handled; returns when the process should exit.
pub fn wait_for_signals(shared: &Arc<Shared>, workers: Vec<JoinHandle<()>>) -> Result<(), String> {
    let mut signals =
        Signals::new([SIGTERM, SIGINT]).map_err(|e| format!("signal handler: {e}"))?;
    let first = signals.forever().next().unwrap_or(SIGTERM);
    if workers.iter().any(JoinHandle::is_finished) {
        return Err("a worker stopped unexpectedly".into());
    }
    tracing::info!(
        signal = first,
        "draining: new sessions refused, open sessions have the grace period to end"
    );
    shared.draining.store(true, Ordering::SeqCst);
    shared.metrics.draining.set(1);
    let grace = Duration::from_millis(shared.config.drain_grace_ms);
    if !wait_until_empty(shared, &mut signals, grace) {
        return forced_exit();
    }
    if open_sessions(shared) > 0 {
        tracing::info!(
            open = open_sessions(shared),
            "grace period over: closing open sessions with 1001"
        );
        shared.closing.store(true, Ordering::SeqCst);
        let close = Duration::from_millis(shared.config.close_timeout_ms) + CLOSE_SLACK;
        if !wait_until_empty(shared, &mut signals, close) {
            return forced_exit();
        }
    }
    if !shared.spill.wait_durable(SPILL_FLUSH_LIMIT) {
        tracing::warn!("spill log not fully synced before exit; the next start recovers it");
    }
    tracing::info!(open = open_sessions(shared), "drained; exiting");
    Ok(())
}

fn open_sessions(shared: &Shared) -> usize {
    shared.sessions_open.load(Ordering::SeqCst)
}

/// Waits up to `limit` for every session to end; false if a second signal came.
fn wait_until_empty(shared: &Shared, signals: &mut Signals, limit: Duration) -> bool {
    let start = Instant::now();
    while open_sessions(shared) > 0 && start.elapsed() < limit {
        if signals.pending().next().is_some() {
            return false;
        }
        std::thread::sleep(DRAIN_POLL);
    }
    true
}

fn forced_exit() -> Result<(), String> {
    tracing::warn!("second signal: exiting at once");
    std::process::exit(130);
}
