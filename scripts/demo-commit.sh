#!/usr/bin/env bash
# Copies, from a `cargo xtask bench --retrain` output folder, what `cargo xtask bench` evaluates
# and what a reader looks at into demo/: per seed the four models with their tuning, the
# results, report, plots, example images, training summary and main curves; the summary over the
# seeds. Usage: scripts/demo-commit.sh [OUT (bench-out/demo-retrain)] [DEST (demo)]
set -euo pipefail
out=${1:-bench-out/demo-retrain}
dest=${2:-demo}
rm -rf "$dest"
mkdir -p "$dest"
cp "$out"/{config.json,summary.json,report.md,seeds.png,seeds-paired.png,seeds-chair.png} "$dest"/
for run in "$out"/seed-*; do
  s="$dest/$(basename "$run")"
  mkdir -p "$s/models" "$s/training"
  for m in target reward-sft reward target-dpo; do
    cp -r "$run/models/$m" "$s/models/"
  done
  cp "$run/models/tuning.json" "$s/models/"
  cp "$run"/{results.json,report.md,training.json,lambda.png,methods.png,chair.png} "$s"/
  cp -r "$run/examples" "$s"/
  # The main stages' curves (the others are in a retrain's runs/ and tune/runs/).
  for stage in target reward-sft reward; do
    cp "$run/runs/$stage/metrics.png" "$s/training/$stage.png"
  done
done
du -sh "$dest"
