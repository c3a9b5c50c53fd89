//! The data directory and the durable audio path across processes (issue 11): one process owns
//! a data directory; shutdown keeps uploading closed batches for `upload_drain_ms`; `pusher
//! spill drain` empties an orphaned log. The real binary, on both io drivers.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
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

/// A chunk-notification endpoint: answers 200 to every POST and keeps the `key` of each body.
struct Hook {
    url: String,
    keys: Arc<Mutex<Vec<String>>>,
}

impl Hook {
    fn start() -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/chunks", listener.local_addr().unwrap());
        let keys = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&keys);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                if let Some(body) = read_request_body(&mut stream) {
                    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    seen.lock()
                        .unwrap()
                        .push(json["key"].as_str().unwrap().to_string());
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Hook { url, keys }
    }

    fn keys(&self) -> Vec<String> {
        self.keys.lock().unwrap().clone()
    }

    fn wait_for(&self, key_part: &str) {
        wait_until(&format!("a notification of {key_part}"), || {
            self.keys().iter().any(|k| k.contains(key_part))
        });
    }
}

fn read_request_body(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let body_at = loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
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
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        request.extend_from_slice(&buf[..n]);
    }
    Some(request[body_at..].to_vec())
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The stored objects under `store` (relative keys), each with its inode.
fn objects(store: &Path) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut found = Vec::new();
    let mut stack = vec![store.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let key = path
                    .strip_prefix(store)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                found.push((key, entry.metadata().unwrap().ino()));
            }
        }
    }
    found.sort();
    found
}

/// The value of the sample named exactly `key` in a Prometheus text exposition (0 if absent).
fn metric(exposition: &str, key: &str) -> u64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

