"""Latent anchor-proximity (LAP) uncertainty and precision weights (eq. 6).

``u(x) = (1 - max_j cos(z_x, z_anchor_j)) / 2`` reuses the anchor embeddings of the geometric
loss. A node's weight is the mean of ``1 / u`` over its samples; ``1 / u`` is unbounded (u = 0
when a sample sits on an anchor), so it is clipped to ``[1, max_inverse]`` (DESIGN.md section 2).

Note: ``p_k`` is a statistic of PRIVATE data; it must travel under secure aggregation (and DP
noise where configured), never in clear.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from geofed_secure.alignment.gram import NORM_EPS, _check_finite, _to_numpy64
from geofed_secure.errors import ConfigError, DataError

__all__ = ["centred_lap_uncertainty", "clipped_inverse", "lap_uncertainty", "normalise_weights", "precision_weight"]


def lap_uncertainty(z: torch.Tensor, anchor_z: torch.Tensor) -> torch.Tensor:
    """Per-sample LAP uncertainty (eq. 6): ``u_i = (1 - max_j cos(z_i, a_j)) / 2``.

    ``z``: [N, d] sample embeddings, ``anchor_z``: [B, d] anchor embeddings of the same node
    (same d, B >= 1). Returns an [N] tensor in the promoted dtype, clamped to [0, 1]: 0 for a
    sample pointing exactly at an anchor, 1 for one opposite to every anchor. A zero row (sample
    or anchor) has cosine 0 with everything (eps-safe, no NaN). Differentiable w.r.t. both inputs
    (through the arg-max anchor). Raises :class:`DataError` for bad shapes or NaN/inf values.

    >>> lap_uncertainty(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), torch.tensor([[2.0, 0.0]])).tolist()
    [0.0, 1.0]
    """
    if not isinstance(z, torch.Tensor) or not isinstance(anchor_z, torch.Tensor):
        raise DataError("lap_uncertainty expects torch tensors z [N, d] and anchor_z [B, d]")
    if z.ndim != 2 or anchor_z.ndim != 2:
        raise DataError(
            f"lap_uncertainty expects z [N, d] and anchor_z [B, d], got shapes "
            f"{tuple(z.shape)} and {tuple(anchor_z.shape)}"
        )
    if z.shape[1] != anchor_z.shape[1]:
        raise DataError(
            f"lap_uncertainty: samples have dimension {z.shape[1]} but anchors {anchor_z.shape[1]}; "
            "embed both with the same node model"
        )
    if anchor_z.shape[0] < 1:
        raise DataError("lap_uncertainty needs at least one anchor embedding")
    dtype = torch.promote_types(
        z.dtype if z.is_floating_point() else torch.get_default_dtype(),
        anchor_z.dtype if anchor_z.is_floating_point() else torch.get_default_dtype(),
    )
    z, anchor_z = z.to(dtype), anchor_z.to(dtype)
    _check_finite(z, "sample embeddings z")
    _check_finite(anchor_z, "anchor embeddings anchor_z")
    zn = torch.nn.functional.normalize(z, p=2.0, dim=1, eps=NORM_EPS)
    an = torch.nn.functional.normalize(anchor_z, p=2.0, dim=1, eps=NORM_EPS)
    best = (zn @ an.transpose(0, 1)).max(dim=1).values
    return torch.clamp((1.0 - best) / 2.0, 0.0, 1.0)


def centred_lap_uncertainty(z: torch.Tensor, anchor_z: torch.Tensor) -> torch.Tensor:
    """LAP uncertainty (eq. 6) on embeddings centred by the mean anchor embedding (the correction of issue 16).

    On raw cosines an anisotropic or collapsed node (every embedding pointing the same way) has every sample close
    to some anchor, so eq. 6 gives it the LARGEST weight (measured: 0.78 vs 0.25-0.30 for healthy nodes). After
    subtracting the anchor mean, what remains is the node's class structure: a sample near an anchor of that
    structure keeps a low uncertainty, one whose residual is off the anchors' structure gets a high one. Same
    shapes, range and errors as :func:`lap_uncertainty`.

    >>> anchors = torch.tensor([[10.0, 1.0, 0.0], [10.0, -1.0, 0.0]])
    >>> sample = torch.tensor([[10.0, 0.0, 1.0]])  # off the anchors' structure, but every cosine is about 1
    >>> round(lap_uncertainty(sample, anchors).item(), 3), round(centred_lap_uncertainty(sample, anchors).item(), 3)
    (0.005, 0.5)
    """
    if (not isinstance(z, torch.Tensor) or not isinstance(anchor_z, torch.Tensor) or z.ndim != 2 or anchor_z.ndim != 2
            or z.shape[1] != anchor_z.shape[1] or anchor_z.shape[0] < 1):
        return lap_uncertainty(z, anchor_z)  # raises the same typed error for the same bad input
    centre = anchor_z.mean(dim=0, keepdim=True)
    return lap_uncertainty(z - centre.to(z.dtype), anchor_z - centre)


def precision_weight(uncertainty: Any, *, max_inverse: float = 100.0) -> float:
    """Un-normalised node weight: mean over samples of ``clip(1 / u, 1, max_inverse)``.

    ``uncertainty``: 1-D values in [0, 1] (tensor, array or sequence), e.g. from
    :func:`lap_uncertainty`. A sample with ``u == 0`` counts as ``max_inverse`` (never inf), so the
    result lies in ``[1, max_inverse]``; samples far from the anchors (large u) lower it.
    Raises :class:`ConfigError` (field ``max_inverse``) if ``max_inverse`` is not a finite number
    >= 1, and :class:`DataError` for an empty input, NaN/inf, or values outside [0, 1].

    >>> precision_weight([0.5, 0.0], max_inverse=10.0)
    6.0
    """
    try:
        cap = float(max_inverse)
    except (TypeError, ValueError):
        raise ConfigError("max_inverse", f"must be a number >= 1, got {max_inverse!r}") from None
    if not math.isfinite(cap) or cap < 1.0:
        raise ConfigError("max_inverse", f"must be a finite number >= 1 (clip range [1, U_max]), got {max_inverse!r}")
    u = _to_numpy64(uncertainty, "uncertainty").reshape(-1)
    if u.size == 0:
        raise DataError("precision_weight needs at least one uncertainty value, got none")
    _check_finite(u, "uncertainty")
    if u.min() < 0.0 or u.max() > 1.0:
        raise DataError(
            f"LAP uncertainties must lie in [0, 1], got range [{u.min():.6g}, {u.max():.6g}]"
        )
    return float(clipped_inverse(u, cap).mean())


def clipped_inverse(u: np.ndarray, cap: float) -> np.ndarray:
    """Per-sample ``clip(1 / u, 1, cap)`` (``u == 0`` -> ``cap``): each sample's bounded share of the weight.

    >>> clipped_inverse(np.array([0.5, 0.0, 1.0]), 10.0).tolist()
    [2.0, 10.0, 1.0]
    """
    inv = np.full_like(np.asarray(u, np.float64), cap)
    np.divide(1.0, u, out=inv, where=u > 0.0)
    return np.clip(inv, 1.0, cap)


def normalise_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Scale node weights to sum to 1, keeping the mapping's key order.

    Every weight must be a finite number > 0; otherwise :class:`DataError` names the node.
    An empty mapping is a :class:`DataError` too. Robust to very large weights (scaled by the
    maximum before summing).

    >>> normalise_weights({"a": 1.0, "b": 3.0})
    {'a': 0.25, 'b': 0.75}
    """
    if not weights:
        raise DataError("normalise_weights needs at least one node weight, got none")
    values: dict[str, float] = {}
    for node, w in weights.items():
        try:
            if isinstance(w, bool):
                raise TypeError
            v = float(w)
        except (TypeError, ValueError):
            raise DataError(f"weight of node '{node}' is not a number: {w!r}") from None
        if not math.isfinite(v):
            raise DataError(f"weight of node '{node}' is not finite: {w!r}")
        if v <= 0.0:
            raise DataError(f"weight of node '{node}' must be > 0, got {v!r}")
        values[node] = v
    top = max(values.values())
    scaled = {node: v / top for node, v in values.items()}
    total = math.fsum(scaled.values())
    return {node: v / total for node, v in scaled.items()}
