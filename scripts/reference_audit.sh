#!/usr/bin/env bash
# Reproduce audits/reference/: the demo federation with secure aggregation by masking (the default) and its
# plaintext twin (--secure none, same seed: ground truth for round 1), then `geofed audit` from every threat model.
# Usage: bash scripts/reference_audit.sh [RUNS_DIR]   (two 6-round demo runs, about 2.5 minutes with a warm cache)
set -euo pipefail
runs=${1:-runs/audit-reference}
mkdir -p "$runs"
[ -f "$runs/masking/summary.json" ] || geofed run --out "$runs/masking"
[ -f "$runs/none/summary.json" ] || geofed run --secure none --out "$runs/none"
for tm in threat_models/*.toml; do
  name=$(basename "$tm" .toml)
  geofed audit --threat-model "$tm" --run "$runs/masking" --reference-run "$runs/none" --out "audits/reference/masking/$name"
done
geofed audit --threat-model threat_models/hbc-server.toml --run "$runs/none" --reference-run "$runs/none" \
  --out audits/reference/none/hbc-server
