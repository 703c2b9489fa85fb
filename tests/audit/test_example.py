"""Example for authors of privacy-attack test suites: assert what an attack achieves, in pytest.

Each node uploads the sum of its records' feature vectors (a stand-in for any summable statistic: prototypes, a Gram,
a model update). The attacked node is trained (here: summed) N times on random halves of its records; the other
runs are the adversary's shadows. `geofed_secure.audit` turns the adversary's view into one AttackResult with
intervals, so an assertion reads like a requirement. What the three tests show: in clear the server identifies
members; secure aggregation hides the individual upload yet a sum of high-dimensional uploads still carries each
record (only tail rates such as TPR at 0.1% FPR stay near zero); noise added on the node (the Gaussian mechanism of
DP) brings the attack to chance:

    python -m pytest tests/audit/test_example.py
"""

from __future__ import annotations

import numpy as np
import pytest

from geofed_secure.audit import AttackResult, lira_vector_scores, membership_result, membership_trials
from geofed_secure.secagg import simulate_aggregation

RUNS, RECORDS, DIM = 24, 200, 1000


@pytest.fixture(scope="module")
def federation():
    rng = np.random.default_rng(0)
    records = rng.normal(size=(RECORDS, DIM))
    membership = np.zeros((RUNS, RECORDS), bool)
    for i in range(RUNS):
        membership[i, rng.permutation(RECORDS)[: RECORDS // 2]] = True
    uploads = membership.astype(float) @ records                     # the attacked node's upload in every run
    others = {f"node-{k}": rng.normal(size=(RECORDS // 2, DIM)).sum(axis=0) for k in range(4)}  # other nodes' uploads
    return membership, uploads, others


def attack(view: np.ndarray, shadows: np.ndarray, membership: np.ndarray, protection: str) -> AttackResult:
    scores = lira_vector_scores(view, membership, shadow_releases=shadows)
    return membership_result(*membership_trials(scores, membership), attack="lira_release", threat_model="hbc-server",
                             target="node-target", seed=0, metadata={"protection": protection})


def test_in_clear_the_server_identifies_members(federation):
    membership, uploads, _ = federation
    result = attack(uploads, uploads, membership, "none")
    assert result.metrics["auc"].low > 0.6


def test_under_masking_tpr_at_low_fpr_is_bounded(federation):
    membership, uploads, others = federation
    # What the server really receives: the sum out of the secagg-v1 protocol, once per run.
    view = np.stack([simulate_aggregation({"node-target": u, **others}, seed=i).aggregate for i, u in enumerate(uploads)])
    result = attack(view, uploads, membership, "masking")  # the server does not know the others' uploads
    assert result.metrics["tpr_at_0.001_fpr"].value <= 0.02
    assert result.metrics["auc"].value < attack(uploads, uploads, membership, "none").metrics["auc"].value


def test_with_gaussian_noise_on_the_node_the_attack_is_at_chance(federation):
    membership, uploads, _ = federation
    rng = np.random.default_rng(1)
    sensitivity = np.sqrt(DIM)  # one record's vector has norm about sqrt(DIM)
    noisy = uploads + rng.normal(0, 5 * sensitivity, size=uploads.shape)
    shadows = uploads + rng.normal(0, 5 * sensitivity, size=uploads.shape)  # the adversary's shadows are noised too
    result = attack(noisy, shadows, membership, "dp")
    assert abs(result.metrics["auc"].value - 0.5) < 0.03
