//! The drain (docs/protocol.md §5), begun by SIGTERM or by `POST /__internal/drain` (the Omi
//! chart's preStop hook): readiness, sessions turned away after their upgrade, the grace period and
//! the exit.

mod common;

use std::time::{Duration, Instant};

use common::*;

on_both_drivers!(
    drain_closes_open_sessions_with_1001_after_the_grace_and_exits_0,
    draining_server_is_unready_and_turns_sessions_away_with_1001,
    post_drain_drains_without_exiting_and_sigterm_continues_it,
    drain_is_served_to_loopback_peers_without_forwarding_headers_only,
    second_sigterm_exits_at_once,
    second_signal_after_a_post_drain_exits_at_once,
    a_second_server_on_the_same_address_is_refused,
);

async fn drain_closes_open_sessions_with_1001_after_the_grace_and_exits_0(driver: &str) {
    let grace = Duration::from_millis(300);
    let mut server = Server::start(driver, &["--drain-grace-ms", "300"]).await;
    let mut sessions = Vec::new();
    for uid in ["u-1", "u-2", "u-3"] {
        let mut ws = server.connect(uid).await;
        send(&mut ws, 100, &[]).await;
        sessions.push(ws);
    }
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    for ws in &mut sessions {
        assert_eq!(expect_close(ws).await, 1001);
    }
    let waited = signalled.elapsed();
    assert!(waited >= grace, "sessions closed {waited:?} after SIGTERM");
    let status = server.wait_exit(STEP).await;
    assert_eq!(status.code(), Some(0), "{status}");
}

