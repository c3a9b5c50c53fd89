//! `storm`: a reconnect storm. After a rollout every listen pod reconnects its sessions at once,
//! so the server sees thousands of WebSocket upgrades in the same instant. This scenario fires
//! `--sessions` TCP connects and upgrades at once (no concurrency limit), spread over `--clients`
//! child processes of this tool (the hidden `storm-client` subcommand; a process may hold at
//! most its open-files limit) and over `--source-ips`, and counts what became of each: upgraded
//! (101), refused by HTTP status, refused or reset by TCP, timed out (no 101 within
//! `--connect-timeout-s` of the start), or closed by the server right after the upgrade (close
//! code 1013 when full, 1001 when draining).
//!
//! Each upgraded session sends one 103 and stays open, answering pings (uvicorn drops a client
//! that does not pong), until every attempt has ended and `--hold-s` more have passed. Meanwhile
//! the tool reads the server's RSS and CPU every 100 ms and probes `GET /health` every
//! `--health-every-ms` on connections of its own, as a liveness probe would.
//!
//! Parent and client talk in lines: a client writes `ready` once started, the parent writes `go`
//! to every client at once; a client writes `done` when each of its attempts has ended, the
//! parent writes `report` after the hold and the client answers one JSON line (its [`Tally`]).
//! When its stdin ends the client closes its sessions (Close 1000) and exits.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;

use super::clients::{Clients, check_fits, first_of, share, target_args};
use super::conn::{Conn, End};
use super::{
    RssSeries, Target, connect, count_json, counts_json, cpu_json, print_result_with_rss,
    raise_open_files_limit, round, spawn_progress,
};
use crate::downstream::latency_summary;
use crate::frames;
use crate::http;
use crate::proc_stats::{Process, split_usage};
use crate::prometheus::{self, Scrape};
use crate::sampler::Sampler;
use crate::stats;

/// Uids are `storm-<i>`, conversations `storm-conv-<i>`.
const UID_PREFIX: &str = "storm";
/// Time the clients have to start and say `ready`.
const READY_WAIT: Duration = Duration::from_secs(30);
/// Time allowed beyond the connect timeout for every client to say `done`, and for the reports.
const ANSWER_MARGIN: Duration = Duration::from_secs(30);
/// Period of the server's RSS and CPU readings.
const USAGE_EVERY: Duration = Duration::from_millis(100);
/// Longest a `/health` probe may take; a slower one is a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The goal: every probe answered within this.
const HEALTH_GOAL_MS: f64 = 1000.0;
/// Slowest probes listed in the result.
const SLOWEST_PROBES: usize = 5;
/// Time a session has for the server's answer to its Close when the clients shut down.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Longest response head read before the upgrade counts as failed.
const HEAD_BYTES_MAX: usize = 4096;
/// Close codes named in the result: "try again later" (full) and "going away" (draining).
const CLOSE_FULL: u16 = 1013;
const CLOSE_DRAINING: u16 = 1001;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Sessions opened at once, over all clients (uids storm-0 .. storm-N-1)
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Client processes, each an equal share of the sessions (one descriptor per session, and a
    /// process may hold at most its open-files limit)
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Seconds to keep the sessions open after every attempt has ended (closes by the server
    /// right after the upgrade are counted until then)
    #[arg(long, default_value_t = 5, value_name = "S")]
    hold_s: u64,
    /// Seconds from the sessions' close to the last RSS reading
    #[arg(long, default_value_t = 2, value_name = "S")]
    settle_s: u64,
    /// Milliseconds between `GET /health` probes, each on a new connection, from the start of
    /// the storm to the end of the hold
    #[arg(long, default_value_t = 200, value_name = "MS")]
    health_every_ms: u64,
}

/// The hidden `storm-client` subcommand: one client process of `storm`.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    #[command(flatten)]
    target: Target,
    /// Index of this client's first session
    #[arg(long)]
    first: usize,
    /// Sessions this client opens
    #[arg(long)]
    count: usize,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Upgraded,
    /// The server answered the upgrade with this status.
    Http(u16),
    /// The connect was refused (RST to the SYN).
    TcpRefused,
    /// The connection was reset (or the pipe broken) before the response.
    TcpReset,
    /// The server ended the stream before a complete response head.
    ClosedBeforeResponse,
    /// No 101 within the connect timeout.
    TimedOut,
    /// Anything else (a client-side error, a malformed response), by reason.
    Error(String),
}

/// How the server ended an upgraded session before the clients closed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerEnd {
    /// A Close frame with this code (`None`: without a code).
    Close(Option<u16>),
    /// The stream ended (FIN or reset) without a Close frame.
    NoCloseFrame,
    /// A frame the client could not parse.
    InvalidFrame,
}

impl ServerEnd {
    /// The key it is counted under in the result.
    fn key(self) -> String {
        match self {
            ServerEnd::Close(Some(code)) => code.to_string(),
            ServerEnd::Close(None) => "no_code".to_owned(),
            ServerEnd::NoCloseFrame => "no_close_frame".to_owned(),
            ServerEnd::InvalidFrame => "invalid_frame".to_owned(),
        }
    }
}

/// What a session task tells its client process.
#[derive(Debug)]
enum Event {
    /// The attempt ended: its outcome, its start and end as Unix-epoch nanoseconds, and when
    /// its upgrade request was handed to the kernel (`None`: it never was).
    Attempt {
        outcome: Outcome,
        started_ns: u64,
        sent_ns: Option<u64>,
        ended_ns: u64,
    },
    /// The server ended an upgraded session.
    Ended(ServerEnd),
}

/// Counts of one client's attempts (and, merged, of the whole storm). Pure.
#[derive(Debug, Default, Clone, PartialEq)]
struct Tally {
    attempted: usize,
    upgraded: usize,
    /// Upgrades answered with another status, by status.
    http_refused: BTreeMap<u16, usize>,
    tcp_refused: usize,
    tcp_reset: usize,
    closed_before_response: usize,
    timed_out: usize,
    errors: BTreeMap<String, usize>,
    /// Upgraded sessions the server ended before the hold was over, by [`ServerEnd::key`].
    ended: BTreeMap<String, usize>,
    /// Earliest attempt start, Unix-epoch ns.
    first_start_ns: Option<u64>,
    /// Latest attempt start, Unix-epoch ns (how long firing every connect took).
    last_start_ns: Option<u64>,
    /// Latest 101, Unix-epoch ns.
    last_upgrade_ns: Option<u64>,
    /// Connect start → 101 of every upgraded session, µs.
    latencies_us: Vec<u64>,
    /// Connect start → upgrade request handed to the kernel, of every attempt that got that
    /// far, µs: the client's own share of the latency (a busy client writes its head late).
    request_sent_us: Vec<u64>,
    /// Pings answered with a pong.
    pongs: u64,
    /// CPU time of the client process(es) up to the report, s.
    cpu_s: f64,
}

