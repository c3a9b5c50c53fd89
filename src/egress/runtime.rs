//! The egress thread(s): a tokio runtime with one shared HTTP client (reqwest, rustls, pooled
//! connections, except for targets that do not keep one: `TargetKind::keeps_connection`). One
//! dispatcher task per core takes jobs off that core's [`Link`] and spawns a task per job; the
//! task reports its [`Completion`] back through the same link.
//!
//! Invariants: tokio futures run only here, never on a worker thread; every attempt runs under
//! its target's timeout, so no delivery outlives `timeout × (1 + retries)` (plus one relay); a
//! process call also runs under its session's cancellation token and is dropped when the
//! session ends; the number of jobs is bounded by the cores' counts (see `server::core_egress`; checked in
//! debug builds); an
//! answer body is read up to a configured size, never more.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use reqwest::header::{CONNECTION, CONTENT_TYPE};
use tokio_util::sync::CancellationToken;

use super::answer::{FailReason, ProcessOutcome, relay_message};
use super::body;
use super::job::{AudioTarget, Completion, CoreShares, Done, Job, Link, SessionContext, Work};
use super::metrics::{AttemptResult, EgressMetrics};
use super::target::{TARGET_KINDS, TargetKind, audio_url, uid_url};
use crate::config::Config;
use crate::id::Id;
use crate::metrics::Stream;
use crate::settings::{HttpSettings, Trigger, UserSettings};

const JSON: &str = "application/json";
const OCTET_STREAM: &str = "application/octet-stream";
/// Time allowed to open a connection to a downstream (within each attempt's timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle pooled connections kept per downstream host.
const IDLE_CONNECTIONS_PER_HOST: usize = 64;
/// At most one failure log line per target kind in this interval; the rest are counted.
const FAILURE_LOG_INTERVAL_MS: u64 = 10_000;

/// Running egress: the thread keeps going until the process exits (its work is droppable or
/// bound to sessions, which the drain closes).
pub struct Egress {
    _thread: std::thread::JoinHandle<()>,
}

struct Context {
    client: reqwest::Client,
    config: Config,
    metrics: EgressMetrics,
    settings: Option<Arc<HttpSettings>>,
    started: Instant,
    /// Per target kind: the earliest time (ms since `started`) the next failure may be logged.
    next_failure_log_ms: [AtomicU64; TARGET_KINDS.len()],
    /// Jobs running now, over all cores, and their bound: the sum of the cores' shares (each
    /// core counts its jobs against its share before submitting; checked in debug builds).
    jobs_in_flight: AtomicUsize,
    jobs_in_flight_max: usize,
}

/// Starts the egress runtime serving `links` (one per core).
pub fn start(
    config: &Config,
    links: Vec<Arc<Link>>,
    metrics: EgressMetrics,
    settings: Option<Arc<HttpSettings>>,
) -> Result<Egress, String> {
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_max_idle_per_host(IDLE_CONNECTIONS_PER_HOST)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("egress HTTP client: {e}"))?;
    let runtime = if config.egress_threads > 1 {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.egress_threads)
            .thread_name("pusher-egress-io")
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .map_err(|e| format!("egress runtime: {e}"))?;
    let context = Arc::new(Context {
        client,
        config: config.clone(),
        metrics,
        settings,
        started: Instant::now(),
        next_failure_log_ms: std::array::from_fn(|_| AtomicU64::new(0)),
        jobs_in_flight: AtomicUsize::new(0),
        jobs_in_flight_max: CoreShares::of(config, links.len().max(1)).jobs() * links.len(),
    });
    let thread = std::thread::Builder::new()
        .name("pusher-egress".into())
        .spawn(move || {
            runtime.block_on(async move {
                let dispatchers = links
                    .into_iter()
                    .map(|link| tokio::spawn(dispatch(Arc::clone(&context), link)));
                join_all(dispatchers).await;
            });
        })
        .map_err(|e| format!("egress thread: {e}"))?;
    Ok(Egress { _thread: thread })
}

/// Takes one core's jobs as they come and runs each in its own task.
async fn dispatch(context: Arc<Context>, link: Arc<Link>) {
    loop {
        while let Some(job) = link.next_job() {
            let running = context.jobs_in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            debug_assert!(
                running <= context.jobs_in_flight_max,
                "egress jobs in flight ({running}) pass the cores' shares ({})",
                context.jobs_in_flight_max
            );
            tokio::spawn(run(Arc::clone(&context), Arc::clone(&link), job));
        }
        link.jobs_ready().await;
    }
}

async fn run(context: Arc<Context>, link: Arc<Link>, job: Job) {
    run_job(&context, &link, job).await;
    context.jobs_in_flight.fetch_sub(1, Ordering::Relaxed);
}

