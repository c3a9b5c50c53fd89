//! Load scenarios and what they share: the target options, opening sessions (TCP connect,
//! upgrade, first 103) with bounded concurrency, failure accounting and the result line.
//!
//! Each scenario prints exactly one JSON object on stdout (the result) and a human summary on
//! stderr, so `pusher-bench … >> results.jsonl` collects results.

pub mod answers;
pub mod capacity;
pub mod chaos;
pub mod clients;
pub mod conn;
pub mod idle;
pub mod ingest;
pub mod latency;
pub mod log;
pub mod outage;
pub mod private_cloud;
pub mod storm;
pub mod stream;

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::frames;
use crate::proc_stats::{cpu_avg_peak_percent, cpu_percent};
use crate::prometheus::{self, Scrape};
use crate::report;
use crate::sampler::Sampler;
use crate::stats;
use crate::svg;

/// Bytes per MB, the unit of sizes and slopes in results.
pub const BYTES_PER_MB: f64 = 1e6;

/// Options every scenario shares: the server to load and the process to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Server to load: pusher or a peer speaking the same protocol (`ws://host:port` or
    /// `host:port`; the scenarios choose the path themselves)
    #[arg(long = "target", value_name = "ws://HOST:PORT", value_parser = parse_target)]
    pub addr: SocketAddr,
    /// Server process id, measured through /proc/PID
    #[arg(long = "target-pid", visible_alias = "pid", value_name = "PID")]
    pub pid: u32,
    /// Name of the server in the result (its `target` label, the line in the RSS plot and the
    /// column of `pusher-bench compare`); a `--label target=NAME` gives it too
    #[arg(long, value_name = "NAME", default_value = "pusher")]
    pub target_name: String,
    /// Local addresses to bind client sockets to, round-robin (e.g. 127.0.0.2,127.0.0.3);
    /// each gives its own ephemeral-port range [default: chosen by the kernel]
    #[arg(long, value_delimiter = ',', value_name = "IP,...")]
    pub source_ips: Vec<IpAddr>,
    /// `sample_rate` of the upgrade URL
    #[arg(long, default_value_t = 16_000)]
    pub sample_rate: u32,
    /// Time allowed for connect + upgrade + first message of one session
    #[arg(long, default_value_t = 10, value_name = "S")]
    pub connect_timeout_s: u64,
    /// KEY=VALUE copied into the result's "labels" object (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Also write the result to FILE in the result-file shape (`scenario`, `labels`, `goals`,
    /// `figures`, `series`; see bench/README.md), and, for a scenario that samples the server's
    /// RSS, a plot of it to FILE with the extension `.svg`
    #[arg(long, value_name = "FILE")]
    pub result_file: Option<std::path::PathBuf>,
}

/// `ws://host:port`, `ws://host:port/` or `host:port`, resolved to its first address. A path
/// or query is refused (each scenario builds its own `/v1/trigger/listen?...`), and so is
/// `wss://` (the load tool speaks plain TCP only).
fn parse_target(text: &str) -> Result<SocketAddr, String> {
    if text.starts_with("wss://") {
        return Err(format!(
            "{text}: wss:// is not supported (the load tool has no TLS); use ws://host:port"
        ));
    }
    let authority = match text.split_once("://") {
        Some(("ws", rest)) => rest.strip_suffix('/').unwrap_or(rest),
        Some((scheme, _)) => {
            return Err(format!(
                "{text}: scheme {scheme}:// is not supported; use ws://host:port"
            ));
        }
        None => text,
    };
    if authority.contains(['/', '?', '#']) {
        return Err(format!(
            "{text}: give the server only (ws://host:port), without a path or query: each \
             scenario chooses its own (/v1/trigger/listen?...)"
        ));
    }
    authority
        .to_socket_addrs()
        .map_err(|e| format!("{text}: {e}"))?
        .next()
        .ok_or_else(|| format!("{text}: no address"))
}