async fn draining_server_is_unready_and_turns_sessions_away_with_1001(driver: &str) {
    let mut server = Server::start(driver, &["--drain-grace-ms", "30000"]).await;
    let mut ws = server.connect("u-1").await;
    assert_eq!(server.get("/ready").await.status, 200);
    server.signal(libc::SIGTERM);
    for path in ["/ready", "/readyz"] {
        let ready = server.wait_status(path, 503).await;
        assert_eq!(ready.body, r#"{"status":"draining"}"#);
    }
    // Still alive and observable while draining.
    assert_eq!(server.get("/health").await.status, 200);
    // A new session completes its upgrade (no failed connect for the client's breaker) and is
    // closed at once with 1001: its client reconnects to another instance.
    assert_eq!(server.connect_turned_away("u-2").await, 1001);
    let metrics = server.metrics().await;
    assert_eq!(
        metrics.value("pusher_sessions_turned_away_total{reason=\"draining\"}"),
        1
    );
    assert_eq!(
        metrics.value("pusher_sessions_refused_total{reason=\"draining\"}"),
        0
    );
    assert_eq!(metrics.value("pusher_draining"), 1);
    assert_eq!(metrics.value("pusher_drain_in_progress"), 1);
    assert_eq!(metrics.value("pusher_ready"), 0);
    assert_eq!(metrics.value("pusher_active_ws_connections"), 1);
    // The open session goes on during the grace period.
    send(&mut ws, 104, br#"{"conversation_id": "late"}"#).await;
    assert_eq!(expect_result(&mut ws).await["conversation_id"], "late");
    // When the last session ends, the drain is over long before the grace period.
    assert_eq!(close_with(&mut ws, 1000).await, 1000);
    let status = server.wait_exit(STEP).await;
    assert_eq!(status.code(), Some(0), "{status}");
}

async fn post_drain_drains_without_exiting_and_sigterm_continues_it(driver: &str) {
    let grace = Duration::from_millis(3_000);
    let mut server = Server::start(driver, &["--drain-grace-ms", "3000"]).await;
    let mut ws = server.connect("u-1").await;
    send(&mut ws, 100, &[]).await;
    let posted = Instant::now();
    let drain = server.post_drain(&[]).await;
    assert_eq!(
        (drain.status, drain.body.as_str()),
        (200, r#"{"status":"draining"}"#)
    );
    let ready = server.get("/ready").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (503, r#"{"status":"draining"}"#)
    );
    assert_eq!(server.connect_turned_away("u-2").await, 1001);
    // Idempotent: a second POST answers the same and keeps the first drain's start.
    assert_eq!(server.post_drain(&[]).await.status, 200);
    assert_eq!(server.metric("pusher_drain_in_progress").await, 1);
    // The chart's preStop sleeps, then the kubelet sends SIGTERM: the same drain goes on.
    tokio::time::sleep(Duration::from_millis(2_500).saturating_sub(posted.elapsed())).await;
    server.signal(libc::SIGTERM);
    assert_eq!(expect_close(&mut ws).await, 1001);
    let closed = posted.elapsed();
    assert!(closed >= grace, "closed {closed:?} after the POST");
    // Had the signal started a new grace period, the close would come 2.5 s later.
    assert!(
        closed < grace + Duration::from_millis(2_000),
        "the grace counts from the POST: closed {closed:?} after it"
    );
    let status = server.wait_exit(STEP).await;
    assert_eq!(status.code(), Some(0), "{status}");
}

async fn drain_is_served_to_loopback_peers_without_forwarding_headers_only(driver: &str) {
    let server = Server::start(driver, &["--listen-any"]).await;
    for header in [
        ("X-Forwarded-For", "10.1.2.3"),
        ("Forwarded", "for=10.1.2.3"),
    ] {
        let refused = server.post_drain(&[header]).await;
        assert_eq!(refused.status, 403, "{header:?}: {refused:?}");
    }
    if let Some(ip) = non_loopback_address() {
        let addr = std::net::SocketAddr::new(ip, server.addr.port());
        let head =
            format!("POST /__internal/drain HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n");
        let refused = raw_request(addr, head.as_bytes()).await;
        assert_eq!(refused.status, 403, "from {ip}: {refused:?}");
    }
    assert_eq!(server.get("/ready").await.status, 200, "no drain began");
    assert_eq!(server.metric("pusher_drain_in_progress").await, 0);
    assert_eq!(server.post_drain(&[]).await.status, 200);
    assert_eq!(server.get("/ready").await.status, 503);
}

async fn second_sigterm_exits_at_once(driver: &str) {
    let mut server = Server::start(driver, &["--drain-grace-ms", "30000"]).await;
    let mut ws = server.connect("u-1").await;
    server.signal(libc::SIGTERM);
    server.wait_status("/readyz", 503).await;
    server.signal(libc::SIGTERM);
    // Well inside the 30 s grace, with room for a loaded machine.
    let status = server.wait_exit(STEP).await;
    assert!(
        !status.success(),
        "a forced exit is not a clean drain: {status}"
    );
    // The session is cut without a close handshake.
    match within(
        STEP,
        "the end of the session",
        futures_util::StreamExt::next(&mut ws),
    )
    .await
    {
        None | Some(Err(_)) => {}
        Some(Ok(message)) => panic!("expected the connection to be cut, got {message:?}"),
    }
}

async fn second_signal_after_a_post_drain_exits_at_once(driver: &str) {
    let mut server = Server::start(driver, &["--drain-grace-ms", "30000"]).await;
    let _ws = server.connect("u-1").await;
    assert_eq!(server.post_drain(&[]).await.status, 200);
    // The first signal continues the drain (the session keeps the process alive) ...
    server.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.get("/health").await.status, 200, "still draining");
    // ... the second exits at once.
    server.signal(libc::SIGINT);
    let status = server.wait_exit(STEP).await;
    assert!(!status.success(), "a forced exit: {status}");
}

async fn a_second_server_on_the_same_address_is_refused(driver: &str) {
    // Durability defect 3: a second pusher on the same listen address started silently
    // (SO_REUSEPORT) and took a share of the sessions.
    let server = Server::start(driver, &[]).await;
    let dir = std::env::temp_dir().join(format!(
        "pusher-it-second-{}-{}",
        std::process::id(),
        server.addr.port()
    ));
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_pusher"))
        .args([
            "serve",
            "--listen",
            &server.addr.to_string(),
            "--driver",
            driver,
        ])
        .arg("--data-dir")
        .arg(&dir)
        .env("PUSHER_ENCRYPTION_SECRET", TEST_ENCRYPTION_SECRET)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run a second pusher");
    let deadline = Instant::now() + STEP;
    let status = loop {
        if let Some(status) = second.try_wait().expect("poll the second pusher") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            let _ = std::fs::remove_dir_all(&dir);
            panic!(
                "a second pusher started on {} beside the first",
                server.addr
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = std::fs::remove_dir_all(&dir);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("address is in use"), "{stderr}");
    // The first one goes on alone.
    let mut ws = server.connect("u").await;
    assert_eq!(close_with(&mut ws, 1000).await, 1000);
}
