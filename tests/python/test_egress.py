"""Egress, end to end: the real binary, the real client (`websockets`), and loopback downstreams
written here (stdlib only) that record every request pusher makes.

Expectations come from the egress contract (docs/downstream.md §1, §3, §4, §5 and the request
shapes it pins down: exact bodies, `?`/`&` query joining, uid never URL-encoded), not from pusher's
code. Each test runs on both io drivers.
"""

import asyncio
import http.server
import json
import os
import random
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import websockets

from conftest import wait_until


T0 = 1_700_000_000.25

# --- the client ----------------------------------------------------------------------------------


def frame(header: int, payload: bytes = b"") -> bytes:
    return struct.pack("<I", header) + payload


def audio_frame(timestamp: float, pcm: bytes) -> bytes:
    return frame(101, struct.pack("<d", timestamp) + pcm)


def transcript_frame(segments_text: str, memory_id) -> bytes:
    """A 102 whose `segments` value is exactly `segments_text` (whitespace and number spelling
    included), so the pass-through of the raw text can be checked byte for byte."""
    text = '{"segments": ' + segments_text + ', "memory_id": ' + json.dumps(memory_id) + "}"
    return frame(102, text.encode())


def json_frame(header: int, payload: dict) -> bytes:
    return frame(header, json.dumps(payload).encode())


async def connect(server, uid: str, sample_rate: int = 8000):
    url = f"{server.url}/v1/trigger/listen?uid={uid}&sample_rate={sample_rate}"
    return await websockets.connect(
        url,
        proxy=None,
        compression=None,
        ping_interval=30,
        ping_timeout=60,
        close_timeout=10,
        open_timeout=10,
        max_size=None,
    )


async def recv_201(ws, timeout: float = 10) -> dict:
    try:
        message = await asyncio.wait_for(ws.recv(), timeout)
    except TimeoutError:
        pytest.fail(f"no 201 within {timeout} s")
    assert isinstance(message, bytes), f"a text message: {message!r}"
    assert struct.unpack("<I", message[:4])[0] == 201, message[:64]
    return json.loads(message[4:])


async def no_message(ws, seconds: float) -> None:
    """Asserts that nothing arrives on `ws` for `seconds` (recv is cancellation-safe)."""
    try:
        message = await asyncio.wait_for(ws.recv(), seconds)
    except TimeoutError:
        return
    pytest.fail(f"unexpected message: {message[:200]!r}")


async def until(predicate, timeout: float, what: str, interval: float = 0.01):
    """Polls `predicate` without blocking the event loop; returns its truthy value or fails."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what} (last: {value!r})")
        await asyncio.sleep(interval)


# --- downstreams ---------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    target: str  # raw path + query, as on the request line
    headers: dict  # lower-cased name -> value
    body: bytes
    t: float  # time.monotonic() when the whole request had arrived

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def json(self):
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"{}"
    content_type: str = "application/json"
    delay: float = 0.0  # answer after this many seconds (cut short at teardown)
    gate: threading.Event | None = None  # answer once set (at teardown: close unanswered)
    hang: bool = False  # never answer (close at teardown)


def json_reply(value, status: int = 200, **kwargs) -> Reply:
    return Reply(status=status, body=json.dumps(value).encode(), **kwargs)


def read_body(rfile, headers) -> bytes:
    if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
        body = bytearray()
        while True:
            size = int(rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(body)
            body += rfile.read(size)
            rfile.readline()
    length = int(headers.get("Content-Length") or 0)
    return rfile.read(length) if length else b""


class Downstream:
    """A threaded HTTP/1.1 server on loopback that records every request and answers with
    `respond(request) -> Reply` (default: 200 `{}`)."""

    def __init__(self, respond=None):
        self.respond = respond or (lambda request: Reply())
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self.released = threading.Event()
        downstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                body = read_body(self.rfile, self.headers)
                request = Request(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    time.monotonic(),
                )
                with downstream.lock:
                    downstream.requests.append(request)
                reply = downstream.respond(request)
                if reply.hang:
                    downstream.released.wait()
                    self.close_connection = True
                    return
                if reply.gate is not None:
                    while not reply.gate.wait(0.02):
                        if downstream.released.is_set():
                            self.close_connection = True
                            return
                if reply.delay:
                    if downstream.released.wait(reply.delay):
                        self.close_connection = True
                        return
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = do_PUT = _handle

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 256
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # pusher dropped a connection we were still answering

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="downstream", daemon=True)
        self.thread.start()

    def url(self, target: str) -> str:
        return f"http://127.0.0.1:{self.port}{target}"

    def received(self, path: str | None = None) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if path is None or r.path == path]

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def downstreams():
    """Makes `Downstream`s; at teardown (before pusher stops: request this fixture after
    `start_server`) every held request is let go and the servers are closed."""
    made = []

    def make(respond=None) -> Downstream:
        d = Downstream(respond)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()


@dataclass
class HeldCall:
    uid: str | None
    request: bytes
    t_request: float
    t_eof: float | None = None


class HangingProcessor:
    """A raw-socket processor: reads each request, never answers, and records when pusher closes
    the connection (EOF or reset on its socket)."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/process"
        self.lock = threading.Lock()
        self.calls: list[HeldCall] = []
        self.connections: list[socket.socket] = []
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, name="hanging-processor", daemon=True).start()

    def _accept(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            with self.lock:
                self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket):
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, body = data.split(b"\r\n\r\n", 1)
            headers = {}
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                while not body.endswith(b"0\r\n\r\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    body += chunk
                decoded, rest = bytearray(), body
                while True:
                    size_line, rest = rest.split(b"\r\n", 1)
                    size = int(size_line.split(b";")[0], 16)
                    if size == 0:
                        break
                    decoded += rest[:size]
                    rest = rest[size + 2 :]
                body = bytes(decoded)
            else:
                length = int(headers.get(b"content-length", b"0"))
                while len(body) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    body += chunk
            try:
                uid = json.loads(body).get("uid")
            except ValueError:
                uid = None
            call = HeldCall(uid, head + b"\r\n\r\n" + body, time.monotonic())
            with self.lock:
                self.calls.append(call)
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
            call.t_eof = time.monotonic()
        except OSError:
            return

    def call_of(self, uid: str) -> HeldCall | None:
        with self.lock:
            return next((c for c in self.calls if c.uid == uid), None)

    def stop(self):
        self.stopped.set()
        self.listener.close()
        with self.lock:
            for conn in self.connections:
                try:
                    conn.close()
                except OSError:
                    pass


# --- settings and metrics ------------------------------------------------------------------------


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_settings(tmp_path: Path, users: dict, default: dict | None = None) -> str:
    """A settings file (docs/downstream.md §5): private cloud off by default (audio storage is not
    what these tests look at), `default` and per-user overrides as given."""
    table = {"private_cloud_sync_enabled": False, **(default or {})}
    lines = ["[default]"] + [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items()]
    for uid, overrides in users.items():
        lines.append(f"[users.{json.dumps(uid)}]")
        lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in overrides.items()]
    path = tmp_path / "settings.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def app(app_id: str, url: str, *triggers: str) -> dict:
    return {"id": app_id, "webhook_url": url, "triggers": list(triggers)}


