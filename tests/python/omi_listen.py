"""A model of the Omi listen service's pusher client (docs/protocol.md §6), for tests that put
many such sessions through restarts of pusher.

- One `CircuitBreaker` shared by every session of the "listen pod": every failed connect attempt
  (any non-101 answer, refused or reset connection, timeout) counts; 20 failures within 30 s open
  it for 60 s, then one probe connect is let through.
- Per connect: up to 5 tries, waiting `min(2^n s + jitter(0-1 s), 15 s)` between them;
  `websockets.connect(url, ping_interval=30, ping_timeout=60, close_timeout=3)`.
- Every second: a 103 when the connection has not had the current conversation yet, one 101
  (audio) and one 102 (transcript). A conversation lasts a random 4-15 s, then a 104 is sent and its
  201 read, the session closes normally and starts again with a new conversation.
- A connection closed by the server (any code) is reconnected on the next send; audio whose send
  raised is gone (the client dropped it from its buffer before the send).

Every audio frame is identifiable: its PCM (FRAME_BYTES) starts with MAGIC, the session index,
the conversation number and the session's frame sequence number, followed by filler derived from
those, so a frame read back from the store is recognised and checked byte for byte.
"""

import asyncio
import collections
import hashlib
import json
import random
import struct
import time
from dataclasses import dataclass, field

import websockets
from websockets.protocol import State

MAGIC = b"RRS1"
SAMPLE_RATE = 16000
FRAME_BYTES = 3200  # 0.1 s of PCM16 mono at 16 kHz
_HEAD = struct.Struct("<4sIII")  # magic, session index, conversation number, sequence number
T0 = 1_700_000_000.0

BREAKER_THRESHOLD = 20
BREAKER_WINDOW_S = 30.0
BREAKER_COOLDOWN_S = 60.0
CONNECT_TRIES = 5
BACKOFF_CAP_S = 15.0


# --- frames --------------------------------------------------------------------------------------


def uid_of(session: int) -> str:
    return f"roll-{session:03d}"


def conversation_id(session: int, number: int) -> str:
    return f"roll-{session:03d}-c{number}"


