#!/usr/bin/env bash
# One prepared run on a lent NVIDIA machine (no cargo and no network there): CUDA parity on the
# fixtures (f32, and the f16/bf16 deviation), the decode GEMV kernel's parity and GB/s per 7B
# shape against a read-only kernel and today's burn path (gemv-bench), LLaVA-1.5-7B shapes
# with random weights in f16 (decode, prefill of 600 tokens, seconds per POPE-shaped query for
# greedy / TITA / VCD), then the same with kernel fusion when it was built, and PyTorch on the
# same shapes; Qwen2.5-VL's CUDA parity and its 7B shapes (3B reward) in bf16 when QWEN=1.
#
# Build on the development machine first (scripts/device-build.sh does it), which leaves
# .devbin/devbin.tar.xz (tita-bench, gemv-bench, tita-bench-fusion, parity) and
# .devbin/built-at; run with
#   device run --carry .devbin "bash scripts/device-check.sh"
set -uo pipefail
OUT=${OUT:-/tmp/out}
BIN=/tmp/tita-bin
mkdir -p "$OUT" "$BIN"
tar xJf .devbin/devbin.tar.xz -C "$BIN"
# The test binary finds the fixtures through the absolute path it was built at.
built=$(cat .devbin/built-at)
if [ ! -e "$built" ]; then mkdir -p "$(dirname "$built")" && ln -s "$PWD" "$built"; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
speed() { # label binary args...
  local label=$1 bin=$2
  shift 2
  echo "== $label"
  timeout ${SPEED_TIMEOUT:-110} "$BIN/$bin" speed --backend cuda --out "$OUT/$label" --overwrite "$@" 2>&1 | grep -v "^wrote"
}
echo "== parity (cuda, f32 / f16 / bf16)"
timeout 90 "$BIN/parity" --test-threads 1 --nocapture 2>&1 | grep -E "^test |max \||panicked|Δ|test result" | head -20
if [ -x "$BIN/qwen" ]; then
  echo "== qwen2.5-vl parity (cuda, f32)"
  timeout 60 "$BIN/qwen" --test-threads 1 2>&1 | grep -E "^test |max \||panicked|Δ|test result" | head -12
fi
if [ -x "$BIN/gemv-bench" ]; then
  # Exits non-zero when a shape's output leaves the f64 host result by more than one f16 rounding.
  echo "== gemv kernels (f16): parity and GB/s per LLaVA-7B shape"
  timeout 120 "$BIN/gemv-bench" --dtype f16 --iters 50 2>&1 | tee "$OUT/gemv-bench.txt"
fi
# In order of value: the 600 s a command may run leaves no room for all of them at worst.
speed 7b-f16 tita-bench --preset llava-7b --dtype f16 --prompt-tokens 600 --new-tokens 64 --pope --queries 3
echo "== PyTorch $(python3 -c 'import torch, transformers; print(torch.__version__, transformers.__version__)')"
timeout 90 python3 scripts/torch_speed.py --preset llava-7b --device cuda --dtype f16 --new-tokens 64
speed 150m-f32 tita-bench --preset 150m --dtype f32 --prompt-tokens 600 --new-tokens 64 --tita --batch 1,4,16
timeout 40 python3 scripts/torch_speed.py --preset 150m --device cuda --dtype f32 --new-tokens 64
[ -x "$BIN/tita-bench-fusion" ] && speed 7b-f16-fusion tita-bench-fusion --preset llava-7b --dtype f16 --prompt-tokens 600 --new-tokens 64 --pope --queries 3
if [ "${QWEN:-0}" = 1 ]; then
  speed qwen7b-bf16 tita-bench --preset qwen2.5-vl-7b --reward-preset qwen2.5-vl-3b --dtype bf16 --prompt-tokens 600 --new-tokens 32 --pope --queries 3
fi
cp "$OUT"/*/results.json "$OUT/" 2>/dev/null || true
for d in "$OUT"/*/; do cp "$d/results.json" "$OUT/$(basename "$d").json" 2>/dev/null; done