SAMPLE_RE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_sum(text: str, name: str, **labels) -> float | None:
    """Sum of the samples of `name` whose labels include `labels`; None if there is none."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        if not m or m.group(1) != name:
            continue
        sample_labels = dict(LABEL_RE.findall(m.group(2) or ""))
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
            found = True
    return total if found else None


async def until_metric(server, name: str, expected: float, timeout: float = 5, **labels) -> None:
    last = None
    deadline = time.monotonic() + timeout
    while True:
        last = metric_sum(await asyncio.to_thread(server.metrics), name, **labels)
        if last == expected:
            return
        if time.monotonic() >= deadline:
            pytest.fail(f"{name}{labels or ''} is {last}, expected {expected} (waited {timeout} s)")
        await asyncio.sleep(0.05)


def segments_text(text: str, index: int) -> str:
    """Segments JSON text with spacing and number spellings a re-serialiser would change."""
    return (
        '[ {"text": "' + text + '", "speaker": "SPEAKER_00", "start": 0.50, "end": 1.0e0,'
        ' "index": ' + str(index) + ', "extra": {"nested": [1, 2.50, null], "esc": "a\\"b\\u00e9"}} ]'
    )


# --- 1. request shapes ---------------------------------------------------------------------------


def test_transcript_request_shapes(driver, start_server, tmp_path, downstreams):
    d = downstreams()
    uid = "u.shape:1@x-y_z"  # every uid character class; never URL-encoded
    settings = write_settings(
        tmp_path,
        {
            uid: {
                "realtime_transcript_webhook": d.url("/rt"),
                "apps": [
                    app("app-1", d.url("/apps/one"), "transcript_processed"),
                    app("app-audio", d.url("/apps/audio-only"), "audio_bytes"),
                ],
            }
        },
    )
    server = start_server(driver, "--settings", settings, "--transcript-hook", d.url("/hook?token=abc"))

    texts = [segments_text(f"h\u00e9llo {i}", i) for i in range(4)]
    # (memory_id sent, conversation the global hook must see)
    script = [(None, None), ("@103", "conv-7"), (None, "conv-7"), ("conv-9", "conv-9"), ("", "conv-9")]

    async def scenario():
        ws = await connect(server, uid)
        index = 0
        for memory_id, _ in script:
            if memory_id == "@103":
                await ws.send(frame(103, b"conv-7"))
                continue
            await ws.send(transcript_frame(texts[index], memory_id))
            index += 1
        await until(lambda: len(d.received("/hook")) >= 4 and len(d.received("/apps/one")) >= 4
                    and len(d.received("/rt")) >= 4, 10, "4 transcript deliveries per target")
        # A user with no settings of its own: only the global hook has a consumer.
        plain = await connect(server, "plain-user")
        await plain.send(transcript_frame(texts[0], None))
        await until(lambda: len(d.received("/hook")) >= 5, 10, "the plain user's hook delivery")
        # Close only once every answer was read: a delivery in flight when its session ends is
        # cancelled (not something the contract pins down either way).
        await until_metric(server, "pusher_egress_requests_total", 4, target="app_transcript", result="delivered")
        await until_metric(server, "pusher_egress_requests_total", 4, target="transcript_webhook", result="delivered")
        await until_metric(server, "pusher_egress_requests_total", 5, target="transcript_hook", result="delivered")
        await plain.close()
        await ws.close()

    asyncio.run(scenario())

    expected_conversations = [c for m, c in script if m != "@103"]
    app_requests = d.received("/apps/one")
    rt_requests = d.received("/rt")
    hook_requests = [r for r in d.received("/hook") if r.target.endswith(f"uid={uid}")]
    assert len(app_requests) == len(rt_requests) == len(hook_requests) == 4
    for i, text in enumerate(texts):
        seg = text.encode()
        for r in (app_requests[i], rt_requests[i], hook_requests[i]):
            assert r.method == "POST"
            assert r.content_type == "application/json", r.headers
        assert app_requests[i].target == f"/apps/one?uid={uid}"
        assert app_requests[i].body == b'{"session_id":"' + uid.encode() + b'","segments":' + seg + b"}"
        assert rt_requests[i].target == f"/rt?uid={uid}"
        assert rt_requests[i].body == b'{"segments":' + seg + b',"session_id":"' + uid.encode() + b'"}'
        assert hook_requests[i].target == f"/hook?token=abc&uid={uid}"
        conversation = json.dumps(expected_conversations[i]).encode()
        assert hook_requests[i].body == (
            b'{"session_id":"' + uid.encode() + b'","conversation_id":' + conversation
            + b',"segments":' + seg + b"}"
        ), f"item {i}"
    # The audio-only app gets no transcripts; the plain user reaches only the hook.
    assert d.received("/apps/audio-only") == []
    plain = [r for r in d.received() if "uid=plain-user" in r.target]
    assert [r.target for r in plain] == ["/hook?token=abc&uid=plain-user"]
    assert plain[0].body == b'{"session_id":"plain-user","conversation_id":null,"segments":' + texts[0].encode() + b"}"


def test_audio_request_shapes(driver, start_server, tmp_path, downstreams):
    d = downstreams()
    settings = write_settings(
        tmp_path,
        {
            "aud": {
                "apps": [
                    app("app-a", d.url("/apps/audio"), "audio_bytes"),
                    app("app-t", d.url("/apps/transcript-only"), "transcript_processed"),
                ]
            },
            "awh": {"audio_bytes_webhook": {"url": d.url("/audio-hook"), "delay_seconds": 1}},
            "awh0": {"audio_bytes_webhook": {"url": d.url("/audio-hook0?key=k1"), "delay_seconds": 0}},
        },
    )
    server = start_server(driver, "--settings", settings)
    sent: dict[str, list[bytes]] = {}

    async def stream(uid: str, sample_rate: int, frame_bytes: int, frames: int, ws=None):
        ws = ws or await connect(server, uid, sample_rate)
        pcms = sent.setdefault(uid, [])
        for _ in range(frames):
            pcm = os.urandom(frame_bytes)
            await ws.send(audio_frame(T0 + len(pcms) * frame_bytes / (2 * sample_rate), pcm))
            pcms.append(pcm)
        return ws

    async def scenario():
        # App audio at 8 kHz: threshold 8000*2*4 = 64000; 16000-byte frames: the 5th makes
        # 80000 > 64000 -> one item of 80000 bytes; frames 6-9 hold exactly 64000 (not more),
        # the 10th makes the second item.
        aud = await stream("aud", 8000, 16000, 9)
        await until(lambda: d.received("/apps/audio"), 10, "the first app-audio item")
        await asyncio.sleep(0.2)  # frames 6-9 must not make an item
        assert len(d.received("/apps/audio")) == 1
        await stream("aud", 8000, 16000, 1, aud)
        # Audio webhook at 16 kHz, delay 1 s: threshold 32000; the 3rd 16000-byte frame emits.
        awh = await stream("awh", 16000, 16000, 6)
        # delay 0: every frame is an item.
        awh0 = await stream("awh0", 16000, 3200, 2)
        await until(lambda: len(d.received("/apps/audio")) >= 2 and len(d.received("/audio-hook")) >= 2
                    and len(d.received("/audio-hook0")) >= 2, 10, "every audio item")
        # Close only once every answer was read (see test_transcript_request_shapes).
        await until_metric(server, "pusher_egress_requests_total", 2, target="app_audio", result="delivered")
        await until_metric(server, "pusher_egress_requests_total", 4, target="audio_webhook", result="delivered")
        for ws in (aud, awh, awh0):
            await ws.close()

    asyncio.run(scenario())

    def check(requests, target, bodies):
        assert [r.target for r in requests] == [target] * len(bodies)
        for r, body in zip(requests, bodies):
            assert r.method == "POST"
            assert r.content_type == "application/octet-stream", r.headers
            assert len(r.body) == len(body)
            assert r.body == body

    pcm = sent["aud"]
    check(d.received("/apps/audio"), "/apps/audio?sample_rate=8000&uid=aud",
          [b"".join(pcm[0:5]), b"".join(pcm[5:10])])
    pcm = sent["awh"]
    check(d.received("/audio-hook"), "/audio-hook?sample_rate=16000&uid=awh",
          [b"".join(pcm[0:3]), b"".join(pcm[3:6])])
    pcm = sent["awh0"]
    check(d.received("/audio-hook0"), "/audio-hook0?key=k1&sample_rate=16000&uid=awh0", pcm)
    assert d.received("/apps/transcript-only") == []


def test_speaker_sample_after_session_end(driver, start_server, tmp_path, downstreams):
    d = downstreams()
    settings = write_settings(tmp_path, {})
    server = start_server(driver, "--settings", settings, "--speaker-sample-url", d.url("/speaker"),
                          "--speaker-sample-delay-s", "1")
    times = {}

    async def scenario():
        ws = await connect(server, "spk", 16000)
        # Ignored: not every field is non-empty.
        await ws.send(json_frame(105, {"person_id": "p-1", "conversation_id": "c-1", "segment_ids": []}))
        await ws.send(json_frame(105, {"person_id": "", "conversation_id": "c-1", "segment_ids": ["s"]}))
        # Taken before the send: the server cannot have started the delay earlier.
        times["sent"] = time.monotonic()
        await ws.send(json_frame(105, {"person_id": "p-1", "conversation_id": "c-1", "segment_ids": ["s1", "s2"]}))
        await ws.close()
        times["closed"] = time.monotonic()
        assert ws.close_code == 1000
        await until(lambda: d.received("/speaker"), 10, "the speaker-sample request")
        await asyncio.sleep(0.3)  # the ignored 105s would be due by now too

    asyncio.run(scenario())
    requests = d.received()
    assert len(requests) == 1, [(r.target, r.body) for r in requests]
    r = requests[0]
    assert times["closed"] < times["sent"] + 1.0, "the session must have closed before the request was due"
    assert r.t > times["closed"], "the request came before the session was closed"
    assert r.t - times["sent"] >= 1.0, f"due after 1 s, arrived {r.t - times['sent']:.3f} s after the 105"
    assert (r.method, r.target, r.content_type) == ("POST", "/speaker", "application/json")
    assert r.json() == {
        "uid": "spk",
        "person_id": "p-1",
        "conversation_id": "c-1",
        "segment_ids": ["s1", "s2"],
        "sample_rate": 16000,
    }
    assert metric_sum(server.metrics(), "pusher_speaker_samples_queued_total") == 1


def test_speaker_sample_outlives_transcripts_cycling_the_payload_arena(driver, start_server, tmp_path, downstreams):
    """A speaker sample waits its delay while transcripts pass through the core's payload arena
    many times over: it is not evicted by them (it once shared that FIFO arena, and the capacity
    bench lost every speaker sample from about 1,000 sessions per core)."""
    d = downstreams()
    settings = write_settings(tmp_path, {})
    server = start_server(driver, "--settings", settings, "--speaker-sample-url", d.url("/speaker"),
                          "--speaker-sample-delay-s", "2", "--transcript-hook", d.url("/hook"),
                          "--payload-blocks-per-core-max", "16")

    async def scenario():
        ws = await connect(server, "spk-cycle", 16000)
        await ws.send(json_frame(105, {"person_id": "p-1", "conversation_id": "c-1", "segment_ids": ["s1"]}))
        # Its body waits in the speaker-sample arena, which /metrics shows (polled for up to 1 s
        # of the 2 s delay: the gauge is sampled every 10 ms).
        held = None
        for _ in range(100):
            held = metric_sum(await asyncio.to_thread(server.metrics), "pusher_speaker_sample_arena_used_bytes")
            if held:
                break
            await asyncio.sleep(0.01)
        assert held and held > 0, held
        for i in range(48):  # three times the arena's 16 blocks
            await ws.send(transcript_frame(segments_text(f"t {i}", i), None))
            await until(lambda: len(d.received("/hook")) > i, 10, f"transcript {i} delivered")
        await until(lambda: d.received("/speaker"), 10, "the speaker-sample request")
        await until_metric(server, "pusher_speaker_sample_arena_used_bytes", 0)
        await ws.close()

    asyncio.run(scenario())
    (r,) = d.received("/speaker")
    assert r.json()["segment_ids"] == ["s1"]
    assert metric_sum(server.metrics(), "pusher_ring_dropped_items_total", stream="speaker_sample") == 0


# --- 2. ordering and isolation -------------------------------------------------------------------


def test_per_session_order_under_concurrency(driver, start_server, tmp_path, downstreams):
    sessions, items = 10, 30

    def respond(request):
        return Reply(delay=random.uniform(0, 0.02))

    d = downstreams(respond)
    settings = write_settings(tmp_path, {}, {"apps": [app("app-1", d.url("/ordered"), "transcript_processed")]})
    server = start_server(driver, "--settings", settings)

    async def one(uid: str):
        ws = await connect(server, uid)
        for i in range(items):
            await ws.send(transcript_frame(f'[{{"uid": "{uid}", "seq": {i}}}]', None))
        return ws

    async def scenario():
        sockets = await asyncio.gather(*(one(f"order-{n}") for n in range(sessions)))
        await until(lambda: len(d.received("/ordered")) >= sessions * items, 30,
                    f"{sessions * items} deliveries")
        await asyncio.gather(*(ws.close() for ws in sockets))

    asyncio.run(scenario())
    per_uid: dict[str, list[int]] = {}
    for r in d.received("/ordered"):
        body = r.json()
        segment = body["segments"][0]
        assert r.target == f"/ordered?uid={segment['uid']}"
        assert body["session_id"] == segment["uid"]
        per_uid.setdefault(segment["uid"], []).append(segment["seq"])
    assert sorted(per_uid) == sorted(f"order-{n}" for n in range(sessions))
    for uid, seqs in per_uid.items():
        assert seqs == list(range(items)), f"{uid}: delivered in order {seqs}"
    assert not metric_sum(server.metrics(), "pusher_ring_dropped_items_total", stream="transcript")


def test_slow_target_delays_only_its_session(driver, start_server, tmp_path, downstreams):
    gate = threading.Event()

    def respond(request):
        return Reply(gate=gate) if request.path == "/slow" else Reply()

    d = downstreams(respond)
    fast_users = [f"fast-{n}" for n in range(3)]
    users = {"slow-user": {"apps": [app("app-s", d.url("/slow"), "transcript_processed")]}}
    for uid in fast_users:
        users[uid] = {"apps": [app("app-f", d.url("/fast"), "transcript_processed")]}
    server = start_server(driver, "--settings", write_settings(tmp_path, users))
    times = {}

    async def scenario():
        slow = await connect(server, "slow-user")
        fast = [await connect(server, uid) for uid in fast_users]
        for i in range(3):
            await slow.send(transcript_frame(f'[{{"seq": {i}}}]', None))
        await until(lambda: d.received("/slow"), 10, "the slow target to hold the first item")
        for i in range(3):
            for ws in fast:
                await ws.send(transcript_frame(f'[{{"seq": {i}}}]', None))
        times["fast_sent"] = time.monotonic()
        await until(lambda: len(d.received("/fast")) >= 9, 10, "the fast users' deliveries")
        times["fast_done"] = max(r.t for r in d.received("/fast"))
        times["slow_seen"] = len(d.received("/slow"))
        gate.set()
        await until(lambda: len(d.received("/slow")) >= 3, 10, "the slow user's items after the stall")
        for ws in [slow, *fast]:
            await ws.close()

    asyncio.run(scenario())
    # Well under the app webhook timeout (10 s), which a session waiting on the held target would hit.
    assert times["fast_done"] - times["fast_sent"] <= 5.0, (
        f"the fast sessions' deliveries took {times['fast_done'] - times['fast_sent']:.3f} s"
    )
    assert times["slow_seen"] == 1, "the slow session's next items must wait for its stuck one"
    for uid in fast_users:
        seqs = [r.json()["segments"][0]["seq"] for r in d.received("/fast") if r.target == f"/fast?uid={uid}"]
        assert seqs == [0, 1, 2], uid
    assert [r.json()["segments"][0]["seq"] for r in d.received("/slow")] == [0, 1, 2]


def test_webhook_retry_timeout_and_drop(driver, start_server, tmp_path, downstreams):
    """A 5xx is retried once (--webhook-retries default 1), a timeout is not; a given-up item is
    dropped and counted, and the session's next item goes on."""
    attempts: dict[str, int] = {}
    lock = threading.Lock()

    def respond(request):
        case = request.json()["segments"][0]["case"]
        with lock:
            attempts[case] = attempts.get(case, 0) + 1
            attempt = attempts[case]
        if case == "fail-once" and attempt == 1:
            return json_reply({}, status=500)
        if case == "fail-always":
            return json_reply({}, status=503)
        if case == "slow":
            return json_reply({}, delay=2)
        return json_reply({})

    d = downstreams(respond)
    settings = write_settings(tmp_path, {"retry": {"apps": [app("app-1", d.url("/apps/r"), "transcript_processed")]}})
    server = start_server(driver, "--settings", settings, "--app-webhook-timeout-ms", "1000")
    cases = ["fail-once", "fail-always", "slow", "after"]

    async def scenario():
        ws = await connect(server, "retry")
        for case in cases:
            await ws.send(transcript_frame(f'[{{"case": "{case}"}}]', None))
        await until(lambda: attempts.get("after"), 10, "the item after the failures")
        await until_metric(server, "pusher_egress_requests_total", 2, target="app_transcript", result="delivered")
        await ws.close()

    asyncio.run(scenario())
    order = [r.json()["segments"][0]["case"] for r in d.received("/apps/r")]
    assert order == ["fail-once", "fail-once", "fail-always", "fail-always", "slow", "after"]
    text = server.metrics()
    assert metric_sum(text, "pusher_egress_requests_total", target="app_transcript", result="failed") == 3
    assert metric_sum(text, "pusher_egress_requests_total", target="app_transcript", result="timed_out") == 1
    assert metric_sum(text, "pusher_egress_dropped_items_total", target="app_transcript") == 2


