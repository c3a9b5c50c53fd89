#!/usr/bin/env bash
# Runs pusher-bench scenarios, each against a freshly started release server on this machine,
# and appends each result (one JSON line) to $RESULTS. Each run also writes its result file,
# <dir of $RESULTS>/<scenario>-<UTC timestamp>.json (goals, figures, RSS series: see
# bench/README.md, "Result files"), and for stream, outage and chaos an SVG plot of the server's RSS
# over time beside it (<scenario>-<timestamp>.svg). See bench/README.md for the scenarios.
#
# BENCH_ASSERT=1: after the last scenario, `pusher-bench check` reads the result files of this
# invocation and the exit code is 1 if any goal was not met (chaos: rss_flat,
# peak_under_budget, all_104_answered_or_cancelled, no_loss, reconnected, cleaned_up; stream: rss_flat, lag_bounded,
# no_loss; outage: rss_flat, no_loss, recovered; latency: p99_ms < 10, process_p99_ms < 10; idle: kib_per_session <= 2 (the largest of its steps); ingest: gb_per_server_cpu_s >= 2;
# log: log_to_disk_ratio >= 0.8; storm: refused == 0, all_open_s <= STORM_CONNECT_TIMEOUT_S,
# health_probe_max_ms < 1000, closed_after_upgrade == 0; capacity: sessions_per_core >= 5000). A goal that cannot be judged (null, e.g. no memory budget
# exposed) does not fail. Without BENCH_ASSERT the goals are only reported.
#
# Environment (defaults in brackets):
#   SCENARIO            scenarios to run, in order: the default set runs in about 8 minutes
#                       on a 2-core machine       [idle ingest latency chaos outage]
#   DRIVER              server io driver: auto, uring, epoll         [auto]
#   WORKERS             server worker threads                        [2]
#   PORT                server port on 127.0.0.1                     [18765]
#   IDLE_STEPS          idle: sessions open at each step, ascending  [1000,10000,18000]
#   IDLE_CLIENTS        idle: client processes holding the sessions  [3]
#   IDLE_HOLD_S         idle: seconds to hold them after settling, per step [20]
#   IDLE_SOURCE_IPS     idle: client source IPs, comma-separated     [127.0.0.2 .. 127.0.0.5]
#   INGEST_CONNECTIONS  ingest: streaming sessions                   [16]
#   INGEST_SECONDS      ingest: seconds of streaming                 [20]
#   INGEST_FRAME_BYTES  ingest: PCM bytes per 101 frame              [16000]
#   INGEST_DRIVERS      ingest: the io drivers it runs on, one server each, compared side by
#                       side, when DRIVER is auto (otherwise DRIVER alone) [uring epoll]
#   LOG_CONNECTIONS     log: streaming sessions                      [16]
#   LOG_SECONDS         log: seconds of streaming                    [20]
#   LOG_FRAME_BYTES     log: PCM bytes per 101 frame                 [16000]
#   LOG_DD_MIB          log: MiB dd writes with conv=fdatasync, before and after the load [2048]
#   LOG_DSYNC_MIB       log: MiB dd writes with oflag=dsync, before  [512]
#   LOG_SPILL_BYTES_MAX log: the server's --spill-bytes-max          [10 GiB, less if the disk is short]
#   LOG_QUIET_LOAD      log: wait for a 1-minute load average below  [0.8]
#   LOG_QUIET_WAIT_S    log: ... for at most this long               [600]
#   STREAM_SESSIONS     stream: sessions at real-time rate           [1000]
#   STREAM_SECONDS      stream: seconds of streaming                 [300]
#   STREAM_CONVERSATION_S  stream: conversation switch period, s     [120]
#   STREAM_WARMUP_S     stream: seconds left out of the RSS slope    [120]
#   STREAM_SOURCE_IPS   stream: client source IPs, comma-separated   [127.0.0.2 .. 127.0.0.5]
#   STREAM_SINK_DELAY_MS   stream: the S3 sink's delay per PUT       [2000]
#   STREAM_UPLOAD_CONCURRENCY  stream: the server's --upload-concurrency [64]
#   STREAM_DRAIN_TIMEOUT_S stream: longest wait for the uploads     [300]
#   STREAM_SERIES       stream: file for every RSS and /metrics reading (JSON)
#                                          [bench/results/stream-series-<date>.json]
#   OUTAGE_SESSIONS     outage: sessions at real-time rate           [300]
#   OUTAGE_SECONDS      outage: seconds of streaming                 [130]
#   OUTAGE_FAIL_FROM_S  outage: the store is down from this second of streaming  [30]
#   OUTAGE_FAIL_FOR_S   outage: ... for this many seconds (puts answered 503)    [60]
#   OUTAGE_CONVERSATION_S  outage: conversation switch period, s     [30]
#   OUTAGE_WARMUP_S     outage: seconds left out of the RSS slope    [20]
#   OUTAGE_STORE_DELAY_MS  outage: the S3 endpoint's delay per PUT outside the outage [100]
#   OUTAGE_DRAIN_TIMEOUT_S outage: longest wait for the uploads     [300]
#   OUTAGE_SERIES       outage: file for every RSS and /metrics reading (JSON)
#                                          [bench/results/outage-series-<date>.json]
#   CHAOS_SECONDS       chaos: seconds of load                       [60]
#   CHAOS_COOLDOWN_S    chaos: seconds of sampling after the load    [15]
#   CHAOS_MODE          chaos: sessions run: leak1 (104s only), leak2 (audio only), both [both]
#   CHAOS_DISCONNECT_INTERVAL_S  chaos: every session reconnects (same uid, new conversation)
#                       every this many seconds, spread; 0: never    [0]
#   CHAOS_DISCONNECT    chaos: how it ends a connection first: close (Close 1000) or drop (FIN
#                       without a Close frame)                       [close]
#   CHAOS_PROCESS_SESSIONS  chaos: sessions sending a 104 every 100 ms  [30]
#   CHAOS_AUDIO_SESSIONS    chaos: sessions sending 16,000 B of audio every 50 ms, each user
#                       with an audio_bytes app                      [15]
#   CHAOS_PROCESSOR_DELAY_MS  chaos: the simulated processor's delay [5000]
#   CHAOS_WEBHOOK_DELAY_MS    chaos: the audio apps' webhook delay   [500]
#   CHAOS_STORE_DELAY_MS      chaos: the S3 endpoint's delay per PUT [2000]
#   CHAOS_DRAIN_TIMEOUT_S     chaos: longest wait for the uploads    [300]
#   CHAOS_SERIES        chaos: file for every RSS and /metrics reading (JSON)
#                                          [bench/results/chaos-series-<date>.json]
#   LATENCY_SESSIONS    latency: sessions sending one 102 per second [1000]
#   LATENCY_SECONDS     latency: seconds of sending                  [30]
#   LATENCY_SOURCE_IPS  latency: client source IPs, comma-separated  [127.0.0.2 .. 127.0.0.5]
#   LATENCY_PROCESS_SHARE  latency: share of the sessions also sending 104s  [1]
#   LATENCY_PROCESS_INTERVAL_MS  latency: time between a session's 104s  [10000]
#   LATENCY_PROCESSOR_DELAY_MS   latency: the simulated processor's delay [0]
#   STORM_SESSIONS      storm: sessions opened at once (not in the default SCENARIO set) [10000]
#   STORM_CLIENTS       storm: client processes firing them          [4]
#   STORM_CONNECT_TIMEOUT_S  storm: time allowed for every 101 (the all-open goal) [10]
#   STORM_HOLD_S        storm: seconds the sessions stay open after the last attempt [5]
#   STORM_SOURCE_IPS    storm: client source IPs, comma-separated    [127.0.0.2 .. 127.0.0.5]
#   CAPACITY_START      capacity: sessions of the ramp's first step (not in the default set) [100]
#   CAPACITY_FACTOR     capacity: each step this many times the last  [2]
#   CAPACITY_SESSIONS_MAX  capacity: the ramp's last step (the server's slots: 8,940 per core here) [16000]
#   CAPACITY_REFINE     capacity: bisection steps after a bound broke [3]
#   CAPACITY_SETTLE_S   capacity: seconds from a step's sessions open to its window [10]
#   CAPACITY_HOLD_S     capacity: seconds of each step's measured window [20]
#   CAPACITY_CLIENTS    capacity: client processes holding the sessions [3]
#   CAPACITY_SOURCE_IPS capacity: client source IPs, comma-separated  [127.0.0.2 .. 127.0.0.5]
#   CAPACITY_PRIVATE_CLOUD_SHARE      capacity mix: users with private-cloud sync   [0.25]
#   CAPACITY_TRANSCRIPT_WEBHOOK_SHARE capacity mix: users with a realtime webhook   [0.10]
#   CAPACITY_AUDIO_APP_SHARE          capacity mix: users with an audio-bytes app   [0.05]
#   CAPACITY_UPLOAD_CONCURRENCY  capacity: the server's --upload-concurrency [its default, 8]
#   PEER_CORES          capacity: cores the peer's workers have (sessions per core, CPU
#                       bound); a single-process Python service: 1  [1]
#   SINK_PORT           stream: port of the S3 sink; outage, chaos, latency: port of the downstream
#                       simulator the load tool runs                 [PORT + 1]
#   DEAD_PORT           log: closed port the S3 endpoint points at   [PORT + 2]
#   BENCH_DIR           parent of the temporary data directories (the log scenario measures
#                       the disk under it)                           [$TMPDIR or /tmp]
#   RESULTS             file the JSON lines are appended to          [bench/results/results.json]
#   CARGO               cargo command                                [cargo]
#   BENCH_ASSERT        1: exit 1 when a goal of a scenario run was not met [0]
#   PROFILER            a command run in the background during each scenario's load, with the
#                       server's pid appended as its last word; it gets SIGINT when the load
#                       ends and run.sh waits for it (perf/flamegraph: `perf record ... -p`) []
#   PEER_TARGET         peer mode: another server speaking the same protocol, ws://host:port;
#                       each scenario then also runs against it, and `pusher-bench compare`
#                       puts the pair in one table and one RSS plot (bench/README.md, "Peer
#                       mode"). run.sh neither starts nor stops the peer; it must call the
#                       simulator on SINK_PORT (processor, webhooks, hooks, S3)     []
#   PEER_PID            peer mode: the peer's process id (RSS and CPU from /proc) []
#   PEER_NAME           peer mode: its name in the results, tables and plots [peer]
#
# The servers get PUSHER_ENCRYPTION_SECRET from the environment, or a fixed bench-only one (the
# audio sent is silence). `ingest` runs with private-cloud sync off (a settings file), so it
# measures the session path as before the spill log existed; `log` measures the spill log.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SCENARIO=${SCENARIO:-idle ingest latency chaos outage}
DRIVER=${DRIVER:-auto}
WORKERS=${WORKERS:-2}
PORT=${PORT:-18765}
IDLE_STEPS=${IDLE_STEPS:-1000,10000,18000}
IDLE_CLIENTS=${IDLE_CLIENTS:-3}
IDLE_HOLD_S=${IDLE_HOLD_S:-20}
IDLE_SOURCE_IPS=${IDLE_SOURCE_IPS:-127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5}
INGEST_CONNECTIONS=${INGEST_CONNECTIONS:-16}
INGEST_SECONDS=${INGEST_SECONDS:-20}
INGEST_FRAME_BYTES=${INGEST_FRAME_BYTES:-16000}
INGEST_DRIVERS=${INGEST_DRIVERS:-uring epoll}
LOG_CONNECTIONS=${LOG_CONNECTIONS:-16}
LOG_SECONDS=${LOG_SECONDS:-20}
LOG_FRAME_BYTES=${LOG_FRAME_BYTES:-16000}
LOG_DD_MIB=${LOG_DD_MIB:-2048}
LOG_DSYNC_MIB=${LOG_DSYNC_MIB:-512}
LOG_SPILL_BYTES_MAX=${LOG_SPILL_BYTES_MAX:-}
LOG_QUIET_LOAD=${LOG_QUIET_LOAD:-0.8}
LOG_QUIET_WAIT_S=${LOG_QUIET_WAIT_S:-600}
STREAM_SESSIONS=${STREAM_SESSIONS:-1000}
STREAM_SECONDS=${STREAM_SECONDS:-300}
STREAM_CONVERSATION_S=${STREAM_CONVERSATION_S:-120}
STREAM_WARMUP_S=${STREAM_WARMUP_S:-120}
STREAM_SOURCE_IPS=${STREAM_SOURCE_IPS:-127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5}
STREAM_SINK_DELAY_MS=${STREAM_SINK_DELAY_MS:-2000}
STREAM_UPLOAD_CONCURRENCY=${STREAM_UPLOAD_CONCURRENCY:-64}
STREAM_DRAIN_TIMEOUT_S=${STREAM_DRAIN_TIMEOUT_S:-300}
STREAM_SERIES=${STREAM_SERIES:-}
OUTAGE_SESSIONS=${OUTAGE_SESSIONS:-300}
OUTAGE_SECONDS=${OUTAGE_SECONDS:-130}
OUTAGE_FAIL_FROM_S=${OUTAGE_FAIL_FROM_S:-30}
OUTAGE_FAIL_FOR_S=${OUTAGE_FAIL_FOR_S:-60}
OUTAGE_CONVERSATION_S=${OUTAGE_CONVERSATION_S:-30}
OUTAGE_WARMUP_S=${OUTAGE_WARMUP_S:-20}
OUTAGE_STORE_DELAY_MS=${OUTAGE_STORE_DELAY_MS:-100}
OUTAGE_DRAIN_TIMEOUT_S=${OUTAGE_DRAIN_TIMEOUT_S:-300}
OUTAGE_SERIES=${OUTAGE_SERIES:-}
CHAOS_SECONDS=${CHAOS_SECONDS:-60}
CHAOS_COOLDOWN_S=${CHAOS_COOLDOWN_S:-15}
CHAOS_MODE=${CHAOS_MODE:-both}
CHAOS_DISCONNECT_INTERVAL_S=${CHAOS_DISCONNECT_INTERVAL_S:-0}
CHAOS_DISCONNECT=${CHAOS_DISCONNECT:-close}
CHAOS_PROCESS_SESSIONS=${CHAOS_PROCESS_SESSIONS:-30}
CHAOS_AUDIO_SESSIONS=${CHAOS_AUDIO_SESSIONS:-15}
CHAOS_PROCESSOR_DELAY_MS=${CHAOS_PROCESSOR_DELAY_MS:-5000}
CHAOS_WEBHOOK_DELAY_MS=${CHAOS_WEBHOOK_DELAY_MS:-500}
CHAOS_STORE_DELAY_MS=${CHAOS_STORE_DELAY_MS:-2000}
CHAOS_DRAIN_TIMEOUT_S=${CHAOS_DRAIN_TIMEOUT_S:-300}
CHAOS_SERIES=${CHAOS_SERIES:-}
LATENCY_SESSIONS=${LATENCY_SESSIONS:-1000}
LATENCY_SECONDS=${LATENCY_SECONDS:-30}
LATENCY_SOURCE_IPS=${LATENCY_SOURCE_IPS:-127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5}
LATENCY_PROCESS_SHARE=${LATENCY_PROCESS_SHARE:-1}
LATENCY_PROCESS_INTERVAL_MS=${LATENCY_PROCESS_INTERVAL_MS:-10000}
LATENCY_PROCESSOR_DELAY_MS=${LATENCY_PROCESSOR_DELAY_MS:-0}
STORM_SESSIONS=${STORM_SESSIONS:-10000}
STORM_CLIENTS=${STORM_CLIENTS:-4}
STORM_CONNECT_TIMEOUT_S=${STORM_CONNECT_TIMEOUT_S:-10}
STORM_HOLD_S=${STORM_HOLD_S:-5}
STORM_SOURCE_IPS=${STORM_SOURCE_IPS:-127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5}
CAPACITY_START=${CAPACITY_START:-100}
CAPACITY_FACTOR=${CAPACITY_FACTOR:-2}
CAPACITY_SESSIONS_MAX=${CAPACITY_SESSIONS_MAX:-16000}
CAPACITY_REFINE=${CAPACITY_REFINE:-3}
CAPACITY_SETTLE_S=${CAPACITY_SETTLE_S:-10}
CAPACITY_HOLD_S=${CAPACITY_HOLD_S:-20}
CAPACITY_CLIENTS=${CAPACITY_CLIENTS:-3}
CAPACITY_SOURCE_IPS=${CAPACITY_SOURCE_IPS:-127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5}
CAPACITY_PRIVATE_CLOUD_SHARE=${CAPACITY_PRIVATE_CLOUD_SHARE:-0.25}
CAPACITY_TRANSCRIPT_WEBHOOK_SHARE=${CAPACITY_TRANSCRIPT_WEBHOOK_SHARE:-0.10}
CAPACITY_AUDIO_APP_SHARE=${CAPACITY_AUDIO_APP_SHARE:-0.05}
CAPACITY_UPLOAD_CONCURRENCY=${CAPACITY_UPLOAD_CONCURRENCY:-}
PEER_CORES=${PEER_CORES:-1}
SINK_PORT=${SINK_PORT:-$((PORT + 1))}
DEAD_PORT=${DEAD_PORT:-$((PORT + 2))}
BENCH_DIR=${BENCH_DIR:-${TMPDIR:-/tmp}}
RESULTS=${RESULTS:-bench/results/results.json}
CARGO=${CARGO:-cargo}
BENCH_ASSERT=${BENCH_ASSERT:-0}
PROFILER=${PROFILER:-}
PEER_TARGET=${PEER_TARGET:-}
PEER_PID=${PEER_PID:-}
PEER_NAME=${PEER_NAME:-peer}

