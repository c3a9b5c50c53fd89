"""Fixtures that start the real pusher binary on loopback, once per io driver."""

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "target" / "release" / "pusher"
DRIVERS = ["uring", "epoll"]
TEST_ENCRYPTION_SECRET = "python-test-secret-0123456789abcdef0123"



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, driver: str, extra_args: list[str], tmp: Path):
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.http = f"http://127.0.0.1:{self.port}"
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
        self.log = open(tmp / f"pusher-{driver}.log", "w")
        env = dict(os.environ, PUSHER_ENCRYPTION_SECRET=TEST_ENCRYPTION_SECRET)
        self.data_dir = tmp / "data"
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pusher exited with {self.process.returncode}")
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

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(params=DRIVERS)
def driver(request) -> str:
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run `make build` first")
    return request.param


@pytest.fixture
def start_server(tmp_path):
    servers = []

    def start(driver: str, *extra_args: str) -> Server:
        server = Server(driver, list(extra_args), tmp_path)
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