# --- 3. process conversation (104 -> 201) --------------------------------------------------------


def test_process_results(driver, start_server, tmp_path, downstreams):
    gates = {cid: threading.Event() for cid in ("hang-a", "hang-b", "dup")}

    def respond(request):
        cid = request.json().get("conversation_id")
        if cid == "c-ok":
            return json_reply({"foo": 1, "success": False, "conversation_id": "x"})
        if cid == "c-missing":
            return Reply(status=404, body=b"not found", content_type="text/plain")
        if cid == "c-fail":
            return json_reply({"detail": "boom"}, status=500)
        if cid == "c-slow":
            return json_reply({}, delay=5)
        if cid == "c-list":
            return json_reply([1, 2])
        if cid in gates:
            return json_reply({"done": cid}, gate=gates[cid])
        return json_reply({})

    d = downstreams(respond)
    server = start_server(
        driver,
        "--settings", write_settings(tmp_path, {}),
        "--processor-url", d.url("/v1/process"),
        "--processor-timeout-ms", "2000",
        "--process-in-flight-per-session-max", "2",
    )
    original = {
        "conversation_id": "c-ok",
        "language": "en",
        "byok_keys": {"openai": "sk-test", "nested": [1, {"a": None}]},
        "finalization_job_id": "job-9",
        "dispatch_generation": 3,
    }
    times = {}

    async def results():
        ws = await connect(server, "proc-1")
        await ws.send(json_frame(104, original))
        assert await recv_201(ws) == {"conversation_id": "c-ok", "success": True, "foo": 1}
        await ws.send(json_frame(104, {"conversation_id": "c-missing", "language": "en"}))
        assert await recv_201(ws) == {"conversation_id": "c-missing", "error": "conversation_not_found"}
        await ws.send(json_frame(104, {"conversation_id": "c-fail", "language": "en"}))
        assert await recv_201(ws) == {"conversation_id": "c-fail", "error": "http_500"}
        started = time.monotonic()
        await ws.send(json_frame(104, {"conversation_id": "c-slow", "language": "en"}))
        assert await recv_201(ws) == {"conversation_id": "c-slow", "error": "timeout"}
        times["timeout"] = time.monotonic() - started
        await ws.send(json_frame(104, {"conversation_id": "c-list", "language": "en"}))
        assert await recv_201(ws) == {"conversation_id": "c-list", "error": "bad_response"}
        await ws.close()

    async def busy():
        ws = await connect(server, "proc-2")
        await ws.send(json_frame(104, {"conversation_id": "hang-a"}))
        await ws.send(json_frame(104, {"conversation_id": "hang-b"}))
        await until(lambda: len([r for r in d.received() if r.json()["uid"] == "proc-2"]) >= 2, 10,
                    "both calls at the processor")
        started = time.monotonic()
        await ws.send(json_frame(104, {"conversation_id": "hang-c"}))
        assert await recv_201(ws, timeout=5) == {"conversation_id": "hang-c", "error": "busy"}
        times["busy"] = time.monotonic() - started
        gates["hang-a"].set()
        gates["hang-b"].set()
        answers = [await recv_201(ws), await recv_201(ws)]
        assert sorted(answers, key=lambda a: a["conversation_id"]) == [
            {"conversation_id": "hang-a", "success": True, "done": "hang-a"},
            {"conversation_id": "hang-b", "success": True, "done": "hang-b"},
        ]
        await ws.close()

    async def duplicates():
        ws = await connect(server, "proc-3")
        await ws.send(json_frame(104, {"conversation_id": "dup", "language": "en"}))
        await until(lambda: [r for r in d.received() if r.json()["uid"] == "proc-3"], 10, "the dup call")
        await ws.send(json_frame(104, {"conversation_id": "dup", "language": "en"}))
        await ws.send(json_frame(104, {"conversation_id": "dup", "language": "de"}))
        await no_message(ws, 0.3)  # a duplicate gets no 201 of its own
        gates["dup"].set()
        assert await recv_201(ws) == {"conversation_id": "dup", "success": True, "done": "dup"}
        await no_message(ws, 0.5)
        times["dup_calls"] = len([r for r in d.received() if r.json()["uid"] == "proc-3"])
        # Once answered, the conversation is not in flight any more: a new 104 is a new call.
        await ws.send(json_frame(104, {"conversation_id": "dup", "language": "en"}))
        assert await recv_201(ws) == {"conversation_id": "dup", "success": True, "done": "dup"}
        await ws.close()

    async def scenario():
        await asyncio.gather(results(), busy(), duplicates())

    asyncio.run(scenario())

    calls = [r for r in d.received() if r.json().get("conversation_id") == "c-ok"]
    assert len(calls) == 1
    call = calls[0]
    assert (call.method, call.target, call.content_type) == ("POST", "/v1/process", "application/json")
    # One connection per call (docs/0007-resident-memory-under-churn.md).
    assert call.headers.get("connection") == "close", call.headers
    # Every field kept, in order, with "uid" appended last.
    assert list(call.json().items()) == list(original.items()) + [("uid", "proc-1")]
    assert 2.0 <= times["timeout"] < 4.5, f"timeout 201 after {times['timeout']:.3f} s"
    assert times["busy"] < 1.5, f"busy 201 after {times['busy']:.3f} s"
    assert not [r for r in d.received() if r.json().get("conversation_id") == "hang-c"]
    assert times["dup_calls"] == 1, "a duplicate in flight was sent to the processor again"
    assert len([r for r in d.received() if r.json().get("conversation_id") == "dup"]) == 2

    text = server.metrics()
    assert metric_sum(text, "pusher_process_busy_total") == 1
    assert metric_sum(text, "pusher_process_duplicates_total") == 2
    assert metric_sum(text, "pusher_process_calls_done_total", result="not_found") == 1
    assert metric_sum(text, "pusher_process_calls_done_total", result="timeout") == 1


