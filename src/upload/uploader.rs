//! The upload thread: a current-thread tokio runtime (object_store and reqwest need tokio; monoio
//! threads never await its futures) fed through a bounded queue.
//!
//! Per job: read the batch's audio (blocking pool), encrypt it if the level is `enhanced`, `put`
//! it under its object key with `Content-Type: application/octet-stream`, each attempt bounded by
//! `upload_timeout_ms`; on failure wait [`Backoff`] and try again, **forever** (the batch stays in
//! the spill log until the store confirms). Then [`BatchSource::uploaded`], which returns once
//! the confirmation is durable in the log (a restart will neither upload nor notify the batch
//! again), then the optional chunk notification (bounded attempts; a failure is counted and
//! dropped). A batch with holes (damage in the log) goes to its `.partial` key, counted in
//! `pusher_upload_partial_total`, and is not notified: it is not a whole chunk.
//!
//! Bounds:
//! - jobs queued: `queue_capacity` given to [`start`] (≤ [`QUEUE_CAPACITY_MAX`]); a full queue
//!   refuses [`UploaderHandle::submit`] and the caller keeps the job;
//! - uploads at once: `upload_concurrency` (a semaphore; a job takes a permit before it leaves the
//!   queue, so a slow store backs up into the queue, not into memory). Memory: each upload holds
//!   one body buffer of `BodyBuffers` (allocated and faulted in at start, `upload_buffer_bytes`
//!   each), which the batch's audio is read into and encrypted in place;
//! - blocking threads: [`BLOCKING_THREADS`] (audio reads and encryption, local-store writes, DNS
//!   lookups): that work is CPU- or disk-bound, so more threads than cores only add stacks and
//!   per-thread allocator caches (measured: RSS grew with the number of blocking threads);
//! - chunk notifications ([`super::notifier`]):
//!   [`NOTIFICATION_QUEUE_CAPACITY`](super::notifier::NOTIFICATION_QUEUE_CAPACITY) waiting
//!   (beyond: dropped, counted) and `upload_concurrency` in flight,
//!   `chunk_notification_attempts_max` attempts of `chunk_notification_timeout_ms` each;
//! - an unreadable batch: after [`READ_ATTEMPTS_MAX`] failed reads in a row the job is set aside
//!   (`pusher_upload_unreadable_batches`, one ERROR line) and gives its slot back, so damage in
//!   the log or a failing disk cannot hold every slot; it stays in the log and is tried again
//!   every `upload_backoff_ms_max` (a set-aside list of at most one entry per indexed batch).
//!
//! Store health: the `pusher_upload_store_healthy` gauge is 1 until a put fails or times out, 0
//! until one succeeds again; each change (not each attempt) is logged once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{Attribute, AttributeValue, Attributes, ObjectStore, PutOptions, PutPayload};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::backoff::Backoff;
use super::body::{Body, BodyBuffers, LentBuffer};
use super::crypto::{BLOB_HEADER_BYTES, EncryptionSecret, PlaintextTooLarge, seal_in_place};
use super::health::StoreHealth;
use super::job::{BatchSource, UploadJob};
use super::metrics::{FailureReason, UploadMetrics};
use super::notifier::{self, Notification, Notifier};
use super::object_key::is_encrypted;
use super::store::Store;
use crate::config::Config;

/// Largest job queue [`start`] accepts (each slot is one [`UploadJob`], ~300 bytes).
pub const QUEUE_CAPACITY_MAX: usize = 1 << 20;
/// Threads of the uploader's blocking pool.
pub const BLOCKING_THREADS: usize = 4;
/// Reads of a batch's audio that fail in a row before the job is set aside (it then holds no
/// upload slot, and is tried again every `upload_backoff_ms_max`).
pub const READ_ATTEMPTS_MAX: u32 = 3;
/// After the loop stops, how long the runtime waits for blocking work (a read in progress).
const RUNTIME_SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
const CONTENT_TYPE: &str = "application/octet-stream";

/// Submits jobs to the upload thread and stops it.
pub struct UploaderHandle {
    jobs: mpsc::Sender<UploadJob>,
    queued: Gauge,
    stop: Option<oneshot::Sender<Duration>>,
    thread: Option<JoinHandle<()>>,
}

impl UploaderHandle {
    /// Queues `job` without blocking (callable from any thread); a full queue (or a stopped
    /// uploader) gives the job back, and the caller submits it again later.
    // The job comes back by value (no allocation on the refusal path): the caller keeps it.
    #[allow(clippy::result_large_err)]
    pub fn submit(&self, job: UploadJob) -> Result<(), UploadJob> {
        self.queued.inc();
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job) | TrySendError::Closed(job)) => {
                self.queued.dec();
                Err(job)
            }
        }
    }

    /// Stops taking jobs, gives uploads in flight up to `grace` to finish, then abandons the rest
    /// and joins the thread. Abandoned and queued jobs stay in the spill log for the next process.
    /// (Dropping the handle stops the uploader the same way with no grace, without joining.)
    pub fn shutdown(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(grace);
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the upload thread panicked");
        }
    }
}

