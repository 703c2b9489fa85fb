"""SYNTHETIC STAND-IN for a tabular foundation model: a frozen, seeded periodic-feature encoder.

No tabular foundation model ships usable weights offline, so this encoder is a fixed random
feature map, NOT a pretrained model. For an 8 x 8 digit table (values 0..16, scikit-learn's
``load_digits``) each image ROW becomes one token (8 tokens):

1. every value ``v`` is scaled to ``x = v / 16`` and expanded into periodic features
   ``sin(2 pi f x), cos(2 pi f x)`` for ``n_freq`` seeded frequencies per column
   (log-uniform in [0.25, 4] cycles per unit);
2. the row's 8 x n_freq x 2 features go through a seeded fixed random projection to d = 64
   (Gaussian, variance 2 / fan-in, so outputs have roughly unit variance);
3. a seeded fixed row-position embedding (std 0.5) is added.

Everything is derived from ``seed`` with numpy's PCG64 and computed in float64, then cast to
float32, so equal inputs give bit-identical outputs. Token ``r`` depends only on row ``r`` of
the input (and ``r``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from geofed_secure.encoders.base import BatchedEncoder
from geofed_secure.errors import DataError

__all__ = ["PeriodicTabularEncoder"]

_TAG = 0x7AB1E


class PeriodicTabularEncoder(BatchedEncoder):
    """Digit tables (uint8/float [N,8,8] or [N,64], 0..16) -> 8 tokens (one per row) of d = 64."""

    modality = "tabular"
    batch_size = 512

    def __init__(self, *, seed: int = 0, n_rows: int = 8, n_cols: int = 8, n_freq: int = 8, dim: int = 64,
                 max_value: float = 16.0) -> None:
        super().__init__()
        self.seed = int(seed)
        self.n_rows, self.n_cols, self.n_freq, self.dim = int(n_rows), int(n_cols), int(n_freq), int(dim)
        self.max_value = float(max_value)
        self.seq_len = self.n_rows
        self.name = (f"periodic-tabular-synthetic/seed{self.seed}/{self.n_rows}x{self.n_cols}/"
                     f"f{self.n_freq}/max{self.max_value:g}/d{self.dim}/v1")
        rng = np.random.default_rng([self.seed, _TAG])
        self.freqs = np.exp(rng.uniform(np.log(0.25), np.log(4.0), size=(self.n_cols, self.n_freq)))
        fan_in = self.n_cols * self.n_freq * 2
        self.projection = rng.standard_normal((fan_in, self.dim)) * np.sqrt(2.0 / fan_in)
        self.position = rng.standard_normal((self.n_rows, self.dim)) * 0.5
        for a in (self.freqs, self.projection, self.position):
            a.setflags(write=False)

    def _prepare(self, samples: Any) -> np.ndarray:
        x = np.asarray(samples)
        if x.ndim == 2 and x.shape[1] == self.n_rows * self.n_cols:
            x = x.reshape(-1, self.n_rows, self.n_cols)
        if x.ndim != 3 or x.shape[1:] != (self.n_rows, self.n_cols):
            raise DataError(f"{self.name}: tables must be [N,{self.n_rows},{self.n_cols}] or "
                            f"[N,{self.n_rows * self.n_cols}], got shape {x.shape}")
        if x.dtype.kind not in "uif" or not np.isfinite(x).all():
            raise DataError(f"{self.name}: values must be finite numbers")
        return x

    def _encode_batch(self, state: Any, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = batch.astype(np.float64) / self.max_value                        # [b, R, C]
        angle = 2.0 * np.pi * x[..., None] * self.freqs[None, None]          # [b, R, C, F]
        feats = np.concatenate([np.sin(angle), np.cos(angle)], axis=-1)      # [b, R, C, 2F]
        feats = feats.reshape(batch.shape[0], self.n_rows, -1)               # [b, R, C*2F]
        tokens = np.einsum("brk,kd->brd", feats, self.projection) + self.position[None]
        return tokens.astype(np.float32), np.ones((batch.shape[0], self.n_rows), dtype=np.bool_)