# --- 4. a session's end cancels its calls --------------------------------------------------------


def test_disconnect_cancels_in_flight_processing(driver, start_server, tmp_path):
    processor = HangingProcessor()
    try:
        server = start_server(driver, "--settings", write_settings(tmp_path, {}), "--processor-url", processor.url)
        times = {}

        async def scenario():
            # A normal close.
            ws = await connect(server, "cancel-close")
            await ws.send(json_frame(104, {"conversation_id": "conv-1", "language": "en"}))
            await until(lambda: processor.call_of("cancel-close"), 10, "the call at the processor")
            await ws.close()
            times["cancel-close"] = time.monotonic()
            assert ws.close_code == 1000
            # A dropped TCP connection.
            ws = await connect(server, "cancel-drop")
            await ws.send(json_frame(104, {"conversation_id": "conv-2", "language": "en"}))
            await until(lambda: processor.call_of("cancel-drop"), 10, "the call at the processor")
            ws.transport.abort()
            times["cancel-drop"] = time.monotonic()
            for uid in ("cancel-close", "cancel-drop"):
                await until(lambda: processor.call_of(uid).t_eof, 10, f"{uid}: the processor's connection closed")
            await until_metric(server, "pusher_process_calls_cancelled_total", 2)

        asyncio.run(scenario())
        for uid in ("cancel-close", "cancel-drop"):
            call = processor.call_of(uid)
            assert call.request.startswith(b"POST /process HTTP/1.1\r\n"), call.request[:100]
            delay = call.t_eof - times[uid]
            assert delay <= 0.1, f"{uid}: the processor saw its connection closed {delay * 1000:.0f} ms after the client's close"
        wait_until(lambda: metric_sum(server.metrics(), "pusher_process_calls_in_flight") == 0, 5,
                   "no call in flight")
        text = server.metrics()
        assert metric_sum(text, "pusher_egress_requests_total", target="processor", result="cancelled") == 2
    finally:
        processor.stop()


