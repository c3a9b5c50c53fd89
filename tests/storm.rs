//! A reconnect storm (docs/protocol.md §1): after a rollout every listen pod reconnects its
//! sessions at once. 10,000 upgrades fired at the same moment must all get their 101 (queued in the
//! kernel's accept backlog and the handshake slots, never refused), and the probes must keep
//! answering meanwhile. How fast is a benchmark (`make bench SCENARIO=storm`); here only what
//! happens to each connection is judged.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

on_both_drivers!(ten_thousand_simultaneous_upgrades_all_get_their_101,);

const SESSIONS: usize = 10_000;
/// Client source addresses: each has its own range of ephemeral ports.
const SOURCE_IPS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
    Ipv4Addr::new(127, 0, 0, 4),
    Ipv4Addr::new(127, 0, 0, 5),
];
/// Longest an attempt may take: well past the server's 10 s handshake timeout, so an attempt
/// the server dropped shows as a refusal, not as a slow answer.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(30);

/// How one attempt ended.
#[derive(Debug)]
enum Outcome {
    Upgraded(TcpStream),
    Failed(String),
}

async fn attempt(server: SocketAddr, source: IpAddr, i: usize) -> Outcome {
    let run = async {
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| format!("bind: {e}"))?;
        let mut stream = socket
            .connect(server)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let head = format!(
            "GET {LISTEN}?uid=storm-{i}&sample_rate=16000 HTTP/1.1\r\nHost: {server}\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = Vec::with_capacity(256);
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(0) => {
                    return Err(format!(
                        "closed after {:?}",
                        String::from_utf8_lossy(&answer)
                    ));
                }
                Ok(_) => answer.push(byte[0]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        if !answer.starts_with(b"HTTP/1.1 101 ") {
            return Err(format!("answered {:?}", String::from_utf8_lossy(&answer)));
        }
        Ok(stream)
    };
    match tokio::time::timeout(ATTEMPT_LIMIT, run).await {
        Ok(Ok(stream)) => Outcome::Upgraded(stream),
        Ok(Err(why)) => Outcome::Failed(why),
        Err(_) => Outcome::Failed(format!("no 101 within {ATTEMPT_LIMIT:?}")),
    }
}

/// One storm at a time: both drivers' storms in one process would pass its open-files limit.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn ten_thousand_simultaneous_upgrades_all_get_their_101(driver: &str) {
    let _one = ONE_AT_A_TIME.lock().await;
    raise_open_files_limit();
    let server = Server::start(driver, &[]).await;
    let mut storm = JoinSet::new();
    for i in 0..SESSIONS {
        let source = IpAddr::V4(SOURCE_IPS[i % SOURCE_IPS.len()]);
        storm.spawn(attempt(server.addr, source, i));
    }
    // Liveness probes during the storm, each on its own connection (answered at all: the
    // latency is the bench's to measure).
    let probes = tokio::spawn({
        let addr = server.addr;
        async move {
            let mut answered = 0;
            for _ in 0..10 {
                let response = within(
                    STEP,
                    "/health during the storm",
                    http_get(addr, "/health", &[]),
                )
                .await;
                assert_eq!(response.status, 200, "{response:?}");
                answered += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answered
        }
    });
    let mut sessions = Vec::with_capacity(SESSIONS);
    let mut failures = Vec::new();
    while let Some(joined) = storm.join_next().await {
        match joined.expect("attempt task") {
            Outcome::Upgraded(stream) => sessions.push(stream),
            Outcome::Failed(why) => failures.push(why),
        }
    }
    assert_eq!(probes.await.expect("probe task"), 10);
    assert!(
        failures.is_empty(),
        "{} of {SESSIONS} upgrades failed; first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(sessions.len(), SESSIONS);
    let metrics = server.metrics().await;
    assert_eq!(
        metrics.value("pusher_active_ws_connections"),
        SESSIONS as u64
    );
    assert_eq!(metrics.value("pusher_handshakes_evicted_total"), 0);
    assert_eq!(metrics.sum("pusher_sessions_refused_total"), 0);
    assert_eq!(metrics.sum("pusher_sessions_turned_away_total"), 0);
}

/// The soft open-files limit raised to the hard one: this process holds every client socket.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur as usize > SESSIONS + 1_000,
        "the open-files limit ({}) is too small for {SESSIONS} client sockets",
        limit.rlim_cur
    );
}
