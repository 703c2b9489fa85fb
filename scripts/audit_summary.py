"""Print the headline numbers of audit reports as Markdown tables (the audit tables of docs/evidence.md come from this).

    python scripts/audit_summary.py audits/reference/*/report.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def ci(m: dict) -> str:
    return f"{m['value']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"


def tag(result: dict | None) -> str:
    if result is None:
        return "not in view"
    return ci(result["metrics"]["auc"]) + (" (unit)" if result["attack"].endswith("unit") else "")


def strongest(rows: list[dict], release: str) -> dict | None:
    """The release-level LiRA result (plain or unit-norm) with the highest AUC on ``release``, if any."""
    candidates = [r for r in rows if r["attack"] in ("lira_release", "lira_release_unit")
                  and r["metadata"]["release"] == release]
    return max(candidates, key=lambda r: r["metrics"]["auc"]["value"], default=None)


def main(paths: list[str]) -> None:
    print("| threat model | cell | Gram: best LiRA AUC | prototypes: best AUC (attack) | B update: best LiRA AUC | Gram extraction error, B = 50 / 100 (public model) |")
    print("|---|---|---|---|---|---|")
    for path in paths:
        report = json.loads(Path(path).read_text())
        name = report["threat_model"]["name"]
        for cell in report["views"]:
            rows = [r for r in report["results"] if r["metadata"].get("protection") == cell]
            gram, update = strongest(rows, "gram"), strongest(rows, "update")
            protos = [r for r in rows if r["metadata"]["release"] == "prototypes" and r["attack"] != "prototype_label_inference"
                      and not r["attack"].endswith("node_encoder") and "auc" in r["metrics"]]
            best = max(protos, key=lambda r: r["metrics"]["auc"]["value"], default=None)
            ext = {r["metadata"]["anchors"]: r["metrics"] for r in rows if r["attack"] == "extraction" and r["metadata"]["release"] == "gram"
                   and r["metadata"].get("simulated_others") is not False}
            extraction = " / ".join(f"{ext[b]['procrustes_error']['value']:.3f} ({ext[b]['baseline_procrustes_error']['value']:.3f})"
                                    for b in (50, 100) if b in ext) or "not in view"
            print(f"| {name} | {cell} | {tag(gram)} | "
                  + (f"{ci(best['metrics']['auc'])} ({best['attack']})" if best else "not in view")
                  + f" | {tag(update)} | {extraction} |")
    print()
    print("| threat model | level | model threshold AUC | model LiRA AUC | model RMIA AUC | RMIA TPR at 1% FPR | canary: correct / guesses, lower bound (accountant) |")
    print("|---|---|---|---|---|---|---|")
    for path in paths[:1]:
        report = json.loads(Path(path).read_text())
        for level in report["experiment"]["levels"]:
            rows = {r["attack"]: r for r in report["results"] if r["metadata"].get("protection") == level and r["threat_model"].startswith("reference")}
            can = rows.get("canary_one_run")
            canary = (f"{can['metrics']['correct_guesses']['value']:.0f} / {can['trials']}, {can['metrics']['epsilon_lower_bound']['value']:.2f} "
                      f"({'-' if can['metadata']['accountant_epsilon'] is None else format(can['metadata']['accountant_epsilon'], '.2f')})") if can else "-"
            print(f"| all | {level} | {ci(rows['model_threshold']['metrics']['auc'])} | {ci(rows['model_lira']['metrics']['auc'])} | "
                  f"{ci(rows['model_rmia']['metrics']['auc'])} | {rows['model_rmia']['metrics']['tpr_at_0.01_fpr']['value']:.3f} | {canary} |")


if __name__ == "__main__":
    main(sys.argv[1:])
