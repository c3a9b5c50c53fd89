//! `downstream`: the services pusher calls (docs/downstream.md), played by one HTTP/1.1 server: the
//! conversation processor, app and user webhooks, global transcript hooks, speaker samples, the
//! response relay, and a slow, forgetful S3 endpoint for private-cloud uploads.
//!
//! Every route answers after its own delay, counted from the end of the request body, and fails
//! a set share of its requests with `500`. It counts what it received: requests, body bytes,
//! answers, and requests the client abandoned (closed the connection before the answer: pusher
//! cancelling a 104's call at the session end, or an upload timing out). For JSON bodies whose
//! `segments` carry a `sent_ns` field (the load client's wall-clock send time, ns since the
//! epoch) it keeps arrival − sent per segment: the transcript latency.
//!
//! Routes, by the first segment of a POST's path: `/processor` (answers `{"processed":true}`,
//! which pusher merges into the 201), `/webhook/...` (apps and user webhooks, transcripts and
//! audio), `/hook` (global transcript hooks), `/speaker`, `/relay`; any other POST is `other`
//! (answered at once). Any `PUT /{bucket}/{key}` is the store, as object_store's S3 client sends
//! a put: `200` with an `ETag` (object_store requires one). The store can also be down for a
//! window of time (`--store-fail-from-s`, `--store-fail-for-s`, counted from the simulator's
//! start or [`Downstream::restart_clock`]): every put then is answered `503` at once and counted
//! as `unavailable`, not as a request. Per key the store records the body
//! length, the plaintext length (for `.enc` keys the body less the 32 bytes of pusher's blob
//! layout: length prefix, nonce, tag) and how many times the key was put. Bodies are not kept
//! (JSON bodies are read for `sent_ns`, then dropped); signatures are not checked.
//!
//! Control routes: `GET /stats` (counts per route and latency percentiles, JSON),
//! `GET /_sink/objects` (the store's record, JSON), `GET /_sink/health` and `GET /health`; any
//! other `GET`/`HEAD` is `404`, `DELETE` is `204`, the rest `405`. HTTP/1.1 with keep-alive; a
//! body must come with `Content-Length` (object_store and reqwest always send one).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::stats;

/// Bytes of pusher's encrypted blob beyond the plaintext: `u32` length, 12-byte nonce, 16-byte tag
/// (docs/downstream.md §2).
pub const BLOB_OVERHEAD_BYTES: u64 = 4 + 12 + 16;
/// Longest request head accepted.
const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Most headers parsed in a request.
const HEADERS_MAX: usize = 64;
/// Longest JSON body read for its segments; a longer one is counted and dropped unread.
const JSON_BODY_BYTES_MAX: u64 = 1 << 20;
/// 1/φ: `n × GOLDEN mod 1` is a low-discrepancy sequence (see [`fails`]).
const GOLDEN: f64 = 0.618_033_988_749_894_9;
const NANOS_PER_MS: f64 = 1e6;
/// The content-type header of JSON answers.
const JSON: (&str, &str) = ("Content-Type", "application/json");

/// A simulated service, chosen by the request's method and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Processor,
    Webhook,
    Hook,
    Speaker,
    Relay,
    Store,
    Other,
}

impl Route {
    pub const ALL: [Route; 7] = [
        Route::Processor,
        Route::Webhook,
        Route::Hook,
        Route::Speaker,
        Route::Relay,
        Route::Store,
        Route::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Route::Processor => "processor",
            Route::Webhook => "webhook",
            Route::Hook => "hook",
            Route::Speaker => "speaker",
            Route::Relay => "relay",
            Route::Store => "store",
            Route::Other => "other",
        }
    }

    /// The route of a request; `None` for the control routes (GET and the rest).
    fn of(method: &str, path: &str) -> Option<Route> {
        match method {
            "PUT" => Some(Route::Store),
            "POST" => {
                let first = path.trim_start_matches('/').split(['/', '?']).next();
                Some(match first.unwrap_or_default() {
                    "processor" => Route::Processor,
                    "webhook" => Route::Webhook,
                    "hook" => Route::Hook,
                    "speaker" => Route::Speaker,
                    "relay" => Route::Relay,
                    _ => Route::Other,
                })
            }
            _ => None,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How each route behaves. The defaults are the seed's chaos stubs (omi PR #4784): the processor
/// takes 5 s, integrations 0.5 s, an upload 2 s.
#[derive(Debug, Clone, clap::Args)]
pub struct RouteArgs {
    /// Delay of the conversation processor (POST /processor)
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub processor_delay_ms: u64,
    /// Share of processor calls answered 500
    #[arg(long, default_value_t = 0.0, value_name = "RATE", value_parser = parse_rate)]
    pub processor_fail_rate: f64,
    /// Delay of app and user webhooks (POST /webhook/...)
    #[arg(long, default_value_t = 500, value_name = "MS")]
    pub webhook_delay_ms: u64,
    /// Share of webhook calls answered 500
    #[arg(long, default_value_t = 0.0, value_name = "RATE", value_parser = parse_rate)]
    pub webhook_fail_rate: f64,
    /// Delay of global transcript hooks (POST /hook)
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub hook_delay_ms: u64,
    /// Share of hook calls answered 500
    #[arg(long, default_value_t = 0.0, value_name = "RATE", value_parser = parse_rate)]
    pub hook_fail_rate: f64,
    /// Delay of speaker-sample requests (POST /speaker)
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub speaker_delay_ms: u64,
    /// Share of speaker-sample requests answered 500
    #[arg(long, default_value_t = 0.0, value_name = "RATE", value_parser = parse_rate)]
    pub speaker_fail_rate: f64,
    /// Delay of an S3 put (PUT /{bucket}/{key})
    #[arg(long, alias = "delay-ms", default_value_t = 2000, value_name = "MS")]
    pub store_delay_ms: u64,
    /// Share of S3 puts answered 500
    #[arg(long, default_value_t = 0.0, value_name = "RATE", value_parser = parse_rate)]
    pub store_fail_rate: f64,
    /// Start of the store's outage, in seconds from the simulator's start (or from the last
    /// restart of its clock): every put from then on for `--store-fail-for-s` is answered 503
    /// at once (counted as `unavailable`, apart from the injected 500s)
    #[arg(long, value_name = "S")]
    pub store_fail_from_s: Option<f64>,
    /// Length of the store's outage (see `--store-fail-from-s`)
    #[arg(long, default_value_t = 0.0, value_name = "S")]
    pub store_fail_for_s: f64,
}

pub fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("expected a share between 0 and 1, got {text:?}")),
    }
}

