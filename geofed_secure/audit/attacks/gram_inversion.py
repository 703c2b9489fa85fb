"""Gram inversion: recover a node's anchor embeddings, up to rotation, from the Gram matrix it shares.

A node shares the cosine Gram G = Z_n Z_n^T of its B anchor embeddings (rows of Z_n unit-normalised). G is
positive semi-definite of rank r <= min(B, d), and G = V L V^T gives X = V_r L_r^(1/2) with X X^T = G: every
embedding matrix with that Gram equals X up to an orthogonal map (Procrustes). So a Gram on B anchors reveals the
node's anchor embeddings exactly up to rotation, the more so the larger B; that is what makes functional
extraction of the node's encoder possible on the anchors (DESIGN.md section 4). The error reported is the
relative Frobenius distance after the best orthogonal alignment.

Since issue 16 a node uploads its CENTRED Gram ``H G H`` at unit Frobenius norm (its strict upper triangle; the
diagonal follows from the zero row sums). That is the Gram of the centred embeddings ``H Z_n``, so the same
inversion recovers them up to rotation; :func:`invert_gram_upper` rescales it to trace B, the trace of a cosine Gram,
so estimates and references keep the scale they had.
"""

from __future__ import annotations

import numpy as np

from geofed_secure.alignment.geometry import centred_gram_from_upper
from geofed_secure.errors import DataError


def invert_gram(gram: np.ndarray, rank: int | None = None) -> np.ndarray:
    """[B, r] embeddings X with X X^T the best rank-``rank`` PSD approximation of ``gram`` (r = numerical rank)."""
    g = np.asarray(gram, np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1] or not np.isfinite(g).all():
        raise DataError(f"invert_gram needs a finite square matrix, got shape {g.shape}")
    values, vectors = np.linalg.eigh((g + g.T) / 2)
    order = np.argsort(values)[::-1]
    values, vectors = np.clip(values[order], 0.0, None), vectors[:, order]
    numerical = int((values > values[0] * 1e-10).sum()) if values[0] > 0 else 0
    r = numerical if rank is None else min(int(rank), len(values))
    if r < 1:
        raise DataError(f"invert_gram: rank must be >= 1 (numerical rank of this Gram: {numerical})")
    return vectors[:, :r] * np.sqrt(values[:r])


def invert_gram_upper(upper: np.ndarray, n_anchors: int, rank: int | None = None) -> np.ndarray:
    """As :func:`invert_gram`, from the strict upper triangle that travels on the wire (a centred Gram, rescaled to
    trace B)."""
    import torch

    centred = centred_gram_from_upper(torch.as_tensor(np.asarray(upper, np.float64)), n_anchors).numpy()
    trace = float(np.trace(centred))
    return invert_gram(centred * (n_anchors / trace) if trace > 0 else centred, rank)


def procrustes_error(estimate: np.ndarray, truth: np.ndarray) -> float:
    """min over orthogonal maps R of ||estimate R - truth||_F / ||truth||_F (widths may differ: zero-padded)."""
    a, b = np.asarray(estimate, np.float64), np.asarray(truth, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise DataError(f"procrustes_error needs [B, *] matrices with the same B, got {a.shape} and {b.shape}")
    width = max(a.shape[1], b.shape[1])
    a = np.pad(a, ((0, 0), (0, width - a.shape[1])))
    b = np.pad(b, ((0, 0), (0, width - b.shape[1])))
    u, _, vt = np.linalg.svd(a.T @ b)
    return float(np.linalg.norm(a @ (u @ vt) - b) / np.linalg.norm(b))
