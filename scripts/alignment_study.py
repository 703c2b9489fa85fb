"""Does the alignment work? lambda > 0 vs lambda = 0 vs local-only vs shuffled anchors, same seeds, two federations.

    python scripts/alignment_study.py [--out runs/alignment-study] [--seeds 0 1 2] [--federations demo image-tabular]

Runs every (federation, seed, arm) that its folder does not already hold (so an interrupted study continues), in
clear uploads (``secure.protocol = "none"``: secure aggregation sums the same numbers), with the configured defaults
otherwise (``--rounds``, ``--anchors-per-class``, ``--lambda-geo`` override them), then prints one Markdown table per
federation: each arm's mean (sd) over seeds of the headline metrics of the last round, and the SAME-SEED
differences alignment minus each null with their mean, sd, min, max and how many seeds the alignment won.
``--table-only`` prints the tables from the runs already there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from geofed_secure.config import RunConfig, SecureSection, nodes_from_spec
from geofed_secure.demo import load_demo_modalities
from geofed_secure.runtime.simulator import Simulator

FEDERATIONS = {"demo": None, "image-tabular": "image,tabular"}
ARMS = ("align", "lambda0", "local-only", "shuffled")
METRICS = ("heldout_cka", "train_anchor_cka", "centroid_cka", "centred_top1", "own_anchor_top1", "cross_modal_top1",
           "task_accuracy", "min_gram_scale")


def arm_config(base: RunConfig, federation: str, arm: str, seed: int) -> RunConfig:
    nodes = nodes_from_spec(FEDERATIONS[federation]) if FEDERATIONS[federation] else base.nodes
    training, fed = base.training, dataclasses.replace(base.federation, seed=seed)
    if arm == "lambda0":
        training = dataclasses.replace(training, lambda_geo=0.0)
    elif arm == "local-only":
        fed = dataclasses.replace(fed, mode="local-only")
    elif arm == "shuffled":
        nodes = tuple(dataclasses.replace(n, shuffle_anchors=True) for n in nodes)
    return base.replace(federation=fed, training=training, nodes=nodes, secure=SecureSection(protocol="none"))


def run_all(args: argparse.Namespace, base: RunConfig) -> None:
    for federation in args.federations:
        for seed in args.seeds:
            for arm in args.arms:
                out = Path(args.out) / federation / f"{arm}-seed{seed}"
                if (out / "summary.json").is_file():
                    continue
                config = arm_config(base, federation, arm, seed)
                result = Simulator(config, load_demo_modalities(config), out).run(overwrite=True)
                final = result.summary["final"]
                print(f"{federation} {arm} seed {seed}: heldout_cka {final['heldout_cka']:.3f} task "
                      f"{final['task_accuracy']:.3f} collapsed {sum(len(r['collapsed_nodes']) for r in result.summary['rounds'])}",
                      flush=True)


def load(out: Path, federation: str, arm: str, seed: int) -> dict | None:
    path = out / federation / f"{arm}-seed{seed}" / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def fmt(values: list[float]) -> str:
    return f"{np.mean(values):+.3f} ({np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f})" if values else "-"


def tables(args: argparse.Namespace) -> None:
    out = Path(args.out)
    for federation in args.federations:
        runs = {(arm, seed): load(out, federation, arm, seed) for arm in args.arms for seed in args.seeds}
        done = {k: v for k, v in runs.items() if v is not None}
        if not done:
            continue
        any_run = next(iter(done.values()))
        print(f"\n## {federation}: nodes {', '.join(n['id'] for n in any_run['nodes'])}; B = "
              f"{next(iter(any_run['anchors_per_modality'].values()))} anchors per modality, "
              f"{any_run['config']['federation']['rounds']} rounds, lambda {any_run['config']['training']['lambda_geo']}, "
              f"seeds {sorted({s for _, s in done})}\n")
        print("| metric (last round) | " + " | ".join(f"{a}: mean (sd)" for a in args.arms)
              + " | " + " | ".join(f"align - {a}: mean (sd) [min, max] wins" for a in args.arms if a != "align") + " |")
        print("|---" * (2 * len(args.arms)) + "|")
        for metric in (*METRICS, "collapsed_nodes", "seconds"):
            per_arm = {a: {s: value(done[(a, s)], metric) for s in args.seeds if (a, s) in done} for a in args.arms}
            cells = [fmt([v for v in per_arm[a].values() if v is not None]) for a in args.arms]
            for other in (a for a in args.arms if a != "align" and "align" in args.arms):
                diffs = [per_arm["align"][s] - per_arm[other][s] for s in args.seeds
                         if per_arm["align"].get(s) is not None and per_arm[other].get(s) is not None]
                cells.append(f"{fmt(diffs)} [{min(diffs):+.3f}, {max(diffs):+.3f}] {sum(d > 0 for d in diffs)}/{len(diffs)}"
                             if diffs else "-")
            print(f"| {metric} | " + " | ".join(cells) + " |")


def value(summary: dict, metric: str) -> float | None:
    if metric == "collapsed_nodes":  # node-rounds flagged as collapsed over the whole run
        return float(sum(len(r.get("collapsed_nodes", [])) for r in summary["rounds"]))
    if metric == "seconds":
        return float(sum(r["seconds"] for r in summary["rounds"]))
    v = summary["final"].get(metric)
    return None if v is None else float(v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/alignment-study")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--federations", nargs="+", choices=sorted(FEDERATIONS), default=list(FEDERATIONS))
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--anchors-per-class", type=int)
    parser.add_argument("--lambda-geo", type=float)
    parser.add_argument("--gram-scale-floor", type=float)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    base = RunConfig()
    if args.rounds is not None:
        base = base.replace(federation=dataclasses.replace(base.federation, rounds=args.rounds))
    if args.anchors_per_class is not None:
        base = base.replace(data=dataclasses.replace(base.data, anchors_per_class=args.anchors_per_class))
    for name in ("lambda_geo", "gram_scale_floor"):
        if getattr(args, name) is not None:
            base = base.replace(training=dataclasses.replace(base.training, **{name: getattr(args, name)}))
    if not args.table_only:
        run_all(args, base)
    tables(args)


if __name__ == "__main__":
    main()
