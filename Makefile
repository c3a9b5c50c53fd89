# pusher: the two set-up commands are `make run` and `make test` (see README.md).

CARGO ?= cargo
PYTHON ?= python3
RELEASE_BIN := target/release/pusher
# `make run` only: a fixed, public secret so the server starts out of the box. Never use it for
# real audio; set PUSHER_ENCRYPTION_SECRET instead.
DEV_ONLY_SECRET := dev-only-insecure-secret-do-not-use-in-production

.PHONY: run test test-rust test-python lint python-deps build bench

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
test: lint test-rust test-python

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test-rust:
	$(CARGO) test --workspace

python-deps:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

test-python: build python-deps
	$(PYTHON) -m pytest -q tests/python

## Benchmarks (bench/README.md); bench/run.sh builds pusher and pusher-bench in release itself.
bench:
	CARGO="$(CARGO)" bench/run.sh
