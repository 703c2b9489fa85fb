"""Benchmarks at demo sizes (MiniLM-L6 backbone, rank 8 GeoDoRA on query/value, B = 50 anchors).

Run deliberately: ``python -m pytest tests/benchmarks --benchmark-enable``. In the default test run they execute
once (``--benchmark-disable``) so they cannot rot.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geofed_secure.alignment.gram import cosine_gram
from geofed_secure.config import NodeSpec, RunConfig
from geofed_secure.data.features import TokenFeatures
from geofed_secure.model.backbone import load_backbone
from geofed_secure.node.node import Node, NodeData
from geofed_secure.server.server import Server
from geofed_secure.wire.round import NodeUpdate

pytestmark = pytest.mark.bench  # benchmarks measure; the default run deselects them (pyproject.toml)

N_ANCHORS = 50


def features(n: int, tokens: int, dim: int, seed: int) -> TokenFeatures:
    rng = np.random.default_rng(seed)
    return TokenFeatures(rng.normal(size=(n, tokens, dim)).astype(np.float32), np.ones((n, tokens), bool),
                         (np.arange(n) % 10).astype(np.int64))


@pytest.fixture(scope="module")
def image_node():
    """A demo-sized image node: EfficientNet-Lite0 tokens (4 x 1280)."""
    config = RunConfig()
    config = config.replace(training=config.training.__class__(local_steps=1, lap_samples=256))
    data = NodeData(train=features(400, 4, 1280, 0), test=features(50, 4, 1280, 1), anchors=features(N_ANCHORS, 4, 1280, 2))
    return Node(NodeSpec(id="bench-image", modality="image"), data, config, anchor_digest="0" * 64,
                backbone_factory=lambda: load_backbone("minilm-l6"))


def test_bench_local_step_with_alignment(benchmark, image_node):
    """One local round of ONE step (task batch 32 + anchor pass + CKA gradient) plus building the upload."""
    consensus = cosine_gram(torch.randn(N_ANCHORS, 64, generator=torch.Generator().manual_seed(0)))
    counter = iter(range(1, 10**6))
    payload = benchmark(lambda: image_node.local_round(next(counter), consensus=consensus))
    assert "gram_upper" in payload and image_node.last_stats.geo_loss is not None


def test_bench_aggregation_five_nodes(benchmark, image_node):
    """Server aggregation of five demo-sized uploads (precision-weighted B mean + Gram consensus)."""
    from geofed_secure.model import geodora

    shared = image_node.shared_keys()
    global_state = {k: v.numpy() for k, v in geodora.get_lora_b(image_node.model.backbone).items()}
    assert set(global_state) == set(shared)
    rng = np.random.default_rng(0)
    uploads = [
        NodeUpdate(federation_id="bench", round=1, node_id=f"n{i}", anchor_digest="0" * 64,
                   payload={**{f"weighted/{k}": rng.normal(size=v.shape).astype(np.float32) for k, v in global_state.items()},
                            "gram_upper": rng.uniform(-1, 1, N_ANCHORS * (N_ANCHORS - 1) // 2).astype(np.float32),
                            "precision_weight": np.array([1.0 + i], np.float32)})
        for i in range(5)
    ]

    def one_round():
        server = Server(federation_id="bench", anchor_digest="0" * 64, node_ids=tuple(u.node_id for u in uploads),
                        global_state=global_state)
        server.begin_round()
        for upload in uploads:
            server.receive(upload)
        return server.finish_round()

    result = benchmark(one_round)
    assert len(result.contributors) == 5
