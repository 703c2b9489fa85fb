"""The evaluator's leave-one-out consensus, centred cross-modal metrics and own-anchor baseline (issue 16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import with_sections

from geofed_secure.alignment.cka import centered_cka
from geofed_secure.alignment.gram import cosine_gram
from geofed_secure.config import NodeSpec
from geofed_secure.runtime.evaluation import _own_anchor_top1, evaluate, leave_one_out_consensus
from geofed_secure.runtime.simulator import Simulator


def explicit_centred(g: np.ndarray) -> np.ndarray:
    b = g.shape[0]
    h = np.eye(b) - np.ones((b, b)) / b
    return h @ g @ h


def test_leave_one_out_consensus_is_the_others_unit_norm_centred_grams():
    rng = np.random.default_rng(0)
    grams = {k: cosine_gram(torch.from_numpy(rng.normal(size=(9, 3)) * (k + 1) + k)) for k in range(4)}
    loo = leave_one_out_consensus(grams)
    for k in grams:
        expected = sum(explicit_centred(grams[j].numpy()) / np.linalg.norm(explicit_centred(grams[j].numpy()))
                       for j in grams if j != k)
        assert np.allclose(explicit_centred(loo[k].numpy()), expected, atol=1e-12)
    collapsed = {**grams, 9: torch.ones(9, 9, dtype=torch.float64)}  # a totally collapsed node adds nothing
    assert np.allclose(explicit_centred(leave_one_out_consensus(collapsed)[9].numpy()),
                       sum(explicit_centred(g.numpy()) / np.linalg.norm(explicit_centred(g.numpy())) for g in grams.values()))


def test_own_anchor_baseline_classifies_by_the_nearest_anchor_class_block():
    anchor_labels = np.array([0, 0, 1, 1, 2, 2])
    rel = np.array([[0.9, 0.7, 0.1, 0.0, 0.2, 0.1],   # block 0 wins
                    [0.1, 0.2, 0.3, 0.1, 0.8, 0.9],   # block 2 wins
                    [0.5, 0.5, 0.6, 0.6, 0.0, 0.0]])  # block 1 wins
    assert _own_anchor_top1(rel, np.array([0, 2, 0]), anchor_labels) == pytest.approx(2 / 3)


def test_two_node_scores_are_each_against_the_other_only(tiny_config, tiny_modalities, tmp_path):
    config = with_sections(tiny_config, federation={"rounds": 1},
                           nodes=(NodeSpec(id="img", modality="image"), NodeSpec(id="tab", modality="tabular")))
    sim = Simulator(config, tiny_modalities, tmp_path)
    anchors = {m: d.eval_anchors for m, d in tiny_modalities.items()}
    ev = evaluate(sim.nodes, anchors, None, eval_samples=40)
    g = {k: cosine_gram(n.embed(anchors[n.spec.modality]).double()) for k, n in sim.nodes.items()}
    other = float(centered_cka(g["img"], g["tab"]))
    assert ev.nodes["img"].cka_to_consensus == pytest.approx(other, abs=1e-9)
    assert ev.nodes["tab"].cka_to_consensus == pytest.approx(other, abs=1e-9)
    summary = ev.summary()
    for key in ("heldout_cka", "train_anchor_cka", "centroid_cka", "centred_top1", "own_anchor_top1", "min_gram_scale"):
        assert summary[key] is not None and np.isfinite(summary[key]), key
    assert 0.0 <= summary["centred_top1"] <= 1.0 and 0.0 <= summary["own_anchor_top1"] <= 1.0
