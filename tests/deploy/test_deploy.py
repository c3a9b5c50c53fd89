"""The deployment package (deploy/, docs/deploy.md): the Dockerfile, the Kubernetes manifests,
the systemd unit, the sysctl note and the Grafana dashboard, checked against the real binary.

No container engine runs here, so what the image runs is run outside it, as the image and the
pod spec say: the release binary built by the Dockerfile's own `cargo build` line, started by
its entrypoint with the pod's environment, as uid 10001 on a read-only root with only /data
writable (tests/deploy/sandbox.py), under the seccomp profile the manifests ship; then the
preStop hook, SIGTERM, and the spill-drain Job's command on the same data.

Needs root (mount namespaces), kubectl (kustomize), systemd-analyze and the packages of
tests/deploy/requirements.txt; `make test-deploy` installs what is missing.
"""

import asyncio
import fractions
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import websockets
import yaml

ROOT = Path(__file__).resolve().parents[2]
# The release binary: PUSHER_BINARY (the Makefile sets it), else under CARGO_TARGET_DIR or target/.
BINARY = Path(
    os.environ.get("PUSHER_BINARY")
    or Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "release" / "pusher"
)
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SANDBOX = Path(__file__).resolve().parent / "sandbox.py"
SECCOMP_PROFILE = K8S / "components" / "io-uring" / "pusher-io-uring.json"
UNIT = DEPLOY / "systemd" / "pusher.service"
UNIT_CONFIG = DEPLOY / "systemd" / "pusher.toml"

MIB = 1 << 20
# What the manifests' memory limits add to `pusher budget` (their comments say the same).
OVERHEAD_BYTES = 64 * MIB
# Least time left in a termination grace period or TimeoutStopSec after the drain arithmetic.
MARGIN_S = 10
# Kubernetes versions the manifests are validated against: an old supported one and the newest.
KUBERNETES_VERSIONS = ["1.32.0", "1.37.0"]
# Kinds that come from CRDs: kubernetes-validate has no schema for them; checked by hand below.
CRD_KINDS = {"ServiceMonitor"}
TEST_SECRET = "deploy-test-secret-0123456789abcdef0123"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
SERVER_OVERLAYS = [name for name in OVERLAYS if not name.endswith("-spill-drain")]


# --- helpers -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what} (last: {value!r})")
        time.sleep(0.05)


def http_get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:  # not listening (yet, or any more)
        return 0, ""


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    raise KeyError(name)


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl is missing: `make test-deploy` installs it (tests/deploy/README.md)")
    return path


