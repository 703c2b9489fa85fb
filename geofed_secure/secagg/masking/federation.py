"""In-process driver of secagg-v1: :class:`MaskingFederation` moves real wire bytes between real node and
server state machines (and, optionally, a catalogue adversary).

Every message crosses the wire for real: it is encoded, recorded as a :class:`WireRecord`, and decoded by the
receiver, so the simulation exercises the same bytes a deployment sends. With a ``seed`` every draw comes from
:class:`~geofed_secure.secagg.masking.primitives.DeterministicRandomness` (identities, each node's secrets, the
adversary's own draws; the server draws nothing), so a run replays byte for byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from geofed_secure.errors import ProtocolAborted, RemoteProtocolError
from geofed_secure.secagg.common import SERVER, STAGES, WireRecord
from geofed_secure.secagg.masking import primitives as crypto
from geofed_secure.secagg.masking.adversary import Adversary, AttackContext
from geofed_secure.secagg.masking.messages import (
    ConsistencySignature,
    GraphSeedReveal,
    KeyAdvertisement,
    MaskedInput,
    Message,
    RoundStart,
    ShareBundle,
    UnmaskResponse,
    decode,
)
from geofed_secure.secagg.masking.node import MaskingNode
from geofed_secure.secagg.masking.server import MaskingServer
from geofed_secure.secagg.masking.spec import MaskingParameters, Provisioning
from geofed_secure.secagg.masking.tables import NodeState, ServerState

# The stage at which a node sends each kind of reply (a node that drops at stage S sends nothing from S on).
REPLY_STAGE = {KeyAdvertisement: "advertise_keys", GraphSeedReveal: "graph_seed", ShareBundle: "share_keys", MaskedInput: "masked_input",
               ConsistencySignature: "consistency_check", UnmaskResponse: "unmask"}
DEMO_ANCHOR_DIGEST = hashlib.sha256(b"geofed-secagg-v1 simulation anchors").hexdigest()


@dataclass
class MaskingFederation:
    """Provisioned parties of one simulated federation: identity keys, node sessions and the server."""

    provisioning: Provisioning
    nodes: dict[str, MaskingNode]
    server: MaskingServer
    rng: crypto.Randomness
    transcript: list[WireRecord] = field(default_factory=list)
    _on_wire: Callable[[WireRecord, Message], None] | None = field(default=None, repr=False)
    _last_encoded: tuple[Message, bytes] | None = field(default=None, repr=False)

    @classmethod
    def provision(cls, node_ids: list[str] | tuple[str, ...], parameters: MaskingParameters, *, seed: int | bytes | None = None,
                  federation_id: str = "simulation", anchor_digest: str = DEMO_ANCHOR_DIGEST) -> MaskingFederation:
        child: Callable[[str], crypto.Randomness]
        if seed is None:
            child = lambda label: crypto.SystemRandomness()
        else:
            child = crypto.DeterministicRandomness(seed if isinstance(seed, bytes) else str(seed).encode(), "simulation").child
        identities, privates = {}, {}
        for v in sorted(node_ids):
            privates[v], identities[v] = crypto.ed25519_keypair(child(f"identity/{v}"))
        provisioning = Provisioning(federation_id=federation_id, identities=identities, anchor_digest=anchor_digest,
                                    parameters=parameters)
        nodes = {v: MaskingNode(v, privates[v], provisioning, child(f"node/{v}")) for v in sorted(node_ids)}
        return cls(provisioning=provisioning, nodes=nodes, server=MaskingServer(provisioning), rng=child("server"))

    def _send(self, round_: int, sender: str, receiver: str, message: Message) -> Message:
        # A broadcast is one object sent to many receivers: encode it once.
        if self._last_encoded is not None and self._last_encoded[0] is message:
            blob = self._last_encoded[1]
        else:
            blob = message.encode()
            self._last_encoded = (message, blob)
        stage = self.server.stage if sender == SERVER else REPLY_STAGE[type(message)]
        record = WireRecord(round=round_, stage=stage, sender=sender, receiver=receiver, kind=type(message).__name__, data=blob)
        self.transcript.append(record)
        if self._on_wire is not None:
            self._on_wire(record, message)
        return decode(blob)

    def run_round(self, round_: int, inputs: Mapping[str, np.ndarray], *, dropouts: Mapping[str, str] | None = None,
                  adversary: Adversary | None = None, ctx: AttackContext | None = None,
                  drops: Callable[[str, str], bool] | None = None,
                  on_wire: Callable[[WireRecord, Message], None] | None = None) -> dict[str, ProtocolAborted]:
        """One round; returns the refusals of honest nodes (empty when nobody refused). Server aborts raise.

        A node drops at stage S (sends nothing from S on) if ``dropouts[node] == S`` or ``drops(node, S)`` is true;
        ``on_wire`` sees every message as it crosses the wire (the runtime records it in its transcript). After the
        server's :class:`ProtocolAborted` its session is over: :attr:`server` becomes a new session (the next round
        starts a new epoch).
        """
        dropouts = dict(dropouts or {})
        self._on_wire = on_wire
        adversary = adversary or Adversary()
        length = len(next(iter(inputs.values())))
        ctx = ctx or AttackContext(server=self.server, round=round_, rng=self.rng)
        ctx.round, ctx.server = round_, self.server
        refusals: dict[str, ProtocolAborted] = {}
        gone: set[str] = set()
        outgoing: Mapping[str, Message] = self.server.start_round(round_, length, cohort=tuple(v for v in inputs))
        try:
            while outgoing:
                outgoing = adversary.tamper(outgoing, ctx)
                for receiver, message in sorted(outgoing.items()):
                    ctx.sent.append((round_, receiver, message))
                    delivered = self._send(round_, SERVER, receiver, message)
                    node = self.nodes.get(receiver)
                    if node is None or receiver in gone or receiver in refusals:
                        continue
                    reply: Message
                    try:
                        if isinstance(delivered, RoundStart):
                            reply = node.begin_round(delivered, inputs[receiver])
                        else:
                            reply = node.receive(delivered)
                    except ProtocolAborted as exc:
                        refusals[receiver] = exc
                        continue
                    drop_stage = dropouts.get(receiver)
                    reply_stage = REPLY_STAGE[type(reply)]
                    if ((drop_stage is not None and STAGES.index(reply_stage) >= STAGES.index(drop_stage))
                            or (drops is not None and drops(receiver, reply_stage))):
                        gone.add(receiver)
                        node.abandon_round()
                        continue
                    received = self._send(round_, receiver, SERVER, reply)
                    if adversary.intercept(received, ctx):
                        continue
                    try:
                        self.server.receive(received)
                    except RemoteProtocolError:
                        gone.add(receiver)  # the availability rule: the server ignores a message it cannot use
                override = adversary.override(ctx)
                if override is not None:
                    outgoing = override
                    continue
                if refusals:  # honest nodes refused: the round cannot complete; stop before anything else is asked
                    break
                outgoing = self.server.close_stage()
        except ProtocolAborted:
            if self.server.aborted:  # a security stop ends the server's session; the next round opens a new one
                self.server = MaskingServer(self.provisioning)
            raise
        finally:  # whatever happened, nobody stays mid-round: the next round must be able to start
            if self.server.state not in (ServerState.IDLE, ServerState.ABORTED):
                self.server.abandon_round()  # honest nodes refused or the round did not complete
            for node in self.nodes.values():
                if node.state not in (NodeState.READY, NodeState.ABORTED):
                    node.abandon_round()
        return refusals
