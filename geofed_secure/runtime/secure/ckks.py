"""CKKS (ckks-v1) inside the federation runtime.

Keys are provisioned once per run: every node gets the secret context, the server only the public one. Per
round each node encrypts its flattened upload, the server adds the ciphertexts it cannot decrypt and sends
the encrypted sum to the contributors; each decrypts it, and the first contributor in id order releases the
decrypted SUM to the server (:class:`~geofed_secure.wire.round.AggregateRelease`) so it can checkpoint
and broadcast the next global state. The server therefore learns the same as under pairwise masking (the
sum and the contributors), never an individual upload; but any one node colluding with the server can
decrypt every upload (protocols/ckks-v1/SPEC.md says so plainly).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from geofed_secure.config import RunConfig
from geofed_secure.errors import FailureCode, GeofedError, ProtocolAborted
from geofed_secure.runtime.secure.layout import FaultHook, SecureInputLayout, SecureRound
from geofed_secure.runtime.transcript import SERVER, Transcript
from geofed_secure.secagg import ckks
from geofed_secure.wire.round import AggregateRelease, decode_message, encode_message


class CkksAggregator:
    protocol = "ckks"

    def __init__(self, config: RunConfig, anchor_digest: str) -> None:
        self.config = config
        self.anchor_digest = anchor_digest
        self.keys = ckks.provision_ckks_keys()
        ids = [n.id for n in config.nodes]
        fed = config.federation.id
        self.server = ckks.CkksServer(federation_id=fed, public_context=self.keys.public_context, cohort=ids)
        self.nodes = {v: ckks.CkksNode(node_id=v, federation_id=fed, secret_context=self.keys.secret_context,
                                       anchor_digest=anchor_digest, clip=config.secure.clip) for v in ids}

    def aggregate(self, round_: int, inputs: Mapping[str, np.ndarray], layout: SecureInputLayout, transcript: Transcript,
                  fault_hook: FaultHook) -> SecureRound:
        """``inputs``: node id -> :meth:`SecureInputLayout.node_input` vector (already clipped on the node, so the
        CKKS node's own clip finds nothing to clip and its per-node count is never read)."""
        sent = dict.fromkeys(inputs, 0)
        left_out: dict[str, FailureCode] = {}
        dropped_at: dict[str, str] = {}

        def wire(sender: str, receiver: str, message):
            blob = message.encode()
            transcript.record(round_, sender, receiver, blob, message)
            if sender in sent:
                sent[sender] += len(blob)
            return ckks.decode_ckks_message(blob)

        starts = self.server.start_round(round_, anchor_digest=self.anchor_digest, length=layout.length)
        for node_id, vector in sorted(inputs.items()):
            start = wire(SERVER, node_id, starts[node_id])
            try:
                fault_hook("secagg/masked_input", round_, node_id)
            except GeofedError:
                left_out[node_id], dropped_at[node_id] = FailureCode.DROPPED, "masked_input"
                continue
            upload = self.nodes[node_id].begin_round(start, vector)
            self.server.receive(wire(node_id, SERVER, upload))
        aggregate = self.server.finish()
        release: AggregateRelease | None = None
        for node_id in aggregate.contributors:
            delivered = wire(SERVER, node_id, aggregate)
            try:
                fault_hook("secagg/unmask", round_, node_id)
            except GeofedError:
                continue  # offline for the decryption: another contributor releases the sum
            total = self.nodes[node_id].receive_aggregate(delivered)
            if release is None:
                release = AggregateRelease(federation_id=self.config.federation.id, round=round_, node_id=node_id,
                                           anchor_digest=self.anchor_digest, contributors=tuple(aggregate.contributors),
                                           sums={k: v.astype(np.float32) for k, v in layout.unflatten(total).items()})
                blob = encode_message(release)
                transcript.record(round_, node_id, SERVER, blob, release)
                sent[node_id] += len(blob)
                release = decode_message(blob)  # type: ignore[assignment]
        if release is None:
            raise ProtocolAborted("no contributor was online to decrypt the aggregate", party=SERVER, stage="unmask")
        sums = {k: np.asarray(v, np.float64) for k, v in release.sums.items()}
        bound = ckks.ckks_error_bound(len(release.contributors), clip=self.config.secure.clip)
        return SecureRound(sums=sums, contributors=release.contributors, left_out=left_out, dropped_at=dropped_at,
                           bytes_sent=sent, max_abs_error=bound)
