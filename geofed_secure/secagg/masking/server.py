"""The server's side of secagg-v1 (SPEC section 5): :class:`MaskingServer`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from geofed_secure.errors import (
    ProtocolAborted,
    RemoteProtocolError,
)
from geofed_secure.secagg.common import SERVER
from geofed_secure.secagg.machine import StateMachine
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
    pairwise_mask,
    plan_epoch,
    self_mask,
)
from geofed_secure.secagg.masking.tables import (
    SERVER_EVENT_OF,
    SERVER_STAGE,
    SERVER_TRANSITIONS,
    Guard,
    ServerEvent,
    ServerState,
    graph_guard,
    refusal,
    start_round_guard,
    view_guard,
)

# ---------------------------------------------------------------------------------------------------------
# Server


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerOutcome:
    round: int
    aggregate: np.ndarray  # float64, decoded sum over contributors
    contributors: tuple[str, ...]
    max_abs_error: float


class MaskingServer(StateMachine[ServerState, ServerEvent]):
    """The server's side of secagg-v1. The driver calls :meth:`start_round`, feeds node messages to
    :meth:`receive`, and calls :meth:`close_stage` when every expected node answered or its deadline passed
    (the server has no clock).

    Errors (SPEC 5.7): a node message that is malformed, out of stage or from an unexpected sender raises
    :class:`~geofed_secure.errors.RemoteProtocolError` and is ignored, the state kept (the availability rule: that
    node counts as dropped at this stage). A stage that cannot complete raises :class:`ProtocolAborted`; the
    driver's own out-of-order call raises :class:`~geofed_secure.errors.LocalProtocolError`. After either the
    session is aborted for good: start a new one (a new epoch).

    The server draws nothing random: every message and result is a function of the provisioning, the driver's
    calls and the node messages, so a run whose nodes are seeded replays byte for byte. It therefore takes no
    ``rng`` (a node does: SPEC 2.9).
    """

    TRANSITIONS = SERVER_TRANSITIONS
    ABORTED = ServerState.ABORTED
    REFUSAL = functools.partial(refusal, "server")
    party = SERVER

    def __init__(self, provisioning: Provisioning) -> None:
        super().__init__(ServerState.IDLE)
        self.provisioning = provisioning
        self.params = provisioning.parameters
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
        self._expected: tuple[str, ...] = ()
        self.outcome: ServerOutcome | None = None
        self._closers: dict[ServerState, Callable[[], dict[str, Message]]] = {
            ServerState.COLLECT_ADVERTISEMENTS: self._close_advertisements, ServerState.COLLECT_REVEALS: self._close_reveals,
            ServerState.COLLECT_SHARES: self._close_shares, ServerState.COLLECT_INPUTS: self._close_inputs,
            ServerState.COLLECT_SIGNATURES: self._close_signatures, ServerState.COLLECT_UNMASK: self._close_unmask}

    @property
    def stage(self) -> str:
        return SERVER_STAGE[self.state]

    def _forget(self) -> None:
        self.plan, self._shared = None, ()  # an aborted session never reuses its keys

    def _abort(self, reason: str, stage: str = "") -> ProtocolAborted:
        return super()._abort(reason, stage or self.stage)

    def abandon_round(self) -> None:
        """Give up the current round (e.g. honest nodes refused): back to ``idle``, and the epoch's keys are never
        reused (the next round starts a new epoch). In ``idle`` there is no round to give up: nothing changes."""
        before = self.state
        self._move(ServerEvent.ABANDON_ROUND)
        if before is not ServerState.IDLE:
            self.plan, self._shared, self._expected = None, (), ()

    def start_round(self, round_: int, vector_length: int, cohort: tuple[str, ...] | None = None) -> dict[str, RoundStart]:
        """Open ``round_``; returns the RoundStart per node. A new epoch starts when no usable keys exist
        (:func:`~.tables.start_round_guard`)."""
        self._alive()
        cohort = tuple(sorted(cohort if cohort is not None else self.provisioning.identities))
        guard = start_round_guard(round_, cohort, epoch=self.plan.epoch if self.plan is not None else None,
                                  shared=self._shared, rounds_per_epoch=self.params.rounds_per_epoch)
        target = self._target(ServerEvent.START_ROUND, guard)
        if round_ <= self.round:
            raise self._misuse(f"round {round_} does not follow round {self.round}")
        unknown = set(cohort) - set(self.provisioning.identities)
        if unknown:
            raise self._misuse(f"cohort holds unprovisioned nodes {sorted(unknown)[:3]}")
        reuse = guard is Guard.SAME_EPOCH
        self.state = target
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
        """Hold one node message for the current stage.

        A message that does not belong here raises :class:`~geofed_secure.errors.RemoteProtocolError` and changes
        nothing (the availability rule, SPEC 5.7): the driver ignores it and that node counts as dropped.
        """
        self._alive()
        if not isinstance(message, KeyAdvertisement | GraphSeedReveal | ShareBundle | MaskedInput | ConsistencySignature
                          | UnmaskResponse):
            raise RemoteProtocolError(f"server: {type(message).__name__} is not a message a node sends")
        event = SERVER_EVENT_OF[type(message)]
        self._target(event)
        if message.federation_id != self.provisioning.federation_id:
            raise self._refuse(event, f"{event} for federation {message.federation_id!r}")
        sender = message.node_id
        if sender not in self._expected:
            raise self._refuse(event, f"{event} from {sender!r}, who is not expected at stage {self.stage}")
        number = message.epoch if isinstance(message, KeyAdvertisement | GraphSeedReveal | ShareBundle) else message.round
        if number != self.round:  # during a set-up the epoch is the round number
            raise self._refuse(event, f"{event} from {sender} for round/epoch {number}, expected {self.round} (replayed or stale)")
        stores: dict[type, dict[str, Any]] = {
            KeyAdvertisement: self._adverts, GraphSeedReveal: self._reveals, ShareBundle: self._bundles, MaskedInput: self._inputs,
            ConsistencySignature: self._signatures, UnmaskResponse: self._responses}
        store = stores[type(message)]
        if sender in store:
            raise self._refuse(event, f"second {event} from {sender} in round {self.round}")
        problem = self._problem(message)
        if problem:
            raise self._refuse(event, problem)
        store[sender] = message.signature if isinstance(message, ConsistencySignature) else message

    def _problem(self, message: Message) -> str:
        """Why a node message in its stage fails the server's checks ("" when it passes)."""
        plan = self.plan
        if isinstance(message, KeyAdvertisement):
            if not crypto.verify(self.provisioning.identities[message.node_id], message.signature, signed_bytes_of(message)):
                return f"advertisement of {message.node_id} is not signed by its identity key"
            if len(message.mask_keys) != self.params.rounds_per_epoch:
                return f"advertisement of {message.node_id} has {len(message.mask_keys)} round keys"
        elif isinstance(message, GraphSeedReveal):
            advert = self._adverts[message.node_id]
            if crypto.commitment(message.nonce, message.federation_id, message.epoch, message.node_id,
                                 purpose="graph-commit") != advert.graph_commitment:
                return f"graph-seed nonce of {message.node_id} does not match its commitment"
        elif isinstance(message, ShareBundle):
            assert plan is not None
            want = set(plan.neighbours(message.node_id))
            if set(message.sealed) != want:
                return f"share bundle of {message.node_id} is not addressed to exactly its neighbours"
        elif isinstance(message, MaskedInput):
            assert plan is not None
            if message.words.shape[0] != self._vector_length or message.words.dtype != plan.fixed_point.dtype:
                return (f"masked input of {message.node_id} has {message.words.shape[0]} words of "
                        f"{message.words.dtype}, expected {self._vector_length} of {plan.fixed_point.dtype}")
        elif isinstance(message, ConsistencySignature):
            assert plan is not None
            signed = view_signed_bytes(message.federation_id, self.round, plan.roster_digest, *self._view)
            if not crypto.verify(self.provisioning.identities[message.node_id], message.signature, signed):
                return f"consistency signature of {message.node_id} is not over the server's view"
        elif isinstance(message, UnmaskResponse):
            shares = list(message.self_mask_shares.values()) + list(message.mask_key_shares.values())
            if any(len(s) != crypto.SHARE_BYTES for s in shares):
                return f"unmask response of {message.node_id} holds shares of the wrong size"
        return ""

    # -- closing stages ----------------------------------------------------------------------------
    def close_stage(self) -> dict[str, Message]:
        """End the current stage with what arrived; return the next messages per node ({} when the round is done)."""
        self._check(ServerEvent.CLOSE_STAGE)
        return self._closers[self.state]()

    def _floor(self) -> int:
        return self.plan.view_floor if self.plan else MIN_COHORT

    def _close_advertisements(self) -> dict[str, Message]:
        roster = KeyRoster.of(self.provisioning.federation_id, self.round, self._adverts.values())
        try:
            members = check_roster(self.provisioning, roster, party=SERVER)
            guard = graph_guard(self.params.degree, len(members))
            if guard is Guard.COMPLETE_GRAPH:
                self.plan = plan_epoch(self.provisioning, roster, party=SERVER)
        except ProtocolAborted as exc:
            raise self._abort(exc.reason) from None
        self._roster = roster
        self._move(ServerEvent.CLOSE_STAGE, guard)
        self._expected = members
        return {v: roster for v in members}

    def _close_reveals(self) -> dict[str, Message]:
        assert self._roster is not None
        members = self._roster.members
        missing = [v for v in members if v not in self._reveals]
        if missing:  # choosing a subset of the nonces would let the server grind the graph: never
            raise self._abort(f"{len(missing)} member(s) ({', '.join(missing[:3])}) did not reveal their graph-seed nonce; "
                              "the graph needs every member's nonce, so the epoch set-up is abandoned")
        nonces = {v: self._reveals[v].nonce for v in members}
        try:
            self.plan = plan_epoch(self.provisioning, self._roster, party=SERVER, nonces=nonces)
        except ProtocolAborted as exc:
            raise self._abort(exc.reason) from None
        self._move(ServerEvent.CLOSE_STAGE)
        seeds = GraphSeeds(federation_id=self.provisioning.federation_id, epoch=self.round, nonces=nonces)
        return {v: seeds for v in members}

    def _close_shares(self) -> dict[str, Message]:
        assert self.plan is not None
        self._shared = tuple(sorted(self._bundles))
        if len(self._shared) < self._floor():
            raise self._abort(f"only {len(self._shared)} node(s) shared keys; the floor is {self._floor()}")
        self._move(ServerEvent.CLOSE_STAGE)
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
        guard = view_guard(dropped, sparse_epoch=self.plan.graph_seed is not None)  # SecAgg+ epochs always check (SPEC 5.5)
        self._move(ServerEvent.CLOSE_STAGE, guard)
        if guard is Guard.NOBODY_DROPPED:
            request = UnmaskRequest(federation_id=fed, round=self.round, alive=alive, dropped=(), signatures={})
            return {v: request for v in alive}
        check = ConsistencyRequest(federation_id=fed, round=self.round, alive=alive, dropped=dropped)
        return {v: check for v in alive}

    def _close_signatures(self) -> dict[str, Message]:
        alive, dropped = self._view
        missing = sorted(set(alive) - set(self._signatures))
        if missing:  # nodes unmask only a view every survivor signed (SPEC 5.5)
            raise self._abort(f"{len(missing)} survivor(s) ({', '.join(missing[:3])}) did not confirm the view; every "
                              "survivor must sign it, so the round is abandoned")
        self._move(ServerEvent.CLOSE_STAGE)
        self._expected = tuple(sorted(self._signatures))
        fed, plan = self.provisioning.federation_id, self.plan
        assert plan is not None
        if not plan.sparse:
            request = UnmaskRequest(federation_id=fed, round=self.round, alive=alive, dropped=dropped,
                                    signatures=dict(self._signatures))
            return {v: request for v in self._expected}
        # SecAgg+: each node gets the signatures it checks (its scope, O(degree)), not all n of them
        out: dict[str, Message] = {}
        for v in self._expected:
            scope = plan.signature_scope(v)
            out[v] = UnmaskRequest(federation_id=fed, round=self.round, alive=alive, dropped=dropped,
                                   signatures={u: sig for u, sig in self._signatures.items() if u in scope})
        return out

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
        scratch = crypto.reusable("mask-keystream", n * fp.ring_bits // 8 + 16)
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
        self._move(ServerEvent.CLOSE_STAGE)
        self._expected = ()
        return {}



