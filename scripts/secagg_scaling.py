"""Scaling table of one secagg-v1 round (key set-up included), in process, for docs/evidence.md.

    python scripts/secagg_scaling.py [--ns 10,30,100,300,1000] [--ds 10000,100000,1000000] [--max-cells 3.5e8]

SecAgg+ neighbourhoods of degree 2*ceil(log2 n) (the complete graph when that is >= n - 1), threshold = majority
of share holders, 32-bit ring, clip 8. Prints seconds for the whole round (all parties, one core, sequential)
and the bytes one node sends, as a Markdown table, then the exponent b of a least-squares fit seconds ~ n^b per
column (over the n >= 30 measured, where the SecAgg+ graph is sparse). Runs with n * d above ``--max-cells`` are
skipped (the in-process transcript keeps every masked vector: n = 1000, d = 1e6 would hold 4 GB).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from geofed_secure.secagg import simulate_aggregation


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ns", default="10,30,100,300,1000")
    parser.add_argument("--ds", default="10000,100000,1000000")
    parser.add_argument("--max-cells", type=float, default=3.5e8)
    args = parser.parse_args()
    ns = [int(x) for x in args.ns.split(",")]
    ds = [int(x) for x in args.ds.split(",")]
    print("| n | degree | " + " | ".join(f"d = {d:.0e}: s, bytes/node" for d in ds) + " |")
    print("|---|---|" + "---|" * len(ds))
    seconds_of: dict[int, dict[int, float]] = {d: {} for d in ds}
    for n in ns:
        degree = 2 * math.ceil(math.log2(n))
        row = []
        for d in ds:
            if n * d > args.max_cells:
                row.append("-")
                continue
            rng = np.random.default_rng(n * d)
            inputs = {f"node-{i:04d}": rng.uniform(-1, 1, d).astype(np.float32) for i in range(n)}
            t0 = time.perf_counter()
            result = simulate_aggregation(inputs, ring_bits=32, clip=8.0, neighbors=degree if degree < n - 1 else None)
            seconds = time.perf_counter() - t0
            error = float(np.abs(result.aggregate - np.sum([v.astype(np.float64) for v in inputs.values()], axis=0)).max())
            assert error <= result.max_abs_error, (n, d, error)
            row.append(f"{seconds:.2f}, {result.bytes_sent['node-0000']:,}")
            seconds_of[d][n] = seconds
            del inputs, result
        print(f"| {n} | {degree if degree < n - 1 else 'complete'} | " + " | ".join(row) + " |", flush=True)
    exponents = []
    for d in ds:
        points = [(math.log(n), math.log(t)) for n, t in seconds_of[d].items() if n >= 30]
        exponents.append(f"{np.polyfit(*zip(*points), 1)[0]:.2f}" if len(points) >= 2 else "-")
    print("| fitted exponent b (seconds ~ n^b, n >= 30) | | " + " | ".join(exponents) + " |")


if __name__ == "__main__":
    main()
