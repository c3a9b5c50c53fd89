//! The HTTP surface and the upgrade rules (docs/protocol.md §1): refusals with their statuses,
//! tokens, capacity, and the bounded handshake.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

on_both_drivers!(
    bad_or_missing_query_is_refused_with_400,
    auth_token_is_required_for_upgrades,
    metrics_token_is_required_for_metrics,
    plain_routes_answer,
    full_server_turns_sessions_away_with_1013_until_a_slot_frees,
    silent_or_partial_handshake_is_cut_off,
    probes_answer_while_silent_peers_hold_every_handshake_slot,
    a_burst_larger_than_the_handshake_slots_waits_and_is_upgraded,
    oversized_request_head_gets_431,
    refusal_before_the_whole_head_is_read_is_not_lost_to_a_reset,
    allocator_purge_delay_is_ours_unless_the_operator_sets_it,
);

async fn bad_or_missing_query_is_refused_with_400(driver: &str) {
    let server = Server::start(driver, &[]).await;
    let bad = [
        "",
        "sample_rate=16000",
        "uid=",
        "uid=..",
        "uid=a/b",
        "uid=a%2Fb",
        "uid=a&uid=b",
        "uid=a&sample_rate=7999",
        "uid=a&sample_rate=48001",
        "uid=a&sample_rate=16k",
    ];
    for query in bad {
        match server.try_connect(query, None).await {
            Ok(_) => panic!("{query:?} was upgraded"),
            Err(response) => assert_eq!(response.status, 400, "{query:?}: {response:?}"),
        }
    }
    let long_uid = format!("uid={}", "a".repeat(129));
    let response = server.try_connect(&long_uid, None).await.err();
    assert_eq!(response.map(|r| r.status), Some(400));
    let metrics = server.metrics().await;
    assert_eq!(
        metrics.value("pusher_sessions_refused_total{reason=\"bad_request\"}"),
        bad.len() as u64 + 1
    );
    assert_eq!(metrics.value("pusher_sessions_opened_total"), 0);
    // The edges of the rules are accepted.
    for query in [
        "uid=a.b:c@d-e_f&sample_rate=48000",
        "sample_rate=8000&uid=x",
        &format!("uid={}", "a".repeat(128)),
    ] {
        let mut ws = server
            .try_connect(query, None)
            .await
            .unwrap_or_else(|r| panic!("{query:?} refused: {r:?}"));
        assert_eq!(close_with(&mut ws, 1000).await, 1000);
    }
}