def pcm_of(session: int, conversation: int, seq: int) -> bytes:
    """The FRAME_BYTES of PCM that identify one frame."""
    head = _HEAD.pack(MAGIC, session, conversation, seq)
    filler = hashlib.blake2b(head, digest_size=64).digest()
    body = (filler * (FRAME_BYTES // len(filler) + 1))[: FRAME_BYTES - len(head)]
    return head + body


def parse_pcm(pcm: bytes) -> tuple[int, int, int] | None:
    """(session, conversation, seq) of a stored frame, or None if it is not exactly one of ours."""
    if len(pcm) != FRAME_BYTES:
        return None
    magic, session, conversation, seq = _HEAD.unpack_from(pcm)
    if magic != MAGIC or pcm != pcm_of(session, conversation, seq):
        return None
    return session, conversation, seq


def frame(header: int, payload: bytes = b"") -> bytes:
    return struct.pack("<I", header) + payload


def audio_message(session: int, conversation: int, seq: int) -> bytes:
    timestamp = T0 + session * 100_000 + seq  # unique per session: batch keys never collide
    return frame(101, struct.pack("<d", timestamp) + pcm_of(session, conversation, seq))


def transcript_message(seq: int, conversation: str) -> bytes:
    segments = [{"text": f"words {seq}", "speaker": "SPEAKER_00", "start": float(seq), "end": seq + 1.0}]
    return frame(102, json.dumps({"segments": segments, "memory_id": conversation}).encode())


def describe_error(error: BaseException) -> str:
    """A short account of a failed connect: `HTTP 503 <body>` for a non-101 answer."""
    if isinstance(error, websockets.InvalidStatus):
        response = error.response
        return f"HTTP {response.status_code} {bytes(response.body or b'')[:80]!r}"
    return repr(error)[:200]


# --- the shared circuit breaker ------------------------------------------------------------------


class CircuitBreaker:
    def __init__(
        self,
        threshold: int = BREAKER_THRESHOLD,
        window: float = BREAKER_WINDOW_S,
        cooldown: float = BREAKER_COOLDOWN_S,
        clock=time.monotonic,
    ):
        self.threshold, self.window, self.cooldown, self.clock = threshold, window, cooldown, clock
        self.failures: collections.deque = collections.deque()
        self.open_until: float | None = None
        self.probe_in_flight = False
        self.opened = 0  # times it opened
        self.blocked = 0  # connects it turned away

    def allow(self) -> bool:
        if self.open_until is None:
            return True
        if self.clock() < self.open_until or self.probe_in_flight:
            self.blocked += 1
            return False
        self.probe_in_flight = True  # half open: one probe
        return True

    def success(self) -> None:
        if self.open_until is not None:
            self.open_until, self.probe_in_flight = None, False
            self.failures.clear()

    def failure(self) -> None:
        now = self.clock()
        if self.open_until is not None:
            # The probe failed: open again.
            self.open_until, self.probe_in_flight = now + self.cooldown, False
            self.opened += 1
            return
        self.failures.append(now)
        while self.failures and self.failures[0] < now - self.window:
            self.failures.popleft()
        if len(self.failures) >= self.threshold:
            self.open_until = now + self.cooldown
            self.opened += 1

    @property
    def is_open(self) -> bool:
        return self.open_until is not None


# --- what the sessions saw -----------------------------------------------------------------------


@dataclass
class Connection:
    """One WebSocket connection of a session, for explaining a lost frame."""

    uid: str
    local_port: int
    opened: float
    closed: float | None = None
    end: str = "open"  # "server close 1001", "client close 1000", "dropped", ...


@dataclass
class ListenStats:
    t0: float = field(default_factory=time.monotonic)
    connections: list = field(default_factory=list)  # Connection
    sent_on: dict = field(default_factory=dict)  # (session, seq) -> (connection index, time sent)
    connect_attempts: int = 0
    connects: int = 0
    connect_failures: list = field(default_factory=list)  # (t, uid, repr(error))
    connects_given_up: int = 0  # a send found no connection after all tries
    server_closes: collections.Counter = field(default_factory=collections.Counter)  # close code -> n
    # of those, within 0.5 s of the upgrade (a draining or full pusher turning a session away)
    closed_at_once: collections.Counter = field(default_factory=collections.Counter)
    dropped_connections: int = 0  # ended without a close frame from either side
    conversations: int = 0
    sent: dict = field(default_factory=dict)  # (session, seq) -> conversation number; send returned
    send_failed: set = field(default_factory=set)  # (session, seq) whose send raised
    transcripts: int = 0
    requests_104: int = 0
    answers_201: int = 0
    answer_errors: collections.Counter = field(default_factory=collections.Counter)
    unanswered_104: int = 0  # conversations given up on without a 201
    normal_closes: int = 0
    errors: list = field(default_factory=list)  # unexpected exceptions in a session task

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def explain(self, key: tuple[int, int]) -> str:
        """Where and when frame `key` was sent."""
        session, seq = key
        if key not in self.sent_on:
            return f"{uid_of(session)} #{seq}: not sent"
        index, at = self.sent_on[key]
        c = self.connections[index]
        return (
            f"{uid_of(session)} #{seq} (conversation {self.sent[key]}) sent at {at}s on connection {index} "
            f"(client port {c.local_port}, opened {c.opened}s, ended {c.closed}s: {c.end})"
        )

    def summary(self) -> str:
        codes = (
            ", ".join(
                f"{code}: {n} ({self.closed_at_once[code]} at once)" for code, n in sorted(self.server_closes.items())
            )
            or "none"
        )
        return (
            f"connect attempts {self.connect_attempts} ({self.connects} ok, {len(self.connect_failures)} failed, "
            f"{self.connects_given_up} given up); server closes by code {{{codes}}}, "
            f"{self.dropped_connections} dropped; conversations {self.conversations}; audio frames sent "
            f"{len(self.sent)} (+{len(self.send_failed)} whose send raised); 102s {self.transcripts}; "
            f"104s {self.requests_104}, 201s {self.answers_201} {dict(self.answer_errors)}, "
            f"{self.unanswered_104} unanswered"
        )


# --- one session ---------------------------------------------------------------------------------


class ListenSession:
    """One transcription session of the listen service, looping over conversations until `stop`."""

    def __init__(self, index: int, base_url: str, breaker: CircuitBreaker, stats: ListenStats, rng: random.Random):
        self.index = index
        self.uid = uid_of(index)
        self.url = f"{base_url}/v1/trigger/listen?uid={self.uid}&sample_rate={SAMPLE_RATE}"
        self.breaker, self.stats, self.rng = breaker, stats, rng
        self.ws = None
        self.reader: asyncio.Task | None = None
        self.has_conversation = False  # this connection was told the current conversation
        self.answers: dict[str, asyncio.Event] = {}
        self.seq = 0
        self.connection = -1  # index in stats.connections

    # -- connection --

    def _open(self) -> bool:
        return self.ws is not None and self.ws.state is State.OPEN

    async def _connect_once(self) -> bool | None:
        """True: connected; False: the attempt failed; None: the breaker is open (no attempt)."""
        if not self.breaker.allow():
            return None
        self.stats.connect_attempts += 1
        try:
            ws = await websockets.connect(
                self.url, ping_interval=30, ping_timeout=60, close_timeout=3, proxy=None
            )
        except asyncio.CancelledError:
            raise
        except Exception as error:  # non-101, refused, reset, timeout: all failures
            self.breaker.failure()
            self.stats.connect_failures.append((self.stats.now(), self.uid, describe_error(error)))
            return False
        self.breaker.success()
        self.stats.connects += 1
        self.ws = ws
        self.has_conversation = False
        sockname = ws.transport.get_extra_info("sockname")
        self.connection = len(self.stats.connections)
        self.stats.connections.append(Connection(self.uid, sockname[1] if sockname else 0, self.stats.now()))
        self.reader = asyncio.create_task(self._read(ws, self.stats.connections[-1]), name=f"read-{self.uid}")
        return True

    async def connect(self, stop: asyncio.Event | None = None) -> bool:
        """Up to CONNECT_TRIES tries with exponential backoff; False if all failed (or the
        breaker is open)."""
        for attempt in range(CONNECT_TRIES):
            if attempt:
                await asyncio.sleep(min(2 ** (attempt - 1) + self.rng.random(), BACKOFF_CAP_S))
                if stop is not None and stop.is_set():
                    return False
            outcome = await self._connect_once()
            if outcome is None:
                return False  # the breaker is open: no session of this listen pod connects
            if outcome:
                return True
        self.stats.connects_given_up += 1
        return False

    async def _read(self, ws, connection: Connection) -> None:
        """Reads 201s until the connection ends; records who closed it and with what code."""
        try:
            async for message in ws:
                if isinstance(message, bytes) and len(message) >= 4 and struct.unpack_from("<I", message)[0] == 201:
                    body = json.loads(message[4:])
                    self.stats.answers_201 += 1
                    if "error" in body:
                        self.stats.answer_errors[body["error"]] += 1
                    event = self.answers.get(body.get("conversation_id"))
                    if event is not None:
                        event.set()
        except websockets.ConnectionClosed:
            pass
        protocol = ws.protocol
        connection.closed = self.stats.now()
        if protocol.close_rcvd is not None and protocol.close_rcvd_then_sent:
            self.stats.server_closes[protocol.close_rcvd.code] += 1
            if connection.closed - connection.opened < 0.5:
                self.stats.closed_at_once[protocol.close_rcvd.code] += 1
            connection.end = f"server close {protocol.close_rcvd.code}"
        elif protocol.close_rcvd is None and protocol.close_sent is None:
            self.stats.dropped_connections += 1
            connection.end = "dropped"
        else:
            sent = protocol.close_sent.code if protocol.close_sent else None
            rcvd = protocol.close_rcvd.code if protocol.close_rcvd else None
            connection.end = f"client close {sent} (answer {rcvd})"

    async def _send(self, message: bytes) -> bool:
        try:
            await self.ws.send(message)
            return True
        except websockets.ConnectionClosed:
            return False

    async def close(self) -> None:
        ws, reader = self.ws, self.reader
        self.ws = self.reader = None
        if ws is None:
            return
        await ws.close()  # a normal close; waits up to close_timeout for pusher's Close
        protocol = ws.protocol
        if protocol.close_sent is not None and protocol.close_sent.code == 1000 and not protocol.close_rcvd_then_sent:
            self.stats.normal_closes += 1
        if reader is not None:
            await reader

    # -- the loop --

    async def _tick(self, conversation_number: int) -> None:
        """One second's sends: (re)connect if needed, the 103 if this connection lacks it, a 101,
        a 102."""
        conversation = conversation_id(self.index, conversation_number)
        if not self._open():
            if not await self.connect():
                return
        if not self.has_conversation:
            if not await self._send(frame(103, conversation.encode())):
                self._lost_frame(conversation_number)
                return
            self.has_conversation = True
        self.seq += 1
        key = (self.index, self.seq)
        if await self._send(audio_message(self.index, conversation_number, self.seq)):
            self.stats.sent[key] = conversation_number
            self.stats.sent_on[key] = (self.connection, self.stats.now())
        else:
            self.stats.send_failed.add(key)
            return
        if await self._send(transcript_message(self.seq, conversation)):
            self.stats.transcripts += 1

    def _lost_frame(self, conversation_number: int) -> None:
        # The audio of this second was handed to a send that could not happen: gone, as in Omi.
        self.seq += 1
        self.stats.send_failed.add((self.index, self.seq))

    async def _end_conversation(self, conversation_number: int, stop: asyncio.Event) -> None:
        """104 and its 201; a connection closed before the 201 is reconnected and the 104 resent."""
        conversation = conversation_id(self.index, conversation_number)
        event = self.answers[conversation] = asyncio.Event()
        try:
            for _ in range(3):
                if not self._open() and not await self.connect(stop):
                    continue
                self.stats.requests_104 += 1
                if not await self._send(frame(104, json.dumps({"conversation_id": conversation}).encode())):
                    continue
                waiter = asyncio.create_task(event.wait())
                await asyncio.wait({waiter, self.reader}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if event.is_set():
                    return
            self.stats.unanswered_104 += 1
        finally:
            del self.answers[conversation]

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await asyncio.sleep(self.rng.random())  # sessions start independently
            number = 0
            while not stop.is_set():
                number += 1
                self.stats.conversations += 1
                self.has_conversation = False
                length = self.rng.uniform(4.0, 15.0)
                loop = asyncio.get_running_loop()
                start = loop.time()
                ticks = 0
                while not stop.is_set() and loop.time() - start < length:
                    await self._tick(number)
                    ticks += 1
                    delay = start + ticks - loop.time()
                    if delay > 0:
                        try:
                            await asyncio.wait_for(stop.wait(), delay)
                        except TimeoutError:
                            pass
                if not stop.is_set():
                    await self._end_conversation(number, stop)
                await self.close()
        except asyncio.CancelledError:
            if self.ws is not None:
                self.ws.transport.abort()
            raise
        except Exception as error:  # a bug in the harness: surface it
            self.stats.errors.append(f"{self.uid}: {error!r}")
            if self.ws is not None:
                self.ws.transport.abort()