SERVER=${CARGO_TARGET_DIR:-target}/release/pusher
BENCH=${CARGO_TARGET_DIR:-target}/release/pusher-bench
TARGET=127.0.0.1:$PORT

if [[ -n $PEER_TARGET ]] && ! kill -0 "${PEER_PID:?PEER_PID: the process id of the peer, with PEER_TARGET}" 2>/dev/null; then
    echo "run.sh: no process $PEER_PID (PEER_PID) to measure the peer at $PEER_TARGET" >&2
    exit 1
fi

for scenario in $SCENARIO; do
    case $scenario in
        idle | ingest | log | stream | outage | chaos | latency | storm | capacity | abuse) ;;
        *) echo "run.sh: unknown scenario '$scenario' (known: idle ingest log stream outage chaos latency storm capacity abuse)" >&2; exit 2 ;;
    esac
done

# Bench audio is silence; a fixed secret lets the servers start (they refuse without one while
# private-cloud audio may be stored at level `enhanced`, the default).
export PUSHER_ENCRYPTION_SECRET=${PUSHER_ENCRYPTION_SECRET:-bench-only-insecure-secret-0123456789abcdef}

$CARGO build --release -p pusher -p pusher-bench

# Both the server and the client hold one descriptor per session.
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d "$BENCH_DIR/pusher-bench.XXXXXX")
server_pid=
server_log=
# Extra environment of the next server started (NAME=VALUE words).
server_env=()
sink_pid=

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

