"""Stable seed derivation.

Every random choice in a run derives from (federation seed, purpose, ...) through SHA-256, never
Python's salted ``hash()``, so two processes, a resumed run and every node agree on the same streams.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed determined by ``seed`` and ``parts`` (stable across processes and platforms).

    >>> derive_seed(0, "lora_A", "encoder.layer.0.attention.self.query") == derive_seed(0, "lora_A", "encoder.layer.0.attention.self.query")
    True
    >>> derive_seed(0, "a") != derive_seed(1, "a")
    True
    """
    text = "\x1f".join([str(int(seed)), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def numpy_rng(seed: int, *parts: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *parts))


def torch_generator(seed: int, *parts: object) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(derive_seed(seed, *parts))
    return gen
