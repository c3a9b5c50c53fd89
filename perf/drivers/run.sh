#!/usr/bin/env bash
# io_uring against epoll (perf/README.md): runs the ingest and latency scenarios through
# bench/run.sh with DRIVER=uring, then again with DRIVER=epoll (a fresh release server for each
# scenario and driver, the same binaries for both), then `pusher-bench compare` puts each
# scenario's two runs side by side: one markdown table per scenario, one column per driver, on
# stdout and in $OUT_DIR/drivers.md.
#
# Environment (defaults in brackets):
#   OUT_DIR           this invocation's directory: <driver>/results.json and the result files
#                     bench/run.sh writes beside it, and drivers.md
#                                                    [target/perf/drivers/<UTC timestamp>]
#   INGEST_SECONDS    ingest: seconds of streaming                          [15]
#   LATENCY_SESSIONS  latency: sessions sending one 102 per second          [1000]
#   LATENCY_SECONDS   latency: seconds of sending                           [30]
#   WORKERS, PORT, INGEST_CONNECTIONS, INGEST_FRAME_BYTES, LATENCY_*: passed to bench/run.sh
#                     (its header lists them)
#   CARGO             cargo command; CARGO=true uses target/release as it is [cargo]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

OUT_DIR=${OUT_DIR:-target/perf/drivers/$(date -u +%Y%m%dT%H%M%SZ)}
export INGEST_SECONDS=${INGEST_SECONDS:-15}
export LATENCY_SESSIONS=${LATENCY_SESSIONS:-1000}
export LATENCY_SECONDS=${LATENCY_SECONDS:-30}
CARGO=${CARGO:-cargo}
DRIVERS=(uring epoll)
SCENARIOS=(ingest latency)
SERVER=${CARGO_TARGET_DIR:-target}/release/pusher
BENCH=${CARGO_TARGET_DIR:-target}/release/pusher-bench

"$CARGO" build --release -p pusher -p pusher-bench
# The same binaries for both drivers: note them, so that a rebuild in between shows.
binaries() { stat -c '%n %s %Y' "$SERVER" "$BENCH"; }
before=$(binaries)

for driver in "${DRIVERS[@]}"; do
    mkdir -p "$OUT_DIR/$driver"
    DRIVER=$driver CARGO=true RESULTS=$OUT_DIR/$driver/results.json SCENARIO="${SCENARIOS[*]}" \
        bench/run.sh
done

if [[ $(binaries) != "$before" ]]; then
    echo "drivers: $SERVER or $BENCH changed during the runs (rebuilt meanwhile?):" \
        "the drivers may not have run the same build" >&2
fi

# result_file DRIVER SCENARIO: the one result file bench/run.sh wrote for it.
result_file() {
    local files=("$OUT_DIR/$1/$2"-[0-9]*Z.json)
    if [[ ${#files[@]} != 1 || ! -f ${files[0]} ]]; then
        echo "drivers: expected one $2 result file in $OUT_DIR/$1, found: ${files[*]}" >&2
        exit 1
    fi
    echo "${files[0]}"
}

for scenario in "${SCENARIOS[@]}"; do
    files=()
    for driver in "${DRIVERS[@]}"; do
        files+=("$(result_file "$driver" "$scenario")")
    done
    "$BENCH" compare "${files[@]}"
    echo
done | tee "$OUT_DIR/drivers.md"
echo "drivers: tables in $OUT_DIR/drivers.md" >&2
