#!/usr/bin/env bash
# Reproduce the privacy-utility table of docs/evidence.md: the default demo (secure aggregation by masking) at
# epsilon = infinity (no DP), 8, 3 and 1 per node (delta 1e-5, replace-one PLD accountant), with the default recipe and with
# the large-batch recipe of examples/dp-recipe.toml.
# Usage: bash scripts/privacy_utility.sh [OUT_DIR]   (3-4 minutes per run on 2 cores with a warm feature cache)
set -euo pipefail
out=${1:-runs/privacy-utility}
mkdir -p "$out"
geofed run --out "$out/eps-inf" --overwrite
for eps in 8 3 1; do
  geofed run --out "$out/eps-$eps" --overwrite --dp-epsilon "$eps"
done
python scripts/evidence_table.py "$out"/eps-inf "$out"/eps-8 "$out"/eps-3 "$out"/eps-1
# The same budgets with the large-batch recipe (examples/dp-recipe.toml: batch 256, lr 5e-3), 5-6 minutes per DP run.
for eps in 0 8 3 1; do
  geofed run --config examples/dp-recipe.toml --out "$out/recipe-eps-$eps" --overwrite --dp-epsilon "$eps"
done
python scripts/evidence_table.py "$out"/recipe-eps-0 "$out"/recipe-eps-8 "$out"/recipe-eps-3 "$out"/recipe-eps-1
