#!/usr/bin/env bash
# The head-to-head table: the students of every family pupil runs, beside llama.cpp, in one
# sitting, through `pupil report`.
#
#   benches/head-to-head.sh [ROUNDS] [OUT_DIR]      # defaults: 2 rounds, /tmp/pupil-head-to-head
#
# Real models (the catalog's SmolLM2-135M Q4_1, Gemma 3 270M and Qwen2.5-Coder 0.5B Q4_K_M):
# speed, load, memory, and in the last round bits/byte and perplexity of GPL-3 at -c 512.
# Random-weight files of published shapes (`pupil synth --quant q4_k_m`: Llama 3.2 1B and
# 3B, Qwen3 0.6B, Phi-3 mini; "(synthetic)" in the report): speed and memory only. Each
# round runs llama-bench, then pupil bench, on every file (`-p 512 -n 128 -r $REPS -t
# $THREADS`, REPS default 2, THREADS default 2); OUT_DIR gets both tools' jsonl lines and
# report.md / report.svg with each cell's median over the rounds and pupil's ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
OUT=${2:-/tmp/pupil-head-to-head}
THREADS=${THREADS:-2}
REPS=${REPS:-2}
BIN=$(benches/llama-cpp.sh)
cargo build --release -q
PUPIL=target/release/pupil
TEXT=${TEXT:-/usr/share/common-licenses/GPL-3}
mkdir -p "$OUT/models"
REAL=()
for m in smollm2-135m-instruct gemma3-270m qwen2.5-coder-0.5b; do
  REAL+=("$($PUPIL pull "$m")")
done
SYNTH=()
for s in llama-3.2-1b llama-3.2-3b qwen3-0.6b phi-3-mini; do
  f=$OUT/models/$s-q4_k_m.gguf
  [ -f "$f" ] || $PUPIL synth --shape "$s" --quant q4_k_m -o "$f" >/dev/null 2>&1
  SYNTH+=("$f")
done
: >"$OUT/llama.cpp.jsonl"
: >"$OUT/pupil.jsonl"
for r in $(seq "$ROUNDS"); do
  for f in "${REAL[@]}" "${SYNTH[@]}"; do
    echo "round $r: $(basename "$f")" >&2
    quality=()
    if [ "$r" = "$ROUNDS" ] && [[ " ${REAL[*]} " == *" $f "* ]]; then quality=(--quality "$TEXT"); fi
    "$BIN/llama-bench" -m "$f" -p 512 -n 128 -r "$REPS" -t "$THREADS" -o jsonl 2>/dev/null >>"$OUT/llama.cpp.jsonl"
    $PUPIL bench -m "$f" -p 512 -n 128 -r "$REPS" -t "$THREADS" "${quality[@]}" -o jsonl 2>/dev/null >>"$OUT/pupil.jsonl"
  done
done
$PUPIL report "$OUT/llama.cpp.jsonl" "$OUT/pupil.jsonl" -o "$OUT/report.md"
cat "$OUT/report.md"
