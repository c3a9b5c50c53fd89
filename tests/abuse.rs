//! Hostile peers and a full disk, one attack per test: slowloris heads, trickled frames, silent
//! sockets, a ping flood, a peer that never reads, descriptor exhaustion, a disk that fills up.
//! During each attack a canary session (opened before it) must keep getting its 201s and pongs,
//! `/health` must answer, memory must stay within the budget, and after the attack the server
//! serves new sessions again.
//!
//! Each test prints one `ABUSE {json}` line with what it measured (canary round trips,
//! `/health` latency, RSS against the budget), and appends it to the file `ABUSE_FIGURES`
//! names, if set: `make bench SCENARIO=abuse` collects them. The
//! assertions bound latencies generously (a loaded CI machine is slow); the figures are the
//! bench's.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use pusher::websocket::frame::{Opcode, encode_client_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

on_both_drivers!(
    slowloris_heads,
    trickled_frames,
    silent_sockets,
    ping_flood,
    a_peer_that_never_reads,
    descriptor_exhaustion,
    a_full_disk_stalls_audio_senders_and_loses_nothing,
);

/// The bound every canary round trip and probe must meet during an attack (generous: the
/// figures of interest are printed, and judged by the bench).
const ANSWER_LIMIT: Duration = Duration::from_secs(5);

/// A session that must keep working during an attack.
struct Canary {
    ws: Ws,
    round: u32,
}

impl Canary {
    async fn open(server: &Server, uid: &str) -> Canary {
        Canary {
            ws: server.connect(uid).await,
            round: 0,
        }
    }

    /// A 104 answered with its 201, and a Ping with its Pong: the round trip.
    async fn check(&mut self) -> Duration {
        let start = Instant::now();
        self.round += 1;
        let conversation = format!("canary-{}", self.round);
        let payload = format!(r#"{{"conversation_id": "{conversation}"}}"#);
        within(
            ANSWER_LIMIT,
            "the canary's 104",
            send(&mut self.ws, 104, payload.as_bytes()),
        )
        .await;
        let answer = within(
            ANSWER_LIMIT,
            "the canary's 201",
            expect_result(&mut self.ws),
        )
        .await;
        assert_eq!(answer["conversation_id"], conversation.as_str());
        let ping = format!("ping-{}", self.round);
        within(
            ANSWER_LIMIT,
            "the canary's ping",
            self.ws
                .send(Message::Ping(ping.clone().into_bytes().into())),
        )
        .await
        .expect("send a ping");
        match within(ANSWER_LIMIT, "the canary's pong", self.ws.next()).await {
            Some(Ok(Message::Pong(payload))) => assert_eq!(&payload[..], ping.as_bytes()),
            other => panic!("expected the canary's pong, got {other:?}"),
        }
        start.elapsed()
    }
}

/// What one attack measured.
#[derive(Default)]
struct Figures {
    canary_ms: Vec<f64>,
    health_ms: Vec<f64>,
    rss_mb_max: f64,
    budget_mb: f64,
}

impl Figures {
    /// One round during the attack: the canary, a probe, memory.
    async fn round(&mut self, server: &Server, canary: &mut Canary) {
        self.canary_ms
            .push(canary.check().await.as_secs_f64() * 1e3);
        let start = Instant::now();
        let health = within(
            ANSWER_LIMIT,
            "/health during the attack",
            try_health(server.addr),
        )
        .await;
        assert_eq!(health, 200, "/health during the attack");
        self.health_ms.push(start.elapsed().as_secs_f64() * 1e3);
        let memory = server.get("/debug/memory").await;
        let memory: serde_json::Value = serde_json::from_str(&memory.body).expect("JSON");
        let rss = memory["rss_mb"].as_f64().expect("rss_mb");
        self.budget_mb = memory["pusher_debug"]["budget_mb"]
            .as_f64()
            .expect("budget_mb");
        self.rss_mb_max = self.rss_mb_max.max(rss);
        let overhead_mb = (pusher::budget::FIXED_OVERHEAD_BYTES_ESTIMATE >> 20) as f64;
        assert!(
            rss <= self.budget_mb + overhead_mb,
            "RSS {rss} MiB over the budget {} MiB + {overhead_mb} MiB",
            self.budget_mb
        );
    }