impl RouteArgs {
    /// Whether the store is down `elapsed` after the simulator's clock started: within
    /// `[store_fail_from_s, store_fail_from_s + store_fail_for_s)`.
    pub fn store_down_at(&self, elapsed: Duration) -> bool {
        self.store_fail_from_s.is_some_and(|from| {
            let at = elapsed.as_secs_f64();
            at >= from && at < from + self.store_fail_for_s
        })
    }

    /// The delay and failure share of `route` (the relay and other POSTs: none).
    fn behaviour(&self, route: Route) -> (Duration, f64) {
        let (ms, rate) = match route {
            Route::Processor => (self.processor_delay_ms, self.processor_fail_rate),
            Route::Webhook => (self.webhook_delay_ms, self.webhook_fail_rate),
            Route::Hook => (self.hook_delay_ms, self.hook_fail_rate),
            Route::Speaker => (self.speaker_delay_ms, self.speaker_fail_rate),
            Route::Store => (self.store_delay_ms, self.store_fail_rate),
            Route::Relay | Route::Other => (0, 0.0),
        };
        (Duration::from_millis(ms), rate)
    }
}

/// Options of `pusher-bench downstream`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:9000", value_name = "ADDR:PORT")]
    listen: SocketAddr,
    #[command(flatten)]
    routes: RouteArgs,
}

/// What one route received and answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteStats {
    /// Requests whose body was received in full.
    pub requests: u64,
    pub body_bytes: u64,
    /// Answered with success.
    pub ok: u64,
    /// Answered with the injected `500`.
    pub failed: u64,
    /// Answered `503` at once because the route was in its outage window (the store only); not
    /// counted in `requests`.
    pub unavailable: u64,
    /// The client closed the connection before the answer.
    pub abandoned: u64,
    pub in_flight: u64,
    pub in_flight_max: u64,
    /// A JSON body that is not a JSON object, or a put without a bucket and key.
    pub bad_requests: u64,
    /// Segments that carried a `sent_ns` (one latency sample each).
    pub segments: u64,
}

/// What one key of the store received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Object {
    /// Body length of the latest put.
    pub bytes: u64,
    /// `bytes` less the blob overhead for `.enc` keys, `bytes` otherwise.
    pub plaintext_bytes: u64,
    pub puts: u64,
}

#[derive(Debug, Default)]
struct State {
    routes: [RouteStats; Route::ALL.len()],
    /// Arrival − `sent_ns` of every segment, per route.
    latencies_ns: [Vec<u64>; Route::ALL.len()],
    objects: BTreeMap<String, Object>,
    /// Body bytes of the puts answered with success.
    put_bytes: u64,
}

/// The simulator: how its routes behave and what they recorded.
pub struct Downstream {
    routes: RouteArgs,
    state: Mutex<State>,
    /// Time 0 of the store's outage window.
    clock: Mutex<Instant>,
}

impl Downstream {
    pub fn new(routes: RouteArgs) -> Downstream {
        Downstream {
            routes,
            state: Mutex::new(State::default()),
            clock: Mutex::new(Instant::now()),
        }
    }

    /// Restarts the clock the store's outage window counts from (`--store-fail-from-s`).
    pub fn restart_clock(&self) {
        *self.clock.lock().expect("no panic while recording") = Instant::now();
    }

    /// Whether the store is in its outage window now.
    fn store_down(&self) -> bool {
        let since = *self.clock.lock().expect("no panic while recording");
        self.routes.store_down_at(since.elapsed())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("no panic while recording")
    }

