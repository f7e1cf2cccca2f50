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
