"""Secure aggregation inside the federation runtime: the server receives node uploads only as a sum.

Each node's :class:`~geofed_secure.runtime.messages.NodeUpdate` stays on the node. Its payload (weighted B,
weighted m if averaged, Gram upper triangle, precision weight) is flattened in a public :class:`PayloadLayout`
and aggregated with ``secagg-v1`` (pairwise masking) or ``ckks-v1`` (TenSEAL); the server gets the summed
fields and the contributor set, and :func:`geofed_secure.server.server.aggregate` turns them into the new
global state exactly as in plaintext mode. Every protocol message is recorded in the run transcript.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from geofed_secure.config import RunConfig
from geofed_secure.errors import GeofedError, MessageError, ProtocolAborted
from geofed_secure.runtime.messages import (
    GRAM_FIELD,
    WEIGHT_FIELD,
    WEIGHTED_PREFIX,
    NodeUpdate,
)
from geofed_secure.runtime.transcript import Transcript
from geofed_secure.secagg.masking import MaskingParameters
from geofed_secure.secagg.simulate import MaskingFederation
from geofed_secure.secagg.types import WireRecord

FaultHook = Callable[[str, int, str], None]


@dataclass(frozen=True, slots=True)
class PayloadLayout:
    """Public order and shapes of the upload fields; every node flattens its payload the same way."""

    fields: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def for_round(cls, global_state: Mapping[str, np.ndarray], n_anchors: int) -> PayloadLayout:
        names = {WEIGHTED_PREFIX + k: tuple(v.shape) for k, v in global_state.items()}
        names[GRAM_FIELD] = (n_anchors * (n_anchors - 1) // 2,)
        names[WEIGHT_FIELD] = (1,)
        return cls(tuple(sorted(names.items())))

    @property
    def length(self) -> int:
        return sum(int(np.prod(shape)) for _, shape in self.fields)

    def flatten(self, payload: Mapping[str, np.ndarray]) -> np.ndarray:
        got = {k: tuple(v.shape) for k, v in payload.items()}
        if got != dict(self.fields):
            raise MessageError(f"upload does not match the public layout: fields {sorted(set(got) ^ set(dict(self.fields)))[:3]} "
                               "differ or have the wrong shape")
        return np.concatenate([np.asarray(payload[k], np.float64).ravel() for k, _ in self.fields])

    def unflatten(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        out, start = {}, 0
        for name, shape in self.fields:
            size = int(np.prod(shape))
            out[name] = vector[start:start + size].reshape(shape)
            start += size
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class SecureRound:
    sums: dict[str, np.ndarray]
    contributors: tuple[str, ...]
    left_out: dict[str, str]  # node id -> why it is not in the sum
    bytes_sent: dict[str, int]
    clipped: dict[str, int]
    max_abs_error: float


class MaskingAggregator:
    """Runs secagg-v1 between the runtime's nodes and server; sessions (and epoch keys) persist across rounds.

    ``seed`` is for tests only: None draws every key from the OS CSPRNG, as a deployment must.
    """

    protocol = "masking"

    def __init__(self, config: RunConfig, anchor_digest: str, *, seed: int | None = None) -> None:
        sec = config.secure
        params = MaskingParameters(ring_bits=sec.ring_bits, clip=sec.clip, threshold=sec.threshold or None,
                                   degree=sec.neighbors or None, rounds_per_epoch=sec.rounds_per_epoch)
        self.federation = MaskingFederation.provision(tuple(n.id for n in config.nodes), params, seed=seed,
                                                      federation_id=config.federation.id, anchor_digest=anchor_digest)

    def aggregate(self, round_: int, updates: Mapping[str, NodeUpdate], layout: PayloadLayout, transcript: Transcript,
                  fault_hook: FaultHook) -> SecureRound:
        inputs = {v: layout.flatten(u.payload) for v, u in sorted(updates.items())}
        dropped: dict[str, str] = {}

        def drops(node_id: str, stage: str) -> bool:
            if node_id in dropped:
                return True
            try:
                fault_hook(f"secagg/{stage}", round_, node_id)
            except GeofedError as exc:
                dropped[node_id] = f"dropped at secure-aggregation stage {stage}: {exc}"
                return True
            return False

        sent = dict.fromkeys(inputs, 0)

        def on_wire(record: WireRecord, message: object) -> None:
            transcript.record(round_, record.sender, record.receiver, record.data, message)  # type: ignore[arg-type]
            if record.sender in sent:
                sent[record.sender] += record.nbytes

        refusals = self.federation.run_round(round_, inputs, drops=drops, on_wire=on_wire)
        if refusals:
            first = refusals[min(refusals)]
            raise ProtocolAborted(first.reason, party=first.party, stage=first.stage)
        outcome = self.federation.server.outcome
        assert outcome is not None
        left_out = {v: dropped.get(v, "no masked input") for v in inputs if v not in outcome.contributors}
        return SecureRound(sums=layout.unflatten(outcome.aggregate), contributors=outcome.contributors, left_out=left_out,
                           bytes_sent=sent, clipped={v: self.federation.nodes[v].clipped for v in inputs},
                           max_abs_error=outcome.max_abs_error)


def make_aggregator(config: RunConfig, anchor_digest: str, *, seed: int | None = None):
    """The secure aggregator for ``config.secure.protocol`` (None for 'none': uploads travel in clear)."""
    if config.secure.protocol == "none" or config.federation.mode != "federated":
        return None
    if config.secure.protocol == "masking":
        return MaskingAggregator(config, anchor_digest, seed=seed)
    from geofed_secure.runtime.secure_ckks import CkksAggregator
    return CkksAggregator(config, anchor_digest)
