"""The built-in demo federation's data: raw demo sources + the demo's frozen encoders + the feature cache.

This module sits above :mod:`geofed_secure.data` and :mod:`geofed_secure.encoders` (neither imports the other, nor
this): it is where the two meet. The runtime never needs it; drivers (the CLI, the audit, scripts) call
:func:`load_demo_modalities` and hand the result to the runtime as plain :class:`~geofed_secure.data.ModalityData`.

For one modality :func:`load_modality`

1. loads the raw source (:func:`geofed_secure.data.sources.load_source`; text and dna are
   SYNTHETIC, image and tabular real);
2. splits it with a seeded per-class draw (:func:`split_indices`): for every digit c, a seeded
   permutation of the class-c samples gives ``anchors_per_class`` PUBLIC anchors, then
   ``eval_per_class`` PUBLIC evaluation anchors; everything else is the PRIVATE part, from which a
   seeded random ``max_pool`` samples form the pool (later partitioned among the modality's
   nodes). The three sets are disjoint by construction;
3. orders anchors and eval anchors BY CONCEPT (labels ``[0]*a + [1]*a + ... + [9]*a``), so anchor j
   is the same digit in every modality;
4. encodes the three sets with the modality's canonical frozen encoder
   (``get_encoder(modality)``, encoder seed 0 -- the stand-in "pretrained" weights are the same
   for every federation seed) through the :class:`FeatureCache`;
5. commits to the raw anchors with :func:`anchor_digest`.

``seed`` controls the synthetic generators and the split, nothing else.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from geofed_secure.config import RunConfig, needed_modalities
from geofed_secure.data.anchors import anchor_digest
from geofed_secure.data.features import TokenFeatures
from geofed_secure.data.modality import ModalityData, SplitIndices
from geofed_secure.data.sources import load_source
from geofed_secure.encoders import MODALITIES, get_encoder
from geofed_secure.encoders.cache import FeatureCache
from geofed_secure.errors import ConfigError, DataError

__all__ = ["N_CONCEPTS", "ModalityData", "SplitIndices", "load_demo_modalities", "load_modality", "split_indices"]

N_CONCEPTS = 10


def _check_int(name: str, value: Any, minimum: int, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(name, f"must be an integer >= {minimum}{' or None' if allow_none else ''}, got {value!r}")


def split_indices(
    labels: np.ndarray,
    *,
    seed: int,
    modality: str,
    anchors_per_class: int = 5,
    eval_per_class: int = 10,
    max_pool: int | None = 2000,
) -> SplitIndices:
    """Seeded split of a source (by its ``labels``) into pool / anchors / eval anchors; see module doc."""
    _check_int("anchors_per_class", anchors_per_class, 1)
    _check_int("eval_per_class", eval_per_class, 1)
    _check_int("max_pool", max_pool, 1, allow_none=True)
    labels = np.asarray(labels)
    rng = np.random.default_rng([int(seed), zlib.crc32(f"geofed-secure/split/{modality}".encode())])
    need = anchors_per_class + eval_per_class + 1
    anchors, evals, private = [], [], []
    for c in range(N_CONCEPTS):
        idx = np.flatnonzero(labels == c)
        if len(idx) < need:
            raise DataError(
                f"{modality}: concept {c} has {len(idx)} samples, need at least {need} "
                f"({anchors_per_class} anchors + {eval_per_class} eval anchors + 1 private)"
            )
        perm = rng.permutation(idx)
        anchors.append(perm[:anchors_per_class])
        evals.append(perm[anchors_per_class : anchors_per_class + eval_per_class])
        private.append(perm[anchors_per_class + eval_per_class :])
    priv = np.concatenate(private)
    if max_pool is not None and len(priv) > max_pool:
        priv = rng.choice(priv, size=int(max_pool), replace=False)
    return SplitIndices(
        pool=np.sort(priv).astype(np.int64),
        anchors=np.concatenate(anchors).astype(np.int64),
        eval_anchors=np.concatenate(evals).astype(np.int64),
    )


def _take(samples: np.ndarray | Sequence[str], index: np.ndarray) -> np.ndarray | list[str]:
    if isinstance(samples, np.ndarray):
        return np.ascontiguousarray(samples[index])
    return [samples[int(i)] for i in index]


def load_modality(
    modality: str,
    *,
    cache: FeatureCache,
    seed: int = 0,
    anchors_per_class: int = 5,
    eval_per_class: int = 10,
    max_pool: int | None = 2000,
    progress: Callable[[str, int, int], None] | None = None,
) -> ModalityData:
    """Load, split, encode (cached) one modality of the demo federation.

    ``progress(modality, done, total)`` counts samples over pool + anchors + eval anchors.
    Unknown modality -> :class:`DataError`; bad sizes -> :class:`ConfigError`.
    """
    if modality not in MODALITIES:
        raise DataError(f"unknown modality {modality!r}; known modalities: {', '.join(MODALITIES)}")
    if not isinstance(cache, FeatureCache):
        raise ConfigError("cache", f"must be a FeatureCache, got {type(cache).__name__}")
    source = load_source(modality, seed=seed)
    split = split_indices(
        source.labels, seed=seed, modality=modality, anchors_per_class=anchors_per_class,
        eval_per_class=eval_per_class, max_pool=max_pool,
    )
    encoder = get_encoder(modality)
    parts = (("pool", split.pool), ("anchors", split.anchors), ("eval_anchors", split.eval_anchors))
    total = sum(len(idx) for _, idx in parts)
    done = 0
    features: dict[str, TokenFeatures] = {}
    digests: dict[str, str] = {}
    for part, idx in parts:
        raw = _take(source.samples, idx)
        labels = np.ascontiguousarray(source.labels[idx], dtype=np.int64)
        digest = anchor_digest(modality, raw, labels)
        offset = done
        report = None if progress is None else (lambda d, _t, _o=offset: progress(modality, _o + d, total))
        tokens, mask = cache.get_or_encode(encoder, raw, data_digest=digest, progress=report)
        features[part] = TokenFeatures(tokens, mask, labels)
        digests[part] = digest
        done += len(idx)
    return ModalityData(
        modality=modality,
        encoder_name=encoder.name,
        synthetic=source.synthetic,
        pool=features["pool"],
        anchors=features["anchors"],
        eval_anchors=features["eval_anchors"],
        anchor_digest=digests["anchors"],
        indices=split,
        description=source.description,
    )


def load_demo_modalities(config: RunConfig, *, progress: Callable[[str, int, int], None] | None = None) -> dict[str, ModalityData]:
    """Encode (or read from the feature cache) every modality the configured nodes need."""
    cache = FeatureCache(config.data.cache_dir or None)
    return {
        m: load_modality(m, cache=cache, seed=config.federation.seed, anchors_per_class=config.data.anchors_per_class,
                         eval_per_class=config.data.eval_per_class, max_pool=config.data.max_pool, progress=progress)
        for m in needed_modalities(config)
    }
