"""Durable private-cloud audio, end to end: the real binary, the real client (`websockets`), and
the objects read back from the store and checked against the bytes sent.

Expectations come from an independent model of docs/protocol.md §3 (batch rules) and
docs/downstream.md §2 (object keys); `.enc` objects are decrypted with the Python `cryptography`
package, not with pusher's code. Each test runs on both io drivers.
"""

import asyncio
import json
import os
import re
import socket
import struct
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import websockets

from conftest import TEST_ENCRYPTION_SECRET, metric_value, s3_env, wait_until

try:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
except ImportError:  # fail, never skip: the interop check is the point of these tests
    HKDF = None

# A fractional start, so the 3-decimal rounding of object keys is exercised.
T0 = 1_700_000_000.1234
BATCH_SECONDS = 60


@pytest.fixture
def start_server(start_server):
    """conftest's `start_server` with a 20 s close timeout: a session's Close waits until its
    audio is durable, and on a shared CI disk an fdatasync can take longer than the default 3 s
    (then the connection would be dropped, 1006, and a test expecting 1000 would fail)."""

    def start(driver: str, *extra_args: str, env: dict | None = None):
        return start_server(driver, "--close-timeout-ms", "20000", *extra_args, env=env)

    return start

# --- the client ----------------------------------------------------------------------------------


def frame(header: int, payload: bytes = b"") -> bytes:
    return struct.pack("<I", header) + payload


def transcript(memory_id) -> bytes:
    segments = [{"text": "hi", "speaker": "SPEAKER_00", "start": 0.0, "end": 1.0}]
    body = {"segments": segments, "memory_id": memory_id}
    return frame(102, json.dumps(body).encode())


@dataclass
class Stream:
    """One session's script and what was actually sent.

    `ops` is an iterable (possibly a generator, read lazily) of:
      ("103", conversation_id) | ("102", memory_id or None or "") | ("audio", n_frames) | ("heartbeat",)
    `events` records, in order, what `ws.send` returned for: ("conversation", id or None) and
    ("audio", timestamp, pcm). Audio timestamps advance by the frame duration across the session.
    """

    uid: str
    sample_rate: int
    frame_bytes: int
    ops: object
    level: str = "enhanced"  # as configured for the uid (settings file)
    stored: bool = True  # private_cloud_sync_enabled
    frames_per_second: float | None = None  # pacing; None = as fast as the socket takes them
    sndbuf: int | None = None  # SO_SNDBUF of the client socket (a small one shows backpressure sooner)
    events: list = field(default_factory=list)
    frames_sent: int = 0
    bytes_sent: int = 0
    close_code: int | None = None
    error: BaseException | None = None

    @property
    def frame_seconds(self) -> float:
        return self.frame_bytes / (2 * self.sample_rate)


async def run_stream(server_url: str, stream: Stream, *, close: bool = True) -> Stream:
    """Sends `stream.ops`; with `close`, ends with a normal close and waits for pusher's Close (its
    acknowledgement that every audio byte is durable). A connection that dies (kill -9) ends the
    run quietly with `stream.error` set."""
    url = f"{server_url}/v1/trigger/listen?uid={stream.uid}&sample_rate={stream.sample_rate}"
    sock = None
    if stream.sndbuf is not None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, stream.sndbuf)
        sock.connect(_hostport(server_url))
        sock.setblocking(False)
    try:
        ws = await websockets.connect(
            url,
            sock=sock,
            proxy=None,
            compression=None,
            ping_interval=30,
            ping_timeout=60,
            close_timeout=20,
            open_timeout=10,
        )
    except OSError as error:
        stream.error = error
        return stream
    try:
        await _send_ops(ws, stream)
        if close:
            await ws.close()  # returns once pusher's Close came (or after close_timeout)
        else:
            # Keep the session (and its open batch) alive until the caller kills the server.
            await ws.wait_closed()
    except (websockets.ConnectionClosed, OSError) as error:
        stream.error = error
    except BaseException:
        # Cancelled (a failing test): drop the connection at once rather than wait for a
        # close handshake that a stalled server would not answer.
        ws.transport.abort()
        raise
    stream.close_code = ws.close_code
    return stream


async def _send_ops(ws, stream: Stream) -> None:
    index = 0
    started = time.monotonic()
    for op in stream.ops:
        kind = op[0]
        if kind == "103":
            await ws.send(frame(103, op[1].encode()))
            stream.events.append(("conversation", op[1]))
        elif kind == "102":
            await ws.send(transcript(op[1]))
            stream.events.append(("conversation", op[1]))
        elif kind == "heartbeat":
            await ws.send(frame(100))
        elif kind == "audio":
            for _ in range(op[1]):
                if stream.frames_per_second:
                    delay = started + index / stream.frames_per_second - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                timestamp = T0 + index * stream.frame_seconds
                pcm = os.urandom(stream.frame_bytes)
                await ws.send(frame(101, struct.pack("<d", timestamp) + pcm))
                stream.events.append(("audio", timestamp, pcm))
                stream.frames_sent += 1
                stream.bytes_sent += len(pcm)
                index += 1
                # A send that fits the socket buffer does not yield; let the other sessions and
                # the test's own waits run.
                await asyncio.sleep(0)
        else:
            raise ValueError(op)


