"""secagg-v1: pairwise-mask secure aggregation (SecAgg / SecAgg+) as sans-IO state machines (``protocols/secagg-v1``).

:class:`MaskingNode` and :class:`MaskingServer` never touch a socket, a clock or a thread: a driver (the
in-process :class:`MaskingFederation`, the tests, the federation runtime, Flower) moves their messages. The
package is laid out by role, the same way as :mod:`geofed_secure.secagg.ckks`:

- :mod:`.spec`: provisioned parameters and the pure derivations (threshold, view quorum, SecAgg+ graph, epoch
  plan, mask keystreams);
- :mod:`.primitives` (X25519, Ed25519, HKDF, AES-CTR, ChaCha20-Poly1305, Shamir) and :mod:`.fixedpoint`
  (the ring encoding);
- :mod:`.messages`: the frozen messages and their one canonical codec;
- :mod:`.tables`: the transition tables (data; SPEC.md's tables are generated from them);
- :mod:`.node` and :mod:`.server`: the two state machines;
- :mod:`.federation`: the in-process driver; :mod:`.adversary`: the dishonest-server catalogue;
- :mod:`.vectors`: the published test vectors.

What each party learns (threat model, SPEC section 6): the server learns the sum of the contributors' encoded
inputs and who contributed. Against a malicious server colluding with at most ``colluders`` (z) nodes it learns
no individual input and no sum of fewer than three honest inputs, because (i) a node answers only a view whose
survivors it masked with, that keeps at least t - 1 of its peers alive, and that every survivor in its signature
scope signed (every survivor in the complete graph; the nearest 6 ceil(k/2) + 1 members on a SecAgg+ ring), (ii)
every answered view lists more than (m + z) / 2 of the m holders of each owner the node reveals a share of (and of
their alive neighbours), so each owner's shares are answered under one view per round (in the complete graph, m = M:
one view per round at all; on a SecAgg+ ring, distant arcs may answer different views), and (iii) t >= z + 3. A
node learns nothing about other nodes' inputs.
"""

from geofed_secure.secagg.masking.node import MaskingNode
from geofed_secure.secagg.masking.server import MaskingServer, ServerOutcome
from geofed_secure.secagg.masking.spec import (
    MIN_COHORT,
    EpochPlan,
    MaskingParameters,
    Provisioning,
    default_threshold,
    graph_seed,
    holders_per_owner,
    is_sparse,
    neighbourhoods,
    pairwise_mask,
    plan_epoch,
    roster_digest,
    self_mask,
    sparse_holders,
    view_quorum,
)
from geofed_secure.secagg.masking.tables import (
    NODE_TRANSITIONS,
    SERVER_STAGE,
    SERVER_TRANSITIONS,
    Guard,
    NodeEvent,
    NodeState,
    ServerEvent,
    ServerState,
    node_event,
    refusal,
    transition_tables_markdown,
)

__all__ = [
    "MIN_COHORT", "NODE_TRANSITIONS", "SERVER_STAGE", "SERVER_TRANSITIONS", "EpochPlan", "Guard", "MaskingNode",
    "MaskingParameters", "MaskingServer", "NodeEvent", "NodeState", "Provisioning", "ServerEvent", "ServerOutcome",
    "ServerState", "default_threshold", "graph_seed", "holders_per_owner", "is_sparse", "neighbourhoods", "node_event",
    "pairwise_mask", "plan_epoch", "refusal", "roster_digest", "self_mask", "sparse_holders", "transition_tables_markdown",
    "view_quorum",
]
