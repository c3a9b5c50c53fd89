//! The `pusher_upload_*` metrics: attempts and their failures by reason, queue and in-flight
//! gauges, store health, chunk notifications by result, upload latency.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Why an upload attempt failed (the `reason` label of `pusher_upload_attempts_failed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// Reading the batch back from the spill log failed.
    Read,
    /// Encrypting the body failed.
    Encrypt,
    /// The object store refused or failed the put.
    Store,
    /// The attempt took longer than `upload_timeout_ms`.
    Timeout,
}

const FAILURE_REASONS: [FailureReason; 4] = [
    FailureReason::Read,
    FailureReason::Encrypt,
    FailureReason::Store,
    FailureReason::Timeout,
];

impl FailureReason {
    fn label(self) -> &'static str {
        match self {
            FailureReason::Read => "read",
            FailureReason::Encrypt => "encrypt",
            FailureReason::Store => "store",
            FailureReason::Timeout => "timeout",
        }
    }
}

/// Outcome of a chunk notification (the `result` label of `pusher_upload_chunk_notifications_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationResult {
    /// Answered 2xx.
    Ok,
    /// Every attempt failed, or the answer was a non-retryable error.
    Failed,
    /// The notification queue was full.
    Dropped,
}

const NOTIFICATION_RESULTS: [NotificationResult; 3] = [
    NotificationResult::Ok,
    NotificationResult::Failed,
    NotificationResult::Dropped,
];

impl NotificationResult {
    fn label(self) -> &'static str {
        match self {
            NotificationResult::Ok => "ok",
            NotificationResult::Failed => "failed",
            NotificationResult::Dropped => "dropped",
        }
    }
}

/// The uploader's metrics (`pusher_upload_*`); handles are resolved once, label sets are closed.
#[derive(Clone)]
pub struct UploadMetrics {
    /// `pusher_upload_succeeded_total`: batches the object store confirmed.
    pub succeeded: Counter,
    /// `pusher_upload_attempts_failed_total{reason}`, one per [`FailureReason`] in declaration
    /// order (count through [`UploadMetrics::attempt_failed`]).
    pub attempts_failed: [Counter; FAILURE_REASONS.len()],
    /// `pusher_upload_retries_total`: attempts after a failed one.
    pub retries: Counter,
    /// `pusher_upload_queued`: batches waiting for an upload slot.
    pub queued: Gauge,
    /// `pusher_upload_in_flight`: batches being uploaded or waiting to retry.
    pub in_flight: Gauge,
    /// `pusher_upload_bytes_total`: object bytes stored (after encryption).
    pub bytes: Counter,
    /// `pusher_upload_store_healthy`: 1 while the last attempt succeeded (or none was made).
    pub store_healthy: Gauge,
    /// `pusher_upload_duration_seconds`: time of successful puts, in seconds (10 ms .. ~82 s).
    pub duration: Histogram,
    /// `pusher_upload_chunk_notifications_total{result}`, one per [`NotificationResult`] in
    /// declaration order (count through [`UploadMetrics::notification`]).
    pub notifications: [Counter; NOTIFICATION_RESULTS.len()],
    /// `pusher_upload_partial_total`: batches with holes stored under their `.partial` key.
    pub partial: Counter,
    /// Batches set aside because their audio could not be read (`uploader::READ_ATTEMPTS_MAX`).
    pub unreadable: Gauge,
}

impl UploadMetrics {
    /// Uploads running now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    /// Registers under `upload_*` in `registry`, which is expected to carry the `pusher` prefix
    /// (as `crate::metrics::Metrics`' registry does), giving `pusher_upload_*`.
    pub fn register(registry: &mut Registry) -> UploadMetrics {
        let succeeded = Counter::default();
        registry.register(
            "upload_succeeded",
            "batches the object store confirmed",
            succeeded.clone(),
        );
        let failed = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "upload_attempts_failed",
            "upload attempts that failed, by reason (read, encrypt, store, timeout); each is retried",
            failed.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "upload_retries",
            "upload attempts after a failed one",
            retries.clone(),
        );
        let queued = Gauge::default();
        registry.register(
            "upload_queued",
            "batches waiting for an upload slot",
            queued.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "upload_in_flight",
            "batches being uploaded or waiting to retry",
            in_flight.clone(),
        );
        let bytes = Counter::default();
        registry.register(
            "upload_bytes",
            "object bytes stored (after encryption)",
            bytes.clone(),
        );
        let store_healthy = Gauge::default();
        store_healthy.set(1);
        registry.register(
            "upload_store_healthy",
            "1 while the last upload attempt succeeded (or none was made), 0 while failing",
            store_healthy.clone(),
        );
        // 10 ms .. ~82 s.
        let duration = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "upload_duration_seconds",
            "time of successful put attempts",
            duration.clone(),
        );
        let partial = Counter::default();
        registry.register(
            "upload_partial",
            "batches with holes (records lost to damage in the spill log) stored under their \
             .partial key",
            partial.clone(),
        );
        let unreadable = Gauge::default();
        registry.register(
            "upload_unreadable_batches",
            "batches whose audio could not be read from the spill log, set aside (they hold no \
             upload slot, stay in the log and are tried again every upload_backoff_ms_max)",
            unreadable.clone(),
        );
        let notifications = Family::<ResultLabel, Counter>::default();
        registry.register(
            "upload_chunk_notifications",
            "chunk notifications, by result (ok, failed, dropped)",
            notifications.clone(),
        );
        UploadMetrics {
            succeeded,
            attempts_failed: FAILURE_REASONS.map(|r| {
                failed
                    .get_or_create(&ReasonLabel { reason: r.label() })
                    .clone()
            }),
            retries,
            queued,
            in_flight,
            bytes,
            store_healthy,
            duration,
            notifications: NOTIFICATION_RESULTS.map(|r| {
                notifications
                    .get_or_create(&ResultLabel { result: r.label() })
                    .clone()
            }),
            partial,
            unreadable,
        }
    }

    /// Batches confirmed by the store.
    pub fn succeeded(&self) -> u64 {
        self.succeeded.get()
    }

    /// Counts one failed attempt for `reason`.
    pub fn attempt_failed(&self, reason: FailureReason) {
        let index = FAILURE_REASONS
            .iter()
            .position(|&r| r == reason)
            .expect("every reason is listed");
        self.attempts_failed[index].inc();
    }

    /// Counts one chunk notification ending with `result`.
    pub fn notification(&self, result: NotificationResult) {
        let index = NOTIFICATION_RESULTS
            .iter()
            .position(|&r| r == result)
            .expect("every result is listed");
        self.notifications[index].inc();
    }
}
