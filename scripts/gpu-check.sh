#!/usr/bin/env bash
# GPU check: on a machine with an NVIDIA GPU, runs pupil's llama.cpp reference tests and
# its GPU-vs-CPU backend tests with --device cuda, `pupil bench` pp512/tg128 for SmolLM2
# and Gemma 3 on the GPU (and on the CPU, for scale), and a short distillation on the GPU;
# then prints one summary table (also written to $OUT/summary.md).
#
#   scripts/gpu-check.sh                 # builds with `--features cuda` (needs nvcc; README "GPU builds")
#   PUPIL_BIN=path/to/pupil PUPIL_TEST_BINS=dir scripts/gpu-check.sh
#                                        # binaries cross-built elsewhere (dir holds the
#                                        # model_fixtures and gpu_backend test executables)
#
# Environment: DEVICE (default cuda), OUT (default ./gpu-check), PUPIL_MODELS (where the
# models are or get pulled), REPS (bench repetitions, default 5), STEPS (distillation
# steps, default 30), LLAMA_BENCH (optional: a CUDA build of llama.cpp's llama-bench,
# timed on the same files for the ratio).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-gpu-check}
REPS=${REPS:-5}
STEPS=${STEPS:-30}
mkdir -p "$OUT"
export PUPIL_REPO=$PWD PUPIL_REQUIRE_MODELS=1

