"""A real Prometheus scrapes pusher (Debian's `prometheus` and `promtool`, installed by `make
test`): the classic text format by default, OpenMetrics when the scraper asks for it, and the
gauges Omi's dashboards read."""

import asyncio
import http.server
import json
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request

import pytest
import websockets

from conftest import free_port, stop_process, wait_until

CLASSIC = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# What Prometheus 2.42 sends.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: `make test` installs Debian's prometheus package")
    return path


def get(url: str, accept: str | None = None) -> tuple[str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.headers["Content-Type"], response.read().decode()


class ClassicOnlyProxy:
    """Forwards `/metrics` to pusher with `Accept: text/plain;version=0.0.4`: a scraper that
    reads only the classic text format (Prometheus 2.42 itself prefers OpenMetrics)."""

    def __init__(self, upstream: str):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                content_type, body = get(upstream + self.path, accept="text/plain;version=0.0.4")
                proxy.content_types.add(content_type)
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.content_types: set[str] = set()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


class Prometheus:
    def __init__(self, tmp, targets: dict[str, str]):
        self.port = free_port()
        jobs = "".join(
            f'  - job_name: {job}\n    static_configs:\n      - targets: ["{target}"]\n'
            for job, target in targets.items()
        )
        config = tmp / "prometheus.yml"
        config.write_text(f"global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{jobs}")
        self.log = open(tmp / "prometheus.log", "w")
        self.process = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())["data"]

    def targets(self) -> dict[str, dict]:
        try:
            return {t["labels"]["job"]: t for t in self.api("targets")["activeTargets"]}
        except OSError:
            return {}

    def value(self, query: str, job: str) -> float | None:
        try:
            result = self.api("query", query=f'{query}{{job="{job}"}}')["result"]
        except OSError:
            return None
        return float(result[0]["value"][1]) if result else None

    def stop(self):
        stop_process(self.process)
        self.log.close()


def test_promtool_accepts_the_default_exposition(driver, start_server):
    server = start_server(driver)
    content_type, body = get(server.http + "/metrics")
    assert content_type == CLASSIC
    assert "# EOF" not in body and " info\n" not in body
    check = subprocess.run([tool("promtool"), "check", "metrics"], input=body, capture_output=True, text=True)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), (
        f"promtool: {check.returncode}\n{check.stdout}\n{check.stderr}"
    )
    for gauge in ["pusher_active_ws_connections", "pusher_ready", "pusher_drain_in_progress"]:
        assert f"# TYPE {gauge} gauge" in body, gauge
    content_type, body = get(server.http + "/metrics", accept=PROMETHEUS_ACCEPT)
    assert content_type == OPENMETRICS
    assert body.endswith("# EOF\n") and "# TYPE pusher_driver info" in body


def test_a_real_prometheus_scrapes_both_formats(driver, start_server, tmp_path):
    server = start_server(driver)
    proxy = ClassicOnlyProxy(server.http)
    prometheus = Prometheus(tmp_path, {"pusher": f"127.0.0.1:{server.port}", "classic": f"127.0.0.1:{proxy.port}"})

    async def hold_a_session(ready: threading.Event, done: threading.Event):
        url = f"{server.url}/v1/trigger/listen?uid=scraped&sample_rate=16000"
        async with websockets.connect(url, ping_interval=30, ping_timeout=60, close_timeout=3):
            ready.set()
            while not done.is_set():
                await asyncio.sleep(0.05)

    ready, done = threading.Event(), threading.Event()
    session = threading.Thread(target=lambda: asyncio.run(hold_a_session(ready, done)))
    session.start()
    try:
        assert ready.wait(10), "the session opened"

        def both_up():
            targets = prometheus.targets()
            return all(targets.get(job, {}).get("health") == "up" for job in ("pusher", "classic")) and targets

        try:
            wait_until(both_up, 30, "both scrape targets up")
        except BaseException:
            print("targets:", json.dumps(prometheus.targets(), indent=1))
            raise
        assert proxy.content_types == {CLASSIC}
        for job in ("pusher", "classic"):
            wait_until(lambda: prometheus.value("pusher_active_ws_connections", job) == 1, 15, f"{job}: 1 session")
            assert prometheus.value("pusher_ready", job) == 1
            assert prometheus.value("pusher_drain_in_progress", job) == 0
            assert prometheus.value("pusher_driver_info", job) == 1
        drain = urllib.request.Request(server.http + "/__internal/drain", method="POST", data=b"")
        with urllib.request.urlopen(drain, timeout=5) as response:
            assert response.status == 200
        for job in ("pusher", "classic"):
            wait_until(lambda: prometheus.value("pusher_drain_in_progress", job) == 1, 15, f"{job}: draining")
            assert prometheus.value("pusher_ready", job) == 0
    finally:
        done.set()
        session.join(10)
        prometheus.stop()
        proxy.stop()
