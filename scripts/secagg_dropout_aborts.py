"""How often an honest secagg-v1 round completes under random dropouts (issue 12: what the survivor rules cost).

Each node independently drops with probability ``p`` and, if it drops, at a stage drawn uniformly from the five
stages every version has (advertise_keys, share_keys, masked_input, consistency_check, unmask; with
``--graph-seed-stage`` also the SecAgg+ graph-seed reveal). Prints, per configuration, the share of rounds that
completed. Run it against any checkout:

    python scripts/secagg_dropout_aborts.py --trials 200
    PYTHONPATH=/path/to/older/checkout python scripts/secagg_dropout_aborts.py --trials 200   # the same, older code
"""

from __future__ import annotations

import argparse

import numpy as np

from geofed_secure.errors import ProtocolAborted
from geofed_secure.secagg import STAGES, simulate_aggregation

COMMON_STAGES = ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmask")

CONFIGS = [(5, None), (10, None), (20, 6), (40, 8)]


def completion_rate(n: int, neighbors: int | None, p: float, trials: int, seed: int, stages: tuple[str, ...]) -> float:
    rng = np.random.default_rng(seed)
    ids = [f"n{i:02d}" for i in range(n)]
    inputs = {v: np.zeros(4) for v in ids}
    completed = 0
    for trial in range(trials):
        dropouts = {v: str(rng.choice(stages)) for v in ids if rng.random() < p}
        try:
            simulate_aggregation(inputs, neighbors=neighbors, dropouts=dropouts, seed=trial)
            completed += 1
        except ProtocolAborted:
            pass
    return completed / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--p", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2])
    parser.add_argument("--graph-seed-stage", action="store_true", help="nodes may also drop at the graph-seed reveal")
    args = parser.parse_args()
    stages = tuple(s for s in STAGES if s in COMMON_STAGES or args.graph_seed_stage)
    print(f"dropout stages: {', '.join(stages)}; {args.trials} rounds per cell")
    print("| nodes | graph | " + " | ".join(f"p = {p}" for p in args.p) + " |")
    print("|---|---|" + "---|" * len(args.p))
    for n, neighbors in CONFIGS:
        rates = [completion_rate(n, neighbors, p, args.trials, seed=17, stages=stages) for p in args.p]
        graph = "complete" if neighbors is None else f"SecAgg+ degree {neighbors}"
        print(f"| {n} | {graph} | " + " | ".join(f"{r:.0%}" for r in rates) + " |")


if __name__ == "__main__":
    main()
