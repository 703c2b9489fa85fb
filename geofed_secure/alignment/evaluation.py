"""Cross-modal evaluation on held-out data (numpy in, float out).

CKA is invariant to rotation, so a perfect CKA does not put two modalities in the same
coordinates; raw cosine between modalities is meaningless. These metrics compare modalities
through the anchors instead:

- :func:`relative_representation`: each sample as its cosines to the B anchors
  (Moschella et al. 2023); anchor j is the same concept in every modality, so these coordinates
  are comparable across modalities.
- :func:`cross_modal_top1`: class agreement of cross-modal nearest neighbours in relative space.
- :func:`mutual_knn`: mutual nearest-neighbour overlap between two representations of the same
  concept slots (Huh et al. 2024).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from geofed_secure.alignment.gram import NORM_EPS, _check_finite, _to_numpy64
from geofed_secure.errors import ConfigError, DataError

__all__ = ["cross_modal_top1", "mutual_knn", "relative_representation"]

#: Rows per block when forming [N, M] similarity matrices, to bound memory.
_CHUNK = 2048


def _matrix(x: Any, name: str) -> np.ndarray:
    arr = _to_numpy64(x, name)
    if arr.ndim != 2:
        raise DataError(f"{name} must be a 2-D array [N, d], got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise DataError(f"{name} is empty (0 rows)")
    _check_finite(arr, name)
    return arr


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, NORM_EPS)


def relative_representation(z: np.ndarray, anchor_z: np.ndarray) -> np.ndarray:
    """Cosines of every sample to every anchor: [N, d], [B, d] -> [N, B] float64.

    ``out[i, j] = cos(z_i, anchor_j)``; a zero row gives cosines 0 (no NaN). Raises
    :class:`DataError` for non-2-D or empty inputs, mismatched d, or NaN/inf values.

    >>> relative_representation(np.array([[1.0, 1.0]]), np.array([[1.0, 0.0], [0.0, 2.0]])).round(4).tolist()
    [[0.7071, 0.7071]]
    """
    zz = _matrix(z, "z")
    aa = _matrix(anchor_z, "anchor_z")
    if zz.shape[1] != aa.shape[1]:
        raise DataError(
            f"relative_representation: samples have dimension {zz.shape[1]} but anchors {aa.shape[1]}"
        )
    return _unit_rows(zz) @ _unit_rows(aa).T


def cross_modal_top1(rel_a: np.ndarray, labels_a: Any, rel_b: np.ndarray, labels_b: Any) -> float:
    """Fraction of samples of modality a whose nearest sample of modality b shares its label.

    ``rel_a`` [Na, B] and ``rel_b`` [Nb, B] are relative representations over the same anchors;
    nearness is cosine similarity in that space (ties go to the lowest index of b). Returns a float
    in [0, 1]; chance level is sum_c P_a(c) P_b(c) (0.1 for 10 balanced classes).
    Raises :class:`DataError` for mismatched anchor counts, label lengths, or NaN/inf values.
    """
    ra = _matrix(rel_a, "rel_a")
    rb = _matrix(rel_b, "rel_b")
    if ra.shape[1] != rb.shape[1]:
        raise DataError(
            f"cross_modal_top1: rel_a has {ra.shape[1]} anchor coordinates but rel_b {rb.shape[1]}"
        )
    la = np.asarray(labels_a).reshape(-1)
    lb = np.asarray(labels_b).reshape(-1)
    if la.shape[0] != ra.shape[0]:
        raise DataError(f"labels_a has {la.shape[0]} entries for {ra.shape[0]} rows of rel_a")
    if lb.shape[0] != rb.shape[0]:
        raise DataError(f"labels_b has {lb.shape[0]} entries for {rb.shape[0]} rows of rel_b")
    ua = _unit_rows(ra)
    ubt = _unit_rows(rb).T
    hits = 0
    for start in range(0, ua.shape[0], _CHUNK):
        nearest = np.argmax(ua[start : start + _CHUNK] @ ubt, axis=1)
        hits += int(np.sum(lb[nearest] == la[start : start + _CHUNK]))
    return hits / ua.shape[0]


def _knn(x: np.ndarray, k: int) -> np.ndarray:
    """Indices [n, k] of each row's k nearest other rows by cosine similarity (self excluded)."""
    u = _unit_rows(x)
    n = u.shape[0]
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, _CHUNK):
        sim = u[start : start + _CHUNK] @ u.T
        rows = np.arange(sim.shape[0])
        sim[rows, start + rows] = -np.inf
        out[start : start + sim.shape[0]] = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    return out


def mutual_knn(z_a: np.ndarray, z_b: np.ndarray, k: int = 10) -> float:
    """Mutual k-nearest-neighbour alignment (Huh et al. 2024).

    Row i of ``z_a`` [n, d_a] and of ``z_b`` [n, d_b] describe the same concept slot (d may
    differ). For each i, take its k nearest other rows (cosine similarity, self excluded) in each
    space; the score is the mean of ``|kNN_a(i) & kNN_b(i)| / k``, in [0, 1]: 1 for identical
    neighbourhoods, about ``k / (n - 1)`` for independent representations. Invariant to rotation
    and isotropic scaling of either side.
    Raises :class:`ConfigError` (field ``k``) if k < 1, :class:`DataError` if the row counts differ,
    n <= k, or values are NaN/inf.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError("k", f"mutual_knn needs an integer k >= 1, got {k!r}")
    k = int(k)
    a = _matrix(z_a, "z_a")
    b = _matrix(z_b, "z_b")
    if a.shape[0] != b.shape[0]:
        raise DataError(f"mutual_knn needs corresponding rows; z_a has {a.shape[0]}, z_b has {b.shape[0]}")
    n = a.shape[0]
    if n <= k:
        raise DataError(f"mutual_knn with k={k} needs more than {k} samples, got {n}")
    na = _knn(a, k)
    nb = _knn(b, k)
    # neighbour lists hold distinct indices, so counting equal pairs counts the intersection
    overlap = int((na[:, :, None] == nb[:, None, :]).sum())
    return overlap / (n * k)
