"""pusher processes run as "pods": each a conftest `Server` under its own directory, so its data
dir survives restarts (a restart recovers the spill log), with a fresh loopback port per start (a
restarted pod is a new endpoint) and one log file per start."""

import signal
import subprocess
from pathlib import Path

from conftest import Server


class Pod:
    def __init__(self, name: str, driver: str, root: Path, extra_args: list[str]):
        self.name = name
        self.driver = driver
        self.root = root / name
        self.root.mkdir(parents=True, exist_ok=True)
        self.extra_args = list(extra_args)
        self.log_paths: list[Path] = []
        self.server: Server | None = None

    @property
    def process(self) -> subprocess.Popen:
        return self.server.process

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def http(self) -> str:
        return self.server.http

    @property
    def log_path(self) -> Path | None:
        return self.log_paths[-1] if self.log_paths else None

    def logs(self) -> str:
        return ", ".join(str(p) for p in self.log_paths)

    def start(self) -> None:
        """Starts the process on its data dir and waits for `/health` 200 (liveness; readiness
        is the caller's)."""
        assert self.server is None or self.process.poll() is not None, f"{self.name} is running"
        self.server = Server(self.driver, self.extra_args, self.root)
        self.log_paths.append(self.server.log_path)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running after `timeout` s."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def metrics(self) -> str:
        return self.server.metrics()

    def stop(self) -> None:
        """Cleanup: SIGTERM, SIGKILL after 10 s."""
        if self.server is not None:
            self.server.stop()
