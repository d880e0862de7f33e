#!/usr/bin/env bash
# Side-by-side speed: pupil bench and llama.cpp's llama-bench on the same files, same
# threads, alternating A/B rounds; prints the median t/s of each and the ratio. With
# BASELINE=<another pupil binary> (say, a build of the commit before a change) that binary
# runs in every round too, and the table adds its column and pupil's ratio to it.
#
#   benches/compare.sh [ROUNDS] [FILE...]
#
# Defaults: 3 rounds; SmolLM2-135M-Instruct Q4_1 plus Q4_0, Q8_0 and Q4_K_M requantized
# from it with llama-quantize into /tmp/pupil-requant. llama.cpp is built by
# benches/llama-cpp.sh. Each round runs `-p 512 -n $GEN -r $REPS -t $THREADS` in both tools
# (REPS default 5, THREADS default 2, GEN default 128; GEN=0 measures prefill alone).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
shift || true
BIN=$(benches/llama-cpp.sh)
cargo build --release -q
PUPIL=target/release/pupil
THREADS=${THREADS:-2}
REPS=${REPS:-5}
GEN=${GEN:-128}
if [ $# -gt 0 ]; then
  FILES=("$@")
else
  BASE=$($PUPIL pull smollm2-135m-instruct)
  mkdir -p /tmp/pupil-requant
  FILES=("$BASE")
  for t in Q4_0 Q8_0 Q4_K_M; do
    out=/tmp/pupil-requant/smollm2-135m-$t.gguf
    [ -f "$out" ] || "$BIN/llama-quantize" --allow-requantize "$BASE" "$out" "$t" >/dev/null 2>&1
    FILES+=("$out")
  done
fi
RESULTS=$(mktemp)
for f in "${FILES[@]}"; do
  for r in $(seq "$ROUNDS"); do
    "$BIN/llama-bench" -m "$f" -p 512 -n "$GEN" -r "$REPS" -t "$THREADS" -o jsonl 2>/dev/null |
      python3 -c 'import json,sys
for l in sys.stdin:
    d=json.loads(l); t="pp%d"%d["n_prompt"] if d["n_prompt"] else "tg%d"%d["n_gen"]
    print(sys.argv[1], "llama.cpp", t, d["avg_ts"])' "$f" >>"$RESULTS"
    for tool in pupil ${BASELINE:+baseline}; do
      bin=$PUPIL; [ "$tool" = baseline ] && bin=$BASELINE
      "$bin" bench -m "$f" -p 512 -n "$GEN" -r "$REPS" -t "$THREADS" -o jsonl 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    d=json.loads(l); print(sys.argv[1], sys.argv[2], d["test"], d["avg_ts"])' "$f" "$tool" >>"$RESULTS"
    done
  done
done
python3 - "$RESULTS" "$THREADS" "$ROUNDS" <<'PY'
import sys, statistics, collections, os
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f, tool, test, ts = line.split()
    rows[(f, test, tool)].append(float(ts))
print(f"threads {sys.argv[2]}, {sys.argv[3]} alternating rounds, median of round means (t/s)\n")
base = any(k[2] == "baseline" for k in rows)
print("| file | test | llama.cpp |" + (" baseline | baseline / llama.cpp |" if base else "") + " pupil | pupil / llama.cpp |" + (" pupil / baseline |" if base else ""))
print("| --- | --- | ---: |" + (" ---: | ---: |" if base else "") + " ---: | ---: |" + (" ---: |" if base else ""))
for (f, test) in sorted({(k[0], k[1]) for k in rows}):
    a = statistics.median(rows[(f, test, "llama.cpp")]); b = statistics.median(rows[(f, test, "pupil")])
    line = f"| {os.path.basename(f)} | {test} | {a:.1f} |"
    if base:
        c = statistics.median(rows[(f, test, "baseline")])
        line += f" {c:.1f} | {c / a:.2f}x |"
    line += f" {b:.1f} | {b / a:.2f}x |"
    if base:
        line += f" {b / c:.2f}x |"
    print(line)
PY
rm -f "$RESULTS"
