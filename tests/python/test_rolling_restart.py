"""A rolling restart under load, modelled on Omi's deployment (docs/protocol.md §5, §6).

Two pusher "pods" share one object store (`file://`), each with its own data dir, behind a
readiness-aware TCP balancer (balancer.py: new connections only to backends whose last `/ready`
check, every 2 s, was 200). 44 sessions behave as the listen service does (omi_listen.py: one
shared circuit breaker, 5 connect tries with backoff, a 101 and a 102 every second, 103/104 per
conversation, reconnect on the next send after any server close). With the load running, each pod
in turn gets the chart's preStop drain (`POST /__internal/drain`), a few seconds for the balancer
to see `503` and for sessions to move (the drain grace is shorter, so sessions still open are
closed with 1001 mid-stream), SIGTERM, a restart on its own data dir, and `/ready` 200 again.

Judged: the breaker never opened, no connect attempt failed (a draining pusher completes the
upgrade and then closes; an HTTP refusal would count against the whole listen pod), every pod
exited 0, and every audio frame whose `send` returned is in the store exactly once.
"""

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from balancer import Balancer, http_request
from conftest import metric_value
from omi_listen import (
    FRAME_BYTES,
    CircuitBreaker,
    ListenSession,
    ListenStats,
    conversation_id,
    parse_pcm,
    uid_of,
)
from pods import Pod

SESSIONS = 44
DRAIN_GRACE_MS = 2500  # shorter than the wait below: sessions still open get 1001 mid-stream
CHECK_INTERVAL_S = 2.0  # the balancer's readiness checks (endpoint updates lag)
WARMUP_S = 10.0
AFTER_DRAIN_S = 4.0  # drain → SIGTERM: the balancer sees 503, sessions move
EXIT_WAIT_S = 20.0
TAIL_S = 5.0
STORE_WAIT_S = 60.0
SETTLED_S = 5.0  # no batch pending anywhere and the store unchanged this long: nothing more comes


READY_PATH = "/ready"  # the chart's readiness probe


@dataclass
class Run:
    driver: str
    tmp: Path
    pods: list = field(default_factory=list)
    timeline: list = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def note(self, what: str) -> None:
        self.timeline.append(f"{time.monotonic() - self.started:5.1f}s {what}")

    def logs(self) -> str:
        return "; ".join(f"{p.name}: {p.logs()}" for p in self.pods)


def write_settings(path: Path) -> Path:
    """Every user stores private-cloud audio at level `standard`: plain `.bin` objects."""
    path.write_text('[default]\nprivate_cloud_sync_enabled = true\ndata_protection_level = "standard"\n')
    return path


# --- pod control ---------------------------------------------------------------------------------


async def get_json(pod: Pod, method: str, path: str) -> tuple[int, object]:
    status, body = await http_request("127.0.0.1", pod.port, method, path, timeout=5)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body[:200]


async def wait_pod_ready(run: Run, pod: Pod, timeout: float = 20.0) -> None:
    """`GET /ready` answers `200 {"status":"ready"}` within `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = await get_json(pod, "GET", READY_PATH)
        except (OSError, TimeoutError) as error:
            last = repr(error)
        if last == (200, {"status": "ready"}):
            return
        if isinstance(last, tuple) and last[0] == 404:
            break  # the route does not exist: waiting will not help
        await asyncio.sleep(0.1)
    raise AssertionError(
        f"{pod.name}: GET {READY_PATH} answered {last!r}, want 200 {{'status': 'ready'}} "
        f"(log: {pod.log_path})"
    )


async def roll(run: Run, pod: Pod, balancer: Balancer) -> None:
    """The chart's termination of one pod (preStop drain, wait, SIGTERM), then its replacement."""
    answer = await get_json(pod, "POST", "/__internal/drain")
    run.note(f"{pod.name}: POST /__internal/drain -> {answer}")
    assert answer == (200, {"status": "draining"}), (
        f"{pod.name}: POST /__internal/drain answered {answer!r}, want 200 {{'status': 'draining'}} "
        f"(log: {pod.log_path})"
    )
    ready = await get_json(pod, "GET", READY_PATH)
    assert ready == (503, {"status": "draining"}), (
        f"{pod.name}: GET {READY_PATH} while draining answered {ready!r}, want 503 "
        f"{{'status': 'draining'}} (log: {pod.log_path})"
    )
    await asyncio.sleep(AFTER_DRAIN_S)
    assert not balancer.is_ready(pod.name), (
        f"{pod.name}: the balancer still routes to it {AFTER_DRAIN_S} s into the drain: {balancer.describe()}"
    )
    assert pod.process.poll() is None, (
        f"{pod.name} exited on the drain request alone (code {pod.process.returncode}); the drain must "
        f"not exit before SIGTERM (log: {pod.log_path})"
    )
    pod.terminate()
    run.note(f"{pod.name}: SIGTERM")
    code = await asyncio.to_thread(pod.wait, EXIT_WAIT_S)
    run.note(f"{pod.name}: exited with {code}")
    assert code is not None, f"{pod.name} still running {EXIT_WAIT_S} s after SIGTERM (log: {pod.log_path})"
    assert code == 0, f"{pod.name} exited with {code} after the drain, want 0 (log: {pod.log_path})"
    await asyncio.to_thread(pod.start)
    run.note(f"{pod.name}: restarted on port {pod.port}")
    await wait_pod_ready(run, pod)
    balancer.set_backend(pod.name, pod.port)
    # A rolling update moves on once the new pod is an endpoint again.
    assert await balancer.wait_ready(pod.name, 3 * CHECK_INTERVAL_S + 2), balancer.describe()
    run.note(f"{pod.name}: ready, back in the balancer")


