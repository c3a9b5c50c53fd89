//! Load scenarios and what they share: the target options, opening sessions (TCP connect,
//! upgrade, first 103) with bounded concurrency, failure accounting and the result line.
//!
//! Each scenario prints exactly one JSON object on stdout (the result) and a human summary on
//! stderr, so `pusher-bench … >> results.jsonl` collects results.

pub mod idle;
pub mod ingest;
pub mod log;
pub mod stream;

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::frames;

/// Options every scenario shares: the server to load and the process to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Server address
    #[arg(long = "target", value_name = "ADDR:PORT")]
    pub addr: SocketAddr,
    /// Server process id, measured through /proc/PID
    #[arg(long)]
    pub pid: u32,
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
        *self.by_reason.entry(reason).or_default() += 1;
    }

    pub fn total(&self) -> usize {
        self.by_reason.values().sum()
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

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (one session = one descriptor).
/// Sends a Close 1000 and reads until the server closes the stream, within `wait`; the error
/// names the step that failed.
pub async fn close_session(stream: &mut TcpStream, wait: Duration) -> Result<(), String> {
    stream
        .write_all(&frames::close_frame())
        .await
        .map_err(|e| format!("close write: {e}"))?;
    let mut sink = [0u8; 256];
    let drained = tokio::time::timeout(wait, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match drained {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("close read: {e}")),
        Err(_) => Err(format!("no close from server within {}s", wait.as_secs())),
    }
}

pub fn raise_open_files_limit() -> io::Result<()> {
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
    Ok(())
}

/// Prints the result: `human` on stderr, then `fields` plus `"scenario"` and `"labels"` as one
/// JSON line on stdout.
pub fn print_result(scenario: &str, target: &Target, fields: Value, human: &str) {
    let mut result = Map::new();
    result.insert("scenario".to_owned(), Value::from(scenario));
    match fields {
        Value::Object(fields) => result.extend(fields),
        other => {
            result.insert("result".to_owned(), other);
        }
    }
    let labels = target
        .labels
        .iter()
        .map(|(key, value)| (key.clone(), Value::from(value.as_str())))
        .collect();
    result.insert("labels".to_owned(), Value::Object(labels));
    eprintln!("{human}");
    println!("{}", Value::Object(result));
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
    }
}
