"""Centred kernel alignment between Gram matrices (eq. 2-3, with the correction of DESIGN.md section 2).

The paper writes CKA(X, Y) = tr(X Y^T) / (||X||_F ||Y||_F) without centring; that is plain
kernel alignment (:func:`kernel_alignment`) and, on cosine Grams, is dominated by the mean
similarity (measured: 0.80 for real and for shuffled anchors). The training loss therefore uses
CENTRED CKA (Kornblith et al. 2019), ``<HKH, HLH>_F / (||HKH||_F ||HLH||_F)`` with
``H = I - 11^T / B``. Centring is linear, so the mean of centred Grams equals the centred mean.
For evaluation, :func:`debiased_cka` uses the unbiased HSIC estimator (Song et al. 2012), which is
near 0 for independent representations where the biased CKA is clearly positive.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from geofed_secure.alignment.gram import _as_array, _check_finite, _check_square, _to_numpy64
from geofed_secure.errors import DataError

__all__ = ["center_gram", "centered_cka", "cka_loss", "debiased_cka", "kernel_alignment"]

#: Floor on a squared Frobenius norm in denominators: a constant (centred-to-zero) Gram gives CKA 0.
SQNORM_EPS = 1e-12


def center_gram(gram: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Double-centre a [B, B] Gram matrix: ``H G H`` with ``H = I - 11^T / B``.

    Computed as ``G - column means - row means + grand mean`` (identical to H G H, O(B^2)).
    Returns the same type as the input (tensor -> differentiable tensor; else numpy).
    Every row and column of the result sums to 0. Raises :class:`DataError` for a non-square input
    or NaN/inf values.

    >>> center_gram(np.array([[2.0, 0.0], [0.0, 2.0]])).tolist()
    [[1.0, -1.0], [-1.0, 1.0]]
    """
    g = _as_array(gram, "gram")
    _check_square(g, "gram")
    _check_finite(g, "gram")
    if isinstance(g, torch.Tensor):
        return g - g.mean(dim=0, keepdim=True) - g.mean(dim=1, keepdim=True) + g.mean()
    return g - g.mean(axis=0, keepdims=True) - g.mean(axis=1, keepdims=True) + g.mean()