    /// What `route` recorded so far.
    pub fn route(&self, route: Route) -> RouteStats {
        self.state().routes[route.index()]
    }

    /// The latency samples of `route` (ns, in arrival order).
    pub fn latencies_ns(&self, route: Route) -> Vec<u64> {
        self.state().latencies_ns[route.index()].clone()
    }

    /// `GET /stats`: every route's counts, behaviour and latency percentiles.
    pub fn stats_json(&self) -> Value {
        let state = self.state();
        let routes: serde_json::Map<String, Value> = Route::ALL
            .iter()
            .map(|&route| {
                let (delay, fail_rate) = self.routes.behaviour(route);
                let s = &state.routes[route.index()];
                let value = json!({
                    "delay_ms": delay.as_millis() as u64,
                    "fail_rate": fail_rate,
                    "requests": s.requests,
                    "body_bytes": s.body_bytes,
                    "ok": s.ok,
                    "failed": s.failed,
                    "unavailable": s.unavailable,
                    "abandoned": s.abandoned,
                    "in_flight": s.in_flight,
                    "in_flight_max": s.in_flight_max,
                    "bad_requests": s.bad_requests,
                    "segments": s.segments,
                    "latency_ms": latency_summary(&state.latencies_ns[route.index()]),
                });
                (route.name().to_owned(), value)
            })
            .collect();
        json!({ "routes": routes, "objects": state.objects.len(), "put_bytes": state.put_bytes })
    }

    /// `GET /_sink/objects`: the store's record.
    pub fn objects_json(&self) -> Value {
        let state = self.state();
        let store = &state.routes[Route::Store.index()];
        let objects: serde_json::Map<String, Value> = state
            .objects
            .iter()
            .map(|(key, object)| {
                let value = json!({
                    "bytes": object.bytes,
                    "plaintext_bytes": object.plaintext_bytes,
                    "puts": object.puts,
                });
                (key.clone(), value)
            })
            .collect();
        json!({
            "delay_ms": self.routes.store_delay_ms,
            "requests": store.requests,
            "puts": store.ok,
            "body_bytes": state.put_bytes,
            "puts_in_flight": store.in_flight,
            "puts_in_flight_max": store.in_flight_max,
            "puts_failed": store.failed,
            "puts_unavailable": store.unavailable,
            "fail_from_s": self.routes.store_fail_from_s,
            "fail_for_s": self.routes.store_fail_for_s,
            "objects": objects,
        })
    }

    /// Records a request whose body arrived at `arrived_ns`; returns its number on the route
    /// (from 1), which decides whether it fails.
    fn arrive(&self, route: Route, body_bytes: u64, body: Option<&[u8]>, arrived_ns: u64) -> u64 {
        let mut state = self.state();
        let state = &mut *state;
        let stats = &mut state.routes[route.index()];
        stats.requests += 1;
        stats.body_bytes += body_bytes;
        stats.in_flight += 1;
        stats.in_flight_max = stats.in_flight_max.max(stats.in_flight);
        if let Some(body) = body {
            match segment_send_times(body) {
                Some(sent) => {
                    stats.segments += sent.len() as u64;
                    state.latencies_ns[route.index()]
                        .extend(sent.iter().map(|&sent| arrived_ns.saturating_sub(sent)));
                }
                None => stats.bad_requests += 1,
            }
        }
        stats.requests
    }

    /// Records the end of a request: answered (`Some(succeeded)`) or abandoned (`None`).
    fn finish(&self, route: Route, answered: Option<bool>) {
        let mut state = self.state();
        let stats = &mut state.routes[route.index()];
        stats.in_flight -= 1;
        match answered {
            Some(true) => stats.ok += 1,
            Some(false) => stats.failed += 1,
            None => stats.abandoned += 1,
        }
    }

    fn bad_request(&self, route: Route) {
        self.state().routes[route.index()].bad_requests += 1;
    }

    /// Records a successful put of `bytes` under `key`; returns the ETag to answer with.
    fn put(&self, key: String, bytes: u64) -> String {
        let mut state = self.state();
        state.put_bytes += bytes;
        let sequence = state.routes[Route::Store.index()].ok + 1;
        let plaintext_bytes = plaintext_bytes(&key, bytes);
        let object = state.objects.entry(key).or_default();
        object.bytes = bytes;
        object.plaintext_bytes = plaintext_bytes;
        object.puts += 1;
        format!("\"sink-{sequence}\"")
    }
}

/// Latency percentiles of `samples_ns` in ms (nearest rank), with the count and the maximum.
pub fn latency_summary(samples_ns: &[u64]) -> Value {
    let mut ms: Vec<f64> = samples_ns
        .iter()
        .map(|&ns| ns as f64 / NANOS_PER_MS)
        .collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| stats::percentile(&ms, q).map(|v| crate::load::round(v, 2));
    json!({
        "count": ms.len(),
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": ms.last().map(|&v| crate::load::round(v, 2)),
        "mean": (!ms.is_empty()).then(|| crate::load::round(ms.iter().sum::<f64>() / ms.len() as f64, 2)),
    })
}

