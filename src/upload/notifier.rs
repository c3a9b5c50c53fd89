//! Chunk notifications (docs/downstream.md §2): after a batch's upload confirmation is durable,
//! one POST to `chunk_notification_url`, with at most `chunk_notification_attempts_max` attempts
//! of `chunk_notification_timeout_ms` each.
//!
//! Bounds: [`NOTIFICATION_QUEUE_CAPACITY`] waiting (beyond: dropped, counted); as many in
//! flight as uploads (`upload_concurrency`). Why this sender is not egress's:
//! `docs/0014-chunk-notifications-stay-with-the-uploader.md`.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};

use super::backoff::Backoff;
use super::metrics::{NotificationResult, UploadMetrics};
use crate::config::Config;
use crate::id::Id;

/// Chunk notifications waiting to be sent; beyond, one is dropped (counted).
pub const NOTIFICATION_QUEUE_CAPACITY: usize = 4096;

/// A notifier and the receiving end of its queue (for [`send_all`]).
pub type Started = (Arc<Notifier>, mpsc::Receiver<Notification>);

/// The chunk-notification sender: its HTTP client, target and bounds, and the queue in front.
pub struct Notifier {
    client: reqwest::Client,
    url: String,
    attempts_max: u32,
    backoff: Backoff,
    metrics: UploadMetrics,
    queue: mpsc::Sender<Notification>,
}

impl Notifier {
    /// The notifier `config` asks for (none without `chunk_notification_url`), with the
    /// receiving end of its queue for [`send_all`].
    pub fn from_config(
        config: &Config,
        backoff: Backoff,
        metrics: UploadMetrics,
    ) -> Result<Option<Started>, String> {
        let Some(url) = &config.chunk_notification_url else {
            return Ok(None);
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.chunk_notification_timeout_ms))
            .build()
            .map_err(|e| format!("chunk notification client: {e}"))?;
        let (queue, receiver) = mpsc::channel(NOTIFICATION_QUEUE_CAPACITY);
        let notifier = Notifier {
            client,
            url: url.clone(),
            attempts_max: config.chunk_notification_attempts_max.max(1),
            backoff,
            metrics,
            queue,
        };
        Ok(Some((Arc::new(notifier), receiver)))
    }

    /// Queues a notification without waiting; a full queue drops it (counted).
    pub fn queue(&self, notification: Notification) {
        if self.queue.try_send(notification).is_err() {
            self.metrics.notification(NotificationResult::Dropped);
        }
    }
}

/// A chunk notification waiting to be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The batch's user.
    pub uid: Id,
    /// The batch's conversation (`conversation_id`).
    pub conversation: Id,
    /// The object key, without the store's prefix.
    pub key: String,
    /// The batch's first-frame timestamp, epoch seconds.
    pub timestamp: f64,
    /// Audio (PCM) bytes of the batch, before encryption.
    pub bytes: u64,
    /// The session's sample rate in Hz.
    pub sample_rate_hz: u32,
}

/// The JSON body of docs/downstream.md §2.
#[derive(Serialize)]
struct NotificationBody<'a> {
    uid: &'a str,
    conversation_id: &'a str,
    key: &'a str,
    timestamp: f64,
    bytes: u64,
    sample_rate: u32,
}

impl Notification {
    fn body(&self) -> NotificationBody<'_> {
        NotificationBody {
            uid: self.uid.as_str(),
            conversation_id: self.conversation.as_str(),
            key: &self.key,
            timestamp: self.timestamp,
            bytes: self.bytes,
            sample_rate: self.sample_rate_hz,
        }
    }
}

/// Whether a notification answered with `status` is worth another attempt.
pub(super) fn retryable(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
}

/// Sends queued notifications, at most `concurrency` at once.
pub async fn send_all(
    notifier: Arc<Notifier>,
    concurrency: usize,
    mut queue: mpsc::Receiver<Notification>,
) {
    let permits = Arc::new(Semaphore::new(concurrency));
    loop {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let Some(notification) = queue.recv().await else {
            return;
        };
        let notifier = notifier.clone();
        tokio::spawn(async move {
            let result = notify(&notifier, &notification).await;
            notifier.metrics.notification(result);
            drop(permit);
        });
    }
}

async fn notify(notifier: &Notifier, notification: &Notification) -> NotificationResult {
    let body = notification.body();
    for attempt in 0..notifier.attempts_max {
        if attempt > 0 {
            tokio::time::sleep(notifier.backoff.delay(attempt - 1, rand::random())).await;
        }
        match notifier.client.post(&notifier.url).json(&body).send().await {
            Ok(response) if response.status().is_success() => return NotificationResult::Ok,
            Ok(response) if !retryable(response.status()) => {
                tracing::debug!(key = %notification.key, status = %response.status(), "chunk notification refused");
                return NotificationResult::Failed;
            }
            Ok(response) => {
                tracing::debug!(key = %notification.key, attempt, status = %response.status(), "chunk notification failed")
            }
            Err(e) => {
                tracing::debug!(key = %notification.key, attempt, "chunk notification failed: {e}")
            }
        }
    }
    NotificationResult::Failed
}