stop_sink() {
    [[ -n $sink_pid ]] || return 0
    kill -TERM "$sink_pid" 2>/dev/null || true
    wait "$sink_pid" 2>/dev/null || true
    sink_pid=
}

cleanup() {
    stop_server
    stop_sink
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
    env "${server_env[@]}" "$SERVER" serve --listen "$TARGET" --workers "$WORKERS" --driver "$DRIVER" \
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

# listening PORT: true when something accepts connections on 127.0.0.1:PORT.
listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# sink_port_free: exits unless $SINK_PORT is free (the sink or the load tool listens there).
sink_port_free() {
    if listening "$SINK_PORT"; then
        echo "run.sh: something already listens on 127.0.0.1:$SINK_PORT; set SINK_PORT" >&2
        exit 1
    fi
}

# start_sink: starts the slow S3 endpoint (the downstream simulator) on $SINK_PORT and waits
# until it answers.
start_sink() {
    sink_port_free
    "$BENCH" downstream --listen "127.0.0.1:$SINK_PORT" --store-delay-ms "$STREAM_SINK_DELAY_MS" \
        >"$work/sink.log" 2>&1 &
    sink_pid=$!
    for _ in $(seq 100); do
        if curl -fsS --max-time 1 "http://127.0.0.1:$SINK_PORT/_sink/health" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    echo "run.sh: the S3 sink did not start:" >&2
    cat "$work/sink.log" >&2
    exit 1
}

# The S3 client environment of a server whose store is s3://... at http://127.0.0.1:PORT.
s3_env() {
    server_env=(AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=us-east-1
        "AWS_ENDPOINT=http://127.0.0.1:$1" AWS_ALLOW_HTTP=true)
}

# chaos_settings: the per-user settings of the chaos scenario: every audio user has an app with
# trigger audio_bytes whose webhook is the load tool's simulator; the 104 users get the defaults.
chaos_settings() {
    local i
    for ((i = 0; i < CHAOS_AUDIO_SESSIONS; i++)); do
        printf '[[users."chaos-audio-%d".apps]]\nid = "audio-app"\n' "$i"
        printf 'webhook_url = "http://127.0.0.1:%s/webhook/audio"\n' "$SINK_PORT"
        printf 'triggers = ["audio_bytes"]\n\n'
    done
}

# wait_for_quiet: waits (at most LOG_QUIET_WAIT_S) until the 1-minute load average is below
# LOG_QUIET_LOAD, so that a disk-rate comparison is not skewed by other work on the machine.
wait_for_quiet() {
    local waited=0 load
    while :; do
        load=$(cut -d ' ' -f 1 /proc/loadavg)
        if awk -v load="$load" -v max="$LOG_QUIET_LOAD" 'BEGIN { exit !(load < max) }'; then
            echo "run.sh: load average $load (< $LOG_QUIET_LOAD)" >&2
            return 0
        fi
        if ((waited >= LOG_QUIET_WAIT_S)); then
            echo "run.sh: load average still $load after ${waited}s; running anyway" >&2
            return 0
        fi
        sleep 10
        waited=$((waited + 10))
    done
}

# The driver the server resolved (auto → uring or epoll), from its start log.
resolved_driver() {
    sed -n 's/.*io driver: \([a-z_]*\):.*/\1/p' "$server_log" | head -n 1
}

# bench SCENARIO [pusher-bench flags...]: runs one scenario against the running server and
# appends its result line to $RESULTS.
# Its result file goes to $(dirname $RESULTS)/SCENARIO-<timestamp>.json (and .svg).
bench() {
    local scenario=$1
    shift
    local result_file
    result_file=$(dirname "$RESULTS")/$scenario-$(date -u +%Y%m%dT%H%M%SZ).json
    local profiler_pid=
    if [[ -n $PROFILER ]]; then
        # PROFILER is a command line: unquoted, so that it splits into words.
        $PROFILER "$server_pid" >&2 &
        profiler_pid=$!
    fi
    "$BENCH" "$scenario" --target "$TARGET" --pid "$server_pid" \
        --label "driver=$DRIVER" --label "driver_resolved=$(resolved_driver)" \
        --label "workers=$WORKERS" --label "commit=$commit" --label "date=$(date -u +%FT%TZ)" \
        --result-file "$result_file" "$@" | tee -a "$RESULTS"
    if [[ -n $profiler_pid ]]; then
        kill -INT "$profiler_pid" 2>/dev/null || true
        # A profiler ended by SIGINT exits non-zero (perf record: 130); its output tells.
        wait "$profiler_pid" || true
    fi
    result_files+=("$result_file")
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "run.sh: the server died during '$scenario':" >&2
        tail -n 20 "$server_log" >&2
        exit 1
    fi
    if [[ -n $PEER_TARGET ]]; then
        bench_peer "$scenario" "$result_file" "$@"
    fi
}

# bench_peer SCENARIO PUSHER_RESULT_FILE [pusher-bench flags...]: the same scenario against the
# peer (its result file is pusher's with -$PEER_NAME), then `pusher-bench compare` on the pair:
# the table on stdout and in <pusher's result file>-compare.md, the plot in ...-compare.svg.
bench_peer() {
    local scenario=$1 pusher_file=$2
    shift 2
    if [[ $scenario == log ]]; then
        echo "run.sh: log measures pusher's spill log; not run against the peer" >&2
        return 0
    fi
    # The fresh pusher server is done: the peer gets the machine to itself.
    stop_server
    if [[ -n $sink_pid ]]; then
        # A fresh S3 sink: its record is compared with what the peer was sent.
        stop_sink
        start_sink
    fi
    # The peer's own --series file beside pusher's; capacity: the peer's cores.
    local args=() previous=
    for arg in "$@"; do
        [[ $previous == --series ]] && arg=${arg%.json}-$PEER_NAME.json
        [[ $previous == --cores ]] && arg=$PEER_CORES
        args+=("$arg")
        previous=$arg
    done
    local peer_file=${pusher_file%.json}-$PEER_NAME.json
    echo "== $scenario against the peer $PEER_NAME ($PEER_TARGET, pid $PEER_PID)" >&2
    "$BENCH" "$scenario" --target "$PEER_TARGET" --target-pid "$PEER_PID" \
        --target-name "$PEER_NAME" --label "commit=$commit" --label "date=$(date -u +%FT%TZ)" \
        --result-file "$peer_file" "${args[@]}" | tee -a "$RESULTS"
    peer_files+=("$peer_file")
    "$BENCH" compare --svg "${pusher_file%.json}-compare.svg" "$pusher_file" "$peer_file" |
        tee "${pusher_file%.json}-compare.md"
}

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain 2>/dev/null) ]]; then
    commit=$commit-dirty
