"""One modality's encoded data as a federation consumes it: private pool, public anchors, public evaluation anchors.

A plain container: how it is produced (the demo's sources, split and frozen encoders) lives in
:mod:`geofed_secure.demo`; tests and scripts build it from synthetic or label-only features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from geofed_secure.data.features import TokenFeatures
from geofed_secure.errors import DataError

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
    # Own nodes' data (geofed_secure.inputs): the pool is the rows of ``owners`` one after the other; ``pool_owner[i]``
    # is the index in ``owners`` of the node that holds row i. None: a demo pool, cut among nodes by the runtime.
    owners: tuple[str, ...] = ()
    pool_owner: np.ndarray | None = field(default=None, compare=False, repr=False)
    # Own bridge nodes: node id -> its paired samples (another modality), row i = the same sample as its owned row i.
    paired_rows: dict[str, TokenFeatures] = field(default_factory=dict, compare=False, repr=False)

    def owned_rows(self, node_id: str) -> np.ndarray | None:
        """The pool rows ``node_id`` holds, or None for a demo pool (which the runtime partitions)."""
        if self.pool_owner is None:
            return None
        if node_id not in self.owners:
            raise DataError(f"modality {self.modality!r} holds no records of node {node_id!r} (its nodes: {list(self.owners)})")
        return np.flatnonzero(self.pool_owner == self.owners.index(node_id))
