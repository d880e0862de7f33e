#!/usr/bin/env bash
# A cost model of the ARM kernels for a machine without ARM hardware: llvm-mca's predicted
# cycles for pupil's NEON several-row kernels and for the ggml NEON kernels llama.cpp runs
# on the same CPU, per 256 weights of a row and token, on Cortex-A55 (a phone's little
# core), Cortex-A76 (a big core) and Apple M1 — decode (one token) and prefill (64).
#
# LLVM has no Cortex-A76 model of its own: `-mcpu=cortex-a76` schedules with its Cortex-A57
# model (LLVM 14 and 19 alike). The Neoverse N1 is the A76's core in a server and has a
# model of its own from LLVM 16, so the table adds it (llvm-mca-19), the closer check of an
# A76 phone core; the other columns keep the Debian default llvm-mca (14).
#
#   benches/arm-mca.sh                  # COLS=2048 (the weight row's length) by default
#   TYPES="q4_0 q4_k" benches/arm-mca.sh  # some types only
#
# How: each kernel runs once under qemu (`-cpu cortex-a76`: NEON, dotprod and fp16, no
# i8mm — what the three modelled cores have, so both sides take their dotprod paths),
# single-stepped, logging every executed instruction of the kernel function; the trace,
# disassembled by objdump, is one long straight-line program that llvm-mca schedules
# (loops unrolled as they ran, every call's own work included; caches assumed warm and
# branches predicted, as llvm-mca does). ggml's side is what llama.cpp selects on such a
# CPU: its repacked kernels for Q4_0, Q8_0 (4 rows × 4 bytes) and Q4_K, Q5_K, Q6_K
# (8 × 4), one-row `vec_dot` for Q4_1, Q5_0, Q5_1. Compiled from the source
# benches/llama-cpp.sh fetches, by clang with -O3 -march=armv8.2-a+dotprod+fp16.
#
# A second table covers cores with the 8-bit matrix multiply (`smmla`, Armv8.6 i8mm):
# Neoverse N2 (the Cortex-A710's core) and Cortex-A510 (a phone's little core), llvm-mca
# 19, prefill only (decode is the same `sdot` code). Beside pupil's `sdot` kernels it runs
# its `smmla` ones (traced under `-cpu max`) and ggml's i8mm selection: repacked 4 × 8 for
# Q4_0 and Q8_0, 8 × 8 for the K-quants, two-rows-by-two-tokens `vec_dot` for the rest,
# built with -march=armv8.6-a+dotprod+i8mm+fp16.
#
# Needs (Debian): qemu-user clang llvm llvm-19 g++-aarch64-linux-gnu (and its binutils), the
# rustup target aarch64-unknown-linux-gnu.
set -euo pipefail
cd "$(dirname "$0")/.."
COLS=${COLS:-2048}
PREFILL=64
CPUS=(cortex-a55 cortex-a76 neoverse-n1 apple-m1)
read -r -a TYPES <<<"${TYPES:-q4_0 q4_1 q5_0 q5_1 q8_0 q4_k q5_k q6_k}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

ggml=$(SOURCE_ONLY=1 benches/llama-cpp.sh)
clang --target=aarch64-linux-gnu -O2 -c benches/arm-mca/ggml_harness.c -o "$work/harness.o"
# ggml's kernels for a dotprod CPU (binary `ggml`) and for an i8mm one (`ggml-i8mm`).
for variant in ggml:armv8.2-a+dotprod+fp16 ggml-i8mm:armv8.6-a+dotprod+i8mm+fp16; do
    bin=${variant%%:*}
    flags=(--target=aarch64-linux-gnu -O3 -march="${variant#*:}" -I"$ggml/include" -I"$ggml/src" -I"$ggml/src/ggml-cpu")
    clang "${flags[@]}" -c "$ggml/src/ggml-cpu/arch/arm/quants.c" -o "$work/quants.o"
    clang++ -std=c++17 "${flags[@]}" -c "$ggml/src/ggml-cpu/arch/arm/repack.cpp" -o "$work/repack.o"
    # The generic fallbacks the kernels name are never reached on such a CPU: leave them out.
    clang++ --target=aarch64-linux-gnu -fuse-ld=bfd -static -o "$work/$bin" "$work"/{harness,quants,repack}.o \
        -Wl,--unresolved-symbols=ignore-all
done

# A static, non-PIE binary: the addresses qemu logs are the ones objdump prints.
RUSTFLAGS="-C relocation-model=static -C target-feature=+crt-static" CARGO_TARGET_DIR=target/arm-mca \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    cargo build -q --release --no-default-features --example kernel-trace --target aarch64-unknown-linux-gnu
cp target/arm-mca/aarch64-unknown-linux-gnu/release/examples/kernel-trace "$work/pupil"

for bin in ggml ggml-i8mm pupil; do
    aarch64-linux-gnu-objdump -d --no-show-raw-insn "$work/$bin" >"$work/$bin.dis"
    aarch64-linux-gnu-nm -S -C "$work/$bin" >"$work/$bin.sym"
done

