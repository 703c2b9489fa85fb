#!/usr/bin/env bash
# Reproduce the evidence table of docs/evidence.md: default federation vs lambda = 0 vs local-only vs shuffled anchors.
# Usage: bash scripts/evidence.sh [OUT_DIR]   (about 3 minutes per run on 2 cores with a warm feature cache)
set -euo pipefail
out=${1:-runs/evidence}
mkdir -p "$out"
geofed run --secure none --out "$out/default" --overwrite
geofed run --secure none --out "$out/lambda0" --overwrite --lambda-geo 0
geofed run --secure none --out "$out/local-only" --overwrite --mode local-only
geofed run --secure none --out "$out/shuffled" --overwrite --shuffle-anchors
python scripts/evidence_table.py "$out"/default "$out"/lambda0 "$out"/local-only "$out"/shuffled
