"""Token features: what a frozen encoder hands to the trainable part of a node."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geofed_secure.errors import DataError


@dataclass(frozen=True, slots=True)
class TokenFeatures:
    """A batch of encoded samples.

    tokens: float32 [N, L, d] frozen-encoder output (padded to L tokens);
    mask:   bool [N, L], True where a token is real (at least one per sample);
    labels: int64 [N], the class (concept) of each sample.
    """

    tokens: np.ndarray
    mask: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        validate_features(self, where="TokenFeatures")

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def dim(self) -> int:
        return int(self.tokens.shape[2])

    def subset(self, index: np.ndarray) -> TokenFeatures:
        return TokenFeatures(self.tokens[index], self.mask[index], self.labels[index])


def validate_features(features: TokenFeatures, *, where: str) -> None:
    """Raise :class:`DataError` naming ``where`` if the features are malformed."""
    t, m, y = features.tokens, features.mask, features.labels
    if not isinstance(t, np.ndarray) or t.ndim != 3:
        raise DataError(f"{where}: tokens must be a 3-D array [N, L, d], got shape {getattr(t, 'shape', None)}")
    if t.dtype != np.float32:
        raise DataError(f"{where}: tokens must be float32, got {t.dtype}")
    if not isinstance(m, np.ndarray) or m.shape != t.shape[:2] or m.dtype != np.bool_:
        raise DataError(f"{where}: mask must be a bool array of shape {t.shape[:2]}, got {getattr(m, 'dtype', None)} {getattr(m, 'shape', None)}")
    if not isinstance(y, np.ndarray) or y.shape != (t.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: labels must be an integer array of shape ({t.shape[0]},), got {getattr(y, 'dtype', None)} {getattr(y, 'shape', None)}")
    if t.shape[0] == 0:
        raise DataError(f"{where}: no samples")
    if not np.isfinite(t).all():
        bad = int((~np.isfinite(t)).any(axis=(1, 2)).sum())
        raise DataError(f"{where}: {bad} sample(s) contain NaN or inf features; re-encode or drop them")
    if not m.any(axis=1).all():
        raise DataError(f"{where}: every sample needs at least one unmasked token")


def concat_features(*parts: TokenFeatures) -> TokenFeatures:
    """Rows of ``parts`` one after the other, token axes padded (masked) to the longest."""
    if not parts:
        raise DataError("concat_features needs at least one TokenFeatures")
    length = max(p.tokens.shape[1] for p in parts)
    tokens = [np.pad(p.tokens, ((0, 0), (0, length - p.tokens.shape[1]), (0, 0))) for p in parts]
    masks = [np.pad(p.mask, ((0, 0), (0, length - p.mask.shape[1]))) for p in parts]
    return TokenFeatures(np.concatenate(tokens), np.concatenate(masks), np.concatenate([p.labels for p in parts]))
