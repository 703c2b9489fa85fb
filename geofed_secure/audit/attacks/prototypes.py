"""Prototype leakage: what FedProto-style class prototypes of PRIVATE data reveal (the baseline the paper compares to).

A prototype release is the per-class mean of a node's unit-normalised embeddings of its private training records
([C, d]; a class the node does not hold is a zero row, which alone reveals its label distribution). The adversary
embeds candidates with the public model ``e0`` (it cannot run the node's private adapter):

- membership statistic (:func:`prototype_statistic`): cosine between ``e0(x)`` and the released prototype of x's
  class; a training record pulls its class mean towards itself. Scored raw (threshold) or through LiRA;
- attribute (label) inference (:func:`label_inference_accuracy`): labels of the node's records guessed as the class
  of the nearest released prototype, against the public baseline of the nearest public-anchor class centroid.
"""

from __future__ import annotations

import numpy as np

from geofed_secure.audit.attacks.extraction import unit_rows
from geofed_secure.errors import DataError


def class_prototypes(embeddings: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """[C, d] per-class means of unit-normalised embeddings (zero rows for absent classes)."""
    z, y = unit_rows(embeddings), np.asarray(labels, np.int64)
    out = np.zeros((n_classes, z.shape[1]))
    for c in range(n_classes):
        if (y == c).any():
            out[c] = z[y == c].mean(axis=0)
    return out


def prototype_statistic(prototypes: np.ndarray, candidates: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """cos(e0(x), P[y_x]) for every candidate (0 where the prototype row is zero)."""
    p = np.asarray(prototypes, np.float64)
    if p.ndim != 2 or p.shape[1] != np.asarray(candidates).shape[1]:
        raise DataError(f"prototype_statistic: prototypes {p.shape} and candidates {np.shape(candidates)} differ in width")
    return np.einsum("nd,nd->n", unit_rows(candidates), unit_rows(p)[np.asarray(labels, np.int64)])


def label_inference_accuracy(prototypes: np.ndarray, records: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of labelling records by their nearest released prototype (absent classes are never chosen)."""
    p = np.asarray(prototypes, np.float64)
    present = np.linalg.norm(p, axis=1) > 0
    if not present.any():
        raise DataError("label_inference_accuracy: every prototype row is zero")
    sims = unit_rows(records) @ unit_rows(p).T
    sims[:, ~present] = -np.inf
    return float((np.argmax(sims, axis=1) == np.asarray(labels)).mean())
