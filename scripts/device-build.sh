#!/usr/bin/env bash
# Builds what scripts/device-check.sh runs on the GPU machine (which has no cargo): the bench
# with CUDA (autotune), the same with burn's kernel fusion, and the CUDA parity test binary;
# stripped and packed into .devbin/ (ignored by git: `echo /.devbin/ >> .git/info/exclude`).
set -euo pipefail
cd "$(dirname "$0")/.."
T=${CUDA_TARGET_DIR:-target/cuda}
mkdir -p .devbin/bin
CARGO_TARGET_DIR=$T cargo build --release -p tita-bench --no-default-features --features cuda,cli
cp "$T/release/tita-bench" .devbin/bin/tita-bench
CARGO_TARGET_DIR=$T-fusion cargo build --release -p tita-bench --no-default-features --features cuda,fusion,cli
cp "$T-fusion/release/tita-bench" .devbin/bin/tita-bench-fusion
parity=$(CARGO_TARGET_DIR=$T cargo test --release -p tita-models --features test-cuda --test parity --no-run --message-format=json \
  | grep -o '"executable":"[^"]*parity[^"]*"' | tail -1 | cut -d'"' -f4)
cp "$parity" .devbin/bin/parity
strip .devbin/bin/*
tar cJf .devbin/devbin.tar.xz -C .devbin/bin .
pwd > .devbin/built-at
ls -la .devbin
