"""Fixtures that start the real pusher binary on loopback, once per io driver."""

import http.client
import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The release binary: PUSHER_BINARY (the Makefile sets it), else under CARGO_TARGET_DIR or target/.
BINARY = Path(
    os.environ.get("PUSHER_BINARY")
    or Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "release" / "pusher"
)
DRIVERS = ["uring", "epoll"]
TEST_ENCRYPTION_SECRET = "python-test-secret-0123456789abcdef0123"



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running pusher. `extra_env` is added to (and overrides) the environment, a None value
    removes the variable; every start on
    the same `tmp` shares `<tmp>/data` (a restart finds the previous process's spill log), each
    start logs to its own file."""

    def __init__(self, driver: str, extra_args: list[str], tmp: Path, extra_env: dict | None = None):
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.http = f"http://127.0.0.1:{self.port}"
        self.driver = driver
        self.extra_args = list(extra_args)
        self.extra_env = dict(extra_env or {})
        args = [
            str(BINARY),
            "serve",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--workers",
            "2",
            "--driver",
            driver,
            "--data-dir",
            str(tmp / "data"),
            *extra_args,
        ]
        self.log_path = tmp / f"pusher-{driver}.log"
        restart = 1
        while self.log_path.exists():
            restart += 1
            self.log_path = tmp / f"pusher-{driver}-{restart}.log"
        self.log = open(self.log_path, "w")
        env = dict(os.environ, PUSHER_ENCRYPTION_SECRET=TEST_ENCRYPTION_SECRET)
        for key, value in self.extra_env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        self.data_dir = tmp / "data"
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pusher exited with {self.process.returncode}: {self.log_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.http + "/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("pusher did not become healthy in 20 s")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.http + "/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str) -> float:
        return metric_value(self.metrics(), name)

    def rss_bytes(self) -> int:
        """Resident set size of the server process, from /proc/<pid>/status."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS line")

    def log_text(self) -> str:
        """The server's log so far, without terminal colour codes."""
        self.log.flush()
        return re.sub(r"\x1b\[[0-9;]*m", "", self.log_path.read_text(errors="replace"))

    def kill(self) -> None:
        """SIGKILL: no drain, no flush, nothing the process could still do."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            stop_process(self.process)
        self.log.close()


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it is still running 10 s later."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(params=DRIVERS)
def driver(request) -> str:
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run `make build` first")
    return request.param


@pytest.fixture
def start_server(tmp_path):
    servers = []

    def start(driver: str, *extra_args: str, env: dict | None = None) -> Server:
        server = Server(driver, list(extra_args), tmp_path, env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def metric_value(text: str, name: str) -> float:
    """The value of one sample line `name value` in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise KeyError(name)


def env_without_proxy() -> dict:
    env = dict(os.environ)
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(key, None)
    return env


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Polls `predicate` until it returns a truthy value (returned) or fails after `timeout` s,
    naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


# --- S3: a local moto_server, and a fault-injecting reverse proxy in front of it ----------------

S3_ACCESS_KEY = "test-access-key"
S3_SECRET_KEY = "test-secret-key"
S3_REGION = "us-east-1"


class Moto:
    """A `moto_server` child on a free loopback port (S3 API, path-style URLs)."""

    def __init__(self, log_path: Path):
        exe = shutil.which("moto_server")
        if exe is None:
            pytest.fail(
                "moto_server is not installed: pip install 'moto[server]' (tests/python/requirements.txt)"
            )
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env_without_proxy(),
        )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"moto_server exited at start with {self.process.returncode} (log: {log_path})")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("moto_server did not listen within 30 s")
                time.sleep(0.05)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def create_bucket(self, bucket: str) -> None:
        status, body = self.request("PUT", f"/{bucket}")
        assert status == 200, f"creating bucket {bucket}: {status} {body[:200]!r}"

    def client(self):
        """A boto3 S3 client that talks to moto directly (not through any proxy)."""
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            pytest.fail("boto3 is not installed (it comes with moto[server], tests/python/requirements.txt)")
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
            region_name=S3_REGION,
            config=Config(s3={"addressing_style": "path"}, proxies={}),
        )

    def objects(self, bucket: str, prefix: str) -> dict[str, bytes]:
        """Every object under `prefix` in `bucket`: key -> body."""
        s3 = self.client()
        found = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        return found

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = Moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


def s3_env(endpoint: str) -> dict:
    """The environment that points pusher's `s3://` store at `endpoint` (object_store reads AWS_*);
    None removes a variable."""
    removed = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "AWS_CA_BUNDLE")
    env: dict = {key: None for key in removed}
    env.update(
        AWS_ACCESS_KEY_ID=S3_ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=S3_SECRET_KEY,
        AWS_DEFAULT_REGION=S3_REGION,
        AWS_REGION=S3_REGION,
        AWS_ENDPOINT=endpoint,
        AWS_ALLOW_HTTP="true",
    )
    return env


HOP_BY_HOP = ("connection", "keep-alive", "transfer-encoding")


class FaultProxy:
    """A threaded HTTP/1.1 reverse proxy to `upstream_port` that answers every request with 503
    while `failing` is set (the request body is read and discarded). Counts what it saw:
    `refused`, `forwarded`, and `stored[path]` = PUTs the upstream answered 2xx, per path."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.failing = threading.Event()
        self.lock = threading.Lock()
        self.refused = 0
        self.forwarded = 0
        self.stored: dict[str, int] = {}
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy.failing.is_set():
                    with proxy.lock:
                        proxy.refused += 1
                    answer = (
                        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
                        b"<Message>injected outage</Message></Error>"
                    )
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body if length else None, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    status, reason, upstream_headers = response.status, response.reason, response.getheaders()
                finally:
                    upstream.close()
                with proxy.lock:
                    proxy.forwarded += 1
                    if self.command == "PUT" and 200 <= status < 300:
                        path = self.path.split("?", 1)[0]
                        proxy.stored[path] = proxy.stored.get(path, 0) + 1
                self.send_response(status, reason)
                for key, value in upstream_headers:
                    if key.lower() not in HOP_BY_HOP + ("content-length", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fault_proxy(moto):
    proxy = FaultProxy(moto.port)
    yield proxy
    proxy.stop()
