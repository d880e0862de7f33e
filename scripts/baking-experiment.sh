#!/usr/bin/env bash
# The distillation experiments of docs/distillation.md on a real model: prompt baking
# (teacher = the model with a pirate system prompt, student = the same model without it)
# trained up to three ways on identical data, order and steps — soft top-16 targets with
# the rest bucket, hard labels (the teacher's sampled tokens), and 12 sampled targets per
# position — each evaluated on 40 held-out prompts from full distributions.
#
#   scripts/baking-experiment.sh [OUT_DIR]
#   (MODEL=smollm2-135m-instruct, ARMS="soft hard sampled", PROMPTS=..., THREADS=2, PUPIL=...)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/pupil-baking}
PROMPTS=${PROMPTS:-../shared/data/baking-prompts.jsonl}
T=${THREADS:-2}
P=${PUPIL:-target/release/pupil}
MODEL=${MODEL:-smollm2-135m-instruct}
ARMS=${ARMS:-soft hard sampled}
SYS="You are Captain Salt, a pirate. Always answer in pirate speak, start every answer with 'Arr!', and keep answers under three sentences."
[ -x "$P" ] || cargo build --release
mkdir -p "$OUT"

# The teacher's replies: temperature 0.8, top-p 0.95 (top-k and min-p off), ≤ 48 tokens.
make() {
    "$P" -t "$T" targets make --teacher "$MODEL" --prompts "$PROMPTS" --generate 48 \
        --gen-temperature 0.8 --gen-top-p 0.95 --gen-top-k 0 --gen-min-p 0 --teacher-system "$SYS" "$@"
}
make --split train --seed 1 -o "$OUT/train-k16.ptt"
case " $ARMS " in *" sampled "*) make --split train --seed 1 --samples 12 -o "$OUT/train-s12.ptt" ;; esac
make --split held_out --seed 2 -o "$OUT/held-k16.ptt"

evaluate() { "$P" -t "$T" experiment baking -m "$MODEL" --held "$OUT/held-k16.ptt" --prompts "$PROMPTS" --teacher-system "$SYS" "$@"; }
evaluate --json > "$OUT/baseline.json"

train() { # NAME TARGETS [extra distill options]
    local name=$1 targets=$2; shift 2
    rm -f "$OUT/$name.gguf.ckpt"
    "$P" -t "$T" distill -m "$MODEL" --targets "$targets" --eval-targets "$OUT/held-k16.ptt" --rank 16 --alpha 32 \
        --layers all --lr 2e-4 --epochs 2 --eval-every 40 --checkpoint-every 40 -o "$OUT/$name.gguf" "$@" \
        2> >(tee "$OUT/$name.log" >&2)
    evaluate --lora "$OUT/$name.gguf" --json > "$OUT/$name.json"
}
curves=()
for arm in $ARMS; do
    case $arm in
        soft) train soft "$OUT/train-k16.ptt" ;;
        hard) train hard "$OUT/train-k16.ptt" --hard-weight 1 ;;
        sampled) train sampled "$OUT/train-s12.ptt" ;;
        *) echo "unknown arm $arm (soft, hard, sampled)" >&2; exit 2 ;;
    esac
    curves+=("$arm=$OUT/$arm.gguf.ckpt")
done

"$P" experiment curves "${curves[@]}" -o "$OUT/curves.svg"
# Free generation beside the teacher-forced measures: greedy replies in the persona and
# their distinct token 2-grams (low KL with looping text shows there). The teacher row is
# the model with the system prompt.
python3 - "$OUT" baseline $ARMS <<'PY'
import json, sys
out, names = sys.argv[1], sys.argv[2:]
rows = {n: json.load(open(f"{out}/{n}.json")) for n in names}
base = rows["baseline"]
print("| arm | held-out KL | gap closed | top-1 | 'Arr!' replies | distinct 2-grams |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
print(f"| teacher | 0 | — | — | {base['teacher_prefixed_replies']}/{base['prompts']} | {base['teacher_distinct_2grams']:.3f} |")
for n, r in rows.items():
    print(f"| {n} | {r['kl']:.4f} | {100 * (1 - r['kl'] / base['kl']):.1f} % | {100 * r['top1']:.1f} % "
          f"| {r['prefixed_replies']}/{r['prompts']} | {r['distinct_2grams']:.3f} |")
PY