fn segment_files(data: &Path) -> Vec<String> {
    std::fs::read_dir(data.join("spill"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Defect 4: a batch uploaded and notified by one process is neither uploaded again nor
/// notified again by the next process on the same data directory.
async fn a_restart_neither_reuploads_nor_renotifies(driver: &str) {
    let scratch = Scratch::new("restart");
    let data = scratch.path().join("data");
    let store = scratch.path().join("store");
    let hook = Hook::start();
    let store_url = format!("file://{}", store.display());
    let flags = [
        "--store",
        &store_url,
        "--chunk-notification-url",
        &hook.url,
        "--upload-concurrency",
        "1",
        "--drain-grace-ms",
        "200",
    ];
    let mut first = Serve::start(driver, &data, &scratch.path().join("1.log"), &flags);
    send_filled_batch(&first, "user-a", "conversation-1", 1, 0x5a).await;
    hook.wait_for("conversation-1");
    let before = objects(&store);
    assert_eq!(before.len(), 1, "{before:?}");
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit(Duration::from_secs(30)).code(), Some(0));
    // The next process uploads a batch of its own; with one upload at a time, a recovered
    // batch would have gone first (and be notified first).
    let second = Serve::start(driver, &data, &scratch.path().join("2.log"), &flags);
    send_filled_batch(&second, "user-a", "conversation-2", 1, 0x5a).await;
    hook.wait_for("conversation-2");
    let keys = hook.keys();
    assert_eq!(keys.len(), 2, "each batch notified once: {keys:?}");
    let after = objects(&store);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        after.contains(&before[0]),
        "the first batch's object was not written again (same inode): {before:?} {after:?}"
    );
}

/// Flags of a server on `store_url` that retries uploads every 20-100 ms and drains in 200 ms.
fn quick_retries(store_url: &str) -> Vec<&str> {
    vec![
        "--store",
        store_url,
        "--upload-backoff-ms-min",
        "20",
        "--upload-backoff-ms-max",
        "100",
        "--drain-grace-ms",
        "200",
    ]
}

/// Defect 5: after SIGTERM, closed batches whose uploads were failing are uploaded once the
/// store answers, within `upload_drain_ms`, before the process exits.
async fn sigterm_keeps_uploading_closed_batches(driver: &str) {
    let scratch = Scratch::new("drain");
    let data = scratch.path().join("data");
    let store = scratch.path().join("store");
    let store_url = format!("file://{}", store.display());
    // upload_drain_ms: the default (60 s).
    let flags = quick_retries(&store_url);
    let mut serve = Serve::start(driver, &data, &scratch.path().join("serve.log"), &flags);
    // The store fails: its directory is a file now.
    std::fs::remove_dir_all(&store).unwrap();
    std::fs::write(&store, b"not a directory").unwrap();
    send_filled_batch(&serve, "user-b", "conversation-9", 1, 0x5a).await;
    wait_until("a failed upload attempt", || {
        metric(
            &serve.metrics(),
            "pusher_upload_attempts_failed_total{reason=\"store\"}",
        ) > 0
    });
    serve.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    std::fs::remove_file(&store).unwrap();
    std::fs::create_dir(&store).unwrap();
    let status = serve.wait_exit(Duration::from_secs(40));
    assert_eq!(status.code(), Some(0), "{}", serve.log_text());
    let stored = objects(&store);
    assert_eq!(stored.len(), 1, "uploaded during the drain: {stored:?}");
    assert!(stored[0].0.contains("conversation-9"), "{stored:?}");
    assert!(serve.log_text().contains("every batch is uploaded"));
}

/// Defect 5: what the upload drain cannot finish is reported and left in the log; `pusher
/// spill drain` is refused while a server holds the data directory, and otherwise uploads the
/// orphaned log and leaves it empty.
async fn spill_drain_uploads_an_orphaned_log(driver: &str) {
    let scratch = Scratch::new("orphan");
    let data = scratch.path().join("data");
    let store = scratch.path().join("store");
    let store_url = format!("file://{}", store.display());
    let mut failing = quick_retries(&store_url);
    failing.extend(["--upload-drain-ms", "300"]);
    // The store fails: its `chunks` directory is a file.
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join("chunks"), b"not a directory").unwrap();
    let mut serve = Serve::start(driver, &data, &scratch.path().join("serve.log"), &failing);
    send_filled_batch(&serve, "user-c", "conversation-7", 2, 0x5a).await;
    serve.signal(libc::SIGTERM);
    assert_eq!(serve.wait_exit(Duration::from_secs(30)).code(), Some(0));
    let log = serve.log_text();
    assert!(
        log.contains("upload drain over: batches left") && log.contains("batches=1"),
        "{log}"
    );
    // A server holds the directory (its store fails too, so it uploads nothing): refused.
    let holder = Serve::start(driver, &data, &scratch.path().join("holder.log"), &failing);
    let data_arg = data.to_string_lossy().into_owned();
    let drain = [
        "spill",
        "drain",
        "--data-dir",
        &data_arg,
        "--store",
        &store_url,
    ];
    let refused = run(&drain, Duration::from_secs(30));
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains(&format!("pid {}, started at", holder.pid())),
        "{stderr}"
    );
    drop(holder);
    std::fs::remove_file(store.join("chunks")).unwrap();
    let drained = run(&drain, Duration::from_secs(60));
    assert_eq!(
        drained.status.code(),
        Some(0),
        "{}{}",
        text(&drained.stdout),
        text(&drained.stderr)
    );
    let stored = objects(&store);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].0.contains("conversation-7"), "{stored:?}");
    assert_eq!(
        segment_files(&data),
        Vec::<String>::new(),
        "the log is empty"
    );
}

