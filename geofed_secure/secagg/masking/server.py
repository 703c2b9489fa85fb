"""The server's side of secagg-v1 (SPEC section 5): :class:`MaskingServer` and its transition table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geofed_secure.errors import (
    LocalProtocolError,
    MessageError,
    ProtocolAborted,
)
from geofed_secure.secagg.common import SERVER
from geofed_secure.secagg.masking import primitives as crypto
from geofed_secure.secagg.masking.messages import (
    ConsistencyRequest,
    ConsistencySignature,
    GraphSeedReveal,
    GraphSeeds,
    KeyAdvertisement,
    KeyRoster,
    MaskedInput,
    Message,
    RoundStart,
    ShareBundle,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
    signed_bytes_of,
    view_signed_bytes,
)
from geofed_secure.secagg.masking.spec import (
    MIN_COHORT,
    EpochPlan,
    Provisioning,
    check_roster,
    is_sparse,
    pairwise_mask,
    plan_epoch,
    self_mask,
)
from geofed_secure.secagg.masking.tables import SERVER_STAGE, SERVER_TRANSITIONS

# ---------------------------------------------------------------------------------------------------------
# Server


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerOutcome:
    round: int
    aggregate: np.ndarray  # float64, decoded sum over contributors
    contributors: tuple[str, ...]
    max_abs_error: float


class MaskingServer:
    """The server's side of secagg-v1. The driver calls :meth:`start_round`, feeds node messages to
    :meth:`receive`, and calls :meth:`close_stage` when every expected node answered or its deadline passed
    (the server has no clock). A node message that is malformed, out of stage or from an unexpected sender
    raises :class:`MessageError` and is ignored (that node counts as dropped at this stage).
    """

    def __init__(self, provisioning: Provisioning) -> None:
        self.provisioning = provisioning
        self.params = provisioning.parameters
        self.state = "idle"
        self.round = 0
        self.plan: EpochPlan | None = None
        self._adverts: dict[str, KeyAdvertisement] = {}
        self._roster: KeyRoster | None = None
        self._reveals: dict[str, GraphSeedReveal] = {}
        self._bundles: dict[str, ShareBundle] = {}
        self._shared: tuple[str, ...] = ()  # U1: epoch members whose shares went out
        self._inputs: dict[str, MaskedInput] = {}
        self._view: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        self._signatures: dict[str, bytes] = {}
        self._responses: dict[str, UnmaskResponse] = {}
        self._vector_length = 0
        self.outcome: ServerOutcome | None = None

    @property
    def stage(self) -> str:
        return SERVER_STAGE[self.state]

    def _move(self, event: str) -> None:
        target = SERVER_TRANSITIONS[self.state].get(event)
        if target is None:
            raise LocalProtocolError(f"server: {event} is not legal in state {self.state!r}")
        self.state = target

    def _abort(self, reason: str) -> ProtocolAborted:
        stage = self.stage
        self.state = "aborted"
        self.plan = None  # an aborted round never reuses its keys
        return ProtocolAborted(reason, party=SERVER, stage=stage)

    def abandon_round(self, reason: str = "abandoned by the driver") -> None:
        """Give up the current round (e.g. honest nodes refused): keys of the epoch are never reused."""
        if self.state not in ("idle", "aborted"):
            self._abort(reason)

    def start_round(self, round_: int, vector_length: int, cohort: tuple[str, ...] | None = None) -> dict[str, RoundStart]:
        """Open ``round_``; returns the RoundStart per node. A new epoch starts when no usable keys exist."""
        if round_ <= self.round:
            raise LocalProtocolError(f"round {round_} does not follow round {self.round}")
        cohort = tuple(sorted(cohort if cohort is not None else self.provisioning.identities))
        unknown = set(cohort) - set(self.provisioning.identities)
        if unknown:
            raise LocalProtocolError(f"cohort holds unprovisioned nodes {sorted(unknown)[:3]}")
        reuse = (self.state == "idle" and self.plan is not None and round_ - self.plan.epoch < self.params.rounds_per_epoch
                 and set(cohort) <= set(self._shared))
        self._move("start_round(same epoch)" if reuse else "start_round(new epoch)")
        self.round = round_
        self._vector_length = vector_length
        self._inputs, self._signatures, self._responses = {}, {}, {}
        self.outcome = None
        if not reuse:
            self.plan, self._adverts, self._roster, self._reveals, self._bundles, self._shared = None, {}, None, {}, {}, ()
        self._expected = cohort
        epoch = self.plan.epoch if reuse and self.plan is not None else round_
        return {v: RoundStart(federation_id=self.provisioning.federation_id, round=round_, epoch=epoch,
                              anchor_digest=self.provisioning.anchor_digest, vector_length=vector_length)
                for v in self._expected}

    # -- receiving ---------------------------------------------------------------------------------
    def receive(self, message: Message) -> None:
        """Hold one node message for the current stage; raises MessageError if it does not belong here."""
        if type(message).__name__ not in SERVER_TRANSITIONS[self.state]:
            raise MessageError(f"server in stage {self.stage} does not accept {type(message).__name__}")
        if message.federation_id != self.provisioning.federation_id:
            raise MessageError(f"{type(message).__name__} for federation {message.federation_id!r}")
        sender = message.node_id
        if sender not in self._expected:
            raise MessageError(f"{type(message).__name__} from {sender!r}, who is not expected at stage {self.stage}")
        number = message.epoch if isinstance(message, KeyAdvertisement | GraphSeedReveal | ShareBundle) else message.round
        if number != self.round:  # during a set-up the epoch is the round number
            raise MessageError(f"{type(message).__name__} from {sender} for round/epoch {number}, expected {self.round} (replayed or stale)")
        store = {KeyAdvertisement: self._adverts, GraphSeedReveal: self._reveals, ShareBundle: self._bundles, MaskedInput: self._inputs,
                 ConsistencySignature: self._signatures, UnmaskResponse: self._responses}[type(message)]
        if sender in store:
            raise MessageError(f"second {type(message).__name__} from {sender} in round {self.round}")
        self._validate(message)
        store[sender] = message.signature if isinstance(message, ConsistencySignature) else message

    def _validate(self, message: Message) -> None:
        plan = self.plan
        if isinstance(message, KeyAdvertisement):
            if not crypto.verify(self.provisioning.identities[message.node_id], message.signature, signed_bytes_of(message)):
                raise MessageError(f"advertisement of {message.node_id} is not signed by its identity key")
            if len(message.mask_keys) != self.params.rounds_per_epoch:
                raise MessageError(f"advertisement of {message.node_id} has {len(message.mask_keys)} round keys")
        elif isinstance(message, GraphSeedReveal):
            advert = self._adverts[message.node_id]
            if crypto.commitment(message.nonce, message.federation_id, message.epoch, message.node_id,
                                 purpose="graph-commit") != advert.graph_commitment:
                raise MessageError(f"graph-seed nonce of {message.node_id} does not match its commitment")
        elif isinstance(message, ShareBundle):
            assert plan is not None
            want = set(plan.neighbours(message.node_id))
            if set(message.sealed) != want:
                raise MessageError(f"share bundle of {message.node_id} is not addressed to exactly its neighbours")
        elif isinstance(message, MaskedInput):
            assert plan is not None
            if message.words.shape[0] != self._vector_length or message.words.dtype != plan.fixed_point.dtype:
                raise MessageError(f"masked input of {message.node_id} has {message.words.shape[0]} words of "
                                   f"{message.words.dtype}, expected {self._vector_length} of {plan.fixed_point.dtype}")
        elif isinstance(message, ConsistencySignature):
            assert plan is not None
            signed = view_signed_bytes(message.federation_id, self.round, plan.roster_digest, *self._view)
            if not crypto.verify(self.provisioning.identities[message.node_id], message.signature, signed):
                raise MessageError(f"consistency signature of {message.node_id} is not over the server's view")
        elif isinstance(message, UnmaskResponse):
            shares = list(message.self_mask_shares.values()) + list(message.mask_key_shares.values())
            if any(len(s) != crypto.SHARE_BYTES for s in shares):
                raise MessageError(f"unmask response of {message.node_id} holds shares of the wrong size")

    # -- closing stages ----------------------------------------------------------------------------
    def close_stage(self) -> dict[str, Message]:
        """End the current stage with what arrived; return the next messages per node ({} when the round is done)."""
        handler = {"collect_advertisements": self._close_advertisements, "collect_reveals": self._close_reveals,
                   "collect_shares": self._close_shares,
                   "collect_inputs": self._close_inputs, "collect_signatures": self._close_signatures,
                   "collect_unmask": self._close_unmask}.get(self.state)
        if handler is None:
            raise LocalProtocolError(f"server: no stage to close in state {self.state!r}")
        return handler()

    def _floor(self) -> int:
        return self.plan.view_floor if self.plan else MIN_COHORT

    def _close_advertisements(self) -> dict[str, Message]:
        adverts = tuple(self._adverts[v] for v in sorted(self._adverts))
        roster = KeyRoster(federation_id=self.provisioning.federation_id, epoch=self.round, advertisements=adverts)
        try:
            members = check_roster(self.provisioning, roster, party=SERVER)
            sparse = is_sparse(self.params.degree, len(members))
            if not sparse:
                self.plan = plan_epoch(self.provisioning, roster, party=SERVER)
        except ProtocolAborted as exc:
            raise self._abort(exc.reason) from None
        self._roster = roster
        self._move("close_stage(SecAgg+ graph)" if sparse else "close_stage(complete graph)")
        self._expected = members
        return {v: roster for v in members}

    def _close_reveals(self) -> dict[str, Message]:
        assert self._roster is not None
        members = tuple(a.node_id for a in self._roster.advertisements)
        missing = [v for v in members if v not in self._reveals]
        if missing:  # choosing a subset of the nonces would let the server grind the graph: never
            raise self._abort(f"{len(missing)} member(s) ({', '.join(missing[:3])}) did not reveal their graph-seed nonce; "
                              "the graph needs every member's nonce, so the epoch set-up is abandoned")
        nonces = {v: self._reveals[v].nonce for v in members}
        try:
            self.plan = plan_epoch(self.provisioning, self._roster, party=SERVER, nonces=nonces)
        except ProtocolAborted as exc:
            raise self._abort(exc.reason) from None
        self._move("close_stage")
        seeds = GraphSeeds(federation_id=self.provisioning.federation_id, epoch=self.round, nonces=nonces)
        return {v: seeds for v in members}

    def _close_shares(self) -> dict[str, Message]:
        assert self.plan is not None
        self._shared = tuple(sorted(self._bundles))
        if len(self._shared) < self._floor():
            raise self._abort(f"only {len(self._shared)} node(s) shared keys; the floor is {self._floor()}")
        self._move("close_stage")
        self._expected = self._shared
        fed = self.provisioning.federation_id
        return {v: ShareDelivery(federation_id=fed, epoch=self.round, receiver=v,
                                 sealed={u: self._bundles[u].sealed[v] for u in self._shared if v in self._bundles[u].sealed})
                for v in self._shared}

    def _close_inputs(self) -> dict[str, Message]:
        alive = tuple(sorted(self._inputs))
        dropped = tuple(v for v in self._shared if v not in self._inputs)
        if len(alive) < self._floor():
            raise self._abort(f"only {len(alive)} masked input(s) arrived; the floor is {self._floor()}")
        self._view = (alive, dropped)
        self._expected = alive
        fed = self.provisioning.federation_id
        assert self.plan is not None
        if not dropped and self.plan.graph_seed is None:  # SecAgg+ epochs always check (SPEC 5.5)
            self._move("close_stage(nobody dropped)")
            request = UnmaskRequest(federation_id=fed, round=self.round, alive=alive, dropped=(), signatures={})
            return {v: request for v in alive}
        self._move("close_stage(dropouts or SecAgg+)")
        check = ConsistencyRequest(federation_id=fed, round=self.round, alive=alive, dropped=dropped)
        return {v: check for v in alive}

    def _close_signatures(self) -> dict[str, Message]:
        alive, dropped = self._view
        missing = sorted(set(alive) - set(self._signatures))
        if missing:  # nodes unmask only a view every survivor signed (SPEC 5.5)
            raise self._abort(f"{len(missing)} survivor(s) ({', '.join(missing[:3])}) did not confirm the view; every "
                              "survivor must sign it, so the round is abandoned")
        self._move("close_stage")
        request = UnmaskRequest(federation_id=self.provisioning.federation_id, round=self.round, alive=alive,
                                dropped=dropped, signatures=dict(self._signatures))
        self._expected = tuple(sorted(self._signatures))
        return {v: request for v in self._expected}

    def _reconstruct(self, owner: str, which: str) -> bytes:
        assert self.plan is not None
        points = [(self.plan.x_of(r.node_id), getattr(r, which)[owner]) for _, r in sorted(self._responses.items())
                  if owner in getattr(r, which)]
        if len(points) < self.plan.threshold:
            raise self._abort(f"only {len(points)} share(s) of {owner!r} arrived; {self.plan.threshold} are needed")
        try:
            return crypto.shamir_combine(points[:self.plan.threshold])
        except ValueError:
            raise self._abort(f"the shares of {owner!r} do not reconstruct a secret (a node sent a bad share)") from None

    def _close_unmask(self) -> dict[str, Message]:
        plan = self.plan
        assert plan is not None
        alive, dropped = self._view
        fed, r, fp, n = self.provisioning.federation_id, self.round, plan.fixed_point, self._vector_length
        i = r - plan.epoch
        total = np.zeros(n, dtype=fp.dtype)
        scratch = crypto.keystream_scratch(n, fp.ring_bits)
        for v in alive:
            total += self._inputs[v].words
        for v in alive:
            seed = self._reconstruct(v, "self_mask_shares")
            if crypto.commitment(seed, fed, r, v) != self._adverts[v].commitments[i]:
                raise self._abort(f"the self-mask seed rebuilt for {v!r} does not match its commitment (bad share)")
            total -= self_mask(seed, fed, r, v, n, fp.ring_bits, scratch)
        for v in dropped:
            private = self._reconstruct(v, "mask_key_shares")
            if crypto.x25519_public(private) != self._adverts[v].mask_keys[i]:
                raise self._abort(f"the mask key rebuilt for {v!r} does not match its advertised key (bad share)")
            key = crypto.X25519Private(private)
            for u in alive:
                if v in plan.neighbours(u):  # u masked with v: remove what u added
                    mask = pairwise_mask(key.exchange(self._adverts[u].mask_keys[i]), fed, r, u, v, n, fp.ring_bits, scratch)
                    if u < v:
                        total -= mask
                    else:
                        total += mask
        self.outcome = ServerOutcome(round=r, aggregate=fp.decode(total), contributors=alive,
                                     max_abs_error=fp.max_abs_error(len(alive)))
        self._move("close_stage")
        self._expected = ()
        return {}



