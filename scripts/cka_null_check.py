"""Uncentred kernel alignment vs centred CKA on FROZEN demo features: real anchor order vs shuffled.

Reproduces the DESIGN.md section 2 correction on this project's own data:
    python scripts/cka_null_check.py [--cache-dir DIR]
For every pair of modalities it forms the cosine Gram of mean-pooled frozen features of the public anchors
(anchor j = same concept in every modality) and compares the pair with the second modality's anchors in
their real order and in 200 random orders (null).
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch

from geofed_secure.alignment.cka import centered_cka, debiased_cka, kernel_alignment
from geofed_secure.alignment.gram import cosine_gram
from geofed_secure.demo import load_modality
from geofed_secure.encoders.cache import FeatureCache


def pooled(features) -> torch.Tensor:
    mask = torch.from_numpy(features.mask).double().unsqueeze(-1)
    return (torch.from_numpy(features.tokens).double() * mask).sum(1) / mask.sum(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    cache = FeatureCache(args.cache_dir)
    grams = {m: cosine_gram(pooled(load_modality(m, cache=cache).anchors)) for m in ("image", "text", "tabular", "dna")}
    rng = np.random.default_rng(0)
    print("| pair | uncentred (real) | uncentred (shuffled, mean) | centred CKA (real) | centred CKA (shuffled, mean) | debiased CKA (real) | debiased (shuffled, mean) |")
    print("|---|---|---|---|---|---|---|")
    for a, b in itertools.combinations(grams, 2):
        ga, gb = grams[a], grams[b]
        perms = [torch.from_numpy(rng.permutation(len(gb))) for _ in range(200)]
        shuffled = [gb[p][:, p] for p in perms]
        row = [
            kernel_alignment(ga, gb), np.mean([kernel_alignment(ga, s) for s in shuffled]),
            float(centered_cka(ga, gb)), np.mean([float(centered_cka(ga, s)) for s in shuffled]),
            debiased_cka(ga.numpy(), gb.numpy()), np.mean([debiased_cka(ga.numpy(), s.numpy()) for s in shuffled]),
        ]
        print(f"| {a}-{b} | " + " | ".join(f"{v:.3f}" for v in row) + " |")


if __name__ == "__main__":
    main()
