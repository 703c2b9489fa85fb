"""Functional extraction of a node's encoder from what an adversary sees of its anchor embeddings.

The adversary holds public inputs (the public anchors and further public samples of the node's modality) and
the public model every node starts from (frozen encoder, the node's seeded initial adapter, the shared backbone:
``e0``). From the view it gets the node's embeddings of the B anchors: directly (raw anchor embeddings) or up to
an orthogonal map (a Gram matrix, inverted by :func:`~geofed_secure.audit.attacks.gram_inversion.invert_gram`).
It rotates the release onto ``e0`` of the anchors, fits a ridge map of the node's departure from ``e0`` on the B
anchors, and applies it to held-out public inputs (:func:`fit_extraction`).

Fidelity is measured on those held-out inputs against the node's TRUE embeddings (unit-normalised, as in the
Gram), after the best orthogonal alignment (a Gram fixes embeddings only up to rotation):

- ``procrustes_error``: relative Frobenius distance (0 = the node's encoder reproduced exactly on held-out inputs);
- ``downstream_agreement``: share of held-out inputs that a nearest-class-centroid classifier (centroids = the B
  anchors' class means) labels the same in the extracted space as in the node's true space.

The global-model baseline is ``e0`` itself (what the adversary has without any release): the extraction carries
information about the node exactly when it beats that baseline.
"""

from __future__ import annotations

import numpy as np

from geofed_secure.audit.attacks.gram_inversion import procrustes_error
from geofed_secure.errors import DataError

RIDGE_ALPHAS = tuple(10.0 ** k for k in range(-3, 6))


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def align_to(released: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``released`` (zero-padded to the reference's width) turned by the orthogonal map that best fits ``reference``:
    a Gram fixes embeddings only up to rotation, so the adversary first puts them in its own model's coordinates."""
    r = np.pad(released, ((0, 0), (0, reference.shape[1] - released.shape[1])))  # callers check the widths
    u, _, vt = np.linalg.svd(r.T @ reference)
    return r @ (u @ vt)


def fit_extraction(public_anchors: np.ndarray, released: np.ndarray, public_heldout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The extracted encoder on held-out public inputs, and the released anchor embeddings in the same coordinates.

    The release is first rotated onto the public model's anchor embeddings (:func:`align_to`); a ridge map then
    learns the node's DEPARTURE from the public model, ``e0(x) -> released - e0(x)``, with the penalty chosen by
    leave-one-out over the anchors, so with little evidence the extraction falls back to the public model itself
    instead of fitting a map from scratch. Needs the release no wider than the public embedding.
    """
    from sklearn.linear_model import RidgeCV

    a, r, h = (np.asarray(v, np.float64) for v in (public_anchors, released, public_heldout))
    if a.ndim != 2 or r.ndim != 2 or h.ndim != 2 or a.shape[0] != r.shape[0] or a.shape[1] != h.shape[1]:
        raise DataError(f"fit_extraction: anchors {a.shape}, released {r.shape}, held-out {h.shape} do not fit together")
    if r.shape[1] > a.shape[1]:
        raise DataError(f"fit_extraction: the release is {r.shape[1]} wide, wider than the public embedding ({a.shape[1]})")
    if not (np.isfinite(a).all() and np.isfinite(r).all() and np.isfinite(h).all()):
        raise DataError("fit_extraction: inputs contain NaN or inf")
    target = align_to(r, a)
    mean, scale = a.mean(axis=0), a.std(axis=0) + 1e-8
    model = RidgeCV(alphas=RIDGE_ALPHAS).fit((a - mean) / scale, target - a)
    return h + model.predict((h - mean) / scale), target


def nearest_centroid(points: np.ndarray, anchors: np.ndarray, anchor_labels: np.ndarray) -> np.ndarray:
    """Label of the nearest (cosine) class centroid of the anchors, for every point."""
    labels = np.unique(anchor_labels)
    centroids = unit_rows(np.stack([unit_rows(anchors)[anchor_labels == c].mean(axis=0) for c in labels]))
    return labels[np.argmax(unit_rows(points) @ centroids.T, axis=1)]


def extraction_metrics(extracted_heldout: np.ndarray, extracted_anchors: np.ndarray, true_heldout: np.ndarray,
                       true_anchors: np.ndarray, anchor_labels: np.ndarray) -> dict[str, float]:
    """Procrustes error on held-out inputs and downstream (nearest-centroid) agreement with the node's true space."""
    truth = unit_rows(true_heldout)
    agree = nearest_centroid(extracted_heldout, extracted_anchors, anchor_labels) == nearest_centroid(
        truth, true_anchors, anchor_labels)
    return {"procrustes_error": procrustes_error(unit_rows(extracted_heldout), truth),
            "downstream_agreement": float(agree.mean())}
