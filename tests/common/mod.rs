//! Shared helpers of the integration tests: start the real `pusher` binary on a free loopback
//! port, talk to it over raw HTTP and over WebSocket (tokio-tungstenite), read its metrics.
//!
//! Every test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::collections::HashSet;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// How long any single expected event may take before the test fails.
pub const STEP: Duration = Duration::from_secs(5);
/// The listen path of docs/protocol.md §1.
pub const LISTEN: &str = "/v1/trigger/listen";
/// The `Sec-WebSocket-Key` of RFC 6455 §1.3 and the accept value it must produce.
const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

pub type Ws = WebSocketStream<TcpStream>;

/// Generates one `#[tokio::test]` per io driver for each named scenario
/// `async fn name(driver: &str)` of the calling file: `uring::name` and `epoll::name`.
#[macro_export]
macro_rules! on_both_drivers {
    ($($scenario:ident),+ $(,)?) => {
        mod uring {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario("uring").await
                }
            )+
        }
        mod epoll {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario("epoll").await
                }
            )+
        }
    };
}

/// Ports handed out in this test binary; a port is never handed out twice, so two servers of
/// the binary cannot end up sharing one through SO_REUSEPORT.
static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

pub fn free_port() -> u16 {
    loop {
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind an ephemeral port")
            .port();
        let mut ports = PORTS.lock().unwrap_or_else(|e| e.into_inner());
        if ports.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// An IPv4 address of this machine that is not loopback (for a peer that is not on
/// loopback), if the machine has one.
pub fn non_loopback_address() -> Option<std::net::IpAddr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, which is freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let ifa = unsafe { &*cursor };
        // SAFETY: ifa_addr, when set, points to a sockaddr of its family.
        if !ifa.ifa_addr.is_null()
            && i32::from(unsafe { (*ifa.ifa_addr).sa_family }) == libc::AF_INET
        {
            // SAFETY: the family is AF_INET, so this is a sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            if !ip.is_loopback() && !ip.is_link_local() && !ip.is_unspecified() {
                found = Some(std::net::IpAddr::V4(ip));
                break;
            }
        }
        cursor = ifa.ifa_next;
    }
    // SAFETY: the list getifaddrs allocated.
    unsafe { libc::freeifaddrs(list) };
    found
}

/// Fails the test if `future` does not finish within `limit`.
pub async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?} waiting for {what}"))
}

/// A running `pusher serve`; killed when dropped. Its log is printed if the test fails.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

/// The encryption secret every test server runs with (at least 32 bytes).
pub const TEST_ENCRYPTION_SECRET: &str = "integration-test-secret-0123456789abcdef";

impl Server {
    /// Starts `pusher serve --driver <driver> <flags>` (with `--workers 2` unless `flags`
    /// name a count) and waits until `/health` answers 200.
    pub async fn start(driver: &str, flags: &[&str]) -> Server {
        Server::start_with_env(driver, flags, &[]).await
    }

    /// [`Server::start`] with `env` added to the environment. `RUST_LOG` and the allocator's
    /// `MIMALLOC_*` variables are removed first, so only `env` sets them.
    pub async fn start_with_env(driver: &str, flags: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_wrapped(&[], driver, flags, env).await
    }

    /// [`Server::start_with_env`] with the binary started through `wrapper` (a command that
    /// execs its arguments, e.g. `["taskset", "-c", "1"]`: the pid stays pusher's).
    pub async fn start_wrapped(
        wrapper: &[&str],
        driver: &str,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        Server::start_full(wrapper, driver, flags, env, None).await
    }

    /// [`Server::start`] with its data directory at `data_dir` (e.g. on a small filesystem).
    pub async fn start_with_data_dir(
        driver: &str,
        flags: &[&str],
        data_dir: &std::path::Path,
    ) -> Server {
        Server::start_full(&[], driver, flags, &[], Some(data_dir)).await
    }