# --- the store -----------------------------------------------------------------------------------


@dataclass
class StoreTally:
    objects: int = 0
    frames: Counter = field(default_factory=Counter)  # (session, seq) -> times stored
    problems: list = field(default_factory=list)  # wrong extension, partial frames, foreign bytes


def tally_store(root: Path) -> StoreTally:
    """Every object under `<store>/chunks/` split into frames and identified
    (docs/downstream.md §2: `chunks/{uid}/{conversation_id}/{timestamp}.bin`, the PCM of a batch's
    frames in order)."""
    tally = StoreTally()
    chunks = root / "chunks"
    if not chunks.exists():
        return tally
    for path in sorted(chunks.rglob("*")):
        if not path.is_file() or "#" in path.name:  # object_store's staging files are not objects
            continue
        key = path.relative_to(root).as_posix()
        tally.objects += 1
        parts = key.split("/")
        if len(parts) != 4 or not key.endswith(".bin"):
            tally.problems.append(f"{key}: not chunks/<uid>/<conversation>/<timestamp>.bin")
            continue
        body = path.read_bytes()
        if len(body) % FRAME_BYTES:
            tally.problems.append(f"{key}: {len(body)} bytes is not a whole number of frames")
        for offset in range(0, len(body) - len(body) % FRAME_BYTES, FRAME_BYTES):
            found = parse_pcm(body[offset : offset + FRAME_BYTES])
            if found is None:
                tally.problems.append(f"{key}: bytes {offset}.. are not one of the frames sent")
                continue
            session, conversation, seq = found
            if (parts[1], parts[2]) != (uid_of(session), conversation_id(session, conversation)):
                tally.problems.append(
                    f"{key}: frame {session}/{seq} belongs to {uid_of(session)}/{conversation_id(session, conversation)}"
                )
            tally.frames[(session, seq)] += 1
    return tally


def pending_batches(pod: Pod) -> float:
    try:
        return metric_value(pod.metrics(), "pusher_spill_pending_batches")
    except (OSError, KeyError):
        return 0.0  # not reachable or no such metric: the store comparison decides


async def wait_for_store(run: Run, store: Path, stats: ListenStats) -> StoreTally:
    """Until every frame sent is stored and no pod has a batch pending; or, with frames still
    missing, until no pod has had a batch pending and the store has not changed for SETTLED_S;
    at most STORE_WAIT_S."""
    deadline = time.monotonic() + STORE_WAIT_S
    last, settled_since = None, None
    while True:
        tally = await asyncio.to_thread(tally_store, store)
        missing = stats.sent.keys() - tally.frames.keys()
        pending = [await asyncio.to_thread(pending_batches, pod) for pod in run.pods]
        snapshot = (tally.objects, sum(tally.frames.values()))
        now = time.monotonic()
        if any(pending) or snapshot != last:
            last, settled_since = snapshot, now
        settled = now - settled_since >= SETTLED_S
        if (not missing and not any(pending)) or settled or now > deadline:
            run.note(
                f"store: {len(missing)} frames missing, pending batches {pending}"
                + (f" (settled for {SETTLED_S:.0f} s)" if missing and settled else "")
            )
            return tally
        await asyncio.sleep(0.5)


# --- the scenario --------------------------------------------------------------------------------