impl Target {
    /// The result's labels: `--label`s, and `target` = `--target-name` unless a label gives it.
    pub fn labels(&self) -> Map<String, Value> {
        let mut labels =
            Map::from_iter([("target".to_owned(), Value::from(self.target_name.as_str()))]);
        for (key, value) in &self.labels {
            labels.insert(key.clone(), Value::from(value.as_str()));
        }
        labels
    }
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// An open session: upgraded, its 103 sent.
pub struct Session {
    /// `i` of its uid `<uid_prefix>-<i>`.
    pub index: usize,
    pub stream: TcpStream,
    pub opened_at: Instant,
}

/// Sessions that could not be opened, counted by reason.
#[derive(Debug, Default)]
pub struct Failures {
    by_reason: BTreeMap<String, usize>,
}

impl Failures {
    pub fn add(&mut self, reason: String) {
        self.add_count(reason, 1);
    }

    /// Adds `count` failures of one reason (e.g. counts another process reported).
    pub fn add_count(&mut self, reason: String, count: usize) {
        *self.by_reason.entry(reason).or_default() += count;
    }

    pub fn total(&self) -> usize {
        self.by_reason.values().sum()
    }

    /// Adds every failure of `other`.
    pub fn merge(&mut self, other: Failures) {
        for (reason, count) in other.by_reason {
            *self.by_reason.entry(reason).or_default() += count;
        }
    }

    pub fn to_json(&self) -> Value {
        Value::Object(
            self.by_reason
                .iter()
                .map(|(reason, count)| (reason.clone(), Value::from(*count)))
                .collect(),
        )
    }
}

/// The outcome of [`open_sessions`].
pub struct Opened {
    pub sessions: Vec<Session>,
    pub failures: Failures,
}

/// Opens `count` sessions with uids `<uid_prefix>-<i>`, at most `concurrency` in progress at
/// once. Session `i` binds to source IP `i mod len` (if any), and its first message is a 103
/// with conversation id `<uid_prefix>-conv-<i>`. Prints progress to stderr.
pub async fn open_sessions(
    target: &Target,
    uid_prefix: &str,
    count: usize,
    concurrency: usize,
) -> Opened {
    let target = Arc::new(target.clone());
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for index in 0..count {
        let target = Arc::clone(&target);
        let permits = Arc::clone(&permits);
        let uid = format!("{uid_prefix}-{index}");
        let conversation = format!("{uid_prefix}-conv-{index}");
        tasks.spawn(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .expect("semaphore is never closed");
            let timeout = Duration::from_secs(target.connect_timeout_s);
            match tokio::time::timeout(timeout, open_session(&target, index, &uid, &conversation))
                .await
            {
                Ok(opened) => opened,
                Err(_) => Err(format!("timeout after {}s", target.connect_timeout_s)),
            }
        });
    }
    let mut opened = Opened {
        sessions: Vec::with_capacity(count),
        failures: Failures::default(),
    };
    let progress_every = (count / 10).max(1);
    let mut done = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(session)) => opened.sessions.push(session),
            Ok(Err(reason)) => opened.failures.add(reason),
            Err(join_error) => opened.failures.add(format!("task: {join_error}")),
        }
        done += 1;
        if done % progress_every == 0 && count >= 1000 {
            eprintln!(
                "  {done}/{count} attempted, {} open, {} failed",
                opened.sessions.len(),
                opened.failures.total()
            );
        }
    }
    opened
}

/// Connects (from the session's source IP), upgrades and sends the 103. The error is a short
/// reason meant for counting: the step that failed and why.
async fn open_session(
    target: &Target,
    index: usize,
    uid: &str,
    conversation: &str,
) -> Result<Session, String> {
    let source_ip =
        (!target.source_ips.is_empty()).then(|| target.source_ips[index % target.source_ips.len()]);
    let mut stream = connect(target.addr, source_ip)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let request = frames::listen_request(&target.addr.to_string(), uid, target.sample_rate);
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("upgrade write: {e}"))?;
    read_upgrade_response(&mut stream).await?;
    let first = frames::binary_frame(&frames::message(
        frames::CONVERSATION_ID,
        conversation.as_bytes(),
    ));
    stream
        .write_all(&first)
        .await
        .map_err(|e| format!("103 write: {e}"))?;
    Ok(Session {
        index,
        stream,
        opened_at: Instant::now(),
    })
}