impl Tally {
    fn record(&mut self, event: Event) {
        match event {
            Event::Attempt {
                outcome,
                started_ns,
                sent_ns,
                ended_ns,
            } => {
                if let Some(sent_ns) = sent_ns {
                    self.request_sent_us
                        .push(sent_ns.saturating_sub(started_ns) / 1000);
                }
                self.attempt(outcome, started_ns, ended_ns);
            }
            Event::Ended(end) => *self.ended.entry(end.key()).or_default() += 1,
        }
    }

    fn attempt(&mut self, outcome: Outcome, started_ns: u64, ended_ns: u64) {
        self.attempted += 1;
        self.first_start_ns = Some(
            self.first_start_ns
                .map_or(started_ns, |t| t.min(started_ns)),
        );
        self.last_start_ns = self.last_start_ns.max(Some(started_ns));
        match outcome {
            Outcome::Upgraded => {
                self.upgraded += 1;
                self.last_upgrade_ns =
                    Some(self.last_upgrade_ns.map_or(ended_ns, |t| t.max(ended_ns)));
                self.latencies_us
                    .push(ended_ns.saturating_sub(started_ns) / 1000);
            }
            Outcome::Http(status) => *self.http_refused.entry(status).or_default() += 1,
            Outcome::TcpRefused => self.tcp_refused += 1,
            Outcome::TcpReset => self.tcp_reset += 1,
            Outcome::ClosedBeforeResponse => self.closed_before_response += 1,
            Outcome::TimedOut => self.timed_out += 1,
            Outcome::Error(reason) => *self.errors.entry(reason).or_default() += 1,
        }
    }

    fn http_refused_total(&self) -> usize {
        self.http_refused.values().sum()
    }

    /// Attempts that did not end in a 101: HTTP refusals, TCP refusals and resets, closes
    /// before the response, timeouts and other errors.
    fn refused(&self) -> usize {
        self.http_refused_total()
            + self.tcp_refused
            + self.tcp_reset
            + self.closed_before_response
            + self.timed_out
            + self.errors.values().sum::<usize>()
    }

    /// Upgraded sessions the server ended during the storm or the hold.
    fn ended_total(&self) -> usize {
        self.ended.values().sum()
    }

    fn merge(&mut self, other: Tally) {
        self.attempted += other.attempted;
        self.upgraded += other.upgraded;
        for (status, count) in other.http_refused {
            *self.http_refused.entry(status).or_default() += count;
        }
        self.tcp_refused += other.tcp_refused;
        self.tcp_reset += other.tcp_reset;
        self.closed_before_response += other.closed_before_response;
        self.timed_out += other.timed_out;
        for (reason, count) in other.errors {
            *self.errors.entry(reason).or_default() += count;
        }
        for (key, count) in other.ended {
            *self.ended.entry(key).or_default() += count;
        }
        self.first_start_ns = match (self.first_start_ns, other.first_start_ns) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_start_ns = self.last_start_ns.max(other.last_start_ns);
        self.last_upgrade_ns = self.last_upgrade_ns.max(other.last_upgrade_ns);
        self.latencies_us.extend(other.latencies_us);
        self.request_sent_us.extend(other.request_sent_us);
        self.pongs += other.pongs;
        self.cpu_s += other.cpu_s;
    }

    /// The client's answer to `report`: one JSON line.
    fn to_line(&self) -> String {
        json!({
            "attempted": self.attempted,
            "upgraded": self.upgraded,
            "http_refused": self.http_refused.iter()
                .map(|(status, count)| (status.to_string(), Value::from(*count)))
                .collect::<Map<_, _>>(),
            "tcp_refused": self.tcp_refused,
            "tcp_reset": self.tcp_reset,
            "closed_before_response": self.closed_before_response,
            "timed_out": self.timed_out,
            "errors": self.errors,
            "ended": self.ended,
            "first_start_ns": self.first_start_ns,
            "last_start_ns": self.last_start_ns,
            "last_upgrade_ns": self.last_upgrade_ns,
            "latencies_us": self.latencies_us,
            "request_sent_us": self.request_sent_us,
            "pongs": self.pongs,
            "cpu_s": self.cpu_s,
        })
        .to_string()
    }

    fn parse(line: &str) -> Result<Tally, String> {
        let value: Value =
            serde_json::from_str(line).map_err(|e| format!("report {line:.80}: {e}"))?;
        let bad = |key: &str| format!("report: no valid \"{key}\"");
        let count = |key: &str| value[key].as_u64().ok_or_else(|| bad(key));
        let counts = |key: &str| -> Result<BTreeMap<String, usize>, String> {
            value[key]
                .as_object()
                .ok_or_else(|| bad(key))?
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.as_u64().ok_or_else(|| bad(key))? as usize)))
                .collect()
        };
        let time = |key: &str| match &value[key] {
            Value::Null => Ok(None),
            v => v.as_u64().map(Some).ok_or_else(|| bad(key)),
        };
        let http_refused = counts("http_refused")?
            .into_iter()
            .map(|(status, count)| Ok((status.parse().map_err(|_| bad("http_refused"))?, count)))
            .collect::<Result<_, String>>()?;
        let micros = |key: &str| -> Result<Vec<u64>, String> {
            value[key]
                .as_array()
                .ok_or_else(|| bad(key))?
                .iter()
                .map(|v| v.as_u64().ok_or_else(|| bad(key)))
                .collect()
        };
        Ok(Tally {
            attempted: count("attempted")? as usize,
            upgraded: count("upgraded")? as usize,
            http_refused,
            tcp_refused: count("tcp_refused")? as usize,
            tcp_reset: count("tcp_reset")? as usize,
            closed_before_response: count("closed_before_response")? as usize,
            timed_out: count("timed_out")? as usize,
            errors: counts("errors")?,
            ended: counts("ended")?,
            first_start_ns: time("first_start_ns")?,
            last_start_ns: time("last_start_ns")?,
            last_upgrade_ns: time("last_upgrade_ns")?,
            latencies_us: micros("latencies_us")?,
            request_sent_us: micros("request_sent_us")?,
            pongs: count("pongs")?,
            cpu_s: value["cpu_s"].as_f64().ok_or_else(|| bad("cpu_s"))?,
        })
    }
}

