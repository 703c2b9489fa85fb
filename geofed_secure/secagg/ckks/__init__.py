"""ckks-v1: secure aggregation by CKKS homomorphic encryption (TenSEAL), sans-IO (``protocols/ckks-v1/SPEC.md``).

Every node holds the same CKKS secret key (provisioned once); the server holds only a public context, adds the
nodes' ciphertexts and sends the encrypted sum back; nodes decrypt it. The server never sees an upload nor the
sum in clear, but ANY one node holding the key decrypts every individual upload it can get hold of, so one
node colluding with the server reads everything (SPEC section 6). Nothing here authenticates a party.

The package is laid out by role, the same way as :mod:`geofed_secure.secagg.masking`:

- :mod:`.spec`: constants, :class:`CkksParameters` and pure functions (:func:`chunk_bounds`,
  :func:`ckks_error_bound`);
- :mod:`.keys`: key provisioning (:func:`provision_ckks_keys`), :func:`context_digest` and the TenSEAL
  wrappers (every TenSEAL failure becomes one of our typed errors);
- :mod:`.messages`: :class:`CkksRoundStart`, :class:`CkksEncryptedInput`, :class:`CkksAggregate`, one
  canonical wire encoding and a strict :func:`decode_ckks_message`;
- :mod:`.tables`: :data:`NODE_TRANSITIONS`, :data:`SERVER_TRANSITIONS`, the refusal rule, the SPEC's table;
- :mod:`.node` and :mod:`.server`: the state machines :class:`CkksNode` and :class:`CkksServer`;
- :mod:`.federation`: the in-process driver :func:`run_ckks_aggregation`; :mod:`.vectors`: the published vectors.

TenSEAL draws its keys and encryption noise from SEAL's own CSPRNG, which cannot be injected: ciphertexts and
the public-context digest differ between runs, so the published vectors hold only deterministic content.
"""

from geofed_secure.secagg.ckks.federation import arrival_order, run_ckks_aggregation
from geofed_secure.secagg.ckks.keys import CkksKeys, context_digest, decrypt_chunks, provision_ckks_keys
from geofed_secure.secagg.ckks.messages import (
    CkksAggregate,
    CkksEncryptedInput,
    CkksMessage,
    CkksRoundStart,
    decode_ckks_message,
)
from geofed_secure.secagg.ckks.node import CkksNode
from geofed_secure.secagg.ckks.server import CkksServer
from geofed_secure.secagg.ckks.spec import MAGIC, MIN_COHORT, PROTOCOL_ID, CkksParameters, chunk_bounds, ckks_error_bound
from geofed_secure.secagg.ckks.tables import (
    NODE_PEER_EVENTS,
    NODE_TRANSITIONS,
    SERVER_LOCAL_EVENTS,
    SERVER_PEER_EVENTS,
    SERVER_TRANSITIONS,
    NodeEvent,
    NodeState,
    ServerEvent,
    ServerState,
    refusal,
    transition_table_markdown,
)
from geofed_secure.secagg.ckks.vectors import build_vectors, expected_aggregate, vector_input

__all__ = [
    "MAGIC", "MIN_COHORT", "NODE_PEER_EVENTS", "NODE_TRANSITIONS", "PROTOCOL_ID", "SERVER_LOCAL_EVENTS",
    "SERVER_PEER_EVENTS", "SERVER_TRANSITIONS", "CkksAggregate", "CkksEncryptedInput", "CkksKeys", "CkksMessage",
    "CkksNode", "CkksParameters", "CkksRoundStart", "CkksServer", "NodeEvent", "NodeState", "ServerEvent",
    "ServerState", "arrival_order", "build_vectors", "chunk_bounds",
    "ckks_error_bound", "context_digest", "decode_ckks_message", "decrypt_chunks", "expected_aggregate",
    "provision_ckks_keys", "refusal", "run_ckks_aggregation", "transition_table_markdown", "vector_input",
]
