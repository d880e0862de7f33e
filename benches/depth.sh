#!/usr/bin/env bash
# Long-context prefill side by side: pp512 after 4,096 cached positions (llama-bench's
# `-d 4096`), llama.cpp then pupil, in alternating rounds; prints each round's t/s and the
# ratio. Each run first fills the 4,096 positions twice (warm-up and the timed
# repetition), so a round takes a few minutes on two cores.
#
#   benches/depth.sh FILE [ROUNDS]      (THREADS default 2, DEPTH default 4096)
set -euo pipefail
cd "$(dirname "$0")/.."
FILE=${1:?usage: benches/depth.sh FILE [ROUNDS]}
ROUNDS=${2:-3}
THREADS=${THREADS:-2}
DEPTH=${DEPTH:-4096}
BIN=$(benches/llama-cpp.sh)
cargo build --release -q
for r in $(seq "$ROUNDS"); do
  l=$("$BIN/llama-bench" -m "$FILE" -p 512 -n 0 -d "$DEPTH" -r 1 -t "$THREADS" 2>/dev/null | grep pp512 | awk -F'|' '{print $(NF-1)}' | awk '{print $1}')
  p=$(target/release/pupil bench -m "$FILE" -p 512 -n 0 -d "$DEPTH" -r 1 -t "$THREADS" 2>/dev/null | grep '^| ' | tail -1 | awk -F'|' '{print $9}' | awk '{print $1}')
  python3 -c "print(f'round $r: llama.cpp $l t/s, pupil $p t/s, ratio {float(\"$p\") / float(\"$l\"):.2f}x')"
done
