#!/usr/bin/env bash
# Builds llama.cpp's llama-bench and llama-quantize from the llama.cpp vendored in the
# llama-cpp-python sdist on PyPI, outside the repository, for side-by-side runs with
# `pupil bench` (see docs/benchmarks.md).
#
#   benches/llama-cpp.sh [DIR]      # default DIR: /tmp/llama-cpp
#
# Prints the directory holding the binaries. Needs python3 with pip, a C++ compiler.
set -euo pipefail
DIR=${1:-/tmp/llama-cpp}
VERSION=0.3.36
mkdir -p "$DIR"
cd "$DIR"
if [ ! -x build/bin/llama-bench ]; then
  python3 -m venv venv
  venv/bin/pip install -q cmake ninja
  if [ ! -d src ]; then
    # The sdist itself: `pip download --no-binary` would try to build cmake from source.
    url=$(curl -s -H 'Accept: application/vnd.pypi.simple.v1+json' https://pypi.org/simple/llama-cpp-python/ |
      python3 -c "import json,sys; print([f['url'] for f in json.load(sys.stdin)['files'] if f['filename'] == 'llama_cpp_python-$VERSION.tar.gz'][0])")
    curl -sL -o sdist.tar.gz "$url"
    mkdir src && tar -xzf sdist.tar.gz -C src --strip-components=1
  fi
  venv/bin/cmake -S src/vendor/llama.cpp -B build -G Ninja -DCMAKE_MAKE_PROGRAM="$PWD/venv/bin/ninja" \
    -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON >/dev/null
  venv/bin/cmake --build build --target llama-bench llama-quantize llama-perplexity -j 2 >/dev/null
fi
echo "$DIR/build/bin"
