"""Frozen pretrained encoders ("tokenizers", DESIGN.md section 6) and the feature cache.

========= ============================================================ ===========================
modality  encoder                                                      tokens
========= ============================================================ ===========================
image     EfficientNet-Lite0 (real ImageNet weights), 64 px, [-1, 1]    4 x 1280 (2x2 final map)
text      all-MiniLM-L6-v2 (real weights), last hidden states           24 x 384 (+ attention mask)
tabular   SYNTHETIC STAND-IN: seeded periodic features + projection    8 x 64 (one per table row)
dna       SYNTHETIC STAND-IN for DNABERT: seeded 6-mer embedding        95 x 32 (+ padding mask)
========= ============================================================ ===========================

Weights are loaded lazily from installed packages on the first ``encode`` call; nothing is
downloaded. Torch is imported only then.
"""

from __future__ import annotations

from geofed_secure.encoders.base import BatchedEncoder, FrozenEncoder, validate_encoded
from geofed_secure.encoders.cache import FeatureCache, cache_key, default_cache_root
from geofed_secure.encoders.dna import KmerDNAEncoder
from geofed_secure.encoders.image import EfficientNetLite0Encoder
from geofed_secure.encoders.tabular import PeriodicTabularEncoder
from geofed_secure.encoders.text import MiniLMTextEncoder
from geofed_secure.errors import DataError

__all__ = [
    "MODALITIES",
    "BatchedEncoder",
    "EfficientNetLite0Encoder",
    "FeatureCache",
    "FrozenEncoder",
    "KmerDNAEncoder",
    "MiniLMTextEncoder",
    "PeriodicTabularEncoder",
    "cache_key",
    "default_cache_root",
    "get_encoder",
    "validate_encoded",
]

MODALITIES: tuple[str, ...] = ("image", "text", "tabular", "dna")


def get_encoder(modality: str, *, seed: int = 0) -> FrozenEncoder:
    """The default frozen encoder of ``modality``.

    ``seed`` parameterises the synthetic stand-ins (tabular, dna) and is part of their name; the
    pretrained encoders (image, text) ignore it. Unknown modality -> :class:`DataError`.
    """
    if modality == "image":
        return EfficientNetLite0Encoder(seed=seed)
    if modality == "text":
        return MiniLMTextEncoder(seed=seed)
    if modality == "tabular":
        return PeriodicTabularEncoder(seed=seed)
    if modality == "dna":
        return KmerDNAEncoder(seed=seed)
    raise DataError(f"unknown modality {modality!r}; known modalities: {', '.join(MODALITIES)}")