async fn run_job(context: &Arc<Context>, link: &Link, job: Job) {
    let Job {
        ticket,
        session,
        work,
        bytes,
    } = job;
    let done = match *work {
        Work::Settings { uid, reply } => {
            // The handshake may have given up waiting; then nobody reads the answer.
            let _ = reply.send(fetch_settings(context, &uid).await);
            return;
        }
        Work::SpeakerSample { body } => {
            if let Some(url) = &context.config.speaker_sample_url {
                let delivery = Delivery::new(TargetKind::SpeakerSample, url.clone(), body, JSON);
                deliver(context, delivery).await;
            }
            Done::SpeakerSample
        }
        Work::Transcript {
            conversation,
            segments,
        } => {
            let session = session.expect("a transcript job carries its session");
            let deliveries = transcript_deliveries(context, &session, conversation, &segments);
            deliver_all(context, deliveries).await;
            Done::Delivered(Stream::Transcript)
        }
        Work::Audio { target, pcm } => {
            let session = session.expect("an audio job carries its session");
            let deliveries = audio_deliveries(&session, target, pcm);
            deliver_all(context, deliveries).await;
            Done::Delivered(Stream::AudioBytes)
        }
        Work::Process {
            conversation,
            payload,
        } => {
            let session = session.expect("a process job carries its session");
            let call = process(context, &session, &conversation, &payload);
            let reply = until_cancelled(&session.cancel, call).await;
            if reply.is_none() {
                context.metrics.process_cancelled.inc();
            }
            context.metrics.process_in_flight.dec();
            Done::Processed {
                conversation,
                reply,
            }
        }
    };
    link.complete(Completion {
        ticket,
        done,
        bytes,
    });
}

/// Runs `work` unless `cancel` fires first (then `work` is dropped: its connection closes).
async fn until_cancelled<T>(
    cancel: &CancellationToken,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        out = work => Some(out),
    }
}

/// Who a webhook's relayed message is attributed to.
#[derive(Debug, Clone)]
enum Relay {
    /// Not relayed (hooks, speaker samples).
    Never,
    /// An app (`app_id`).
    App(String),
    /// The user's own webhook (`app_id: null`).
    User,
}

struct Delivery {
    target: TargetKind,
    url: String,
    body: Bytes,
    content_type: &'static str,
    relay: Relay,
    /// Whose message a relay carries.
    uid: Option<Id>,
}

impl Delivery {
    fn new(
        target: TargetKind,
        url: String,
        body: impl Into<Bytes>,
        content_type: &'static str,
    ) -> Delivery {
        Delivery {
            target,
            url,
            body: body.into(),
            content_type,
            relay: Relay::Never,
            uid: None,
        }
    }

    fn relayed(mut self, uid: Id, relay: Relay) -> Delivery {
        self.uid = Some(uid);
        self.relay = relay;
        self
    }
}

fn transcript_deliveries(
    context: &Context,
    session: &SessionContext,
    conversation: Option<Id>,
    segments: &str,
) -> Vec<Delivery> {
    let uid = &session.uid;
    let settings: &UserSettings = &session.settings;
    let mut deliveries = Vec::new();
    let apps: Vec<_> = settings
        .apps
        .iter()
        .filter(|app| app.triggers.contains(&Trigger::TranscriptProcessed))
        .collect();
    if !apps.is_empty() {
        let body = Bytes::from(body::app_transcript(uid, segments));
        for app in apps {
            let url = uid_url(&app.webhook_url, uid.as_str());
            deliveries.push(
                Delivery::new(TargetKind::AppTranscript, url, body.clone(), JSON)
                    .relayed(*uid, Relay::App(app.id.clone())),
            );
        }
    }
    if let Some(url) = &settings.realtime_transcript_webhook {
        let body = body::transcript_webhook(uid, segments);
        deliveries.push(
            Delivery::new(
                TargetKind::TranscriptWebhook,
                uid_url(url, uid.as_str()),
                body,
                JSON,
            )
            .relayed(*uid, Relay::User),
        );
    }
    if !context.config.transcript_hooks.is_empty() {
        let body = Bytes::from(body::transcript_hook(uid, conversation.as_ref(), segments));
        for hook in &context.config.transcript_hooks {
            let url = uid_url(hook, uid.as_str());
            deliveries.push(Delivery::new(
                TargetKind::TranscriptHook,
                url,
                body.clone(),
                JSON,
            ));
        }
    }
    deliveries
}

