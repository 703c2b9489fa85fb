"""One-run canary audit of a demo node at several privacy budgets (geofed_secure.audit.canary_run).

    python scripts/canary_audit.py [--node registry-tabular] [--epsilons inf,8,2] [--canaries 200]
                                   [--rounds 6] [--local-steps 40] [--lr 0.002] [--out runs/canary-audit.json]

Canaries are the node's held-out (test) records with wrong labels, each included in its training set with
probability 1/2; the node trains alone (no aggregation: its DP guarantee is its own) and the audit prints the
empirical epsilon lower bound (95%) next to the accountant's epsilon. More local steps than the demo's 8 give the
audit more power (a record seen more often is memorised more).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from geofed_secure.audit.canary_run import run_canary_audit
from geofed_secure.config import PrivacySection, RunConfig
from geofed_secure.demo import load_demo_modalities
from geofed_secure.runtime import backbone_factory, build_federation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node", default="registry-tabular")
    parser.add_argument("--epsilons", default="inf,8,2")
    parser.add_argument("--canaries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--local-steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/canary-audit.json"))
    args = parser.parse_args()
    base = RunConfig()
    base = base.replace(federation=base.federation.__class__(rounds=args.rounds, mode="local-only", seed=args.seed),
                        training=base.training.__class__(local_steps=args.local_steps, lr=args.lr, lambda_geo=0.0))
    modalities = load_demo_modalities(base)
    fed = build_federation(base, modalities)
    spec = next(n for n in base.nodes if n.id == args.node)
    data = fed.nodes[spec.id]
    print(f"node {spec.id}: {len(data.train)} training records, {len(data.test)} held-out records -> {args.canaries} canaries")
    rows = []
    for text in args.epsilons.split(","):
        eps = float(text)
        config = base.replace(privacy=PrivacySection(epsilon=0.0 if math.isinf(eps) else eps))
        t0 = time.perf_counter()
        audit = run_canary_audit(config, spec, data, data.test, anchor_digest=fed.anchor_digest,
                                 backbone_factory=backbone_factory(config), canaries=args.canaries, seed=args.seed,
                                 progress=print)
        rows.append(audit.to_dict() | {"epsilon_budget": eps, "seconds": round(time.perf_counter() - t0, 1)})
        print(f"epsilon {eps:g}: {audit.correct}/{audit.guesses} correct guesses -> lower bound {audit.epsilon_lower_bound:.3f}, "
              f"accountant {audit.accountant_epsilon}, failed={audit.failed}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print("\n| epsilon budget | accountant epsilon | correct / guesses | empirical lower bound (95%) | refuted |")
    print("|---|---|---|---|---|")
    for r in rows:
        acc = "-" if r["accountant_epsilon"] is None else f"{r['accountant_epsilon']:.2f}"
        print(f"| {r['epsilon_budget']:g} | {acc} | {r['correct']} / {r['guesses']} | {r['epsilon_lower_bound']:.3f} | {r['failed']} |")


if __name__ == "__main__":
    main()
