"""Method-level behaviour on the tiny federation: precision weights, bridge nodes, nulls, non-IID splits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import with_sections

from geofed_secure.config import NodeSpec
from geofed_secure.node.node import NodeCollapsed, info_nce
from geofed_secure.runtime.federation import build_federation
from geofed_secure.runtime.round import SilentReporter
from geofed_secure.runtime.simulator import Simulator
from geofed_secure.wire.round import NodeUpdate


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


def test_upload_is_unit_norm_centred_gram_and_node_trains_against_the_others(tiny_config, tiny_modalities, tmp_path):
    config = with_sections(tiny_config, federation={"rounds": 1})
    result = Simulator(config, tiny_modalities, tmp_path).run()
    b = len(tiny_modalities["image"].anchors)
    uploads = {}
    assert result.transcript is not None
    for _, message in result.transcript.messages(round_=1):
        if isinstance(message, NodeUpdate):
            upper = np.asarray(message.payload["gram_upper"], np.float64)
            full = np.zeros((b, b))
            full[np.triu_indices(b, 1)] = upper
            full = full + full.T
            full[np.diag_indices(b)] = -full.sum(axis=1)  # rows of a centred matrix sum to 0
            uploads[message.node_id] = full
    assert set(uploads) == {n.id for n in config.nodes}
    for node_id, full in uploads.items():
        assert abs(np.linalg.norm(full) - 1.0) < 1e-5, node_id  # every node counts the same in the sum
        z = result.nodes[node_id].embed(result.nodes[node_id].anchors).double().numpy()
        zn = z / np.linalg.norm(z, axis=1, keepdims=True)
        h = np.eye(b) - np.ones((b, b)) / b
        centred = h @ zn @ zn.T @ h
        assert np.allclose(full, centred / np.linalg.norm(centred), atol=1e-5), node_id
    total = sum(uploads.values())
    consensus_sum = total[np.triu_indices(b, 1)]
    for node_id, node in result.nodes.items():
        loo = node.leave_one_out(2, consensus_sum)  # the next round's target: everyone else's uploads
        assert loo is not None
        assert np.allclose(loo.numpy(), total - uploads[node_id], atol=1e-5), node_id
        assert node.leave_one_out(3, consensus_sum) is not None  # it did not upload in round 2: nothing to take out
        assert np.allclose(node.leave_one_out(3, consensus_sum).numpy(), total, atol=1e-5)


def test_collapsed_node_refuses_its_upload_and_the_round_summary_warns(tiny_config, tiny_modalities, tmp_path):
    strict = with_sections(tiny_config, federation={"rounds": 1}, training={"collapse_scale": 0.99})
    sim = Simulator(strict, tiny_modalities, tmp_path / "node")
    node = sim.nodes["txt"]
    before = {k: v.clone() for k, v in node.state_dict().items()}
    with pytest.raises(NodeCollapsed, match="collapsed"):
        node.handle_broadcast(sim.server.begin_round()["txt"])
    assert node.last_round == 0 and all(torch.equal(before[k], v) for k, v in node.state_dict().items())
    local = with_sections(tiny_config, federation={"rounds": 2, "mode": "local-only"}, training={"collapse_scale": 0.99})
    lines: list[str] = []
    reporter = SilentReporter()
    reporter.log = lines.append  # type: ignore[method-assign]
    result = Simulator(local, tiny_modalities, tmp_path / "run", reporter=reporter).run()
    for record in result.summary["rounds"]:
        assert record["collapsed_nodes"] == sorted(n.id for n in local.nodes)
        for node_id, metrics in record["nodes"].items():
            assert metrics["gram_scale"] < 0.99 and metrics["effective_rank"] >= 0, node_id
    assert sum("COLLAPSED" in line for line in lines) == 2 * len(local.nodes)
    healthy = Simulator(with_sections(tiny_config, federation={"rounds": 1}), tiny_modalities, tmp_path / "ok").run()
    assert healthy.summary["rounds"][0]["collapsed_nodes"] == []