/// The storm's figures and goals from the merged tally (pure): the result line less the
/// server's readings.
fn storm_figures(tally: &Tally, sessions: usize, connect_timeout_s: u64) -> Map<String, Value> {
    let seconds = |ns: u64| ns as f64 / 1e9;
    // First connect → last 101, whether or not every session opened.
    let last_upgrade_s = match (tally.first_start_ns, tally.last_upgrade_ns) {
        (Some(first), Some(last)) => Some(seconds(last.saturating_sub(first))),
        _ => None,
    };
    let all_upgraded = tally.upgraded == sessions && sessions > 0;
    // First connect → last connect started: how simultaneous the storm was.
    let connects_fired_s = match (tally.first_start_ns, tally.last_start_ns) {
        (Some(first), Some(last)) => Some(seconds(last.saturating_sub(first))),
        _ => None,
    };
    let all_open_s = last_upgrade_s.filter(|_| all_upgraded);
    let connects_per_s = last_upgrade_s
        .filter(|&s| s > 0.0)
        .map(|s| round(tally.upgraded as f64 / s, 1));
    let ended_by = |code: u16| tally.ended.get(&code.to_string()).copied().unwrap_or(0);
    let ended_total = tally.ended_total();
    let nanos = |micros: &[u64]| -> Vec<u64> { micros.iter().map(|us| us * 1000).collect() };
    let refused = tally.refused();
    let timeout = connect_timeout_s as f64;
    let fields = json!({
        "attempted": tally.attempted,
        "upgraded": tally.upgraded,
        "refused": refused,
        "http_refused": tally.http_refused.iter()
            .map(|(status, count)| (status.to_string(), Value::from(*count)))
            .collect::<Map<_, _>>(),
        "tcp": {
            "refused": tally.tcp_refused,
            "reset": tally.tcp_reset,
            "closed_before_response": tally.closed_before_response,
        },
        "timed_out": tally.timed_out,
        "errors": tally.errors,
        "closed_after_upgrade": {
            "total": ended_total,
            "full_1013": ended_by(CLOSE_FULL),
            "draining_1001": ended_by(CLOSE_DRAINING),
            "other": ended_total - ended_by(CLOSE_FULL) - ended_by(CLOSE_DRAINING),
            "by_code": tally.ended,
        },
        "open_at_end_of_hold": tally.upgraded.saturating_sub(ended_total),
        "all_open_s": all_open_s.map(|s| round(s, 3)),
        "last_upgrade_s": last_upgrade_s.map(|s| round(s, 3)),
        "connects_per_s": connects_per_s,
        "connects_fired_s": connects_fired_s.map(|s| round(s, 3)),
        "upgrade_latency_ms": latency_summary(&nanos(&tally.latencies_us)),
        "request_sent_ms": latency_summary(&nanos(&tally.request_sent_us)),
        "client_pongs": tally.pongs,
        "client_cpu_s": round(tally.cpu_s, 2),
        "goals": {
            "refused_max": 0,
            "all_open_s_max": connect_timeout_s,
            "health_probe_max_ms_max": HEALTH_GOAL_MS,
            "no_refusal": refused == 0,
            "all_open": all_open_s.is_some_and(|s| s <= timeout),
            "none_closed": ended_total == 0,
        },
    });
    match fields {
        Value::Object(fields) => fields,
        _ => unreachable!("a JSON object"),
    }
}

/// One `/health` probe: its start (s from the start of the storm), its duration, and the
/// failure if it was not answered 200 within [`PROBE_TIMEOUT`].
#[derive(Debug, Clone, PartialEq)]
struct Probe {
    at_s: f64,
    ms: f64,
    failure: Option<String>,
}

/// The `health` figures (pure): probe count, failures by reason, and the percentiles of every
/// probe's duration (a failed probe counts with the time it took to fail). `within_limit`:
/// every probe answered 200 within [`HEALTH_GOAL_MS`] (`null` without a probe).
fn health_json(probes: &[Probe], every_ms: u64) -> Value {
    let mut ms: Vec<f64> = probes.iter().map(|probe| probe.ms).collect();
    ms.sort_by(f64::total_cmp);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for reason in probes.iter().filter_map(|probe| probe.failure.clone()) {
        *reasons.entry(reason).or_default() += 1;
    }
    let failures: usize = reasons.values().sum();
    let max = ms.last().copied();
    let mut slowest: Vec<&Probe> = probes.iter().collect();
    slowest.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    json!({
        "every_ms": every_ms,
        "probes": probes.len(),
        "answered": probes.len() - failures,
        "failures": failures,
        "failure_reasons": reasons,
        "p50_ms": stats::percentile(&ms, 0.5).map(|v| round(v, 2)),
        "p99_ms": stats::percentile(&ms, 0.99).map(|v| round(v, 2)),
        "max_ms": max.map(|v| round(v, 2)),
        "slowest": slowest.iter().take(SLOWEST_PROBES)
            .map(|probe| json!([round(probe.at_s, 2), round(probe.ms, 2)]))
            .collect::<Vec<_>>(),
        "within_limit": max.map(|max| failures == 0 && max < HEALTH_GOAL_MS),
    })
}

/// Probes `GET /health` every `every` (each probe on its own connection and task, so a slow
/// answer does not delay the next probe) until stopped.
struct Prober {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Vec<Probe>>,
}

impl Prober {
    fn start(target: &Target, every: Duration, start: Instant) -> Prober {
        let addr = target.addr;
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
            let mut probes = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = ticks.tick() => {
                        probes.spawn(async move {
                            let started = Instant::now();
                            let failure = match http::get(addr, "/health", PROBE_TIMEOUT).await {
                                Ok(response) if response.status == 200 => None,
                                Ok(response) => Some(format!("status {}", response.status)),
                                Err(e) => Some(probe_failure(&e)),
                            };
                            Probe {
                                at_s: started.saturating_duration_since(start).as_secs_f64(),
                                ms: started.elapsed().as_secs_f64() * 1000.0,
                                failure,
                            }
                        });
                    }
                }
            }
            let mut done = Vec::new();
            while let Some(probe) = probes.join_next().await {
                if let Ok(probe) = probe {
                    done.push(probe);
                }
            }
            done.sort_by(|a: &Probe, b: &Probe| a.at_s.total_cmp(&b.at_s));
            done
        });
        Prober { stop, task }
    }

    /// Stops probing, waits for the probes in flight and returns every probe, oldest first.
    async fn finish(self) -> Vec<Probe> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// A probe's error without the request it names (`GET http://host/health: ` is the same for