async fn connect(addr: SocketAddr, source_ip: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source_ip {
        bind_address_no_port(&socket)?;
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.set_nodelay(true)?;
    socket.connect(addr).await
}

/// IP_BIND_ADDRESS_NO_PORT: a bind to port 0 then picks the port at connect time, unique per
/// 4-tuple, instead of reserving one of the ~28k ephemeral ports for the address at bind time.
fn bind_address_no_port(socket: &TcpSocket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads the response head and checks for `101`. The server sends nothing after the head until
/// the client's first message, so the read stops exactly at the blank line.
async fn read_upgrade_response(stream: &mut TcpStream) -> Result<(), String> {
    const HEAD_BYTES_MAX: usize = 1024;
    let mut head = [0u8; HEAD_BYTES_MAX];
    let mut filled = 0;
    while !head[..filled].windows(4).any(|w| w == b"\r\n\r\n") {
        if filled == head.len() {
            return Err("upgrade: response head too long".to_owned());
        }
        match stream.read(&mut head[filled..]).await {
            Ok(0) => return Err("upgrade: closed before a response".to_owned()),
            Ok(n) => filled += n,
            Err(e) => return Err(format!("upgrade read: {e}")),
        }
    }
    let status_line = head[..filled]
        .split(|&b| b == b'\r')
        .next()
        .unwrap_or_default();
    if status_line.starts_with(b"HTTP/1.1 101 ") {
        Ok(())
    } else {
        Err(format!(
            "upgrade refused: {}",
            String::from_utf8_lossy(status_line)
        ))
    }
}

/// Prints a progress line to stderr every `every` until `deadline` (at most
/// (deadline - start) / every lines): the seconds since `start`, then what `line` returns.
/// The task ends by itself at the deadline.
pub fn spawn_progress(
    start: Instant,
    deadline: Instant,
    every: Duration,
    mut line: impl FnMut() -> String + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut at = start + every;
        while at < deadline {
            tokio::time::sleep_until(at.into()).await;
            eprintln!("  [{:>4.0}s] {}", (at - start).as_secs_f64(), line());
            at += every;
        }
    })
}

/// Samples pusher's `/metrics` at `addr` every `every` into a `T` (`reading`; a failed scrape
/// is not kept) and calls `progress` with about one reading in `progress_every`.
pub fn sample_metrics<T: Send + 'static>(
    addr: SocketAddr,
    every: Duration,
    progress_every: Duration,
    reading: fn(&Scrape) -> T,
    progress: impl Fn(&T) + Send + Sync + 'static,
) -> Sampler<T> {
    let progress = Arc::new(progress);
    let readings_per_progress = (progress_every.as_nanos() / every.as_nanos().max(1)).max(1);
    let mut readings = 0u128;
    Sampler::start(every, move || {
        let shows_progress = readings.is_multiple_of(readings_per_progress);
        readings += 1;
        let progress = Arc::clone(&progress);
        async move {
            let value = reading(&prometheus::scrape(addr).await.ok()?);
            if shows_progress {
                progress(&value);
            }
            Some(value)
        }
    })
}

/// Offset of session `index` of `count` within `interval`, so that the sessions' messages are
/// spread evenly in time.
pub fn spread(interval: Duration, index: usize, count: usize) -> Duration {
    interval.mul_f64(index as f64 / count.max(1) as f64)
}

/// A session's sending times: `first`, then every `interval`, before `deadline`.
pub struct Schedule {
    next: Instant,
    interval: Duration,
    deadline: Instant,
    late_max: Duration,
}

impl Schedule {
    pub fn new(first: Instant, interval: Duration, deadline: Instant) -> Schedule {
        Schedule {
            next: first,
            interval,
            deadline,
            late_max: Duration::ZERO,
        }
    }

    /// Sleeps until the next sending time and returns `true`; `false` (at once) when that time
    /// is not before the deadline.
    pub async fn tick(&mut self) -> bool {
        let Some(at) = self.due() else {
            return false;
        };
        tokio::time::sleep_until(at.into()).await;
        self.advance();
        true
    }

    /// The next sending time, `None` when it is not before the deadline.
    pub fn due(&self) -> Option<Instant> {
        (self.next < self.deadline).then_some(self.next)
    }

