"""One modality's encoded data as a federation consumes it: private pool, public anchors, public evaluation anchors.

A plain container: how it is produced (the demo's sources, split and frozen encoders) lives in
:mod:`geofed_secure.demo`; tests and scripts build it from synthetic or label-only features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from geofed_secure.data.features import TokenFeatures

__all__ = ["ModalityData", "SplitIndices"]


@dataclass(frozen=True)
class SplitIndices:
    """Raw indices into ``load_source(modality, seed=seed).samples`` of the three disjoint sets.

    ``anchors`` and ``eval_anchors`` are ordered by concept; ``pool`` is ascending.
    """

    pool: np.ndarray
    anchors: np.ndarray
    eval_anchors: np.ndarray


@dataclass(frozen=True)
class ModalityData:
    """Encoded data of one modality (for the demo federation: :func:`geofed_secure.demo.load_modality`).

    ``anchors`` and ``eval_anchors`` are ordered by concept (anchor j is the same concept in every modality);
    ``anchor_digest`` commits to the raw anchors. ``indices`` and ``description`` are provenance extras
    (raw-source indices, source description).
    """

    modality: str
    encoder_name: str
    synthetic: bool
    pool: TokenFeatures
    anchors: TokenFeatures
    eval_anchors: TokenFeatures
    anchor_digest: str
    indices: SplitIndices | None = field(default=None, compare=False, repr=False)
    description: str = ""