/// every probe), so that failures count by cause.
fn probe_failure(error: &str) -> String {
    error
        .split_once("/health: ")
        .map_or(error, |(_, cause)| cause)
        .to_owned()
}

/// `/metrics` figures (pusher only): sessions upgraded, refused by reason, closed by code and
/// turned away after the upgrade by reason (1013 full, 1001 draining), and handshakes evicted
/// (`null` on a server without the counter) during the storm and the hold; sessions open at the
/// end of the hold and after the close.
fn metrics_json(before: &Scrape, held: &Scrape, after: Option<&Scrape>) -> Value {
    json!({
        "sessions_opened": count_json(held.value("pusher_sessions_opened_total")
            - before.value("pusher_sessions_opened_total")),
        "sessions_refused": counts_json(
            &held.growth_by_labels(before, "pusher_sessions_refused_total", &["reason"])),
        "sessions_closed": counts_json(
            &held.growth_by_labels(before, "pusher_sessions_closed_total", &["code"])),
        "sessions_turned_away": counts_json(
            &held.growth_by_labels(before, "pusher_sessions_turned_away_total", &["reason"])),
        "handshakes_evicted": held.get("pusher_handshakes_evicted_total")
            .map(|evicted| count_json(evicted - before.value("pusher_handshakes_evicted_total"))),
        "sessions_open_at_end_of_hold": count_json(held.sum("pusher_sessions_open")),
        "sessions_open_after": after.map(|after| count_json(after.sum("pusher_sessions_open"))),
        "budget_bytes": held.get("pusher_memory_budget_bytes"),
    })
}

/// Reads one answer from every client and checks it is `expected`.
async fn expect_all(clients: &mut Clients, expected: &str, wait: Duration) -> Result<(), String> {
    for (index, line) in clients.answers(wait).await?.iter().enumerate() {
        if line != expected {
            return Err(format!(
                "client process {index}: expected {expected:?}, got {line:.80}"
            ));
        }
    }
    Ok(())
}

pub async fn run(args: Args) -> Result<(), String> {
    if args.sessions == 0 || args.health_every_ms == 0 {
        return Err("--sessions and --health-every-ms must be at least 1".to_owned());
    }
    let open_files_limit =
        raise_open_files_limit().map_err(|e| format!("open-files limit: {e}"))?;
    check_fits(args.sessions, args.clients, open_files_limit)?;
    let target = &args.target;
    let server = Process::new(target.pid);
    let before = prometheus::scrape_pusher(target.addr, "session counts").await;
    let source_ips: Vec<String> = target.source_ips.iter().map(|ip| ip.to_string()).collect();
    let mut clients = Clients::spawn(args.clients, |index| {
        let mut client = vec!["storm-client".to_owned()];
        client.extend(target_args(target));
        client.extend(
            [
                "--first",
                &first_of(args.sessions, args.clients, index).to_string(),
                "--count",
                &share(args.sessions, args.clients, index).to_string(),
            ]
            .map(str::to_owned),
        );
        client
    })?;
    expect_all(&mut clients, "ready", READY_WAIT).await?;
    let rss_before_kib = server.rss_kib().map_err(|e| e.to_string())?;
    let cpu_before_s = server.cpu_s().map_err(|e| e.to_string())?;
    let usage = Sampler::start(USAGE_EVERY, move || async move { server.usage().ok() });
    eprintln!(
        "storm: {} sessions at once to {} from {} client processes, source IPs {}; server RSS \
         {:.1} MiB before",
        args.sessions,
        target.addr,
        args.clients,
        if source_ips.is_empty() {
            "chosen by the kernel".to_owned()
        } else {
            source_ips.join(",")
        },
        rss_before_kib as f64 / 1024.0
    );
    let start = Instant::now();
    let prober = Prober::start(target, Duration::from_millis(args.health_every_ms), start);
    clients.send(|_| "go".to_owned()).await?;
    let connect_timeout = Duration::from_secs(target.connect_timeout_s);
    let progress = spawn_progress(
        start,
        start + connect_timeout + ANSWER_MARGIN,
        Duration::from_secs(1),
        move || match (server.rss_kib(), server.cpu_s()) {
            (Ok(kib), Ok(cpu_s)) => format!(
                "server RSS {:.1} MiB, CPU {:.1}s",
                kib as f64 / 1024.0,
                cpu_s - cpu_before_s
            ),
            (Err(e), _) | (_, Err(e)) => format!("server not readable: {e}"),
        },
    );
    let done = expect_all(&mut clients, "done", connect_timeout + ANSWER_MARGIN).await;
    progress.abort();
    done?;
    let storm_s = start.elapsed().as_secs_f64();
    let cpu_storm_s = server.cpu_s().map_err(|e| e.to_string())? - cpu_before_s;
    eprintln!(
        "storm: every attempt ended within {storm_s:.2}s; holding the sessions {}s",
        args.hold_s
    );
    tokio::time::sleep(Duration::from_secs(args.hold_s)).await;
    clients.send(|_| "report".to_owned()).await?;
    let reports = clients.answers(ANSWER_MARGIN).await?;
    let hold_end = Instant::now();
    let probes = prober.finish().await;
    let cpu_s = server.cpu_s().map_err(|e| e.to_string())? - cpu_before_s;
    let held = match before {
        Some(_) => prometheus::scrape_pusher(target.addr, "session counts").await,
        None => None,
    };
    let mut tally = Tally::default();
    for (index, line) in reports.iter().enumerate() {
        tally.merge(Tally::parse(line).map_err(|e| format!("client process {index}: {e}"))?);
    }
    clients.shutdown().await?;
    tokio::time::sleep(Duration::from_secs(args.settle_s)).await;
    let rss_after_kib = server.rss_kib().map_err(|e| e.to_string())?;
    let after = match held {
        Some(_) => prometheus::scrape_pusher(target.addr, "session counts").await,
        None => None,
    };
    let (rss, cpu) = split_usage(&usage.finish().await);
    let rss_peak_kib = rss
        .iter()
        .filter(|&&(at, _)| at >= start && at <= hold_end)
        .map(|&(_, kib)| kib)
        .max()
        .unwrap_or(rss_before_kib);

    let mut fields = Map::from_iter([
        ("sessions".to_owned(), json!(args.sessions)),
        ("clients".to_owned(), json!(args.clients)),
        ("source_ips".to_owned(), json!(source_ips)),
        (
            "connect_timeout_s".to_owned(),
            json!(target.connect_timeout_s),
        ),
        ("hold_s".to_owned(), json!(args.hold_s)),
    ]);
    fields.extend(storm_figures(
        &tally,
        args.sessions,
        target.connect_timeout_s,
    ));
    let health = health_json(&probes, args.health_every_ms);
    let metrics = match (&before, &held) {
        (Some(before), Some(held)) => metrics_json(before, held, after.as_ref()),
        _ => Value::Null,
    };
    let budget_bytes = metrics["budget_bytes"].as_f64();
    fields.insert("storm_s".to_owned(), json!(round(storm_s, 2)));
    fields.insert(
        "rss".to_owned(),
        json!({
            "before_kib": rss_before_kib,
            "peak_kib": rss_peak_kib,
            "after_kib": rss_after_kib,
            "samples": rss.len(),
            "budget_bytes": budget_bytes,
        }),
    );
    fields.insert(
        "server_cpu_s_storm".to_owned(),
        json!(round(cpu_storm_s, 2)),
    );
    fields.insert("server_cpu_s".to_owned(), json!(round(cpu_s, 2)));
    fields.insert("cpu".to_owned(), cpu_json(&cpu, start, hold_end));
    fields.insert("health".to_owned(), health.clone());
    fields.insert("metrics".to_owned(), metrics);
    fields["goals"]["health_ok"] = health["within_limit"].clone();

    let ms = |value: &Value| {
        value
            .as_f64()
            .map_or("n/a".to_owned(), |v| format!("{v:.1}"))
    };
    let latency = &fields["upgrade_latency_ms"];
    let human = format!(
        "storm: {} sessions at once from {} processes\n  \
         upgraded {}, refused {} (HTTP {}, TCP refused {}, reset {}, closed before the response \
         {}, timed out {}, errors {}), closed after the upgrade {} {}\n  \
         all open in {} s (last 101 at {} s), {} upgrades/s; upgrade latency p50 {} ms, p99 {} \
         ms, max {} ms (request sent: p50 {} ms, p99 {} ms, max {} ms)\n  \
         server RSS {:.1} MiB before, {:.1} MiB peak, {:.1} MiB after; CPU {:.1} s in the storm, \
         {:.1} s to the end of the hold\n  \
         /health: {} probes, {} failed, p99 {} ms, max {} ms (goal: every probe < {HEALTH_GOAL_MS} ms)",
        args.sessions,
        args.clients,
        tally.upgraded,
        tally.refused(),
        fields["http_refused"],
        tally.tcp_refused,
        tally.tcp_reset,
        tally.closed_before_response,
        tally.timed_out,
        tally.errors.values().sum::<usize>(),
        tally.ended_total(),
        fields["closed_after_upgrade"]["by_code"],
        ms(&fields["all_open_s"]),
        ms(&fields["last_upgrade_s"]),
        ms(&fields["connects_per_s"]),
        ms(&latency["p50"]),
        ms(&latency["p99"]),
        ms(&latency["max"]),
        ms(&fields["request_sent_ms"]["p50"]),
        ms(&fields["request_sent_ms"]["p99"]),
        ms(&fields["request_sent_ms"]["max"]),
        rss_before_kib as f64 / 1024.0,
        rss_peak_kib as f64 / 1024.0,
        rss_after_kib as f64 / 1024.0,
        cpu_storm_s,
        cpu_s,
        health["probes"],
        health["failures"],
        ms(&health["p99_ms"]),
        ms(&health["max_ms"]),
    );
    print_result_with_rss(
        "storm",
        target,
        Value::Object(fields),
        &human,
        Some(RssSeries {
            start,
            samples: &rss,
            cpu: &cpu,
            budget_bytes,
        }),
    )
}