async fn auth_token_is_required_for_upgrades(driver: &str) {
    let server = Server::start(driver, &["--auth-token", "s3cret"]).await;
    for bearer in [None, Some("wrong"), Some("s3cre"), Some("s3cret2")] {
        let refused = server.try_connect("uid=u", bearer).await.err();
        assert_eq!(refused.map(|r| r.status), Some(401), "{bearer:?}");
    }
    let mut ws = server
        .try_connect("uid=u", Some("s3cret"))
        .await
        .unwrap_or_else(|r| panic!("right token refused: {r:?}"));
    send(&mut ws, 104, br#"{"conversation_id": "c"}"#).await;
    assert_eq!(expect_result(&mut ws).await["conversation_id"], "c");
    let metrics = server.metrics().await;
    assert_eq!(
        metrics.value("pusher_sessions_refused_total{reason=\"unauthorized\"}"),
        4
    );
    assert_eq!(metrics.value("pusher_sessions_opened_total"), 1);
}

async fn metrics_token_is_required_for_metrics(driver: &str) {
    let server = Server::start(driver, &["--metrics-token", "m-token"]).await;
    let none = http_get(server.addr, "/metrics", &[]).await;
    assert_eq!(none.status, 401, "{none:?}");
    assert_eq!(none.header("WWW-Authenticate"), Some("Bearer"));
    let wrong = http_get(server.addr, "/metrics", &[("Authorization", "Bearer nope")]).await;
    assert_eq!(wrong.status, 403, "{wrong:?}");
    let right = http_get(
        server.addr,
        "/metrics",
        &[("Authorization", "Bearer m-token")],
    )
    .await;
    assert_eq!(right.status, 200, "{right:?}");
    assert!(
        right
            .header("Content-Type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{right:?}"
    );
    // At least the /health of the start-up wait, the two refused scrapes and this one.
    let metrics = Metrics(right.body);
    assert!(metrics.value("pusher_http_requests_total") >= 4);
    // A lowercase scheme is the same scheme (RFC 9110 §11.1).
    let lower = http_get(
        server.addr,
        "/metrics",
        &[("Authorization", "bearer m-token")],
    )
    .await;
    assert_eq!(lower.status, 200, "{lower:?}");
    // The token guards /debug/memory too (Omi's METRICS_SECRET guards both).
    let memory = http_get(server.addr, "/debug/memory", &[]).await;
    assert_eq!(memory.status, 401, "{memory:?}");
    let memory = http_get(
        server.addr,
        "/debug/memory",
        &[("Authorization", "Bearer m-token")],
    )
    .await;
    assert_eq!(memory.status, 200, "{memory:?}");
    // The probes are never guarded.
    assert_eq!(server.get("/health").await.status, 200);
    assert_eq!(server.get("/ready").await.status, 200);
    // The metrics token does not guard upgrades.
    let mut ws = server.connect("u").await;
    assert_eq!(close_with(&mut ws, 1000).await, 1000);
}

async fn plain_routes_answer(driver: &str) {
    let server = Server::start(driver, &[]).await;
    for path in ["/", "/nope", "/v1/trigger", "/health/x", "/test/echo"] {
        assert_eq!(server.get(path).await.status, 404, "{path}");
    }
    let health = server.get("/health").await;
    assert_eq!(
        (health.status, health.body.as_str()),
        (200, r#"{"status":"healthy"}"#)
    );
    for path in ["/ready", "/readyz"] {
        let ready = server.get(path).await;
        assert_eq!(
            (ready.status, ready.body.as_str()),
            (200, r#"{"status":"ready"}"#),
            "{path}"
        );
    }
    let metrics = server.metrics().await;
    assert_eq!(metrics.value("pusher_ready"), 1);
    assert_eq!(metrics.value("pusher_drain_in_progress"), 0);
    assert_eq!(metrics.value("pusher_active_ws_connections"), 0);
    // The drain is served to POST only; a GET changes nothing.
    let get = server.get("/__internal/drain").await;
    assert_eq!((get.status, get.header("Allow")), (405, Some("POST")));
    assert_eq!(server.get("/ready").await.status, 200);
    let label = if driver == "uring" {
        "io_uring"
    } else {
        "epoll"
    };
    let info = format!("pusher_driver_info{{driver=\"{label}\"}}");
    assert_eq!(server.metric(&info).await, 1, "runs the driver asked for");
    let memory = server.get("/debug/memory").await;
    assert_eq!(memory.status, 200);
    let memory: serde_json::Value = serde_json::from_str(&memory.body).expect("JSON");
    for field in [
        "rss_mb",
        "asyncio_tasks",
        "traced_current_mb",
        "traced_peak_mb",
    ] {
        assert!(memory[field].is_number(), "{field} in {memory}");
    }
    // Heap in use, counted by the binary's allocator: some, and never above its peak.
    let current = memory["traced_current_mb"].as_f64().unwrap();
    assert!(current > 0.0, "{memory}");
    assert!(
        current <= memory["traced_peak_mb"].as_f64().unwrap(),
        "{memory}"
    );
    assert!(memory["pusher_debug"].is_object(), "{memory}");
    assert_eq!(
        memory["pusher_debug"]["allocator_purge_delay_ms"],
        pusher::memory::PURGE_DELAY_MS,
        "{memory}"
    );
    // A listen path without the upgrade headers is not a session.
    let plain = server.get(&format!("{LISTEN}?uid=u")).await;
    assert_eq!(plain.status, 400, "{plain:?}");
}

async fn full_server_turns_sessions_away_with_1013_until_a_slot_frees(driver: &str) {
    let server = Server::start(driver, &["--workers", "1", "--sessions-per-core-max", "2"]).await;
    let mut first = server.connect("u-1").await;
    let mut second = server.connect("u-2").await;
    // The upgrade completes (the listen client's breaker counts no failure), then 1013.
    assert_eq!(server.connect_turned_away("u-3").await, 1013);
    let ready = server.get("/ready").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (503, r#"{"status":"full"}"#)
    );
    let metrics = server.metrics().await;
    assert_eq!(
        metrics.value("pusher_sessions_turned_away_total{reason=\"full\"}"),
        1
    );
    assert_eq!(
        metrics.value("pusher_sessions_refused_total{reason=\"capacity\"}"),
        0,
        "no HTTP refusal"
    );
    assert_eq!(metrics.value("pusher_ready"), 0);
    assert_eq!(metrics.value("pusher_active_ws_connections"), 2);
    // The sessions already open are not disturbed.
    send(&mut second, 104, br#"{"conversation_id": "still-here"}"#).await;
    assert_eq!(
        expect_result(&mut second).await["conversation_id"],
        "still-here"
    );
    assert_eq!(close_with(&mut first, 1000).await, 1000);
    server.wait_status("/ready", 200).await;
    let mut third = server.connect("u-3").await;
    send(&mut third, 100, &[]).await;
    assert_eq!(server.get("/ready").await.status, 503);
    assert_eq!(close_with(&mut third, 1000).await, 1000);
    assert_eq!(close_with(&mut second, 1000).await, 1000);
    assert_eq!(server.metric("pusher_sessions_opened_total").await, 3);
}

/// Expects pusher to close `stream` (EOF or reset) between `at_least` and a few seconds after
/// `since`, without sending anything.
async fn expect_cut_off(stream: &mut TcpStream, since: Instant, at_least: Duration) {
    let mut buf = [0u8; 64];
    let read = within(
        Duration::from_secs(3),
        "the server to close",
        stream.read(&mut buf),
    )
    .await;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "expected a close, got {read:?}"
    );
    let waited = since.elapsed();
    assert!(waited >= at_least, "closed after only {waited:?}");
}

async fn silent_or_partial_handshake_is_cut_off(driver: &str) {
    let timeout = Duration::from_millis(300);
    let server = Server::start(driver, &["--handshake-timeout-ms", "300"]).await;
    let since = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    let mut partial = TcpStream::connect(server.addr).await.expect("connect");
    partial
        .write_all(
            format!("GET {LISTEN}?uid=u HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n").as_bytes(),
        )
        .await
        .expect("write");
    let slack = Duration::from_millis(50);
    expect_cut_off(&mut silent, since, timeout - slack).await;
    expect_cut_off(&mut partial, since, timeout - slack).await;
    server
        .wait_metric(
            "pusher_sessions_refused_total{reason=\"handshake_timeout\"}",
            2,
        )
        .await;
    // A prompt client is unaffected by the short timeout.
    let mut ws = server.connect("u").await;
    assert_eq!(close_with(&mut ws, 1000).await, 1000);
}

async fn probes_answer_while_silent_peers_hold_every_handshake_slot(driver: &str) {
    // 4 slots on one core; 6 silent peers and 6 that stall mid-head, far more than the slots,
    // under the default 10 s handshake timeout.
    let server = Server::start(
        driver,
        &["--workers", "1", "--handshake-buffers-per-core", "4"],
    )
    .await;
    let mut held = Vec::new();
    for i in 0..12 {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        if i % 2 == 1 {
            stream
                .write_all(format!("GET {LISTEN}?uid=u HTTP/1.1\r\nHost: x\r\n").as_bytes())
                .await
                .expect("write");
        }
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Well inside the handshake timeout: the probes do not wait for the stalled peers to time out.
    let limit = Duration::from_secs(3);
    for path in ["/health", "/ready"] {
        let response = within(limit, path, http_get(server.addr, path, &[])).await;
        assert_eq!(response.status, 200, "{path}: {response:?}");
    }
    let mut ws = within(limit, "an upgrade", server.connect("canary")).await;
    send(&mut ws, 104, br#"{"conversation_id": "c"}"#).await;
    assert_eq!(expect_result(&mut ws).await["conversation_id"], "c");
    let evicted = server.metric("pusher_handshakes_evicted_total").await;
    assert!(evicted >= 3, "stalled peers were evicted: {evicted}");
    assert!(
        server.metrics().await.sum("pusher_handshakes_in_flight") <= 4,
        "never more than the slots"
    );
    drop(held);
}

async fn a_burst_larger_than_the_handshake_slots_waits_and_is_upgraded(driver: &str) {
    let server = Server::start(
        driver,
        &["--workers", "1", "--handshake-buffers-per-core", "2"],
    )
    .await;
    // 200 upgrades at once through 2 slots: the rest wait in the accept backlog, none is
    // refused and none is evicted (each sent its request at once).
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..200 {
        let url = server.url(&format!("uid=burst-{i}"));
        burst.spawn(async move {
            tokio_tungstenite::connect_async(url)
                .await
                .map(|(ws, _)| ws)
        });
    }
    let mut sessions = Vec::new();
    while let Some(joined) = within(STEP * 2, "the burst", burst.join_next()).await {
        sessions.push(
            joined
                .expect("join")
                .expect("every upgrade of the burst succeeds"),
        );
    }
    assert_eq!(sessions.len(), 200);
    let metrics = server.metrics().await;
    assert_eq!(metrics.value("pusher_handshakes_evicted_total"), 0);
    assert_eq!(metrics.value("pusher_active_ws_connections"), 200);
    assert_eq!(metrics.sum("pusher_sessions_refused_total"), 0);
}

async fn oversized_request_head_gets_431(driver: &str) {
    let server = Server::start(driver, &["--request-header-bytes-max", "1024"]).await;
    let head = |pad: usize| {
        format!(
            "GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(pad)
        )
    };
    let fits = head(900);
    assert!(fits.len() <= 1024);
    let response = raw_request(server.addr, fits.as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");
    let over = head(1024);
    let response = raw_request(server.addr, over.as_bytes()).await;
    assert_eq!(response.status, 431, "{response:?}");
    assert_eq!(
        server
            .metric("pusher_sessions_refused_total{reason=\"bad_request\"}")
            .await,
        1
    );
}

async fn refusal_before_the_whole_head_is_read_is_not_lost_to_a_reset(driver: &str) {
    let server = Server::start(driver, &["--request-header-bytes-max", "1024"]).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    // The client writes its (too long) head in two parts, as a slow client would; pusher
    // answers after the first part and must still let the client finish and read the 431.
    let head = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: {}",
        "a".repeat(2048)
    );
    stream
        .write_all(&head.as_bytes()[..1500])
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rest = format!("{}\r\n\r\n", &head[1500..]);
    stream
        .write_all(rest.as_bytes())
        .await
        .expect("the rest of the head can still be written");
    let response = within(STEP, "the 431", read_response(&mut stream))
        .await
        .expect("the 431 is followed by a clean close, not a reset");
    assert_eq!(response.status, 431, "{response:?}");
}

async fn allocator_purge_delay_is_ours_unless_the_operator_sets_it(driver: &str) {
    let server = Server::start_with_env(driver, &[], &[("MIMALLOC_PURGE_DELAY", "250")]).await;
    let memory = server.get("/debug/memory").await;
    let memory: serde_json::Value = serde_json::from_str(&memory.body).expect("JSON");
    assert_eq!(
        memory["pusher_debug"]["allocator_purge_delay_ms"], 250,
        "{memory}"
    );
}
