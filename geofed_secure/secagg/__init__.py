"""Secure aggregation: the server learns only sums of node uploads.

Two protocols, both sans-IO state machines driven by the simulator, the federation runtime and the tests:

- ``masking`` (``protocols/secagg-v1``): pairwise masks (SecAgg / SecAgg+) with X25519, HKDF-SHA256,
  AES-CTR keystreams, Shamir shares over GF(2^521 - 1), ChaCha20-Poly1305 between nodes and Ed25519
  identity keys; survives dropouts at every stage and refuses the dishonest-server catalogue
  (:data:`geofed_secure.secagg.adversary.CATALOGUE`).
- ``ckks`` (``protocols/ckks-v1``): TenSEAL CKKS; the server adds ciphertexts it cannot decrypt.

The stable public entry point is :func:`simulate_aggregation`.
"""

from geofed_secure.secagg.simulate import simulate_aggregation
from geofed_secure.secagg.types import STAGES, AggregationResult, WireRecord

__all__ = ["STAGES", "AggregationResult", "WireRecord", "simulate_aggregation"]
