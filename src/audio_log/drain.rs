//! Emptying the log by uploading it: the shutdown's upload drain ([`wait_uploaded`]) and
//! `pusher spill drain --data-dir D` ([`drain_orphaned`]), for a volume whose pod is gone or a
//! Kubernetes Job.
//!
//! `spill drain` takes the data directory's lock (refused while a server holds it), recovers the
//! log, starts the uploader and a writer with no rings (it writes only the uploaded records),
//! waits until every batch is confirmed — or `upload_drain_ms` passes — and, once the index is
//! empty, removes the segment files that are left (they hold only confirmed batches and
//! uploaded records). Bounds: the wait (`upload_drain_ms`), the uploader's own (concurrency,
//! per-attempt timeout).

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;

use super::SpillLog;
use crate::config::Config;
use crate::spill::lock::DataDirLock;
use crate::spill::metrics::SpillMetrics;
use crate::spill::scan::{list_segments, spill_dir};
use crate::upload::crypto::EncryptionSecret;
use crate::upload::{self, UploadMetrics};

/// How often the wait looks at the index.
const POLL: Duration = Duration::from_millis(20);

/// What is left in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    /// Batches still in the index (open, closed or uploading).
    pub batches: usize,
    /// Their audio bytes.
    pub audio_bytes: u64,
}

/// Waits until the log holds no batch, or `limit` passes; what is left.
pub fn wait_uploaded(log: &SpillLog, limit: Duration) -> Left {
    let started = Instant::now();
    loop {
        let (batches, audio_bytes) = log.shared.index.lock().expect("index lock").pending();
        let left = Left {
            batches,
            audio_bytes,
        };
        if batches == 0 || started.elapsed() >= limit || log.shared.has_failed() {
            return left;
        }
        std::thread::sleep(POLL);
    }
}

/// `pusher spill drain`: uploads everything in `<data_dir>/spill` and empties it; an error says
/// why it could not (the lock is held, the store or the log failed, batches left at the limit).
pub fn drain_orphaned(config: &Config) -> Result<(), String> {
    let lock = DataDirLock::acquire(&config.data_dir).map_err(|e| e.to_string())?;
    let secret = EncryptionSecret::from_env()?.map(|(secret, _)| secret);
    if secret.is_none() {
        tracing::warn!(
            "no encryption secret: batches of users at level enhanced cannot be uploaded and \
             will be left in the log"
        );
    }
    let opened = upload::store::open_configured(config)?;
    tracing::info!(store = %opened.location, "spill drain: uploading to {}", opened.location);
    let mut registry = Registry::with_prefix("pusher");
    let spill_metrics = SpillMetrics::register(&mut registry);
    let upload_metrics = UploadMetrics::register(&mut registry);
    let store = opened.store;
    let log = SpillLog::start(config, 0, spill_metrics, |source| {
        upload::start(
            config,
            store,
            secret,
            source,
            upload_metrics.clone(),
            config.spill_batches_max,
        )
    })?;
    let limit = Duration::from_millis(config.upload_drain_ms);
    let left = wait_uploaded(&log, limit);
    if log.shared.has_failed() {
        return Err("the spill log stopped on an I/O error; run it again".into());
    }
    if left.batches > 0 {
        return Err(format!(
            "{} batches ({} audio bytes) not uploaded within upload_drain_ms = {} ms; they stay \
             in the log (run it again, or raise --upload-drain-ms)",
            left.batches, left.audio_bytes, config.upload_drain_ms
        ));
    }
    let dir = spill_dir(&config.data_dir);
    let disk = Arc::clone(&log.shared.disk);
    let segments = list_segments(&*disk, &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (_, path) in &segments {
        disk.remove_file(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    tracing::info!(
        uploaded = upload_metrics.succeeded(),
        removed_segments = segments.len(),
        "spill drain: the log is empty"
    );
    drop(lock);
    Ok(())
}