fn audio_deliveries(session: &SessionContext, target: AudioTarget, pcm: Vec<u8>) -> Vec<Delivery> {
    let uid = &session.uid;
    let rate = session.sample_rate_hz;
    let pcm = Bytes::from(pcm);
    match target {
        AudioTarget::Apps => session
            .settings
            .apps
            .iter()
            .filter(|app| app.triggers.contains(&Trigger::AudioBytes))
            .map(|app| {
                let url = audio_url(&app.webhook_url, rate, uid.as_str());
                Delivery::new(TargetKind::AppAudio, url, pcm.clone(), OCTET_STREAM)
                    .relayed(*uid, Relay::App(app.id.clone()))
            })
            .collect(),
        AudioTarget::Webhook => session
            .settings
            .audio_bytes_webhook
            .iter()
            .map(|webhook| {
                let url = audio_url(&webhook.url, rate, uid.as_str());
                Delivery::new(TargetKind::AudioWebhook, url, pcm.clone(), OCTET_STREAM)
                    .relayed(*uid, Relay::User)
            })
            .collect(),
    }
}

async fn deliver_all(context: &Context, deliveries: Vec<Delivery>) {
    join_all(deliveries.into_iter().map(|d| deliver(context, d))).await;
}

/// One item to one target: attempts (a 5xx or connection error is retried up to
/// `webhook_retries` times; a timeout is not), then the relay if the answer carries a message.
async fn deliver(context: &Context, delivery: Delivery) {
    let attempts = 1 + context.config.webhook_retries;
    for attempt in 1..=attempts {
        let guard = context.metrics.attempt(delivery.target);
        let sent = send(
            context,
            delivery.target,
            reqwest::Method::POST,
            &delivery.url,
            Some((delivery.body.clone(), delivery.content_type)),
            context.config.egress_response_bytes_max,
        )
        .await;
        let retry = match sent {
            Ok(answer) if (200..300).contains(&answer.status) => {
                guard.finish(AttemptResult::Delivered);
                relay(context, &delivery, &answer).await;
                return;
            }
            Ok(answer) => {
                guard.finish(AttemptResult::Failed);
                context.log_failure(
                    delivery.target,
                    &delivery.url,
                    &format!("answered {}", answer.status),
                );
                answer.status >= 500
            }
            Err(error) => {
                guard.finish(error.attempt_result());
                context.log_failure(delivery.target, &delivery.url, &error.to_string());
                matches!(error, SendError::Connect(_))
            }
        };
        if !retry || attempt == attempts {
            break;
        }
    }
    context.metrics.dropped(delivery.target);
}

/// POSTs a webhook answer's message to the response relay, if one is configured and due.
async fn relay(context: &Context, delivery: &Delivery, answer: &Answer) {
    let (Some(url), Some(uid)) = (&context.config.response_relay_url, &delivery.uid) else {
        return;
    };
    let app_id = match &delivery.relay {
        Relay::Never => return,
        Relay::App(id) => Some(id.as_str()),
        Relay::User => None,
    };
    let Some(message) = relay_message(answer.status, &answer.body) else {
        return;
    };
    let body = body::relay(uid, app_id, &message);
    let relayed = Delivery::new(TargetKind::ResponseRelay, url.clone(), body, JSON);
    Box::pin(deliver(context, relayed)).await;
}

/// A process-conversation call; returns its 201 payload.
async fn process(
    context: &Context,
    session: &SessionContext,
    conversation: &Id,
    payload: &str,
) -> Vec<u8> {
    let url = context
        .config
        .processor_url
        .as_deref()
        .expect("process jobs are only made with a processor URL");
    let outcome = match body::process(&session.uid, payload) {
        None => ProcessOutcome::Failed(FailReason::RequestFailed),
        Some(body) => {
            let guard = context.metrics.attempt(TargetKind::Processor);
            let sent = send(
                context,
                TargetKind::Processor,
                reqwest::Method::POST,
                url,
                Some((Bytes::from(body), JSON)),
                context.config.processor_response_bytes_max,
            )
            .await;
            match sent {
                Ok(answer) => {
                    let ok = (200..300).contains(&answer.status);
                    guard.finish(if ok {
                        AttemptResult::Delivered
                    } else {
                        AttemptResult::Failed
                    });
                    if answer.truncated {
                        ProcessOutcome::Failed(FailReason::ResponseTooLarge)
                    } else {
                        ProcessOutcome::of_answer(answer.status, &answer.body)
                    }
                }
                Err(error) => {
                    guard.finish(error.attempt_result());
                    context.log_failure(TargetKind::Processor, url, &error.to_string());
                    match error {
                        SendError::Timeout => ProcessOutcome::TimedOut,
                        SendError::Connect(_) => ProcessOutcome::Failed(FailReason::ConnectFailed),
                        SendError::Other(_) => ProcessOutcome::Failed(FailReason::RequestFailed),
                    }
                }
            }
        }
    };
    context.metrics.process_done(&outcome);
    outcome.reply(conversation)
}

