"""secagg-v1 (pairwise masking) inside the federation runtime: the server's :class:`MaskingAggregator` and each
node's :class:`MaskingNodeSession`, moved by any driver (:mod:`.session`).

What each party learns is protocols/secagg-v1/SPEC.md section 6: the server learns the sum of the contributors'
clipped inputs and who contributed, never one node's input; a node learns nothing of another's. The server here
adds one rule of the driver: a node's message must carry the id of the node it came from (the channel's
authenticated sender), so one site cannot answer in another's name.
"""

from __future__ import annotations

import numpy as np

from geofed_secure.config import RunConfig
from geofed_secure.errors import FailureCode, MessageError, ProtocolAborted, RemoteProtocolError
from geofed_secure.runtime.secure.layout import SecureInputLayout, SecureRound
from geofed_secure.runtime.secure.session import SecureReply
from geofed_secure.runtime.transcript import SERVER, Transcript
from geofed_secure.secagg.masking import MaskingParameters
from geofed_secure.secagg.masking import primitives as crypto
from geofed_secure.secagg.masking.federation import REPLY_STAGE, MaskingFederation
from geofed_secure.secagg.masking.fixedpoint import automatic_ring_bits
from geofed_secure.secagg.masking.messages import Message, RoundStart, decode
from geofed_secure.secagg.masking.node import MaskingNode
from geofed_secure.secagg.masking.server import MaskingServer
from geofed_secure.secagg.masking.spec import Provisioning
from geofed_secure.secagg.masking.tables import NodeState, ServerState


def ring_bits_of(config: RunConfig) -> int:
    """``secure.ring_bits``, or for 0 the ring :func:`automatic_ring_bits` picks for the provisioned nodes and clip
    (every party derives the same from the shared configuration)."""
    return config.secure.ring_bits or automatic_ring_bits(len(config.nodes), config.secure.clip)


def masking_parameters(config: RunConfig) -> MaskingParameters:
    """The protocol parameters every party derives from the shared configuration (never from the server)."""
    sec = config.secure
    return MaskingParameters(ring_bits=ring_bits_of(config), clip=sec.clip, threshold=sec.threshold or None,
                             degree=sec.neighbors or None, rounds_per_epoch=sec.rounds_per_epoch, colluders=sec.colluders)


def provisioning_for(config: RunConfig, anchor_digest: str, identities: dict[str, bytes]) -> Provisioning:
    """The provisioning of ``config``'s federation: its id, the nodes' identity public keys, anchors, parameters."""
    return Provisioning(federation_id=config.federation.id, identities=dict(sorted(identities.items())),
                        anchor_digest=anchor_digest, parameters=masking_parameters(config))


class MaskingNodeSession:
    """ON THE NODE: its secagg-v1 session across rounds (identity key, epoch keys, the current round).

    ``open`` answers the round's RoundStart with this round's input: a KeyAdvertisement (new epoch) or directly the
    MaskedInput (steady state). A RoundStart that arrives while an older round is still open means the server gave
    that round up: the node abandons it first (SPEC 5.7: an abandoned round's keys are never reused).
    """

    protocol = "masking"

    def __init__(self, node: MaskingNode) -> None:
        self.node = node

    @classmethod
    def for_site(cls, node_id: str, identity_private: bytes, provisioning: Provisioning) -> MaskingNodeSession:
        """A deployed node's session: every secret from the operating system's CSPRNG."""
        return cls(MaskingNode(node_id, identity_private, provisioning, crypto.SystemRandomness()))

    def open(self, blob: bytes, vector: np.ndarray, layout: SecureInputLayout) -> SecureReply:
        start = decode(blob)
        if not isinstance(start, RoundStart):
            raise MessageError(f"the round's first secagg-v1 message must be a RoundStart, got {type(start).__name__}")
        self.abandon()
        return self._reply(self.node.begin_round(start, vector))

    def step(self, blob: bytes) -> SecureReply:
        return self._reply(self.node.receive(decode(blob)))

    def abandon(self) -> None:
        if self.node.state not in (NodeState.READY, NodeState.ABORTED):
            self.node.abandon_round()

    @staticmethod
    def _reply(message: Message) -> SecureReply:
        return SecureReply(REPLY_STAGE[type(message)], message.encode())


