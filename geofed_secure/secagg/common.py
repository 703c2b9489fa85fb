"""Types shared by both secure-aggregation protocols (pairwise masking and CKKS) and their drivers.

A protocol run is recorded as a list of :class:`WireRecord` (every message that crossed the server, as
wire bytes, with sender, receiver and stage), so an audit can select what one party saw. The public
entry point :func:`geofed_secure.secagg.simulate_aggregation` returns an :class:`AggregationResult`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

from geofed_secure.errors import ConfigError, DataError

SERVER = "server"

# Stage names of the pairwise-masking protocol, in order (also the keys of ``dropouts``).
# ``graph_seed`` happens only in SecAgg+ epochs (SPEC 5.2); CKKS has no stage of that name and ignores it.
STAGES = ("advertise_keys", "graph_seed", "share_keys", "masked_input", "consistency_check", "unmask")


def checked_dropouts(dropouts: Mapping[str, str] | None, node_ids: Collection[str]) -> dict[str, str]:
    """Validate a dropout schedule (node id -> stage in :data:`STAGES`) against the nodes that have inputs."""
    dropouts = dict(dropouts or {})
    for node_id, stage in dropouts.items():
        if node_id not in node_ids:
            raise DataError(f"dropouts names {node_id!r}, which has no input")
        if stage not in STAGES:
            raise ConfigError("dropouts", f"{node_id!r} drops at unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    return dropouts


@dataclass(frozen=True, slots=True, kw_only=True)
class WireRecord:
    """One message as it crossed the wire: who sent it to whom, at which stage, and its exact bytes."""

    round: int
    stage: str
    sender: str
    receiver: str
    kind: str  # message type name, e.g. "MaskedInput"
    data: bytes = field(repr=False)

    @property
    def nbytes(self) -> int:
        return len(self.data)


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregationResult:
    """What the aggregating side learns: the (weighted) sum over contributors and who contributed.

    ``aggregate`` is sum_k w_k x_k over ``contributors`` (w_k = 1 without weights); ``total_weight`` is
    sum_k w_k. ``max_abs_error`` bounds |aggregate - exact float64 sum of the clipped inputs| (fixed-point
    quantisation for masking, CKKS noise bound for CKKS). ``clipped`` counts, per node, the coordinates it
    clipped before encoding. ``bytes_sent`` counts every byte each party put on the wire (server included).
    """

    protocol: str
    aggregate: np.ndarray
    total_weight: float
    contributors: tuple[str, ...]
    bytes_sent: Mapping[str, int]
    transcript: tuple[WireRecord, ...] = field(repr=False)
    clipped: Mapping[str, int]
    max_abs_error: float
