//! Private-cloud audio from the outside: the spill log and uploader gauges of pusher's
//! `/metrics` (the upload lag), the wait until everything is uploaded, and the per-uid
//! comparison of the PCM bytes a scenario sent with the plaintext bytes the store received.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::downstream;
use crate::http;
use crate::prometheus::{self, Scrape};

/// Period of the /metrics reads while waiting for the uploads to finish.
const DRAIN_POLL: Duration = Duration::from_millis(500);

/// The upload-lag gauges of one /metrics reading.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lag {
    pub pending_bytes: f64,
    pub pending_batches: f64,
    pub oldest_age_s: f64,
    pub in_flight: f64,
    pub queued: f64,
    pub uploaded: f64,
    pub failed_attempts: f64,
    pub full: f64,
    /// `pusher_upload_store_healthy`: 1 until a put fails, 0 until one succeeds again.
    pub store_healthy: f64,
    pub retries: f64,
    /// Session-seconds not read because the spill hand-off or disk budget was full.
    pub backpressure_s: f64,
}

impl Lag {
    pub fn of(scrape: &Scrape) -> Lag {
        Lag {
            pending_bytes: scrape.value("pusher_spill_pending_bytes"),
            pending_batches: scrape.value("pusher_spill_pending_batches"),
            oldest_age_s: scrape.value("pusher_spill_oldest_pending_batch_age_seconds"),
            in_flight: scrape.value("pusher_upload_in_flight"),
            queued: scrape.value("pusher_upload_queued"),
            uploaded: scrape.value("pusher_upload_succeeded_total"),
            failed_attempts: scrape.sum("pusher_upload_attempts_failed_total"),
            full: scrape.value("pusher_spill_full"),
            store_healthy: scrape.value("pusher_upload_store_healthy"),
            retries: scrape.value("pusher_upload_retries_total"),
            backpressure_s: scrape.value("pusher_spill_backpressure_seconds_total"),
        }
    }

    /// Nothing left in the log to upload.
    pub fn drained(&self) -> bool {
        self.pending_batches == 0.0 && self.in_flight == 0.0 && self.queued == 0.0
    }
}

/// Bytes sent and stored, compared per uid.
#[derive(Debug, Default, PartialEq)]
pub struct Reconciliation {
    pub uids: usize,
    pub uids_exact: usize,
    pub uids_short: usize,
    pub uids_over: usize,
    /// Stored objects whose uid is not one the tool sent as.
    pub foreign_objects: usize,
    pub bytes_sent: u64,
    pub bytes_stored: u64,
    /// Sum over uids of what is missing (sent − stored when positive): the bytes lost.
    pub bytes_missing: u64,
    /// Sum over uids of stored − sent when positive.
    pub bytes_extra: u64,
    pub objects: usize,
    /// Puts beyond the first of a key (the same object uploaded again).
    pub repeated_puts: u64,
}

/// One object the sink recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    pub key: String,
    pub plaintext_bytes: u64,
    pub puts: u64,
}

/// Compares PCM bytes sent per uid with plaintext bytes stored per uid.
pub fn reconcile(sent: &BTreeMap<String, u64>, stored: &[StoredObject]) -> Reconciliation {
    let mut by_uid: BTreeMap<&str, u64> = BTreeMap::new();
    let mut result = Reconciliation {
        objects: stored.len(),
        ..Reconciliation::default()
    };
    for object in stored {
        result.repeated_puts += object.puts.saturating_sub(1);
        match downstream::uid_of_key(&object.key).filter(|uid| sent.contains_key(*uid)) {
            Some(uid) => *by_uid.entry(uid).or_default() += object.plaintext_bytes,
            None => result.foreign_objects += 1,
        }
    }
    for (uid, &sent_bytes) in sent {
        let stored_bytes = by_uid.get(uid.as_str()).copied().unwrap_or(0);
        result.uids += 1;
        result.bytes_sent += sent_bytes;
        result.bytes_stored += stored_bytes;
        if stored_bytes == sent_bytes {
            result.uids_exact += 1;
        } else if stored_bytes < sent_bytes {
            result.uids_short += 1;
            result.bytes_missing += sent_bytes - stored_bytes;
        } else {
            result.uids_over += 1;
            result.bytes_extra += stored_bytes - sent_bytes;
        }
    }
    result
}

/// The objects of the sink's `/_sink/objects` answer.
pub fn stored_objects(recorded: &Value) -> Result<Vec<StoredObject>, String> {
    let objects = recorded["objects"]
        .as_object()
        .ok_or("the sink's answer has no \"objects\"")?;
    objects
        .iter()
        .map(|(key, object)| {
            let field = |name: &str| {
                object[name]
                    .as_u64()
                    .ok_or_else(|| format!("sink object {key}: no {name}"))
            };
            Ok(StoredObject {
                key: key.clone(),
                plaintext_bytes: field("plaintext_bytes")?,
                puts: field("puts")?,
            })
        })
        .collect()
}

impl Reconciliation {
    /// The comparison as the result's `sink` object.
    pub fn to_json(&self) -> Value {
        json!({
            "uids": self.uids,
            "uids_exact": self.uids_exact,
            "uids_short": self.uids_short,
            "uids_over": self.uids_over,
            "objects": self.objects,
            "foreign_objects": self.foreign_objects,
            "repeated_puts": self.repeated_puts,
            "pcm_bytes_sent": self.bytes_sent,
            "plaintext_bytes_stored": self.bytes_stored,
            "bytes_missing": self.bytes_missing,
            "bytes_extra": self.bytes_extra,
        })
    }