class MaskingAggregator:
    """THE SERVER's side of secagg-v1 over any driver; its session (and the epoch's keys) persist across rounds.
    After a server abort the next round opens a new session, hence a new epoch."""

    protocol = "masking"

    def __init__(self, provisioning: Provisioning, *, server: MaskingServer | None = None) -> None:
        self.provisioning = provisioning
        self.server = server or MaskingServer(provisioning)
        self._sent: dict[str, int] = {}
        self._awaiting: set[str] = set()
        self._answered: set[str] = set()
        self._dropped_at: dict[str, str] = {}

    @classmethod
    def in_process(cls, config: RunConfig, anchor_digest: str, *, seed: int | None = None
                   ) -> tuple[MaskingAggregator, dict[str, MaskingNodeSession]]:
        """The server and every node's session in one process (the simulator). ``seed`` is for tests only: None draws
        every key from the OS CSPRNG, as a deployment must."""
        fed = MaskingFederation.provision(tuple(n.id for n in config.nodes), masking_parameters(config), seed=seed,
                                          federation_id=config.federation.id, anchor_digest=anchor_digest)
        return cls(fed.provisioning, server=fed.server), {v: MaskingNodeSession(n) for v, n in fed.nodes.items()}

    def _out(self, round_: int, receiver: str, message: Message, transcript: Transcript, cache: dict[int, bytes]) -> bytes:
        blob = cache.get(id(message))
        if blob is None:  # a broadcast (the roster, an unmask request) is one object for many receivers: encode it once
            blob = cache[id(message)] = message.encode()
        transcript.record(round_, SERVER, receiver, blob, message)
        return blob

    def _send(self, round_: int, outgoing: dict[str, Message], transcript: Transcript) -> dict[str, bytes]:
        cache: dict[int, bytes] = {}
        self._awaiting, self._answered = set(outgoing), set()
        return {v: self._out(round_, v, m, transcript, cache) for v, m in sorted(outgoing.items())}

    def open(self, round_: int, layout: SecureInputLayout, cohort: tuple[str, ...], transcript: Transcript) -> dict[str, bytes]:
        if self.server.state is ServerState.ABORTED:
            self.server = MaskingServer(self.provisioning)
        self._sent, self._dropped_at = dict.fromkeys(cohort, 0), {}
        return self._send(round_, dict(self.server.start_round(round_, layout.length, cohort=tuple(cohort))), transcript)

    def receive(self, round_: int, node_id: str, blob: bytes, transcript: Transcript) -> None:
        try:
            message = decode(blob)
        except MessageError:
            return  # unreadable: nothing usable arrived from this node at this stage
        transcript.record(round_, node_id, SERVER, blob, message)
        self._sent[node_id] = self._sent.get(node_id, 0) + len(blob)
        if getattr(message, "node_id", None) != node_id or node_id not in self._awaiting:
            return  # a message in another node's name, or not asked for: ignored
        try:
            self.server.receive(message)
        except RemoteProtocolError:
            return  # the availability rule (SPEC 5.7): ignored, the sender counts as dropped at this stage
        self._answered.add(node_id)

    def next_stage(self, round_: int, transcript: Transcript) -> dict[str, bytes]:
        stage = self.server.stage
        for v in sorted(self._awaiting - self._answered):
            self._dropped_at.setdefault(v, stage)
        try:
            outgoing = self.server.close_stage()
        except ProtocolAborted:
            self.abandon()
            raise
        return self._send(round_, dict(outgoing), transcript) if outgoing else {}

    def result(self, round_: int, layout: SecureInputLayout, ready: tuple[str, ...]) -> SecureRound:
        outcome = self.server.outcome
        assert outcome is not None and outcome.round == round_
        left_out = {v: FailureCode.DROPPED for v in ready if v not in outcome.contributors}
        return SecureRound(sums=layout.unflatten(outcome.aggregate), contributors=outcome.contributors, left_out=left_out,
                           dropped_at={v: self._dropped_at[v] for v in left_out if v in self._dropped_at},
                           bytes_sent={v: n for v, n in self._sent.items() if v in ready},
                           max_abs_error=outcome.max_abs_error)

    def abandon(self) -> None:
        if self.server.state not in (ServerState.IDLE, ServerState.ABORTED):
            self.server.abandon_round()
