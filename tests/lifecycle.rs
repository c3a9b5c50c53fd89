//! Drain on SIGTERM (protocol.md §5): readiness, refusals, the grace period and the exit.

mod common;

use std::time::{Duration, Instant};

use common::*;

on_both_drivers!(
    drain_closes_open_sessions_with_1001_after_the_grace_and_exits_0,
    draining_server_is_unready_and_refuses_upgrades,
    second_sigterm_exits_at_once,
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

async fn draining_server_is_unready_and_refuses_upgrades(driver: &str) {
    let mut server = Server::start(driver, &["--drain-grace-ms", "30000"]).await;
    let mut ws = server.connect("u-1").await;
    assert_eq!(server.get("/readyz").await.status, 200);
    server.signal(libc::SIGTERM);
    let ready = server.wait_status("/readyz", 503).await;
    assert_eq!(ready.body, r#"{"status":"draining"}"#);
    // Still alive and observable while draining.
    assert_eq!(server.get("/health").await.status, 200);
    let refused = server
        .try_connect("uid=u-2", None)
        .await
        .expect_err("no upgrade while draining");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(refused.header("Retry-After").is_some(), "{refused:?}");
    let metrics = server.metrics().await;
    assert_eq!(
        metrics.value("pusher_sessions_refused_total{reason=\"draining\"}"),
        1
    );
    assert_eq!(metrics.value("pusher_draining"), 1);
    // The open session goes on during the grace period.
    send(&mut ws, 104, br#"{"conversation_id": "late"}"#).await;
    assert_eq!(expect_result(&mut ws).await["conversation_id"], "late");
    // When the last session ends, the drain is over long before the grace period.
    assert_eq!(close_with(&mut ws, 1000).await, 1000);
    let status = server.wait_exit(STEP).await;
    assert_eq!(status.code(), Some(0), "{status}");
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
