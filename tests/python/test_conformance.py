"""Autobahn conformance through kosoku, against the test-only echo route on the same codec and
connection layer as the pusher route, on both io drivers."""

import json
import shutil
import subprocess

from conftest import env_without_proxy

ECHO_ARGS = [
    "--test-echo-route",
    # Autobahn's 9.* cases send messages of up to 16 MiB.
    "--message-bytes-max",
    "16777216",
    "--recv-buffers-per-core",
    "8",
    "--outbound-pending-bytes-max",
    "33554432",
    "--outbound-pending-bytes-per-core",
    "67108864",
    # The spill hand-off must hold three of the largest records.
    "--spill-handoff-bytes-per-core",
    "50335744",
]


def test_autobahn_suite_has_no_failed_case(driver, start_server, tmp_path):
    kosoku = shutil.which("kosoku")
    assert kosoku, "kosoku is not installed (tests/python/requirements.txt)"
    server = start_server(driver, *ECHO_ARGS)
    reports = tmp_path / "reports"
    run = subprocess.run(
        [kosoku, "-p", "2", "-x", "12.*", "-x", "13.*", "-o", str(reports), f"{server.url}/test/echo"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env_without_proxy(),
    )
    outcomes = {}
    for path in reports.glob("*.json"):
        case = json.loads(path.read_text())
        outcomes[case.get("id", path.name)] = (case.get("behavior"), case.get("behaviorClose"))
    assert len(outcomes) > 250, f"too few cases ran: {len(outcomes)}\n{run.stdout}\n{run.stderr}"
    failed = {case: o for case, o in outcomes.items() if "FAILED" in o or "UNIMPLEMENTED" in o}
    assert not failed, f"failed cases: {failed}"
    assert run.returncode == 0, run.stdout + run.stderr