/// Starts the upload thread. `secret` may be None only when no user's settings can select level
/// `enhanced` (the server checks this at start); an `enhanced` batch without it is retried, never
/// stored in the clear.
pub fn start(
    config: &Config,
    store: Store,
    secret: Option<EncryptionSecret>,
    source: Arc<dyn BatchSource>,
    metrics: UploadMetrics,
    queue_capacity: usize,
) -> Result<UploaderHandle, String> {
    if queue_capacity == 0 || queue_capacity > QUEUE_CAPACITY_MAX {
        return Err(format!(
            "upload queue capacity {queue_capacity} is outside 1..={QUEUE_CAPACITY_MAX}"
        ));
    }
    let concurrency = config.upload_concurrency.max(1);
    let backoff = Backoff::new(config.upload_backoff_ms_min, config.upload_backoff_ms_max);
    let (notifier, notifications) = match Notifier::from_config(config, backoff, metrics.clone())? {
        Some((notifier, receiver)) => (Some(notifier), Some(receiver)),
        None => (None, None),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name("pusher-upload-io")
        .build()
        .map_err(|e| format!("upload runtime: {e}"))?;
    let (jobs, jobs_rx) = mpsc::channel(queue_capacity);
    let (stop, stop_rx) = oneshot::channel();
    let queued = metrics.queued.clone();
    let context = Arc::new(Context {
        store: store.objects,
        buffers: BodyBuffers::new(concurrency, config.upload_buffer_bytes),
        content_type: store.keeps_attributes,
        secret,
        source,
        health: StoreHealth::new(metrics.store_healthy.clone()),
        metrics,
        backoff,
        attempt_timeout: Duration::from_millis(config.upload_timeout_ms),
        notifier,
        unreadable: Mutex::new(Vec::new()),
        unreadable_retry: Duration::from_millis(config.upload_backoff_ms_max),
    });
    let thread = std::thread::Builder::new()
        .name("pusher-upload".into())
        .spawn(move || {
            runtime.block_on(run(context, concurrency, jobs_rx, stop_rx, notifications));
            runtime.shutdown_timeout(RUNTIME_SHUTDOWN_WAIT);
        })
        .map_err(|e| format!("upload thread: {e}"))?;
    Ok(UploaderHandle {
        jobs,
        queued,
        stop: Some(stop),
        thread: Some(thread),
    })
}

struct Context {
    store: Arc<dyn ObjectStore>,
    buffers: Arc<BodyBuffers>,
    /// Put with `Content-Type: application/octet-stream` (stores that keep attributes).
    content_type: bool,
    secret: Option<EncryptionSecret>,
    source: Arc<dyn BatchSource>,
    metrics: UploadMetrics,
    health: StoreHealth,
    backoff: Backoff,
    attempt_timeout: Duration,
    notifier: Option<Arc<Notifier>>,
    /// Jobs whose audio could not be read [`READ_ATTEMPTS_MAX`] times in a row, set aside so
    /// that they hold no upload slot; retried every `unreadable_retry`. At most one entry per
    /// batch of the log (bounded by `spill_batches_max`, like the queue).
    unreadable: Mutex<Vec<Unreadable>>,
    unreadable_retry: Duration,
}

/// A job set aside because its audio could not be read.
struct Unreadable {
    job: UploadJob,
    /// Times it was set aside (its first one is logged at ERROR, later ones at DEBUG).
    rounds: u32,
}

/// The dispatcher: one permit, then one job, then a task; until stopped. Every
/// `unreadable_retry` the set-aside jobs become due again and go first (each with a permit, like
/// any job).
async fn run(
    context: Arc<Context>,
    concurrency: usize,
    mut jobs: mpsc::Receiver<UploadJob>,
    mut stop: oneshot::Receiver<Duration>,
    notifications: Option<mpsc::Receiver<Notification>>,
) {
    if let (Some(notifier), Some(receiver)) = (&context.notifier, notifications) {
        tokio::spawn(notifier::send_all(notifier.clone(), concurrency, receiver));
    }
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut retry = tokio::time::interval(context.unreadable_retry);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set-aside jobs due for another try; at most one per set-aside job.
    let mut due: VecDeque<Unreadable> = VecDeque::new();
    let grace = loop {
        let permit = tokio::select! {
            biased;
            grace = &mut stop => break grace.unwrap_or(Duration::ZERO),
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        if let Some(Unreadable { job, rounds }) = due.pop_front() {
            context.metrics.retries.inc();
            tokio::spawn(upload(context.clone(), job, permit, rounds));
            continue;
        }
        let job = tokio::select! {
            biased;
            grace = &mut stop => break grace.unwrap_or(Duration::ZERO),
            _ = retry.tick() => {
                due.extend(std::mem::take(&mut *context.unreadable.lock().expect("unreadable lock")));
                continue;
            }
            job = jobs.recv() => match job {
                Some(job) => job,
                None => break Duration::ZERO,
            },
        };
        context.metrics.queued.dec();
        tokio::spawn(upload(context.clone(), job, permit, 0));
    };
    let all = u32::try_from(concurrency).expect("upload_concurrency is at most 256");
    if tokio::time::timeout(grace, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::info!(
            in_flight = context.metrics.in_flight.get(),
            "upload shutdown: abandoning uploads in flight; their batches stay in the spill log"
        );
    }
}

/// Why one attempt failed.
#[derive(Debug)]
enum Failure {
    Read(std::io::Error),
    /// An `enhanced` batch but no secret: the server refuses to start when settings can select
    /// `enhanced` without a secret, so this is a bug; the batch is retried, never stored in the clear.
    NoSecret,
    TooLarge(PlaintextTooLarge),
    Store(object_store::Error),
    Timeout(Duration),
}

impl Failure {
    fn reason(&self) -> FailureReason {
        match self {
            Failure::Read(_) => FailureReason::Read,
            Failure::NoSecret | Failure::TooLarge(_) => FailureReason::Encrypt,
            Failure::Store(_) => FailureReason::Store,
            Failure::Timeout(_) => FailureReason::Timeout,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Read(e) => write!(f, "reading the batch: {e}"),
            Failure::NoSecret => write!(f, "an enhanced batch but no encryption secret"),
            Failure::TooLarge(e) => write!(f, "{e}"),
            Failure::Store(e) => write!(f, "{e}"),
            Failure::Timeout(t) => write!(f, "no answer within {} ms", t.as_millis()),
        }
    }
}

/// Uploads one job until the store confirms it; holds `permit` until then.
/// `rounds`: times the job was set aside before (0 for a job from the queue).
async fn upload(context: Arc<Context>, job: UploadJob, permit: OwnedSemaphorePermit, rounds: u32) {
    let metrics = &context.metrics;
    metrics.in_flight.inc();
    let key = job.object_key();
    let path = Path::parse(&key).expect("object keys are valid paths (object_key module doc)");
    let mut body: Option<Body> = None;
    let mut attempt: u32 = 0;
    let mut reads_failed: u32 = 0;
    loop {
        match attempt_upload(&context, &job, &path, &mut body).await {
            Ok(()) => break,
            Err(failure) => {
                metrics.attempt_failed(failure.reason());
                reads_failed = match failure {
                    Failure::Read(_) => reads_failed + 1,
                    _ => 0,
                };
                if reads_failed >= READ_ATTEMPTS_MAX {
                    set_aside(&context, job, rounds, &key, &failure);
                    metrics.in_flight.dec();
                    drop(permit);
                    return;
                }
                match &failure {
                    Failure::NoSecret => tracing::error!(%key, "bug: {failure}; retrying"),
                    // Store failures are reported by the health transitions, not per attempt.
                    Failure::Store(_) | Failure::Timeout(_) => {
                        tracing::debug!(%key, attempt, "upload failed: {failure}")
                    }
                    Failure::Read(_) | Failure::TooLarge(_) if attempt == 0 => {
                        tracing::warn!(%key, "upload failed, retrying: {failure}")
                    }
                    Failure::Read(_) | Failure::TooLarge(_) => {
                        tracing::debug!(%key, attempt, "upload failed: {failure}")
                    }
                }
                tokio::time::sleep(context.backoff.delay(attempt, rand::random())).await;
                attempt = attempt.saturating_add(1);
                metrics.retries.inc();
            }
        }
    }
    debug_assert!(body.is_some(), "a stored batch had its body read");
    let audio_bytes = body.as_ref().map_or(0, |b| b.audio_bytes);
    drop(body);
    let source = context.source.clone();
    let confirmed = job.clone();
    let (durable, is_durable) = oneshot::channel();
    let done: Box<dyn FnOnce() + Send> = Box::new(move || {
        let _ = durable.send(());
    });
    if let Err(e) = tokio::task::spawn_blocking(move || source.uploaded(&confirmed, done)).await {
        tracing::error!(%key, "BatchSource::uploaded failed: {e}");
    }
    // The permit is held until the confirmation is durable: at most `upload_concurrency`
    // confirmations wait for the log.
    let durable = is_durable.await.is_ok();
    metrics.in_flight.dec();
    drop(permit);
    if !durable {
        // The log stopped (the process exits): the batch is uploaded again by the next one.
        tracing::warn!(%key, "the upload's confirmation did not become durable");
        return;
    }
    metrics.succeeded.inc();
    if rounds > 0 {
        metrics.unreadable.dec();
        tracing::info!(%key, "a batch set aside as unreadable was read and stored");
    }
    if job.partial {
        metrics.partial.inc();
        tracing::warn!(
            %key,
            "stored a batch with holes (records lost to damage in the spill log) under its \
             .partial key; no chunk notification"
        );
        return;
    }
    if let Some(notifier) = &context.notifier {
        debug_assert!(
            durable && !job.partial,
            "only a durable, whole batch is notified"
        );
        let notification = Notification {
            uid: job.uid,
            conversation: job.conversation,
            key,
            timestamp: job.timestamp,
            bytes: audio_bytes,
            sample_rate_hz: job.sample_rate_hz,
        };
        notifier.queue(notification);
    }
}

/// Sets aside a job whose audio could not be read: it gives its upload slot back (a damaged or
/// unreadable batch must not stop the others) and stays in the log, tried again every
/// `unreadable_retry`; nothing is dropped.
fn set_aside(context: &Context, job: UploadJob, rounds: u32, key: &str, failure: &Failure) {
    if rounds == 0 {
        context.metrics.unreadable.inc();
        tracing::error!(
            %key,
            "cannot read the batch's audio from the spill log ({READ_ATTEMPTS_MAX} attempts): \
             {failure}; it stays in the log and is tried again every {} ms without holding an \
             upload slot (`pusher spill inspect` shows the log)",
            context.unreadable_retry.as_millis()
        );
    } else {
        tracing::debug!(%key, rounds, "batch still unreadable: {failure}");
    }
    context
        .unreadable
        .lock()
        .expect("unreadable lock")
        .push(Unreadable {
            job,
            rounds: rounds + 1,
        });
}

async fn attempt_upload(
    context: &Context,
    job: &UploadJob,
    path: &Path,
    body: &mut Option<Body>,
) -> Result<(), Failure> {
    let payload = match body {
        Some(body) => body.payload.clone(),
        None => body.insert(prepare(context, job).await?).payload.clone(),
    };
    let length = payload.content_length() as u64;
    let mut attributes = Attributes::new();
    if context.content_type {
        attributes.insert(Attribute::ContentType, AttributeValue::from(CONTENT_TYPE));
    }
    let options = PutOptions {
        attributes,
        ..PutOptions::default()
    };
    let started = Instant::now();
    let put = context.store.put_opts(path, payload, options);
    let result = match tokio::time::timeout(context.attempt_timeout, put).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Failure::Store(e)),
        Err(_) => Err(Failure::Timeout(context.attempt_timeout)),
    };
    match &result {
        Ok(()) => {
            context
                .metrics
                .duration
                .observe(started.elapsed().as_secs_f64());
            context.metrics.bytes.inc_by(length);
        }
        Err(failure) => {
            if context.health.record(false) {
                tracing::warn!(
                    store = %context.store,
                    "object store failing; uploads are retried until it recovers: {failure}"
                );
            }
            return result;
        }
    }
    if context.health.record(true) {
        tracing::info!(store = %context.store, "object store healthy again");
    }
    result
}

