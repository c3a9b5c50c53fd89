#!/usr/bin/env bash
# Instruction counts of pusher's receive path under callgrind (perf/README.md): builds
# pusher-perf in release, runs each case at N and 2N iterations with collection on only inside
# the case's `perf_case_*` function, prints instructions per iteration ((count(2N) - count(N)) / N,
# so one-time costs cancel out), writes them to $RESULTS and compares them with the checked-in
# baseline. Exits 1 when a case grew by more than $THRESHOLD_PERCENT.
#
# Environment (defaults in brackets):
#   FRAME_ITERATIONS   N for the audio and transcript cases             [1000]
#   SESSION_ITERATIONS N for the session case                           [3]
#   THRESHOLD_PERCENT  largest growth over the baseline that passes     [10]
#   UPDATE_BASELINE    1: write the counts to the baseline, compare nothing
#   RESULTS            file the counts are written to                   [target/perf/instructions.json]
#   CARGO, VALGRIND, PYTHON   commands                                  [cargo, valgrind, python3]
set -euo pipefail

cd "$(dirname "$0")/../.."
HERE=perf/instructions
BASELINE=$HERE/baseline.json
SESSION=$HERE/session.bin
BIN=${CARGO_TARGET_DIR:-target}/release/pusher-perf
CARGO=${CARGO:-cargo}
VALGRIND=${VALGRIND:-valgrind}
PYTHON=${PYTHON:-python3}
FRAME_ITERATIONS=${FRAME_ITERATIONS:-1000}
SESSION_ITERATIONS=${SESSION_ITERATIONS:-3}
THRESHOLD_PERCENT=${THRESHOLD_PERCENT:-10}
RESULTS=${RESULTS:-target/perf/instructions.json}

# case name → the function callgrind toggles collection on (perf/src/cases.rs).
declare -A CASE_FUNCTION=(
    [audio]=perf_case_decode_audio_frame
    [transcript]=perf_case_decode_transcript_frame
    [session]=perf_case_replay_session
)
CASES=(audio transcript session)

"$CARGO" build --release --quiet -p pusher-perf
VALGRIND_PATH=$(command -v "$VALGRIND")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Instructions callgrind counted inside the case's function over `iterations` calls.
instructions() {
    local case=$1 iterations=$2
    local out="$WORK/$case.$iterations.callgrind"
    # An empty environment: its size moves the stack, which shifts some counts by ~0.2 %.
    env -i "$VALGRIND_PATH" --tool=callgrind --collect-atstart=no \
        --toggle-collect="*${CASE_FUNCTION[$case]}*" --callgrind-out-file="$out" \
        "$BIN" run "$case" "$iterations" --session "$SESSION" \
        >"$WORK/$case.$iterations.log" 2>&1 || {
        cat "$WORK/$case.$iterations.log" >&2
        echo "perf: valgrind failed on case $case" >&2
        exit 2
    }
    sed -n 's/^summary: *//p' "$out"
}

declare -A PER_ITERATION
for case in "${CASES[@]}"; do
    iterations=$FRAME_ITERATIONS
    [[ $case == session ]] && iterations=$SESSION_ITERATIONS
    once=$(instructions "$case" "$iterations")
    twice=$(instructions "$case" $((2 * iterations)))
    if [[ -z $once || $once -eq 0 ]]; then
        echo "perf: case $case counted no instructions: --toggle-collect matched nothing" >&2
        exit 2
    fi
    # Twice the iterations must count twice the instructions (within 5 %), or the toggle missed.
    if ((twice * 100 < once * 195 || twice * 100 > once * 205)); then
        echo "perf: case $case does not scale: $once at N=$iterations, $twice at 2N" >&2
        exit 2
    fi
    PER_ITERATION[$case]=$(((twice - once) / iterations))
    printf '%-11s %12d instructions per iteration\n' "$case" "${PER_ITERATION[$case]}"
done

mkdir -p "$(dirname "$RESULTS")"
RUSTC_VERSION=$(rustc --version)
VALGRIND_VERSION=$("$VALGRIND" --version)
{
    printf '{\n  "unit": "instructions per iteration (callgrind Ir)",\n'
    printf '  "rustc": "%s",\n  "valgrind": "%s",\n  "cases": {\n' "$RUSTC_VERSION" "$VALGRIND_VERSION"
    for i in "${!CASES[@]}"; do
        separator=','
        ((i == ${#CASES[@]} - 1)) && separator=''
        printf '    "%s": %d%s\n' "${CASES[$i]}" "${PER_ITERATION[${CASES[$i]}]}" "$separator"
    done
    printf '  }\n}\n'
} >"$RESULTS"
echo "perf: counts written to $RESULTS"

if [[ ${UPDATE_BASELINE:-0} == 1 ]]; then
    cp "$RESULTS" "$BASELINE"
    echo "perf: baseline $BASELINE updated"
    exit 0
fi

"$PYTHON" - "$BASELINE" "$RESULTS" "$THRESHOLD_PERCENT" <<'PY'
import json
import sys

baseline_path, results_path, threshold_percent = sys.argv[1], sys.argv[2], float(sys.argv[3])
with open(baseline_path) as f:
    baseline = json.load(f)
with open(results_path) as f:
    results = json.load(f)
for tool in ("rustc", "valgrind"):
    if baseline[tool] != results[tool]:
        print(f"perf: note: baseline measured with {baseline[tool]}, this run with {results[tool]}")
print(f"{'case':<11} {'baseline':>12} {'now':>12} {'ratio':>7}")
grown = []
for case, now in results["cases"].items():
    old = baseline["cases"].get(case)
    if old is None:
        print(f"{case:<11} {'-':>12} {now:>12} {'new':>7}")
        continue
    ratio = now / old
    print(f"{case:<11} {old:>12} {now:>12} {ratio:>7.3f}")
    if ratio > 1 + threshold_percent / 100:
        grown.append(case)
if grown:
    print(f"perf: grew more than {threshold_percent:g} %: {', '.join(grown)}", file=sys.stderr)
    sys.exit(1)
print(f"perf: every case within {threshold_percent:g} % of the baseline")
PY
