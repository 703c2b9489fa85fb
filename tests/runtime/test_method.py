"""Method-level behaviour on the tiny federation: precision weights, bridge nodes, nulls, non-IID splits."""

from __future__ import annotations

import math

import numpy as np
import torch
from conftest import with_sections

from geofed_secure.config import NodeSpec
from geofed_secure.node.node import info_nce
from geofed_secure.runtime.federation import build_federation
from geofed_secure.runtime.simulator import Simulator


def test_degraded_anchor_node_gets_visibly_lower_weight(tiny_config, tiny_modalities, tmp_path):
    nodes = (NodeSpec(id="tab-clean", modality="tabular"), NodeSpec(id="tab-noisy", modality="tabular", anchor_noise=3.0),
             NodeSpec(id="img", modality="image"), NodeSpec(id="txt", modality="text"))
    config = with_sections(tiny_config, nodes=nodes, federation={"rounds": 2})
    result = Simulator(config, tiny_modalities, tmp_path).run()
    weights = {n["id"]: n["weight"] for n in result.summary["nodes"]}
    assert weights["tab-noisy"] < 0.5 * weights["tab-clean"], weights
    for record in result.summary["rounds"]:
        assert record["nodes"]["tab-noisy"]["weight"] < record["nodes"]["tab-clean"]["weight"]


def test_info_nce_matches_reference():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    t = 0.2
    an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    sim = (an @ bn.T / t).tolist()
    ref = 0.0
    for i in range(6):  # explicit -log softmax of the matching pair, both directions
        row = sim[i]
        col = [sim[j][i] for j in range(6)]
        ref += -(row[i] - math.log(sum(math.exp(v) for v in row)))
        ref += -(col[i] - math.log(sum(math.exp(v) for v in col)))
    assert abs(float(info_nce(a, b, t)) - ref / 12) < 1e-5
    assert float(info_nce(a, a, t)) < float(info_nce(a, b, t))


def test_bridge_node_pairs_by_concept_and_trains(tiny_config, tiny_modalities, tmp_path):
    nodes = (NodeSpec(id="bridge", modality="image", paired_modality="text"), NodeSpec(id="txt", modality="text"),
             NodeSpec(id="tab", modality="tabular"))
    config = with_sections(tiny_config, nodes=nodes, federation={"rounds": 1})
    fed = build_federation(config, tiny_modalities)
    bridge = fed.nodes["bridge"]
    assert bridge.paired_train is not None and np.array_equal(bridge.paired_train.labels, bridge.train.labels)
    sim = Simulator(config, tiny_modalities, tmp_path)
    assert sim.nodes["bridge"].model.paired_adapter is not None
    before = sim.nodes["bridge"].model.paired_adapter.proj.weight.detach().clone()
    sim.run()
    assert not torch.equal(before, sim.nodes["bridge"].model.paired_adapter.proj.weight)  # the contrastive loss trains it


def test_shuffled_anchor_null_breaks_concept_order(tiny_config, tiny_modalities, tmp_path):
    config = with_sections(tiny_config, nodes=tuple(
        NodeSpec(id=n.id, modality=n.modality, shuffle_anchors=True) for n in tiny_config.nodes))
    sim = Simulator(config, tiny_modalities, tmp_path)
    original = tiny_modalities["image"].anchors.labels
    shuffled = [sim.nodes[k].anchors.labels for k in ("img-a", "img-b")]
    assert all(sorted(s) == sorted(original) and not np.array_equal(s, original) for s in shuffled)
    assert not np.array_equal(*shuffled)  # node-specific orders


def test_dirichlet_split_gives_non_iid_nodes(tiny_config, tiny_modalities):
    config = with_sections(tiny_config, data={"dirichlet_alpha": 0.1})
    fed = build_federation(config, tiny_modalities)
    a, b = fed.nodes["img-a"].train.labels, fed.nodes["img-b"].train.labels
    ha, hb = np.bincount(a, minlength=10) / len(a), np.bincount(b, minlength=10) / len(b)
    assert 0.5 * np.abs(ha - hb).sum() > 0.3  # total variation distance between the two label mixes
    pool = set(range(len(tiny_modalities["image"].pool)))
    assert len(a) + len(b) + len(fed.nodes["img-a"].test) + len(fed.nodes["img-b"].test) == len(pool)
