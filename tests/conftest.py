"""Shared fixtures: a tiny local Hugging Face checkpoint and small synthetic modality data.

The tiny checkpoint proves that any local checkpoint directory works as the shared transformer and keeps
the integration tests fast; the demo's real encoders and MiniLM are exercised in their own tests.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from geofed_secure.config import DataSection, FederationSection, ModelSection, NodeSpec, RunConfig, SecureSection, TrainingSection
from geofed_secure.data import ModalityData
from geofed_secure.data.anchors import anchor_digest
from geofed_secure.data.features import TokenFeatures

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory):
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32)
    BertModel(config).save_pretrained(path)
    return path


def synthetic_modality(modality: str, *, dim: int, tokens: int, seed: int, n_pool: int = 240,
                       anchors_per_class: int = 2, eval_per_class: int = 3, n_classes: int = 10,
                       signal: float = 2.0) -> ModalityData:
    """Class-structured Gaussian tokens: class c has mean mu_c (per modality), plus noise."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_classes, tokens, dim)).astype(np.float32) * signal

    def draw(labels: np.ndarray) -> TokenFeatures:
        x = means[labels] + rng.normal(size=(len(labels), tokens, dim)).astype(np.float32)
        mask = np.ones((len(labels), tokens), dtype=bool)
        return TokenFeatures(x.astype(np.float32), mask, labels.astype(np.int64))

    pool = draw(rng.integers(0, n_classes, size=n_pool))
    anchors = draw(np.repeat(np.arange(n_classes), anchors_per_class))
    eval_anchors = draw(np.repeat(np.arange(n_classes), eval_per_class))
    return ModalityData(modality=modality, encoder_name=f"synthetic-{modality}", synthetic=True, pool=pool,
                        anchors=anchors, eval_anchors=eval_anchors,
                        anchor_digest=anchor_digest(modality, anchors.tokens, anchors.labels))


@pytest.fixture(scope="session")
def tiny_modalities():
    return {
        "image": synthetic_modality("image", dim=12, tokens=4, seed=1),
        "text": synthetic_modality("text", dim=8, tokens=6, seed=2),
        "tabular": synthetic_modality("tabular", dim=6, tokens=3, seed=3),
    }


@pytest.fixture(scope="session")
def tiny_config(tiny_backbone_dir):
    return RunConfig(
        federation=FederationSection(id="test-fed", seed=7, rounds=3),
        model=ModelSection(backbone=str(tiny_backbone_dir), rank=2, target_modules=("query", "value")),
        training=TrainingSection(local_steps=3, batch_size=16, lr=5e-3, lap_samples=64),
        data=DataSection(eval_samples=40, max_pool=240, dirichlet_alpha=1.0),
        nodes=(NodeSpec(id="img-a", modality="image"), NodeSpec(id="img-b", modality="image"),
               NodeSpec(id="txt", modality="text"), NodeSpec(id="tab", modality="tabular")),
        # Plaintext uploads so the runtime tests can inspect them; tests/runtime/test_secure_runtime.py covers masking and CKKS.
        secure=SecureSection(protocol="none"),
    )


@pytest.fixture(scope="session")
def recorded_runs(tiny_config, tiny_modalities, tmp_path_factory):
    """Two finished 2-round runs of the tiny federation, same seed: in clear ("none") and under "masking"."""
    from geofed_secure.runtime import Simulator

    out = {}
    for protocol in ("none", "masking"):
        config = with_sections(tiny_config, federation={"rounds": 2}, secure={"protocol": protocol})
        path = tmp_path_factory.mktemp(f"run-{protocol}")
        Simulator(config, tiny_modalities, path, secure_seed=3).run()
        out[protocol] = path
    return out


def with_sections(config: RunConfig, **changes) -> RunConfig:
    """Replace fields inside sections: with_sections(cfg, training={"lambda_geo": 0.0})."""
    sections = {name: dataclasses.replace(getattr(config, name), **fields) for name, fields in changes.items()
                if name != "nodes"}
    if "nodes" in changes:
        sections["nodes"] = changes["nodes"]
    return config.replace(**sections)
