"""Issue 12.4: what a demo node's DP budget buys under replace-one adjacency, before and after the fix.

For every node of a configuration (default: the demo; ``--config examples/dp-recipe.toml`` for the large-batch
recipe) at budget ``--epsilon``: the node's size n and sampling rates (from the demo partition; only the labels
are loaded, no encoder runs), the noise multipliers the add/remove calibration used before this fix (Opacus PRV
accountant, the same two-stage bisection), what that plan spends under replace-one (dp_accounting PLD,
REPLACE_ONE; the weight release as it was then, raw terms in [0, U - 1], i.e. radius U - 1), and the replace-one
calibration now in geofed_secure.privacy (the weight release centred, radius (U - 1) / 2) with what it spends.

    python scripts/dp_adjacency.py --epsilon 3
    python scripts/dp_adjacency.py --epsilon 3 --config examples/dp-recipe.toml
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import warnings

import numpy as np
from opacus.accountants import PRVAccountant

from geofed_secure.config import RunConfig, load_config, needed_modalities
from geofed_secure.data import ModalityData, TokenFeatures, load_source
from geofed_secure.demo import split_indices
from geofed_secure.privacy.accounting import PrivacyPlan, epsilon_of
from geofed_secure.runtime import build_federation


def label_only_modalities(config: RunConfig) -> dict[str, ModalityData]:
    """The demo split with empty one-value tokens: enough for the partition (which uses labels only)."""
    out = {}
    for modality in needed_modalities(config):
        source = load_source(modality, seed=config.federation.seed)
        split = split_indices(source.labels, seed=config.federation.seed, modality=modality,
                              anchors_per_class=config.data.anchors_per_class, eval_per_class=config.data.eval_per_class,
                              max_pool=config.data.max_pool)

        def features(index: np.ndarray, labels: np.ndarray = source.labels) -> TokenFeatures:
            return TokenFeatures(np.zeros((len(index), 1, 1), np.float32), np.ones((len(index), 1), bool),
                                 labels[index].astype(np.int64))

        out[modality] = ModalityData(modality=modality, encoder_name="labels-only", synthetic=source.synthetic,
                                     pool=features(split.pool), anchors=features(split.anchors),
                                     eval_anchors=features(split.eval_anchors), anchor_digest="0" * 64)
    return out


def add_remove_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    accountant = PRVAccountant()
    accountant.history = history
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(accountant.get_epsilon(delta=delta))
        except (ValueError, RuntimeError):
            return math.inf


def add_remove_calibration(plan: PrivacyPlan) -> tuple[float, float]:
    """The calibration geofed used before this fix (Opacus PRV, add/remove): weight first, then DP-SGD."""

    def solve(target: float, history) -> float:
        lo, hi = 0.3, 200.0
        while hi / lo > 1 + 1e-4:
            mid = math.sqrt(lo * hi)
            value = add_remove_epsilon(history(mid), plan.delta)
            if value > target:
                lo = mid
            else:
                hi = mid
                if value >= 0.99 * target:
                    break
        return hi

    weight = solve(plan.weight_budget_share * plan.epsilon, lambda s: [(s, plan.lap_sample_rate, plan.rounds)])
    sgd = solve(plan.epsilon, lambda s: [(s, plan.sample_rate, plan.steps_per_round * plan.rounds),
                                         (weight, plan.lap_sample_rate, plan.rounds)])
    return sgd, weight


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--config", help="TOML run configuration (default: the demo)")
    args = parser.parse_args()
    config = load_config(args.config) if args.config else RunConfig()
    config = config.replace(privacy=dataclasses.replace(config.privacy, epsilon=args.epsilon, accountant="pld"))
    fed = build_federation(config, label_only_modalities(config))
    training, rounds, dp = config.training, config.federation.rounds, config.privacy
    print(f"budget epsilon {args.epsilon:g} at delta {dp.delta:g}; {rounds} rounds x {training.local_steps} steps, "
          f"batch {training.batch_size}, lap_samples {training.lap_samples}")
    print("| node | n | q | q_w | before: sigma, sigma_w (add/remove) | before: replace-one epsilon spent "
          "| after: sigma, sigma_w (replace-one) | after: replace-one epsilon spent |")
    print("|---|---|---|---|---|---|---|---|")
    for node_id, data in fed.nodes.items():
        n = len(data.train)
        plan = PrivacyPlan(epsilon=args.epsilon, delta=dp.delta, accountant="pld", max_grad_norm=dp.max_grad_norm,
                           sample_rate=min(1.0, training.batch_size / n), steps_per_round=training.local_steps,
                           lap_sample_rate=min(1.0, training.lap_samples / n), rounds=rounds,
                           weight_budget_share=dp.weight_budget_share)
        old_sigma, old_weight = add_remove_calibration(plan)
        # Before: the weight's raw terms in [0, U - 1] have radius U - 1 around the unsampled 0 (noise std sigma_w (U - 1)).
        old_spent = epsilon_of(plan.round_history(old_sigma, old_weight) * rounds, dp.delta, "pld")
        sigma, weight = plan.calibrate()
        spent = epsilon_of(plan.round_history(sigma, weight) * rounds, dp.delta, "pld")
        print(f"| {node_id} | {n} | {plan.sample_rate:.3f} | {plan.lap_sample_rate:.3f} | {old_sigma:.3f}, {old_weight:.2f} | "
              f"{old_spent:.2f} | {sigma:.3f}, {weight:.2f} | {spent:.3f} |")


if __name__ == "__main__":
    main()
