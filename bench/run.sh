#!/usr/bin/env bash
# Runs pusher-bench scenarios, each against a freshly started release server on this machine,
# and appends each result (one JSON line) to $RESULTS. See bench/README.md for the scenarios.
#
# Environment (defaults in brackets):
#   SCENARIO            scenarios to run, in order                   [idle ingest]
#   DRIVER              server io driver: auto, uring, epoll         [auto]
#   WORKERS             server worker threads                        [2]
#   PORT                server port on 127.0.0.1                     [18765]
#   IDLE_SESSIONS       idle: sessions to open                       [10000]
#   IDLE_HOLD_S         idle: seconds to hold them after settling    [30]
#   IDLE_SOURCE_IPS     idle: client source IPs, comma-separated     [kernel's choice]
#   INGEST_CONNECTIONS  ingest: streaming sessions                   [16]
#   INGEST_SECONDS      ingest: seconds of streaming                 [20]
#   INGEST_FRAME_BYTES  ingest: PCM bytes per 101 frame              [16000]
#   RESULTS             file the JSON lines are appended to          [bench/results/results.json]
#   CARGO               cargo command                                [cargo]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SCENARIO=${SCENARIO:-idle ingest}
DRIVER=${DRIVER:-auto}
WORKERS=${WORKERS:-2}
PORT=${PORT:-18765}
IDLE_SESSIONS=${IDLE_SESSIONS:-10000}
IDLE_HOLD_S=${IDLE_HOLD_S:-30}
IDLE_SOURCE_IPS=${IDLE_SOURCE_IPS:-}
INGEST_CONNECTIONS=${INGEST_CONNECTIONS:-16}
INGEST_SECONDS=${INGEST_SECONDS:-20}
INGEST_FRAME_BYTES=${INGEST_FRAME_BYTES:-16000}
RESULTS=${RESULTS:-bench/results/results.json}
CARGO=${CARGO:-cargo}

SERVER=target/release/pusher
BENCH=target/release/pusher-bench
TARGET=127.0.0.1:$PORT

for scenario in $SCENARIO; do
    case $scenario in
        idle | ingest) ;;
        *) echo "run.sh: unknown scenario '$scenario' (known: idle ingest)" >&2; exit 2 ;;
    esac
done

$CARGO build --release -p pusher -p pusher-bench

# Both the server and the client hold one descriptor per session.
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d -t pusher-bench.XXXXXX)
server_pid=
server_log=

stop_server() {
    [[ -n $server_pid ]] || return 0
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
}

cleanup() {
    stop_server
    rm -rf "$work"
}
trap cleanup EXIT

health() {
    curl -fsS --max-time 1 "http://$TARGET/health" >/dev/null 2>&1
}

# start_server NAME [extra pusher flags...]: starts a server with an empty data directory and
# waits until /health answers.
start_server() {
    local name=$1
    shift
    if health; then
        echo "run.sh: something already answers on $TARGET; set PORT" >&2
        exit 1
    fi
    server_log=$work/server-$name.log
    "$SERVER" serve --listen "$TARGET" --workers "$WORKERS" --driver "$DRIVER" \
        --data-dir "$work/data-$name" --drain-grace-ms 2000 "$@" >"$server_log" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do
        if health; then
            return 0
        fi
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "run.sh: the server exited at start:" >&2
            cat "$server_log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "run.sh: no answer from $TARGET/health after 10 s" >&2
    exit 1
}

# The driver the server resolved (auto → uring or epoll), from its start log.
resolved_driver() {
    sed -n 's/.*io driver: \([a-z_]*\):.*/\1/p' "$server_log" | head -n 1
}

# bench SCENARIO [pusher-bench flags...]: runs one scenario against the running server and
# appends its result line to $RESULTS.
bench() {
    local scenario=$1
    shift
    "$BENCH" "$scenario" --target "$TARGET" --pid "$server_pid" \
        --label "driver=$DRIVER" --label "driver_resolved=$(resolved_driver)" \
        --label "workers=$WORKERS" --label "commit=$commit" --label "date=$(date -u +%FT%TZ)" \
        "$@" | tee -a "$RESULTS"
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "run.sh: the server died during '$scenario':" >&2
        tail -n 20 "$server_log" >&2
        exit 1
    fi
}

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain 2>/dev/null) ]]; then
    commit=$commit-dirty
fi
mkdir -p "$(dirname "$RESULTS")"

for scenario in $SCENARIO; do
    echo "== $scenario (driver $DRIVER, $WORKERS workers)" >&2
    case $scenario in
        idle)
            start_server idle --max-sessions-per-core 9000
            bench idle --sessions "$IDLE_SESSIONS" --hold-s "$IDLE_HOLD_S" \
                ${IDLE_SOURCE_IPS:+--source-ips "$IDLE_SOURCE_IPS"}
            ;;
        ingest)
            start_server ingest
            bench ingest --connections "$INGEST_CONNECTIONS" --seconds "$INGEST_SECONDS" \
                --frame-bytes "$INGEST_FRAME_BYTES"
            ;;
    esac
    stop_server
done
echo "results appended to $RESULTS" >&2