    async fn start_full(
        wrapper: &[&str],
        driver: &str,
        flags: &[&str],
        env: &[(&str, &str)],
        data_dir: Option<&std::path::Path>,
    ) -> Server {
        for _ in 0..5 {
            let port = free_port();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let dir = std::env::temp_dir().join(format!("pusher-it-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("create the test directory");
            let log = std::fs::File::create(dir.join("pusher.log")).expect("create the log");
            // `--listen-any`: listen on every IPv4 address (the tests still connect to
            // 127.0.0.1); for peers that are not on loopback.
            let listen_any = flags.contains(&"--listen-any");
            let flags: Vec<&str> = flags
                .iter()
                .copied()
                .filter(|f| *f != "--listen-any")
                .collect();
            let listen = if listen_any {
                SocketAddr::from(([0, 0, 0, 0], port))
            } else {
                addr
            };
            let binary = env!("CARGO_BIN_EXE_pusher");
            let mut command = match wrapper.split_first() {
                Some((program, args)) => {
                    let mut command = Command::new(program);
                    command.args(args).arg(binary);
                    command
                }
                None => Command::new(binary),
            };
            let child = command
                .args(["serve", "--listen", &listen.to_string(), "--driver", driver])
                .arg("--data-dir")
                .arg(data_dir.map_or_else(|| dir.join("data"), |d| d.to_owned()))
                .args(if flags.contains(&"--workers") {
                    &[][..]
                } else {
                    &["--workers", "2"][..]
                })
                .args(&flags)
                .env_remove("RUST_LOG")
                .env_remove("MIMALLOC_PURGE_DELAY")
                .env("PUSHER_ENCRYPTION_SECRET", TEST_ENCRYPTION_SECRET)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone the log handle"))
                .stderr(log)
                .spawn()
                .expect("spawn pusher");
            let mut server = Server { child, addr, dir };
            if server.wait_healthy().await {
                return server;
            }
            let log = server.log();
            // Only a port taken between our probe and the server's bind is worth a retry.
            assert!(
                log.contains("cannot listen"),
                "pusher did not start:\n{log}"
            );
        }
        panic!("pusher did not start on any of 5 ports");
    }

    /// True once `/health` answers 200; false if the process exited first.
    async fn wait_healthy(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait().expect("poll the child").is_some() {
                return false;
            }
            if let Ok(Ok(response)) =
                tokio::time::timeout(Duration::from_secs(1), try_get(self.addr, "/health", &[]))
                    .await
            {
                assert_eq!(response.status, 200, "/health answered {response:?}");
                assert_eq!(response.body, r#"{"status":"healthy"}"#);
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("pusher did not become healthy in 20 s:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pusher.log")).unwrap_or_default()
    }

    pub fn url(&self, query: &str) -> String {
        format!("ws://{}{LISTEN}?{query}", self.addr)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the server process.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "pusher still running {limit:?} later"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn get(&self, path: &str) -> Response {
        http_get(self.addr, path, &[]).await
    }

    /// The Prometheus exposition of `/metrics` (no metrics token configured).
    pub async fn metrics(&self) -> Metrics {
        let response = self.get("/metrics").await;
        assert_eq!(response.status, 200, "/metrics: {response:?}");
        Metrics(response.body)
    }

    /// The current value of the sample `key` (name and labels as exposed).
    pub async fn metric(&self, key: &str) -> u64 {
        self.metrics().await.value(key)
    }

    /// Polls `/metrics` until the sample `key` equals `expected` (counters that are updated
    /// when a session ends, after the client has seen its close).
    pub async fn wait_metric(&self, key: &str, expected: u64) {
        let deadline = Instant::now() + STEP;
        loop {
            let value = self.metric(key).await;
            if value == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{key} is {value}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `path` until it answers `status`.
    pub async fn wait_status(&self, path: &str, status: u16) -> Response {
        let deadline = Instant::now() + STEP;
        loop {
            let response = self.get(path).await;
            if response.status == status {
                return response;
            }
            assert!(
                Instant::now() < deadline,
                "{path} still answers {response:?}, expected {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Opens a listen session for `uid`; fails the test if it is not upgraded.
    pub async fn connect(&self, uid: &str) -> Ws {
        match self.try_connect(&format!("uid={uid}"), None).await {
            Ok(ws) => ws,
            Err(response) => panic!("upgrade refused: {response:?}"),
        }
    }

    /// Opens a listen session for `uid` that pusher must turn away right after the 101 (full or
    /// draining); returns the close code it sent.
    pub async fn connect_turned_away(&self, uid: &str) -> u16 {
        let mut ws = match self.try_connect(&format!("uid={uid}"), None).await {
            Ok(ws) => ws,
            Err(response) => panic!("expected an upgrade, then a close; got {response:?}"),
        };
        expect_close(&mut ws).await
    }

    /// `POST /__internal/drain` from this (loopback) client, with the extra `headers`.
    pub async fn post_drain(&self, headers: &[(&str, &str)]) -> Response {
        let mut head = format!(
            "POST /__internal/drain HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n",
            self.addr
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        raw_request(self.addr, head.as_bytes()).await
    }

    /// Tries a listen upgrade with `query` and an optional bearer token; a refusal is returned
    /// as the HTTP response.
    pub async fn try_connect(&self, query: &str, bearer: Option<&str>) -> Result<Ws, Response> {
        let mut request = self.url(query).into_client_request().expect("request");
        if let Some(token) = bearer {
            let value = HeaderValue::from_str(&format!("Bearer {token}")).expect("header value");
            request.headers_mut().insert("authorization", value);
        }
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        match within(
            STEP,
            "the upgrade",
            tokio_tungstenite::client_async(request, tcp),
        )
        .await
        {
            Ok((ws, response)) => {
                assert_eq!(response.status(), 101);
                Ok(ws)
            }
            Err(WsError::Http(response)) => Err(Response {
                status: response.status().as_u16(),
                headers: response
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect(),
                body: String::from_utf8_lossy(response.body().as_deref().unwrap_or(&[]))
                    .into_owned(),
            }),
            Err(err) => panic!("upgrade failed without an HTTP answer: {err}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- pusher log ({}) ----\n{}", self.addr, self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Prometheus text exposition.
pub struct Metrics(pub String);

impl Metrics {
    /// The value of the sample whose name-and-labels is exactly `key`; fails if absent.
    pub fn value(&self, key: &str) -> u64 {
        self.0
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no sample {key} in /metrics"))
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("sample {key} is not an integer"))
    }

    /// The sum of every sample whose name-and-labels starts with `prefix` (e.g. per-core gauges).
    pub fn sum(&self, prefix: &str) -> u64 {
        self.0
            .lines()
            .filter_map(|line| line.strip_prefix(prefix))
            .filter_map(|rest| rest.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum()
    }
}

/// A complete HTTP response (pusher closes the connection after every plain response).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` over a fresh TCP connection with the extra `headers`.
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    within(STEP, "an HTTP answer", try_get(addr, path, headers))
        .await
        .unwrap_or_else(|err| panic!("GET {path}: {err}"))
}

async fn try_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    try_raw_request(addr, head.as_bytes()).await
}

/// Writes `bytes` on a fresh connection and reads the response until the server closes.
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> Response {
    within(STEP, "an HTTP answer", try_raw_request(addr, bytes))
        .await
        .unwrap_or_else(|err| panic!("raw request: {err}"))
}

async fn try_raw_request(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(bytes).await?;
    read_response(&mut stream).await
}

/// Reads a response until pusher closes the connection; a reset after a response is an error.
pub async fn read_response(stream: &mut TcpStream) -> std::io::Result<Response> {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    Ok(parse_response(&raw))
}

fn parse_response(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_string(),
    }
}

/// One pusher message: `u32 LE header` ‖ payload (docs/protocol.md §2).
pub fn frame(header: u32, payload: &[u8]) -> Vec<u8> {
    let mut message = header.to_le_bytes().to_vec();
    message.extend_from_slice(payload);
    message
}

/// A 101 payload: `f64 LE` timestamp ‖ PCM.
pub fn audio_payload(timestamp: f64, pcm: &[u8]) -> Vec<u8> {
    let mut payload = timestamp.to_le_bytes().to_vec();
    payload.extend_from_slice(pcm);
    payload
}

/// Sends one pusher message as a binary WebSocket message.
pub async fn send(ws: &mut Ws, header: u32, payload: &[u8]) {
    within(
        STEP,
        "a send",
        ws.send(Message::binary(frame(header, payload))),
    )
    .await
    .expect("send");
}

/// The next message from the server; fails on timeout, error or end of stream.
pub async fn next_message(ws: &mut Ws) -> Message {
    match within(STEP, "a message from pusher", ws.next()).await {
        Some(Ok(message)) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Expects the next message to be a 201 and returns its JSON.
pub async fn expect_result(ws: &mut Ws) -> serde_json::Value {
    let message = next_message(ws).await;
    let Message::Binary(bytes) = message else {
        panic!("expected a binary 201 message, got {message:?}");
    };
    let (header, json) = bytes.split_at(4);
    assert_eq!(header, 201u32.to_le_bytes(), "outbound header");
    serde_json::from_slice(json).expect("201 payload is JSON")
}

/// Expects the next message to be a Close; returns its code once the server has also closed
/// the TCP connection (the close handshake completes: tungstenite answers the Close).
pub async fn expect_close(ws: &mut Ws) -> u16 {
    let message = next_message(ws).await;
    let Message::Close(close) = message else {
        panic!("expected a Close, got {message:?}");
    };
    expect_end(ws).await;
    close.map_or(1005, |frame| u16::from(frame.code))
}

/// Expects the server to end the connection (no further message).
pub async fn expect_end(ws: &mut Ws) {
    match within(STEP, "the end of the connection", ws.next()).await {
        None | Some(Err(WsError::ConnectionClosed)) => {}
        other => panic!("expected the connection to end, got {other:?}"),
    }
}

/// Closes from the client side with `code` and returns the code pusher echoes.
pub async fn close_with(ws: &mut Ws, code: u16) -> u16 {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: "".into(),
    };
    within(STEP, "sending a Close", ws.close(Some(frame)))
        .await
        .expect("send Close");
    expect_close(ws).await
}

/// Performs the upgrade by hand on a raw TCP stream (for frames no client library sends).
pub async fn raw_upgrade(addr: SocketAddr, query: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "GET {LISTEN}?{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {RFC_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    let mut raw = Vec::new();
    while !raw.ends_with(b"\r\n\r\n") {
        let byte = within(STEP, "the 101", stream.read_u8())
            .await
            .expect("read the 101");
        raw.push(byte);
    }
    let response = parse_response(&raw);
    assert_eq!(response.status, 101, "{response:?}");
    assert_eq!(response.header("Sec-WebSocket-Accept"), Some(RFC_ACCEPT));
    stream
}

/// Reads one unmasked server frame (payload under 126 bytes); returns (first byte, payload).
pub async fn read_raw_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut lead = [0u8; 2];
    within(STEP, "a frame", stream.read_exact(&mut lead))
        .await
        .expect("read a frame header");
    assert_eq!(lead[1] & 0x80, 0, "server frames are not masked");
    let len = usize::from(lead[1] & 0x7f);
    assert!(len < 126, "short frames only");
    let mut payload = vec![0u8; len];
    within(STEP, "a frame payload", stream.read_exact(&mut payload))
        .await
        .expect("read a frame payload");
    (lead[0], payload)
}
