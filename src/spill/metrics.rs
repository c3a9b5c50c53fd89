//! The spill log's metrics (`pusher_spill_*`).

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The spill log's metric handles, registered under `pusher_spill_`; clones share the values.
#[derive(Clone)]
pub struct SpillMetrics {
    /// `pusher_spill_appended_bytes_total`: bytes of session records appended, headers included.
    pub appended_bytes: Counter,
    /// `pusher_spill_appended_records_total`: batch-open, audio and batch-close records appended.
    pub appended_records: Counter,
    /// `pusher_spill_uploaded_records_total`: uploaded records appended (not in `appended_*`).
    pub uploaded_records: Counter,
    /// `pusher_spill_rejected_records_total`: records the index refused (a bug if not zero).
    pub records_rejected: Counter,
    /// `pusher_spill_sync_seconds`: fdatasync latency of a group commit, in seconds (buckets from
    /// 50 µs, doubling, 16 of them).
    pub sync_seconds: Histogram,
    /// `pusher_spill_io_errors_total`: failed spill writes or syncs (a write refused for space is
    /// retried; any other failure stops the writer, docs/0010-fsync-errors-are-fatal.md).
    pub io_errors: Counter,
    /// `pusher_spill_full`: 1 while the log is at `spill_max_bytes` (intake stopped, backpressure).
    pub full: Gauge,
    /// `pusher_spill_live_bytes`: bytes of the segment files on disk.
    pub live_bytes: Gauge,
    /// `pusher_spill_segments_live`: segment files on disk.
    pub segments_live: Gauge,
    /// `pusher_spill_segments_deleted_total`: segment files deleted once all their batches
    /// uploaded.
    pub segments_deleted: Counter,
    /// `pusher_spill_pending_batches`: batches in the log not yet uploaded (open or closed).
    pub pending_batches: Gauge,
    /// `pusher_spill_pending_bytes`: audio bytes in the log not yet uploaded.
    pub pending_bytes: Gauge,
    /// `pusher_spill_oldest_pending_batch_age_seconds`: age of the oldest batch not yet uploaded,
    /// in whole seconds.
    pub oldest_pending_age_seconds: Gauge,
    /// `pusher_spill_batches_closed_total`: closed batches made durable and handed to the uploader.
    pub batches_closed: Counter,
    /// `pusher_spill_batches_uploaded_total`: batches the store confirmed.
    pub batches_uploaded: Counter,
    /// `pusher_spill_corrupt_tails_total`: torn or corrupt segment tails found at recovery.
    pub corrupt_tails: Counter,
    /// `pusher_spill_damaged_segments_total`: segments with damage found at recovery (linked into
    /// `spill/damaged/`).
    pub damaged_segments: Counter,
    /// `pusher_spill_holed_batches_total`: batches found at recovery with records lost to damage
    /// (uploaded as `.partial`).
    pub holed_batches: Counter,
    /// Batches still in the log when the process exited (set by the shutdown's upload drain).
    pub left_at_exit_batches: Gauge,
    /// `pusher_spill_close_ack_timeouts_total`: sessions dropped without a Close because their
    /// audio was not durable within `close_timeout_ms` (docs/protocol.md §4).
    pub close_ack_timeouts: Counter,
    /// Seconds sessions spent not being read because the hand-off ring or the disk budget was
    /// full, summed over sessions.
    pub backpressure_seconds: Counter<f64, AtomicU64>,
}

impl SpillMetrics {
    /// Registers every spill metric under the `spill` prefix of `registry` and returns the handles.
    pub fn register(registry: &mut Registry) -> SpillMetrics {
        let registry = registry.sub_registry_with_prefix("spill");
        let metrics = SpillMetrics {
            appended_bytes: Counter::default(),
            appended_records: Counter::default(),
            uploaded_records: Counter::default(),
            records_rejected: Counter::default(),
            sync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            io_errors: Counter::default(),
            full: Gauge::default(),
            live_bytes: Gauge::default(),
            segments_live: Gauge::default(),
            segments_deleted: Counter::default(),
            pending_batches: Gauge::default(),
            pending_bytes: Gauge::default(),
            oldest_pending_age_seconds: Gauge::default(),
            batches_closed: Counter::default(),
            batches_uploaded: Counter::default(),
            corrupt_tails: Counter::default(),
            damaged_segments: Counter::default(),
            holed_batches: Counter::default(),
            left_at_exit_batches: Gauge::default(),
            close_ack_timeouts: Counter::default(),
            backpressure_seconds: Counter::default(),
        };
        let m = metrics.clone();
        registry.register(
            "appended_bytes",
            "bytes of session records appended to the spill log (headers included)",
            m.appended_bytes,
        );
        registry.register(
            "appended_records",
            "session records (batch-open, audio, batch-close) appended to the spill log",
            m.appended_records,
        );
        registry.register(
            "uploaded_records",
            "uploaded records appended (one per batch the store confirmed; not in appended_*)",
            m.uploaded_records,
        );
        registry.register(
            "rejected_records",
            "records refused by the index (a bug if not zero)",
            m.records_rejected,
        );
        registry.register(
            "sync_seconds",
            "fdatasync latency of the spill log (group commit)",
            m.sync_seconds,
        );
        registry.register(
            "io_errors",
            "failed spill writes or syncs: a write refused for lack of space is retried (its records wait in their ring); any other failure stops the writer and the process exits 1",
            m.io_errors,
        );
        registry.register(
            "full",
            "1 while the spill log is at spill_bytes_max (backpressure)",
            m.full,
        );
        registry.register("live_bytes", "bytes of live segment files", m.live_bytes);
        registry.register("segments_live", "segment files on disk", m.segments_live);
        registry.register(
            "segments_deleted",
            "segment files deleted after all their batches uploaded",
            m.segments_deleted,
        );
        registry.register(
            "pending_batches",
            "batches in the log not yet uploaded (open or closed)",
            m.pending_batches,
        );
        registry.register(
            "pending_bytes",
            "audio bytes in the log not yet uploaded",
            m.pending_bytes,
        );
        registry.register(
            "oldest_pending_batch_age_seconds",
            "age of the oldest batch not yet uploaded",
            m.oldest_pending_age_seconds,
        );
        registry.register(
            "batches_closed",
            "closed batches made durable and handed to the uploader",
            m.batches_closed,
        );
        registry.register(
            "batches_uploaded",
            "batches the store confirmed",
            m.batches_uploaded,
        );
        registry.register(
            "corrupt_tails",
            "torn or corrupt segment tails found at recovery",
            m.corrupt_tails,
        );
        registry.register(
            "damaged_segments",
            "segments with damage found at recovery (kept in spill/damaged/ for an operator)",
            m.damaged_segments,
        );
        registry.register(
            "holed_batches",
            "batches found at recovery with records lost to damage (uploaded as .partial objects)",
            m.holed_batches,
        );
        registry.register(
            "left_at_exit_batches",
            "batches not yet uploaded when the shutdown's upload drain ended (0 while serving)",
            m.left_at_exit_batches,
        );
        registry.register("close_ack_timeouts", "sessions dropped without a Close because their audio was not durable within the close timeout", m.close_ack_timeouts);
        registry.register(
            "backpressure_seconds",
            "session-seconds not read because the hand-off or the disk budget was full",
            m.backpressure_seconds,
        );
        metrics
    }
}
