//! The drain on the main thread (docs/protocol.md §5): runs [`crate::drain::Drain`] on the real
//! clock, feeding it SIGTERM/SIGINT and the drain begun by `POST /__internal/drain` (seen through
//! [`super::shared::DrainState`]), and carries out what it decides: readiness 503 and new sessions turned
//! away (the workers read the shared flag), open sessions closed with 1001 after the grace period,
//! then a flush of the spill log, uploads for up to `upload_drain_ms`, and the exit.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::shared::Shared;
use crate::drain::{Action, Drain, Limits};

/// How often the main thread looks at the signals, the shared drain flag and the open-session
/// count: the resolution of the grace period.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// Longest wait for the spill writer to sync what the sessions handed over before exiting.
const SPILL_FLUSH_LIMIT: Duration = Duration::from_secs(5);
/// Extra time after the close timeout for workers to finish their close handshakes.
const CLOSE_SLACK_MS: u64 = 500;

/// Blocks until the drain is over; returns when the process should exit.
pub fn wait_for_signals(shared: &Arc<Shared>, workers: Vec<JoinHandle<()>>) -> Result<(), String> {
    let mut signals =
        Signals::new([SIGTERM, SIGINT]).map_err(|e| format!("signal handler: {e}"))?;
    let mut drain = Drain::new(Limits {
        grace_ms: shared.config.drain_grace_ms,
        close_wait_ms: shared.config.close_timeout_ms + CLOSE_SLACK_MS,
    });
    loop {
        if workers.iter().any(JoinHandle::is_finished) {
            return Err("a worker stopped unexpectedly".into());
        }
        for signal in signals.pending() {
            tracing::info!(signal, "signal received");
            let since_ms = shared.begin_drain("signal");
            drain.on_begin(since_ms);
            if drain.on_signal(shared.drain.now_ms()) == Action::ExitNow {
                return forced_exit();
            }
        }
        if let Some(since_ms) = shared.drain.began_at_ms() {
            drain.on_begin(since_ms);
        }
        match drain.on_tick(shared.drain.now_ms(), open_sessions(shared)) {
            Action::Wait | Action::Begin { .. } => {}
            Action::CloseSessions => {
                tracing::info!(
                    open = open_sessions(shared),
                    "grace period over: closing open sessions with 1001"
                );
                shared.drain.close_sessions();
            }
            Action::Exit => break,
            Action::ExitNow => return forced_exit(),
        }
        std::thread::sleep(DRAIN_POLL);
    }
    if !shared.spill.wait_durable(SPILL_FLUSH_LIMIT) {
        tracing::warn!("spill log not fully synced before exit; the next start recovers it");
    }
    drain_uploads(shared);
    tracing::info!(open = open_sessions(shared), "drained; exiting");
    Ok(())
}

/// The sessions are gone: uploads of closed batches go on for up to `upload_drain_ms`; what is
/// left is logged and set in `pusher_spill_left_at_exit_batches` (it stays in the log).
fn drain_uploads(shared: &Shared) {
    let limit = Duration::from_millis(shared.config.upload_drain_ms);
    let started = std::time::Instant::now();
    let left = crate::audio_log::drain::wait_uploaded(&shared.spill, limit);
    let metrics = &shared.spill.shared.metrics;
    metrics.left_at_exit_batches.set(left.batches as i64);
    if left.batches == 0 {
        tracing::info!(
            waited_ms = started.elapsed().as_millis() as u64,
            "upload drain: every batch is uploaded"
        );
    } else {
        tracing::warn!(
            batches = left.batches,
            audio_bytes = left.audio_bytes,
            upload_drain_ms = shared.config.upload_drain_ms,
            "upload drain over: batches left in the spill log (the next process on this data \
             directory, or `pusher spill drain`, uploads them)"
        );
    }
}

fn open_sessions(shared: &Shared) -> usize {
    shared.sessions_open.load(Ordering::SeqCst)
}

fn forced_exit() -> Result<(), String> {
    tracing::warn!("second signal: exiting at once");
    std::process::exit(130);
}
