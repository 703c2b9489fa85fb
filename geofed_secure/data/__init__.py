"""Modality datasets, non-IID partitioning, public anchor sets and their digests.

Sources (DESIGN.md section 6): image = MNIST-5k (real), tabular = scikit-learn digits (real),
text and dna = SYNTHETIC generated data (labelled ``synthetic=True`` everywhere).
"""

from __future__ import annotations

from geofed_secure.data.anchors import AnchorManifest, anchor_digest, verify_anchor_digest
from geofed_secure.data.demo import ModalityData, SplitIndices, load_modality, split_indices
from geofed_secure.data.features import TokenFeatures, validate_features
from geofed_secure.data.partition import dirichlet_partition
from geofed_secure.data.sources import RawSource, load_source

__all__ = [
    "TokenFeatures",
    "validate_features",
    "RawSource",
    "load_source",
    "dirichlet_partition",
    "anchor_digest",
    "AnchorManifest",
    "verify_anchor_digest",
    "ModalityData",
    "SplitIndices",
    "split_indices",
    "load_modality",
]