def render(directory: Path) -> list[dict]:
    out = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(workload: dict) -> dict:
    containers = workload["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "pusher")


def quantity_bytes(text: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "": 1}
    number, unit = re.fullmatch(r"(\d+)([KMGT]i)?", text).groups()
    return int(number) * units[unit or ""]


def sample_defaults() -> dict:
    """config/pusher.sample.toml: every key with its default (a unit test keeps it exact)."""
    import tomllib

    return tomllib.loads((ROOT / "config" / "pusher.sample.toml").read_text())


def pusher_env_names() -> set[str]:
    """The PUSHER_* variables pusher reads: clap's `[env: NAME=]` in `pusher serve --help`,
    plus the one read outside clap."""
    help_text = subprocess.run([str(BINARY), "serve", "--help"], capture_output=True, text=True).stdout
    names = set(re.findall(r"\[env: (PUSHER_[A-Z0-9_]+)[=\]]", help_text))
    assert "PUSHER_UPLOAD_DRAIN_MS" in names and "PUSHER_WORKERS" in names, help_text[:500]
    return names | {"PUSHER_ENCRYPTION_SECRET"}


def omi_env_names() -> set[str]:
    """Omi's names pusher reads as fallbacks, from src/config/omi.rs's constants."""
    source = (ROOT / "src" / "config" / "omi.rs").read_text()
    return set(re.findall(r'pub const [A-Z_]+: &str = "([A-Z_]+)";', source))


# Values for variables a manifest takes from a Secret or ConfigMap, by variable name.
REFERENCED_VALUES = {
    "PUSHER_ENCRYPTION_SECRET": TEST_SECRET,
    "ENCRYPTION_SECRET": TEST_SECRET,
    "BUCKET_PRIVATE_CLOUD_SYNC": "omi-private-cloud-test",
    "PUSHER_METRICS_TOKEN": "deploy-test-metrics-token",
    "METRICS_SECRET": "deploy-test-metrics-token",
}


def container_env(spec: dict) -> dict:
    """A container's env as the kubelet would pass it, with test values for references."""
    env = {}
    for entry in spec.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            env[entry["name"]] = REFERENCED_VALUES[entry["name"]]
    assert "envFrom" not in spec, "envFrom: the test cannot know the names it brings"
    return env


def clean_env(extra: dict) -> dict:
    """The test process's environment without pusher's or Omi's variables, plus `extra`."""
    names = omi_env_names()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHER_") and k not in names}
    env.update(extra)
    return env


def budget_rows(env: dict, slots: int) -> tuple[dict, bool]:
    """`pusher budget` with `env` and `slots` session slots per core: bytes per row, and
    whether the open-files limit capped the slots."""
    out = subprocess.run(
        [str(BINARY), "budget"],
        env=clean_env(env | {"PUSHER_SESSIONS_PER_CORE_MAX": str(slots)}),
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = re.match(r"memory budget: (\d+) workers x (\d+) session slots", lines[0])
    rows, printed_total = {}, None
    for line in lines[2:]:
        parts = line.split()
        if parts and parts[0] == "total":
            printed_total = float(parts[1])
        elif len(parts) >= 4 and all(re.fullmatch(r"[\d.]+", p) for p in parts[-3:]):
            rows[" ".join(parts[:-3])] = int(parts[-3]) * int(parts[-2])
    assert printed_total is not None and rows, out.stdout
    assert abs(sum(rows.values()) / MIB - printed_total) < 0.1, "a budget row was not parsed"
    return rows, int(header.group(2)) < slots


def worst_case_budget(env: dict) -> int:
    """The budget with every session slot of `env`'s config (sessions_per_core_max per worker),
    whatever this machine's open-files limit: pusher caps its slots by that limit (20,000 here),
    a pod's is higher. Every row is linear in the slots; from 1,000 and 2,000 slots (checked
    against 3,000) the total at the configured slots is exact."""
    slots = int(env.get("PUSHER_SESSIONS_PER_CORE_MAX", sample_defaults()["sessions_per_core_max"]))
    (r1, c1), (r2, c2), (r3, c3) = (budget_rows(env, s) for s in (1000, 2000, 3000))
    assert not (c1 or c2 or c3), "the open-files limit caps even 3,000 slots per core"
    total = fractions.Fraction(0)
    for name in r1:
        step = r2[name] - r1[name]
        assert r3[name] - r2[name] == step, f"budget row {name!r} is not linear in the slots"
        total += r1[name] + fractions.Fraction(step, 1000) * (slots - 1000)
    assert total.denominator == 1
    rows, capped = budget_rows(env, slots)
    if not capped:  # a machine with a high enough limit: the real figure must agree
        assert sum(rows.values()) == total
    return int(total)


# --- the Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), " ".join(rest.split())))
    return out


def dockerfile_cargo_build() -> list[str]:
    runs = [rest for keyword, rest in dockerfile_instructions() if keyword == "RUN" and "cargo build" in rest]
    assert len(runs) == 1
    command = re.search(r"(cargo build [^&]*?)\s*&&", runs[0]).group(1)
    return command.split()


def test_dockerfile_lints_clean_and_keeps_the_image_contract():
    out = subprocess.run(["hadolint", str(DEPLOY / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    instructions = dockerfile_instructions()
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(froms) == 2 and " AS build" in froms[0], "multi-stage: a build stage, then the runtime"
    assert re.fullmatch(r"debian:[a-z]+-slim", froms[1]), froms[1]
    # The same Debian release in both stages: the binary links against the build stage's glibc.
    assert froms[0].split()[0].endswith("-" + froms[1].split(":")[1].removesuffix("-slim"))
    runtime = instructions[[k for k, _ in instructions].index("FROM", 1) + 1 :]
    values = {}
    for keyword, rest in runtime:
        values.setdefault(keyword, []).append(rest)
    installs = re.findall(r"apt-get install [^&]*", " ".join(values["RUN"]))
    assert installs == ["apt-get install -y --no-install-recommends ca-certificates "], installs
    assert values["USER"] == ["10001:10001"]
    assert values["EXPOSE"] == ["8080"]
    assert values["VOLUME"] == ['["/data"]']
    assert values["STOPSIGNAL"] == ["SIGTERM"]
    assert values["ENTRYPOINT"] == ['["pusher", "serve"]']
    assert "PUSHER_DATA_DIR=/data" in values["ENV"]
    copies = {rest.split()[-1] for rest in values["COPY"]}
    assert copies == {"/usr/local/bin/pusher", "/usr/local/bin/pusher-prestop"}


def test_build_context_holds_what_cargo_needs(tmp_path):
    """Deploy/Dockerfile.dockerignore keeps the context small: the copy it lets through must
    still be a complete workspace (every source file, the lock file) for `cargo build
    --locked`, plus the files the runtime stage copies."""
    patterns = [
        line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "the context starts empty and names what it lets in"
    allowed = [p.removeprefix("!").rstrip("/") for p in patterns[1:]]
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    context = [f for f in tracked if any(f == a or f.startswith(a + "/") for a in allowed)]
    for f in context:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, tmp_path / f)
    crates = {"src", "bench/src", "perf/src"}
    for f in tracked:
        if any(f.startswith(c + "/") for c in crates):
            assert (tmp_path / f).exists(), f"{f} is not in the build context"
    for crate in ("", "bench/", "perf/"):
        if (ROOT / f"{crate}build.rs").exists():
            assert (tmp_path / f"{crate}build.rs").exists(), f"{crate}build.rs is not in the build context"
    assert (tmp_path / "deploy" / "pusher-prestop").exists()
    host = re.search(r"^host: (\S+)$", subprocess.run(["rustc", "-vV"], capture_output=True, text=True).stdout, re.M)
    out = subprocess.run(
        ["cargo", "metadata", "--locked", "--format-version", "1", "--filter-platform", host.group(1)],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]


def test_binary_under_test_is_built_by_the_dockerfiles_command():
    """The tests below run target/release/pusher: the Dockerfile's own build command must
    produce it (up to date: nothing to do after `make build`)."""
    command = dockerfile_cargo_build()
    assert command[:3] == ["cargo", "build", "--release"] and "--locked" in command
    out = subprocess.run(["nice", *command], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert BINARY.exists()


def debian_base_packages() -> set[str]:
    """The packages of a Debian base image: those marked required (or essential) and what they
    depend on, as installed here."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${Priority}\t${Essential}\t${Pre-Depends}, ${Depends}\n"],
        capture_output=True, text=True, check=True,
    ).stdout
    depends, todo = {}, []
    for line in out.splitlines():
        package, priority, essential, deps = line.split("\t")
        depends[package] = {
            alternative.split()[0].split(":")[0]
            for group in deps.split(",") for alternative in group.split("|") if alternative.strip()
        }
        if priority == "required" or essential == "yes":
            todo.append(package)
    base = set()
    while todo:
        package = todo.pop()
        if package in depends and package not in base:
            base.add(package)
            todo.extend(depends[package])
    return base


def test_binary_needs_only_libraries_of_debian_slim():
    """The runtime stage adds nothing but CA certificates: every library the binary loads must
    come from a package of the base image (required packages and their dependencies)."""
    out = subprocess.run(["ldd", str(BINARY)], capture_output=True, text=True, check=True).stdout
    libraries = re.findall(r"=> (/\S+)", out) + re.findall(r"^\s+(/\S+ld-linux\S*)", out, re.M)
    assert len(libraries) >= 2, out
    base = debian_base_packages()
    for library in libraries:
        real = os.path.realpath(library)
        owner = None
        for candidate in (library, real, real.replace("/usr/lib/", "/lib/", 1), real.replace("/lib/", "/usr/lib/", 1)):
            found = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
            if found.returncode == 0:
                owner = found.stdout.split(":")[0]
                break
        assert owner, f"no Debian package owns {library}"
        assert owner in base, f"{library} comes from {owner}, which a slim image lacks"


# --- the Kubernetes manifests --------------------------------------------------------------------


def rendering_dirs(tmp_path_factory) -> dict[str, Path]:
    """Every overlay, and the generic overlay with both optional components, as an operator
    adds them (a kustomization that also sets the image)."""
    dirs = {name: K8S / "overlays" / name for name in OVERLAYS}
    combo = tmp_path_factory.mktemp("components")
    rel = os.path.relpath(K8S, combo)
    generic = yaml.safe_load((K8S / "overlays" / "generic" / "kustomization.yaml").read_text())
    (combo / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [f"{rel}/overlays/generic"],
        "components": [f"{rel}/components/servicemonitor", f"{rel}/components/io-uring"],
        "images": generic["images"],
    }))
    dirs["generic+servicemonitor+io-uring"] = combo
    return dirs


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    return {name: render(path) for name, path in rendering_dirs(tmp_path_factory).items()}


@pytest.fixture(scope="module")
def live_metrics(tmp_path_factory) -> str:
    """/metrics of a plain release server (its names and labels are what dashboards see)."""
    data = tmp_path_factory.mktemp("metrics-data")
    port = free_port()
    env = clean_env({"PUSHER_ENCRYPTION_SECRET": TEST_SECRET})
    process = subprocess.Popen(
        [str(BINARY), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: http_get(f"http://127.0.0.1:{port}/health")[0] == 200 if process.poll() is None else pytest.fail("exited"), 20, "/health")
        return http_get(f"http://127.0.0.1:{port}/metrics")[1]
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_every_rendering_validates_against_the_kubernetes_schemas(rendered, tmp_path):
    for name, docs in rendered.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        for version in KUBERNETES_VERSIONS:
            out = subprocess.run(
                ["kubernetes-validate", "--strict", "-k", version, str(path)],
                capture_output=True, text=True,
            )
            report = out.stdout + out.stderr
            assert out.returncode == 0, f"{name} on {version}:\n{report}"
            for line in report.splitlines():
                if "Couldn't find schema" in line:
                    assert any(f"kind {kind} " in line for kind in CRD_KINDS), line
                else:
                    assert not line.startswith(("ERROR", "WARN")), f"{name} on {version}: {line}"
        for doc in docs:
            for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []) + \
                    doc.get("spec", {}).get("template", {}).get("spec", {}).get("initContainers", []):
                assert "/" in c["image"] and ":" in c["image"], f"{name}: image {c['image']} is not set"


def test_pod_contract(rendered):
    """What a pod of each overlay promises: probe paths pusher serves, the preStop hook the
    image carries, a volume per pod at /data, non-root and read-only."""
    for name in SERVER_OVERLAYS:
        docs = rendered[name]
        sts = one(docs, "StatefulSet", "pusher")
        pod = sts["spec"]["template"]["spec"]
        c = container(sts)
        assert c["startupProbe"]["httpGet"]["path"] == "/health"
        assert c["livenessProbe"]["httpGet"]["path"] == "/health"
        assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[probe]["httpGet"]["port"] == "http"
        assert c["ports"] == [{"name": "http", "containerPort": 8080}]
        assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "pusher-prestop"
        assert "args" not in c and "command" not in c, "the image's entrypoint runs as it is"
        # Security: as the image (uid 10001) and Omi's chart.
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["fsGroup"] == 10001
        assert pod["securityContext"]["seccompProfile"]["type"] in ("RuntimeDefault", "Localhost")
        assert c["securityContext"] == {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
        }
        assert pod["enableServiceLinks"] is False and pod["automountServiceAccountToken"] is False
        # The spill log's volume: one claim per pod, kept when pods go.
        assert c["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        assert claim["metadata"]["name"] == "data"
        assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
        env = container_env(c)
        defaults = sample_defaults()
        spill_max = int(env.get("PUSHER_SPILL_BYTES_MAX", defaults["spill_bytes_max"]))
        workers = int(env["PUSHER_WORKERS"])
        needed = spill_max + workers * defaults["spill_handoff_bytes_per_core"] + defaults["spill_segment_bytes"]
        storage = quantity_bytes(claim["spec"]["resources"]["requests"]["storage"])
        assert storage >= needed * 1.1, f"{name}: {storage} B of volume for {needed} B of log (+10 % for the filesystem)"
        # Services, disruption budget and autoscaler point at these pods.
        labels = sts["spec"]["template"]["metadata"]["labels"]
        assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
        for service in (d for d in docs if d["kind"] == "Service"):
            assert service["spec"]["selector"].items() <= labels.items() and service["spec"]["selector"]
            assert service["spec"]["ports"][0]["targetPort"] == "http"
        assert sts["spec"]["serviceName"] == one(docs, "Service", "pusher-headless")["metadata"]["name"]
        assert one(docs, "Service", "pusher-headless")["spec"]["clusterIP"] == "None"
        pdb = one(docs, "PodDisruptionBudget")
        assert pdb["spec"]["selector"]["matchLabels"] and pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        hpa = one(docs, "HorizontalPodAutoscaler")
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "pusher"}
        assert "replicas" not in sts["spec"], "the autoscaler owns replicas"
        assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]


def test_probes_hpa_metric_and_preStop_exist_in_pusher(rendered, live_metrics):
    """The paths the probes ask for answer 200 on a real pusher, the autoscaler's custom metric
    and the prometheus annotations' path are pusher's."""
    for name in SERVER_OVERLAYS:
        sts = one(rendered[name], "StatefulSet", "pusher")
        hpa = one(rendered[name], "HorizontalPodAutoscaler")
        for entry in hpa["spec"]["metrics"]:
            if entry["type"] == "Pods":
                assert f"\n{entry['pods']['metric']['name']} " in live_metrics
        annotations = sts["spec"]["template"]["metadata"].get("annotations", {})
        if "prometheus.io/path" in annotations:
            assert annotations["prometheus.io/path"] == "/metrics"
            assert annotations["prometheus.io/port"] == "8080"
    assert "# TYPE pusher_ready gauge" in live_metrics  # served by /metrics (the same server's)


def test_env_names_are_ones_pusher_reads_and_values_it_accepts(rendered):
    """Every variable a manifest sets is pusher's own or one of Omi's names pusher reads, and
    the whole environment passes pusher's config validation (`pusher budget` loads it)."""
    known = pusher_env_names() | omi_env_names()
    for name, docs in rendered.items():
        for workload in (d for d in docs if d["kind"] in ("StatefulSet", "Job")):
            env = container_env(container(workload))
            unknown = set(env) - known
            assert not unknown, f"{name}: pusher reads none of {sorted(unknown)}"
            out = subprocess.run([str(BINARY), "budget"], env=clean_env(env), capture_output=True, text=True)
            assert out.returncode == 0, f"{name}: {out.stderr}"


def test_memory_limit_covers_the_budget(rendered):
    """Memory request = limit ≥ the worst-case budget of the pod's config + the overhead, and
    the arithmetic in the manifest's comment is the real one."""
    sources = {
        "generic": (K8S / "base" / "statefulset.yaml").read_text(),
        "omi": (K8S / "overlays" / "omi" / "statefulset.yaml").read_text(),
    }
    for name in SERVER_OVERLAYS:
        c = container(one(rendered[name], "StatefulSet", "pusher"))
        env = container_env(c)
        budget = worst_case_budget(env)
        limit = quantity_bytes(c["resources"]["limits"]["memory"])
        assert c["resources"]["requests"]["memory"] == c["resources"]["limits"]["memory"]
        assert limit >= budget + OVERHEAD_BYTES, f"{name}: limit {limit / MIB} MiB < {budget / MIB:.1f} + 64"
        assert limit - (budget + OVERHEAD_BYTES) < 64 * MIB, f"{name}: limit more than a 64 MiB step above"
        workers = env["PUSHER_WORKERS"]
        comment = re.search(rf"budget with {workers} workers?\b[^\n]*?([\d.]+) MiB\n", sources[name])
        assert comment, f"{name}: no budget line for {workers} workers in the comment"
        # The comment is a figure to read: within 0.5 MiB (small rows added to the budget
        # need not rewrite it; the limit above is checked exactly).
        assert abs(float(comment.group(1)) - budget / MIB) <= 0.5, f"{name}: comment says {comment.group(1)}"
        # CPU: the workers the pod is given (a quota below them would leave workers idle).
        cpu = c["resources"]["limits"]["cpu"]
        millis = int(cpu[:-1]) if cpu.endswith("m") else int(cpu) * 1000
        assert int(workers) == max(1, -(-millis // 1000)), f"{name}: {workers} workers on {cpu} CPU"


def shutdown_constants() -> tuple[float, float]:
    """From src/server/shutdown.rs: the slack after close_timeout_ms, and the spill flush limit."""
    source = (ROOT / "src" / "server" / "shutdown.rs").read_text()
    slack_ms = int(re.search(r"const CLOSE_SLACK_MS: u64 = (\d+);", source).group(1))
    flush_s = int(re.search(r"const SPILL_FLUSH_LIMIT: Duration = Duration::from_secs\((\d+)\);", source).group(1))
    return slack_ms / 1000, flush_s


def stop_sequence_s(config: dict) -> float:
    """Longest time from the drain's start to pusher's exit: the grace, pusher's Close and the
    peers', the log's last sync, the upload drain."""
    slack_s, flush_s = shutdown_constants()
    return (config["drain_grace_ms"] + config["close_timeout_ms"]) / 1000 + slack_s + flush_s + config["upload_drain_ms"] / 1000


def test_termination_grace_covers_prestop_drain_and_upload_drain(rendered):
    defaults = sample_defaults()
    for name in SERVER_OVERLAYS:
        sts = one(rendered[name], "StatefulSet", "pusher")
        env = container_env(container(sts))
        config = {
            key: int(env.get(f"PUSHER_{key.upper()}", defaults[key]))
            for key in ("drain_grace_ms", "close_timeout_ms", "upload_drain_ms")
        }
        command = container(sts)["lifecycle"]["preStop"]["exec"]["command"]
        prestop_s = 5 + int(command[1])  # the drain request's `timeout 5`, then the sleep
        assert "timeout 5 " in (DEPLOY / "pusher-prestop").read_text()
        # If the drain request failed, the drain begins with SIGTERM, after the whole preStop.
        needed = prestop_s + stop_sequence_s(config)
        grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= needed + MARGIN_S, f"{name}: {grace} s grace < {needed} s + {MARGIN_S} s"


def test_spill_drain_job_runs_with_its_overlays_settings(rendered):
    for name in SERVER_OVERLAYS:
        sts = one(rendered[name], "StatefulSet", "pusher")
        docs = rendered[f"{name}-spill-drain"]
        assert [d["kind"] for d in docs] == ["Job"], "only the Job is rendered"
        job = docs[0]
        c = container(job)
        assert c["command"][:3] == ["pusher", "spill", "drain"]
        for field in ("image", "env", "securityContext"):
            assert c[field] == container(sts)[field], field
        for field in ("securityContext", "serviceAccountName"):
            assert job["spec"]["template"]["spec"][field] == sts["spec"]["template"]["spec"][field]
        (volume,) = job["spec"]["template"]["spec"]["volumes"]
        assert volume["persistentVolumeClaim"]["claimName"] == "data-pusher-0"  # <template>-<sts>-<ordinal>
        assert c["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
        assert job["spec"]["backoffLimit"] > 0 and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
        # Memory: `pusher spill drain` runs no workers and no egress; it holds the log's index,
        # the upload queue and the upload buffers (rows of the same budget) + the overhead.
        rows, _ = budget_rows(container_env(c), 1000)
        used = sum(rows[r] for r in ("spill index entries", "upload queue", "upload body buffers"))
        assert quantity_bytes(c["resources"]["limits"]["memory"]) >= used + OVERHEAD_BYTES
        # One attempt's upload drain fits in the Job's deadline many times over.
        drain_ms = int(c["command"][c["command"].index("--upload-drain-ms") + 1])
        assert job["spec"]["activeDeadlineSeconds"] >= 10 * drain_ms / 1000


def test_servicemonitor_selects_the_one_service(rendered):
    docs = rendered["generic+servicemonitor+io-uring"]
    monitor = one(docs, "ServiceMonitor")
    selected = [
        s for s in docs if s["kind"] == "Service"
        and monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"].get("labels", {}).items()
    ]
    assert [s["metadata"]["name"] for s in selected] == ["pusher"], "each pod is scraped once"
    ports = {p["name"] for p in selected[0]["spec"]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http"] and "http" in ports
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    sts = one(docs, "StatefulSet", "pusher")
    assert sts["spec"]["template"]["spec"]["securityContext"]["seccompProfile"] == {
        "type": "Localhost", "localhostProfile": SECCOMP_PROFILE.name,
    }
    installer = one(docs, "DaemonSet")
    (init,) = installer["spec"]["template"]["spec"]["initContainers"]
    assert init["command"][-1] == f"/host-seccomp/{SECCOMP_PROFILE.name}"
    host = next(v for v in installer["spec"]["template"]["spec"]["volumes"] if "hostPath" in v)
    assert host["hostPath"]["path"] == "/var/lib/kubelet/seccomp"  # the kubelet's Localhost root
    configmap = one(docs, "ConfigMap")
    assert json.loads(configmap["data"][SECCOMP_PROFILE.name]) == json.loads(SECCOMP_PROFILE.read_text())


def test_omi_overlay_mirrors_omis_chart(rendered):
    """Omi's chart values as docs/deploy.md lists them (probes, grace, resources, env names)."""
    docs = rendered["omi"]
    sts = one(docs, "StatefulSet", "pusher")
    pod = sts["spec"]["template"]["spec"]
    c = container(sts)
    assert pod["terminationGracePeriodSeconds"] == 120
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["pusher-prestop", "15"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert (c[probe]["periodSeconds"], c[probe]["timeoutSeconds"]) == (10, 5), probe
    assert c["livenessProbe"]["failureThreshold"] == 5
    assert c["startupProbe"]["failureThreshold"] == 60
    assert c["resources"]["requests"]["cpu"] == "700m"
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (12, 40)
    sessions = next(m for m in hpa["spec"]["metrics"] if m["type"] == "Pods")
    assert sessions["pods"]["metric"]["name"] == "pusher_active_ws_connections"
    assert sessions["pods"]["target"]["averageValue"] == "30"
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    account = one(docs, "ServiceAccount")
    assert "iam.gke.io/gcp-service-account" in account["metadata"]["annotations"]
    names = {e["name"] for e in c["env"]}
    assert {"ENCRYPTION_SECRET", "BUCKET_PRIVATE_CLOUD_SYNC", "METRICS_SECRET"} <= names
    assert "PUSHER_STORE" not in names and "PUSHER_ENCRYPTION_SECRET" not in names


# --- what the image runs, run outside it ---------------------------------------------------------

# Mount namespaces and chroot need root (CI runs as root; there a missing root fails the tests).
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root: mount namespace, chroot"
)


class Pod:
    """The image's entrypoint (or another command) in tests/deploy/sandbox.py's root."""

    def __init__(self, tmp: Path, data: Path, argv: list[str], env: dict, filter_args: list[str],
                 files: list[tuple[Path, str]], data_mount: str = "/data", log_name: str = "pod",
                 image: bool = True):
        self.root = tmp / f"root-{log_name}"
        self.root.mkdir()
        self.log_path = tmp / f"{log_name}.log"
        self.log = open(self.log_path, "w")
        command = [sys.executable, str(SANDBOX), "--root", str(self.root), "--data", f"{data}:{data_mount}",
                   "--workdir", data_mount, *filter_args]
        for src, dst in files:
            command += ["--file", f"{src}:{dst}"]
        self.process = subprocess.Popen(command + ["--", *argv], env=clean_env((image_env() if image else {}) | env),
                                        stdout=self.log, stderr=subprocess.STDOUT)

    def text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


IMAGE_FILES = [(BINARY, "/usr/local/bin/pusher"), (DEPLOY / "pusher-prestop", "/usr/local/bin/pusher-prestop")]


def image_env() -> dict:
    """The runtime stage's ENV (the pod's env is added on top)."""
    instructions = dockerfile_instructions()
    runtime = instructions[[k for k, _ in instructions].index("FROM", 1):]
    return dict(item.split("=", 1) for keyword, rest in runtime if keyword == "ENV" for item in rest.split())


def data_dir(tmp: Path, name: str = "data") -> Path:
    """A fresh volume: owned by root, group 10001 writable, as fsGroup makes a claim."""
    path = tmp / name
    path.mkdir()
    os.chown(path, 0, 10001)
    path.chmod(0o2770)
    return path


async def one_session(port: int, uid: str, conversation: str, seconds: int) -> None:
    url = f"ws://127.0.0.1:{port}/v1/trigger/listen?uid={uid}&sample_rate=16000"
    async with websockets.connect(url, close_timeout=10) as ws:
        await ws.send(struct.pack("<I", 103) + conversation.encode())
        for i in range(seconds):
            await ws.send(struct.pack("<I", 101) + struct.pack("<d", 1.7e9 + i) + bytes(32000))


def serve_and_store_one_session(pod: Pod, port: int, data: Path, uid: str, token: str | None = None) -> str:
    """Health, readiness, one session's audio stored as an encrypted object under the data dir;
    returns the /metrics text (`token`: the metrics bearer token, when one is set)."""
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: pod.process.poll() is not None or http_get(base + "/health")[0] == 200, 30, "/health")
    assert pod.process.poll() is None, pod.text()
    assert http_get(base + "/health") == (200, '{"status":"healthy"}')
    assert http_get(base + "/ready") == (200, '{"status":"ready"}')
    asyncio.run(one_session(port, uid, "conversation-1", 3))
    objects = wait_until(lambda: list((data / "cloud" / "chunks" / uid / "conversation-1").glob("*.enc")), 20,
                         "the session's audio in the store under the data directory")
    assert objects[0].stat().st_size > 3 * 32000  # 3 s of audio, encrypted (nonce, tag, length)
    assert objects[0].stat().st_uid == 10001
    status, metrics = http_get(base + "/metrics", token)
    assert status == 200, metrics
    return metrics


@needs_root
def test_image_commands_as_uid_10001_on_a_read_only_root(rendered, tmp_path):
    """The generic overlay's container: entrypoint and env, uid 10001, read-only root, /data
    writable, under the io-uring component's seccomp profile with every unlisted system call
    fatal. Then the preStop hook, SIGTERM, and the spill-drain Job's command on a log left
    behind. Test-only deviations: the port (a free one instead of 8080), the store (the default
    file store under /data instead of the overlay's bucket) and the upload drain of the run
    that must leave a batch behind."""
    sts = one(rendered["generic"], "StatefulSet", "pusher")
    c = container(sts)
    port = free_port()
    env = container_env(c) | {"PUSHER_LISTEN": f"127.0.0.1:{port}"}
    del env["PUSHER_STORE"]
    entrypoint = ["pusher", "serve"]
    strict = ["--seccomp", str(SECCOMP_PROFILE), "--default", "kill"]
    data = data_dir(tmp_path)

    pod = Pod(tmp_path, data, entrypoint, env, strict, IMAGE_FILES, log_name="serve")
    try:
        token = env.get("PUSHER_METRICS_TOKEN")
        metrics = serve_and_store_one_session(pod, port, data, "image-user", token)
        assert http_get(f"http://127.0.0.1:{port}/metrics")[0] == (401 if token else 200)
        assert 'pusher_driver_info{driver="io_uring"} 1' in metrics, "the profile allows io_uring"
        rss = metric(metrics, "pusher_resident_memory_bytes")
        assert 0 < rss < metric(metrics, "pusher_memory_budget_bytes")
        # The preStop hook, as the manifest runs it, in the same root and profile.
        prestop = Pod(tmp_path, data, c["lifecycle"]["preStop"]["exec"]["command"], env, strict, IMAGE_FILES,
                      log_name="prestop")
        wait_until(lambda: http_get(f"http://127.0.0.1:{port}/ready")[0] == 503, 6, "/ready 503 after preStop")
        assert metric(http_get(f"http://127.0.0.1:{port}/metrics", token)[1], "pusher_drain_in_progress") == 1
        time.sleep(0.5)
        assert prestop.process.poll() is None, "the hook sleeps for the load balancer: " + prestop.text()
        assert prestop.text() == "", prestop.text()
        prestop.stop()
        pod.process.send_signal(signal.SIGTERM)
        assert pod.wait(15) == 0, pod.text()
    finally:
        pod.stop()
    assert "drained; exiting" in pod.text()

    # A log left behind: the store cannot be written (a root-owned directory stands in for an
    # unreachable bucket) and the upload drain is short, so SIGTERM leaves the batch in the log.
    cloud = data / "cloud" / "chunks"
    shutil.rmtree(cloud)
    cloud.mkdir(mode=0o755)
    left = env | {"PUSHER_UPLOAD_DRAIN_MS": "500"}
    pod = Pod(tmp_path, data, entrypoint, left, strict, IMAGE_FILES, log_name="serve-store-down")
    try:
        wait_until(lambda: pod.process.poll() is not None or http_get(f"http://127.0.0.1:{port}/health")[0] == 200, 30, "/health")
        asyncio.run(one_session(port, "orphan-user", "conversation-2", 2))
        wait_until(lambda: "object store failing" in pod.text(), 10, "a failed upload")
        pod.process.send_signal(signal.SIGTERM)
        assert pod.wait(15) == 0, pod.text()
    finally:
        pod.stop()
    assert "batches left in the spill log" in pod.text()

    job = container(one(rendered["generic-spill-drain"], "Job"))
    job_env = container_env(job) | {"PUSHER_LISTEN": env["PUSHER_LISTEN"]}
    del job_env["PUSHER_STORE"]
    # Refused while a server holds the directory.
    holder = Pod(tmp_path, data, entrypoint, left, strict, IMAGE_FILES, log_name="holder")
    try:
        wait_until(lambda: holder.process.poll() is not None or http_get(f"http://127.0.0.1:{port}/health")[0] == 200, 30, "/health")
        refused = Pod(tmp_path, data, job["command"], job_env, strict, IMAGE_FILES, log_name="drain-refused")
        assert refused.wait(30) == 1, refused.text()
        assert "pusher.lock" in refused.text() or "held" in refused.text(), refused.text()
        holder.process.send_signal(signal.SIGTERM)
        assert holder.wait(15) == 0, holder.text()
    finally:
        holder.stop()
    # The store is back: the Job's command uploads the orphaned batch and exits 0.
    os.chown(cloud, 10001, 10001)
    drain = Pod(tmp_path, data, job["command"], job_env, strict, IMAGE_FILES, log_name="drain")
    assert drain.wait(60) == 0, drain.text()
    assert list((cloud / "orphan-user" / "conversation-2").glob("*.enc")), drain.text()


@needs_root
def test_runtime_default_style_profile_without_io_uring_falls_back_to_epoll(tmp_path):
    """What the runtimes' default profiles do to pusher: the same allow-list without the three
    io_uring calls, failing the rest with EPERM: `--driver auto` runs on epoll and says why."""
    profile = json.loads(SECCOMP_PROFILE.read_text())
    uring = {"io_uring_setup", "io_uring_enter", "io_uring_register"}
    for entry in profile["syscalls"]:
        entry["names"] = [n for n in entry["names"] if n not in uring]
    without = tmp_path / "without-io-uring.json"
    without.write_text(json.dumps(profile))
    port = free_port()
    env = {"PUSHER_LISTEN": f"127.0.0.1:{port}", "PUSHER_ENCRYPTION_SECRET": TEST_SECRET, "PUSHER_WORKERS": "1"}
    data = data_dir(tmp_path)
    pod = Pod(tmp_path, data, ["pusher", "serve"], env, ["--seccomp", str(without)], IMAGE_FILES)
    try:
        metrics = serve_and_store_one_session(pod, port, data, "epoll-user")
        assert 'pusher_driver_info{driver="epoll"} 1' in metrics
        pod.process.send_signal(signal.SIGTERM)
        assert pod.wait(15) == 0
    finally:
        pod.stop()
    assert re.search(r"io driver: epoll.*(EPERM|not permitted)", pod.text(), re.I), pod.text()


# --- bare metal: the systemd unit ----------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def system_service_syscalls() -> list[str]:
    """`SystemCallFilter=@system-service` expanded, as systemd-analyze knows it."""
    (group,) = unit_settings()["SystemCallFilter"]
    names, todo, seen = set(), [group], set()
    while todo:
        current = todo.pop()
        seen.add(current)
        out = subprocess.run(["systemd-analyze", "syscall-filter", current], capture_output=True, text=True, check=True)
        for line in out.stdout.splitlines()[1:]:
            item = line.strip()
            if not item or item.startswith("#"):
                continue
            if item.startswith("@"):
                if item not in seen:
                    todo.append(item)
            else:
                names.add(item)
    assert {"io_uring_setup", "io_uring_enter", "io_uring_register", "prlimit64", "sched_setaffinity"} <= names
    return sorted(names)


def test_systemd_unit_verifies_and_is_hardened(tmp_path):
    settings = unit_settings()
    # verify wants the ExecStart binary to exist: the same unit with the built binary's path.
    (exec_start,) = settings["ExecStart"]
    assert exec_start.startswith("/usr/local/bin/pusher serve --config /etc/pusher/pusher.toml")
    unit = tmp_path / "pusher.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/pusher ", f"{BINARY} "))
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert out.returncode == 0 and "pusher.service" not in out.stderr, out.stderr
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(unit)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr
    for key, value in {
        "Type": "exec", "User": "pusher", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
        "ProtectSystem": "strict", "ReadWritePaths": "/var/lib/pusher", "Restart": "on-failure",
        "RestartPreventExitStatus": "2", "KillSignal": "SIGTERM",
    }.items():
        assert settings[key] == [value], key
    # TimeoutStopSec from the stop sequence of the config the unit runs.
    import tomllib

    config = sample_defaults() | tomllib.loads(UNIT_CONFIG.read_text())
    assert config["data_dir"] == "/var/lib/pusher"
    (timeout,) = settings["TimeoutStopSec"]
    assert int(timeout) >= stop_sequence_s(config) + MARGIN_S
    # LimitNOFILE: session and handshake slots of 64 workers at the defaults, within fs.nr_open.
    (nofile,) = settings["LimitNOFILE"]
    per_worker = config["sessions_per_core_max"] + config["handshake_buffers_per_core"]
    assert int(nofile) >= 64 * per_worker
    sysctl = dict(
        line.split(" = ") for line in (DEPLOY / "systemd" / "sysctl-pusher.conf").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert int(sysctl["fs.nr_open"]) >= int(nofile)
    # LimitMEMLOCK: the io_uring rings of 128 workers (4,096 SQEs of 64 B, 8,192 CQEs of 16 B).
    source = (ROOT / "src" / "server" / "worker.rs").read_text()
    entries = int(re.search(r"const URING_ENTRIES: u32 = (\d+);", source).group(1))
    (memlock,) = settings["LimitMEMLOCK"]
    assert quantity_bytes(memlock.replace("M", "Mi")) >= 128 * entries * (64 + 4 + 2 * 16)
    # The dedicated user, as systemd-sysusers creates it.
    sysroot = tmp_path / "sysroot"
    (sysroot / "etc").mkdir(parents=True)
    subprocess.run(["systemd-sysusers", f"--root={sysroot}", str(DEPLOY / "systemd" / "pusher.sysusers")],
                   check=True, capture_output=True)
    passwd = (sysroot / "etc" / "passwd").read_text()
    assert re.search(r"^pusher:x:10001:10001:.*:/var/lib/pusher:/usr/sbin/nologin$", passwd, re.M), passwd


@needs_root
def test_systemd_unit_runs_under_its_syscall_filter(tmp_path):
    """The unit's command line and config file, as its user would run it with
    ProtectSystem=strict (read-only root, /var/lib/pusher writable) and SystemCallFilter=
    (anything outside @system-service kills the process): serves, stores, pins its workers
    (pin = on), drains on SIGTERM."""
    syscalls = tmp_path / "system-service.txt"
    syscalls.write_text("\n".join(system_service_syscalls()))
    data = data_dir(tmp_path, "state")
    port = free_port()
    (exec_start,) = unit_settings()["ExecStart"]
    argv = exec_start.split()
    argv[0] = Path(argv[0]).name
    env = {"PUSHER_ENCRYPTION_SECRET": TEST_SECRET, "PUSHER_LISTEN": f"127.0.0.1:{port}",
           "PUSHER_STORE": "file:///var/lib/pusher/cloud"}
    files = [(BINARY, "/usr/local/bin/pusher"), (UNIT_CONFIG, "/etc/pusher/pusher.toml")]
    pod = Pod(tmp_path, data, argv, env, ["--syscalls", str(syscalls)], files, data_mount="/var/lib/pusher",
              image=False)
    try:
        serve_and_store_one_session(pod, port, data, "unit-user")
        pod.process.send_signal(signal.SIGTERM)
        assert pod.wait(15) == 0, pod.text()
    finally:
        pod.stop()
    text = pod.text()
    assert "pins=Some" in text or "pinned" in text, text[:3000]
    assert "drained; exiting" in text


def test_sysctl_note_names_real_kernel_settings():
    for line in (DEPLOY / "systemd" / "sysctl-pusher.conf").read_text().splitlines():
        if line and not line.startswith("#"):
            key, value = line.split(" = ")
            assert Path("/proc/sys", *key.split(".")).exists(), key
            assert all(part.isdigit() for part in value.split()), line


# --- the dashboard -------------------------------------------------------------------------------

PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "increase", "irate", "histogram_quantile", "by",
    "without", "or", "and", "unless", "vector", "le", "on", "ignoring", "group_left", "group_right",
}


def served_series(metrics_text: str) -> dict[str, set[str]]:
    """Metric name → the label names its samples carry, from a /metrics text."""
    series: dict[str, set[str]] = {}
    for line in metrics_text.splitlines():
        if line.startswith("pusher_"):
            name, _, rest = line.partition("{")
            labels = set(re.findall(r"(\w+)=\"", rest)) if rest else set()
            series.setdefault(name.split()[0], set()).update(labels)
    return series


def promql_metrics(expr: str, series: dict[str, set[str]]) -> set[str]:
    """The pusher metrics `expr` reads; fails when one, or a label it groups or filters by, is
    not served."""
    text = re.sub(r"\$\w+|\[[^\]]*\]|\"[^\"]*\"", "", expr)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text)) - PROMQL_WORDS
    metrics = {n for n in names if n.startswith("pusher_")}
    assert metrics, expr
    for name in metrics:
        assert name in series, f"{name} (in {expr}) is not in /metrics"
    labels = set().union(*(series[m] for m in metrics)) | {"instance", "le"}
    for group in re.findall(r"by \(([^)]*)\)", expr):
        for label in (g.strip() for g in group.split(",")):
            assert label in labels, f"label {label} of {expr}"
    for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr):
        assert label in labels, f"label {label} of {expr}"
    return metrics


def test_dashboard_queries_only_metrics_and_labels_pusher_serves(live_metrics):
    dashboard = json.loads((DEPLOY / "grafana" / "pusher.json").read_text())
    series = served_series(live_metrics)
    panels = dashboard["panels"]
    exprs = [t["expr"] for panel in panels for t in panel.get("targets", [])]
    exprs.append(dashboard["templating"]["list"][1]["query"]["query"])
    assert len(exprs) > 30
    used = set().union(*(promql_metrics(expr, series) for expr in exprs))
    # What the issue asks the dashboard to show.
    wanted = {"pusher_sessions_open", "pusher_frames_received_total", "pusher_frame_received_bytes_total",
              "pusher_ring_dropped_items_total", "pusher_spill_pending_bytes",
              "pusher_spill_oldest_pending_batch_age_seconds", "pusher_egress_request_duration_seconds_bucket",
              "pusher_egress_requests_total", "pusher_resident_memory_bytes", "pusher_memory_budget_bytes",
              "pusher_drain_in_progress"}
    assert wanted <= used, wanted - used
    # No two panels overlap on Grafana's 24-column grid.
    cells = set()
    for panel in panels:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))


def test_alert_rules_load_and_read_metrics_pusher_serves(live_metrics):
    rules = DEPLOY / "prometheus" / "pusher-alerts.yaml"
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make system-deps` installs Debian's prometheus"
    out = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    series = served_series(live_metrics)
    alerts = [rule for group in yaml.safe_load(rules.read_text())["groups"] for rule in group["rules"]]
    assert len(alerts) >= 8
    used = set().union(*(promql_metrics(rule["expr"], series) for rule in alerts))
    assert {"pusher_upload_store_healthy", "pusher_spill_oldest_pending_batch_age_seconds",
            "pusher_spill_full", "pusher_resident_memory_bytes"} <= used
