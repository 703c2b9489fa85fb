"""The node's side of secagg-v1 (SPEC section 5): :class:`MaskingNode`.

:class:`MaskingNode` and :class:`MaskingServer` never touch a socket, a clock or a thread: a driver (the
in-process simulator, the tests, the federation runtime, Flower) moves their messages. Transitions are data
(:data:`~.tables.NODE_TRANSITIONS`, guards included) behind the gate of
:class:`~geofed_secure.secagg.machine.StateMachine`; the state tables in ``protocols/secagg-v1/SPEC.md`` are
generated from them. Any message that is illegal in the current state, or any dishonest-server behaviour a node can
detect, makes the node raise :class:`~geofed_secure.errors.ProtocolAborted` and stay ABORTED, having revealed
nothing for that round beyond what it had already sent; our own misuse raises
:class:`~geofed_secure.errors.LocalProtocolError` and aborts too.

What each party learns, and the node-side rules that make it so: the package docstring
(:mod:`geofed_secure.secagg.masking`) and SPEC section 6.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geofed_secure.errors import (
    DataError,
    LocalProtocolError,
    ProtocolAborted,
)
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
    advertisement_signed_bytes,
    view_signed_bytes,
)
from geofed_secure.secagg.masking.spec import (
    EpochPlan,
    Provisioning,
    channel_key,
    check_roster,
    holder_advertisements,
    pairwise_mask,
    plan_epoch,
    roster_digest,
    self_mask,
    share_header,
)
from geofed_secure.secagg.masking.tables import (
    NODE_TRANSITIONS,
    Guard,
    NodeEvent,
    NodeState,
    graph_guard,
    refusal,
    round_start_guard,
    unmask_guard,
)

# ---------------------------------------------------------------------------------------------------------
# Node


@dataclass
class _NodeEpochSecrets:
    channel_private: bytes
    mask_privates: list[bytes]
    seeds: list[bytes]
    graph_nonce: bytes
    plan: EpochPlan | None = None
    roster: KeyRoster | None = None  # held between the roster and the graph seeds (SecAgg+)
    roster_digest: bytes = b""  # of that roster, hashed when it arrived
    own_shares: dict[str, list[tuple[bytes, bytes]]] = field(default_factory=dict)  # owner -> per round (key, seed) share
    peers: tuple[str, ...] = ()  # neighbours whose shares arrived: the nodes this node masks with
    adverts: dict[str, KeyAdvertisement] = field(default_factory=dict)
    channel_secrets: dict[str, bytes] = field(default_factory=dict)  # X25519(c_u, C_v) per neighbour, computed once
    scope: frozenset[str] | None = None  # whose view signatures this node checks, computed once per epoch
    loaded_keys: dict[bytes, crypto.X25519Private] = field(default_factory=dict, repr=False)  # never pickled

    def loaded(self, private: bytes) -> crypto.X25519Private:
        """The X25519 key object of one of this epoch's private keys, loaded once (loading costs an exchange)."""
        key = self.loaded_keys.get(private)
        if key is None:
            key = self.loaded_keys[private] = crypto.X25519Private(private)
        return key

    def channel_secret(self, peer: str) -> bytes:
        if peer not in self.channel_secrets:
            self.channel_secrets[peer] = self.loaded(self.channel_private).exchange(self.adverts[peer].channel_key)
        return self.channel_secrets[peer]

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (a site keeps its session on disk between messages): loaded key objects are rebuilt on use."""
        return {**self.__dict__, "loaded_keys": {}}


class MaskingNode(StateMachine[NodeState, NodeEvent]):
    """One node's side of secagg-v1. Methods return the message to send to the server.

    ``rng`` supplies every secret, in the order SPEC 2.9 fixes (keys, seeds, graph nonce, Shamir coefficients,
    rounding draws); inject :class:`~geofed_secure.secagg.masking.primitives.DeterministicRandomness` for reproducible
    runs and vectors.
    """

    TRANSITIONS = NODE_TRANSITIONS
    ABORTED = NodeState.ABORTED

    REFUSAL = functools.partial(refusal, "node")

    def __init__(self, node_id: str, identity_private: bytes, provisioning: Provisioning, rng: crypto.Randomness) -> None:
        if node_id not in provisioning.identities:
            raise LocalProtocolError(f"{node_id!r} is not a provisioned node of {provisioning.federation_id!r}")
        super().__init__(NodeState.READY)
        self.party = node_id
        self.node_id = node_id
        self.provisioning = provisioning
        self.params = provisioning.parameters
        self._identity = identity_private
        self._rng = rng
        self.round = 0  # current (or last) round
        self.epoch: _NodeEpochSecrets | None = None
        self.clipped = 0  # coordinates clipped in the current round's input
        self._vector: np.ndarray | None = None
        self._view: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._advertised: KeyAdvertisement | None = None
        self._view_signature = b""  # this node's signature over the view it signed this round

    # -- plumbing -----------------------------------------------------------------------------------
    def _sign(self, message: bytes) -> bytes:
        signer = self.__dict__.get("_signer")
        if signer is None:  # loaded once per session (parsing the seed cost as much as a signature)
            signer = self._signer = crypto.Ed25519Signer(self._identity)
        return signer.sign(message)

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (a site keeps its session on disk between messages): the loaded key object is rebuilt on use."""
        return {k: v for k, v in self.__dict__.items() if k != "_signer"}

    def _forget(self) -> None:
        self._vector, self._view, self._view_signature = None, None, b""

    def _accept(self, message: Message, event: NodeEvent, guard: Guard | None, stage: str) -> NodeState:
        """The state ``message`` leads to (the table's row for ``event`` under ``guard``), or the refusal."""
        target = self._target(event, guard, stage=stage)
        fed = message.federation_id
        if fed != self.provisioning.federation_id:
            raise self._abort(f"message for federation {fed!r}", stage)
        return target

    @property
    def _sparse_epoch(self) -> bool:
        return self.epoch is not None and self.epoch.plan is not None and self.epoch.plan.graph_seed is not None

    @property
    def _signature_scope(self) -> frozenset[str]:
        """Whose view signatures this node checks (EpochPlan.signature_scope), computed once per epoch."""
        assert self.epoch is not None and self.epoch.plan is not None
        if self.epoch.scope is None:
            self.epoch.scope = self.epoch.plan.signature_scope(self.node_id)
        return self.epoch.scope

    def _expect_round(self, got: int, stage: str) -> None:
        if got != self.round:
            raise self._abort(f"message for round {got} during round {self.round} (replayed or stale)", stage)

    # -- stage 0: a round starts ---------------------------------------------------------------------
    def begin_round(self, start: RoundStart, vector: np.ndarray) -> KeyAdvertisement | MaskedInput:
        """Take the round's input (1-D float vector of ``start.vector_length``); answer with keys or the masked input.

        A vector of another shape, or with NaN/inf, raises :class:`DataError` and leaves the session as it was.
        """
        self._alive()
        if not isinstance(start, RoundStart):
            raise self._misuse(f"begin_round takes a RoundStart, got {type(start).__name__}")
        guard = round_start_guard(start)
        stage = "advertise_keys" if guard is Guard.NEW_EPOCH else "masked_input"
        target = self._accept(start, NodeEvent.ROUND_START, guard, stage)
        if start.round <= self.round:
            raise self._abort(f"round {start.round} does not follow round {self.round} (replayed round start)", stage)
        if start.anchor_digest != self.provisioning.anchor_digest:
            raise self._abort("the anchor digest changed: the node refuses an anchor set it was not provisioned with", stage)
        x = np.asarray(vector, dtype=np.float64)
        if x.ndim != 1 or x.shape[0] != start.vector_length:
            raise DataError(f"{self.node_id}: input must be a 1-D vector of {start.vector_length} values, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise DataError(f"{self.node_id}: input has NaN/inf; refusing to mask it (fix the update before aggregation)")
        if target is NodeState.ADVERTISED:
            self.round = start.round
            self._vector = x
            self.state = target
            return self._advertise(start.round)
        ep = self.epoch
        if ep is None or ep.plan is None or ep.plan.epoch != start.epoch or not 0 <= start.round - start.epoch < self.params.rounds_per_epoch:
            raise self._abort(f"no keys for epoch {start.epoch} round {start.round}; the server must start a new epoch", stage)
        if self.node_id not in ep.plan.members:
            raise self._abort("this node is not a member of the epoch", stage)
        self.round = start.round
        self._vector = x
        self.state = target
        return self._masked_input()

    def _advertise(self, epoch: int) -> KeyAdvertisement:
        # Draw order is part of the spec (2.9): channel key, then per round (mask key, self-mask seed), then the nonce.
        channel = crypto.x25519_generate(self._rng)
        loaded = {channel.private: channel}
        mask_privates, mask_publics, seeds, commitments = [], [], [], []
        fed = self.provisioning.federation_id
        for i in range(self.params.rounds_per_epoch):
            key = crypto.x25519_generate(self._rng)
            seed = self._rng.token(crypto.KEY_BYTES)
            loaded[key.private] = key
            mask_privates.append(key.private)
            mask_publics.append(key.public_bytes())
            seeds.append(seed)
            commitments.append(crypto.commitment(seed, fed, epoch + i, self.node_id))
        nonce = self._rng.token(crypto.KEY_BYTES)
        self.epoch = _NodeEpochSecrets(channel_private=channel.private, mask_privates=mask_privates, seeds=seeds, graph_nonce=nonce,
                                       loaded_keys=loaded)
        fields: dict[str, Any] = {"federation_id": fed, "epoch": epoch, "node_id": self.node_id, "channel_key": channel.public_bytes(),
                      "mask_keys": tuple(mask_publics), "commitments": tuple(commitments),
                      "graph_commitment": crypto.commitment(nonce, fed, epoch, self.node_id, purpose="graph-commit")}
        self._advertised = KeyAdvertisement(**fields, signature=self._sign(advertisement_signed_bytes(**fields)))
        return self._advertised

    # -- stage 1: share keys -------------------------------------------------------------------------
    def receive(self, message: Message) -> Message:
        """Handle one server message; return the answer. Illegal or dishonest input raises ProtocolAborted."""
        self._alive()
        handlers: dict[type, Callable[[Any], Message]] = {KeyRoster: self._on_roster, GraphSeeds: self._on_graph_seeds, ShareDelivery: self._on_delivery,
                    ConsistencyRequest: self._on_consistency, UnmaskRequest: self._on_unmask}
        handler = handlers.get(type(message))
        if handler is None:
            if isinstance(message, RoundStart):
                raise self._misuse("a RoundStart goes through begin_round(start, vector)")
            raise self._abort(f"{type(message).__name__} is not a message a server sends", "unknown")
        return handler(message)

    def abandon_round(self) -> None:
        """Driver's call when this node's round ended without it (timeout, lost messages): back to ``ready``.

        Keys of a finished epoch set-up are kept (later rounds of the epoch use their own, unrevealed keys);
        an unfinished set-up is discarded.
        """
        before = self.state
        self._move(NodeEvent.ABANDON_ROUND)
        if before in (NodeState.ADVERTISED, NodeState.REVEALED, NodeState.SHARED):
            self.epoch = None
        self._vector, self._view, self._view_signature = None, None, b""

    def _on_roster(self, roster: KeyRoster) -> ShareBundle | GraphSeedReveal:
        stage = "share_keys"
        target = self._accept(roster, NodeEvent.KEY_ROSTER, graph_guard(self.params.degree, len(roster.graph_commitments)), stage)
        if roster.epoch != self.round:
            raise self._abort(f"roster for epoch {roster.epoch} during the set-up of epoch {self.round} (replayed)", stage)
        assert self.epoch is not None and self._advertised is not None
        try:
            members = check_roster(self.provisioning, roster, party=self.node_id)
        except ProtocolAborted:  # a security stop found by a shared check: this session ends too
            self._enter_aborted()
            raise
        i = bisect.bisect_left(members, self.node_id)
        if (i == len(members) or members[i] != self.node_id or roster.advertisements[i] != self._advertised.encode()
                or roster.graph_commitments[self.node_id] != self._advertised.graph_commitment):
            raise self._abort("the roster does not hold this node's own advertisement unchanged (dropped or replaced)", stage)
        self.epoch.roster, self.epoch.roster_digest = roster, roster_digest(roster)
        if target is NodeState.REVEALED:  # SecAgg+: the graph waits for every member's nonce (commit-reveal, SPEC 5.2)
            self.state = target
            return GraphSeedReveal(federation_id=roster.federation_id, epoch=roster.epoch, node_id=self.node_id,
                                   nonce=self.epoch.graph_nonce)
        return self._share_keys(self._plan(roster, None), target)

    def _on_graph_seeds(self, seeds: GraphSeeds) -> ShareBundle:
        stage = "share_keys"
        target = self._accept(seeds, NodeEvent.GRAPH_SEEDS, None, stage)
        assert self.epoch is not None and self.epoch.roster is not None
        if seeds.epoch != self.epoch.roster.epoch:
            raise self._abort(f"graph seeds for epoch {seeds.epoch} during the set-up of epoch {self.epoch.roster.epoch}", stage)
        if seeds.nonces.get(self.node_id) != self.epoch.graph_nonce:
            raise self._abort("the graph seeds do not carry this node's own nonce unchanged", stage)
        return self._share_keys(self._plan(self.epoch.roster, seeds.nonces), target)

    def _plan(self, roster: KeyRoster, nonces: Mapping[str, bytes] | None) -> EpochPlan:
        try:
            assert self.epoch is not None and self.epoch.roster is roster
            plan = plan_epoch(self.provisioning, roster, party=self.node_id, nonces=nonces, digest=self.epoch.roster_digest)
            self.epoch.adverts = holder_advertisements(self.provisioning, roster, plan, party=self.node_id)
            return plan
        except ProtocolAborted:  # a security stop found by a shared check: this session ends too
            self._enter_aborted()
            raise

    def _share_keys(self, plan: EpochPlan, target: NodeState) -> ShareBundle:
        assert self.epoch is not None
        self.epoch.plan = plan
        self.epoch.roster = None
        holders = plan.holders[self.node_id]
        xs = [plan.x_of(h) for h in holders]
        # Coefficient draws in this order (SPEC 2.9): per round, the mask key's polynomial, then the seed's.
        per_round = [(crypto.shamir_split(self.epoch.mask_privates[i], plan.threshold, xs, self._rng),
                      crypto.shamir_split(self.epoch.seeds[i], plan.threshold, xs, self._rng))
                     for i in range(self.params.rounds_per_epoch)]
        sealed = {}
        fed = self.provisioning.federation_id
        for j, holder in enumerate(holders):
            shares = [(key_shares[j], seed_shares[j]) for key_shares, seed_shares in per_round]
            if holder == self.node_id:
                self.epoch.own_shares[self.node_id] = shares
                continue
            key = channel_key(self.epoch.channel_secret(holder), fed, plan.epoch, self.node_id, holder)
            plaintext = b"".join(k + s for k, s in shares)
            sealed[holder] = crypto.seal(key, plaintext, share_header(fed, plan.epoch, self.node_id, holder, plan.roster_digest))
        self.state = target
        return ShareBundle(federation_id=fed, epoch=plan.epoch, node_id=self.node_id, sealed=sealed)

    def _on_delivery(self, delivery: ShareDelivery) -> MaskedInput:
        stage = "masked_input"
        target = self._accept(delivery, NodeEvent.SHARE_DELIVERY, None, stage)
        assert self.epoch is not None and self.epoch.plan is not None
        plan = self.epoch.plan
        if delivery.epoch != plan.epoch or delivery.receiver != self.node_id:
            raise self._abort(f"share delivery for {delivery.receiver!r} in epoch {delivery.epoch} (misrouted or replayed)", stage)
        neighbours = set(plan.neighbours(self.node_id))
        if not set(delivery.sealed) <= neighbours:
            raise self._abort(f"shares from non-neighbours {sorted(set(delivery.sealed) - neighbours)[:3]}", stage)
        fed = self.provisioning.federation_id
        size = 2 * crypto.SHARE_BYTES
        for sender, blob in delivery.sealed.items():
            key = channel_key(self.epoch.channel_secret(sender), fed, plan.epoch, sender, self.node_id)
            try:
                plaintext = crypto.unseal(key, blob, share_header(fed, plan.epoch, sender, self.node_id, plan.roster_digest))
            except crypto.DecryptionFailed:
                raise self._abort(f"shares from {sender!r} failed authentication (forged, tampered, or sealed under "
                                  "another roster)", stage) from None
            if len(plaintext) != size * self.params.rounds_per_epoch:
                raise self._abort(f"shares from {sender!r} have the wrong length", stage)
            self.epoch.own_shares[sender] = [(plaintext[i * size:i * size + crypto.SHARE_BYTES],
                                              plaintext[i * size + crypto.SHARE_BYTES:(i + 1) * size])
                                             for i in range(self.params.rounds_per_epoch)]
        self.epoch.peers = tuple(sorted(delivery.sealed))
        if len(self.epoch.peers) + 1 < plan.threshold:
            raise self._abort(f"only {len(self.epoch.peers)} neighbours shared keys; the threshold is {plan.threshold}", stage)
        self.state = target
        return self._masked_input()

    # -- stage 2: masked input -----------------------------------------------------------------------
    def _masked_input(self) -> MaskedInput:
        ep = self.epoch
        assert ep is not None and ep.plan is not None and self._vector is not None
        plan, fed, r = ep.plan, self.provisioning.federation_id, self.round
        i = r - plan.epoch
        fp = plan.fixed_point
        rounding_key = crypto.derive_key(self._rng.token(crypto.KEY_BYTES), "rounding", fed, r, self.node_id)
        n = self._vector.shape[0]
        # the keystreams and draws go to this thread's buffers, reused round after round (the words are copied into
        # the message); the draws are ours and are rounded in place
        draws = crypto.uniform_draws(rounding_key, n, scratch=crypto.reusable("rounding-keystream", 8 * n + 16),
                                     out=crypto.reusable("rounding-draws", 8 * n).view(np.float64))
        words, self.clipped = fp.encode(self._vector, draws, consume_draws=True,
                                        out=crypto.reusable("masked-words", n * fp.ring_bits // 8).view(fp.dtype),
                                        scratch=crypto.reusable("scaled-input", 8 * n).view(np.float64))
        scratch = crypto.reusable("mask-keystream", n * fp.ring_bits // 8 + 16)
        words += self_mask(ep.seeds[i], fed, r, self.node_id, n, fp.ring_bits, scratch)
        mask_key = ep.loaded(ep.mask_privates[i])
        for peer in ep.peers:
            mask = pairwise_mask(mask_key.exchange(ep.adverts[peer].mask_keys[i]), fed, r, self.node_id, peer, n, fp.ring_bits, scratch)
            if self.node_id < peer:
                words += mask
            else:
                words -= mask
        self._vector = None
        return MaskedInput(federation_id=fed, round=r, node_id=self.node_id, words=words)

    # -- stage 3: consistency check ------------------------------------------------------------------
    def _check_view(self, alive: tuple[str, ...], dropped: tuple[str, ...], stage: str) -> None:
        """The survivor rules of SPEC 5.4, on the check path and on the fast path alike."""
        assert self.epoch is not None and self.epoch.plan is not None
        plan, peers = self.epoch.plan, set(self.epoch.peers)
        both = sorted(set(alive) & set(dropped))
        if both:
            raise self._abort(f"{both[0]!r} is listed both alive and dropped (the server would get both of its secrets)", stage)
        if self.node_id not in alive:
            raise self._abort("this node is not listed alive", stage)
        unknown = sorted((set(alive) | set(dropped)) - set(plan.members))
        if unknown:
            raise self._abort(f"view lists non-members {unknown[:3]}", stage)
        if len(alive) < plan.view_floor:
            raise self._abort(f"only {len(alive)} survivor(s); an answered view needs {plan.view_floor} (more than half "
                              "the epoch's members plus colluders, at least the threshold and 3)", stage)
        # Bonawitz et al. 2017, round 3: the survivors must be among the nodes this node masked with.
        strangers = sorted((set(alive) & set(plan.neighbours(self.node_id))) - peers)
        if strangers:
            raise self._abort(f"the view lists {strangers[:3]} alive, but this node never received their shares and did "
                              "not mask with them (the server withheld shares to isolate this node)", stage)
        unlisted = sorted(peers - set(alive) - set(dropped))
        if unlisted:
            raise self._abort(f"the view omits {unlisted[:3]}, with whom this node masked", stage)
        kept = len(peers & set(alive))
        if kept + 1 < plan.threshold:
            raise self._abort(f"only {kept} of the {len(peers)} peers this node masked with are listed alive; with fewer "
                              f"than {plan.threshold - 1} its input would lose its masks", stage)
        thin = plan.quorum_shortfall(self.node_id, alive, dropped)
        if thin is not None:
            raise self._abort(f"the view lists only {thin[1]} of the {len(plan.holders[thin[0]])} share holders of "
                              f"{thin[0]!r} alive; {plan.quorum} must be, so that no other view can be answered for it "
                              "in this round", stage)

    def _on_consistency(self, request: ConsistencyRequest) -> ConsistencySignature:
        stage = "consistency_check"
        target = self._accept(request, NodeEvent.CONSISTENCY_REQUEST, None, stage)
        self._expect_round(request.round, stage)
        self._check_view(request.alive, request.dropped, stage)
        assert self.epoch is not None and self.epoch.plan is not None
        self._view = (request.alive, request.dropped)
        fed = self.provisioning.federation_id
        signed = view_signed_bytes(fed, self.round, self.epoch.plan.roster_digest, request.alive, request.dropped)
        self.state = target
        self._view_signature = self._sign(signed)
        return ConsistencySignature(federation_id=fed, round=self.round, node_id=self.node_id,
                                    signature=self._view_signature)

    # -- stage 4: unmask -----------------------------------------------------------------------------
    def _on_unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        stage = "unmask"
        target = self._accept(request, NodeEvent.UNMASK_REQUEST, unmask_guard(request, sparse_epoch=self._sparse_epoch), stage)
        self._expect_round(request.round, stage)
        self._check_view(request.alive, request.dropped, stage)
        ep = self.epoch
        assert ep is not None and ep.plan is not None
        plan, fed = ep.plan, self.provisioning.federation_id
        if self.state is NodeState.SIGNED:
            if (request.alive, request.dropped) != self._view:
                raise self._abort("the unmask request's survivor view differs from the view this node signed", stage)
            # Every survivor in this node's signature scope (all of them in the complete graph, the nearest
            # 6 ceil(k/2) + 1 on a SecAgg+ ring) must have signed this very view: a survivor that refused it (e.g.
            # because it did not mask with the others) is never unmasked without its consent, and no other view
            # can be answered for any owner whose share this node reveals (SPEC 5.5 rule 4, section 6).
            strangers = sorted(set(request.signatures) - set(request.alive))
            if strangers:
                raise self._abort(f"the request carries signatures of {strangers[:3]}, who are not listed alive: survivor "
                                  "sets differ between nodes", stage)
            scope = self._signature_scope
            required = [v for v in request.alive if v in scope]
            missing = [v for v in required if v not in request.signatures]
            if missing:
                raise self._abort(f"survivors {missing[:3]} did not confirm the view; every survivor within this node's "
                                  "signature scope must sign it", stage)
            signed = view_signed_bytes(fed, self.round, plan.roster_digest, request.alive, request.dropped)
            for signer in required:
                signature = request.signatures[signer]
                if signer == self.node_id and signature == self._view_signature:
                    continue  # its own signature over the view it signed (checked equal above): nothing to verify
                public = self.provisioning.identities.get(signer)
                if public is None or not crypto.verify(public, signature, signed):
                    raise self._abort(f"the signature of {signer!r} is not over this node's view: survivor sets differ "
                                      "between nodes", stage)
        i = self.round - plan.epoch
        holdings = set(ep.own_shares)
        self_mask_shares = {o: ep.own_shares[o][i][1] for o in sorted(holdings & set(request.alive))}
        mask_key_shares = {o: ep.own_shares[o][i][0] for o in sorted(holdings & set(request.dropped))}
        self.state = target
        self._view, self._view_signature = None, b""
        return UnmaskResponse(federation_id=fed, round=self.round, node_id=self.node_id,
                              self_mask_shares=self_mask_shares, mask_key_shares=mask_key_shares)


