#!/usr/bin/env bash
# Builds what scripts/device-check.sh runs on the GPU machine (which has no cargo): the bench
# with CUDA and, in the same build (one set of burn features), the GEMV microbenchmark
# (tita-kernels' gemv-bench example); the bench with burn's kernel fusion (NO_FUSION=1 skips
# it), and the CUDA parity test binaries (LLaVA and Qwen2.5-VL); stripped and packed into .devbin/ (ignored by git:
# `echo /.devbin/ >> .git/info/exclude`).
set -euo pipefail
cd "$(dirname "$0")/.."
T=${CUDA_TARGET_DIR:-target/cuda}
mkdir -p .devbin/bin
CARGO_TARGET_DIR=$T cargo build --release --no-default-features -p tita-bench -p tita-kernels \
  --features tita-bench/cuda,tita-bench/cli,tita-kernels/cuda --bin tita-bench --example gemv-bench
cp "$T/release/tita-bench" .devbin/bin/tita-bench
cp "$T/release/examples/gemv-bench" .devbin/bin/gemv-bench
if [ "${NO_FUSION:-0}" != 1 ]; then
  CARGO_TARGET_DIR=$T-fusion cargo build --release -p tita-bench --no-default-features --features cuda,fusion,cli
  cp "$T-fusion/release/tita-bench" .devbin/bin/tita-bench-fusion
fi
# The CUDA parity tests: LLaVA (parity) and Qwen2.5-VL (qwen).
for test in parity qwen; do
  bin=$(CARGO_TARGET_DIR=$T cargo test --release -p tita-models --features test-cuda --test $test --no-run --message-format=json \
    | grep -o "\"executable\":\"[^\"]*$test[^\"]*\"" | tail -1 | cut -d'"' -f4)
  cp "$bin" .devbin/bin/$test
done
strip .devbin/bin/*
tar cJf .devbin/devbin.tar.xz -C .devbin/bin .
pwd > .devbin/built-at
ls -la .devbin