/// Sends one batch of `seconds` s of audio whose every byte is `fill`, and closes (1000).
async fn send_filled_batch(serve: &Serve, uid: &str, conversation: &str, seconds: u32, fill: u8) {
    let stream = tokio::net::TcpStream::connect(serve.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(serve.url(uid), stream)
        .await
        .expect("upgrade");
    send(&mut ws, 103, conversation.as_bytes()).await;
    for n in 0..seconds {
        let timestamp = 1_700_000_000.0 + f64::from(n);
        send(&mut ws, 101, &audio_payload(timestamp, &[fill; 32_000])).await;
    }
    assert_eq!(close_with(&mut ws, 1000).await, 1000);
}

/// Defect 2, the repro: one byte flipped in the middle of the log (inside an audio
/// record of one batch) costs that record only. The damaged batch is stored under its
/// `.partial` key with the audio that survived; the batch written after the damage is stored
/// whole; the damaged segment is kept in `spill/damaged/`.
async fn a_flipped_byte_costs_only_its_record(driver: &str) {
    let scratch = Scratch::new("damage");
    let data = scratch.path().join("data");
    let store = scratch.path().join("store");
    let store_url = format!("file://{}", store.display());
    // The batches stay in the log: the store fails (its `chunks` directory is a file).
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join("chunks"), b"not a directory").unwrap();
    // Level standard: the objects are the audio itself (`.bin`).
    let settings = scratch.path().join("settings.toml");
    std::fs::write(
        &settings,
        "[default]\nprivate_cloud_sync_enabled = true\ndata_protection_level = \"standard\"\n",
    )
    .unwrap();
    let settings = settings.to_string_lossy().into_owned();
    let mut flags = quick_retries(&store_url);
    flags.extend(["--settings", &settings]);
    let mut first = Serve::start(driver, &data, &scratch.path().join("1.log"), &flags);
    send_filled_batch(&first, "user-d", "damaged", 3, 0xa1).await;
    send_filled_batch(&first, "user-d", "after", 2, 0xb2).await;
    // Both batches were acknowledged (their Close came once they were durable): a crash now.
    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(10));
    // Flip one byte in the middle of the damaged batch's second audio record.
    let segments = segment_files(&data);
    assert_eq!(segments.len(), 1, "{segments:?}");
    let path = data.join("spill").join(&segments[0]);
    let mut bytes = std::fs::read(&path).unwrap();
    let first_audio = bytes.windows(64).position(|w| w == [0xa1; 64]).unwrap();
    let target = first_audio + 32_000 + 200 + 16_000;
    assert_eq!(bytes[target], 0xa1);
    bytes[target] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    std::fs::remove_file(store.join("chunks")).unwrap();
    let second = Serve::start(driver, &data, &scratch.path().join("2.log"), &flags);
    wait_until("both batches stored", || objects(&store).len() == 2);
    let stored = objects(&store);
    let audio = |key: &str| std::fs::read(store.join(key)).unwrap();
    let partial = stored.iter().find(|(k, _)| k.contains("damaged")).unwrap();
    assert!(partial.0.ends_with(".bin.partial"), "{stored:?}");
    assert_eq!(
        audio(&partial.0),
        vec![0xa1; 64_000],
        "one 1 s record of 3 lost"
    );
    let whole = stored.iter().find(|(k, _)| k.contains("after")).unwrap();
    assert!(whole.0.ends_with(".bin"), "{stored:?}");
    assert_eq!(
        audio(&whole.0),
        vec![0xb2; 64_000],
        "the batch after the damage is whole"
    );
    let kept = data.join("spill").join("damaged").join(&segments[0]);
    assert_eq!(
        std::fs::read(&kept).unwrap(),
        bytes,
        "the damaged segment is kept aside"
    );
    // Counted once the upload's confirmation is durable (after the object is stored).
    wait_until("the partial upload counted", || {
        metric(&second.metrics(), "pusher_upload_partial_total") == 1
    });
    let metrics = second.metrics();
    assert_eq!(metric(&metrics, "pusher_spill_damaged_segments_total"), 1);
}

on_both_drivers!(
    a_second_server_on_a_data_dir_is_refused,
    a_flipped_byte_costs_only_its_record,
    a_restart_neither_reuploads_nor_renotifies,
    sigterm_keeps_uploading_closed_batches,
    spill_drain_uploads_an_orphaned_log
);
