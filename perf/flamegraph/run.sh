#!/usr/bin/env bash
# A flamegraph of the pusher server under the ingest scenario (perf/README.md): runs
# `SCENARIO=ingest bench/run.sh` (a fresh release server, 16 connections streaming 101 frames)
# with `perf record --call-graph dwarf -p <server pid>` sampling the server while the load runs,
# then `perf script | inferno-collapse-perf | inferno-flamegraph` writes $OUT, and the functions
# with the most self time (leaf frames, inlined functions included) are printed as text.
#
# DWARF unwinding, because neither the release build nor Rust's std keeps frame pointers: with
# `--call-graph fp` most stacks stop at the first frame without one (e.g. right above `recv`).
# perf copies $STACK_BYTES of the user stack per sample; perf's default, 8 KiB, cuts ~90 % of
# the server's stacks short of the thread's start (monoio's futures are deep).
#
# Environment (defaults in brackets):
#   OUT             the SVG written                  [target/perf/flamegraph/ingest.svg]
#                   (OUT=perf/flamegraph/ingest.svg refreshes the committed example)
#   FREQUENCY       samples per second per CPU (perf record -F)  [99]
#   TOP             functions listed by self time                [15]
#   STACK_BYTES     user stack copied per sample for the unwinding (at most 65528) [32768]
#   INGEST_SECONDS  seconds of streaming                         [10]
#   DRIVER, WORKERS, PORT, INGEST_CONNECTIONS, INGEST_FRAME_BYTES, CARGO: passed to
#                   bench/run.sh (its header lists them)
#   WORK_DIR        where perf.data, perf's build-id cache, the collapsed stacks
#                   (ingest.folded) and the bench result files stay (so `perf report -i
#                   $WORK_DIR/perf.data` works after); its absolute path must not contain
#                   spaces                                       [target/perf/flamegraph]
#
# Needs `perf` (Debian: linux-perf) and inferno (`cargo install --locked inferno`); `make perf`
# installs both when missing. Root, or kernel.perf_event_paranoid <= 1 for kernel frames.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

OUT=${OUT:-target/perf/flamegraph/ingest.svg}
FREQUENCY=${FREQUENCY:-99}
TOP=${TOP:-15}
STACK_BYTES=${STACK_BYTES:-32768}
WORK_DIR=${WORK_DIR:-target/perf/flamegraph}
export INGEST_SECONDS=${INGEST_SECONDS:-10}

# `cargo install` puts inferno in $CARGO_HOME/bin, which need not be on PATH.
PATH=$PATH:${CARGO_HOME:-$HOME/.cargo}/bin
for tool in perf inferno-collapse-perf inferno-flamegraph; do
    if ! command -v "$tool" >/dev/null; then
        echo "flamegraph: '$tool' not found; \`make perf PERF=flamegraph\` installs it" >&2
        exit 2
    fi
done
mkdir -p "$WORK_DIR" "$(dirname "$OUT")"
DATA=$WORK_DIR/perf.data
# A build-id cache of its own: perf copies the profiled binaries there (symbols stay readable if
# target/release/pusher is rebuilt meanwhile) without adding a ~90 MB copy to ~/.debug per build.
# An absolute path: perf record -p leaves a relative --buildid-dir empty.
BUILDID_DIR=$(cd "$WORK_DIR" && pwd)/buildid
# bench/run.sh splits PROFILER into words.
if [[ $BUILDID_DIR == *[[:space:]]* ]]; then
    echo "flamegraph: the paths of WORK_DIR must not contain spaces: '$BUILDID_DIR'" >&2
    exit 2
fi
rm -rf "$DATA" "$BUILDID_DIR" "$WORK_DIR"/ingest-*.json "$WORK_DIR/results.json"

RECORD="perf --buildid-dir $BUILDID_DIR record --quiet -F $FREQUENCY"
RECORD+=" --call-graph dwarf,$STACK_BYTES -o $DATA -p"
RESULTS=$WORK_DIR/results.json PROFILER=$RECORD SCENARIO=ingest bench/run.sh

if [[ ! -s $DATA ]]; then
    echo "flamegraph: perf record wrote no $DATA (see its messages above)" >&2
    exit 1
fi

FOLDED=$WORK_DIR/ingest.folded
# Kernel frames are marked _[k] (inferno colours them apart).
perf --buildid-dir "$BUILDID_DIR" script -i "$DATA" -F comm,tid,event,ip,sym,dso |
    inferno-collapse-perf --kernel >"$FOLDED"
samples=$(awk '{ total += $NF } END { print total + 0 }' "$FOLDED")
if ((samples == 0)); then
    echo "flamegraph: no samples of the server in $DATA" >&2
    exit 1
fi
driver=$(sed -n 's/.*"driver_resolved":"\([^"]*\)".*/\1/p' "$WORK_DIR/results.json" | tail -n 1)
inferno-flamegraph --title "pusher: ingest (driver $driver)" \
    --subtitle "$samples samples at $FREQUENCY Hz per CPU, $INGEST_SECONDS s of streaming;\
 perf record --call-graph dwarf,$STACK_BYTES" \
    --minwidth 0.1 "$FOLDED" >"$OUT"
echo "flamegraph: $OUT ($samples samples; collapsed stacks in $FOLDED, perf data in $DATA)" >&2

# Self time: the samples whose leaf frame is the function. A folded line is
# `frame;frame;...;leaf COUNT`, and frame names may contain spaces.
echo "top $TOP functions by self time (share of the server's samples):"
awk '{ i = match($0, / [0-9]+$/); n = split(substr($0, 1, i - 1), frames, ";")
       self[frames[n]] += substr($0, i + 1) }
     END { for (f in self) printf "%d\t%s\n", self[f], f }' "$FOLDED" |
    sort -t "$(printf '\t')" -k1,1nr |
    awk -F '\t' -v total="$samples" -v top="$TOP" \
        'NR <= top { printf "%6.2f %%  %6d  %s\n", 100 * $1 / total, $1, $2 }'