/// A client's clock: `Instant`s as nanoseconds since the Unix epoch, to line up times across
/// the client processes (read once, so that the times of one process stay monotonic).
#[derive(Debug, Clone, Copy)]
struct Clock {
    at: Instant,
    unix_ns: u64,
}

impl Clock {
    fn now() -> Clock {
        let unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64);
        Clock {
            at: Instant::now(),
            unix_ns,
        }
    }

    fn unix_ns(&self, at: Instant) -> u64 {
        self.unix_ns + at.saturating_duration_since(self.at).as_nanos() as u64
    }
}

/// An I/O error of step `step` as an outcome: a refused connect, a reset, or an error by reason.
fn io_outcome(step: &str, error: &io::Error) -> Outcome {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => Outcome::TcpRefused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Outcome::TcpReset,
        _ => Outcome::Error(format!("{step}: {error}")),
    }
}

/// The length of the response head in `buf` (through the blank line), once complete.
fn head_len(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// The status code of a response head (`HTTP/1.1 503 Service Unavailable` → 503).
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split(' ');
    words.next()?.starts_with("HTTP/").then_some(())?;
    let code = words.next()?;
    (code.len() == 3).then_some(())?;
    code.parse().ok()
}

/// Connects, sends the upgrade request (noting when in `sent`) and reads the response head: the
/// stream and the bytes read after the head on a 101, the outcome otherwise.
async fn upgrade(
    target: &Target,
    index: usize,
    sent: &mut Option<Instant>,
) -> Result<(TcpStream, Vec<u8>), Outcome> {
    let source_ip =
        (!target.source_ips.is_empty()).then(|| target.source_ips[index % target.source_ips.len()]);
    let mut stream = connect(target.addr, source_ip)
        .await
        .map_err(|e| io_outcome("connect", &e))?;
    let uid = format!("{UID_PREFIX}-{index}");
    let request = frames::listen_request(&target.addr.to_string(), &uid, target.sample_rate);
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| io_outcome("upgrade write", &e))?;
    *sent = Some(Instant::now());
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let head = loop {
        if let Some(head) = head_len(&buf) {
            break head;
        }
        if buf.len() > HEAD_BYTES_MAX {
            return Err(Outcome::Error("upgrade: response head too long".to_owned()));
        }
        match stream.read(&mut chunk).await {
            Ok(0) => return Err(Outcome::ClosedBeforeResponse),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(io_outcome("upgrade read", &e)),
        }
    };
    match status_code(&buf[..head]) {
        Some(101) => Ok((stream, buf.split_off(head))),
        Some(status) => Err(Outcome::Http(status)),
        None => Err(Outcome::Error("upgrade: malformed status line".to_owned())),
    }
}

