//! State every worker shares: the configuration, metrics, settings source, the drain's flags,
//! the spill log's rings, the egress links. Read-mostly; atomics for the few flags and counts.
//!
//! Invariant: nothing here is per-core; a worker's own state is its `Core`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use super::driver::Driver;
use crate::audio_log::SpillLog;
use crate::budget::Budget;
use crate::config::Config;
use crate::egress::{EgressMetrics, Link};
use crate::metrics::Metrics;
use crate::settings::SettingsSource;
use crate::upload::UploadMetrics;

/// The drain's flags, shared by the main thread and the workers.
///
/// Invariant: `began_at_ms` is written once (from `DrainState::NOT_BEGUN`); `closing` only
/// goes from false to true.
pub struct DrainState {
    epoch: Instant,
    /// Milliseconds since `epoch` when the drain began; [`DrainState::NOT_BEGUN`] while serving.
    began_at_ms: AtomicU64,
    /// The grace period is over: every open session is closed with 1001.
    closing: AtomicBool,
}

impl DrainState {
    const NOT_BEGUN: u64 = u64::MAX;

    /// Serving: the drain has not begun; the drain's clock starts now.
    pub fn new() -> DrainState {
        DrainState {
            epoch: Instant::now(),
            began_at_ms: AtomicU64::new(Self::NOT_BEGUN),
            closing: AtomicBool::new(false),
        }
    }

    /// Milliseconds on the drain's clock (monotonic, from the process start).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// When the drain began, if it did.
    pub fn began_at_ms(&self) -> Option<u64> {
        let at = self.began_at_ms.load(Ordering::SeqCst);
        (at != Self::NOT_BEGUN).then_some(at)
    }

    /// Begins the drain now unless it began already: (when it began, whether this call did it).
    fn begin(&self) -> (u64, bool) {
        let now = self.now_ms();
        match self.began_at_ms.compare_exchange(
            Self::NOT_BEGUN,
            now,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => (now, true),
            Err(earlier) => (earlier, false),
        }
    }

    /// Tells the workers to close every open session (the grace period is over).
    pub fn close_sessions(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// True once the workers must close every open session.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }
}

impl Default for DrainState {
    fn default() -> DrainState {
        DrainState::new()
    }
}

/// State every worker shares (read-mostly; atomics for the few flags and counts).
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// The core metrics.
    pub metrics: Metrics,
    /// Where users' settings come from.
    pub settings: SettingsSource,
    /// The io driver the workers run.
    pub driver: Driver,
    /// Session slots per worker (the open-files limit may have lowered `max_sessions_per_core`).
    pub sessions_per_core: usize,
    /// The worst-case memory computed at start.
    pub budget: Budget,
    /// The drain as the workers see it (begun by a signal or `POST /__internal/drain`).
    pub drain: DrainState,
    /// Sessions open over all cores.
    pub sessions_open: AtomicUsize,
    /// The durable audio log: one hand-off ring per worker, the writer, the index.
    pub spill: SpillLog,
    /// The uploader's metrics (uploads in flight feed /debug/memory).
    pub uploads: UploadMetrics,
    /// One link per worker to the egress thread.
    pub egress_links: Vec<Arc<Link>>,
    /// Egress's metrics, which the workers count into too.
    pub egress_metrics: EgressMetrics,
}

impl Shared {
    /// True once the drain began.
    pub fn is_draining(&self) -> bool {
        self.drain.began_at_ms().is_some()
    }

    /// Begins the drain now unless it already began (idempotent); `via` names who asked, for
    /// the log. Returns when the drain began (this call's time or the earlier one's).
    pub fn begin_drain(&self, via: &str) -> u64 {
        let (began_at_ms, first) = self.drain.begin();
        if first {
            self.metrics.drain_began();
            tracing::info!(
                via,
                grace_ms = self.config.drain_grace_ms,
                "draining: readiness 503, new sessions are closed with 1001 after their upgrade, \
                 open sessions have the grace period to end"
            );
        }
        began_at_ms
    }

    /// True when `/ready` answers 200: not draining and a session slot free somewhere.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && !self.is_full()
    }

    /// True when as many sessions are open as all workers have slots.
    pub fn is_full(&self) -> bool {
        self.sessions_open.load(Ordering::Relaxed)
            >= self.sessions_per_core * self.metrics_workers()
    }

    /// Background tasks in flight (`asyncio_tasks` of /debug/memory): uploads and egress HTTP
    /// attempts (process calls, deliveries, settings fetches).
    pub fn background_tasks(&self) -> u64 {
        (self.uploads.in_flight().max(0) + self.egress_metrics.attempts_in_flight().max(0)) as u64
    }

    fn metrics_workers(&self) -> usize {
        self.budget.workers as usize
    }
}
