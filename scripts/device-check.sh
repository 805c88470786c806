#!/usr/bin/env bash
# One prepared run on a lent NVIDIA machine (no cargo there): CUDA parity tests on the
# fixtures, then the speed benchmarks (150M + TITA, and LLaVA-1.5-7B shapes with random
# weights). The binaries are built on the development machine by
#   cargo test  --release -p tita-models --features test-cuda --no-run
#   cargo test  --release -p tita-decode --no-default-features --features cuda --no-run
#   cargo build --release -p tita-bench  --no-default-features --features cuda
# then stripped and packed into .devbin/devbin.tar.xz (the test binaries renamed parity,
# generate, tita), with the repository path they were built at in .devbin/built-at.
set -uo pipefail
OUT=${OUT:-/tmp/out}
BIN=/tmp/tita-bin
mkdir -p "$OUT" "$BIN"
tar xJf .devbin/devbin.tar.xz -C "$BIN"
# Test binaries find the fixtures through the absolute path they were built at.
built=$(cat .devbin/built-at)
if [ ! -e "$built" ]; then mkdir -p "$(dirname "$built")" && ln -s "$PWD" "$built"; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
ldconfig -p | grep -E "libnvrtc|libcuda\.so" | head -3
for t in parity generate tita; do
  echo "== $t (cuda)"
  timeout 90 "$BIN/$t" --test-threads 1 2>&1 | grep -E "^test |panicked|assert|test result|Error" | head -20
done
echo "== speed llava-7b (cuda)"
timeout 180 "$BIN/tita-bench" speed --preset llava-7b --backend cuda --prompt-tokens 128 --new-tokens 32 --out "$OUT/speed7b"
echo "== speed 150m + TITA (cuda)"
timeout 110 "$BIN/tita-bench" speed --preset 150m --backend cuda --tita --batch 1,4,16 --out "$OUT/speed150"
