"""secagg-v1 (pairwise masking) inside the federation runtime: :class:`MaskingAggregator`."""


from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from geofed_secure.config import RunConfig
from geofed_secure.errors import FailureCode, GeofedError, ProtocolAborted
from geofed_secure.runtime.secure.layout import FaultHook, SecureInputLayout, SecureRound
from geofed_secure.runtime.transcript import Transcript
from geofed_secure.secagg.common import WireRecord
from geofed_secure.secagg.masking import MaskingParameters
from geofed_secure.secagg.masking.federation import MaskingFederation


class MaskingAggregator:
    """Runs secagg-v1 between the runtime's nodes and server; sessions (and epoch keys) persist across rounds.

    ``seed`` is for tests only: None draws every key from the OS CSPRNG, as a deployment must.
    """

    protocol = "masking"

    def __init__(self, config: RunConfig, anchor_digest: str, *, seed: int | None = None) -> None:
        sec = config.secure
        params = MaskingParameters(ring_bits=sec.ring_bits, clip=sec.clip, threshold=sec.threshold or None,
                                   degree=sec.neighbors or None, rounds_per_epoch=sec.rounds_per_epoch,
                                   colluders=sec.colluders)
        self.federation = MaskingFederation.provision(tuple(n.id for n in config.nodes), params, seed=seed,
                                                      federation_id=config.federation.id, anchor_digest=anchor_digest)

    def aggregate(self, round_: int, inputs: Mapping[str, np.ndarray], layout: SecureInputLayout, transcript: Transcript,
                  fault_hook: FaultHook) -> SecureRound:
        """``inputs``: node id -> :meth:`SecureInputLayout.node_input` vector (held by that node)."""
        inputs = dict(sorted(inputs.items()))
        dropped: dict[str, str] = {}

        def drops(node_id: str, stage: str) -> bool:
            if node_id in dropped:
                return True
            try:
                fault_hook(f"secagg/{stage}", round_, node_id)
            except GeofedError:
                dropped[node_id] = stage
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
        left_out = {v: FailureCode.DROPPED for v in inputs if v not in outcome.contributors}
        return SecureRound(sums=layout.unflatten(outcome.aggregate), contributors=outcome.contributors, left_out=left_out,
                           dropped_at={v: dropped[v] for v in left_out if v in dropped}, bytes_sent=sent,
                           max_abs_error=outcome.max_abs_error)