/// Keeps an upgraded session open: sends its 103, answers pings and sends keepalive pings as
/// the listen service does ([`Conn`]), and notices the server ending it (returned), until
/// `closing` turns true (then it sends a Close 1000, waits for the server's and returns `None`).
/// `buf` holds the bytes read after the 101.
async fn hold(
    stream: TcpStream,
    buf: Vec<u8>,
    index: usize,
    mut closing: watch::Receiver<bool>,
    pongs: Arc<AtomicU64>,
) -> Option<ServerEnd> {
    let conversation = format!("{UID_PREFIX}-conv-{index}");
    let first = frames::binary_frame(&frames::message(
        frames::CONVERSATION_ID,
        conversation.as_bytes(),
    ));
    let mut conn = Conn::with_buffered(stream, buf);
    // A failed write shows in the read below (the server's Close may already be buffered).
    let _ = conn.send(&first).await;
    let stop = until_true(&mut closing);
    tokio::pin!(stop);
    let far = Instant::now() + Duration::from_secs(24 * 3600);
    let served = conn.wait_until_or(far, stop, &mut |_| {}).await;
    pongs.fetch_add(conn.pings().answered, Ordering::Relaxed);
    match served {
        Ok(_) => {
            // The server's answer is not counted: the session ends either way.
            let _ = conn.close(CLOSE_WAIT, &mut |_| {}).await;
            None
        }
        Err(End::Closed(code)) => Some(ServerEnd::Close(code)),
        Err(End::Invalid(_)) => Some(ServerEnd::InvalidFrame),
        Err(_) => Some(ServerEnd::NoCloseFrame),
    }
}

/// Waits until `flag` is true (or its sender is gone).
async fn until_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|&value| value).await;
}

/// One session of a client: the attempt (within `deadline`), its outcome to `events`, then, if
/// upgraded, the hold and the server's end of it, if any.
async fn session(
    target: Arc<Target>,
    index: usize,
    clock: Clock,
    deadline: Instant,
    events: mpsc::UnboundedSender<Event>,
    closing: watch::Receiver<bool>,
    pongs: Arc<AtomicU64>,
) {
    let started = Instant::now();
    let mut sent = None;
    let attempt =
        tokio::time::timeout_at(deadline.into(), upgrade(&target, index, &mut sent)).await;
    let ended = Instant::now();
    let (outcome, upgraded) = match attempt {
        Ok(Ok(upgraded)) => (Outcome::Upgraded, Some(upgraded)),
        Ok(Err(outcome)) => (outcome, None),
        Err(_) => (Outcome::TimedOut, None),
    };
    let _ = events.send(Event::Attempt {
        outcome,
        started_ns: clock.unix_ns(started),
        sent_ns: sent.map(|sent| clock.unix_ns(sent)),
        ended_ns: clock.unix_ns(ended),
    });
    if let Some((stream, buf)) = upgraded
        && let Some(end) = hold(stream, buf, index, closing, pongs).await
    {
        let _ = events.send(Event::Ended(end));
    }
}

/// Writes `line` and a newline to stdout.
async fn say(out: &mut tokio::io::Stdout, line: &str) -> Result<(), String> {
    let line = format!("{line}\n");
    let written = async {
        out.write_all(line.as_bytes()).await?;
        out.flush().await
    };
    written
        .await
        .map_err(|e| format!("storm-client: stdout: {e}"))
}