/// Reads (and, for `enhanced`, encrypts) the batch on the blocking pool.
async fn prepare(context: &Context, job: &UploadJob) -> Result<Body, Failure> {
    let source = context.source.clone();
    let secret = context.secret.clone();
    let job = job.clone();
    let buffers = context.buffers.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        let encrypted = is_encrypted(job.level);
        let header = if encrypted { BLOB_HEADER_BYTES } else { 0 };
        let mut buffer = buffers.take();
        buffer.resize(header, 0);
        let lent = |buffer| LentBuffer {
            buffer,
            pool: buffers.clone(),
        };
        if let Err(error) = source.read_audio(&job, &mut buffer) {
            drop(lent(buffer));
            return Err(Failure::Read(error));
        }
        let audio_bytes = (buffer.len() - header) as u64;
        if audio_bytes != job.audio_bytes {
            tracing::warn!(
                uid = %job.uid,
                conversation = %job.conversation,
                declared = job.audio_bytes,
                read = audio_bytes,
                "batch audio length differs from its declared length; uploading what was read"
            );
        }
        let mut body = lent(buffer);
        if encrypted {
            let secret = secret.ok_or(Failure::NoSecret)?;
            seal_in_place(&secret, job.uid.as_str(), &mut body.buffer)
                .map_err(Failure::TooLarge)?;
        }
        Ok(Body {
            payload: PutPayload::from_bytes(Bytes::from_owner(body)),
            audio_bytes,
        })
    })
    .await;
    match prepared {
        Ok(result) => result,
        Err(e) => Err(Failure::Read(std::io::Error::other(format!(
            "reading the batch panicked: {e}"
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;
    use crate::settings::DataProtectionLevel;
    use crate::upload::BatchKey;
    use crate::upload::crypto::{SECRET_ENV, decrypt_blob};
    use crate::upload::metrics::NotificationResult;
    use crate::upload::notifier::retryable;
    use crate::upload::object_key::object_key;
    use async_trait::async_trait;
    use futures_util::stream::BoxStream;
    use object_store::memory::InMemory;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
        PutMultipartOptions, PutResult,
    };
    use prometheus_client::registry::Registry;
    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::{AtomicBool, Ordering};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    /// Decrements `counter` if it is positive; true when it did.
    fn take_one(counter: &AtomicUsize) -> bool {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    /// InMemory with injected faults: the first puts fail or hang, puts can be held, and
    /// concurrent puts are counted.
    #[derive(Debug, Default)]
    struct FakeStore {
        inner: InMemory,
        fail_first: AtomicUsize,
        hang_first: AtomicUsize,
        hold: AtomicBool,
        delay: Duration,
        attempts: Mutex<HashMap<String, usize>>,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
    }

    struct InFlight<'a>(&'a AtomicUsize);

    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }

    impl std::fmt::Display for FakeStore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("FakeStore")
        }
    }

    #[async_trait]
    impl ObjectStore for FakeStore {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            let now = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
            let _in_flight = InFlight(&self.in_flight);
            self.max_in_flight.fetch_max(now, Ordering::AcqRel);
            *self
                .attempts
                .lock()
                .unwrap()
                .entry(location.to_string())
                .or_default() += 1;
            while self.hold.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(self.delay).await;
            if take_one(&self.hang_first) {
                std::future::pending::<()>().await;
            }
            if take_one(&self.fail_first) {
                return Err(object_store::Error::Generic {
                    store: "FakeStore",
                    source: "injected failure".into(),
                });
            }
            self.inner.put_opts(location, payload, opts).await
        }

        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(
            &self,
            location: &Path,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            self.inner.get_opts(location, options).await
        }

        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<Path>>,
        ) -> BoxStream<'static, object_store::Result<Path>> {
            self.inner.delete_stream(locations)
        }

        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }

        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    impl FakeStore {
        fn attempts_total(&self) -> usize {
            self.attempts.lock().unwrap().values().sum()
        }

        /// The stored object and its content type.
        fn object(&self, key: &str) -> (Vec<u8>, Option<String>) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let got = self
                    .inner
                    .get_opts(&Path::parse(key).unwrap(), GetOptions::default())
                    .await
                    .unwrap();
                let content_type = got
                    .attributes
                    .get(&Attribute::ContentType)
                    .map(|v| v.to_string());
                (got.bytes().await.unwrap().to_vec(), content_type)
            })
        }
    }

    /// Audio made from the batch id; the first reads can fail, and so can every read of the
    /// batches listed in `unreadable`.
    #[derive(Default)]
    struct FakeSource {
        read_failures: AtomicUsize,
        unreadable: Mutex<Vec<u64>>,
        uploaded: Mutex<Vec<BatchKey>>,
    }

    fn audio_of(key: BatchKey) -> Vec<u8> {
        (0..1000 + key.batch as usize)
            .map(|i| (i as u64 * 31 + key.batch) as u8)
            .collect()
    }

    impl BatchSource for FakeSource {
        fn read_audio(&self, job: &UploadJob, out: &mut Vec<u8>) -> std::io::Result<()> {
            if take_one(&self.read_failures) {
                return Err(std::io::Error::other("injected read failure"));
            }
            if self.unreadable.lock().unwrap().contains(&job.key.batch) {
                return Err(std::io::Error::other("injected damage"));
            }
            out.extend_from_slice(&audio_of(job.key));
            Ok(())
        }

        fn uploaded(&self, job: &UploadJob, confirmed: Box<dyn FnOnce() + Send>) {
            self.uploaded.lock().unwrap().push(job.key);
            confirmed();
        }
    }

    impl FakeSource {
        fn uploaded_count(&self) -> usize {
            self.uploaded.lock().unwrap().len()
        }
    }

    fn job(batch: u64, level: DataProtectionLevel) -> UploadJob {
        let key = BatchKey { run: 7, batch };
        UploadJob {
            key,
            uid: Id::parse(format!("user-{}", batch % 3).as_bytes()).unwrap(),
            conversation: Id::parse(format!("conv-{batch}").as_bytes()).unwrap(),
            timestamp: 1_700_000_000.25 + batch as f64,
            sample_rate_hz: 16_000,
            level,
            audio_bytes: audio_of(key).len() as u64,
            partial: false,
        }
    }

    fn key_of(job: &UploadJob) -> String {
        object_key(&job.uid, &job.conversation, job.timestamp, job.level)
    }

    fn test_config(concurrency: usize) -> Config {
        let config = Config {
            upload_concurrency: concurrency,
            upload_backoff_ms_min: 1,
            upload_backoff_ms_max: 20,
            upload_timeout_ms: 5_000,
            ..Config::default()
        };
        config.validate().unwrap();
        config
    }

    struct Running {
        handle: UploaderHandle,
        registry: Registry,
        metrics: UploadMetrics,
        store: Arc<FakeStore>,
        source: Arc<FakeSource>,
    }

    fn start_fake(
        config: &Config,
        store: FakeStore,
        source: FakeSource,
        capacity: usize,
    ) -> Running {
        let mut registry = Registry::with_prefix("pusher");
        let metrics = UploadMetrics::register(&mut registry);
        let store = Arc::new(store);
        let source = Arc::new(source);
        let handle = start(
            config,
            Store {
                objects: store.clone(),
                keeps_attributes: true,
            },
            Some(EncryptionSecret::new(SECRET, SECRET_ENV).unwrap()),
            source.clone(),
            metrics.clone(),
            capacity,
        )
        .unwrap();
        Running {
            handle,
            registry,
            metrics,
            store,
            source,
        }
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Every job's key was confirmed exactly once and its object holds its audio.
    fn assert_uploaded_once(running: &Running, jobs: &[UploadJob]) {
        let mut confirmed = running.source.uploaded.lock().unwrap().clone();
        confirmed.sort();
        let mut expected: Vec<BatchKey> = jobs.iter().map(|j| j.key).collect();
        expected.sort();
        assert_eq!(confirmed, expected);
        let secret = EncryptionSecret::new(SECRET, SECRET_ENV).unwrap();
        for job in jobs {
            let key = key_of(job);
            let (object, content_type) = running.store.object(&key);
            assert_eq!(content_type.as_deref(), Some(CONTENT_TYPE));
            let audio = if is_encrypted(job.level) {
                assert!(key.ends_with(".enc"), "{key}");
                decrypt_blob(&secret, job.uid.as_str(), &object).unwrap()
            } else {
                assert!(key.ends_with(".bin"), "{key}");
                object
            };
            assert_eq!(audio, audio_of(job.key), "{key}");
        }
    }

    #[test]
    fn uploads_each_job_once_and_encrypts_enhanced() {
        let running = start_fake(
            &test_config(4),
            FakeStore::default(),
            FakeSource::default(),
            64,
        );
        let levels = [
            DataProtectionLevel::Enhanced,
            DataProtectionLevel::Standard,
            DataProtectionLevel::E2ee,
        ];
        let jobs: Vec<UploadJob> = (0..30).map(|n| job(n, levels[n as usize % 3])).collect();
        for job in &jobs {
            running.handle.submit(job.clone()).unwrap();
        }
        // `succeeded` counts after the source confirmed the upload: waiting on it covers both.
        wait_until("30 uploads", || running.metrics.succeeded.get() == 30);
        assert_uploaded_once(&running, &jobs);
        assert_eq!(running.store.attempts_total(), 30);
        let m = &running.metrics;
        assert_eq!(m.succeeded.get(), 30);
        assert_eq!(m.retries.get(), 0);
        assert_eq!(m.store_healthy.get(), 1);
        let plain: u64 = jobs.iter().map(|j| j.audio_bytes).sum();
        let overhead = 10 * crate::upload::crypto::BLOB_OVERHEAD_BYTES as u64;
        assert_eq!(m.bytes.get(), plain + overhead);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &running.registry).unwrap();
        assert!(
            text.contains("pusher_upload_duration_seconds_count 30\n"),
            "{text}"
        );
        running.handle.shutdown(Duration::from_secs(1));
        assert_eq!(running.source.uploaded_count(), 30);
    }

    #[test]
    fn failed_puts_are_retried_until_the_store_recovers() {
        let store = FakeStore {
            fail_first: AtomicUsize::new(7),
            ..FakeStore::default()
        };
        let running = start_fake(&test_config(2), store, FakeSource::default(), 16);
        let jobs: Vec<UploadJob> = (0..3)
            .map(|n| job(n, DataProtectionLevel::Enhanced))
            .collect();
        for job in &jobs {
            running.handle.submit(job.clone()).unwrap();
        }
        wait_until("3 uploads", || running.metrics.succeeded.get() == 3);
        assert_uploaded_once(&running, &jobs);
        assert_eq!(running.store.attempts_total(), 3 + 7);
        let m = &running.metrics;
        assert_eq!(m.attempts_failed[2].get(), 7, "store failures");
        assert_eq!(m.retries.get(), 7);
        assert_eq!(m.succeeded.get(), 3);
        assert_eq!(m.store_healthy.get(), 1, "healthy again after a success");
        running.handle.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn timed_out_attempts_and_read_failures_are_retried() {
        let config = Config {
            upload_timeout_ms: 100,
            ..test_config(2)
        };
        let store = FakeStore {
            hang_first: AtomicUsize::new(2),
            ..FakeStore::default()
        };
        let source = FakeSource {
            read_failures: AtomicUsize::new(3),
            ..FakeSource::default()
        };
        let running = start_fake(&config, store, source, 16);
        let jobs: Vec<UploadJob> = (0..4)
            .map(|n| job(n, DataProtectionLevel::Standard))
            .collect();
        for job in &jobs {
            running.handle.submit(job.clone()).unwrap();
        }
        wait_until("4 uploads", || running.source.uploaded_count() == 4);
        assert_uploaded_once(&running, &jobs);
        let m = &running.metrics;
        assert_eq!(m.attempts_failed[0].get(), 3, "read failures");
        assert_eq!(m.attempts_failed[3].get(), 2, "timeouts");
        assert_eq!(m.retries.get(), 5);
        running.handle.shutdown(Duration::from_secs(1));
    }

    /// An unreadable batch (damage found after it was written, a failing disk) must not hold an
    /// upload slot: with one slot, the batches behind it are stored meanwhile; it stays set aside
    /// (counted), is tried again, and is stored once it can be read. Nothing is dropped.
    #[test]
    fn an_unreadable_batch_gives_its_slot_back_and_is_stored_once_readable() {
        let source = FakeSource {
            unreadable: Mutex::new(vec![0]),
            ..FakeSource::default()
        };
        let running = start_fake(&test_config(1), FakeStore::default(), source, 16);
        let jobs: Vec<UploadJob> = (0..5)
            .map(|n| job(n, DataProtectionLevel::Standard))
            .collect();
        for job in &jobs {
            running.handle.submit(job.clone()).unwrap();
        }
        wait_until("the 4 readable batches", || {
            running.source.uploaded_count() == 4
        });
        assert_uploaded_once(&running, &jobs[1..]);
        assert_eq!(running.metrics.unreadable.get(), 1);
        assert!(running.metrics.attempts_failed[0].get() >= u64::from(READ_ATTEMPTS_MAX));
        running.source.unreadable.lock().unwrap().clear();
        wait_until("the healed batch", || running.source.uploaded_count() == 5);
        assert_uploaded_once(&running, &jobs);
        assert_eq!(running.metrics.unreadable.get(), 0);
        running.handle.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn store_health_flips_once_per_transition() {
        let gauge = Gauge::default();
        let health = StoreHealth::new(gauge.clone());
        assert_eq!(gauge.get(), 1);
        assert!(!health.record(true));
        assert!(health.record(false));
        assert_eq!(gauge.get(), 0);
        assert!(!health.record(false));
        assert!(!health.record(false));
        assert!(health.record(true));
        assert_eq!(gauge.get(), 1);
    }

    #[test]
    fn concurrency_is_bounded() {
        let store = FakeStore {
            hold: AtomicBool::new(true),
            ..FakeStore::default()
        };
        let running = start_fake(&test_config(3), store, FakeSource::default(), 64);
        let jobs: Vec<UploadJob> = (0..15)
            .map(|n| job(n, DataProtectionLevel::Standard))
            .collect();
        for job in &jobs {
            running.handle.submit(job.clone()).unwrap();
        }
        // The held store keeps every started put in flight: 3 start, and no more while held.
        wait_until("3 puts in flight", || {
            running.store.in_flight.load(Ordering::Acquire) == 3
        });
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(running.store.in_flight.load(Ordering::Acquire), 3);
        running.store.hold.store(false, Ordering::Release);
        wait_until("15 uploads", || running.metrics.succeeded.get() == 15);
        assert_uploaded_once(&running, &jobs);
        assert_eq!(running.store.max_in_flight.load(Ordering::Acquire), 3);
        running.handle.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn a_full_queue_gives_the_job_back() {
        let store = FakeStore {
            hold: AtomicBool::new(true),
            ..FakeStore::default()
        };
        let running = start_fake(&test_config(1), store, FakeSource::default(), 2);
        // The held store keeps one job in flight; the queue holds 2; so of 4 at least one is
        // refused, and it comes back intact.
        let mut accepted = Vec::new();
        let mut refused = Vec::new();
        for n in 0..4 {
            match running.handle.submit(job(n, DataProtectionLevel::Standard)) {
                Ok(()) => accepted.push(job(n, DataProtectionLevel::Standard)),
                Err(back) => refused.push(back),
            }
        }
        assert!(!refused.is_empty());
        assert_eq!(
            refused[0],
            job(refused[0].key.batch, DataProtectionLevel::Standard)
        );
        running.store.hold.store(false, Ordering::Release);
        wait_until("accepted uploads", || {
            running.source.uploaded_count() == accepted.len()
        });
        assert_uploaded_once(&running, &accepted);
        assert_eq!(running.metrics.queued.get(), 0);
        running.handle.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn shutdown_abandons_a_stuck_upload_after_the_grace() {
        let store = FakeStore {
            hang_first: AtomicUsize::new(usize::MAX),
            ..FakeStore::default()
        };
        let running = start_fake(&test_config(2), store, FakeSource::default(), 4);
        running
            .handle
            .submit(job(1, DataProtectionLevel::Standard))
            .unwrap();
        wait_until("the upload to start", || {
            running.store.in_flight.load(Ordering::Acquire) == 1
        });
        let started = Instant::now();
        running.handle.shutdown(Duration::from_millis(50));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(running.source.uploaded_count(), 0, "never confirmed");
    }

    #[test]
    fn start_refuses_bad_capacities() {
        let metrics = UploadMetrics::register(&mut Registry::default());
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let source: Arc<dyn BatchSource> = Arc::new(FakeSource::default());
        let config = test_config(1);
        let secret = Some(EncryptionSecret::new(SECRET, SECRET_ENV).unwrap());
        for capacity in [0, QUEUE_CAPACITY_MAX + 1] {
            let refused = start(
                &config,
                Store {
                    objects: store.clone(),
                    keeps_attributes: true,
                },
                secret.clone(),
                source.clone(),
                metrics.clone(),
                capacity,
            );
            assert!(refused.is_err(), "{capacity}");
        }
    }

    /// A one-thread HTTP server answering every request with `status`; records request bodies.
    fn hook(status: u16) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/chunks?token=x", listener.local_addr().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                let body_at = loop {
                    let n = stream.read(&mut buf).unwrap();
                    assert!(n > 0, "connection closed mid-request");
                    request.extend_from_slice(&buf[..n]);
                    if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                };
                let head = String::from_utf8_lossy(&request[..body_at]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while request.len() < body_at + length {
                    let n = stream.read(&mut buf).unwrap();
                    request.extend_from_slice(&buf[..n]);
                }
                assert!(head.starts_with("post /chunks?token=x "), "{head}");
                assert!(head.contains("content-type: application/json"), "{head}");
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8(request[body_at..].to_vec()).unwrap());
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        (url, bodies)
    }

    #[test]
    fn chunk_notifications_are_posted_after_the_upload() {
        let (url, bodies) = hook(200);
        let config = Config {
            chunk_notification_url: Some(url),
            ..test_config(2)
        };
        let running = start_fake(&config, FakeStore::default(), FakeSource::default(), 16);
        let jobs = [
            job(1, DataProtectionLevel::Enhanced),
            job(2, DataProtectionLevel::Standard),
        ];
        for job in &jobs {
            running.handle.submit(job.clone()).unwrap();
        }
        wait_until("2 notifications", || {
            running.metrics.notifications[0].get() == 2
        });
        assert_eq!(running.source.uploaded_count(), 2);
        let mut got: Vec<serde_json::Value> = bodies
            .lock()
            .unwrap()
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect();
        got.sort_by_key(|v| v["conversation_id"].as_str().unwrap().to_string());
        for (job, body) in jobs.iter().zip(&got) {
            assert_eq!(
                *body,
                serde_json::json!({
                    "uid": job.uid.as_str(),
                    "conversation_id": job.conversation.as_str(),
                    "key": key_of(job),
                    "timestamp": job.timestamp,
                    "bytes": job.audio_bytes,
                    "sample_rate": 16_000,
                })
            );
        }
        running.handle.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn chunk_notification_failures_are_bounded_and_counted() {
        for (status, requests) in [(503, 3), (404, 1)] {
            let (url, bodies) = hook(status);
            let config = Config {
                chunk_notification_url: Some(url),
                chunk_notification_attempts_max: 3,
                ..test_config(1)
            };
            let running = start_fake(&config, FakeStore::default(), FakeSource::default(), 4);
            running
                .handle
                .submit(job(1, DataProtectionLevel::Standard))
                .unwrap();
            wait_until("a failed notification", || {
                running.metrics.notifications[1].get() == 1
            });
            assert_eq!(bodies.lock().unwrap().len(), requests, "status {status}");
            assert_eq!(running.metrics.notifications[0].get(), 0);
            assert_eq!(
                running.source.uploaded_count(),
                1,
                "the upload itself stands"
            );
            running.handle.shutdown(Duration::from_secs(1));
        }
    }

    #[test]
    fn retryable_statuses() {
        use reqwest::StatusCode;
        for code in [500, 502, 503, 504, 408, 429] {
            assert!(retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [200, 301, 400, 401, 403, 404, 422] {
            assert!(!retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn metrics_are_named_pusher_upload() {
        let mut registry = Registry::with_prefix("pusher");
        let metrics = UploadMetrics::register(&mut registry);
        metrics.attempt_failed(FailureReason::Timeout);
        metrics.notification(NotificationResult::Dropped);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "pusher_upload_succeeded_total 0",
            "pusher_upload_attempts_failed_total{reason=\"timeout\"} 1",
            "pusher_upload_attempts_failed_total{reason=\"store\"} 0",
            "pusher_upload_retries_total 0",
            "pusher_upload_queued 0",
            "pusher_upload_in_flight 0",
            "pusher_upload_bytes_total 0",
            "pusher_upload_store_healthy 1",
            "pusher_upload_duration_seconds_count 0",
            "pusher_upload_chunk_notifications_total{result=\"dropped\"} 1",
            "pusher_upload_chunk_notifications_total{result=\"ok\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
