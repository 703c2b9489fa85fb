"""Print a Markdown table of final metrics from run folders: python scripts/evidence_table.py RUN_DIR..."""

from __future__ import annotations

import json
import sys
from pathlib import Path

KEYS = ("cross_modal_top1", "mutual_knn", "cka_to_consensus", "debiased_cka", "task_accuracy")


def main(paths: list[str]) -> None:
    first = json.loads((Path(paths[0]) / "summary.json").read_text())
    print("per-node task accuracy in node order: " + ", ".join(n["id"] for n in first["nodes"]) + "\n")
    print("| run | " + " | ".join(KEYS) + " | per-node task accuracy | epsilon spent (max over nodes) | seconds (rounds) |")
    print("|---|" + "---|" * (len(KEYS) + 3))
    for path in paths:
        summary = json.loads((Path(path) / "summary.json").read_text())
        final = summary["final"]
        last = summary["rounds"][-1]["nodes"]
        per_node = ", ".join(f"{v['task_accuracy']:.2f}" for v in last.values())
        seconds = sum(r["seconds"] for r in summary["rounds"])
        privacy = summary.get("privacy", {})
        spent = f"{max(v['epsilon'] for v in privacy['nodes'].values()):.2f}" if privacy.get("enabled") else "inf (no DP)"
        print(f"| {Path(path).name} | " + " | ".join(f"{final[k]:.3f}" for k in KEYS) + f" | {per_node} | {spent} | {seconds:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