/// Whether the `sequence`-th request (from 1) of a route that fails a share `rate` fails: when
/// `sequence × (1/φ) mod 1 < rate`. The sequence is spread evenly, so any run of requests fails
/// close to `rate` of them, and the same requests fail from run to run.
fn fails(sequence: u64, rate: f64) -> bool {
    rate > 0.0 && (sequence as f64 * GOLDEN).fract() < rate
}

/// The `sent_ns` of every segment of a JSON object body (`{"segments": [{"sent_ns": N, ...}]}`;
/// segments without one are skipped); `None` when the body is not a JSON object.
fn segment_send_times(body: &[u8]) -> Option<Vec<u64>> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    let segments = object.get("segments").and_then(Value::as_array);
    Some(
        segments
            .into_iter()
            .flatten()
            .filter_map(|segment| segment.get("sent_ns")?.as_u64())
            .collect(),
    )
}

/// Wall-clock time, ns since the epoch (what load clients put in `sent_ns`).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

pub async fn run(args: Args) -> Result<(), String> {
    let listener = bind(args.listen).await?;
    let r = &args.routes;
    eprintln!(
        "downstream: listening on http://{}; delays: processor {} ms, webhook {} ms, hook {} ms, \
         speaker {} ms, store {} ms; fail rates {}/{}/{}/{}/{}",
        args.listen,
        r.processor_delay_ms,
        r.webhook_delay_ms,
        r.hook_delay_ms,
        r.speaker_delay_ms,
        r.store_delay_ms,
        r.processor_fail_rate,
        r.webhook_fail_rate,
        r.hook_fail_rate,
        r.speaker_fail_rate,
        r.store_fail_rate,
    );
    serve(listener, Arc::new(Downstream::new(args.routes))).await;
    Ok(())
}

/// Starts the simulator in this process on `listen`, serving in the background.
pub async fn start(listen: SocketAddr, routes: RouteArgs) -> Result<Arc<Downstream>, String> {
    let listener = bind(listen).await?;
    let downstream = Arc::new(Downstream::new(routes));
    tokio::spawn(serve(listener, Arc::clone(&downstream)));
    Ok(downstream)
}

async fn bind(listen: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| format!("downstream: bind {listen}: {e}"))
}

/// Accepts connections forever, one task each.
pub async fn serve(listener: TcpListener, downstream: Arc<Downstream>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let downstream = Arc::clone(&downstream);
                tokio::spawn(async move {
                    // A broken connection only ends itself; the client retries.
                    let _ = Connection::new(stream).serve(&downstream).await;
                });
            }
            Err(e) => {
                eprintln!("downstream: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    method: String,
    path: String,
    content_length: u64,
    expect_continue: bool,
    close: bool,
    chunked: bool,
    json: bool,
}

/// Parses a request head at the start of `buf`: `Some((head, its length))` when complete.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut head = Head {
        method: request.method.unwrap_or_default().to_owned(),
        path: request.path.unwrap_or_default().to_owned(),
        content_length: 0,
        expect_continue: false,
        close: request.version == Some(0),
        chunked: false,
        json: false,
    };
    for header in request.headers.iter() {
        let value = String::from_utf8_lossy(header.value);
        let value = value.trim();
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.parse().map_err(|_| "bad Content-Length")?;
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = value.eq_ignore_ascii_case("100-continue");
        } else if name.eq_ignore_ascii_case("connection") {
            head.close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = true;
        } else if name.eq_ignore_ascii_case("content-type") {
            head.json = value.to_ascii_lowercase().contains("json");
        }
    }
    Ok(Some((head, len)))
}

/// One client connection: its stream and the bytes read but not consumed yet.
struct Connection {
    stream: TcpStream,
    pending: Vec<u8>,
    scratch: Vec<u8>,
}

impl Connection {
    fn new(stream: TcpStream) -> Connection {
        Connection {
            stream,
            pending: Vec::with_capacity(8192),
            scratch: vec![0u8; 64 * 1024],
        }
    }

    /// Reads more bytes into `pending`; `false` at the end of the stream.
    async fn fill(&mut self) -> io::Result<bool> {
        let n = self.stream.read(&mut self.scratch).await?;
        self.pending.extend_from_slice(&self.scratch[..n]);
        Ok(n > 0)
    }

    /// Serves requests in order until the connection closes.
    async fn serve(mut self, downstream: &Downstream) -> io::Result<()> {
        self.stream.set_nodelay(true)?;
        loop {
            let (head, head_len) = loop {
                match parse_head(&self.pending) {
                    Ok(Some(parsed)) => break parsed,
                    Ok(None) if self.pending.len() < HEAD_BYTES_MAX => {}
                    Ok(None) => return self.respond(431, &[], b"").await,
                    Err(_) => return self.respond(400, &[], b"").await,
                }
                if !self.fill().await? {
                    return Ok(());
                }
            };
            self.pending.drain(..head_len);
            if head.chunked {
                return self.respond(411, &[], b"").await;
            }
            if head.expect_continue {
                self.stream
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .await?;
            }
            let keep = head.json && head.content_length <= JSON_BODY_BYTES_MAX;
            let Some(body) = self.read_body(head.content_length, keep).await? else {
                return Ok(());
            };
            let arrived_ns = now_ns();
            let path = head.path.split('?').next().unwrap_or_default();
            let answered = match Route::of(&head.method, path) {
                Some(route) => {
                    self.exchange(
                        downstream,
                        route,
                        &head,
                        keep.then_some(&body[..]),
                        arrived_ns,
                    )
                    .await?
                }
                None => {
                    self.control(downstream, &head.method, path).await?;
                    true
                }
            };
            if !answered || head.close {
                return Ok(());
            }
        }
    }

