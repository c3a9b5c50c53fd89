"""What pusher prints: JSON lines Cloud Logging files by their `severity`, text without colour
codes unless on a terminal, and a fatal start error printed once on stderr with exit code 2
(configuration) or 1 (run time)."""

import json
import os
import pty
import re
import select
import socket
import subprocess
import time

from conftest import BINARY, TEST_ENCRYPTION_SECRET, free_port, stop_process, wait_until

ANSI = re.compile(rb"\x1b\[[0-9;]*m")


def env(**extra) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PUSHER_") and k != "RUST_LOG"}
    base.pop("ENCRYPTION_SECRET", None)
    base.update(extra)
    return base


def serve_args(tmp_path, *extra: str) -> list[str]:
    return [str(BINARY), "serve", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "data"), *extra]


def run_to_exit(args: list[str], environment: dict) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=environment, capture_output=True, timeout=30)


def test_json_lines_carry_severity_and_message_at_the_top_level(driver, tmp_path):
    # The echo route's start-up warning is a WARN line; the rest are INFO.
    args = serve_args(tmp_path, "--log-format", "json", "--test-echo-route", "--workers", "1", "--driver", driver)
    process = subprocess.Popen(
        args,
        env=env(PUSHER_ENCRYPTION_SECRET=TEST_ENCRYPTION_SECRET),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        lines = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("listening" in line for line in lines):
            lines.append(process.stdout.readline().decode())
    finally:
        stop_process(process)
    records = [json.loads(line) for line in lines if line.strip()]
    assert records, "no log line"
    for record in records:
        assert record["severity"] in {"DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL"}, record
        assert isinstance(record["message"], str) and record["message"], record
    severities = {r["severity"] for r in records}
    assert {"INFO", "WARNING"} <= severities, severities
    warning = next(r for r in records if r["severity"] == "WARNING")
    assert "TEST ONLY" in warning["message"], warning
    assert not process.stderr.read(), "nothing on stderr"


def test_text_logs_to_a_file_have_no_colour_codes(driver, tmp_path):
    log = tmp_path / "pusher.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            serve_args(tmp_path, "--workers", "1", "--driver", driver),
            env=env(PUSHER_ENCRYPTION_SECRET=TEST_ENCRYPTION_SECRET),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(lambda: b"listening" in log.read_bytes(), 20, "the server to listen")
        finally:
            stop_process(process)
    text = log.read_bytes()
    assert b"INFO" in text
    assert not ANSI.search(text), text[:400]


def test_text_logs_on_a_terminal_are_coloured(driver, tmp_path):
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        serve_args(tmp_path, "--workers", "1", "--driver", driver),
        env=env(PUSHER_ENCRYPTION_SECRET=TEST_ENCRYPTION_SECRET, TERM="xterm"),
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    seen = b""
    try:
        deadline = time.monotonic() + 20
        while b"listening" not in ANSI.sub(b"", seen) and time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1)
            if ready:
                seen += os.read(leader, 65536)
    finally:
        stop_process(process)
        os.close(leader)
    assert ANSI.search(seen), seen[:400]


def test_a_configuration_error_is_printed_once_on_stderr_and_exits_2(tmp_path):
    # No encryption secret while users may store `enhanced` audio: a configuration error.
    done = run_to_exit(serve_args(tmp_path), env())
    assert done.returncode == 2, done
    stderr = done.stderr.decode()
    assert stderr.count("ENCRYPTION_SECRET") >= 1 and len(stderr.strip().splitlines()) == 1, stderr
    assert "is not set" not in done.stdout.decode(), "printed once, on stderr only"
    # A bad value given by a flag: also 2 (clap's usage errors are 2 as well).
    done = run_to_exit(serve_args(tmp_path, "--recv-buffers-per-core", "0"), env())
    assert done.returncode == 2 and b"recv_buffers_per_core" in done.stderr, done
    # In JSON mode the one line is JSON with Cloud Logging's severity.
    done = run_to_exit(serve_args(tmp_path, "--log-format", "json"), env())
    assert done.returncode == 2, done
    (line,) = done.stderr.decode().strip().splitlines()
    record = json.loads(line)
    assert record["severity"] == "CRITICAL" and "ENCRYPTION_SECRET" in record["message"], record


def test_a_runtime_error_is_printed_once_on_stderr_and_exits_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = [str(BINARY), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data")]
        done = run_to_exit(args, env(PUSHER_ENCRYPTION_SECRET=TEST_ENCRYPTION_SECRET))
    assert done.returncode == 1, done
    stderr = done.stderr.decode()
    assert stderr.count("cannot listen") == 1, stderr
    assert "cannot listen" not in done.stdout.decode(), "printed once, on stderr only"