    /// The due time is reached (a caller that waits its own way, e.g. reading the session
    /// meanwhile): notes how late it is now and moves on to the next.
    pub fn advance(&mut self) {
        self.late_max = self.late_max.max(self.next.elapsed());
        self.next += self.interval;
    }

    /// Largest delay of a tick behind its time (the client falling behind).
    pub fn late_max(&self) -> Duration {
        self.late_max
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// Least-squares slope of RSS readings `(time, KiB)` taken in [`from`, `to`), in MB per minute;
/// `None` with fewer than two readings.
pub fn rss_slope_mb_per_min(samples: &[(Instant, u64)], from: Instant, to: Instant) -> Option<f64> {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter(|&&(at, _)| at >= from && at < to)
        .map(|&(at, kib)| {
            let minutes = (at - from).as_secs_f64() / 60.0;
            (minutes, kib as f64 * 1024.0 / BYTES_PER_MB)
        })
        .collect();
    stats::slope(&points)
}

/// Readings `(time, value)` as a JSON array of `[s, fields of values(value)...]`, with s the
/// seconds from `start` (negative before it).
pub fn series_json<T>(
    start: Instant,
    samples: &[(Instant, T)],
    values: impl Fn(&T) -> Value,
) -> Value {
    let seconds = |at: Instant| {
        if at >= start {
            (at - start).as_secs_f64()
        } else {
            -(start - at).as_secs_f64()
        }
    };
    samples
        .iter()
        .map(|(at, sample)| {
            // `+ 0.0` turns -0 (a reading just before the start) into 0.
            let mut row = vec![Value::from(round(seconds(*at), 2) + 0.0)];
            match values(sample) {
                Value::Array(fields) => row.extend(fields),
                field => row.push(field),
            }
            Value::Array(row)
        })
        .collect()
}

/// Writes `value` to `path` as one line of JSON.
pub fn write_json(path: &std::path::Path, value: &Value) -> Result<(), String> {
    std::fs::write(path, value.to_string()).map_err(|e| format!("{}: {e}", path.display()))
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (one session = one descriptor),
/// and returns the soft limit now in force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to a live rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(limit.rlim_cur)
}

/// The server's RSS and CPU readings of a run, for the result file's `series` and the plot.
pub struct RssSeries<'a> {
    /// Time 0 of the series (the start of the load).
    pub start: Instant,
    /// `(time, KiB)` readings.
    pub samples: &'a [(Instant, u64)],
    /// `(time, CPU seconds so far)` readings, taken with `samples`: the file's `series.cpu` has
    /// one `[s, % of one core]` row per interval between them (s at its end).
    pub cpu: &'a [(Instant, f64)],
    /// `pusher_memory_budget_bytes`, when known: a dashed line on the plot.
    pub budget_bytes: Option<f64>,
}

/// Prints the result: `human` on stderr, then `fields` plus `"scenario"` and `"labels"` as one
/// JSON line on stdout; with `--result-file`, writes the result file too.
pub fn print_result(
    scenario: &str,
    target: &Target,
    fields: Value,
    human: &str,
) -> Result<(), String> {
    print_result_with_rss(scenario, target, fields, human, None)
}

/// [`print_result`] for a scenario that sampled the server's RSS: with `--result-file`, the
/// readings go into the file's `series.rss` and a plot beside it (`.svg`).
pub fn print_result_with_rss(
    scenario: &str,
    target: &Target,
    fields: Value,
    human: &str,
    rss: Option<RssSeries>,
) -> Result<(), String> {
    let fields = match fields {
        Value::Object(fields) => fields,
        other => Map::from_iter([("result".to_owned(), other)]),
    };
    let labels = target.labels();
    let mut line = Map::new();
    line.insert("scenario".to_owned(), Value::from(scenario));
    line.extend(fields.clone());
    line.insert("labels".to_owned(), Value::Object(labels.clone()));
    eprintln!("{human}");
    println!("{}", Value::Object(line));
    let Some(path) = &target.result_file else {
        return Ok(());
    };
    let rss_json = rss
        .as_ref()
        .map(|rss| series_json(rss.start, rss.samples, |&kib| Value::from(kib)));
    let mut file = report::result_file(scenario, Value::Object(labels.clone()), fields, rss_json);
    if let Some(rss) = &rss {
        file["series"]["cpu"] = series_json(rss.start, &cpu_percent(rss.cpu), |&percent| {
            Value::from(round(percent, 1))
        });
    }
    write_json(path, &file)?;
    eprintln!("{scenario}: result file {}", path.display());
    if let Some(rss) = rss {
        let seconds = |at: Instant| {
            if at >= rss.start {
                (at - rss.start).as_secs_f64()
            } else {
                -(rss.start - at).as_secs_f64()
            }
        };
        let points = rss
            .samples
            .iter()
            .map(|&(at, kib)| (seconds(at), kib as f64 / 1024.0))
            .collect();
        let name = labels["target"].as_str().unwrap_or("pusher");
        let date = labels
            .get("date")
            .and_then(Value::as_str)
            .map_or(String::new(), |value| format!(", {value}"));
        let svg = svg::rss_plot(
            &format!("{scenario}: server RSS over time{date}"),
            &[svg::Series { name, points }],
            report::slope_goal(&file["figures"]),
            rss.budget_bytes.map(|bytes| bytes / 1024.0 / 1024.0),
        );
        let svg_path = path.with_extension("svg");
        std::fs::write(&svg_path, svg).map_err(|e| format!("{}: {e}", svg_path.display()))?;
        eprintln!("{scenario}: RSS plot {}", svg_path.display());
    }
    Ok(())
}

/// The result's `cpu` object of periodic readings `(time, CPU seconds so far)` taken in
/// [`from`, `to`]: the number of intervals between them, their average and the busiest one's
/// CPU use, in % of one core (`null` with fewer than two readings).
pub fn cpu_json(readings: &[(Instant, f64)], from: Instant, to: Instant) -> Value {
    let window: Vec<(Instant, f64)> = readings
        .iter()
        .copied()
        .filter(|&(at, _)| at >= from && at <= to)
        .collect();
    let (avg, peak) = cpu_avg_peak_percent(&window).unzip();
    serde_json::json!({
        "intervals": window.len().saturating_sub(1),
        "avg_pct": avg.map(|percent| round(percent, 1)),
        "peak_pct": peak.map(|percent| round(percent, 1)),
    })
}

/// A count read from /metrics (a float there) as JSON: an integer when it is whole.
pub fn count_json(count: f64) -> Value {
    if count.fract() == 0.0 && count.abs() < 1e15 {
        Value::from(count as i64)
    } else {
        Value::from(count)
    }
}

/// Counts by key (e.g. [`crate::prometheus::Scrape::by_labels`]) as a JSON object.
pub fn counts_json(counts: &BTreeMap<String, f64>) -> Value {
    Value::Object(
        counts
            .iter()
            .map(|(key, &count)| (key.clone(), count_json(count)))
            .collect(),
    )
}

/// `value` rounded to `decimals` places, for readable JSON.
pub fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_label("driver=uring"),
            Ok(("driver".to_owned(), "uring".to_owned()))
        );
        assert_eq!(
            parse_label("note=a=b"),
            Ok(("note".to_owned(), "a=b".to_owned()))
        );
        assert!(parse_label("novalue").is_err());
        assert!(parse_label("=x").is_err());
    }

    #[test]
    fn a_target_is_a_ws_url_or_host_and_port_without_a_path() {
        let addr: SocketAddr = "127.0.0.1:18865".parse().unwrap();
        assert_eq!(parse_target("127.0.0.1:18865"), Ok(addr));
        assert_eq!(parse_target("ws://127.0.0.1:18865"), Ok(addr));
        assert_eq!(parse_target("ws://127.0.0.1:18865/"), Ok(addr));
        assert_eq!(
            parse_target("ws://localhost:18865").map(|a| a.port()),
            Ok(18865)
        );
        let wss = parse_target("wss://127.0.0.1:443").unwrap_err();
        assert!(wss.contains("wss:// is not supported"), "{wss}");
        let http = parse_target("http://127.0.0.1:80").unwrap_err();
        assert!(http.contains("scheme http://"), "{http}");
        for with_path in [
            "ws://127.0.0.1:1/v1/trigger/listen",
            "ws://127.0.0.1:1/?uid=x",
            "127.0.0.1:1/x",
        ] {
            let error = parse_target(with_path).unwrap_err();
            assert!(error.contains("without a path or query"), "{error}");
        }
        assert!(parse_target("ws://127.0.0.1").is_err(), "no port");
    }

    #[derive(clap::Parser)]
    struct TargetCli {
        #[command(flatten)]
        target: Target,
    }

    fn parse_cli(args: &[&str]) -> Result<Target, clap::Error> {
        <TargetCli as clap::Parser>::try_parse_from(["pusher-bench"].iter().chain(args))
            .map(|cli| cli.target)
    }

    #[test]
    fn the_target_name_is_a_label_unless_one_is_given() {
        let target = parse_cli(&[
            "--target",
            "ws://127.0.0.1:1",
            "--pid",
            "7",
            "--label",
            "driver=epoll",
        ])
        .unwrap();
        assert_eq!(target.pid, 7);
        assert_eq!(
            Value::Object(target.labels()),
            serde_json::json!({"target": "pusher", "driver": "epoll"})
        );
        let peer = parse_cli(&[
            "--target",
            "127.0.0.1:1",
            "--target-pid",
            "9",
            "--target-name",
            "python",
        ])
        .unwrap();
        assert_eq!(peer.pid, 9);
        assert_eq!(peer.labels()["target"], "python");
        let labelled = parse_cli(&[
            "--target",
            "127.0.0.1:1",
            "--target-pid",
            "9",
            "--target-name",
            "python",
            "--label",
            "target=py2",
        ])
        .unwrap();
        assert_eq!(labelled.labels()["target"], "py2");
        let refused = parse_cli(&["--target", "wss://127.0.0.1:1", "--pid", "1"]).unwrap_err();
        assert!(
            refused.to_string().contains("wss:// is not supported"),
            "{refused}"
        );
    }

    #[test]
    fn rss_slope_is_in_mb_per_minute_within_the_window() {
        let start = Instant::now();
        // 1 MB (976.5625 KiB) more every 30 s, then a jump after the window.
        let mut samples: Vec<(Instant, u64)> = (0..=10u64)
            .map(|i| {
                (
                    start + Duration::from_secs(30 * i),
                    100_000 + (i * 9765625) / 10_000,
                )
            })
            .collect();
        samples.push((start + Duration::from_secs(400), 900_000));
        let to = start + Duration::from_secs(301);
        let slope = rss_slope_mb_per_min(&samples, start, to).unwrap();
        assert!((slope - 2.0).abs() < 0.01, "{slope}");
        assert_eq!(rss_slope_mb_per_min(&samples, to, to), None);
    }

    #[test]
    fn series_rows_start_with_seconds_from_the_start() {
        let start = Instant::now();
        let samples = [
            (start - Duration::from_millis(1500), 7u64),
            (start + Duration::from_millis(250), 9u64),
        ];
        assert_eq!(
            series_json(start, &samples, |&v| serde_json::json!([v, v * 2])),
            serde_json::json!([[-1.5, 7, 14], [0.25, 9, 18]])
        );
        assert_eq!(
            series_json(start, &samples[1..], |&v| serde_json::json!(v)),
            serde_json::json!([[0.25, 9]])
        );
    }

    #[test]
    fn cpu_figures_cover_the_readings_in_the_window() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // 20 % of a core, then 60 %, then 100 % after the window.
        let readings = [
            (at(0), 1.0),
            (at(500), 1.1),
            (at(1000), 1.4),
            (at(1500), 1.9),
        ];
        assert_eq!(
            cpu_json(&readings, at(0), at(1000)),
            serde_json::json!({"intervals": 2, "avg_pct": 40.0, "peak_pct": 60.0})
        );
        assert_eq!(
            cpu_json(&readings, at(1500), at(2000)),
            serde_json::json!({"intervals": 0, "avg_pct": null, "peak_pct": null})
        );
    }

    #[test]
    fn a_result_file_of_a_sampled_run_has_rss_and_cpu_series() {
        let dir = std::env::temp_dir().join(format!("pusher-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stream-test.json");
        let target = parse_cli(&[
            "--target",
            "127.0.0.1:1",
            "--pid",
            "1",
            "--result-file",
            path.to_str().unwrap(),
        ])
        .unwrap();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let rss = [(at(0), 20_000), (at(500), 20_480), (at(1000), 20_480)];
        let cpu = [(at(0), 3.0), (at(500), 3.1), (at(1000), 3.35)];
        let series = RssSeries {
            start,
            samples: &rss,
            cpu: &cpu,
            budget_bytes: None,
        };
        let fields = serde_json::json!({"cpu": cpu_json(&cpu, at(0), at(1000))});
        print_result_with_rss("stream", &target, fields, "test", Some(series)).unwrap();
        let file: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        report::validate(&file).unwrap();
        assert_eq!(
            file["series"]["rss"],
            serde_json::json!([[0.0, 20000], [0.5, 20480], [1.0, 20480]])
        );
        assert_eq!(
            file["series"]["cpu"],
            serde_json::json!([[0.5, 20.0], [1.0, 50.0]])
        );
        assert_eq!(file["figures"]["cpu"]["avg_pct"], 35.0);
        assert_eq!(file["figures"]["cpu"]["peak_pct"], 50.0);
    }

    #[test]
    fn counts_are_integers_when_whole() {
        assert_eq!(count_json(3.0), serde_json::json!(3));
        assert_eq!(count_json(-2.0), serde_json::json!(-2));
        assert_eq!(count_json(0.5), serde_json::json!(0.5));
        let counts = BTreeMap::from([("a/b".to_owned(), 2.0), ("c".to_owned(), 1.5)]);
        assert_eq!(
            counts_json(&counts),
            serde_json::json!({"a/b": 2, "c": 1.5})
        );
    }

    #[test]
    fn sessions_are_spread_over_the_interval() {
        let second = Duration::from_secs(1);
        assert_eq!(spread(second, 0, 1000), Duration::ZERO);
        assert_eq!(spread(second, 500, 1000), Duration::from_millis(500));
        assert_eq!(spread(second, 999, 1000), Duration::from_millis(999));
        assert_eq!(spread(second, 0, 0), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_lines_come_every_period_until_the_deadline() {
        let clock = tokio::time::Instant::now();
        let start = clock.into_std();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&lines);
        let progress = spawn_progress(
            start,
            start + Duration::from_secs(12),
            Duration::from_secs(5),
            move || {
                seen.lock().unwrap().push(clock.elapsed().as_secs());
                String::new()
            },
        );
        progress.await.unwrap();
        assert_eq!(
            *lines.lock().unwrap(),
            [5, 10],
            "none at or after the deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_schedule_ticks_every_interval_before_its_deadline() {
        // The paused clock is tokio's: measure with it.
        let clock = tokio::time::Instant::now();
        let start = clock.into_std();
        let mut schedule = Schedule::new(
            start + Duration::from_millis(30),
            Duration::from_millis(100),
            start + Duration::from_millis(1000),
        );
        let mut ticks = Vec::new();
        while schedule.tick().await {
            ticks.push(clock.elapsed().as_millis());
        }
        assert_eq!(ticks, [30, 130, 230, 330, 430, 530, 630, 730, 830, 930]);
        assert!(!schedule.tick().await, "still over");
        let mut late = Schedule::new(start, Duration::from_millis(10), start);
        assert!(
            !late.tick().await,
            "a first time at the deadline is not sent"
        );
    }

    #[test]
    fn failures_are_counted_by_reason() {
        let mut failures = Failures::default();
        failures.add("connect: refused".to_owned());
        failures.add("connect: refused".to_owned());
        failures.add("upgrade refused: HTTP/1.1 503 Service Unavailable".to_owned());
        assert_eq!(failures.total(), 3);
        assert_eq!(
            failures.to_json(),
            serde_json::json!({
                "connect: refused": 2,
                "upgrade refused: HTTP/1.1 503 Service Unavailable": 1,
            })
        );
        let mut more = Failures::default();
        more.add("connect: refused".to_owned());
        more.merge(failures);
        assert_eq!(more.total(), 4);
        assert_eq!(more.to_json()["connect: refused"], 3);
    }
}