# --- 5. accumulators only for audio consumers ----------------------------------------------------


def test_audio_accumulator_only_for_audio_consumers(driver, start_server, tmp_path, downstreams):
    d = downstreams()
    settings = write_settings(
        tmp_path,
        {
            "no-audio": {"apps": [app("app-t", d.url("/t"), "transcript_processed")]},
            "with-audio": {"apps": [app("app-a", d.url("/a"), "audio_bytes")]},
        },
    )
    server = start_server(driver, "--settings", settings)
    gauge = "pusher_audio_accumulator_bytes"

    def value() -> float:
        found = metric_sum(server.metrics(), gauge)
        assert found is not None, f"{gauge} is not exported"
        return found

    async def scenario():
        assert value() == 0
        ws = await connect(server, "no-audio")
        for i in range(12):
            await ws.send(audio_frame(T0 + i, os.urandom(16000)))
            if i % 3 == 2:
                await (await ws.ping())  # the pong comes after every frame before it was read
                assert value() == 0, f"after {i + 1} frames"
        await ws.close()
        assert value() == 0
        ws = await connect(server, "with-audio")
        await ws.send(audio_frame(T0, os.urandom(16000)))
        await (await ws.ping())
        assert value() > 0
        await ws.close()
        await until(lambda: value() == 0, 5, "the accumulator released at the session's end")

    asyncio.run(scenario())
    assert d.received("/t") == []


