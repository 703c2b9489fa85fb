"""Secure aggregation inside the federation runtime: the server receives node uploads only as a sum.

- :mod:`.layout`: the public :class:`~.layout.PayloadLayout` of a node's summable fields and the clipped
  :class:`~.layout.SecureInputLayout` vector each node feeds to the protocol; :class:`~.layout.SecureRound`, what a
  round gives the server;
- :mod:`.session`: the two halves every driver moves, the server's :class:`~.session.SecureAggregator` and each
  node's :class:`~.session.NodeSession`;
- :mod:`.masking` (secagg-v1) and :mod:`.ckks` (ckks-v1): one aggregator and one node session per protocol;
- :mod:`.keys`: what a deployment provisions out of band (identity keys, CKKS contexts), as files;
- :func:`in_process` makes the configured protocol's server and node sessions in one process (the simulator).
"""

from __future__ import annotations

from geofed_secure.config import RunConfig
from geofed_secure.runtime.secure.ckks import CkksAggregator, CkksNodeSession
from geofed_secure.runtime.secure.layout import (
    CLIPPED_FIELD,
    COUNT_RADIX,
    FaultHook,
    PayloadLayout,
    SecureInputLayout,
    SecureRound,
)
from geofed_secure.runtime.secure.masking import MaskingAggregator, MaskingNodeSession
from geofed_secure.runtime.secure.session import NodeSession, Refusal, SecureAggregator, SecureReply


def in_process(config: RunConfig, anchor_digest: str, *, seed: int | None = None
               ) -> tuple[SecureAggregator | None, dict[str, NodeSession]]:
    """The server's aggregator and every node's session for ``config.secure.protocol``, all in this process
    ((None, {}) for 'none': uploads travel in clear). ``seed`` (masking, tests only) makes the keys reproducible."""
    if config.secure.protocol == "none" or config.federation.mode != "federated":
        return None, {}
    if config.secure.protocol == "masking":
        masking, sessions = MaskingAggregator.in_process(config, anchor_digest, seed=seed)
        return masking, dict(sessions)
    ckks, ckks_sessions = CkksAggregator.in_process(config, anchor_digest)
    return ckks, dict(ckks_sessions)


__all__ = ["CLIPPED_FIELD", "COUNT_RADIX", "CkksAggregator", "CkksNodeSession", "FaultHook", "MaskingAggregator",
           "MaskingNodeSession", "NodeSession", "PayloadLayout", "Refusal", "SecureAggregator", "SecureInputLayout",
           "SecureReply", "SecureRound", "in_process"]
