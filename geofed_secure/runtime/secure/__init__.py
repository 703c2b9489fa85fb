"""Secure aggregation inside the federation runtime: the server receives node uploads only as a sum.

- :mod:`.layout`: the public :class:`~.layout.PayloadLayout` of a node's summable fields and the clipped
  :class:`~.layout.SecureInputLayout` vector each node feeds to the protocol; :class:`~.layout.SecureRound`, what a
  round gives the server;
- :mod:`.masking` (secagg-v1) and :mod:`.ckks` (ckks-v1): one aggregator per protocol, same interface;
- :func:`make_aggregator` picks the configured one.
"""

from __future__ import annotations

from geofed_secure.config import RunConfig
from geofed_secure.runtime.secure.ckks import CkksAggregator
from geofed_secure.runtime.secure.layout import (
    CLIPPED_FIELD,
    COUNT_RADIX,
    FaultHook,
    PayloadLayout,
    SecureInputLayout,
    SecureRound,
)
from geofed_secure.runtime.secure.masking import MaskingAggregator


def make_aggregator(config: RunConfig, anchor_digest: str, *, seed: int | None = None) -> MaskingAggregator | CkksAggregator | None:
    """The secure aggregator for ``config.secure.protocol`` (None for 'none': uploads travel in clear)."""
    if config.secure.protocol == "none" or config.federation.mode != "federated":
        return None
    if config.secure.protocol == "masking":
        return MaskingAggregator(config, anchor_digest, seed=seed)
    return CkksAggregator(config, anchor_digest)


__all__ = ["CLIPPED_FIELD", "COUNT_RADIX", "CkksAggregator", "FaultHook", "MaskingAggregator", "PayloadLayout",
           "SecureInputLayout", "SecureRound", "make_aggregator"]