async def scenario(run: Run, store: Path, settings: Path, seed: int):
    rng = random.Random(seed)
    args = ["--store", f"file://{store}", "--settings", str(settings), "--drain-grace-ms", str(DRAIN_GRACE_MS)]
    run.pods = [Pod(name, run.driver, run.tmp, args) for name in ("pod-a", "pod-b")]
    for pod in run.pods:
        await asyncio.to_thread(pod.start)
        await wait_pod_ready(run, pod)
    balancer = await Balancer(READY_PATH, CHECK_INTERVAL_S).start()
    breaker = CircuitBreaker()
    stats = ListenStats(t0=run.started)
    stop = asyncio.Event()
    tasks = []
    try:
        for pod in run.pods:
            balancer.set_backend(pod.name, pod.port)
        for pod in run.pods:
            assert await balancer.wait_ready(pod.name, 3 * CHECK_INTERVAL_S), balancer.describe()
        run.note("pods ready, balancer routing")
        sessions = [
            ListenSession(i, balancer.url, breaker, stats, random.Random(rng.random())) for i in range(SESSIONS)
        ]
        tasks = [asyncio.create_task(s.run(stop), name=s.uid) for s in sessions]
        await asyncio.sleep(WARMUP_S)
        run.note(f"warm-up done: {len(stats.sent)} frames sent, {stats.connects} connects")
        for pod in run.pods:
            await roll(run, pod, balancer)
        await asyncio.sleep(TAIL_S)
        stop.set()
        run.note("clients stopping")
        done, pending = await asyncio.wait(tasks, timeout=20)
        assert not pending, f"{len(pending)} sessions did not stop within 20 s"
        run.note(f"clients stopped: {stats.summary()}")
        tally = await wait_for_store(run, store, stats)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await balancer.stop()
    return breaker, stats, balancer, tally


SEED = 20240607


def test_rolling_restart_loses_nothing(driver, tmp_path):
    roll_and_judge(driver, tmp_path, SEED)


def roll_and_judge(driver: str, tmp_path: Path, seed: int) -> None:
    store = tmp_path / "store"
    store.mkdir()
    settings = write_settings(tmp_path / "settings.toml")
    run = Run(driver, tmp_path)
    try:
        breaker, stats, balancer, tally = asyncio.run(scenario(run, store, settings, seed))
    except BaseException:
        print(f"\n[{driver}] timeline:\n  " + "\n  ".join(run.timeline) + f"\n  logs: {run.logs()}")
        raise
    finally:
        for pod in run.pods:
            pod.stop()

    missing = sorted(stats.sent.keys() - tally.frames.keys())
    duplicates = sorted(k for k, n in tally.frames.items() if n > 1)
    unknown = sorted(tally.frames.keys() - stats.sent.keys() - stats.send_failed)
    stored_after_failed_send = len(tally.frames.keys() & stats.send_failed)

    def explain(keys) -> str:
        lines = []
        for key in keys[:10]:
            line = stats.explain(key)
            if key in stats.sent_on:
                port = stats.connections[stats.sent_on[key][0]].local_port
                line += f" via {balancer.routes.get(port, '?')}"
            lines.append(line)
        return "\n    " + "\n    ".join(lines) if lines else ""

    summary = (
        f"\n[{driver}] rolling restart, seed {seed}: {SESSIONS} sessions; {stats.summary()}; breaker opened "
        f"{breaker.opened}x, blocked {breaker.blocked}; store: {tally.objects} objects, "
        f"{sum(tally.frames.values())} frames ({len(missing)} missing, {len(duplicates)} duplicated, "
        f"{stored_after_failed_send} stored although their send raised){explain(missing)}\n  {balancer.describe()}\n  "
        + "\n  ".join(run.timeline)
        + f"\n  logs: {run.logs()}"
    )
    print(summary)

    assert not stats.errors, f"session tasks failed (harness bug): {stats.errors[:5]}{summary}"
    assert breaker.opened == 0, f"the listen pod's circuit breaker opened{summary}"
    assert not stats.connect_failures, (
        f"{len(stats.connect_failures)} connect attempts failed (a draining or full pusher must complete "
        f"the upgrade and then close): first {stats.connect_failures[:5]}{summary}"
    )
    assert stats.server_closes[1001] > 0, f"no session was closed with 1001 by a drain{summary}"
    assert len(stats.sent) >= SESSIONS * 10, f"too little audio sent to judge{summary}"
    assert not tally.problems, f"store objects that are not what was sent: {tally.problems[:5]}{summary}"
    assert not missing, f"{len(missing)} frames whose send returned are not in the store: {explain(missing)}{summary}"
    assert not duplicates, f"{len(duplicates)} frames stored more than once: {duplicates[:10]}{summary}"
    assert not unknown, f"frames stored that were never sent: {unknown[:10]}{summary}"