def _hostport(server_url: str) -> tuple[str, int]:
    host, port = server_url.removeprefix("ws://").split(":")
    return host, int(port)


async def run_streams(server_url: str, streams: list[Stream], timeout: float) -> None:
    try:
        await asyncio.wait_for(asyncio.gather(*(run_stream(server_url, s) for s in streams)), timeout)
    except TimeoutError:
        progress = {s.uid: f"{s.frames_sent} frames sent, close code {s.close_code}" for s in streams}
        pytest.fail(f"sessions not done (sent, closed with pusher's Close) within {timeout} s: {progress}")
    for s in streams:
        assert s.error is None, f"{s.uid}: {s.error!r}"
        # pusher answers the client's Close only once the session's audio is durable.
        assert s.close_code == 1000, f"{s.uid}: close code {s.close_code}"


# --- the model: batches and object keys, from the specs ------------------------------------------


@dataclass
class Batch:
    uid: str
    conversation: str
    timestamp: float
    level: str
    frames: int = 0
    data: bytearray = field(default_factory=bytearray)

    @property
    def key(self) -> str:
        extension = "enc" if self.level == "enhanced" else "bin"
        return f"chunks/{self.uid}/{self.conversation}/{self.timestamp:.3f}.{extension}"


def model_batches(stream: Stream, events=None) -> tuple[list[Batch], bool]:
    """The batches docs/protocol.md §3 makes of `events` (default: all of the stream's), each
    closed at 60 s of audio or a conversation change, the last one closed by the session's end (or,
    after a crash, by recovery). Returns (batches, whether the last one was still open)."""
    if not stream.stored:
        return [], False
    limit = stream.sample_rate * 2 * BATCH_SECONDS
    batches: list[Batch] = []
    current = None
    open_batch = None
    for event in stream.events if events is None else events:
        if event[0] == "conversation":
            # A 103, or a 102 whose non-empty memory_id differs: closes the open batch first.
            if event[1] and event[1] != current:
                open_batch = None
                current = event[1]
        else:
            _, timestamp, pcm = event
            if current is None:
                continue  # no conversation yet: not stored
            if open_batch is None:
                open_batch = Batch(stream.uid, current, timestamp, stream.level)
                batches.append(open_batch)
            open_batch.data += pcm
            open_batch.frames += 1
            if len(open_batch.data) >= limit:
                open_batch = None
    return batches, open_batch is not None


def expected_objects(streams: list[Stream]) -> dict[str, bytes]:
    objects = {}
    for stream in streams:
        for batch in model_batches(stream)[0]:
            assert batch.key not in objects, f"the test made two batches with key {batch.key}"
            objects[batch.key] = bytes(batch.data)
    return objects


def expected_records(streams: list[Stream]) -> int:
    """Spill records the streams make: per batch one open, one per frame and one close."""
    return sum(b.frames + 2 for s in streams for b in model_batches(s)[0])


def sent_per_conversation(stream: Stream) -> dict[tuple[str, str], bytes]:
    """What the client sent per (uid, conversation), straight from the events (not the model)."""
    out: dict[tuple[str, str], bytearray] = {}
    current = None
    for event in stream.events:
        if event[0] == "conversation":
            current = event[1] or current
        elif current is not None and stream.stored:
            out.setdefault((stream.uid, current), bytearray()).extend(event[2])
    return {k: bytes(v) for k, v in out.items()}


# --- reading objects back ------------------------------------------------------------------------


def user_key(uid: str, secret: str = TEST_ENCRYPTION_SECRET) -> bytes:
    """docs/downstream.md §2: HKDF-SHA256(ikm = secret, salt = uid,
    info = "user-data-encryption", 32)."""
    if HKDF is None:
        pytest.fail("the Python `cryptography` package is missing (tests/python/requirements.txt)")
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=uid.encode(), info=b"user-data-encryption"
    ).derive(secret.encode())


def decrypt_blob(uid: str, blob: bytes, secret: str = TEST_ENCRYPTION_SECRET) -> bytes:
    """body = u32 BE L || nonce(12) || ciphertext || tag(16), L = 12 + len(ciphertext) + 16."""
    assert len(blob) >= 4 + 12 + 16, f"blob too short: {len(blob)}"
    (length,) = struct.unpack(">I", blob[:4])
    assert length == len(blob) - 4, f"L = {length}, but {len(blob) - 4} bytes follow it"
    nonce, sealed = blob[4:16], blob[16:]
    return AESGCM(user_key(uid, secret)).decrypt(nonce, sealed, None)


