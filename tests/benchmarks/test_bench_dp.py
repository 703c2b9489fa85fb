"""DP-SGD local steps against non-private ones on the demo model (MiniLM-L6, rank-8 GeoDoRA on query/value).

One benchmark = one local round's training steps (8 steps, the demo's ``local_steps``; expected batch 32), with the
anchor (CKA) gradient in both, on a demo-sized image node (EfficientNet-Lite0 tokens, 4 x 1280, 400 records).
The private one includes wrapping the model in Opacus's GradSampleModule for the round and removing it after.
Run deliberately: ``python -m pytest tests/benchmarks/test_bench_dp.py -o addopts="" --benchmark-enable``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_bench_round import N_ANCHORS, features

from geofed_secure.alignment.gram import cosine_gram
from geofed_secure.config import NodeSpec, PrivacySection, RunConfig, TrainingSection
from geofed_secure.model.backbone import load_backbone
from geofed_secure.node.node import Node, NodeData

pytestmark = pytest.mark.bench  # benchmarks measure; the default run deselects them (pyproject.toml)

STEPS = 8


def _node(mode: str) -> Node:
    private = mode != "non-private"
    config = RunConfig().replace(training=TrainingSection(local_steps=STEPS),
                                 privacy=PrivacySection(epsilon=8.0 if private else 0.0, accountant="rdp",
                                                        grad_sample_mode=mode if private else "ghost"))
    data = NodeData(train=features(400, 4, 1280, 0), test=features(50, 4, 1280, 1), anchors=features(N_ANCHORS, 4, 1280, 2))
    return Node(NodeSpec(id="bench-image", modality="image"), data, config, anchor_digest="0" * 64,
                backbone_factory=lambda: load_backbone("minilm-l6"))


@pytest.fixture(scope="module")
def consensus():
    return cosine_gram(torch.randn(N_ANCHORS, 64, generator=torch.Generator().manual_seed(0)))


def _steps(node: Node, consensus: torch.Tensor, round_: int):
    node.model.train()
    trainable = [p for p in node.model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=node.config.training.lr)
    if node.privacy is None:
        return node._train_steps(round_, optimizer, trainable, np.random.default_rng(round_), consensus)
    return node._train_steps_private(round_, optimizer, consensus)


@pytest.mark.parametrize("mode", ["non-private", "ghost", "hooks"])
def test_bench_local_steps(benchmark, consensus, mode):
    node = _node(mode)
    counter = iter(range(1, 10**6))
    task_losses, geo_losses = benchmark(lambda: _steps(node, consensus, next(counter)))
    assert len(geo_losses) == STEPS and task_losses
    if mode != "non-private":
        assert node.privacy.steps >= STEPS  # one accountant step per optimizer step