# The kernel function each side runs for a type and token count: side pupil, pupil-i8mm,
# ggml or ggml-i8mm.
kernel() {
    local side=$1 type=$2 tokens=$3
    case $side in
        pupil) echo "pupil::kernels::quant_dot::neon::sdot::${type}_interleaved" && return ;;
        pupil-i8mm) echo "pupil::kernels::quant_dot::neon::mmla::${type}_interleaved" && return ;;
    esac
    local form=gemv groups=4x4 k_groups=8x4
    [ "$tokens" -gt 1 ] && form=gemm
    [ "$side" = ggml-i8mm ] && groups=4x8 k_groups=8x8
    case $type in
        q4_0 | q8_0) echo "ggml_${form}_${type}_${groups}_q8_0" ;;
        q4_k | q5_k | q6_k) echo "ggml_${form}_${type%_k}_K_${k_groups}_q8_K" ;;
        q4_1 | q5_1) echo "ggml_vec_dot_${type}_q8_1" ;;
        q5_0) echo "ggml_vec_dot_q5_0_q8_0" ;;
    esac
}

# The binary a side runs: pupil's one build selects its kernels at run time.
binary() {
    case $1 in
        pupil*) echo pupil ;;
        *) echo "$1" ;;
    esac
}

# Predicted cycles per 256 weights of a row and token: side, type, tokens, cpu.
cycles() {
    local side=$1 type=$2 tokens=$3 f range
    f=$(kernel "$side" "$type" "$tokens")
    range=$(awk -v f="$f" '{name = $4; for (i = 5; i <= NF; i++) name = name " " $i} name == f {print "0x" $1 "+0x" $2}' "$work/$(binary "$side").sym")
    [ -n "$range" ] || { echo "arm-mca: no symbol $f" >&2; exit 1; }
    local trace="$work/$side-$type-$tokens"
    if [ ! -f "$trace.s" ]; then
        # The i8mm sides run on an emulated CPU that has it, the others on one that has not.
        local cpu=cortex-a76 bin args=()
        bin=$(binary "$side")
        case $side in
            pupil-i8mm) cpu=max ;;
            ggml-i8mm) cpu=max args=(i8mm) ;;
        esac
        qemu-aarch64 -cpu $cpu -singlestep -d exec,nochain -dfilter "$range" -D "$trace.log" \
            "$work/$bin" "$type" "$COLS" "$tokens" "${args[@]}"
        python3 benches/arm-mca/trace2asm.py "$trace.log" "$work/$bin.dis" >"$trace.s" 2>/dev/null
        rm "$trace.log"
    fi
    local mca=llvm-mca
    case $4 in neoverse-n1 | neoverse-n2 | cortex-a510) mca=llvm-mca-19 ;; esac
    "$mca" -mtriple=aarch64 -mcpu="$4" -iterations=1 "$trace.s" 2>/dev/null |
        awk -v per=$((8 * tokens * COLS / 256)) '/^Total Cycles:/ {printf "%.1f", $3 / per}'
}

# A markdown table's two header lines: leading cells, their rule, each CPU's columns (the
# first named after the CPU), the CPUs.
header() {
    local lead=$1 rule=$2 columns=$3 cpu
    shift 3
    printf '%s' "$lead"
    for cpu in "$@"; do printf ' %s %s |' "$cpu" "$columns"; done
    printf '\n%s' "$rule"
    for cpu in "$@"; do printf '%s' "$(sed 's/[^|]*|/ ---: |/g' <<<"$columns |")"; done
    echo
}

echo "llvm-mca cycles per 256 weights × row × token (lower is better), rows of $COLS, 8 rows;"
echo "decode: 1 token, prefill: $PREFILL tokens. pupil / ggml below 1.00 means pupil is predicted faster."
echo
header "| type | form |" "| --- | --- |" "pupil | ggml | ratio" "${CPUS[@]}"
for type in "${TYPES[@]}"; do
    for tokens in 1 $PREFILL; do
        form=decode
        [ "$tokens" -gt 1 ] && form=prefill
        printf '| %s | %s |' "${type^^}" "$form"
        for cpu in "${CPUS[@]}"; do
            p=$(cycles pupil "$type" "$tokens" "$cpu")
            g=$(cycles ggml "$type" "$tokens" "$cpu")
            printf ' %s | %s | %s |' "$p" "$g" "$(awk -v p="$p" -v g="$g" 'BEGIN {printf "%.2f", p / g}')"
        done
        echo
    done
done

echo
echo "Cores with i8mm (llvm-mca 19), prefill ($PREFILL tokens), cycles per 256 weights × row × token:"
echo "pupil's sdot and smmla kernels and ggml's i8mm selection; ratio = pupil smmla / ggml."
echo
I8MM_CPUS=(neoverse-n2 cortex-a510)
header "| type |" "| --- |" "pupil sdot | pupil smmla | ggml | ratio" "${I8MM_CPUS[@]}"
for type in "${TYPES[@]}"; do
    printf '| %s |' "${type^^}"
    for cpu in "${I8MM_CPUS[@]}"; do
        s=$(cycles pupil "$type" $PREFILL "$cpu")
        p=$(cycles pupil-i8mm "$type" $PREFILL "$cpu")
        g=$(cycles ggml-i8mm "$type" $PREFILL "$cpu")
        printf ' %s | %s | %s | %s |' "$s" "$p" "$g" "$(awk -v p="$p" -v g="$g" 'BEGIN {printf "%.2f", p / g}')"
    done
    echo
done
