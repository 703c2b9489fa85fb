#!/usr/bin/env bash
# Reproduce audits/reference/:
#  1. audits/reference/<threat model>/: `geofed audit` with the default plan (audits/plan.toml) from every threat model
#     in threat_models/; the experiment is trained once (about 6 minutes on 2 cores) and cached, the other threat
#     models reuse it (about 1 minute each);
#  2. audits/reference/run-inventory/: the recorded-run part of the audit (a plan with `run` and `reference_run` and
#     nothing to train) on two finished 6-round demo runs: masking, and its plaintext twin as ground truth for round 1.
#     The reports committed there were written by the earlier `geofed audit --run DIR --reference-run DIR` front end
#     (same inventory and Gram inversion numbers, an older report layout); this regenerates them in the current one.
# Usage: bash scripts/reference_audit.sh [RUNS_DIR]
# PLAN=quick|standard|high-power|FILE (default audits/plan.toml) and DEST (default audits/reference) choose the plan of
# part 1 and where its reports go, e.g. PLAN=quick DEST=audits/reference/quick (issue 17); SKIP_RUNS=1 skips part 2.
set -euo pipefail
runs=${1:-runs/audit-reference}
plan=${PLAN:-audits/plan.toml}
dest=${DEST:-audits/reference}
for tm in threat_models/*.toml; do
  name=$(basename "$tm" .toml)
  geofed audit --threat-model "$tm" --plan "$plan" --out "$dest/$name" --overwrite
done
[ -n "${SKIP_RUNS:-}" ] && exit 0
mkdir -p "$runs"
[ -f "$runs/masking/summary.json" ] || geofed run --out "$runs/masking"
[ -f "$runs/none/summary.json" ] || geofed run --secure none --out "$runs/none"
recorded_plan() {  # plan file auditing only the recorded run $1 against the plaintext twin $2
  printf 'protections = []\nepsilons = []\nrun = "%s"\nreference_run = "%s"\n' "$1" "$2" > "$runs/plan-$3.toml"
  echo "$runs/plan-$3.toml"
}
plan=$(recorded_plan "$runs/masking" "$runs/none" masking)
for tm in threat_models/*.toml; do
  name=$(basename "$tm" .toml)
  geofed audit --threat-model "$tm" --plan "$plan" --out "audits/reference/run-inventory/masking/$name" --overwrite
done
geofed audit --threat-model threat_models/hbc-server.toml --plan "$(recorded_plan "$runs/none" "$runs/none" none)" \
  --out audits/reference/run-inventory/none/hbc-server --overwrite
