"""The real client: Python `websockets`, connecting exactly as the transcription service does."""

import asyncio
import json
import struct

import pytest
import websockets

from conftest import metric_value, wait_until


def frame(header: int, payload: bytes = b"") -> bytes:
    return struct.pack("<I", header) + payload


async def session(url: str) -> tuple[dict, int]:
    async with websockets.connect(url, ping_interval=30, ping_timeout=60, close_timeout=3) as ws:
        await ws.send(frame(100))
        await ws.send(frame(103, b"conversation-1"))
        await ws.send(frame(101, struct.pack("<d", 1700000000.25) + b"\x01\x00" * 8000))
        segments = {"segments": [{"text": "hello", "speaker": "SPEAKER_00"}], "memory_id": None}
        await ws.send(frame(102, json.dumps(segments).encode()))
        await ws.send(frame(105, json.dumps({"person_id": "p1", "conversation_id": "c", "segment_ids": ["s"]}).encode()))
        await ws.send(frame(104, json.dumps({"conversation_id": "conversation-1", "language": "en", "byok_keys": {}}).encode()))
        reply = await asyncio.wait_for(ws.recv(), timeout=5)
        latency = await asyncio.wait_for(await ws.ping(), timeout=5)
        assert latency >= 0
    return reply, ws.close_code


@pytest.mark.parametrize("sample_rate", [8000, 16000])
def test_transcription_service_session(driver, start_server, sample_rate):
    server = start_server(driver)
    url = f"{server.url}/v1/trigger/listen?uid=user-1&sample_rate={sample_rate}"
    reply, close_code = asyncio.run(session(url))
    assert isinstance(reply, bytes)
    assert struct.unpack("<I", reply[:4])[0] == 201
    answer = json.loads(reply[4:])
    assert answer["conversation_id"] == "conversation-1"
    assert answer["error"] == "processor_not_configured"
    assert close_code == 1000
    metrics = server.metrics()
    assert metric_value(metrics, 'pusher_frames_received_total{kind="audio"}') == 1
    assert metric_value(metrics, 'pusher_frames_received_total{kind="transcript"}') == 1
    # The session's close was acknowledged only once its audio was durable in the spill log.
    assert metric_value(metrics, "pusher_spill_appended_records_total") == 3
    # The server counts the close once its side of the connection is gone, which may be just
    # after the client saw the Close reply.
    closed = 'pusher_sessions_closed_total{code="1000"}'
    wait_until(lambda: metric_value(server.metrics(), closed) == 1, 5, "the close counted")


def test_bad_query_is_refused_before_upgrade(driver, start_server):
    server = start_server(driver)

    async def connect():
        async with websockets.connect(f"{server.url}/v1/trigger/listen?uid=../etc"):
            pass

    with pytest.raises(websockets.InvalidStatus) as refused:
        asyncio.run(connect())
    assert refused.value.response.status_code == 400
