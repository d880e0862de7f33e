#!/usr/bin/env bash
# Builds llama.cpp's llama-bench, llama-quantize, llama-perplexity and llama-server from the llama.cpp vendored in the
# llama-cpp-python sdist on PyPI, outside the repository, for side-by-side runs with
# `pupil bench` (see docs/benchmarks.md).
#
#   benches/llama-cpp.sh [DIR]              # default DIR: /tmp/llama-cpp
#   SOURCE_ONLY=1 benches/llama-cpp.sh [DIR] # fetch the source only (benches/arm-mca.sh)
#
# Prints the directory holding the binaries (the source's `ggml` directory with
# SOURCE_ONLY). Needs python3 with pip, a C++ compiler.
set -euo pipefail
DIR=${1:-/tmp/llama-cpp}
VERSION=0.3.36
mkdir -p "$DIR"
cd "$DIR"
if [ ! -d src ]; then
  # The sdist itself: `pip download --no-binary` would try to build cmake from source.
  url=$(curl -s -H 'Accept: application/vnd.pypi.simple.v1+json' https://pypi.org/simple/llama-cpp-python/ |
    python3 -c "import json,sys; print([f['url'] for f in json.load(sys.stdin)['files'] if f['filename'] == 'llama_cpp_python-$VERSION.tar.gz'][0])")
  curl -sL -o sdist.tar.gz "$url"
  mkdir src.part && tar -xzf sdist.tar.gz -C src.part --strip-components=1 && mv src.part src
fi
if [ -n "${SOURCE_ONLY:-}" ]; then
  echo "$DIR/src/vendor/llama.cpp/ggml"
  exit 0
fi
if [ ! -x build/bin/llama-bench ] || [ ! -x build/bin/llama-server ]; then
  python3 -m venv venv
  venv/bin/pip install -q cmake ninja
  # Some VMs report AMX (cpuinfo's amx_tile) but fault on the first tile instruction, and a
  # native build then dies with SIGILL in ggml's AMX mat-mul: probe it, and leave AMX out of
  # the build where it cannot run.
  NO_AMX=
  if grep -qw amx_tile /proc/cpuinfo; then
    printf '%s\n' '#include <immintrin.h>' '#include <sys/syscall.h>' '#include <unistd.h>' \
      'int main(void) { unsigned char c[64] = {1}; if (syscall(SYS_arch_prctl, 0x1023, 18)) return 1;' \
      '  c[16] = 64; c[48] = 16; _tile_loadconfig(c); _tile_zero(0); _tile_release(); return 0; }' >amx-probe.c
    if ! { cc -O2 -mamx-tile amx-probe.c -o amx-probe && ./amx-probe; } 2>/dev/null; then
      NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
      echo "llama-cpp.sh: this CPU reports AMX but cannot run it; building without" >&2
    fi
  fi
  venv/bin/cmake -S src/vendor/llama.cpp -B build -G Ninja -DCMAKE_MAKE_PROGRAM="$PWD/venv/bin/ninja" \
    -DCMAKE_C_FLAGS="$NO_AMX" -DCMAKE_CXX_FLAGS="$NO_AMX" \
    -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON >/dev/null
  venv/bin/cmake --build build --target llama-bench llama-quantize llama-perplexity llama-server -j 2 >/dev/null
fi
echo "$DIR/build/bin"
