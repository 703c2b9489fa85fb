"""Cosine Gram matrices of anchor embeddings and their compact upper-triangle form (eq. 1).

Every node embeds the same public anchor set (B samples, anchor j is the same concept in every
modality) and forms ``G[i, j] = cos(z_i, z_j)``. Only the strict upper triangle (B(B-1)/2 numbers)
needs to leave the node: the diagonal of a cosine Gram is 1 and the matrix is symmetric.

The functions here are pure: they never modify their inputs, and the torch ones are
differentiable in float32 and float64.
"""

from __future__ import annotations

from typing import Any, overload

import numpy as np
import torch

from geofed_secure.errors import DataError

__all__ = ["cosine_gram", "gram_from_upper", "gram_upper"]

#: Floor on a row norm before dividing by it: a zero row gives a zero cosine, never NaN.
NORM_EPS = 1e-12


# ---------------------------------------------------------------------------------------------
# shared input checks (used by the other alignment modules too)
# ---------------------------------------------------------------------------------------------


def _check_finite(x: torch.Tensor | np.ndarray, name: str) -> None:
    """Raise :class:`DataError` if ``x`` holds NaN or inf."""
    ok = bool(torch.isfinite(x).all()) if isinstance(x, torch.Tensor) else bool(np.isfinite(x).all())
    if not ok:
        raise DataError(f"{name} contains NaN or inf values; clean or clip the input before alignment")


def _check_square(g: torch.Tensor | np.ndarray, name: str) -> int:
    """Raise :class:`DataError` unless ``g`` is a square 2-D matrix; return its size."""
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise DataError(f"{name} must be a square 2-D Gram matrix [B, B], got shape {tuple(g.shape)}")
    return int(g.shape[0])


def _as_array(x: Any, name: str) -> torch.Tensor | np.ndarray:
    """Return ``x`` unchanged if it is a tensor, else as a floating numpy array."""
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.to(torch.get_default_dtype())
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise DataError(f"{name} could not be read as an array: {exc}") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise DataError(f"{name} must be numeric, got dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


def _to_numpy64(x: Any, name: str) -> np.ndarray:
    """Return ``x`` (numpy, torch or nested sequence) as a float64 numpy array (detached)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = _as_array(x, name)
    return np.asarray(arr, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------


def cosine_gram(z: torch.Tensor) -> torch.Tensor:
    """Cosine-similarity Gram matrix of the rows of ``z`` (eq. 1 with kappa = cosine).

    ``z``: [B, d] embeddings (float32 or float64). Returns a symmetric [B, B] tensor of the same
    dtype with ``G[i, j] = <z_i, z_j> / (||z_i|| ||z_j||)``, entries in [-1, 1] (up to rounding),
    ones on the diagonal for non-zero rows. A zero row is treated as having norm ``NORM_EPS``: its
    cosines (including its own diagonal entry) are 0, never NaN, and gradients stay finite.
    Differentiable. Raises :class:`DataError` for a non-2-D input or NaN/inf values.

    >>> g = cosine_gram(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]))
    >>> [round(v, 4) for v in g[0].tolist()]
    [1.0, 0.7071, 0.0]
    """
    if not isinstance(z, torch.Tensor):
        raise DataError(f"cosine_gram expects a torch.Tensor [B, d], got {type(z).__name__}")
    if z.ndim != 2:
        raise DataError(f"cosine_gram expects embeddings of shape [B, d], got shape {tuple(z.shape)}")
    if not z.is_floating_point():
        z = z.to(torch.get_default_dtype())
    _check_finite(z, "embeddings passed to cosine_gram")
    zn = torch.nn.functional.normalize(z, p=2.0, dim=1, eps=NORM_EPS)
    return zn @ zn.transpose(0, 1)


@overload
def gram_upper(gram: torch.Tensor) -> torch.Tensor: ...
@overload
def gram_upper(gram: np.ndarray) -> np.ndarray: ...
def gram_upper(gram: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Strict upper triangle of a [B, B] Gram matrix, row-major (i < j), as a 1-D vector.

    Returns the same type as the input (torch tensor -> tensor, differentiable; anything else ->
    numpy array) of length B(B-1)/2: ``[G01, G02, ..., G0(B-1), G12, ...]``. The diagonal is dropped.
    Raises :class:`DataError` for a non-square input or NaN/inf values.

    >>> gram_upper(np.array([[1, 2, 3], [2, 1, 4], [3, 4, 1]])).tolist()
    [2.0, 3.0, 4.0]
    """
    g = _as_array(gram, "gram")
    b = _check_square(g, "gram")
    _check_finite(g, "gram")
    if isinstance(g, torch.Tensor):
        rows, cols = torch.triu_indices(b, b, offset=1, device=g.device)
        return g[rows, cols]
    rows_np, cols_np = np.triu_indices(b, k=1)
    return g[rows_np, cols_np]


@overload
def gram_from_upper(upper: torch.Tensor, size: int) -> torch.Tensor: ...
@overload
def gram_from_upper(upper: np.ndarray, size: int) -> np.ndarray: ...
def gram_from_upper(upper: torch.Tensor | np.ndarray, size: int) -> torch.Tensor | np.ndarray:
    """Rebuild a symmetric [size, size] cosine Gram from its strict upper triangle.

    Inverse of :func:`gram_upper` for cosine Grams: the diagonal is set to 1. Returns the same
    type as ``upper`` (tensor -> tensor, differentiable w.r.t. ``upper``; else numpy).
    Raises :class:`DataError` if ``size < 1``, ``upper`` is not 1-D, its length is not
    ``size * (size - 1) / 2``, or it holds NaN/inf.

    >>> gram_from_upper(np.array([0.5, 0.25, -1.0]), 3).tolist()
    [[1.0, 0.5, 0.25], [0.5, 1.0, -1.0], [0.25, -1.0, 1.0]]
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise DataError(f"gram_from_upper: size must be an int, got {type(size).__name__}")
    size = int(size)
    if size < 1:
        raise DataError(f"gram_from_upper: size must be >= 1, got {size}")
    u = _as_array(upper, "upper")
    if u.ndim != 1:
        raise DataError(f"gram_from_upper expects a 1-D upper triangle, got shape {tuple(u.shape)}")
    expected = size * (size - 1) // 2
    if u.shape[0] != expected:
        raise DataError(
            f"gram_from_upper: an upper triangle of a {size}x{size} Gram has {expected} entries, "
            f"got {u.shape[0]}"
        )
    _check_finite(u, "upper")
    if isinstance(u, torch.Tensor):
        rows, cols = torch.triu_indices(size, size, offset=1, device=u.device)
        out = torch.zeros(size, size, dtype=u.dtype, device=u.device)
        out = out.index_put((rows, cols), u).index_put((cols, rows), u)
        return out + torch.eye(size, dtype=u.dtype, device=u.device)
    rows_np, cols_np = np.triu_indices(size, k=1)
    out_np = np.eye(size, dtype=u.dtype)
    out_np[rows_np, cols_np] = u
    out_np[cols_np, rows_np] = u
    return out_np
