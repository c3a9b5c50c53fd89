"""The README's set-up on a fresh Debian or Ubuntu: the system Python refuses `pip install`
(PEP 668's "externally managed" marker), so `make` keeps the test tools in a virtual environment
of its own and refuses any other pip install (PIP_REQUIRE_VIRTUALENV); `CARGO_TARGET_DIR` moves
every binary the tests and the bench kit run."""

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")


def system_python_is_externally_managed() -> bool:
    if not SYSTEM_PYTHON.exists():
        return False
    stdlib = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return (Path(stdlib) / "EXTERNALLY-MANAGED").exists()


def fresh_env() -> dict:
    """What a fresh machine's shell has: the system directories and the Rust toolchain on PATH,
    no virtual environment, no pip settings."""
    cargo = shutil.which("cargo")
    path = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    if cargo:
        path.insert(0, str(Path(cargo).parent))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV", "PYENV"))}
    env["PATH"] = ":".join(path)
    return env


@pytest.mark.skipif(
    not system_python_is_externally_managed(),
    reason="needs a system /usr/bin/python3 marked EXTERNALLY-MANAGED (Debian 12+, Ubuntu 23.04+)",
)
def test_python_deps_go_to_a_venv_when_the_system_python_refuses_pip(tmp_path):
    env = fresh_env()
    # The premise: a plain install into the system Python is refused.
    refused = subprocess.run(
        [SYSTEM_PYTHON, "-m", "pip", "install", "--dry-run", "--no-deps", "pytest"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0, refused
    assert "externally-managed-environment" in refused.stderr or "No module named pip" in refused.stderr, refused
    venv = tmp_path / "venv"
    done = subprocess.run(
        ["make", "-C", str(REPO), "python-deps", f"PYTHON={SYSTEM_PYTHON}", f"VENV={venv}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    config = (venv / "pyvenv.cfg").read_text()
    assert f"home = {SYSTEM_PYTHON.parent}" in config, config
    for tool in ["pytest", "moto_server", "kosoku", "hadolint"]:
        assert (venv / "bin" / tool).exists(), f"{tool} is not in the venv"
    check = subprocess.run(
        [venv / "bin" / "python", "-c", "import cryptography, websockets, yaml, kubernetes_validate"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr


def test_every_pip_install_of_make_requires_a_venv():
    # `make` exports PIP_REQUIRE_VIRTUALENV: a pip outside a venv refuses to install.
    done = subprocess.run(
        ["make", "-C", str(REPO), "--no-print-directory", "-s", "-f", "Makefile", "-f", "-", "show"],
        input="show:\n\t@echo $$PIP_REQUIRE_VIRTUALENV $$PUSHER_BINARY\n",
        env=dict(fresh_env(), CARGO_TARGET_DIR="/elsewhere/target"),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    require_venv, binary = done.stdout.split()
    assert require_venv == "1"
    assert binary == "/elsewhere/target/release/pusher"


def test_cargo_target_dir_moves_the_binary_make_runs():
    done = subprocess.run(
        ["make", "-C", str(REPO), "--no-print-directory", "-n", "run"],
        env=dict(fresh_env(), CARGO_TARGET_DIR="/elsewhere/target"),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "/elsewhere/target/release/pusher serve" in done.stdout, done.stdout


def test_ci_runs_exactly_make_test():
    script = (REPO / ".ci" / "run").read_text()
    commands = [
        line.strip()
        for line in script.splitlines()
        if line.strip() and not line.strip().startswith("#") and not line.startswith(("set ", "cd "))
    ]
    assert commands == ["exec make test"], commands