# --- 6. settings over HTTP -----------------------------------------------------------------------


def test_settings_over_http(driver, start_server, tmp_path, downstreams):
    targets = downstreams()

    def respond(request):
        uid = request.path.rsplit("/", 1)[-1]
        if uid == "http-user":
            return json_reply({
                "private_cloud_sync_enabled": False,
                "apps": [app("app-1", targets.url("/apps/http"), "transcript_processed")],
            })
        if uid == "broken":
            return json_reply({"error": "boom"}, status=500)
        if uid == "bad-json":
            return Reply(body=b"{not json")
        if uid == "slow":
            return json_reply({}, delay=3)
        return json_reply({"private_cloud_sync_enabled": False})

    settings = downstreams(respond)
    server = start_server(driver, "--settings-url", settings.url("/settings"), "--settings-timeout-ms", "1000")

    async def refused(uid: str) -> int:
        with pytest.raises(websockets.InvalidStatus) as error:
            ws = await connect(server, uid)
            await ws.close()
        return error.value.response.status_code

    async def scenario():
        ws = await connect(server, "http-user")
        await ws.send(transcript_frame('[{"text": "hi"}]', None))
        await until(lambda: targets.received("/apps/http"), 10, "the app delivery")
        await ws.close()
        assert await refused("broken") == 503
        assert await refused("bad-json") == 503
        assert await refused("slow") == 503

    asyncio.run(scenario())
    gets = settings.received("/settings/http-user")
    assert gets and all(r.method == "GET" for r in gets)
    [delivery] = targets.received("/apps/http")
    assert delivery.target == "/apps/http?uid=http-user"
    assert delivery.body == b'{"session_id":"http-user","segments":[{"text": "hi"}]}'
    for uid in ("broken", "bad-json", "slow"):
        assert settings.received(f"/settings/{uid}"), uid


