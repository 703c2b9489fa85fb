"""Modality datasets, non-IID partitioning, public anchor sets and their digests.

Sources (DESIGN.md section 6): image = MNIST-5k (real), tabular = scikit-learn digits (real),
text and dna = SYNTHETIC generated data (labelled ``synthetic=True`` everywhere). A leaf package: it imports no
encoder; the demo's loading (sources + split + frozen encoders + feature cache) is :mod:`geofed_secure.demo`.
"""

from __future__ import annotations

from geofed_secure.data.anchors import AnchorManifest, anchor_digest, verify_anchor_digest
from geofed_secure.data.features import TokenFeatures, validate_features
from geofed_secure.data.modality import ModalityData, SplitIndices
from geofed_secure.data.partition import dirichlet_partition
from geofed_secure.data.sources import RawSource, load_source

__all__ = [
    "AnchorManifest",
    "ModalityData",
    "RawSource",
    "SplitIndices",
    "TokenFeatures",
    "anchor_digest",
    "dirichlet_partition",
    "load_source",
    "validate_features",
    "verify_anchor_digest",
]