    /// Reads a body of `length` bytes, kept if `keep` (else counted and dropped); `None` when
    /// the stream ends first.
    async fn read_body(&mut self, length: u64, keep: bool) -> io::Result<Option<Vec<u8>>> {
        let mut body = Vec::new();
        let mut left = length;
        loop {
            let take = left.min(self.pending.len() as u64) as usize;
            if keep {
                body.extend_from_slice(&self.pending[..take]);
            }
            self.pending.drain(..take);
            left -= take as u64;
            if left == 0 {
                return Ok(Some(body));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// Records a request to `route`, waits the route's delay unless the client goes away
    /// first, and answers. `false` when the client closed the connection before the answer.
    async fn exchange(
        &mut self,
        downstream: &Downstream,
        route: Route,
        head: &Head,
        body: Option<&[u8]>,
        arrived_ns: u64,
    ) -> io::Result<bool> {
        let path = head.path.split('?').next().unwrap_or_default();
        let key = match route {
            Route::Store => match object_key(path) {
                Some(key) => Some(key),
                None => {
                    downstream.bad_request(route);
                    self.respond(400, &[], b"").await?;
                    return Ok(true);
                }
            },
            _ => None,
        };
        if route == Route::Store && downstream.store_down() {
            downstream.state().routes[route.index()].unavailable += 1;
            self.respond(
                503,
                &[("Content-Type", "application/xml")],
                b"<Error><Code>ServiceUnavailable</Code></Error>",
            )
            .await?;
            return Ok(true);
        }
        let sequence = downstream.arrive(route, head.content_length, body, arrived_ns);
        let (delay, fail_rate) = downstream.routes.behaviour(route);
        if !self.wait_unless_closed(delay).await {
            downstream.finish(route, None);
            return Ok(false);
        }
        let failed = fails(sequence, fail_rate);
        downstream.finish(route, Some(!failed));
        if failed {
            self.respond(500, &[JSON], br#"{"error":"injected"}"#)
                .await?;
        } else if let Some(key) = key {
            let etag = downstream.put(key, head.content_length);
            self.respond(200, &[("ETag", &etag)], b"").await?;
        } else if route == Route::Processor {
            self.respond(200, &[JSON], br#"{"processed":true}"#).await?;
        } else {
            self.respond(200, &[JSON], b"{}").await?;
        }
        Ok(true)
    }

    /// Waits `delay`, reading whatever the client sends meanwhile (kept for the next request);
    /// `false` if the client closes the connection (or resets it) first.
    async fn wait_unless_closed(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                () = &mut sleep => return true,
                read = self.fill() => {
                    if !matches!(read, Ok(true)) {
                        return false;
                    }
                }
            }
        }
    }

    async fn control(
        &mut self,
        downstream: &Downstream,
        method: &str,
        path: &str,
    ) -> io::Result<()> {
        match (method, path) {
            ("GET", "/_sink/health" | "/health") => self.respond(200, &[], b"ok\n").await,
            ("GET", "/stats") => {
                let body = downstream.stats_json().to_string();
                self.respond(200, &[JSON], body.as_bytes()).await
            }
            ("GET", "/_sink/objects") => {
                let body = downstream.objects_json().to_string();
                self.respond(200, &[JSON], body.as_bytes()).await
            }
            ("GET" | "HEAD", _) => self.respond(404, &[], b"").await,
            ("DELETE", _) => self.respond(204, &[], b"").await,
            _ => self.respond(405, &[], b"").await,
        }
    }

    async fn respond(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<()> {
        let reason = match status {
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            411 => "Length Required",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "Error",
        };
        let mut response = format!("HTTP/1.1 {status} {reason}\r\n");
        for (name, value) in headers {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        response.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = response.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.write_all(&bytes).await
    }
}

/// The object key of a path-style request path `/{bucket}/{key}` (percent-decoded); `None`
/// without a bucket or a key.
fn object_key(path: &str) -> Option<String> {
    let (_bucket, key) = path.strip_prefix('/')?.split_once('/')?;
    let key = percent_decode(key)?;
    (!key.is_empty()).then_some(key)
}

/// `%XX` escapes decoded; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = std::str::from_utf8(bytes.get(at + 1..at + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Plaintext bytes of an object of `bytes` under `key`: less the blob overhead for `.enc`.
pub fn plaintext_bytes(key: &str, bytes: u64) -> u64 {
    if key.ends_with(".enc") {
        bytes.saturating_sub(BLOB_OVERHEAD_BYTES)
    } else {
        bytes
    }
}

/// The uid of an object key `[prefix/]chunks/{uid}/{conversation}/{timestamp}.{ext}`.
pub fn uid_of_key(key: &str) -> Option<&str> {
    let mut parts = key.split('/');
    parts.by_ref().find(|&part| part == "chunks")?;
    parts.next().filter(|uid| !uid.is_empty())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use object_store::aws::AmazonS3Builder;
    use object_store::path::Path;
    use object_store::prefix::PrefixStore;
    use object_store::{Attribute, AttributeValue, Attributes, ObjectStore, PutOptions};

    use super::*;
    use crate::http;

    /// Every route without delay or failure, except `store` (`store_ms`) and the processor
    /// (`processor_ms`, failing `processor_fail_rate`).
    fn routes(store_ms: u64, processor_ms: u64, processor_fail_rate: f64) -> RouteArgs {
        RouteArgs {
            processor_delay_ms: processor_ms,
            processor_fail_rate,
            webhook_delay_ms: 0,
            webhook_fail_rate: 0.0,
            hook_delay_ms: 0,
            hook_fail_rate: 0.0,
            speaker_delay_ms: 0,
            speaker_fail_rate: 0.0,
            store_delay_ms: store_ms,
            store_fail_rate: 0.0,
            store_fail_from_s: None,
            store_fail_for_s: 0.0,
        }
    }

    /// Polls `done` every 5 ms until it holds; panics naming `what` after 10 s.
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let give_up = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < give_up, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn started(routes: RouteArgs) -> (Arc<Downstream>, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let downstream = Arc::new(Downstream::new(routes));
        tokio::spawn(serve(listener, Arc::clone(&downstream)));
        (downstream, addr)
    }

    /// Writes a JSON POST and reads the status line of its answer.
    async fn post(stream: &mut TcpStream, path: &str, body: &str) -> String {
        request(stream, "POST", path, body).await
    }

    /// Writes a `method` request with a JSON body and reads the status line of its answer.
    async fn request(stream: &mut TcpStream, method: &str, path: &str, body: &str) -> String {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let n = stream.read(&mut answer).await.unwrap();
        let text = String::from_utf8_lossy(&answer[..n]).into_owned();
        text.lines().next().unwrap_or_default().to_owned()
    }

    #[test]
    fn blob_overhead_matches_the_server() {
        assert_eq!(
            BLOB_OVERHEAD_BYTES as usize,
            pusher::upload::crypto::BLOB_OVERHEAD_BYTES
        );
    }

    #[test]
    fn routes_come_from_the_method_and_first_path_segment() {
        assert_eq!(Route::of("POST", "/processor"), Some(Route::Processor));
        assert_eq!(
            Route::of("POST", "/webhook/audio?sample_rate=16000&uid=u"),
            Some(Route::Webhook)
        );
        assert_eq!(Route::of("POST", "/hook?uid=u"), Some(Route::Hook));
        assert_eq!(Route::of("POST", "/speaker"), Some(Route::Speaker));
        assert_eq!(Route::of("POST", "/relay"), Some(Route::Relay));
        assert_eq!(Route::of("POST", "/hooks"), Some(Route::Other));
        assert_eq!(
            Route::of("PUT", "/bench/chunks/u/c/1.000.enc"),
            Some(Route::Store)
        );
        assert_eq!(Route::of("GET", "/stats"), None);
        for (index, route) in Route::ALL.iter().enumerate() {
            assert_eq!(route.index(), index);
        }
    }

    #[test]
    fn the_store_is_down_only_within_its_window() {
        let mut args = routes(0, 0, 0.0);
        let at = Duration::from_secs_f64;
        assert!(!args.store_down_at(at(0.0)));
        assert!(!args.store_down_at(at(1e6)));
        args.store_fail_from_s = Some(30.0);
        args.store_fail_for_s = 60.0;
        assert!(!args.store_down_at(at(0.0)));
        assert!(!args.store_down_at(at(29.999)));
        assert!(args.store_down_at(at(30.0)));
        assert!(args.store_down_at(at(89.999)));
        assert!(!args.store_down_at(at(90.0)));
        assert!(!args.store_down_at(at(1000.0)));
        args.store_fail_for_s = 0.0;
        assert!(!args.store_down_at(at(30.0)));
    }

    /// Puts within the window are answered 503 at once and counted apart; after it, stored.
    #[tokio::test]
    async fn puts_in_the_outage_window_are_answered_503() {
        let mut args = routes(0, 0, 0.0);
        args.store_fail_from_s = Some(0.0);
        args.store_fail_for_s = 1.0;
        let (downstream, addr) = started(args).await;
        // The window began inside `started`, so it is over by this instant + 1.0 s.
        let downstream_started = Instant::now();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let put = async |stream: &mut TcpStream| {
            request(stream, "PUT", "/b/chunks/u/c/1.bin", "{}").await
        };
        assert_eq!(put(&mut stream).await, "HTTP/1.1 503 Service Unavailable");
        assert_eq!(put(&mut stream).await, "HTTP/1.1 503 Service Unavailable");
        tokio::time::sleep_until((downstream_started + Duration::from_millis(1050)).into()).await;
        assert_eq!(put(&mut stream).await, "HTTP/1.1 200 OK");
        let store = downstream.route(Route::Store);
        assert_eq!(
            (store.unavailable, store.requests, store.ok, store.failed),
            (2, 1, 1, 0)
        );
        let recorded = downstream.objects_json();
        assert_eq!(recorded["puts_unavailable"], 2);
        assert_eq!(recorded["puts"], 1);
        // Restarting the clock starts the window again.
        downstream.restart_clock();
        assert_eq!(put(&mut stream).await, "HTTP/1.1 503 Service Unavailable");
    }

    #[test]
    fn failures_follow_the_rate_evenly() {
        for rate in [0.0, 0.01, 0.1, 0.25, 0.5, 0.9, 1.0] {
            for (from, count) in [(1u64, 10_000u64), (5_001, 1_000), (77, 100)] {
                let failed = (from..from + count).filter(|&n| fails(n, rate)).count() as f64;
                let expected = rate * count as f64;
                assert!(
                    (failed - expected).abs() <= 2.0,
                    "rate {rate}, {count} from {from}: {failed} failed"
                );
            }
        }
        assert!(!fails(1, 0.0));
        assert!(fails(1, 1.0));
    }

    #[test]
    fn rates_are_shares() {
        assert_eq!(parse_rate("0.25"), Ok(0.25));
        assert_eq!(parse_rate("1"), Ok(1.0));
        assert!(parse_rate("1.5").is_err());
        assert!(parse_rate("-0.1").is_err());
        assert!(parse_rate("x").is_err());
    }

    #[test]
    fn send_times_come_from_the_segments() {
        let body = br#"{"session_id":"u","conversation_id":null,"segments":[
            {"text":"a","sent_ns":1700000000000000000},{"text":"b"},{"sent_ns":5}]}"#;
        assert_eq!(
            segment_send_times(body),
            Some(vec![1_700_000_000_000_000_000, 5])
        );
        assert_eq!(segment_send_times(br#"{"processed":true}"#), Some(vec![]));
        assert_eq!(segment_send_times(b"[1,2]"), None);
        assert_eq!(segment_send_times(b"not json"), None);
    }

    #[test]
    fn keys_come_from_path_style_paths() {
        assert_eq!(
            object_key("/bench/audio/chunks/u-1/c%3A1/1700000000.123.enc").as_deref(),
            Some("audio/chunks/u-1/c:1/1700000000.123.enc")
        );
        assert_eq!(object_key("/bench/k").as_deref(), Some("k"));
        assert_eq!(object_key("/bench/"), None);
        assert_eq!(object_key("/bench"), None);
        assert_eq!(object_key("bench/k"), None);
        assert_eq!(object_key("/b/bad%zz"), None);
        assert_eq!(object_key("/b/cut%4"), None);
    }

    #[test]
    fn plaintext_and_uid_of_a_key() {
        assert_eq!(plaintext_bytes("chunks/u/c/1.000.enc", 16_032), 16_000);
        assert_eq!(plaintext_bytes("chunks/u/c/1.000.bin", 16_032), 16_032);
        assert_eq!(plaintext_bytes("chunks/u/c/1.000.enc", 10), 0);
        assert_eq!(
            uid_of_key("audio/chunks/stream-7/c/1.000.enc"),
            Some("stream-7")
        );
        assert_eq!(uid_of_key("chunks/u/c/1.000.bin"), Some("u"));
        assert_eq!(uid_of_key("other/u/c/1.000.bin"), None);
        assert_eq!(uid_of_key("chunks"), None);
    }

    #[test]
    fn heads_are_parsed_with_their_body_length() {
        let raw = b"PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\nExpect: 100-continue\r\n\r\nbody";
        let (head, len) = parse_head(raw).unwrap().unwrap();
        assert_eq!(len, raw.len() - 4);
        assert_eq!(
            head,
            Head {
                method: "PUT".into(),
                path: "/b/k".into(),
                content_length: 12,
                expect_continue: true,
                close: false,
                chunked: false,
                json: false,
            }
        );
        assert!(parse_head(b"PUT /b/k HTTP/1.1\r\nHost:").unwrap().is_none());
        let (head, _) = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(head.close, "HTTP/1.0 closes by default");
        let (head, _) =
            parse_head(b"POST /hook HTTP/1.1\r\ncontent-type: Application/JSON\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(head.json);
        assert!(parse_head(b"PUT /b/k HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_err());
    }

    /// A hook request's segments give latency samples; keep-alive serves the next request.
    #[tokio::test]
    async fn json_routes_count_requests_and_latency() {
        let (downstream, addr) = started(routes(0, 0, 0.0)).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let sent = now_ns() - 3_000_000;
        let body = format!(r#"{{"session_id":"u","segments":[{{"sent_ns":{sent}}}]}}"#);
        assert_eq!(
            post(&mut stream, "/hook?uid=u", &body).await,
            "HTTP/1.1 200 OK"
        );
        assert_eq!(
            post(&mut stream, "/hook?uid=u", "[]").await,
            "HTTP/1.1 200 OK"
        );
        let hook = downstream.route(Route::Hook);
        assert_eq!((hook.requests, hook.ok, hook.segments), (2, 2, 1));
        assert_eq!(hook.bad_requests, 1, "a body that is not an object");
        assert_eq!(hook.body_bytes, body.len() as u64 + 2);
        let latencies = downstream.latencies_ns(Route::Hook);
        assert_eq!(latencies.len(), 1);
        assert!((3_000_000..1_000_000_000).contains(&latencies[0]));
        let stats = downstream.stats_json();
        assert_eq!(stats["routes"]["hook"]["latency_ms"]["count"], 1);
        assert_eq!(stats["routes"]["processor"]["requests"], 0);
    }

    /// A processor call the client drops during the delay is abandoned; with a fail rate of 1
    /// the answer is a 500.
    #[tokio::test]
    async fn abandoned_and_failed_calls_are_counted() {
        let (downstream, addr) = started(routes(0, 300, 1.0)).await;
        let mut dropped = TcpStream::connect(addr).await.unwrap();
        let request = "POST /processor HTTP/1.1\r\nContent-Type: application/json\r\n\
                       Content-Length: 2\r\n\r\n{}";
        dropped.write_all(request.as_bytes()).await.unwrap();
        until("the call in flight", || {
            downstream.route(Route::Processor).in_flight == 1
        })
        .await;
        drop(dropped);
        until("the drop noticed", || {
            downstream.route(Route::Processor).abandoned == 1
        })
        .await;
        let mut kept = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        assert_eq!(
            post(&mut kept, "/processor", "{}").await,
            "HTTP/1.1 500 Internal Server Error"
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
        let processor = downstream.route(Route::Processor);
        assert_eq!(
            (
                processor.requests,
                processor.abandoned,
                processor.failed,
                processor.ok
            ),
            (2, 1, 1, 0)
        );
        // The drop was noticed during the delay, before the second call arrived.
        assert_eq!((processor.in_flight, processor.in_flight_max), (0, 1));
    }

    /// object_store's S3 client, configured as pusher's is by `--store s3://bench/audio` and the
    /// AWS_* environment, puts through the store route; it records the keys and lengths.
    #[tokio::test]
    async fn object_store_s3_puts_are_recorded_after_the_delay() {
        let delay = Duration::from_millis(200);
        let (_downstream, addr) = started(routes(200, 0, 0.0)).await;
        let s3 = AmazonS3Builder::new()
            .with_endpoint(format!("http://{addr}"))
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("bench")
            .with_secret_access_key("bench")
            .with_bucket_name("bench")
            .build()
            .unwrap();
        let store = PrefixStore::new(s3, "audio");
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::ContentType,
            AttributeValue::from("application/octet-stream"),
        );
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        let keys = [
            ("chunks/u-1/c-1/1700000000.000.enc", 960_032),
            ("chunks/u-1/c-2/1700000060.000.enc", 32),
            ("chunks/u-2/c-1/1700000000.500.bin", 1000),
        ];
        let started = Instant::now();
        for (key, bytes) in keys {
            let body = vec![7u8; bytes];
            store
                .put_opts(&Path::from(key), body.into(), options.clone())
                .await
                .unwrap();
        }
        assert!(started.elapsed() >= 3 * delay);
        // The same key again: one object, two puts.
        let (key, bytes) = keys[2];
        store
            .put_opts(&Path::from(key), vec![1u8; bytes].into(), options.clone())
            .await
            .unwrap();

        let text = http::get_ok_text(addr, "/_sink/objects", Duration::from_secs(5))
            .await
            .unwrap();
        let recorded: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(recorded["puts"], 4);
        assert_eq!(recorded["puts_in_flight"], 0);
        assert_eq!(recorded["delay_ms"], 200);
        assert_eq!(recorded["body_bytes"], 960_032 + 32 + 1000 + 1000);
        let objects = recorded["objects"].as_object().unwrap();
        assert_eq!(objects.len(), 3);
        assert_eq!(
            objects["audio/chunks/u-1/c-1/1700000000.000.enc"],
            json!({"bytes": 960_032, "plaintext_bytes": 960_000, "puts": 1})
        );
        assert_eq!(
            objects["audio/chunks/u-1/c-2/1700000060.000.enc"]["plaintext_bytes"],
            0
        );
        assert_eq!(
            objects["audio/chunks/u-2/c-1/1700000000.500.bin"],
            json!({"bytes": 1000, "plaintext_bytes": 1000, "puts": 2})
        );
        for path in ["/_sink/health", "/health", "/stats"] {
            let answer = http::get(addr, path, Duration::from_secs(5)).await.unwrap();
            assert_eq!(answer.status, 200, "{path}");
        }
        let stats = http::get_ok_text(addr, "/stats", Duration::from_secs(5))
            .await
            .unwrap();
        let stats: Value = serde_json::from_str(&stats).unwrap();
        assert_eq!(stats["routes"]["store"]["ok"], 4);
        assert_eq!(stats["objects"], 3);
        let missing = http::get(addr, "/bench/audio/nothing", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(missing.status, 404);
    }
}