def _pair_as_tensors(gram_a: Any, gram_b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    a = gram_a if isinstance(gram_a, torch.Tensor) else torch.as_tensor(_to_numpy64(gram_a, "gram_a"))
    b = gram_b if isinstance(gram_b, torch.Tensor) else torch.as_tensor(_to_numpy64(gram_b, "gram_b"))
    if not a.is_floating_point():
        a = a.to(torch.get_default_dtype())
    if not b.is_floating_point():
        b = b.to(torch.get_default_dtype())
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype), b.to(dtype)
    _check_square(a, "gram_a")
    _check_square(b, "gram_b")
    if a.shape != b.shape:
        raise DataError(
            f"CKA needs two Grams over the same anchors; got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return a, b


def centered_cka(gram_a: torch.Tensor, gram_b: torch.Tensor) -> torch.Tensor:
    """Centred kernel alignment ``<HKH, HLH>_F / (||HKH||_F ||HLH||_F)`` (biased HSIC form).

    Both inputs are [B, B] Grams over the same anchors (in the same order). Returns a 0-d tensor
    in the promoted dtype of the inputs, differentiable w.r.t. both. For positive semi-definite
    Grams (e.g. cosine Grams) the value lies in [0, 1]; it is 1 when the centred Grams are
    proportional, and it is invariant to orthogonal rotation and isotropic scaling of the
    underlying features and to adding a constant to every Gram entry. Each squared norm in the
    denominator is floored at ``SQNORM_EPS``, so a constant Gram gives 0 instead of NaN.
    Raises :class:`DataError` for shape mismatch or NaN/inf values. Numpy inputs are accepted
    (converted to float64 tensors).

    >>> k = torch.tensor([[1.0, 0.2, 0.1], [0.2, 1.0, 0.3], [0.1, 0.3, 1.0]])
    >>> round(float(centered_cka(k, 3 * k + 5)), 6)
    1.0
    """
    a, b = _pair_as_tensors(gram_a, gram_b)
    ka = center_gram(a)
    kb = center_gram(b)
    num = (ka * kb).sum()
    den = torch.sqrt(torch.clamp_min((ka * ka).sum(), SQNORM_EPS)) * torch.sqrt(
        torch.clamp_min((kb * kb).sum(), SQNORM_EPS)
    )
    return num / den


def cka_loss(gram: torch.Tensor, consensus: torch.Tensor) -> torch.Tensor:
    """Geometric regulariser of eq. 3 with centred CKA: ``1 - centered_cka(gram, consensus)``.

    ``gram`` is the node's anchor Gram (carrying gradients), ``consensus`` the broadcast mean Gram
    (detach it yourself if it must not receive gradients). Returns a 0-d differentiable tensor,
    in [0, 1] for PSD Grams, 0 when the node's centred Gram is proportional to the consensus.
    """
    return 1.0 - centered_cka(gram, consensus)


def _unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """Unbiased HSIC_1 of Song et al. 2012 (eq. 5 there), vectorised; inputs float64 [n, n]."""
    n = k.shape[0]
    kt = k.copy()
    lt = l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    trace_term = float(np.sum(kt * lt.T))  # tr(K~ L~)
    sum_term = float(kt.sum() * lt.sum()) / ((n - 1) * (n - 2))  # 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2))
    cross_term = 2.0 / (n - 2) * float(kt.sum(axis=0) @ lt.sum(axis=1))  # 2/(n-2) 1^T K~ L~ 1
    return (trace_term + sum_term - cross_term) / (n * (n - 3))


def debiased_cka(gram_a: np.ndarray, gram_b: np.ndarray) -> float:
    """CKA from the unbiased HSIC estimator (Song et al. 2012), for evaluation only.

    ``HSIC_1(K, L) = [tr(K~L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3))``
    with K~, L~ the Grams with zeroed diagonals, and
    ``CKA = HSIC_1(K, L) / sqrt(HSIC_1(K, K) HSIC_1(L, L))``.
    Unlike :func:`centered_cka` it is close to 0 for independent representations, and it can be
    slightly negative. Computed in float64 (torch inputs are detached). Returns 0.0 when either
    self-HSIC is not positive (e.g. a constant Gram), where CKA is undefined.
    Raises :class:`DataError` if B < 4, shapes differ, or values are NaN/inf.
    """
    k = _to_numpy64(gram_a, "gram_a")
    l = _to_numpy64(gram_b, "gram_b")
    n = _check_square(k, "gram_a")
    _check_square(l, "gram_b")
    if k.shape != l.shape:
        raise DataError(f"debiased_cka needs Grams of equal shape, got {k.shape} and {l.shape}")
    if n < 4:
        raise DataError(f"debiased_cka needs at least 4 anchors (the estimator divides by n-3), got {n}")
    _check_finite(k, "gram_a")
    _check_finite(l, "gram_b")
    hkk = _unbiased_hsic(k, k)
    hll = _unbiased_hsic(l, l)
    if not (hkk > 0.0 and hll > 0.0):
        return 0.0
    return float(_unbiased_hsic(k, l) / np.sqrt(hkk * hll))


def kernel_alignment(gram_a: Any, gram_b: Any) -> float:
    """Uncentred kernel alignment ``tr(K L^T) / (||K||_F ||L||_F)`` -- the paper's eq. 2 as written.

    Kept only as a documented reference: it is NOT invariant to a mean shift of the features or a
    constant offset of the Gram, and on cosine Grams it is dominated by the mean similarity (it
    scored real and shuffled anchors alike in measurement). Use :func:`centered_cka` for training.
    Accepts numpy or torch (detached), computes in float64; returns 0.0 if either Gram is all zero.
    Raises :class:`DataError` for non-square or mismatched shapes or NaN/inf values.

    >>> kernel_alignment(np.eye(3), np.eye(3) + 1.0) > 0.5
    True
    """
    k = _to_numpy64(gram_a, "gram_a")
    l = _to_numpy64(gram_b, "gram_b")
    _check_square(k, "gram_a")
    _check_square(l, "gram_b")
    if k.shape != l.shape:
        raise DataError(f"kernel_alignment needs Grams of equal shape, got {k.shape} and {l.shape}")
    _check_finite(k, "gram_a")
    _check_finite(l, "gram_b")
    den = float(np.linalg.norm(k) * np.linalg.norm(l))
    if den <= 0.0:
        return 0.0
    return float(np.sum(k * l) / den)
