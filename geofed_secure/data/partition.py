"""Non-IID partitioning of a modality's private pool among that modality's nodes."""

from __future__ import annotations

import math
import numbers

import numpy as np

from geofed_secure.errors import ConfigError, DataError

__all__ = ["MAX_RESAMPLES", "dirichlet_partition"]

MAX_RESAMPLES = 200


def dirichlet_partition(
    labels: np.ndarray,
    n_parts: int,
    alpha: float,
    rng: np.random.Generator,
    *,
    min_size: int = 10,
) -> list[np.ndarray]:
    """Split sample indices ``0..N-1`` into ``n_parts`` label-skewed parts.

    For every class c, the indices of class c are shuffled and cut according to proportions
    drawn from ``Dirichlet(alpha * 1_{n_parts})`` (small ``alpha`` -> each class concentrated on
    few parts; large ``alpha`` -> close to IID). The parts are disjoint and together cover every
    index exactly once; each is returned sorted, as int64.

    If some part ends up with fewer than ``min_size`` samples the whole draw is repeated, at most
    :data:`MAX_RESAMPLES` times, then :class:`DataError` is raised (so is an infeasible request,
    ``n_parts * min_size > N``). ``alpha <= 0`` (or not finite), ``n_parts < 1`` or
    ``min_size < 0`` -> :class:`ConfigError`. ``n_parts == 1`` returns every index.
    """
    if isinstance(n_parts, bool) or not isinstance(n_parts, numbers.Integral) or n_parts < 1:
        raise ConfigError("n_parts", f"must be an integer >= 1, got {n_parts!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha <= 0:
        raise ConfigError("alpha", f"Dirichlet concentration must be a finite number > 0, got {alpha!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, numbers.Integral) or min_size < 0:
        raise ConfigError("min_size", f"must be an integer >= 0, got {min_size!r}")
    if not isinstance(rng, np.random.Generator):
        raise ConfigError("rng", f"must be a numpy.random.Generator, got {type(rng).__name__}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise DataError(f"labels must be a 1-D integer array, got dtype {labels.dtype} shape {labels.shape}")
    n = int(labels.shape[0])
    n_parts = int(n_parts)
    if n_parts * int(min_size) > n:
        raise DataError(
            f"cannot give each of {n_parts} parts at least {min_size} samples: only {n} samples; "
            "lower min_size or the number of nodes"
        )
    if n_parts == 1:
        return [np.arange(n, dtype=np.int64)]

    classes = np.unique(labels)
    by_class = [np.flatnonzero(labels == c) for c in classes]
    smallest = 0
    for _ in range(MAX_RESAMPLES):
        buckets: list[list[np.ndarray]] = [[] for _ in range(n_parts)]
        for idx in by_class:
            idx = rng.permutation(idx)
            props = rng.dirichlet(np.full(n_parts, float(alpha)))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
            for k, piece in enumerate(np.split(idx, cuts)):
                buckets[k].append(piece)
        parts = [np.sort(np.concatenate(b)).astype(np.int64) if b else np.empty(0, np.int64) for b in buckets]
        smallest = min(len(p) for p in parts)
        if smallest >= min_size:
            return parts
    raise DataError(
        f"Dirichlet(alpha={alpha}) partition of {n} samples into {n_parts} parts left a part with "
        f"{smallest} < min_size={min_size} samples after {MAX_RESAMPLES} draws; raise alpha, lower "
        "min_size or use fewer nodes"
    )
