#!/usr/bin/env bash
# pupil serve against llama-server (built from the same llama.cpp source by
# benches/llama-cpp.sh) under the same bounded load on loopback: REQUESTS streamed
# completions of TOKENS tokens, PARALLEL at a time, both servers with PARALLEL slots and
# THREADS threads, the same prompts and sampling; then pupil one stream at a time. Each
# server runs alone (started for its run, stopped after), alternating, ROUNDS times.
# Prints the median aggregate tokens/s and time to first token of each, and the ratios.
#
#   benches/serve-load.sh [ROUNDS] [MODEL] [OUT]
#
# Defaults: 3 rounds, smollm2-135m-instruct, OUT=/tmp/pupil-serve-load, THREADS=2,
# PARALLEL=4, REQUESTS=16, TOKENS=128, LIMIT=300 (seconds per run, at most).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
MODEL=${2:-smollm2-135m-instruct}
OUT=${3:-/tmp/pupil-serve-load}
THREADS=${THREADS:-2}
PARALLEL=${PARALLEL:-4}
REQUESTS=${REQUESTS:-16}
TOKENS=${TOKENS:-128}
LIMIT=${LIMIT:-300}
CTX=1024
cargo build --release -q
PUPIL=$PWD/target/release/pupil
LLAMA=$(bash benches/llama-cpp.sh)
FILE=$("$PUPIL" pull "$MODEL" | tail -1)
mkdir -p "$OUT"
: >"$OUT/runs.jsonl"
PORT=18411

wait_ready() {
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && return 0
    sleep 0.2
  done
  echo "server on $PORT did not come up" >&2
  return 1
}

# run NAME CONCURRENCY COMMAND...: start the server, warm it, load it, stop it.
run() {
  local name=$1 conc=$2
  shift 2
  "$@" >"$OUT/$name.log" 2>&1 &
  local pid=$!
  wait_ready
  python3 benches/serve_load.py "http://127.0.0.1:$PORT/v1" "$MODEL" 1 1 8 60 >/dev/null
  python3 benches/serve_load.py "http://127.0.0.1:$PORT/v1" "$MODEL" "$conc" "$REQUESTS" "$TOKENS" "$LIMIT" |
    python3 -c "import json,sys; r=json.load(sys.stdin); r['server']='$name'; print(json.dumps(r))" | tee -a "$OUT/runs.jsonl"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

for r in $(seq "$ROUNDS"); do
  run pupil "$PARALLEL" "$PUPIL" serve -m "$FILE" -t "$THREADS" --parallel "$PARALLEL" -c "$CTX" --port "$PORT" --alias "$MODEL"
  run llama-server "$PARALLEL" "$LLAMA/llama-server" -m "$FILE" -t "$THREADS" -tb "$THREADS" -np "$PARALLEL" \
    -c $((CTX * PARALLEL)) --port "$PORT" --alias "$MODEL" --no-webui
  run pupil-1 1 "$PUPIL" serve -m "$FILE" -t "$THREADS" --parallel 1 -c "$CTX" --port "$PORT" --alias "$MODEL"
done

python3 - "$OUT/runs.jsonl" "$PARALLEL" "$THREADS" "$REQUESTS" "$TOKENS" <<'PY'
import collections, json, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    assert r["complete"], r
    runs[r["server"]].append(r)
parallel, threads, requests, tokens = sys.argv[2:6]
med = {k: (statistics.median(r["tokens_per_s"] for r in v), statistics.median(r["ttft_median_ms"] for r in v)) for k, v in runs.items()}
print(f"\n{requests} requests x {tokens} tokens, {threads} threads, {len(runs['pupil'])} alternating rounds (medians)")
print(f"| server | streams | generated tokens/s | median time to first token |")
print(f"| --- | ---: | ---: | ---: |")
for k, streams in (("pupil", parallel), ("llama-server", parallel), ("pupil-1", "1")):
    print(f"| {k.replace('-1', '')} | {streams} | {med[k][0]:.1f} | {med[k][1]:.0f} ms |")
print(f"\npupil / llama-server at {parallel} streams: {med['pupil'][0] / med['llama-server'][0]:.2f}x tokens/s, "
      f"time to first token {med['pupil'][1] / med['llama-server'][1]:.2f}x")
print(f"pupil at {parallel} streams / pupil alone: {med['pupil'][0] / med['pupil-1'][0]:.2f}x")
PY
