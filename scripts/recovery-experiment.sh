#!/usr/bin/env bash
# Accuracy-recovery adapters (docs/distillation.md): a phone keeps a low-bit copy of a
# model, and a small LoRA adapter distilled from the better copy's own distributions wins
# back what quantization lost. Teacher = the catalog model as shipped; students = the
# same file requantized by llama-quantize --allow-requantize (built by
# benches/llama-cpp.sh); targets = the teacher's top-16 distributions over the license
# texts every Debian machine has, except the two held out (GPL-3 and GFDL-1.3, and the
# links to them); one adapter per student, rank 16 on every projection of every layer.
# Evaluation on each held-out text: perplexity and mean KL divergence to the teacher,
# without and with the adapter (`pupil perplexity --kl-reference TEACHER --lora A`).
#
#   scripts/recovery-experiment.sh [OUT_DIR]
#   (MODEL=smollm2-135m-instruct, QUANTS="Q3_K_M Q2_K", THREADS=2, EPOCHS=2, LR=5e-4, PUPIL=...)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/pupil-recovery}
T=${THREADS:-2}
P=${PUPIL:-target/release/pupil}
MODEL=${MODEL:-smollm2-135m-instruct}
QUANTS=${QUANTS:-Q3_K_M Q2_K}
EPOCHS=${EPOCHS:-2}
LR=${LR:-5e-4}
LICENSES=/usr/share/common-licenses
HELD="GPL-3 GFDL-1.3"
[ -x "$P" ] || cargo build --release
LLAMA=$(bash benches/llama-cpp.sh)
TEACHER=$("$P" pull "$MODEL" | tail -1)
mkdir -p "$OUT"

if [ ! -f "$OUT/train.txt" ]; then
    : >"$OUT/train.txt.partial"
    for f in "$LICENSES"/*; do
        name=$(basename "$f")
        [ -L "$f" ] && continue
        case " $HELD " in *" $name "*) continue ;; esac
        cat "$f" >>"$OUT/train.txt.partial"
        printf '\n\n' >>"$OUT/train.txt.partial"
    done
    mv "$OUT/train.txt.partial" "$OUT/train.txt"
fi
# Resumes an interrupted run by itself (OUT.partial).
"$P" -t "$T" targets make --teacher "$TEACHER" --text "$OUT/train.txt" --ctx 256 -o "$OUT/train.ptt"

# score STUDENT HELD [ADAPTER] -> one JSON line {ppl, kld, same_top}
score() {
    local student=$1 held=$2
    shift 2
    "$P" -t "$T" perplexity -m "$student" -f "$LICENSES/$held" --kl-reference "$TEACHER" --json "$@" 2>/dev/null |
        python3 -c "import json,sys
lines=[json.loads(l) for l in sys.stdin if l.startswith('{')]
print(json.dumps({'ppl': lines[0]['ppl'], 'kld': lines[1]['mean_kld'], 'same_top': lines[1]['same_top']}))"
}

: >"$OUT/results.jsonl"
for held in $HELD; do
    "$P" -t "$T" perplexity -m "$TEACHER" -f "$LICENSES/$held" --json 2>/dev/null | head -1 |
        python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'model': 'teacher', 'held': '$held', 'ppl': r['ppl'], 'kld': 0.0, 'same_top': 1.0}))" |
        tee -a "$OUT/results.jsonl"
done
for q in $QUANTS; do
    student="$OUT/student-$q.gguf"
    if [ ! -f "$student" ]; then
        "$LLAMA/llama-quantize" --allow-requantize "$TEACHER" "$student.partial" "$q" "$T" >"$OUT/quantize-$q.log" 2>&1
        mv "$student.partial" "$student"
    fi
    adapter="$OUT/adapter-$q.gguf"
    if [ ! -f "$adapter" ]; then
        resume=()
        [ -f "$adapter.ckpt" ] && resume=(--resume)
        "$P" -t "$T" distill -m "$student" --targets "$OUT/train.ptt" --rank 16 --alpha 32 --layers all \
            --lr "$LR" --epochs "$EPOCHS" --seq 256 --checkpoint-every 40 -o "$adapter" "${resume[@]}" \
            2> >(tee "$OUT/distill-$q.log" >&2)
    fi
    for held in $HELD; do
        for arm in before after; do
            extra=()
            [ $arm = after ] && extra=(--lora "$adapter")
            score "$student" "$held" "${extra[@]}" |
                python3 -c "import json,sys; r=json.load(sys.stdin); r.update(model='$q', held='$held', arm='$arm'); print(json.dumps(r))" |
                tee -a "$OUT/results.jsonl"
        done
    done
done

python3 - "$OUT" "$TEACHER" $QUANTS <<'PY'
import json, os, sys
out, teacher, quants = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = [json.loads(l) for l in open(f"{out}/results.jsonl")]
size = lambda p: os.path.getsize(p) / 2**20
print(f"teacher {os.path.basename(teacher)} ({size(teacher):.1f} MiB)")
print("| student | held-out text | PPL before → after (teacher) | mean KLD to teacher before → after | change | same top |")
print("| --- | --- | ---: | ---: | ---: | ---: |")
for q in quants:
    for held in ["GPL-3", "GFDL-1.3"]:
        t = next(r for r in rows if r["model"] == "teacher" and r["held"] == held)
        b = next(r for r in rows if r["model"] == q and r["held"] == held and r["arm"] == "before")
        a = next(r for r in rows if r["model"] == q and r["held"] == held and r["arm"] == "after")
        print(f"| {q} ({size(f'{out}/student-{q}.gguf'):.1f} MiB, adapter {size(f'{out}/adapter-{q}.gguf'):.1f} MiB) | {held} "
              f"| {b['ppl']:.3f} → {a['ppl']:.3f} ({t['ppl']:.3f}) | {b['kld']:.4f} → {a['kld']:.4f} "
              f"| {100 * (a['kld'] / b['kld'] - 1):+.1f} % | {100 * b['same_top']:.1f} → {100 * a['same_top']:.1f} % |")
PY