def decode_objects(objects: dict[str, bytes]) -> dict[str, bytes]:
    """Key -> audio; `.enc` bodies decrypted (an undecryptable one fails the test)."""
    audio = {}
    for key, body in objects.items():
        parts = key.split("/")
        assert len(parts) == 4 and parts[0] == "chunks", f"unexpected key {key}"
        uid = parts[1]
        if key.endswith(".enc"):
            audio[key] = decrypt_blob(uid, body)
        else:
            assert key.endswith(".bin"), f"unexpected extension: {key}"
            audio[key] = body
    return audio


def file_store_objects(cloud: Path) -> dict[str, bytes]:
    """Every object of the file store rooted at `cloud` (object_store's in-progress staging files,
    `name#n`, are not objects)."""
    found = {}
    if not cloud.exists():
        return found
    for path in cloud.rglob("*"):
        if path.is_file() and "#" not in path.name:
            found[path.relative_to(cloud).as_posix()] = path.read_bytes()
    return found


def concatenated(audio: dict[str, bytes]) -> dict[tuple[str, str], bytes]:
    """Per (uid, conversation), the objects' audio concatenated in timestamp order."""
    grouped: dict[tuple[str, str], list[tuple[float, bytes]]] = {}
    for key, data in audio.items():
        _, uid, conversation, name = key.split("/")
        grouped.setdefault((uid, conversation), []).append((float(name.rsplit(".", 1)[0]), data))
    return {k: b"".join(d for _, d in sorted(v)) for k, v in grouped.items()}


def check_objects(streams: list[Stream], objects: dict[str, bytes]) -> dict[str, bytes]:
    """The store holds exactly the model's batches, each with exactly its bytes; per (uid,
    conversation) the concatenation is exactly what was sent. Returns the decoded audio."""
    expected = expected_objects(streams)
    assert sorted(objects) == sorted(expected), (
        f"missing: {sorted(set(expected) - set(objects))}; unexpected: {sorted(set(objects) - set(expected))}"
    )
    for stream in streams:
        mine = [k for k in objects if k.startswith(f"chunks/{stream.uid}/")]
        wrong = [k for k in mine if not k.endswith(".enc" if stream.level == "enhanced" else ".bin")]
        assert not wrong, f"{stream.uid} ({stream.level}) has objects of the wrong kind: {wrong}"
    audio = decode_objects(objects)
    for key in expected:
        assert audio[key] == expected[key], (
            f"{key}: {len(audio[key])} bytes stored, {len(expected[key])} expected"
            f"{' (same length, different bytes)' if len(audio[key]) == len(expected[key]) else ''}"
        )
    sent = {}
    for stream in streams:
        sent.update(sent_per_conversation(stream))
    assert concatenated(audio) == sent
    return audio


def metrics_of(server) -> dict:
    text = server.metrics()
    names = [
        "pusher_spill_appended_records_total",
        "pusher_spill_batches_closed_total",
        "pusher_spill_batches_uploaded_total",
        "pusher_spill_pending_batches",
        "pusher_spill_pending_bytes",
        "pusher_spill_full",
        "pusher_spill_live_bytes",
        "pusher_spill_segments_deleted_total",
        "pusher_spill_backpressure_seconds_total",
        "pusher_spill_corrupt_tails_total",
        "pusher_upload_succeeded_total",
        "pusher_upload_retries_total",
        'pusher_upload_attempts_failed_total{reason="store"}',
        'pusher_upload_attempts_failed_total{reason="timeout"}',
        "pusher_upload_store_healthy",
    ]
    return {name: metric_value(text, name) for name in names}


def wait_uploaded(server, batches: int, timeout: float) -> dict:
    """Until the store confirmed `batches` batches and none is pending; returns the metrics."""

    def done():
        m = metrics_of(server)
        # The uploader counts a success after the spill log marked the batch uploaded.
        uploaded = m["pusher_spill_batches_uploaded_total"] >= batches
        succeeded = m["pusher_upload_succeeded_total"] >= batches
        return m if uploaded and succeeded and m["pusher_spill_pending_batches"] == 0 else None

    try:
        return wait_until(done, timeout, f"{batches} batches uploaded and none pending", interval=0.1)
    except BaseException:
        print("metrics at the deadline:", metrics_of(server))
        raise