    /// One line for the human summary.
    pub fn summary(&self) -> String {
        format!(
            "sink: {} objects, {} uids exact, {} short, {} over; {} B sent, {} B stored, {} B missing, {} B extra",
            self.objects,
            self.uids_exact,
            self.uids_short,
            self.uids_over,
            self.bytes_sent,
            self.bytes_stored,
            self.bytes_missing,
            self.bytes_extra
        )
    }
}

/// Polls `/metrics` until nothing is pending, queued or uploading, at most until `deadline`:
/// the last reading, or `None` if the log did not drain in time.
pub async fn wait_for_drain(addr: SocketAddr, deadline: Instant) -> Option<Lag> {
    while Instant::now() < deadline {
        if let Ok(scrape) = prometheus::scrape(addr).await {
            let lag = Lag::of(&scrape);
            if lag.drained() {
                return Some(lag);
            }
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
    None
}

/// For a target without pusher's `/metrics` (a peer), where the upload lag cannot be read:
/// polls the sink's record (`GET /_sink/objects`) until it holds every byte of `sent` (PCM bytes
/// by uid), at most until `deadline`. Whether it did.
pub async fn wait_for_sink(
    sink: SocketAddr,
    sent: &BTreeMap<String, u64>,
    deadline: Instant,
) -> bool {
    while Instant::now() < deadline {
        if let Ok(text) = http::get_ok_text(sink, "/_sink/objects", Duration::from_secs(30)).await
            && let Ok(recorded) = serde_json::from_str::<Value>(&text)
            && let Ok(stored) = stored_objects(&recorded)
            && reconcile(sent, &stored).bytes_missing == 0
        {
            return true;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(key: &str, plaintext_bytes: u64, puts: u64) -> StoredObject {
        StoredObject {
            key: key.to_owned(),
            plaintext_bytes,
            puts,
        }
    }

    #[test]
    fn reconciliation_counts_missing_and_extra_bytes_per_uid() {
        let sent: BTreeMap<String, u64> = [
            ("stream-0".to_owned(), 3000),
            ("stream-1".to_owned(), 2000),
            ("stream-2".to_owned(), 1000),
            ("stream-3".to_owned(), 0),
        ]
        .into();
        let stored = [
            object("audio/chunks/stream-0/c-0/1.000.enc", 1000, 1),
            object("audio/chunks/stream-0/c-0-1/2.000.enc", 2000, 2),
            object("audio/chunks/stream-1/c-1/1.000.enc", 1500, 1),
            object("audio/chunks/stream-2/c-2/1.000.enc", 1200, 1),
            object("audio/chunks/other/c/1.000.enc", 10, 1),
            object("not-a-chunk", 10, 1),
        ];
        assert_eq!(
            reconcile(&sent, &stored),
            Reconciliation {
                uids: 4,
                uids_exact: 2,
                uids_short: 1,
                uids_over: 1,
                foreign_objects: 2,
                bytes_sent: 6000,
                bytes_stored: 5700,
                bytes_missing: 500,
                bytes_extra: 200,
                objects: 6,
                repeated_puts: 1,
            }
        );
    }

    #[test]
    fn stored_objects_come_from_the_sink_answer() {
        let answer = json!({
            "puts": 2,
            "objects": {
                "chunks/u/c/1.000.enc": {"bytes": 1032, "plaintext_bytes": 1000, "puts": 1},
                "chunks/u/c/2.000.enc": {"bytes": 32, "plaintext_bytes": 0, "puts": 1},
            }
        });
        let objects = stored_objects(&answer).unwrap();
        assert_eq!(
            objects,
            [
                object("chunks/u/c/1.000.enc", 1000, 1),
                object("chunks/u/c/2.000.enc", 0, 1)
            ]
        );
        assert!(stored_objects(&json!({"puts": 0})).is_err());
        assert!(stored_objects(&json!({"objects": {"k": {"bytes": 1}}})).is_err());
    }

    #[test]
    fn lag_is_drained_when_nothing_is_pending_queued_or_in_flight() {
        let scrape = Scrape::parse(
            "pusher_spill_pending_bytes 0\npusher_spill_pending_batches 0\n\
             pusher_upload_in_flight 0\npusher_upload_queued 0\npusher_upload_succeeded_total 12\n\
             pusher_upload_attempts_failed_total{reason=\"store\"} 2\n\
             pusher_upload_store_healthy 1\npusher_upload_retries_total 3\n\
             pusher_spill_backpressure_seconds_total 1.5\n",
        );
        let lag = Lag::of(&scrape);
        assert!(lag.drained());
        assert_eq!(
            (lag.store_healthy, lag.retries, lag.backpressure_s),
            (1.0, 3.0, 1.5)
        );
        assert_eq!(lag.uploaded, 12.0);
        assert_eq!(lag.failed_attempts, 2.0);
        let busy = Lag::of(&Scrape::parse("pusher_upload_in_flight 1\n"));
        assert!(!busy.drained());
    }
}