# --- 7. response relay ---------------------------------------------------------------------------


def test_response_relay(driver, start_server, tmp_path, downstreams):
    # (app answer, realtime-webhook answer) per transcript, keyed by the segment's "case".
    answers = {
        "short": ({"message": "hello"}, {"message": "h\u00e9llo"}),  # 5 characters: not relayed
        "not-string": ({"message": 12345678}, {"message": ["a long message"]}),
        "long": ({"message": "hello there"}, {"message": "webhook says hi"}),
    }

    def respond(request):
        if request.path == "/apps/rl":
            if request.content_type == "application/octet-stream":
                return json_reply({"message": "audio reply!"})
            return json_reply(answers[request.json()["segments"][0]["case"]][0])
        if request.path == "/rt-rl":
            return json_reply(answers[request.json()["segments"][0]["case"]][1])
        return Reply()

    d = downstreams(respond)
    settings = write_settings(
        tmp_path,
        {
            "rl": {
                "realtime_transcript_webhook": d.url("/rt-rl"),
                "apps": [app("app-1", d.url("/apps/rl"), "transcript_processed", "audio_bytes")],
            }
        },
    )
    server = start_server(driver, "--settings", settings, "--response-relay-url", d.url("/relay"))

    async def scenario():
        ws = await connect(server, "rl")
        for case in ("short", "not-string", "long"):
            await ws.send(transcript_frame(f'[{{"case": "{case}"}}]', None))
        await until(lambda: len(d.received("/relay")) >= 2, 10, "two relays")
        for i in range(5):  # 80000 > 64000 bytes: one app-audio item
            await ws.send(audio_frame(T0 + i, os.urandom(16000)))
        await until(lambda: len(d.received("/relay")) >= 3, 10, "the audio answer's relay")
        await asyncio.sleep(0.3)
        await ws.close()

    asyncio.run(scenario())
    relays = d.received("/relay")
    for r in relays:
        assert (r.method, r.target, r.content_type) == ("POST", "/relay", "application/json")
    bodies = [r.json() for r in relays]
    assert sorted(bodies[:2], key=json.dumps) == sorted(
        [
            {"uid": "rl", "app_id": "app-1", "message": "hello there"},
            {"uid": "rl", "app_id": None, "message": "webhook says hi"},
        ],
        key=json.dumps,
    ), bodies
    assert bodies[2:] == [{"uid": "rl", "app_id": "app-1", "message": "audio reply!"}], bodies


def test_delivery_in_flight_finishes_after_session_end(driver, start_server, tmp_path, downstreams):
    """A client sends its last 102 and closes at once: the delivery already in flight is not
    cancelled with the session (only 104 calls are); it completes and counts as delivered."""
    gate = threading.Event()
    d = downstreams(lambda request: Reply(gate=gate))
    users = {"last-words": {"apps": [app("app-1", d.url("/app"), "transcript_processed")]}}
    server = start_server(driver, "--settings", write_settings(tmp_path, users))

    async def scenario():
        ws = await connect(server, "last-words")
        await ws.send(transcript_frame('[{"text": "bye"}]', None))
        await until(lambda: d.received("/app"), 10, "the delivery to be in flight")
        await ws.close()
        await until_metric(server, "pusher_sessions_closed_total", 1, code="1000")
        gate.set()
        await until_metric(server, "pusher_egress_requests_total", 1, target="app_transcript", result="delivered")

    asyncio.run(scenario())
    metrics = server.metrics()
    assert metric_sum(metrics, "pusher_egress_requests_total", target="app_transcript", result="cancelled") == 0
    assert [r.json()["segments"] for r in d.received("/app")] == [[{"text": "bye"}]]