/// `GET {base}/{uid}` → the user's settings, cached on success.
async fn fetch_settings(context: &Context, uid: &Id) -> Result<Arc<UserSettings>, String> {
    let http = context
        .settings
        .as_ref()
        .expect("settings jobs are only made for the http source");
    let url = http.url(uid);
    let guard = context.metrics.attempt(TargetKind::Settings);
    let sent = send(
        context,
        TargetKind::Settings,
        reqwest::Method::GET,
        &url,
        None,
        context.config.egress_response_bytes_max,
    )
    .await;
    let parsed = match sent {
        Ok(answer) if answer.status == 200 && !answer.truncated => {
            UserSettings::from_json(&answer.body)
                .map(|settings| (settings, answer.body.len()))
                .map_err(|e| format!("bad settings JSON: {e}"))
        }
        Ok(answer) if answer.truncated => Err("settings answer too large".to_owned()),
        Ok(answer) => Err(format!("answered {}", answer.status)),
        Err(error) => Err(error.to_string()),
    };
    match parsed {
        Ok((settings, json_bytes)) => {
            guard.finish(AttemptResult::Delivered);
            let settings = Arc::new(settings);
            http.insert(*uid, Arc::clone(&settings), json_bytes, Instant::now());
            Ok(settings)
        }
        Err(reason) => {
            guard.finish(AttemptResult::Failed);
            context.log_failure(TargetKind::Settings, &url, &reason);
            Err(reason)
        }
    }
}

/// A downstream's answer, its body read up to a bound.
struct Answer {
    status: u16,
    body: Vec<u8>,
    /// The body was longer than the bound (the rest was not read).
    truncated: bool,
}

#[derive(Debug)]
enum SendError {
    Timeout,
    Connect(reqwest::Error),
    Other(reqwest::Error),
}

impl SendError {
    fn of(error: reqwest::Error) -> SendError {
        if error.is_timeout() {
            SendError::Timeout
        } else if error.is_connect() {
            SendError::Connect(error)
        } else {
            SendError::Other(error)
        }
    }

    fn attempt_result(&self) -> AttemptResult {
        match self {
            SendError::Timeout => AttemptResult::TimedOut,
            SendError::Connect(_) | SendError::Other(_) => AttemptResult::Failed,
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Timeout => f.write_str("timed out"),
            SendError::Connect(e) => write!(f, "cannot connect: {e}"),
            SendError::Other(e) => write!(f, "request failed: {e}"),
        }
    }
}

/// One HTTP attempt under `target`'s timeout (connect, request and answer body), on a pooled
/// connection unless the target does not keep one (then `Connection: close`; the downstream,
/// asked to close, mostly closes first, so most closed sockets wait out TIME_WAIT on its side
/// rather than holding pusher's ephemeral ports).
async fn send(
    context: &Context,
    target: TargetKind,
    method: reqwest::Method,
    url: &str,
    body: Option<(Bytes, &'static str)>,
    answer_bytes_max: usize,
) -> Result<Answer, SendError> {
    let mut request = context
        .client
        .request(method, url)
        .timeout(target.timeout(&context.config));
    if !target.keeps_connection() {
        request = request.header(CONNECTION, "close");
    }
    if let Some((body, content_type)) = body {
        request = request.header(CONTENT_TYPE, content_type).body(body);
    }
    let mut response = request.send().await.map_err(SendError::of)?;
    let status = response.status().as_u16();
    let mut answer = Answer {
        status,
        body: Vec::new(),
        truncated: false,
    };
    while let Some(chunk) = response.chunk().await.map_err(SendError::of)? {
        if answer.body.len() + chunk.len() > answer_bytes_max {
            answer.truncated = true;
            break;
        }
        answer.body.extend_from_slice(&chunk);
    }
    debug_assert!(answer.body.len() <= answer_bytes_max);
    Ok(answer)
}

impl Context {
    /// Logs a failed attempt, at most once per [`FAILURE_LOG_INTERVAL_MS`] per target kind (the
    /// metrics count every one).
    fn log_failure(&self, target: TargetKind, url: &str, reason: &str) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let next = &self.next_failure_log_ms[target.index()];
        let due = next.load(Ordering::Relaxed);
        if now_ms < due
            || next
                .compare_exchange(
                    due,
                    now_ms + FAILURE_LOG_INTERVAL_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let url = url.split('?').next().unwrap_or(url);
        tracing::warn!(
            target = target.label(),
            url,
            "egress attempt failed: {reason} (further failures of this target kind are counted in pusher_egress_requests_total for the next {} s)",
            FAILURE_LOG_INTERVAL_MS / 1000
        );
    }
}