fi
mkdir -p "$(dirname "$RESULTS")"
# The result files written by this invocation (for BENCH_ASSERT), and the peer's.
result_files=()
peer_files=()

for scenario in $SCENARIO; do
    echo "== $scenario (driver $DRIVER, $WORKERS workers)" >&2
    server_env=()
    case $scenario in
        idle)
            # The default session slots: as many as the server's open-files limit allows, logged
            # at start. A fixed 9,000 per core refused some of 18,000 sessions, as the kernel
            # does not split them evenly. The open-files limit (20,000 here) is shared with the
            # handshake slots, which it also reserves: at the default 1,024 per core, 8,944
            # session slots per core are left, too few for 18,000 sessions on 2 workers; at 256,
            # 9,712.
            start_server idle --handshake-buffers-per-core 256
            grep -m 1 'session slots capped' "$server_log" >&2 || true
            bench idle --steps "$IDLE_STEPS" --clients "$IDLE_CLIENTS" --hold-s "$IDLE_HOLD_S" \
                --source-ips "$IDLE_SOURCE_IPS"
            ;;
        ingest)
            # Private-cloud sync off: the session path alone, comparable with the core results.
            # With DRIVER=auto, once per driver of INGEST_DRIVERS, then side by side.
            printf '[default]\nprivate_cloud_sync_enabled = false\n' >"$work/no-cloud.toml"
            asked_driver=$DRIVER
            ingest_files=()
            for ingest_driver in $([[ $asked_driver == auto ]] && echo "$INGEST_DRIVERS" || echo "$asked_driver"); do
                DRIVER=$ingest_driver
                start_server "ingest-$ingest_driver" --settings "$work/no-cloud.toml"
                bench ingest --connections "$INGEST_CONNECTIONS" --seconds "$INGEST_SECONDS" \
                    --frame-bytes "$INGEST_FRAME_BYTES"
                ingest_files+=("${result_files[-1]}")
                stop_server
            done
            DRIVER=$asked_driver
            if ((${#ingest_files[@]} > 1)); then
                "$BENCH" compare "${ingest_files[@]}" | tee "${ingest_files[0]%.json}-drivers.md" >&2
            fi
            ;;
        log)
            wait_for_quiet
            load=$(cut -d ' ' -f 1 /proc/loadavg)
            avail=$(df -B1 --output=avail "$work" | tail -n 1 | tr -d ' ')
            spill_max=$LOG_SPILL_BYTES_MAX
            if [[ -z $spill_max ]]; then
                spill_max=$((10 << 30))
                room=$((avail - (LOG_DD_MIB << 20) - (4 << 30)))
                ((room < spill_max)) && spill_max=$room
            fi
            if ((spill_max < (1 << 30))); then
                echo "run.sh: only $avail bytes free under $work; the log scenario needs more" >&2
                exit 1
            fi
            echo "run.sh: $avail bytes free under $work; --spill-bytes-max $spill_max" >&2
            # Uploads go to an S3 endpoint on a closed port: they fail at once and back off, so
            # the uploader neither frees log space nor competes for the CPU.
            if listening "$DEAD_PORT"; then
                echo "run.sh: something listens on 127.0.0.1:$DEAD_PORT; set DEAD_PORT" >&2
                exit 1
            fi
            s3_env "$DEAD_PORT"
            start_server log --store s3://bench/log --spill-bytes-max "$spill_max"
            # The tool measures the disk with dd in $work (the filesystem of the data
            # directory) before and after the load.
            bench log --connections "$LOG_CONNECTIONS" --seconds "$LOG_SECONDS" \
                --frame-bytes "$LOG_FRAME_BYTES" --disk-probe-dir "$work" \
                --disk-probe-mib "$LOG_DD_MIB" --disk-probe-dsync-mib "$LOG_DSYNC_MIB" \
                --label "loadavg_1m_before=$load" \
                --label "filesystem=$(df --output=fstype "$work" | tail -n 1)" \
                --label "spill_bytes_max=$spill_max"
            ;;
        stream)
            start_sink
            s3_env "$SINK_PORT"
            # ~17 batches close per second for 1,000 streams (two per session per 120 s), each
            # held 2 s by the sink: ~34 uploads in flight; 64 leaves room for bursts.
            start_server stream --store s3://bench/audio \
                --upload-concurrency "$STREAM_UPLOAD_CONCURRENCY"
            bench stream --sessions "$STREAM_SESSIONS" --seconds "$STREAM_SECONDS" \
                --conversation-s "$STREAM_CONVERSATION_S" --warmup-s "$STREAM_WARMUP_S" \
                --source-ips "$STREAM_SOURCE_IPS" --sink "127.0.0.1:$SINK_PORT" \
                --drain-timeout-s "$STREAM_DRAIN_TIMEOUT_S" \
                --series "${STREAM_SERIES:-$(dirname "$RESULTS")/stream-series-$(date -u +%Y%m%dT%H%M%SZ).json}" \
                --label "loadavg_1m_before=$(cut -d ' ' -f 1 /proc/loadavg)" \
                --label "sink_delay_ms=$STREAM_SINK_DELAY_MS" \
                --label "upload_concurrency=$STREAM_UPLOAD_CONCURRENCY"
            ;;
        outage)
            # The load tool runs the S3 endpoint on $SINK_PORT; from OUTAGE_FAIL_FROM_S s after
            # the start of streaming it answers every put 503 for OUTAGE_FAIL_FOR_S s.
            sink_port_free
            s3_env "$SINK_PORT"
            start_server outage --store s3://bench/outage
            bench outage --downstream-listen "127.0.0.1:$SINK_PORT" \
                --sessions "$OUTAGE_SESSIONS" --seconds "$OUTAGE_SECONDS" \
                --conversation-s "$OUTAGE_CONVERSATION_S" --warmup-s "$OUTAGE_WARMUP_S" \
                --store-delay-ms "$OUTAGE_STORE_DELAY_MS" \
                --store-fail-from-s "$OUTAGE_FAIL_FROM_S" --store-fail-for-s "$OUTAGE_FAIL_FOR_S" \
                --drain-timeout-s "$OUTAGE_DRAIN_TIMEOUT_S" \
                --series "${OUTAGE_SERIES:-$(dirname "$RESULTS")/outage-series-$(date -u +%Y%m%dT%H%M%SZ).json}" \
                --label "loadavg_1m_before=$(cut -d ' ' -f 1 /proc/loadavg)" \
                --label "store_delay_ms=$OUTAGE_STORE_DELAY_MS"
            ;;
        chaos)
            # The load tool runs the processor, the audio apps' webhook and the S3 endpoint on
            # $SINK_PORT; private-cloud sync and upload concurrency are the defaults.
            sink_port_free
            chaos_settings >"$work/chaos-settings.toml"
            s3_env "$SINK_PORT"
            start_server chaos --store s3://bench/chaos --settings "$work/chaos-settings.toml" \
                --processor-url "http://127.0.0.1:$SINK_PORT/processor"
            bench chaos --downstream-listen "127.0.0.1:$SINK_PORT" \
                --seconds "$CHAOS_SECONDS" --cooldown-s "$CHAOS_COOLDOWN_S" --mode "$CHAOS_MODE" \
                --disconnect-interval-s "$CHAOS_DISCONNECT_INTERVAL_S" --disconnect "$CHAOS_DISCONNECT" \
                --process-sessions "$CHAOS_PROCESS_SESSIONS" --audio-sessions "$CHAOS_AUDIO_SESSIONS" \
                --processor-delay-ms "$CHAOS_PROCESSOR_DELAY_MS" \
                --webhook-delay-ms "$CHAOS_WEBHOOK_DELAY_MS" --store-delay-ms "$CHAOS_STORE_DELAY_MS" \
                --drain-timeout-s "$CHAOS_DRAIN_TIMEOUT_S" \
                --series "${CHAOS_SERIES:-$(dirname "$RESULTS")/chaos-series-$(date -u +%Y%m%dT%H%M%SZ).json}" \
                --label "loadavg_1m_before=$(cut -d ' ' -f 1 /proc/loadavg)"
            ;;
        latency)
            # Every 102 goes to one global hook and every 104 to the processor: the load tool's
            # simulator on $SINK_PORT.
            sink_port_free
            start_server latency --transcript-hook "http://127.0.0.1:$SINK_PORT/hook" \
                --processor-url "http://127.0.0.1:$SINK_PORT/processor"
            bench latency --downstream-listen "127.0.0.1:$SINK_PORT" \
                --sessions "$LATENCY_SESSIONS" --seconds "$LATENCY_SECONDS" \
                --source-ips "$LATENCY_SOURCE_IPS" \
                --process-share "$LATENCY_PROCESS_SHARE" \
                --process-interval-ms "$LATENCY_PROCESS_INTERVAL_MS" \
                --processor-delay-ms "$LATENCY_PROCESSOR_DELAY_MS" \
                --label "loadavg_1m_before=$(cut -d ' ' -f 1 /proc/loadavg)"
            ;;
        abuse)
            # The abuse suite (tests/abuse.rs, also part of `make test`) in release, one attack
            # at a time: each test starts its own server and prints one `ABUSE {json}` line with
            # the canary's round trips, /health latencies and RSS during the attack.
            abuse_file=$(realpath -m "$(dirname "$RESULTS")")/abuse-$(date -u +%Y%m%dT%H%M%SZ).jsonl
            # CARGO=true skips builds elsewhere; the suite still needs cargo to run.
            test_cargo=$CARGO
            [[ $test_cargo == true ]] && test_cargo=cargo
            abuse_status=0
            ABUSE_FIGURES="$abuse_file.tmp" "$test_cargo" test --release --test abuse -- \
                --test-threads=1 >&2 || abuse_status=$?
            sed "s/}\$/,\"commit\":\"$commit\",\"date\":\"$(date -u +%FT%TZ)\"}/" \
                "$abuse_file.tmp" >"$abuse_file"
            rm -f "$abuse_file.tmp"
            cat "$abuse_file" >&2
            echo "abuse: figures in $abuse_file" >&2
            if ((abuse_status != 0)); then
                echo "run.sh: the abuse suite failed (exit $abuse_status)" >&2
                exit "$abuse_status"
            fi
            ;;
        storm)
            # The server as deployed: default session slots (capped by its open-files limit,
            # logged) and handshake buffers. The kernel's accept backlog is part of what is
            # measured, so its settings go into the labels.
            start_server storm
            grep -m 1 'session slots capped' "$server_log" >&2 || true
            bench storm --sessions "$STORM_SESSIONS" --clients "$STORM_CLIENTS" \
                --connect-timeout-s "$STORM_CONNECT_TIMEOUT_S" --hold-s "$STORM_HOLD_S" \
                --source-ips "$STORM_SOURCE_IPS" \
                --label "loadavg_1m_before=$(cut -d ' ' -f 1 /proc/loadavg)" \
                --label "somaxconn=$(cat /proc/sys/net/core/somaxconn)" \
                --label "tcp_max_syn_backlog=$(cat /proc/sys/net/ipv4/tcp_max_syn_backlog)"
            ;;
        capacity)
            # The load tool runs the simulator on $SINK_PORT: the realtime transcript webhooks
            # and audio apps of the mix (a settings file), the processor, the speaker-sample
            # service and the S3 endpoint. Handshake buffers at 256 per core leave session slots
            # within the open-files limit (8,940 per core here with the processor's calls reserved).
            sink_port_free
            mix=(--private-cloud-share "$CAPACITY_PRIVATE_CLOUD_SHARE"
                --transcript-webhook-share "$CAPACITY_TRANSCRIPT_WEBHOOK_SHARE"
                --audio-app-share "$CAPACITY_AUDIO_APP_SHARE")
            "$BENCH" capacity-settings "${mix[@]}" --sessions-max "$CAPACITY_SESSIONS_MAX" \
                --downstream "127.0.0.1:$SINK_PORT" >"$work/capacity-settings.toml"
            s3_env "$SINK_PORT"
            upload=()
            if [[ -n $CAPACITY_UPLOAD_CONCURRENCY ]]; then
                upload=(--upload-concurrency "$CAPACITY_UPLOAD_CONCURRENCY")
            fi
            start_server capacity --handshake-buffers-per-core 256 --store s3://bench/capacity "${upload[@]}" \
                --settings "$work/capacity-settings.toml" \
                --processor-url "http://127.0.0.1:$SINK_PORT/processor" \
                --speaker-sample-url "http://127.0.0.1:$SINK_PORT/speaker"
            grep -m 1 'session slots capped' "$server_log" >&2 || true
            bench capacity --downstream-listen "127.0.0.1:$SINK_PORT" "${mix[@]}" \
                --cores "$WORKERS" --clients "$CAPACITY_CLIENTS" --source-ips "$CAPACITY_SOURCE_IPS" \
                --start "$CAPACITY_START" --factor "$CAPACITY_FACTOR" \
                --sessions-max "$CAPACITY_SESSIONS_MAX" --refine "$CAPACITY_REFINE" \
                --settle-s "$CAPACITY_SETTLE_S" --hold-s "$CAPACITY_HOLD_S" \
                --label "loadavg_1m_before=$(cut -d ' ' -f 1 /proc/loadavg)" \
                --label "upload_concurrency=${CAPACITY_UPLOAD_CONCURRENCY:-default}"
            ;;
    esac
    stop_server
    stop_sink
    # Free the disk at once (the log scenario writes gigabytes).
    rm -rf "$work/data-$scenario"
done
echo "results appended to $RESULTS; result files: ${result_files[*]} ${peer_files[*]}" >&2
# Scenarios with result files (not `abuse`, whose figures are its JSON lines): one table of
# every run of this invocation (the peer's too), then every goal's verdict of pusher's runs;
# with BENCH_ASSERT=1 a goal not met is the exit code (the peer's goals are in the summary and
# the comparisons, not in the exit code).
if ((${#result_files[@]} > 0)); then
    "$BENCH" summary "${result_files[@]}" "${peer_files[@]}"
    if [[ $BENCH_ASSERT == 1 ]]; then
        "$BENCH" check "${result_files[@]}"
    else
        "$BENCH" check "${result_files[@]}" || true
    fi
fi
