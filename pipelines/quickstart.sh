#!/usr/bin/env bash
# End-to-end main job on an embedded synthetic dataset (no downloads, CPU is enough).
# Usage: bash pipelines/quickstart.sh [WORKDIR]   (reid-masks / reid-train must be on PATH)
set -euo pipefail
work=${1:-demo}
data="$work/market1501"
mkdir -p "$work"

echo "== 1. synthetic Market-1501 copy (real layout, LIP parsing PNGs as ground truth)"
reid-masks synth --layout market1501 --out "$data" --ids 12 --seed 0 --overwrite

echo "== 2. validate it against its manifest"
reid-masks validate --dataset market1501 --root "$data" --manifest "$data/manifest.json" --check-images

echo "== 3. mask cache from the parsing PNGs (no detector, no weights needed)"
reid-masks generate --dataset market1501 --root "$data" --parsing-dir "$data/parsing" --out "$work/market1501.h5" --workers 2

echo "== 4. inspect the cache and draw a contact sheet"
reid-masks inspect "$work/market1501.h5"
reid-masks preview "$work/market1501.h5" --n 16 --out "$work/preview.png"

echo "== 5. train MMGA (tiny ResNet-18 from random init, a few CPU epochs) and evaluate"
if [ -e "$work/run" ]; then  # a rerun of the demo starts the training clean (a real run would use 'fit --resume DIR')
  echo "   removing the previous demo run $work/run: training starts clean"
  rm -rf "$work/run"
fi
reid-train fit --config tiny_synthetic --set data.root="$data" --set data.cache="$work/market1501.h5" \
  --set train.output_dir="$work/run" --set solver.epochs=3 --set data.num_workers=2
reid-train evaluate --checkpoint "$work/run/checkpoint.pth"

echo "== 6. pictures: ranked retrievals with attention maps, training curves"
reid-train visualize --checkpoint "$work/run/checkpoint.pth" --n 4 --topk 5 --out "$work/vis"
reid-train curves "$work/run/metrics.jsonl" --out "$work/curves.png"
echo "done: look at $work/preview.png, $work/vis/index.png and $work/curves.png"