/// One client process: on `go` fires its sessions at once, says `done` when every attempt has
/// ended, answers `report` with its tally, and closes its sessions when its stdin ends.
pub async fn run_client(args: ClientArgs) -> Result<(), String> {
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    say(&mut out, "ready").await?;
    match commands.next_line().await {
        Ok(Some(line)) if line == "go" => {}
        // The parent is gone.
        Ok(None) => return Ok(()),
        Ok(Some(line)) => return Err(format!("storm-client: expected \"go\", got {line:?}")),
        Err(e) => return Err(format!("storm-client: stdin: {e}")),
    }
    let clock = Clock::now();
    let deadline = clock.at + Duration::from_secs(args.target.connect_timeout_s);
    let (events_to, mut events) = mpsc::unbounded_channel();
    let (closing_to, closing) = watch::channel(false);
    let pongs = Arc::new(AtomicU64::new(0));
    let target = Arc::new(args.target);
    let mut sessions = JoinSet::new();
    for index in args.first..args.first + args.count {
        sessions.spawn(session(
            Arc::clone(&target),
            index,
            clock,
            deadline,
            events_to.clone(),
            closing.clone(),
            Arc::clone(&pongs),
        ));
    }
    drop(events_to);
    let mut tally = Tally::default();
    let mut said_done = false;
    loop {
        if !said_done && tally.attempted == args.count {
            say(&mut out, "done").await?;
            said_done = true;
        }
        tokio::select! {
            Some(event) = events.recv() => tally.record(event),
            line = commands.next_line() => match line {
                Ok(Some(line)) if line == "report" && said_done => break,
                Ok(Some(line)) => {
                    return Err(format!("storm-client: unexpected command {line:?}"));
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("storm-client: stdin: {e}")),
            },
        }
    }
    tally.pongs = pongs.load(Ordering::Relaxed);
    tally.cpu_s = Process::current().cpu_s().unwrap_or(0.0);
    say(&mut out, &tally.to_line()).await?;
    // Hold the sessions until the parent ends stdin, then close them all.
    while let Ok(Some(_)) = commands.next_line().await {}
    let _ = closing_to.send(true);
    let _ = tokio::time::timeout(CLOSE_WAIT + Duration::from_secs(1), async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::conn::close_code;

    const S: u64 = 1_000_000_000;

    /// An attempt whose request went out 1 ms after its start.
    fn attempt(outcome: Outcome, started_ns: u64, ended_ns: u64) -> Event {
        Event::Attempt {
            outcome,
            started_ns,
            sent_ns: Some(started_ns + 1_000_000),
            ended_ns,
        }
    }

    /// A client's tally: 3 upgraded (one then closed 1013), a 503, a reset, a timeout.
    fn sample() -> Tally {
        let mut tally = Tally::default();
        tally.record(attempt(Outcome::Upgraded, 10 * S, 10 * S + 2_000_000));
        tally.record(attempt(Outcome::Upgraded, 10 * S + 1000, 11 * S));
        tally.record(attempt(
            Outcome::Upgraded,
            10 * S + 5000,
            10 * S + 500_000_000,
        ));
        tally.record(attempt(Outcome::Http(503), 10 * S, 10 * S + 1_000_000));
        tally.record(attempt(Outcome::TcpReset, 10 * S, 10 * S + 1_000_000));
        tally.record(attempt(Outcome::TimedOut, 10 * S, 20 * S));
        tally.record(Event::Ended(ServerEnd::Close(Some(CLOSE_FULL))));
        tally
    }

    #[test]
    fn every_attempt_is_counted_once() {
        let tally = sample();
        assert_eq!(tally.attempted, 6);
        assert_eq!(tally.upgraded, 3);
        assert_eq!(tally.refused(), 3);
        assert_eq!(tally.upgraded + tally.refused(), tally.attempted);
        assert_eq!(tally.http_refused, BTreeMap::from([(503, 1)]));
        assert_eq!(tally.ended_total(), 1);
        assert_eq!(tally.first_start_ns, Some(10 * S));
        assert_eq!(tally.last_start_ns, Some(10 * S + 5000));
        assert_eq!(tally.last_upgrade_ns, Some(11 * S));
        assert_eq!(tally.latencies_us, [2_000, 999_999, 499_995]);
        assert_eq!(tally.request_sent_us, [1_000; 6]);
        // A connect that failed sent no request.
        let mut refused = Tally::default();
        refused.record(Event::Attempt {
            outcome: Outcome::TcpRefused,
            started_ns: S,
            sent_ns: None,
            ended_ns: S + 10,
        });
        assert_eq!(refused.tcp_refused, 1);
        assert!(refused.request_sent_us.is_empty());
        let mut other = Tally::default();
        other.record(attempt(Outcome::TcpRefused, 9 * S, 9 * S + 10));
        other.record(attempt(Outcome::ClosedBeforeResponse, 9 * S, 9 * S + 10));
        other.record(attempt(
            Outcome::Error("connect: x".to_owned()),
            9 * S,
            9 * S,
        ));
        other.record(attempt(Outcome::Http(503), 9 * S, 9 * S + 10));
        other.record(Event::Ended(ServerEnd::NoCloseFrame));
        let mut merged = tally.clone();
        merged.merge(other);
        assert_eq!(merged.attempted, 10);
        assert_eq!(merged.upgraded + merged.refused(), merged.attempted);
        assert_eq!(merged.http_refused, BTreeMap::from([(503, 2)]));
        assert_eq!(
            merged.first_start_ns,
            Some(9 * S),
            "the earliest start of both"
        );
        assert_eq!(
            merged.last_start_ns,
            Some(10 * S + 5000),
            "the latest start of both"
        );
        assert_eq!(merged.last_upgrade_ns, Some(11 * S));
        assert_eq!(merged.ended_total(), 2);
        assert_eq!(merged.request_sent_us.len(), 10);
        let mut empty = Tally::default();
        empty.merge(Tally::default());
        assert_eq!(empty, Tally::default());
    }

    #[test]
    fn a_tally_survives_its_line() {
        let mut tally = sample();
        tally.pongs = 4;
        tally.cpu_s = 0.25;
        tally.record(attempt(Outcome::Error("connect: EMFILE".to_owned()), 0, 0));
        let line = tally.to_line();
        assert!(!line.contains('\n'));
        assert_eq!(Tally::parse(&line).unwrap(), tally);
        assert_eq!(
            Tally::parse(&Tally::default().to_line()).unwrap(),
            Tally::default()
        );
        assert!(Tally::parse("done").is_err());
        let missing = Tally::parse(r#"{"attempted": 1}"#).unwrap_err();
        assert!(missing.contains("no valid"), "{missing}");
        let bad_status = line.replace("\"503\"", "\"5x3\"");
        assert!(Tally::parse(&bad_status).is_err());
    }

    #[test]
    fn figures_account_for_every_session() {
        let figures = Value::Object(storm_figures(&sample(), 6, 10));
        assert_eq!(figures["attempted"], 6);
        assert_eq!(figures["upgraded"], 3);
        assert_eq!(figures["refused"], 3);
        assert_eq!(figures["http_refused"], json!({"503": 1}));
        assert_eq!(
            figures["tcp"],
            json!({"refused": 0, "reset": 1, "closed_before_response": 0})
        );
        assert_eq!(figures["timed_out"], 1);
        assert_eq!(
            figures["closed_after_upgrade"],
            json!({"total": 1, "full_1013": 1, "draining_1001": 0, "other": 0,
                   "by_code": {"1013": 1}})
        );
        assert_eq!(figures["open_at_end_of_hold"], 2);
        // Not every session opened: no all-open time, but the last 101 and the rate.
        assert_eq!(figures["all_open_s"], Value::Null);
        assert_eq!(figures["last_upgrade_s"], 1.0);
        assert_eq!(figures["connects_per_s"], 3.0);
        assert_eq!(figures["connects_fired_s"], 0.0);
        assert_eq!(figures["upgrade_latency_ms"]["count"], 3);
        assert_eq!(figures["upgrade_latency_ms"]["p50"], 500.0);
        assert_eq!(figures["upgrade_latency_ms"]["max"], 1000.0);
        assert_eq!(figures["request_sent_ms"]["count"], 6);
        assert_eq!(figures["request_sent_ms"]["max"], 1.0);
        assert_eq!(
            figures["goals"],
            json!({"refused_max": 0, "all_open_s_max": 10, "health_probe_max_ms_max": 1000.0,
                   "no_refusal": false, "all_open": false, "none_closed": false})
        );
    }

    #[test]
    fn a_storm_that_opens_everything_meets_its_goals_within_the_timeout() {
        let mut tally = Tally::default();
        for i in 0..4u64 {
            tally.record(attempt(Outcome::Upgraded, S, S + (i + 1) * S / 2));
        }
        let figures = Value::Object(storm_figures(&tally, 4, 10));
        assert_eq!(figures["all_open_s"], 2.0);
        assert_eq!(figures["connects_fired_s"], 0.0);
        assert_eq!(figures["connects_per_s"], 2.0);
        assert_eq!(figures["goals"]["no_refusal"], true);
        assert_eq!(figures["goals"]["all_open"], true);
        assert_eq!(figures["goals"]["none_closed"], true);
        // All open, but later than the timeout.
        let figures = Value::Object(storm_figures(&tally, 4, 1));
        assert_eq!(figures["goals"]["all_open"], false);
        // Nothing upgraded at all.
        let mut refused = Tally::default();
        refused.record(attempt(Outcome::Http(503), S, S));
        let figures = Value::Object(storm_figures(&refused, 1, 10));
        assert_eq!(figures["last_upgrade_s"], Value::Null);
        assert_eq!(figures["connects_per_s"], Value::Null);
        assert_eq!(figures["upgrade_latency_ms"]["p99"], Value::Null);
        assert_eq!(figures["goals"]["all_open"], false);
    }

    #[test]
    fn health_needs_every_probe_answered_within_a_second() {
        let probe = |at_s: f64, ms: f64, failure: Option<&str>| Probe {
            at_s,
            ms,
            failure: failure.map(str::to_owned),
        };
        let mut probes: Vec<Probe> = (0..100)
            .map(|i| probe(i as f64 * 0.2, 1.0 + i as f64 / 100.0, None))
            .collect();
        let health = health_json(&probes, 200);
        assert_eq!(health["probes"], 100);
        assert_eq!(health["answered"], 100);
        assert_eq!(health["failures"], 0);
        assert_eq!(health["p50_ms"], 1.49);
        assert_eq!(health["p99_ms"], 1.98);
        assert_eq!(health["max_ms"], 1.99);
        assert_eq!(health["slowest"][0], json!([19.8, 1.99]));
        assert_eq!(health["slowest"].as_array().unwrap().len(), SLOWEST_PROBES);
        assert_eq!(health["within_limit"], true);
        // One slow probe fails the goal.
        probes.push(probe(20.0, 1500.0, None));
        let health = health_json(&probes, 200);
        assert_eq!(health["max_ms"], 1500.0);
        assert_eq!(health["within_limit"], false);
        // So does a fast failure.
        probes.pop();
        probes.push(probe(20.0, 0.5, Some("connect: refused")));
        probes.push(probe(20.2, 0.5, Some("connect: refused")));
        let health = health_json(&probes, 200);
        assert_eq!(health["failures"], 2);
        assert_eq!(health["answered"], 100);
        assert_eq!(health["failure_reasons"], json!({"connect: refused": 2}));
        assert_eq!(health["within_limit"], false);
        // No probe: not judged.
        let health = health_json(&[], 200);
        assert_eq!(health["within_limit"], Value::Null);
        assert_eq!(health["max_ms"], Value::Null);
    }

    #[test]
    fn metrics_give_the_servers_own_counts() {
        let before = Scrape::parse(
            "pusher_sessions_opened_total 10\n\
             pusher_sessions_refused_total{reason=\"capacity\"} 1\n\
             pusher_sessions_open{core=\"0\"} 0\n",
        );
        let held = Scrape::parse(
            "pusher_sessions_opened_total 2400\n\
             pusher_sessions_refused_total{reason=\"capacity\"} 7612\n\
             pusher_sessions_refused_total{reason=\"bad_request\"} 0\n\
             pusher_sessions_closed_total{code=\"1013\"} 3\n\
             pusher_sessions_turned_away_total{reason=\"full\"} 3\n\
             pusher_handshakes_evicted_total 0\n\
             pusher_sessions_open{core=\"0\"} 1200\n\
             pusher_sessions_open{core=\"1\"} 1187\n\
             pusher_memory_budget_bytes 1167764392\n",
        );
        let after = Scrape::parse(
            "pusher_sessions_open{core=\"0\"} 0\npusher_sessions_open{core=\"1\"} 0\n",
        );
        assert_eq!(
            metrics_json(&before, &held, Some(&after)),
            json!({
                "sessions_opened": 2390,
                "sessions_refused": {"capacity": 7611},
                "sessions_closed": {"1013": 3},
                "sessions_turned_away": {"full": 3},
                "handshakes_evicted": 0,
                "sessions_open_at_end_of_hold": 2387,
                "sessions_open_after": 0,
                "budget_bytes": 1167764392.0,
            })
        );
        assert_eq!(
            metrics_json(&before, &held, None)["sessions_open_after"],
            Value::Null
        );
        // An older server without the counters.
        let old = metrics_json(&before, &before, None);
        assert_eq!(old["sessions_turned_away"], json!({}));
        assert_eq!(old["handshakes_evicted"], Value::Null);
    }

    #[test]
    fn probe_failures_count_by_cause() {
        assert_eq!(
            probe_failure("GET http://127.0.0.1:1/health: no answer within 5000 ms"),
            "no answer within 5000 ms"
        );
        assert_eq!(probe_failure("something else"), "something else");
        assert_eq!(
            probe_failure("GET http://127.0.0.1:1/health: connect: Connection refused"),
            "connect: Connection refused"
        );
    }

    #[test]
    fn response_heads_give_their_status() {
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x88\x02\x03\xf5";
        let head = head_len(ok).unwrap();
        assert_eq!(
            &ok[head..],
            b"\x88\x02\x03\xf5",
            "a frame right after the head"
        );
        assert_eq!(status_code(&ok[..head]), Some(101));
        assert_eq!(
            status_code(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\r\n"),
            Some(503)
        );
        assert_eq!(status_code(b"HTTP/1.0 400 Bad Request\r\n\r\n"), Some(400));
        assert_eq!(head_len(b"HTTP/1.1 101 Switching Protocols\r\n"), None);
        for bad in [
            &b"SSH-2.0\r\n\r\n"[..],
            b"HTTP/1.1 1O1 x\r\n\r\n",
            b"HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(status_code(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn close_codes_and_io_errors_are_classified() {
        assert_eq!(close_code(&[0x03, 0xf5]), Some(1013));
        assert_eq!(close_code(&[0x03, 0xe9, b'b', b'y', b'e']), Some(1001));
        assert_eq!(close_code(&[]), None);
        assert_eq!(ServerEnd::Close(Some(1013)).key(), "1013");
        assert_eq!(ServerEnd::Close(None).key(), "no_code");
        assert_eq!(ServerEnd::NoCloseFrame.key(), "no_close_frame");
        let error = |kind| io::Error::new(kind, "x");
        assert_eq!(
            io_outcome("connect", &error(io::ErrorKind::ConnectionRefused)),
            Outcome::TcpRefused
        );
        assert_eq!(
            io_outcome("upgrade read", &error(io::ErrorKind::ConnectionReset)),
            Outcome::TcpReset
        );
        assert_eq!(
            io_outcome("connect", &error(io::ErrorKind::AddrNotAvailable)),
            Outcome::Error("connect: x".to_owned())
        );
    }
}
