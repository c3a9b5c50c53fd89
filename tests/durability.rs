//! The data directory and the durable audio path across processes (issue 11): one process owns
//! a data directory; shutdown keeps uploading closed batches for `upload_drain_ms`; `pusher
//! spill drain` empties an orphaned log. The real binary, on both io drivers.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::{TEST_ENCRYPTION_SECRET, audio_payload, close_with, send};

const BINARY: &str = env!("CARGO_BIN_EXE_pusher");

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!(
            "pusher-durability-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Scratch(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `pusher serve` on `data_dir`; killed when dropped.
struct Serve {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Serve {
    fn spawn(driver: &str, data_dir: &Path, log: &Path, flags: &[&str]) -> Serve {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let out = std::fs::File::create(log).unwrap();
        let child = Command::new(BINARY)
            .args(["serve", "--workers", "1", "--driver", driver])
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .args(flags)
            .env_remove("RUST_LOG")
            .env("PUSHER_ENCRYPTION_SECRET", TEST_ENCRYPTION_SECRET)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Serve {
            child,
            addr,
            log: log.to_path_buf(),
        }
    }

    /// Starts and waits for `/health`.
    fn start(driver: &str, data_dir: &Path, log: &Path, flags: &[&str]) -> Serve {
        let mut serve = Serve::spawn(driver, data_dir, log, flags);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = serve.child.try_wait().unwrap() {
                panic!("pusher exited ({status}):\n{}", serve.log_text());
            }
            if health(serve.addr) {
                return serve;
            }
            assert!(
                Instant::now() < deadline,
                "not healthy:\n{}",
                serve.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    #[allow(dead_code)] // used by the drain tests
    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(self.pid() as libc::pid_t, signal) }, 0);
    }

    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {limit:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[allow(dead_code)] // used by the drain tests
    fn metrics(&self) -> String {
        get(self.addr, "/metrics").unwrap_or_default()
    }

    fn url(&self, uid: &str) -> String {
        format!(
            "ws://{}/v1/trigger/listen?uid={uid}&sample_rate=16000",
            self.addr
        )
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- pusher log ----\n{}", self.log_text());
        }
    }
}

fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.starts_with("HTTP/1.1 200").then_some(answer)
}

fn health(addr: SocketAddr) -> bool {
    get(addr, "/health").is_some()
}

/// Runs the binary to its end (at most `limit`).
#[allow(dead_code)] // used by the drain tests
fn run(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(BINARY)
        .args(args)
        .env_remove("RUST_LOG")
        .env("PUSHER_ENCRYPTION_SECRET", TEST_ENCRYPTION_SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pusher {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

#[allow(dead_code)] // used by the drain tests
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Defect 3: a second server on the same data directory (another port) is refused with exit
/// code 1 and a message naming the first one's pid; the first keeps serving.
async fn a_second_server_on_a_data_dir_is_refused(driver: &str) {
    let scratch = Scratch::new("lock");
    let data = scratch.path().join("data");
    let first = Serve::start(driver, &data, &scratch.path().join("first.log"), &[]);
    let mut second = Serve::spawn(driver, &data, &scratch.path().join("second.log"), &[]);
    let status = second.wait_exit(Duration::from_secs(20));
    let log = second.log_text();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("pid {}, started at unix", first.pid())),
        "the refusal names the holder:\n{log}"
    );
    assert!(health(first.addr), "the first server still serves");
    let lock = std::fs::read_to_string(data.join("pusher.lock")).unwrap();
    assert!(lock.starts_with(&format!("pid {},", first.pid())), "{lock}");
}

on_both_drivers!(a_second_server_on_a_data_dir_is_refused);

#[allow(dead_code)]
async fn send_closed_batch(serve: &Serve, uid: &str, conversation: &str, seconds: u32) {
    let stream = tokio::net::TcpStream::connect(serve.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(serve.url(uid), stream)
        .await
        .expect("upgrade");
    send(&mut ws, 103, conversation.as_bytes()).await;
    for n in 0..seconds {
        let pcm = vec![(n % 251) as u8; 32_000];
        send(
            &mut ws,
            101,
            &audio_payload(1_700_000_000.0 + f64::from(n), &pcm),
        )
        .await;
    }
    assert_eq!(close_with(&mut ws, 1000).await, 1000);
}