if [ -z "${PUPIL_BIN:-}" ]; then
    cargo build --release --features cuda || exit 1
    PUPIL_BIN=target/release/pupil
    PUPIL_TEST_BINS=$OUT/tests
    mkdir -p "$PUPIL_TEST_BINS"
    for t in model_fixtures gpu_backend; do
        exe=$(cargo test --release --features cuda --test "$t" --no-run --message-format=json 2>/dev/null |
            python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable")][-1])') || exit 1
        cp "$exe" "$PUPIL_TEST_BINS/$t"
    done
fi
PUPIL=$PUPIL_BIN
GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
echo "GPU: ${GPU:-none found}"

# The models are pulled (and verified) on first use, or read from $PUPIL_MODELS.

# 1. Reference tests on the device: llama.cpp fixtures, then GPU against CPU.
tests() {
    local name=$1
    PUPIL_DEVICE=$DEVICE "$PUPIL_TEST_BINS/$name" --test-threads 1 --nocapture >"$OUT/$name.log" 2>&1
    local rc=$?
    grep -E "^test result" "$OUT/$name.log" | tail -1 | sed "s/^/$name: /"
    return $rc
}
tests model_fixtures; FIXTURES_RC=$?
tests gpu_backend; BACKEND_RC=$?

# 2. Speed: pp512 / tg128 on the device and on the CPU (all cores), same files.
"$PUPIL" bench -m smollm2-135m-instruct -m gemma3-270m -p 512 -n 128 -r "$REPS" --device "$DEVICE" -o jsonl \
    >"$OUT/bench-$DEVICE.jsonl" 2>"$OUT/bench-$DEVICE.log"
"$PUPIL" bench -m smollm2-135m-instruct -m gemma3-270m -p 512 -n 128 -r "$REPS" --device cpu -o jsonl \
    >"$OUT/bench-cpu.jsonl" 2>"$OUT/bench-cpu.log"
if [ -n "${LLAMA_BENCH:-}" ]; then
    MODELS_DIR=${PUPIL_MODELS:-${XDG_CACHE_HOME:+$XDG_CACHE_HOME/pupil/models}}
    MODELS_DIR=${MODELS_DIR:-$HOME/.cache/pupil/models}
    for f in SmolLM2-135M-Instruct.Q4_1.gguf gemma-3-270m-q4_k_m.gguf; do
        "$LLAMA_BENCH" -m "$MODELS_DIR/$f" -p 512 -n 128 -r "$REPS" -ngl 99 -o jsonl
    done >"$OUT/llama-bench.jsonl" 2>"$OUT/llama-bench.log"
fi

# 3. A short distillation on the device, then the adapter at inference there.
rm -f "$OUT/gpu-lora.gguf" "$OUT/gpu-lora.gguf.ckpt"
"$PUPIL" distill --device "$DEVICE" --targets targets/sample-smollm2-k16.ptt -o "$OUT/gpu-lora.gguf" \
    --steps "$STEPS" --seq 128 >"$OUT/distill.log" 2>&1
DISTILL_RC=$?
"$PUPIL" complete --device "$DEVICE" --lora "$OUT/gpu-lora.gguf" --temp 0 -n 24 "The capital of France is" \
    >"$OUT/lora-complete.txt" 2>>"$OUT/distill.log"
LORA_RC=$?

python3 - "$OUT" "$DEVICE" "$GPU" "$FIXTURES_RC" "$BACKEND_RC" "$DISTILL_RC" "$LORA_RC" <<'EOF' | tee "$OUT/summary.md"
import json, os, re, statistics, sys
out, device, gpu, fixtures_rc, backend_rc, distill_rc, lora_rc = sys.argv[1:]
def rows(name):
    p = os.path.join(out, name)
    return [json.loads(l) for l in open(p) if l.strip()] if os.path.exists(p) else []
def result(log):
    lines = [l for l in open(os.path.join(out, log)) if l.startswith("test result")]
    return lines[-1].strip() if lines else "did not run"
print(f"## pupil GPU check ({gpu or 'no GPU found'})\n")
print("| check | result |\n| --- | --- |")
print(f"| llama.cpp fixtures on {device} (`model_fixtures`) | {'PASS' if fixtures_rc == '0' else 'FAIL'}: {result('model_fixtures.log')} |")
print(f"| {device} vs CPU, op by op (`gpu_backend`) | {'PASS' if backend_rc == '0' else 'FAIL'}: {result('gpu_backend.log')} |")
dl = open(os.path.join(out, "distill.log")).read()
m = re.search(r"(\d+) steps, (\d+) tokens in ([\d.]+) s of training \(([\d.]+) tokens/s\)", dl)
dist = f"{m.group(1)} steps, {m.group(2)} tokens, {m.group(3)} s, {m.group(4)} tokens/s" if m else "no summary line"
print(f"| distillation on {device} (SmolLM2, sample targets) | {'PASS' if distill_rc == '0' else 'FAIL'}: {dist} |")
reply = open(os.path.join(out, "lora-complete.txt")).read().strip().replace("\n", " ")[:80]
print(f"| greedy completion with the adapter on {device} | {'PASS' if lora_rc == '0' else 'FAIL'}: {reply!r} |")
print("\n| model | backend | pp512 t/s | tg128 t/s | load→1st token ms |\n| --- | --- | ---: | ---: | ---: |")
def tps(r):
    return statistics.median(r["n_prompt"] * 1e9 / s if r["n_prompt"] else r["n_gen"] * 1e9 / s for s in r["samples_ns"])
for name in [f"bench-{device}.jsonl", "bench-cpu.jsonl"]:
    by = {}
    for r in rows(name):
        by.setdefault((r["model"], r["backend"] + (f" ({r['gpu']})" if r.get("gpu") else f", {r['threads']} threads")), {})[r["test"]] = r
    for (model, backend), t in by.items():
        load = next(iter(t.values()))["load_to_first_token_ms"]
        pp, tg = t.get("pp512"), t.get("tg128")
        print(f"| {model} | {backend} | {tps(pp) if pp else float('nan'):.1f} | {tps(tg) if tg else float('nan'):.1f} | {load:.0f} |")
for r in rows("llama-bench.jsonl"):
    print(f"| {os.path.basename(r['model_filename'])} | llama.cpp {r['backends']} | {r['avg_ts']:.1f} ({'pp' if r['n_prompt'] else 'tg'}) | | |")
print("\nMeasured by the tests:\n")
for log in ["model_fixtures.log", "gpu_backend.log"]:
    for line in open(os.path.join(out, log)):
        if re.search(r"vs llama\.cpp|PPL|mean KL\(cpu|relative difference|training step", line):
            print("- " + re.sub(r"^test \S+ \.\.\. ", "", line.strip()))
print("\n(t/s: median of the repetitions; logs beside this file)")
EOF
[ "$FIXTURES_RC" = 0 ] && [ "$BACKEND_RC" = 0 ] && [ "$DISTILL_RC" = 0 ] && [ "$LORA_RC" = 0 ]