def write_settings(path: Path, users: dict[str, dict]) -> Path:
    """The `file` settings source (docs/downstream.md §5): `[default]` and `[users."<uid>"]`
    tables. Values are booleans or strings (a JSON string is a valid TOML basic string)."""
    lines = ["[default]", "private_cloud_sync_enabled = true", 'data_protection_level = "enhanced"', ""]
    for uid, fields in users.items():
        lines.append(f"[users.{json.dumps(uid)}]")
        for name, value in fields.items():
            lines.append(f"{name} = {json.dumps(value)}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def switching_ops():
    """Conversation switches by 103 and by 102 memory_id, and the frames that must not switch:
    audio before any conversation, a 102 with null / empty / unchanged memory_id, a repeated 103,
    and a return to an earlier conversation (a new batch, a new key)."""
    return [
        ("heartbeat",),
        ("audio", 3),
        ("103", "conv-a"),
        ("audio", 10),
        ("102", "conv-b"),
        ("audio", 8),
        ("102", None),
        ("audio", 4),
        ("102", ""),
        ("audio", 4),
        ("102", "conv-b"),
        ("audio", 4),
        ("103", "conv-c"),
        ("audio", 6),
        ("103", "conv-c"),
        ("audio", 2),
        ("heartbeat",),
        ("103", "conv-a"),
        ("audio", 5),
    ]


def test_model_matches_a_hand_worked_example():
    """The model agrees with the rules worked by hand on `switching_ops` (frame indexes)."""
    stream = Stream("u", 16000, 3200, None)
    index = 0
    for op in switching_ops():
        if op[0] in ("103", "102"):
            stream.events.append(("conversation", op[1]))
        elif op[0] == "audio":
            for _ in range(op[1]):
                stream.events.append(("audio", T0 + index * 0.1, bytes([index])))
                index += 1
    batches, still_open = model_batches(stream)
    assert [(b.conversation, round((b.timestamp - T0) / 0.1), b.frames) for b in batches] == [
        ("conv-a", 3, 10),
        ("conv-b", 13, 20),
        ("conv-c", 33, 8),
        ("conv-a", 41, 5),
    ]
    assert still_open
    assert batches[0].key == f"chunks/u/conv-a/{T0 + 0.3:.3f}.enc" == "chunks/u/conv-a/1700000000.423.enc"


# --- 1. file store -------------------------------------------------------------------------------


def test_file_store_end_to_end(driver, start_server, tmp_path):
    settings = write_settings(
        tmp_path / "settings.toml",
        {
            "std-user": {"data_protection_level": "standard"},
            "off-user": {"private_cloud_sync_enabled": False},
        },
    )
    server = start_server(driver, "--settings", str(settings))
    streams = [
        Stream("std-user", 16000, 3200, switching_ops(), level="standard"),
        Stream("enh-user-1", 16000, 3200, switching_ops()),
        Stream("enh-user-2", 16000, 6400, switching_ops()),
        # Size close: 75 s of audio at 8 kHz in 1 s frames, sent fast: a batch closes at exactly
        # 960,000 bytes (60 frames) and the next starts at the 61st frame's timestamp.
        Stream("size-user", 8000, 16000, [("103", "long"), ("audio", 75), ("102", "after"), ("audio", 3)]),
        # Private cloud off: nothing stored.
        Stream("off-user", 16000, 3200, [("103", "x"), ("audio", 5)], stored=False),
    ]
    asyncio.run(run_streams(server.url, streams, timeout=60))

    size_batches = model_batches(streams[3])[0]
    assert [(b.conversation, b.timestamp - T0, len(b.data)) for b in size_batches] == [
        ("long", 0.0, 960_000),
        ("long", 60.0, 240_000),
        ("after", 75.0, 48_000),
    ]
    expected = expected_objects(streams)
    m = wait_uploaded(server, len(expected), timeout=30)
    objects = file_store_objects(server.data_dir / "cloud")
    check_objects(streams, objects)
    assert not any(k.startswith("chunks/off-user/") for k in objects)
    assert m["pusher_spill_batches_closed_total"] == len(expected)
    assert m["pusher_upload_succeeded_total"] == len(expected)
    assert m["pusher_spill_appended_records_total"] == expected_records(streams)
    assert m["pusher_spill_pending_bytes"] == 0


def test_full_handoff_ring_slows_senders_then_resumes(driver, start_server):
    """A hand-off ring far smaller than the traffic: sessions stall (not read) and resume as the
    writer drains it. Regression: a session that stalled right after its last complete message
    (receive buffer empty, handed back to the pool) was never looked at again and hung until the
    90 s idle timeout (src/server/connection.rs, `Connection::on_signal`)."""
    server = start_server(driver, "--message-bytes-max", "65536", "--spill-handoff-bytes-per-core", "262144")
    streams = [Stream(f"ring-{i}", 8000, 16000, [("103", f"r{i}"), ("audio", 300)]) for i in range(4)]
    started = time.monotonic()
    asyncio.run(run_streams(server.url, streams, timeout=30))
    elapsed = time.monotonic() - started
    expected = expected_objects(streams)
    m = wait_uploaded(server, len(expected), timeout=30)
    assert m["pusher_spill_backpressure_seconds_total"] > 0, "the ring never filled: the test shows nothing"
    check_objects(streams, file_store_objects(server.data_dir / "cloud"))
    assert elapsed < 20, f"19 MB through a 256 KiB ring took {elapsed:.1f} s"


# --- 2. S3 (moto) --------------------------------------------------------------------------------


def test_s3_store_end_to_end(driver, start_server, tmp_path, moto):
    bucket = f"pusher-e2e-{driver}"
    moto.create_bucket(bucket)
    settings = write_settings(tmp_path / "settings.toml", {"std-user": {"data_protection_level": "standard"}})
    server = start_server(
        driver, "--settings", str(settings), "--store", f"s3://{bucket}/audio/v1", env=s3_env(moto.endpoint)
    )
    streams = [
        Stream("std-user", 16000, 3200, switching_ops(), level="standard"),
        Stream("enh-user", 16000, 3200, switching_ops()),
        Stream("size-user", 8000, 16000, [("103", "long"), ("audio", 62)]),
    ]
    asyncio.run(run_streams(server.url, streams, timeout=60))
    expected = expected_objects(streams)
    wait_uploaded(server, len(expected), timeout=30)
    stored = moto.objects(bucket, "")
    assert all(k.startswith("audio/v1/chunks/") for k in stored), sorted(stored)
    objects = {k.removeprefix("audio/v1/"): v for k, v in stored.items()}
    check_objects(streams, objects)
    head = moto.client().head_object(Bucket=bucket, Key="audio/v1/" + next(iter(expected)))
    assert head["ContentType"] == "application/octet-stream"


# --- 3. store outage -----------------------------------------------------------------------------


class RssSampler:
    """Samples the server's RSS every 50 ms in a thread."""

    def __init__(self, server):
        self.server = server
        self.samples: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                self.samples.append(self.server.rss_bytes())
            except OSError:
                return
            self.stop.wait(0.05)

    def finish(self) -> list[int]:
        self.stop.set()
        self.thread.join(5)
        return self.samples


def paced_switching(seconds: float, frames_per_conversation: int, tag: str):
    """Ops for `seconds` of streaming: a new conversation every `frames_per_conversation` frames,
    alternately by 103 and by 102 memory_id."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        conversation = f"{tag}-{n}"
        yield ("103", conversation) if n % 2 == 0 else ("102", conversation)
        yield ("audio", frames_per_conversation)
        n += 1


MIB = 1 << 20


def test_store_outage_then_recovery(driver, start_server, moto, fault_proxy):
    bucket = f"pusher-outage-{driver}"
    moto.create_bucket(bucket)
    fault_proxy.failing.set()
    server = start_server(
        driver,
        "--store",
        f"s3://{bucket}/p",
        "--upload-backoff-ms-min",
        "100",
        "--upload-backoff-ms-max",
        "500",
        "--upload-timeout-ms",
        "5000",
        # Small fixed regions (receive buffers, hand-off rings are mapped at start and become
        # resident as they are first used): what remains to grow is what must not.
        "--message-bytes-max",
        "65536",
        "--spill-handoff-bytes-per-core",
        str(MIB),
        # The default log filter: no RUST_LOG from the caller's shell.
        env={**s3_env(fault_proxy.endpoint), "RUST_LOG": None},
    )
    rss_start = server.rss_bytes()
    sampler = RssSampler(server)
    # 4 sessions x 125 frames/s x 16,000 bytes for 5 s: ~40 MB of audio while every upload fails.
    streams = [
        Stream(f"outage-{i}", 8000, 16000, paced_switching(5.0, 40, f"c{i}"), frames_per_second=125)
        for i in range(4)
    ]
    asyncio.run(run_streams(server.url, streams, timeout=60))
    during = metrics_of(server)
    samples = sampler.finish()
    sent = sum(s.bytes_sent for s in streams)
    assert sent >= 30 * MIB, f"only {sent} bytes streamed; the RSS check needs far more than its bound"
    growth = max(samples) - rss_start
    assert growth < 20 * MIB, (
        f"RSS grew by {growth / MIB:.1f} MiB while {sent / MIB:.0f} MiB of audio waited for the store "
        f"(start {rss_start / MIB:.1f} MiB, max {max(samples) / MIB:.1f} MiB)"
    )
    # Flat, not just bounded: the fixed regions are resident after the first quarter of the
    # outage; after that, audio piling up in the log must not show in memory.
    quarter = len(samples) // 4
    assert max(samples[3 * quarter :]) - max(samples[:quarter]) < 5 * MIB, [s // MIB for s in samples]
    assert fault_proxy.refused > 0
    assert during["pusher_upload_succeeded_total"] == 0
    assert during["pusher_upload_store_healthy"] == 0
    failed = during['pusher_upload_attempts_failed_total{reason="store"}'] + during[
        'pusher_upload_attempts_failed_total{reason="timeout"}'
    ]
    assert failed > 0 and during["pusher_upload_retries_total"] > 0, during
    expected = expected_objects(streams)
    assert during["pusher_spill_pending_batches"] == len(expected)

    fault_proxy.failing.clear()
    after = wait_uploaded(server, len(expected), timeout=60)
    objects = moto.objects(bucket, "p/")
    check_objects(streams, {k.removeprefix("p/"): v for k, v in objects.items()})
    # Exactly once: one confirmed upload per batch, one stored PUT per key.
    assert after["pusher_upload_succeeded_total"] == len(expected)
    assert fault_proxy.stored == {f"/{bucket}/p/{key}": 1 for key in expected}
    assert after["pusher_upload_store_healthy"] == 1
    # The outage is reported by pusher's own health transition, not by object_store's INFO
    # line per retry (several per attempt).
    log = server.log_text().splitlines()
    assert any("object store failing" in line and "WARN" in line for line in log), log[-20:]
    chatter = [line for line in log if "object_store" in line and "WARN" not in line and "ERROR" not in line]
    assert not chatter, chatter[:5]
    quarters = [max(samples[i * len(samples) // 4 : (i + 1) * len(samples) // 4]) / MIB for i in range(4)]
    print(
        f"\n[{driver}] outage: RSS max per quarter {[round(q, 1) for q in quarters]} MiB;"
        f" {sent / MIB:.1f} MiB in {len(expected)} batches; RSS start "
        f"{rss_start / MIB:.1f} MiB, max {max(samples) / MIB:.1f} MiB; "
        f"{fault_proxy.refused} requests refused, {failed:.0f} failed attempts"
    )


# --- 4. crash ------------------------------------------------------------------------------------


def records_of(stream: Stream, events) -> int:
    """Spill records `events` of `stream` have made by the time they were taken: an open per
    batch, one per frame, a close per batch closed so far."""
    batches, still_open = model_batches(stream, events)
    return sum(b.frames + 2 for b in batches) - (1 if still_open else 0)


def check_logged_prefix(stream: Stream, audio: dict[str, bytes], at_least_frames: int) -> int:
    """`stream` was cut by a crash: its objects hold a prefix of what it sent, in whole frames,
    at least `at_least_frames` of them, cut into the batches the rules make of that prefix.
    Returns the number of frames stored."""
    mine = {k: v for k, v in audio.items() if k.startswith(f"chunks/{stream.uid}/")}
    stored = sum(len(v) for v in mine.values())
    assert stored % stream.frame_bytes == 0, f"{stream.uid}: {stored} bytes is not a whole number of frames"
    frames = stored // stream.frame_bytes
    assert at_least_frames <= frames <= stream.frames_sent, (
        f"{stream.uid}: {frames} frames stored, {at_least_frames} were logged, {stream.frames_sent} sent"
    )
    if frames == 0:
        assert not mine
        return 0
    cut = [i for i, e in enumerate(stream.events) if e[0] == "audio"][frames - 1] + 1
    expected = {b.key: bytes(b.data) for b in model_batches(stream, stream.events[:cut])[0]}
    assert sorted(mine) == sorted(expected), stream.uid
    for key, data in expected.items():
        assert mine[key] == data, f"{key}: not the bytes sent"
    return frames


def test_kill_9_mid_stream_then_restart(driver, start_server, tmp_path):
    server = start_server(driver)
    # A: closed batches (103 and 102 switches) and one open batch, all taken by the log.
    a = Stream(
        "crash-a",
        16000,
        3200,
        [("103", "a1"), ("audio", 5), ("103", "a2"), ("audio", 5), ("102", "a3"), ("audio", 5)],
    )

    def switching_forever(tag: str):
        n = 0
        while True:  # until the server dies
            yield ("103", f"{tag}{n}")
            yield ("audio", 25)
            n += 1

    # B: streaming when the server is killed: 1 s frames of 32 KB at 16 kHz, 50 a second, a new
    # conversation every 25 frames; a checkpoint of what the log had taken before the kill.
    b = Stream("crash-b", 16000, 32000, switching_forever("b"), frames_per_second=50)
    # C: as fast as the socket takes them for the last moments, so the kill likely tears a record.
    c = Stream("crash-c", 16000, 32000, switching_forever("c"))

    async def scenario():
        a_task = asyncio.create_task(run_stream(server.url, a, close=False))
        a_records = 1 + 5 + 1 + 1 + 5 + 1 + 1 + 5
        await asyncio.to_thread(
            wait_until,
            lambda: a.frames_sent == 15 and server.metric("pusher_spill_appended_records_total") == a_records,
            10,
            "A's 15 frames taken by the log",
        )
        b_task = asyncio.create_task(run_stream(server.url, b, close=False))
        await asyncio.to_thread(wait_until, lambda: b.frames_sent >= 30, 15, "B streaming")
        checkpoint = sum(1 for e in b.events if e[0] == "audio")
        needed = a_records + records_of(b, list(b.events))
        await asyncio.to_thread(
            wait_until,
            lambda: server.metric("pusher_spill_appended_records_total") >= needed,
            10,
            "B's first frames taken by the log",
        )
        c_task = asyncio.create_task(run_stream(server.url, c, close=False))
        await asyncio.sleep(0.3)
        assert b.error is None and not b_task.done(), "B must still be streaming when the server dies"
        assert c.error is None and not c_task.done(), "C must still be streaming when the server dies"
        server.kill()
        await asyncio.wait_for(asyncio.gather(a_task, b_task, c_task), 15)
        return checkpoint

    checkpoint = asyncio.run(scenario())
    for s in (a, b, c):
        assert s.error is not None or s.close_code == 1006, f"{s.uid} must have died with the server"

    restarted = start_server(driver)
    recovery = restarted.log_text()
    found = re.search(r"spill log recovered.*?closed_at_recovery=(\d+)", recovery)
    assert found, recovery[-3000:]
    closed = int(found.group(1))
    # A's third batch was open, and B's and C's current ones (unless the kill fell between a
    # conversation switch and the next frame).
    assert 1 <= closed <= 3, recovery
    # The pending-batches gauge is 0 until the writer first publishes it: wait for the count
    # recovery found instead.
    pending = re.search(r"spill log recovered.*?\bbatches=(\d+)", recovery)
    assert pending, recovery[-3000:]
    wait_uploaded(restarted, int(pending.group(1)), 30)
    objects = file_store_objects(restarted.data_dir / "cloud")
    audio = decode_objects(objects)  # every object decrypts: none is corrupt
    assert all(k.split("/")[1] in ("crash-a", "crash-b", "crash-c") for k in objects), sorted(objects)

    # A: everything, including the batch open at the kill (closed at recovery).
    check_objects([a], {k: v for k, v in objects.items() if k.startswith("chunks/crash-a/")})
    # B: at least what the log had taken at the checkpoint; C: whatever the log had taken.
    b_frames = check_logged_prefix(b, audio, checkpoint)
    c_frames = check_logged_prefix(c, audio, 0)
    m = metrics_of(restarted)
    print(
        f"\n[{driver}] crash: B {b_frames}/{b.frames_sent} frames stored (checkpoint {checkpoint}), "
        f"C {c_frames}/{c.frames_sent}; closed at recovery {closed}; "
        f"corrupt tails {m['pusher_spill_corrupt_tails_total']:.0f}"
    )


# --- 5. disk full --------------------------------------------------------------------------------


def test_disk_full_slows_senders_and_drops_nothing(driver, start_server, moto, fault_proxy):
    bucket = f"pusher-full-{driver}"
    moto.create_bucket(bucket)
    fault_proxy.failing.set()
    spill_max = 2 * MIB
    workers, handoff = 2, 262144
    server = start_server(
        driver,
        "--store",
        f"s3://{bucket}/p",
        "--message-bytes-max",
        "65536",
        "--spill-segment-bytes",
        str(MIB),
        "--spill-bytes-max",
        str(spill_max),
        "--spill-handoff-bytes-per-core",
        str(handoff),
        "--upload-backoff-ms-min",
        "100",
        "--upload-backoff-ms-max",
        "500",
        env=s3_env(fault_proxy.endpoint),
    )
    # At 8 kHz in 1 s frames: over 4 times the disk budget plus the most the kernel may buffer for
    # the server's socket (receive-buffer autotuning grows up to tcp_rmem's maximum, 32 MiB on
    # some machines), so that the sender stalls with frames still to send even after the socket
    # buffers on both sides have filled.
    frame_bytes = 16000
    rmem_max = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
    total_frames = max(600, (rmem_max + 4 * spill_max) // frame_bytes + 1)
    stream = Stream(
        "full-user",
        8000,
        frame_bytes,
        [("103", "full-1"), ("audio", 250), ("102", "full-2"), ("audio", total_frames - 250)],
        sndbuf=16384,
    )

    async def scenario():
        task = asyncio.create_task(run_stream(server.url, stream))
        await asyncio.to_thread(
            wait_until, lambda: server.metric("pusher_spill_full") == 1, 20, "pusher_spill_full = 1"
        )

        # The sender stalls: pusher no longer reads it, and sends stop completing.
        def stalled():
            before = stream.frames_sent
            time.sleep(1.0)
            return stream.frames_sent == before and not task.done()

        await asyncio.to_thread(wait_until, stalled, 20, "the sender to stall", 0)
        stalled_at = stream.frames_sent
        assert stalled_at < total_frames
        m = metrics_of(server)
        assert m["pusher_spill_full"] == 1
        # The budget stops intake; what the hand-off rings already hold is still written.
        assert m["pusher_spill_live_bytes"] <= spill_max + workers * handoff + 64 * 1024, m
        await asyncio.sleep(1.0)
        assert stream.frames_sent == stalled_at
        fault_proxy.failing.clear()
        await asyncio.wait_for(task, 60)
        return stalled_at, m

    stalled_at, during = asyncio.run(scenario())
    assert stream.error is None, repr(stream.error)
    assert stream.close_code == 1000
    expected = expected_objects([stream])
    after = wait_uploaded(server, len(expected), timeout=60)
    objects = moto.objects(bucket, "p/")
    check_objects([stream], {k.removeprefix("p/"): v for k, v in objects.items()})
    assert after["pusher_spill_backpressure_seconds_total"] > 0, after
    # The log shrinks back: fully uploaded segments are deleted, what is left is at most the
    # segment being written.
    def shrunk_back():
        m = metrics_of(server)
        return m if m["pusher_spill_live_bytes"] <= MIB and m["pusher_spill_full"] == 0 else None

    shrunk = wait_until(shrunk_back, 20, "the spill log to shrink back", interval=0.1)
    assert shrunk["pusher_spill_segments_deleted_total"] >= 3, shrunk
    print(
        f"\n[{driver}] disk full: stalled at {stalled_at}/{total_frames} frames, live "
        f"{during['pusher_spill_live_bytes'] / MIB:.2f} MiB while full, "
        f"{shrunk['pusher_spill_live_bytes'] / MIB:.2f} MiB after; backpressure "
        f"{after['pusher_spill_backpressure_seconds_total']:.1f} s"
    )


def post_drain(server) -> int:
    request = urllib.request.Request(server.http + "/__internal/drain", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status


def test_audio_sent_until_the_drains_close_is_stored(driver, start_server, tmp_path):
    """When the drain's grace is over, pusher closes every session with 1001 and still reads
    and stores what each client sent before it saw the Close: the Omi client drops audio from
    its buffer as it sends it. (Before: the last frames in flight were dropped.)"""
    users = {f"drain-{i}": {"data_protection_level": "standard"} for i in range(8)}
    settings = write_settings(tmp_path / "settings.toml", users)
    server = start_server(driver, "--settings", str(settings), "--drain-grace-ms", "500")
    sent: dict[str, list[bytes]] = {uid: [] for uid in users}
    codes: dict[str, int] = {}

    async def stream(uid: str) -> None:
        url = f"{server.url}/v1/trigger/listen?uid={uid}&sample_rate=16000"
        async with websockets.connect(url, ping_interval=None, close_timeout=10) as ws:
            await ws.send(frame(103, b"c"))
            seq = 0
            while True:
                pcm = struct.pack("<II", hash(uid) & 0xFFFFFFFF, seq) * 400  # 3,200 B, unique
                try:
                    await ws.send(frame(101, struct.pack("<d", T0 + seq * 0.1) + pcm))
                except websockets.ConnectionClosed:
                    break
                sent[uid].append(pcm)
                seq += 1
                await asyncio.sleep(0.001 if seq % 4 == 0 else 0)
            codes[uid] = ws.close_code

    async def run() -> None:
        tasks = [asyncio.create_task(stream(uid)) for uid in users]
        await asyncio.sleep(0.3)
        assert await asyncio.to_thread(post_drain, server) == 200
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)

    asyncio.run(run())
    assert set(codes.values()) == {1001}, codes
    expected = {(uid, "c"): b"".join(frames) for uid, frames in sent.items()}
    assert all(expected.values()), "every session sent audio"

    def stored():
        # Every byte sent, not only an empty index: pusher closed first (1001), so a client's
        # last frames may still be on their way into the log when its close completes, while
        # the earlier batches are already uploaded and confirmed (the index empty for a moment).
        audio = concatenated(decode_objects(file_store_objects(server.data_dir / "cloud")))
        m = metrics_of(server)
        complete = audio.keys() == expected.keys() and all(
            len(audio[key]) >= len(data) for key, data in expected.items()
        )
        return audio if complete and m["pusher_spill_pending_batches"] == 0 else None

    audio = wait_until(stored, 30, "every session's batch uploaded")
    for key, data in expected.items():
        assert audio[key] == data, (
            f"{key}: {len(audio[key])} bytes stored, {len(data)} sent ({len(sent[key[0]])} frames)"
        )
