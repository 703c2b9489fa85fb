"""Time of each audit attack at the default plan's sizes (12 runs, the image node's 816-record pool, 10 classes,
384-d embeddings, a 36,864-coordinate B update, 150 public samples), on synthetic arrays of those shapes.

    python -m pytest tests/benchmarks/test_bench_audit.py -o addopts="" --benchmark-enable

Training the experiment dominates a real audit (see README, Audit); these are the attack costs on top.
"""

from __future__ import annotations

import numpy as np
import pytest

from geofed_secure.audit.attacks import membership as mia
from geofed_secure.audit.attacks.extraction import extraction_metrics, fit_extraction, unit_rows
from geofed_secure.audit.attacks.gram_inversion import invert_gram
from geofed_secure.audit.attacks.prototypes import prototype_statistic
from geofed_secure.audit.metrics import membership_result

pytestmark = pytest.mark.bench  # benchmarks measure; the default run deselects them (pyproject.toml)

RUNS, POOL, CLASSES, DIM, UPDATE, PUBLIC, POPULATION = 12, 816, 10, 384, 36_864, 150, 100


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    membership = np.zeros((RUNS, POOL), bool)
    for i in range(RUNS):
        membership[i, rng.permutation(POOL)[: POOL // 2]] = True
    return {"membership": membership, "stats": rng.normal(size=(RUNS, POOL)),
            "update": rng.normal(size=(RUNS, UPDATE)), "logits": rng.normal(size=(RUNS, POOL, CLASSES)),
            "population": rng.random((RUNS, POPULATION)), "labels": rng.integers(0, CLASSES, POOL),
            "e0": unit_rows(rng.normal(size=(POOL, DIM))), "prototypes": rng.normal(size=(CLASSES, DIM)),
            "public": unit_rows(rng.normal(size=(PUBLIC, DIM))), "node": unit_rows(rng.normal(size=(PUBLIC, DIM)))}


def test_bench_lira_scalar(benchmark, arrays):
    benchmark(mia.lira_scores, arrays["stats"], arrays["membership"])


def test_bench_lira_on_the_b_update(benchmark, arrays):
    benchmark(mia.lira_vector_scores, arrays["update"], arrays["membership"])


def test_bench_rmia(benchmark, arrays):
    probs = np.stack([mia.true_label_probability(arrays["logits"][i], arrays["labels"]) for i in range(RUNS)])
    benchmark(mia.rmia_scores, probs, arrays["population"])


def test_bench_membership_metrics_with_200_bootstraps(benchmark, arrays):
    members, others = mia.trials(arrays["stats"], arrays["membership"])
    benchmark(membership_result, members, others, attack="b", threat_model="b", target="b", seed=0, bootstrap=200)


def test_bench_prototype_statistic_all_runs(benchmark, arrays):
    benchmark(lambda: [prototype_statistic(arrays["prototypes"], arrays["e0"], arrays["labels"]) for _ in range(RUNS)])


def test_bench_extraction_from_a_gram_b50(benchmark, arrays):
    index, held = np.arange(50), np.arange(50, PUBLIC)
    node = arrays["node"]

    def extract():
        released = invert_gram(node[index] @ node[index].T)
        predicted, aligned = fit_extraction(arrays["public"][index], released, arrays["public"][held])
        return extraction_metrics(predicted, aligned, node[held], node[index], np.arange(50) % CLASSES)

    benchmark(extract)
