"""Frozen pretrained encoders ("tokenizers", DESIGN.md section 6) and the feature cache.

========= ============================================================ ===========================
modality  encoder                                                      tokens
========= ============================================================ ===========================
image     EfficientNet-Lite0 (real ImageNet weights), 64 px, [-1, 1]    4 x 1280 (2x2 final map)
text      all-MiniLM-L6-v2 (real weights), last hidden states           24 x 384 (+ attention mask)
tabular   SYNTHETIC STAND-IN: seeded periodic features + projection    8 x 64 (one per table row)
dna       SYNTHETIC STAND-IN for DNABERT: seeded 6-mer embedding        95 x 32 (+ padding mask)
========= ============================================================ ===========================

Encoders an operator brings (``[nodes.encoder]``, built by :func:`encoder_from_spec`):

=============================== ============================================== ==================================
encoder                         what                                           tokens
=============================== ============================================== ==================================
HFEncoder (``hf``)              any LOCAL Hugging Face checkpoint directory,   hidden: L x d (text: max_length,
                                image (AutoImageProcessor) or text             padding masked); pooled: 1 x d;
                                (AutoTokenizer) + AutoModel                    patch: hidden without [CLS]
CallableEncoder (``callable``)  the user's "package.module:function" factory   whatever it returns, validated
NumericColumnsEncoder           SYNTHETIC: numeric table of any width F,       F x 64 (one per column)
(builtin ``numeric-columns``)   seeded periodic features + projection
PrecomputedEncoder              identity for records that already are tokens   the records' L x d (+ mask)
(``precomputed``)
=============================== ============================================== ==================================

Weights are loaded lazily from installed packages (or the operator's checkpoint directory) on the first
``encode`` call; nothing is downloaded. Torch is imported only then.
"""

from __future__ import annotations

from geofed_secure.encoders.base import BatchedEncoder, FrozenEncoder, validate_encoded
from geofed_secure.encoders.cache import FeatureCache, cache_key, default_cache_root
from geofed_secure.encoders.custom import CallableEncoder, NumericColumnsEncoder, PrecomputedEncoder
from geofed_secure.encoders.dna import KmerDNAEncoder
from geofed_secure.encoders.hf import HFEncoder, checkpoint_digest, serialize_rows
from geofed_secure.encoders.image import EfficientNetLite0Encoder
from geofed_secure.encoders.spec import RECORD_KINDS, encoder_from_spec
from geofed_secure.encoders.tabular import PeriodicTabularEncoder
from geofed_secure.encoders.text import MiniLMTextEncoder
from geofed_secure.errors import DataError

__all__ = [
    "MODALITIES",
    "RECORD_KINDS",
    "BatchedEncoder",
    "CallableEncoder",
    "EfficientNetLite0Encoder",
    "FeatureCache",
    "FrozenEncoder",
    "HFEncoder",
    "KmerDNAEncoder",
    "MiniLMTextEncoder",
    "NumericColumnsEncoder",
    "PeriodicTabularEncoder",
    "PrecomputedEncoder",
    "cache_key",
    "checkpoint_digest",
    "default_cache_root",
    "encoder_from_spec",
    "get_encoder",
    "serialize_rows",
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
