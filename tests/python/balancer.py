"""A small readiness-aware TCP load balancer (asyncio), standing in for the Kubernetes Service in
front of the pusher pods: one loopback port; each NEW connection goes to a backend whose readiness
check answered 200 the last time it was checked (checks run every `check_interval` s, so a pod
that starts draining keeps getting connections until the next check, as endpoint updates lag;
a single check that times out keeps the previous state, like a probe's failure threshold);
an accepted connection is piped both ways, half-closes passed on, until both sides are done; with
no ready backend the connection is closed at once (the client sees a failed connect).
"""

import asyncio
import itertools
from dataclasses import dataclass

PIPE_CHUNK = 65536


async def http_request(
    host: str, port: int, method: str, path: str, timeout: float = 2.0, headers: dict | None = None
) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a fresh connection; returns (status, body). Raises OSError or
    TimeoutError when the server cannot be reached or does not answer in time."""

    async def exchange() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close", "Content-Length: 0"]
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split()[1])
            length = None
            for line in header_lines:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = await (reader.readexactly(length) if length is not None else reader.read())
            return status, body
        finally:
            writer.close()

    try:
        return await asyncio.wait_for(exchange(), timeout)
    except asyncio.IncompleteReadError as error:
        raise ConnectionResetError(f"{method} {path}: connection closed mid-answer") from error


@dataclass
class Backend:
    name: str
    host: str
    port: int
    ready: bool = False  # what the last readiness check said
    last_check: str = "not checked yet"
    routed: int = 0  # connections sent here
    connect_errors: int = 0  # connections to this backend that failed (client then closed)
    generation: int = 0  # bumped when the backend's address changes
    timeouts_in_row: int = 0


@dataclass
class BalancerStats:
    accepted: int = 0
    refused_no_backend: int = 0
    backend_connect_errors: int = 0
    checks: int = 0


class Balancer:
    def __init__(self, ready_path: str = "/ready", check_interval: float = 2.0, check_timeout: float = 2.0):
        self.ready_path = ready_path
        self.check_interval = check_interval
        self.check_timeout = check_timeout
        self.backends: dict[str, Backend] = {}
        self.stats = BalancerStats()
        self._rr = itertools.count()
        self._server: asyncio.base_events.Server | None = None
        self._checker: asyncio.Task | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.routes: dict[int, str] = {}  # client port -> "backend@port" it was piped to
        self.port = 0

    async def start(self) -> "Balancer":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        self._checker = asyncio.create_task(self._check_loop(), name="balancer-checks")
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def set_backend(self, name: str, port: int, host: str = "127.0.0.1") -> None:
        """Adds a backend or moves it to a new address (a pod restarted on another port); it gets
        connections once a readiness check has answered 200 at the new address."""
        backend = self.backends.get(name)
        if backend is None:
            self.backends[name] = Backend(name, host, port)
        elif (backend.host, backend.port) != (host, port):
            backend.host, backend.port = host, port
            backend.ready = False
            backend.last_check = "address changed, not checked yet"
            backend.generation += 1

    def is_ready(self, name: str) -> bool:
        return self.backends[name].ready

    async def wait_ready(self, name: str, timeout: float) -> bool:
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.backends[name].ready:
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    # --- readiness -------------------------------------------------------------------------------

    async def _check_loop(self) -> None:
        while True:
            await asyncio.gather(*(self._check(b) for b in list(self.backends.values())))
            self.stats.checks += 1
            await asyncio.sleep(self.check_interval)

    async def _check(self, backend: Backend) -> None:
        generation = backend.generation
        timed_out = False
        try:
            status, body = await http_request(
                backend.host, backend.port, "GET", self.ready_path, timeout=self.check_timeout
            )
            ready, what = status == 200, f"{status} {body[:60]!r}"
        except TimeoutError:
            ready, what, timed_out = False, f"no answer within {self.check_timeout} s", True
        except (OSError, ValueError, IndexError) as error:
            ready, what = False, f"{type(error).__name__}: {error}"
        if generation != backend.generation:
            return  # the address changed while this check ran
        backend.timeouts_in_row = backend.timeouts_in_row + 1 if timed_out else 0
        if backend.timeouts_in_row == 1:
            # One slow answer (a busy machine) is not taken as "not ready" (as a probe's failure
            # threshold); an answer other than 200, or a refused connection, is.
            backend.last_check = what + " (once: state kept)"
            return
        backend.ready, backend.last_check = ready, what

    # --- connections -----------------------------------------------------------------------------

    def _pick(self) -> Backend | None:
        ready = [b for b in self.backends.values() if b.ready]
        if not ready:
            return None
        return ready[next(self._rr) % len(ready)]

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        backend = self._pick()
        if backend is None:
            self.stats.refused_no_backend += 1
            client_writer.transport.abort()
            return
        try:
            backend_reader, backend_writer = await asyncio.wait_for(
                asyncio.open_connection(backend.host, backend.port), 2.0
            )
        except (OSError, TimeoutError):
            backend.connect_errors += 1
            self.stats.backend_connect_errors += 1
            client_writer.transport.abort()
            return
        backend.routed += 1
        peer = client_writer.get_extra_info("peername")
        if peer:
            self.routes[peer[1]] = f"{backend.name}@{backend.port}"
        self._writers.update((client_writer, backend_writer))
        pipes = [
            asyncio.create_task(self._pipe(client_reader, backend_writer)),
            asyncio.create_task(self._pipe(backend_reader, client_writer)),
        ]
        try:
            done, _ = await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
            if any(not t.cancelled() and t.exception() is not None for t in done):
                # A reset on one side: reset the other rather than pretend an orderly end.
                for writer in (client_writer, backend_writer):
                    writer.transport.abort()
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            for task in pipes:
                task.cancel()
            for writer in (client_writer, backend_writer):
                self._writers.discard(writer)
                writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copies until EOF, then passes the half-close on (so data the other way keeps flowing)."""
        while True:
            data = await reader.read(PIPE_CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if not writer.transport.is_closing() and writer.can_write_eof():
            try:
                writer.write_eof()
            except OSError:
                pass

    async def stop(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            try:
                await self._checker
            except asyncio.CancelledError:
                pass
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 5)
            except TimeoutError:
                pass

    def describe(self) -> str:
        parts = [
            f"{b.name}@{b.port}: {'ready' if b.ready else 'not ready'} ({b.last_check}), "
            f"{b.routed} routed, {b.connect_errors} connect errors"
            for b in self.backends.values()
        ]
        return (
            f"balancer: {self.stats.accepted} accepted, {self.stats.refused_no_backend} refused (no ready backend), "
            f"{self.stats.backend_connect_errors} backend connect errors; " + "; ".join(parts)
        )
