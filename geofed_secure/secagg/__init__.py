"""Secure aggregation: the server learns only sums of node uploads.

Two protocols, both sans-IO state machines driven by the simulator, the federation runtime and the tests, each
in a sub-package laid out by role (``spec``, ``messages``, ``tables``, ``node``, ``server``, ``federation``,
``vectors``):

- :mod:`~geofed_secure.secagg.masking` (``protocols/secagg-v1``): pairwise masks (SecAgg / SecAgg+) with
  X25519, HKDF-SHA256, AES-CTR keystreams, Shamir shares over GF(2^521 - 1), ChaCha20-Poly1305 between nodes
  and Ed25519 identity keys; survives dropouts at every stage and refuses the dishonest-server catalogue
  (:data:`geofed_secure.secagg.masking.adversary.CATALOGUE`).
- :mod:`~geofed_secure.secagg.ckks` (``protocols/ckks-v1``): TenSEAL CKKS; the server adds ciphertexts it
  cannot decrypt.

What both share lives here: :mod:`.common` (the server's party id, the stages a dropout schedule names,
:class:`WireRecord`, :class:`AggregationResult`) and the public entry point :func:`simulate_aggregation`
(:mod:`.simulate`); ``python -m geofed_secure.secagg.vectors`` writes both protocols' published files.
"""

from geofed_secure.secagg.common import STAGES, AggregationResult, WireRecord
from geofed_secure.secagg.simulate import simulate_aggregation

__all__ = ["STAGES", "AggregationResult", "WireRecord", "simulate_aggregation"]
