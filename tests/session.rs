//! A WebSocket session against the real binary (docs/protocol.md §2–§4): every inbound frame kind,
//! the 201 reply, ping/pong, fragmentation, and each close code pusher sends.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

on_both_drivers!(
    every_frame_kind_is_accepted_and_counted,
    unknown_header_is_ignored_and_the_session_goes_on,
    ping_is_answered_with_the_same_payload,
    client_close_is_echoed_and_counted,
    text_message_closes_1003,
    invalid_json_in_transcript_closes_1007,
    bad_conversation_id_closes_1007,
    short_audio_closes_1007,
    message_over_the_limit_closes_1009,
    unmasked_client_frame_closes_1002,
    fragmented_message_is_reassembled,
    idle_session_closes_1001,
);

async fn every_frame_kind_is_accepted_and_counted(driver: &str) {
    let server = Server::start(driver, &[]).await;
    let mut ws = server.connect("user-1").await;
    let pcm = [7u8; 320];
    send(&mut ws, 100, &[]).await;
    send(&mut ws, 103, b"conv-1").await;
    send(&mut ws, 101, &audio_payload(1_700_000_000.0, &pcm)).await;
    let transcript =
        json!({"segments": [{"text": "hi", "speaker": "SPEAKER_0"}], "memory_id": "conv-2"});
    send(&mut ws, 102, transcript.to_string().as_bytes()).await;
    let sample = json!({"person_id": "p-1", "conversation_id": "conv-2", "segment_ids": ["s-1"]});
    send(&mut ws, 105, sample.to_string().as_bytes()).await;
    let process = json!({"conversation_id": "conv-2", "language": "de", "byok_keys": {"x": "y"}});
    send(&mut ws, 104, process.to_string().as_bytes()).await;
    // Frames are handled in order, so once the 201 is here every frame before it is counted.
    assert_eq!(
        expect_result(&mut ws).await,
        json!({"conversation_id": "conv-2", "error": "processor_not_configured"})
    );
    let metrics = server.metrics().await;
    for kind in [
        "heartbeat",
        "audio",
        "transcript",
        "conversation",
        "process_conversation",
        "speaker_sample",
    ] {
        let key = format!("pusher_frames_received_total{{kind=\"{kind}\"}}");
        assert_eq!(metrics.value(&key), 1, "{key}");
    }
    assert_eq!(
        metrics.value("pusher_frames_received_total{kind=\"unknown\"}"),
        0
    );
    assert_eq!(
        metrics.value("pusher_frame_received_bytes_total{kind=\"audio\"}"),
        4 + 8 + 320
    );
    assert_eq!(metrics.value("pusher_sessions_opened_total"), 1);
    // The audio went to conv-1's batch; the 102 switched to conv-2, which closed that batch:
    // it is logged (open, audio, close) and uploaded, encrypted (4 + 12 + 320 + 16 bytes).
    server
        .wait_metric("pusher_spill_appended_records_total", 3)
        .await;
    server
        .wait_metric("pusher_spill_batches_uploaded_total", 1)
        .await;
    assert_eq!(
        server.metric("pusher_upload_bytes_total").await,
        4 + 12 + 320 + 16
    );
    // No speaker-sample URL: the 105 is counted and dropped. No processor: no call is made.
    assert_eq!(metrics.value("pusher_speaker_samples_dropped_total"), 1);
    assert_eq!(metrics.value("pusher_process_calls_created_total"), 0);
    assert_eq!(metrics.value("pusher_results_sent_total"), 1);
    assert_eq!(close_with(&mut ws, 1000).await, 1000);
}

