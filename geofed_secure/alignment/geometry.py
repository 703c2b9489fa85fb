"""The scale of a node's anchor geometry: collapse diagnostics, the collapse guard, normalised consensus.

Centred CKA is invariant to the scale of the centred Gram ``H G H``, so a node can reach a low geometric loss
with all its anchor embeddings pointing the same way (every cosine about 1) and a centred structure of
microscopic size: collapse (measured in issue 16: centred Gram norm 10 -> 1e-4, task accuracy at chance).
This module gives the quantities that make collapse visible and preventable:

- :func:`gram_scale`: ``||H G H||_F / B`` of a cosine Gram, in [0, 1]; about 0.1-0.3 on healthy demo nodes, 0 when
  every anchor embedding points the same way;
- :func:`effective_rank`: ``exp(entropy)`` of the normalised eigenvalues of ``H G H`` (Roy and Vetterli 2007);
- :func:`scale_floor_penalty`: the guard added to the geometric loss, ``relu(1 - scale / floor)^2``;
- :func:`normalised_centred_gram`: ``H G H / ||H G H||_F``, what a node uploads so that every node counts equally
  in the consensus (a nearly collapsed node's centred Gram is tiny and would count for nothing in a plain mean);
- :func:`centred_gram_from_upper`: a double-centred matrix rebuilt from its strict upper triangle (its diagonal
  is minus the sum of the other entries of its row), so the upload keeps the B(B-1)/2 shape and stays summable.
"""

from __future__ import annotations

import numpy as np
import torch

from geofed_secure.alignment.cka import center_gram
from geofed_secure.alignment.gram import _check_finite, _check_square, _to_numpy64, gram_from_upper
from geofed_secure.errors import ConfigError

__all__ = [
    "centred_gram_from_upper",
    "effective_rank",
    "gram_scale",
    "normalised_centred_gram",
    "scale_floor_penalty",
]

#: Below this Frobenius norm a centred Gram counts as zero (no direction to normalise, no spectrum).
ZERO_NORM = 1e-12


def gram_scale(gram: torch.Tensor | np.ndarray) -> float:
    """``||H G H||_F / B`` of a [B, B] Gram (float): the size of the anchor geometry that CKA cannot see.

    For a cosine Gram it lies in [0, 1): 0 when every embedding points the same way (collapse).

    >>> gram_scale(np.ones((4, 4)))
    0.0
    >>> round(gram_scale(np.eye(4)), 4)  # orthogonal anchors: H has Frobenius norm sqrt(B - 1)
    0.433
    """
    g = _to_numpy64(gram, "gram")
    size = _check_square(g, "gram")
    _check_finite(g, "gram")
    return float(np.linalg.norm(center_gram(g)) / size)


def effective_rank(gram: torch.Tensor | np.ndarray) -> float:
    """Effective rank of the centred Gram: ``exp(-sum p_i log p_i)`` with ``p`` its normalised non-negative eigenvalues.

    1.0 when the centred anchor embeddings lie on one line, up to B - 1 when they spread evenly; 0.0 for a centred
    Gram of norm below ``ZERO_NORM`` (total collapse: no direction left).

    >>> round(effective_rank(np.eye(5)), 4)  # H has eigenvalues 1 (x4) and 0
    4.0
    """
    g = _to_numpy64(gram, "gram")
    _check_square(g, "gram")
    _check_finite(g, "gram")
    centred = center_gram(g)
    if np.linalg.norm(centred) < ZERO_NORM:
        return 0.0
    eig = np.clip(np.linalg.eigvalsh((centred + centred.T) / 2), 0.0, None)
    p = eig[eig > 0] / eig.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def scale_floor_penalty(gram: torch.Tensor, floor: float) -> torch.Tensor:
    """Collapse guard: ``relu(1 - gram_scale / floor)^2`` as a differentiable 0-d tensor (0 above the floor).

    Its gradient at scale 0 is ``-2 / floor`` (it does not vanish as the node collapses). ``floor <= 0`` turns the
    guard off (returns 0). Raises :class:`ConfigError` (field ``floor``) for a negative or non-finite floor.
    """
    if not np.isfinite(floor) or floor < 0:
        raise ConfigError("floor", f"the Gram scale floor must be a finite number >= 0, got {floor!r}")
    if floor == 0:
        return gram.new_zeros(())
    centred = center_gram(gram)
    assert isinstance(centred, torch.Tensor)
    scale = torch.sqrt((centred * centred).sum() + ZERO_NORM**2) / gram.shape[0]
    return torch.relu(1.0 - scale / floor) ** 2


def normalised_centred_gram(gram: torch.Tensor) -> torch.Tensor:
    """``H G H / ||H G H||_F``: unit Frobenius norm, rows and columns summing to 0 (a zero matrix if G is constant).

    >>> c = normalised_centred_gram(torch.eye(3, dtype=torch.float64))
    >>> round(float(c.norm()), 6), round(float(c.sum(dim=1).abs().max()), 6)
    (1.0, 0.0)
    """
    centred = center_gram(gram)
    assert isinstance(centred, torch.Tensor)
    norm = torch.linalg.matrix_norm(centred)
    return centred / norm if float(norm) >= ZERO_NORM else torch.zeros_like(centred)


def centred_gram_from_upper(upper: torch.Tensor, size: int) -> torch.Tensor:
    """Rebuild a double-centred symmetric [size, size] matrix from its strict upper triangle.

    Every row of a double-centred matrix sums to 0, so its diagonal is minus the sum of the row's other entries;
    the strict upper triangle therefore determines it, and (being linear) the sum of several such triangles
    rebuilds the sum of the matrices. Raises :class:`DataError` like :func:`gram_from_upper`.

    >>> centred_gram_from_upper(torch.tensor([-0.5, -0.5, 0.25], dtype=torch.float64), 3).tolist()
    [[1.0, -0.5, -0.5], [-0.5, 0.25, 0.25], [-0.5, 0.25, 0.25]]
    """
    full = gram_from_upper(upper, size) - torch.eye(size, dtype=upper.dtype)
    return full - torch.diag(full.sum(dim=1))