    fn print(&self, attack: &str, driver: &str, extra: serde_json::Value) {
        let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let line = serde_json::json!({
            "attack": attack,
            "driver": driver,
            "rounds": self.canary_ms.len(),
            "canary_ms_max": max(&self.canary_ms),
            "health_ms_max": max(&self.health_ms),
            "rss_mb_max": self.rss_mb_max,
            "budget_mb": self.budget_mb,
            "extra": extra,
        });
        println!("ABUSE {line}");
        // `make bench SCENARIO=abuse` collects the figures in this file.
        if let Some(path) = std::env::var_os("ABUSE_FIGURES") {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("open ABUSE_FIGURES");
            writeln!(file, "{line}").expect("write ABUSE_FIGURES");
        }
    }
}

async fn try_health(addr: SocketAddr) -> u16 {
    loop {
        if let Ok(response) = tokio::time::timeout(ANSWER_LIMIT, async {
            let mut stream = TcpStream::connect(addr).await?;
            stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                .await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            Ok::<_, std::io::Error>(raw)
        })
        .await
        {
            match response {
                Ok(raw) if raw.starts_with(b"HTTP/1.1 ") => {
                    return std::str::from_utf8(&raw[9..12])
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// A masked client frame.
fn client_frame(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    encode_client_frame(opcode, payload, [9, 8, 7, 6], &mut frame);
    frame
}

/// Runs `rounds` canary rounds during an attack, `every` apart.
async fn during(
    figures: &mut Figures,
    server: &Server,
    canary: &mut Canary,
    rounds: u32,
    every: Duration,
) {
    for _ in 0..rounds {
        figures.round(server, canary).await;
        tokio::time::sleep(every).await;
    }
}

/// After the attack: a new session works.
async fn recovered(server: &Server) {
    let mut after = Canary::open(server, "after").await;
    after.check().await;
}

async fn slowloris_heads(driver: &str) {
    let server = Server::start(
        driver,
        &["--workers", "1", "--handshake-buffers-per-core", "32"],
    )
    .await;
    let mut canary = Canary::open(&server, "canary").await;
    let mut attackers = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream
            .write_all(b"GET /v1/trigger/listen?uid=slow HTTP/1.1\r\n")
            .await
            .expect("write");
        attackers.push(stream);
    }
    let mut figures = Figures::default();
    for round in 0..6 {
        for stream in &mut attackers {
            let _ = stream
                .write_all(format!("X-{round}: a\r\n").as_bytes())
                .await;
        }
        figures.round(&server, &mut canary).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let evicted = server.metric("pusher_handshakes_evicted_total").await;
    figures.print(
        "slowloris",
        driver,
        serde_json::json!({ "evicted": evicted }),
    );
    drop(attackers);
    recovered(&server).await;
}

async fn trickled_frames(driver: &str) {
    // Durability defect 6: 128 sessions each declaring a ~1 MiB frame and sending a byte now and
    // then held every receive buffer; no upgrade, no 201, no pong for anyone else.
    let server = Server::start(
        driver,
        &[
            "--workers",
            "1",
            "--recv-buffers-per-core",
            "8",
            "--message-timeout-ms",
            "4000",
        ],
    )
    .await;
    let mut canary = Canary::open(&server, "canary").await;
    let mut attackers = Vec::new();
    for i in 0..16 {
        let mut stream = raw_upgrade(server.addr, &format!("uid=trickle-{i}")).await;
        let frame = client_frame(Opcode::Binary, &vec![0u8; 512 * 1024]);
        stream
            .write_all(&frame[..20])
            .await
            .expect("write the frame's start");
        attackers.push((stream, frame, 20usize));
    }
    let mut figures = Figures::default();
    for _ in 0..6 {
        for (stream, frame, sent) in &mut attackers {
            if stream.write_all(&frame[*sent..*sent + 1]).await.is_ok() {
                *sent += 1;
            }
        }
        figures.round(&server, &mut canary).await;
        // A new session in the middle of it.
        let mut newcomer = Canary::open(&server, "newcomer").await;
        newcomer.check().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Each trickler, once it holds a buffer, is closed (1008) at its message timeout (or
    // earlier, evicted); those waiting for a buffer get one as others go.
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let metrics = server.metrics().await;
        if metrics.value("pusher_sessions_closed_total{code=\"1008\"}") == 16 {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "not every trickler closed: {}",
            metrics.0
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(metrics.value("pusher_recv_buffers_parked{core=\"0\"}"), 0);
    let closed_1008 = metrics.value("pusher_sessions_closed_total{code=\"1008\"}");
    figures.print(
        "trickled_frames",
        driver,
        serde_json::json!({
            "recv_buffers_evicted": metrics.value("pusher_recv_buffers_evicted_total"),
            "closed_1008": closed_1008,
        }),
    );
    recovered(&server).await;
}

async fn silent_sockets(driver: &str) {
    // Durability defect 7: 512 silent connections took every head buffer; upgrades, /health
    // and /readyz got 503 and the kubelet would have restarted the pod.
    let server = Server::start(
        driver,
        &["--workers", "1", "--handshake-buffers-per-core", "32"],
    )
    .await;
    let mut canary = Canary::open(&server, "canary").await;
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    let mut figures = Figures::default();
    during(
        &mut figures,
        &server,
        &mut canary,
        5,
        Duration::from_millis(300),
    )
    .await;
    let mut newcomer = within(
        ANSWER_LIMIT,
        "an upgrade",
        Canary::open(&server, "newcomer"),
    )
    .await;
    newcomer.check().await;
    let evicted = server.metric("pusher_handshakes_evicted_total").await;
    assert!(evicted > 0, "silent peers were evicted");
    figures.print(
        "silent_sockets",
        driver,
        serde_json::json!({ "evicted": evicted }),
    );
    drop(silent);
    recovered(&server).await;
}

/// Writes `frame` again and again on a connection that never reads, until pusher drops it.
async fn flood_until_dropped(mut stream: TcpStream, frame: Vec<u8>) -> usize {
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(2), stream.write_all(&frame)).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(_)) => return sent,
            // Neither side reads: pusher stopped reading us (its own backpressure).
            Err(_) => return sent,
        }
    }
    sent
}

async fn ping_flood(driver: &str) {
    flood_by_a_peer_that_does_not_read(
        driver,
        "uid=pinger",
        client_frame(Opcode::Ping, &[1u8; 125]),
        "ping_flood",
        "pings_sent",
    )
    .await;
}

async fn a_peer_that_never_reads(driver: &str) {
    // Every 104 gets a 201 (no processor: at once); the peer reads none of them.
    let mut message = 104u32.to_le_bytes().to_vec();
    message.extend_from_slice(br#"{"conversation_id": "deaf", "padding": ""#);
    message.extend_from_slice(&[b'x'; 900]);
    message.extend_from_slice(br#""}"#);
    flood_by_a_peer_that_does_not_read(
        driver,
        "uid=deaf",
        client_frame(Opcode::Binary, &message),
        "never_reads",
        "messages_sent",
    )
    .await;
}

/// A peer (`query`) sends `frame` until pusher stops reading it or drops it, and reads none of
/// the answers (pongs, 201s): the canary keeps its round trips, and pusher holds at most its
/// outbound bound for the peer. Figures go out as `name`, the frames sent as `sent_key`.
async fn flood_by_a_peer_that_does_not_read(
    driver: &str,
    query: &str,
    frame: Vec<u8>,
    name: &str,
    sent_key: &str,
) {
    let server = Server::start(driver, &["--workers", "1"]).await;
    let mut canary = Canary::open(&server, "canary").await;
    let attacker = raw_upgrade(server.addr, query).await;
    let flood = tokio::spawn(flood_until_dropped(attacker, frame));
    let mut figures = Figures::default();
    during(
        &mut figures,
        &server,
        &mut canary,
        5,
        Duration::from_millis(200),
    )
    .await;
    let sent = within(Duration::from_secs(40), "the flood's end", flood)
        .await
        .expect("flood");
    // pusher stops reading a peer that does not read its answers (its own backpressure), or
    // drops it once its unsent bytes pass the bound: either way it holds at most that for it.
    let metrics = server.metrics().await;
    let pending = metrics.value("pusher_outbound_pending_bytes{core=\"0\"}");
    assert!(
        pending <= 65_536,
        "{pending} unsent bytes held for the peer"
    );
    let mut extra = serde_json::json!({
        "pending_bytes": pending,
        "dropped": metrics.value("pusher_peers_dropped_slow_total"),
    });
    extra[sent_key] = serde_json::json!(sent);
    figures.print(name, driver, extra);
    recovered(&server).await;
}

async fn descriptor_exhaustion(driver: &str) {
    // A process limit of 400 descriptors; every session the attacker can open is opened.
    let flags = [
        "--workers",
        "1",
        "--handshake-buffers-per-core",
        "16",
        "--egress-in-flight-max",
        "16",
        "--upload-concurrency",
        "1",
    ];
    let server = Server::start_wrapped(
        &["sh", "-c", "ulimit -n 400 && exec \"$0\" \"$@\""],
        driver,
        &flags,
        &[],
    )
    .await;
    let slots = server.metric("pusher_sessions_capacity{core=\"0\"}").await as usize;
    assert!(
        slots < 400,
        "the session slots are capped by the open-files limit: {slots}"
    );
    let mut canary = Canary::open(&server, "canary").await;
    let mut opened = Vec::new();
    let mut turned_away = 0;
    for i in 0..(slots + 50) {
        let mut ws = match server.try_connect(&format!("uid=fd-{i}"), None).await {
            Ok(ws) => ws,
            Err(response) => panic!("an HTTP refusal at {i}: {response:?}"),
        };
        // A full server completes the upgrade, then closes with 1013.
        match tokio::time::timeout(Duration::from_millis(50), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                assert_eq!(u16::from(frame.code), 1013);
                turned_away += 1;
            }
            Err(_) => opened.push(ws),
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        opened.len() + 1,
        slots,
        "every slot taken, the canary's included"
    );
    assert_eq!(turned_away, 51, "the attempts past the slots");
    let mut figures = Figures::default();
    during(
        &mut figures,
        &server,
        &mut canary,
        3,
        Duration::from_millis(200),
    )
    .await;
    let accept_errors = server.metric("pusher_accept_errors_total").await;
    assert_eq!(accept_errors, 0, "accept never ran out of descriptors");
    figures.print(
        "descriptor_exhaustion",
        driver,
        serde_json::json!({ "slots": slots, "turned_away": turned_away }),
    );
    drop(opened);
    server.wait_metric("pusher_active_ws_connections", 1).await;
    recovered(&server).await;
}

/// A tmpfs of `mib` MiB mounted at `dir`, or None where this process may not mount one.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, mib: u32) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn a_full_disk_stalls_audio_senders_and_loses_nothing(driver: &str) {
    // Durability defect 1: while pusher did not read a session (its spill log could not take
    // the audio), the idle timer ran on; at the idle timeout the session was closed and the
    // frames already in its socket were dropped.
    let base =
        std::env::temp_dir().join(format!("pusher-abuse-disk-{}-{driver}", std::process::id()));
    let Some(disk) = Tmpfs::mount(&base.join("disk"), 8) else {
        eprintln!("skipped: cannot mount a tmpfs here (not root?)");
        return;
    };
    let store = base.join("store");
    std::fs::create_dir_all(&store).expect("store dir");
    let settings = base.join("settings.toml");
    std::fs::write(
        &settings,
        "[default]\nprivate_cloud_sync_enabled = true\ndata_protection_level = \"standard\"\n\n\
         [users.\"canary\"]\nprivate_cloud_sync_enabled = false\n",
    )
    .expect("settings");
    // Fill the disk but for about 2.5 MiB: the spill log runs out of space mid-stream.
    let filler = disk.0.join("filler");
    std::fs::write(&filler, vec![0u8; (5 << 20) + (512 << 10)]).expect("filler");
    let data_dir = disk.0.join("data");
    let flags = [
        "--settings",
        settings.to_str().expect("path"),
        "--store",
        &format!("file://{}", store.display()),
        "--idle-timeout-ms",
        "1500",
        "--message-bytes-max",
        "65536",
        "--spill-segment-bytes",
        "1048576",
        "--spill-handoff-bytes-per-core",
        "262144",
        "--spill-bytes-max",
        "67108864",
        "--close-timeout-ms",
        "20000",
    ];
    let server = Server::start_with_data_dir(driver, &flags, &data_dir).await;
    let mut canary = Canary::open(&server, "canary").await;
    // At 48 kHz the 4 MiB sent stay in one open batch (60 s would be 5.76 MB): nothing is
    // uploaded, nothing frees the disk until the session ends.
    let mut sender = server
        .try_connect("uid=sender&sample_rate=48000", None)
        .await
        .expect("upgrade");
    send(&mut sender, 103, b"conv").await;
    // Send 4 MiB of audio in 32,000-byte frames, each unique; the sends block when pusher stops
    // reading (the client's buffer and the socket fill).
    let frames: Vec<Vec<u8>> = (0..131u32)
        .map(|i| {
            let pcm: Vec<u8> = (0..32_000u32)
                .map(|b| (b.wrapping_mul(7) ^ i) as u8)
                .collect();
            audio_payload(1_700_000_000.0 + f64::from(i), &pcm)
        })
        .collect();
    let sending = tokio::spawn(async move {
        for frame in &frames {
            send_unbounded(&mut sender, 101, frame).await;
        }
        sender
    });
    let mut figures = Figures::default();
    // Until the log stalls: the hand-off ring full, sessions not read.
    let stalled = Instant::now();
    loop {
        figures.round(&server, &mut canary).await;
        let backpressure = server.metrics().await;
        if backpressure
            .0
            .contains("pusher_spill_backpressure_seconds_total")
            && metric_f64(&backpressure.0, "pusher_spill_backpressure_seconds_total") > 2.0
        {
            break;
        }
        assert!(
            stalled.elapsed() < Duration::from_secs(30),
            "the log never stalled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Stalled for longer than the idle timeout: the sender is not closed.
    during(
        &mut figures,
        &server,
        &mut canary,
        3,
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(
        server
            .metric("pusher_sessions_closed_total{code=\"1001\"}")
            .await,
        0
    );
    // The stalled sender waits in its core's queue, to be woken when the log has room.
    assert_eq!(
        server.metrics().await.sum("pusher_spill_waiters{"),
        1,
        "the stalled sender is queued once"
    );
    // The disk has room again: everything arrives.
    std::fs::remove_file(&filler).expect("remove the filler");
    let mut sender = within(Duration::from_secs(60), "the rest of the audio", sending)
        .await
        .expect("sender");
    assert_eq!(
        close_with(&mut sender, 1000).await,
        1000,
        "acknowledged: durable"
    );
    let expected: Vec<u8> = (0..131u32)
        .flat_map(|i| (0..32_000u32).map(move |b| (b.wrapping_mul(7) ^ i) as u8))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = stored_audio(&store.join("chunks/sender/conv"));
        if stored.len() == expected.len() {
            assert!(
                stored == expected,
                "the stored audio is what was sent, in order"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} bytes stored",
            stored.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Woken by the room, the queue is empty again (a session that resumed only by the clock's
    // look at its peer would leave its entry behind: the wake-up would not be working).
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.metrics().await.sum("pusher_spill_waiters{") != 0 {
        assert!(
            Instant::now() < deadline,
            "a stalled session was never woken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    figures.print(
        "full_disk",
        driver,
        serde_json::json!({
            "backpressure_s": metric_f64(&server.metrics().await.0, "pusher_spill_backpressure_seconds_total"),
        }),
    );
    recovered(&server).await;
    drop(server);
    drop(disk);
    let _ = std::fs::remove_dir_all(&base);
}

/// Sends without the helpers' per-send time limit: the send waits while pusher does not read.
async fn send_unbounded(ws: &mut Ws, header: u32, payload: &[u8]) {
    ws.send(Message::binary(frame(header, payload)))
        .await
        .expect("send");
}

/// The batches of one conversation, concatenated in key (timestamp) order.
fn stored_audio(dir: &std::path::Path) -> Vec<u8> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    names.sort();
    names
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap_or_default())
        .collect()
}

fn metric_f64(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