async fn unknown_header_is_ignored_and_the_session_goes_on(driver: &str) {
    let server = Server::start(driver, &[]).await;
    let mut ws = server.connect("user-1").await;
    send(&mut ws, 999, b"whatever").await;
    send(&mut ws, 999, &[]).await;
    send(&mut ws, 104, br#"{"conversation_id": "c-9"}"#).await;
    assert_eq!(
        expect_result(&mut ws).await,
        json!({"conversation_id": "c-9", "error": "processor_not_configured"})
    );
    let metrics = server.metrics().await;
    assert_eq!(
        metrics.value("pusher_frames_received_total{kind=\"unknown\"}"),
        2
    );
    assert_eq!(
        metrics.value("pusher_frame_received_bytes_total{kind=\"unknown\"}"),
        4 + 8 + 4
    );
    // Answered, so no longer in flight: the same conversation is answered again.
    send(&mut ws, 104, br#"{"conversation_id": "c-9"}"#).await;
    assert_eq!(expect_result(&mut ws).await["conversation_id"], "c-9");
    assert_eq!(close_with(&mut ws, 1000).await, 1000);
}

async fn ping_is_answered_with_the_same_payload(driver: &str) {
    let server = Server::start(driver, &[]).await;
    let mut ws = server.connect("user-1").await;
    for payload in [&b""[..], b"keepalive-1", &[0xA5; 125]] {
        within(
            STEP,
            "a ping",
            ws.send(Message::Ping(payload.to_vec().into())),
        )
        .await
        .expect("send ping");
        assert_eq!(
            next_message(&mut ws).await,
            Message::Pong(payload.to_vec().into())
        );
    }
    assert_eq!(close_with(&mut ws, 1000).await, 1000);
}

async fn client_close_is_echoed_and_counted(driver: &str) {
    let server = Server::start(driver, &[]).await;
    let mut ws = server.connect("user-1").await;
    send(&mut ws, 100, &[]).await;
    assert_eq!(close_with(&mut ws, 1000).await, 1000);
    server
        .wait_metric("pusher_sessions_closed_total{code=\"1000\"}", 1)
        .await;
    assert_eq!(server.metrics().await.sum("pusher_sessions_open{"), 0);
}

/// Sends `message` on a fresh session, expects pusher to close with `code`, and the close to
/// be counted under that code.
async fn expect_closed_by(server: &Server, message: Message, code: u16) {
    let mut ws = server.connect("user-1").await;
    within(STEP, "a send", ws.send(message))
        .await
        .expect("send");
    assert_eq!(expect_close(&mut ws).await, code);
    server
        .wait_metric(
            &format!("pusher_sessions_closed_total{{code=\"{code}\"}}"),
            1,
        )
        .await;
}

async fn text_message_closes_1003(driver: &str) {
    let server = Server::start(driver, &[]).await;
    expect_closed_by(&server, Message::text("{\"hello\": 1}"), 1003).await;
}

async fn invalid_json_in_transcript_closes_1007(driver: &str) {
    let server = Server::start(driver, &[]).await;
    let message = Message::binary(frame(102, br#"{"segments": [{"text": "hi"}"#));
    expect_closed_by(&server, message, 1007).await;
}

async fn bad_conversation_id_closes_1007(driver: &str) {
    let server = Server::start(driver, &[]).await;
    expect_closed_by(&server, Message::binary(frame(103, b"../etc")), 1007).await;
}

async fn short_audio_closes_1007(driver: &str) {
    let server = Server::start(driver, &[]).await;
    // 11 bytes: the header and 7 of the 8 timestamp bytes.
    expect_closed_by(&server, Message::binary(frame(101, &[0; 7])), 1007).await;
}

async fn message_over_the_limit_closes_1009(driver: &str) {
    let server = Server::start(driver, &["--message-bytes-max", "1024"]).await;
    let mut ws = server.connect("user-1").await;
    // Exactly at the limit is accepted.
    send(&mut ws, 101, &audio_payload(1.0, &[0; 1024 - 12])).await;
    send(&mut ws, 104, br#"{"conversation_id": "c-1"}"#).await;
    assert_eq!(expect_result(&mut ws).await["conversation_id"], "c-1");
    assert_eq!(
        server
            .metric("pusher_frame_received_bytes_total{kind=\"audio\"}")
            .await,
        1024
    );
    // One byte over closes.
    send(&mut ws, 101, &audio_payload(1.0, &[0; 1025 - 12])).await;
    assert_eq!(expect_close(&mut ws).await, 1009);
    drop(ws);
    server
        .wait_metric("pusher_sessions_closed_total{code=\"1009\"}", 1)
        .await;
    assert_eq!(
        server
            .metric("pusher_frames_received_total{kind=\"audio\"}")
            .await,
        1
    );
}

async fn unmasked_client_frame_closes_1002(driver: &str) {
    let server = Server::start(driver, &[]).await;
    let mut stream = raw_upgrade(server.addr, "uid=user-1").await;
    // FIN + binary, no mask bit, 4 bytes: a heartbeat a client must not send unmasked.
    stream
        .write_all(&[0x82, 0x04, 100, 0, 0, 0])
        .await
        .expect("write");
    let (lead, payload) = read_raw_frame(&mut stream).await;
    assert_eq!(lead, 0x88, "a final Close frame");
    assert!(payload.len() >= 2, "the Close carries a code");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1002);
    // Nothing follows the Close: pusher half-closes and waits for the client to close.
    let mut rest = Vec::new();
    within(STEP, "the half-close", stream.read_to_end(&mut rest))
        .await
        .expect("read to the end");
    assert!(rest.is_empty(), "bytes after the Close: {rest:?}");
    drop(stream);
    server
        .wait_metric("pusher_sessions_closed_total{code=\"1002\"}", 1)
        .await;
    assert_eq!(
        server
            .metric("pusher_frames_received_total{kind=\"heartbeat\"}")
            .await,
        0
    );
}

async fn fragmented_message_is_reassembled(driver: &str) {
    let server = Server::start(driver, &[]).await;
    let mut ws = server.connect("user-1").await;
    let message = frame(104, br#"{"conversation_id": "frag-1", "language": "en"}"#);
    // The header itself is split, and a ping arrives between two fragments (RFC 6455 §5.4).
    let fragments = [
        Frame::message(message[..2].to_vec(), OpCode::Data(Data::Binary), false),
        Frame::message(message[2..10].to_vec(), OpCode::Data(Data::Continue), false),
        Frame::ping(b"mid".to_vec()),
        Frame::message(message[10..].to_vec(), OpCode::Data(Data::Continue), true),
    ];
    for fragment in fragments {
        within(STEP, "a fragment", ws.send(Message::Frame(fragment)))
            .await
            .expect("send a fragment");
    }
    assert_eq!(
        next_message(&mut ws).await,
        Message::Pong(b"mid".to_vec().into())
    );
    assert_eq!(
        expect_result(&mut ws).await,
        json!({"conversation_id": "frag-1", "error": "processor_not_configured"})
    );
    assert_eq!(
        server
            .metric("pusher_frame_received_bytes_total{kind=\"process_conversation\"}")
            .await,
        message.len() as u64
    );
    assert_eq!(close_with(&mut ws, 1000).await, 1000);
}

async fn idle_session_closes_1001(driver: &str) {
    let idle = Duration::from_millis(1000);
    let server = Server::start(driver, &["--idle-timeout-ms", "1000"]).await;
    let mut ws = server.connect("user-1").await;
    // Heartbeats and pings keep the session alive well past the idle timeout.
    let mut last_sent = Instant::now();
    for round in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        last_sent = Instant::now();
        if round % 2 == 0 {
            send(&mut ws, 100, &[]).await;
        } else {
            within(STEP, "a ping", ws.send(Message::Ping(b"p".to_vec().into())))
                .await
                .expect("send ping");
            assert_eq!(
                next_message(&mut ws).await,
                Message::Pong(b"p".to_vec().into())
            );
        }
    }
    assert_eq!(expect_close(&mut ws).await, 1001);
    let waited = last_sent.elapsed();
    // The server's idle clock starts when the last ping arrives, after `last_sent`; it counts
    // whole milliseconds, so it may start up to 1 ms before that.
    assert!(
        waited + Duration::from_millis(1) >= idle && waited < idle * 5,
        "closed after {waited:?} of silence"
    );
    server
        .wait_metric("pusher_sessions_closed_total{code=\"1001\"}", 1)
        .await;
}
