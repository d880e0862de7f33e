#!/usr/bin/env bash
# The two distillation experiments of docs/distillation.md on the real SmolLM2:
# prompt baking (teacher = SmolLM2 with a pirate system prompt, student = SmolLM2
# without it) trained three ways on identical data, order and steps — soft top-16
# targets with the rest bucket, hard labels (the teacher's sampled tokens), and 12
# sampled targets per position — each evaluated on 40 held-out prompts from full
# distributions.
#
#   scripts/baking-experiment.sh [OUT_DIR]      (PROMPTS=..., THREADS=2, PUPIL=...)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/pupil-baking}
PROMPTS=${PROMPTS:-../shared/data/baking-prompts.jsonl}
T=${THREADS:-2}
P=${PUPIL:-target/release/pupil}
SYS="You are Captain Salt, a pirate. Always answer in pirate speak, start every answer with 'Arr!', and keep answers under three sentences."
[ -x "$P" ] || cargo build --release
mkdir -p "$OUT"

# The teacher's replies: temperature 0.8, top-p 0.95 (top-k and min-p off), ≤ 48 tokens.
make() {
    "$P" -t "$T" targets make --teacher smollm2-135m-instruct --prompts "$PROMPTS" --generate 48 \
        --gen-temperature 0.8 --gen-top-p 0.95 --gen-top-k 0 --gen-min-p 0 --teacher-system "$SYS" "$@"
}
make --split train --seed 1 -o "$OUT/train-k16.ptt"
make --split train --seed 1 --samples 12 -o "$OUT/train-s12.ptt"
make --split held_out --seed 2 -o "$OUT/held-k16.ptt"

evaluate() { "$P" -t "$T" experiment baking --held "$OUT/held-k16.ptt" --prompts "$PROMPTS" --teacher-system "$SYS" "$@"; }
evaluate --json > "$OUT/baseline.json"

train() { # NAME TARGETS [extra distill options]
    local name=$1 targets=$2; shift 2
    rm -f "$OUT/$name.gguf.ckpt"
    "$P" -t "$T" distill --targets "$targets" --eval-targets "$OUT/held-k16.ptt" --rank 16 --alpha 32 \
        --layers all --lr 2e-4 --epochs 2 --eval-every 40 --checkpoint-every 40 -o "$OUT/$name.gguf" "$@" \
        2> >(tee "$OUT/$name.log" >&2)
    evaluate --lora "$OUT/$name.gguf" --json > "$OUT/$name.json"
}
train soft "$OUT/train-k16.ptt"
train hard "$OUT/train-k16.ptt" --hard-weight 1
train sampled "$OUT/train-s12.ptt"

"$P" experiment curves soft="$OUT/soft.gguf.ckpt" hard="$OUT/hard.gguf.ckpt" sampled="$OUT/sampled.gguf.ckpt" \
    -o "$OUT/curves.svg"
for f in baseline soft hard sampled; do
    printf '%-9s ' "$f"; python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"KL {r['kl']:.4f}  top-1 {100*r['top1']:.1f} %  'Arr!' {r['prefixed_replies']}/{r['prompts']}\")" "$OUT/$f.json"
done
