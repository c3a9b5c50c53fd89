//! The store's health as the uploader sees it: one gauge, and one log line per change (the
//! caller logs when [`StoreHealth::record`] says the state changed), never one per attempt.

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::metrics::gauge::Gauge;

/// Whether the store looks healthy, with the gauge that shows it.
pub struct StoreHealth {
    healthy: AtomicBool,
    gauge: Gauge,
}

impl StoreHealth {
    /// Healthy until an attempt fails; sets `gauge` (`pusher_upload_store_healthy`) to 1.
    pub fn new(gauge: Gauge) -> StoreHealth {
        gauge.set(1);
        StoreHealth {
            healthy: AtomicBool::new(true),
            gauge,
        }
    }

    /// Records an attempt's outcome; true when it changed the state (log it once).
    pub fn record(&self, ok: bool) -> bool {
        let changed = self.healthy.swap(ok, Ordering::AcqRel) != ok;
        if changed {
            self.gauge.set(i64::from(ok));
        }
        changed
    }
}
