#!/usr/bin/env bash
# Reproduce audits/reference/:
#  1. audits/reference/<threat model>/: `geofed audit` with the default plan (audits/plan.toml) from every threat model
#     in threat_models/; the experiment is trained once (about 6 minutes on 2 cores) and cached, the other threat
#     models reuse it (about 1 minute each);
#  2. audits/reference/run-inventory/: the first version's inventory of finished demo runs (masking, and its
#     plaintext twin as ground truth for round 1), two 6-round runs.
# Usage: bash scripts/reference_audit.sh [RUNS_DIR]
set -euo pipefail
runs=${1:-runs/audit-reference}
for tm in threat_models/*.toml; do
  name=$(basename "$tm" .toml)
  geofed audit --threat-model "$tm" --plan audits/plan.toml --out "audits/reference/$name"
done
mkdir -p "$runs"
[ -f "$runs/masking/summary.json" ] || geofed run --out "$runs/masking"
[ -f "$runs/none/summary.json" ] || geofed run --secure none --out "$runs/none"
for tm in threat_models/*.toml; do
  name=$(basename "$tm" .toml)
  geofed audit --threat-model "$tm" --run "$runs/masking" --reference-run "$runs/none" \
    --out "audits/reference/run-inventory/masking/$name"
done
geofed audit --threat-model threat_models/hbc-server.toml --run "$runs/none" --reference-run "$runs/none" \
  --out audits/reference/run-inventory/none/hbc-server
