"""secagg-v1: pairwise-mask secure aggregation (SecAgg / SecAgg+) as sans-IO state machines.

:class:`MaskingNode` and :class:`MaskingServer` never touch a socket, a clock or a thread: a driver (the
in-process simulator, the tests, the federation runtime, Flower) moves their messages. Transitions are data
(:data:`NODE_TRANSITIONS`, :data:`SERVER_TRANSITIONS`); the state diagrams in ``protocols/secagg-v1/SPEC.md``
are generated from them. Any message that is illegal in the current state, or any dishonest-server behaviour a
node can detect, makes the node raise :class:`~geofed_secure.errors.ProtocolAborted` and stay ABORTED, having
revealed nothing for that round beyond what it had already sent.

What each party learns (threat model, SPEC section 6): the server learns the sum of the contributors' encoded
inputs and who contributed. Against a malicious server colluding with at most ``colluders`` (z) nodes it learns
no individual input and no sum of fewer than three honest inputs, because (i) a node answers only a view whose
survivors it masked with, that keeps at least t - 1 of its peers alive, and that every survivor signed, (ii) every
answered view lists more than (M + z) / 2 of the M epoch members, so at most one view per round is answered, and
(iii) t >= z + 3. A node learns nothing about other nodes' inputs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from geofed_secure.errors import (
    ConfigError,
    DataError,
    LocalProtocolError,
    MessageError,
    ProtocolAborted,
)
from geofed_secure.secagg import primitives as crypto
from geofed_secure.secagg.fixedpoint import FixedPoint
from geofed_secure.secagg.messages import (
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
    signed_bytes_of,
    view_signed_bytes,
)
from geofed_secure.secagg.types import SERVER

MIN_COHORT = 3  # with 2 nodes, each learns the other's input from the sum


@dataclass(frozen=True, slots=True, kw_only=True)
class MaskingParameters:
    """Provisioned with the federation (never taken from the server at run time).

    ``colluders`` (z): how many nodes may collude with a malicious server (SPEC 6). Privacy of every honest
    node's input holds for z colluders when ``threshold >= z + 3`` (each alive owner keeps at least two honest
    alive peers it masked with) and every answered view has more than (members + z) / 2 survivors; parameters
    outside the bound are refused here or at epoch planning.
    ``threshold``: shares needed to reconstruct one owner's secret; None -> max(3 + z, floor((m + z)/2) + 1) where m is
    the number of share holders per owner computed from the PROVISIONED federation size (degree + 1, or all
    provisioned nodes for the complete graph), so a server that hands out a small roster cannot lower it.
    t < 3 + z is refused here, 2t <= m + z and t > m at epoch planning (with the epoch's m).
    ``degree``: SecAgg+ neighbourhood size (even; odd values are rounded up); None -> complete graph.
    ``rounds_per_epoch``: rounds served by one key set-up (steady-state rounds need two round trips).
    """

    ring_bits: int = 64
    clip: float = 1.0e4
    threshold: int | None = None
    degree: int | None = None
    rounds_per_epoch: int = 8
    colluders: int = 0

    def __post_init__(self) -> None:
        if self.ring_bits not in (32, 64):
            raise ConfigError("secure.ring_bits", f"must be 32 or 64, got {self.ring_bits!r}")
        if not isinstance(self.rounds_per_epoch, int) or not 1 <= self.rounds_per_epoch <= 1024:
            raise ConfigError("secure.rounds_per_epoch", f"must be an integer in [1, 1024], got {self.rounds_per_epoch!r}")
        if self.degree is not None and (not isinstance(self.degree, int) or self.degree < 2):
            raise ConfigError("secure.neighbors", f"must be an integer >= 2 or omitted (complete graph), got {self.degree!r}")
        if not isinstance(self.colluders, int) or isinstance(self.colluders, bool) or self.colluders < 0:
            raise ConfigError("secure.colluders", f"must be an integer >= 0, got {self.colluders!r}")
        floor = MIN_COHORT + self.colluders
        if self.threshold is not None and (not isinstance(self.threshold, int) or self.threshold < floor):
            raise ConfigError("secure.threshold", f"must be an integer >= {floor} (3 + colluders) or omitted, got "
                              f"{self.threshold!r}: with t < 3 + z an owner's alive peers could all be colluders or "
                              "one honest node, exposing its input or a sum of two")
        if self.degree is not None and floor > sparse_holders(self.degree):
            raise ConfigError("secure.colluders", f"degree {self.degree} gives {sparse_holders(self.degree)} share holders "
                              f"per owner, too few to keep two honest peers against {self.colluders} colluder(s); "
                              f"raise secure.neighbors to at least {2 * (floor - 1)} or lower secure.colluders")
        FixedPoint.for_cohort(1, self.clip, self.ring_bits)  # validates clip


@dataclass(frozen=True, slots=True, kw_only=True)
class Provisioning:
    """What every party receives out of band before the first round: ids, identity keys, anchors, parameters."""

    federation_id: str
    identities: Mapping[str, bytes]  # node id -> Ed25519 public key
    anchor_digest: str
    parameters: MaskingParameters = field(default_factory=MaskingParameters)

    def __post_init__(self) -> None:
        # M <= n epoch members: if n clipped inputs fit the ring, every epoch's encoding fits (SPEC 3)
        FixedPoint.for_cohort(max(1, len(self.identities)), self.parameters.clip, self.parameters.ring_bits)


# ---------------------------------------------------------------------------------------------------------
# The epoch: who advertised keys, the neighbourhood graph, threshold and encoding (identical at every party).
# Terms (SPEC 1): n = provisioned nodes, M = epoch members (the roster), m = share holders per owner (its
# neighbours and itself), t = threshold, z = tolerated colluders.


def sparse_holders(degree: int) -> int:
    """Share holders per owner in a SecAgg+ ring lattice of ``degree``: 2 ceil(degree / 2) + 1."""
    return 2 * ((degree + 1) // 2) + 1


def is_sparse(degree: int | None, members: int) -> bool:
    """True when the epoch uses a SecAgg+ ring lattice (a seeded graph) rather than the complete graph."""
    return degree is not None and degree < members - 1


def holders_per_owner(members: int, degree: int | None) -> int:
    return sparse_holders(degree) if degree is not None and is_sparse(degree, members) else members


def default_threshold(n_provisioned: int, degree: int | None, colluders: int = 0) -> int:
    """max(3 + z, floor((m + z)/2) + 1) for m share holders per owner in a federation of ``n_provisioned`` nodes.

    >>> default_threshold(10, None), default_threshold(100, 6), default_threshold(3, None), default_threshold(100, 6, 2)
    (6, 4, 3, 5)
    >>> default_threshold(9, None, 1)
    6
    """
    return max(MIN_COHORT + colluders, (holders_per_owner(n_provisioned, degree) + colluders) // 2 + 1)


def view_quorum(members: int, colluders: int) -> int:
    """Survivors every answered view must list: more than (M + z) / 2, and at least 3 (SPEC 5.5).

    Two views with this many survivors each share an honest survivor, and an honest node answers one view per
    round, so at most one view per round is ever answered.

    >>> view_quorum(5, 0), view_quorum(10, 0), view_quorum(10, 1), view_quorum(3, 0)
    (3, 6, 6, 3)
    """
    return max(MIN_COHORT, (members + colluders) // 2 + 1)


@dataclass(frozen=True, slots=True)
class EpochPlan:
    epoch: int
    members: tuple[str, ...]  # nodes whose signed advertisement is in the roster, sorted
    holders: Mapping[str, tuple[str, ...]]  # owner -> the nodes holding its shares (its neighbours and itself)
    threshold: int
    quorum: int  # survivors an answered view must list (view_quorum)
    fixed_point: FixedPoint
    roster_digest: bytes  # binds share transport and view signatures to this exact roster
    graph_seed: bytes | None  # None for the complete graph

    def x_of(self, node_id: str) -> int:
        """Shamir evaluation point of a node: its 1-based position in the sorted member list."""
        return self.members.index(node_id) + 1

    def neighbours(self, node_id: str) -> tuple[str, ...]:
        return tuple(v for v in self.holders[node_id] if v != node_id)

    @property
    def view_floor(self) -> int:
        return max(MIN_COHORT, self.threshold, self.quorum)


def roster_digest(roster: KeyRoster) -> bytes:
    """SHA-256 of the roster's wire bytes, domain-separated (SPEC 2.8)."""
    return crypto.digest("roster", roster.encode())


def graph_seed(federation_id: str, epoch: int, digest: bytes, nonces: Mapping[str, bytes], members: tuple[str, ...]) -> bytes:
    """The SecAgg+ graph seed (SPEC 5.2): every member's revealed nonce, in member order, bound to the roster."""
    return crypto.digest("graph-seed", federation_id, epoch, digest, *(nonces[v] for v in members))


def neighbourhoods(members: tuple[str, ...], degree: int | None, seed: bytes | None) -> dict[str, tuple[str, ...]]:
    """Share holders per member: a ring lattice of ``degree`` on a seeded order (SecAgg+), or all members.

    Ring order: members sorted by SHA-256(seed || id); each member's holders are itself and the ceil(degree/2)
    members before and after it in that order (cyclically). ``seed`` comes from a commit-reveal among the members
    (:func:`graph_seed`), so the server cannot choose the graph.
    """
    n = len(members)
    if not is_sparse(degree, n):
        return {v: members for v in members}
    assert degree is not None and seed is not None
    half = (degree + 1) // 2
    order = sorted(members, key=lambda v: hashlib.sha256(seed + v.encode()).digest())
    holders = {}
    for i, v in enumerate(order):
        ring = {order[(i + d) % n] for d in range(-half, half + 1)}
        holders[v] = tuple(sorted(ring))
    return holders


def check_roster(provisioning: Provisioning, roster: KeyRoster, *, party: str) -> tuple[str, ...]:
    """The roster checks that need no graph (SPEC 5.1); returns the members. A bad roster aborts."""
    params = provisioning.parameters
    for advert in roster.advertisements:
        if advert.node_id not in provisioning.identities:
            raise ProtocolAborted(f"roster holds keys of {advert.node_id!r}, who is not a provisioned node (injected key)",
                                  party=party, stage="share_keys")
        if advert.federation_id != provisioning.federation_id or advert.epoch != roster.epoch:
            raise ProtocolAborted(f"the advertisement of {advert.node_id!r} is for another federation or epoch (replayed)",
                                  party=party, stage="share_keys")
        if len(advert.mask_keys) != params.rounds_per_epoch:
            raise ProtocolAborted(f"{advert.node_id!r} advertised {len(advert.mask_keys)} round keys, the federation uses "
                                  f"{params.rounds_per_epoch}", party=party, stage="share_keys")
    members = tuple(a.node_id for a in roster.advertisements)
    if len(members) < MIN_COHORT:
        raise ProtocolAborted(f"epoch {roster.epoch} has {len(members)} member(s); the floor is {MIN_COHORT}",
                              party=party, stage="share_keys")
    return members


def plan_epoch(provisioning: Provisioning, roster: KeyRoster, *, party: str,
               nonces: Mapping[str, bytes] | None = None) -> EpochPlan:
    """Check a roster (and, for a SecAgg+ graph, every member's revealed nonce) and derive the epoch plan.

    A bad roster or nonce aborts: this is where injected or replaced keys and a steered graph are caught. The
    server verifies every advertisement's signature (on arrival); a node verifies those of its share holders, the
    only keys it ever uses (a forged advertisement elsewhere can change the graph, i.e. availability, but no key
    this node encrypts or masks with). This keeps a node's set-up cost O(degree) signatures instead of O(n).
    """
    params = provisioning.parameters
    members = check_roster(provisioning, roster, party=party)
    fed, epoch = provisioning.federation_id, roster.epoch
    digest = roster_digest(roster)
    by_id = {a.node_id: a for a in roster.advertisements}
    seed = None
    if is_sparse(params.degree, len(members)):
        if nonces is None:
            raise LocalProtocolError("a SecAgg+ epoch needs every member's graph-seed nonce before it can be planned")
        missing = sorted(set(members) - set(nonces))
        if missing or set(nonces) - set(members):
            raise ProtocolAborted(f"graph-seed nonces of {missing[:3]} are missing or strangers' nonces were added: the "
                                  "graph must come from every member's nonce (the server may not pick a subset)",
                                  party=party, stage="share_keys")
        for v in members:
            if crypto.commitment(nonces[v], fed, epoch, v, purpose="graph-commit") != by_id[v].graph_commitment:
                raise ProtocolAborted(f"the graph-seed nonce of {v!r} does not match its commitment (the server tried to "
                                      "steer the graph)", party=party, stage="share_keys")
        seed = graph_seed(fed, epoch, digest, nonces, members)
    holders = neighbourhoods(members, params.degree, seed)
    m = len(holders[members[0]])
    threshold = params.threshold if params.threshold is not None else default_threshold(
        len(provisioning.identities), params.degree, params.colluders)
    if threshold > m:
        raise ProtocolAborted(f"epoch {epoch} has {len(members)} member(s) and {m} share holders per node; the threshold "
                              f"is {threshold} holders", party=party, stage="share_keys")
    if 2 * threshold <= m + params.colluders:
        raise ProtocolAborted(f"threshold {threshold} of {m} share holders is not above (holders + colluders) / 2 = "
                              f"{(m + params.colluders) / 2:g}", party=party, stage="share_keys")
    # The server verified each advertisement on arrival (MaskingServer.receive); a node its holders but itself
    # (it compares its own advertisement byte for byte).
    to_verify = () if party == SERVER else tuple(v for v in holders.get(party, members) if v != party)
    for node_id in to_verify:
        advert = by_id[node_id]
        if not crypto.verify(provisioning.identities[node_id], advert.signature, signed_bytes_of(advert)):
            raise ProtocolAborted(f"the keys advertised for {node_id!r} are not signed by its identity key "
                                  "(injected, replaced or replayed key)", party=party, stage="share_keys")
    return EpochPlan(epoch=epoch, members=members, holders=holders, threshold=threshold,
                     quorum=view_quorum(len(members), params.colluders),
                     fixed_point=FixedPoint.for_cohort(len(members), params.clip, params.ring_bits),
                     roster_digest=digest, graph_seed=seed)


def _channel_key(shared_secret: bytes, federation_id: str, epoch: int, sender: str, receiver: str) -> bytes:
    return crypto.derive_key(shared_secret, "share-channel", federation_id, epoch, sender, receiver)


def _share_header(federation_id: str, epoch: int, sender: str, receiver: str, digest: bytes) -> bytes:
    """Associated data of a sealed share (SPEC 2.6): binds it to the sender, receiver and the exact roster."""
    return b"|".join([crypto.PROTOCOL_ID, b"shares", federation_id.encode(), str(epoch).encode(), sender.encode(),
                      receiver.encode(), digest.hex().encode()])


def self_mask(seed: bytes, federation_id: str, round_: int, owner: str, length: int, ring_bits: int,
              scratch: np.ndarray | None = None) -> np.ndarray:
    """PRG output of an owner's self mask for one round (SPEC 5.3)."""
    key = crypto.derive_key(seed, "self-mask", federation_id, round_, owner)
    return crypto.keystream_words(key, length, ring_bits, scratch=scratch)


def pairwise_mask(shared_secret: bytes, federation_id: str, round_: int, a: str, b: str, length: int, ring_bits: int,
                  scratch: np.ndarray | None = None) -> np.ndarray:
    """PRG output of the pairwise mask of nodes a and b for one round; the smaller id adds it, the other subtracts."""
    low, high = sorted((a, b))
    key = crypto.derive_key(shared_secret, "pairwise-mask", federation_id, round_, low, high)
    return crypto.keystream_words(key, length, ring_bits, scratch=scratch)


# ---------------------------------------------------------------------------------------------------------
# Node


NODE_TRANSITIONS: dict[str, dict[str, str]] = {
    "ready": {"RoundStart(new epoch)": "advertised", "RoundStart(same epoch)": "masked"},
    "advertised": {"KeyRoster(complete graph)": "shared", "KeyRoster(SecAgg+ graph)": "revealed"},
    "revealed": {"GraphSeeds": "shared"},
    "shared": {"ShareDelivery": "masked"},
    "masked": {"ConsistencyRequest": "signed", "UnmaskRequest(nobody dropped)": "ready"},
    "signed": {"UnmaskRequest(after check)": "ready"},
    "aborted": {},
}


def node_event(message: Message, degree: int | None = None, *, sparse_epoch: bool = False) -> str:
    """The event a server message represents for a node (the keys of :data:`NODE_TRANSITIONS`).

    ``degree`` is the provisioned SecAgg+ degree: it decides whether a roster needs a graph-seed reveal.
    ``sparse_epoch``: the node's current epoch uses a SecAgg+ graph, where an unchecked unmask is no legal event
    (share holders differ between owners, so only a view every survivor signed may be unmasked, SPEC 5.5).
    """
    if isinstance(message, RoundStart):
        return "RoundStart(new epoch)" if message.epoch == message.round else "RoundStart(same epoch)"
    if isinstance(message, KeyRoster):
        sparse = is_sparse(degree, len(message.advertisements))
        return "KeyRoster(SecAgg+ graph)" if sparse else "KeyRoster(complete graph)"
    if isinstance(message, UnmaskRequest):
        if message.dropped or message.signatures:
            return "UnmaskRequest(after check)"
        return "UnmaskRequest(unchecked, SecAgg+ epoch)" if sparse_epoch else "UnmaskRequest(nobody dropped)"
    return type(message).__name__


@dataclass
class _NodeEpochSecrets:
    channel_private: bytes
    mask_privates: list[bytes]
    seeds: list[bytes]
    graph_nonce: bytes
    plan: EpochPlan | None = None
    roster: KeyRoster | None = None  # held between the roster and the graph seeds (SecAgg+)
    own_shares: dict[str, list[tuple[bytes, bytes]]] = field(default_factory=dict)  # owner -> per round (key, seed) share
    peers: tuple[str, ...] = ()  # neighbours whose shares arrived: the nodes this node masks with
    adverts: dict[str, KeyAdvertisement] = field(default_factory=dict)
    channel_secrets: dict[str, bytes] = field(default_factory=dict)  # X25519(c_u, C_v) per neighbour, computed once

    def channel_secret(self, peer: str) -> bytes:
        if peer not in self.channel_secrets:
            if not self.channel_secrets:
                self._channel_private_key = crypto.X25519Private(self.channel_private)
            self.channel_secrets[peer] = self._channel_private_key.exchange(self.adverts[peer].channel_key)
        return self.channel_secrets[peer]


class MaskingNode:
    """One node's side of secagg-v1. Methods return the message to send to the server.

    ``rng`` supplies every secret, in the order SPEC 2.9 fixes (keys, seeds, graph nonce, Shamir coefficients,
    rounding draws); inject :class:`~geofed_secure.secagg.primitives.DeterministicRandomness` for reproducible
    runs and vectors.
    """

    def __init__(self, node_id: str, identity_private: bytes, provisioning: Provisioning, rng: crypto.Randomness) -> None:
        if node_id not in provisioning.identities:
            raise LocalProtocolError(f"{node_id!r} is not a provisioned node of {provisioning.federation_id!r}")
        self.node_id = node_id
        self.provisioning = provisioning
        self.params = provisioning.parameters
        self._identity = identity_private
        self._rng = rng
        self.state = "ready"
        self.round = 0  # current (or last) round
        self.epoch: _NodeEpochSecrets | None = None
        self.clipped = 0  # coordinates clipped in the current round's input
        self._vector: np.ndarray | None = None
        self._view: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._advertised: KeyAdvertisement | None = None

    # -- plumbing -----------------------------------------------------------------------------------
    def _abort(self, reason: str, stage: str) -> ProtocolAborted:
        self.state = "aborted"
        self._vector = None
        return ProtocolAborted(reason, party=self.node_id, stage=stage)

    def _advance(self, message: Message, stage: str) -> str:
        if self.state == "aborted":
            raise LocalProtocolError(f"{self.node_id}: the session is aborted; start a new MaskingNode")
        sparse = self.epoch is not None and self.epoch.plan is not None and self.epoch.plan.graph_seed is not None
        event = node_event(message, self.params.degree, sparse_epoch=sparse)
        target = NODE_TRANSITIONS[self.state].get(event)
        if target is None:
            raise self._abort(f"{event} is not legal in state {self.state!r}", stage)
        fed = message.federation_id
        if fed != self.provisioning.federation_id:
            raise self._abort(f"message for federation {fed!r}", stage)
        return target

    def _expect_round(self, got: int, stage: str) -> None:
        if got != self.round:
            raise self._abort(f"message for round {got} during round {self.round} (replayed or stale)", stage)

    # -- stage 0: a round starts ---------------------------------------------------------------------
    def begin_round(self, start: RoundStart, vector: np.ndarray) -> KeyAdvertisement | MaskedInput:
        """Take the round's input (1-D float vector of ``start.vector_length``); answer with keys or the masked input."""
        stage = "advertise_keys" if node_event(start) == "RoundStart(new epoch)" else "masked_input"
        target = self._advance(start, stage)
        if start.round <= self.round:
            raise self._abort(f"round {start.round} does not follow round {self.round} (replayed round start)", stage)
        if start.anchor_digest != self.provisioning.anchor_digest:
            raise self._abort("the anchor digest changed: the node refuses an anchor set it was not provisioned with", stage)
        x = np.asarray(vector, dtype=np.float64)
        if x.ndim != 1 or x.shape[0] != start.vector_length:
            raise LocalProtocolError(f"input must be a 1-D vector of {start.vector_length} values, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise DataError(f"{self.node_id}: input has NaN/inf; refusing to mask it (fix the update before aggregation)")
        if target == "advertised":
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
        channel_private, channel_public = crypto.x25519_keypair(self._rng)
        mask_privates, mask_publics, seeds, commitments = [], [], [], []
        fed = self.provisioning.federation_id
        for i in range(self.params.rounds_per_epoch):
            private, public = crypto.x25519_keypair(self._rng)
            seed = self._rng.token(crypto.KEY_BYTES)
            mask_privates.append(private)
            mask_publics.append(public)
            seeds.append(seed)
            commitments.append(crypto.commitment(seed, fed, epoch + i, self.node_id))
        nonce = self._rng.token(crypto.KEY_BYTES)
        self.epoch = _NodeEpochSecrets(channel_private=channel_private, mask_privates=mask_privates, seeds=seeds, graph_nonce=nonce)
        fields = {"federation_id": fed, "epoch": epoch, "node_id": self.node_id, "channel_key": channel_public,
                      "mask_keys": tuple(mask_publics), "commitments": tuple(commitments),
                      "graph_commitment": crypto.commitment(nonce, fed, epoch, self.node_id, purpose="graph-commit")}
        self._advertised = KeyAdvertisement(**fields, signature=crypto.sign(self._identity, advertisement_signed_bytes(**fields)))
        return self._advertised

    # -- stage 1: share keys -------------------------------------------------------------------------
    def receive(self, message: Message) -> Message:
        """Handle one server message; return the answer. Illegal or dishonest input raises ProtocolAborted."""
        handlers = {KeyRoster: self._on_roster, GraphSeeds: self._on_graph_seeds, ShareDelivery: self._on_delivery,
                    ConsistencyRequest: self._on_consistency, UnmaskRequest: self._on_unmask}
        handler = handlers.get(type(message))
        if handler is None:
            if self.state == "aborted":
                raise LocalProtocolError(f"{self.node_id}: the session is aborted; start a new MaskingNode")
            if isinstance(message, RoundStart) and self.state == "ready":
                raise LocalProtocolError("a RoundStart goes through begin_round(start, vector)")
            raise self._abort(f"{type(message).__name__} is not legal for a node in state {self.state!r}", "unknown")
        return handler(message)

    def abandon_round(self) -> None:
        """Driver's call when this node's round ended without it (timeout, lost messages): back to ``ready``.

        Keys of a finished epoch set-up are kept (later rounds of the epoch use their own, unrevealed keys);
        an unfinished set-up is discarded.
        """
        if self.state == "aborted":
            raise LocalProtocolError(f"{self.node_id}: the session is aborted; start a new MaskingNode")
        if self.state in ("advertised", "revealed", "shared"):
            self.epoch = None
        self.state, self._vector, self._view = "ready", None, None

    def _on_roster(self, roster: KeyRoster) -> ShareBundle | GraphSeedReveal:
        stage = "share_keys"
        target = self._advance(roster, stage)
        if roster.epoch != self.round:
            raise self._abort(f"roster for epoch {roster.epoch} during the set-up of epoch {self.round} (replayed)", stage)
        assert self.epoch is not None
        try:
            check_roster(self.provisioning, roster, party=self.node_id)
        except ProtocolAborted:
            self.state = "aborted"
            raise
        mine = next((a for a in roster.advertisements if a.node_id == self.node_id), None)
        if mine is None or mine != self._advertised:
            raise self._abort("the roster does not hold this node's own advertisement unchanged (dropped or replaced)", stage)
        self.epoch.roster = roster
        self.epoch.adverts = {a.node_id: a for a in roster.advertisements}
        if target == "revealed":  # SecAgg+: the graph waits for every member's nonce (commit-reveal, SPEC 5.2)
            self.state = target
            return GraphSeedReveal(federation_id=roster.federation_id, epoch=roster.epoch, node_id=self.node_id,
                                   nonce=self.epoch.graph_nonce)
        return self._share_keys(self._plan(roster, None), target)

    def _on_graph_seeds(self, seeds: GraphSeeds) -> ShareBundle:
        stage = "share_keys"
        target = self._advance(seeds, stage)
        assert self.epoch is not None and self.epoch.roster is not None
        if seeds.epoch != self.epoch.roster.epoch:
            raise self._abort(f"graph seeds for epoch {seeds.epoch} during the set-up of epoch {self.epoch.roster.epoch}", stage)
        if seeds.nonces.get(self.node_id) != self.epoch.graph_nonce:
            raise self._abort("the graph seeds do not carry this node's own nonce unchanged", stage)
        return self._share_keys(self._plan(self.epoch.roster, seeds.nonces), target)

    def _plan(self, roster: KeyRoster, nonces: Mapping[str, bytes] | None) -> EpochPlan:
        try:
            return plan_epoch(self.provisioning, roster, party=self.node_id, nonces=nonces)
        except ProtocolAborted:
            self.state = "aborted"
            raise

    def _share_keys(self, plan: EpochPlan, target: str) -> ShareBundle:
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
            key = _channel_key(self.epoch.channel_secret(holder), fed, plan.epoch, self.node_id, holder)
            plaintext = b"".join(k + s for k, s in shares)
            sealed[holder] = crypto.seal(key, plaintext, _share_header(fed, plan.epoch, self.node_id, holder, plan.roster_digest))
        self.state = target
        return ShareBundle(federation_id=fed, epoch=plan.epoch, node_id=self.node_id, sealed=sealed)

    def _on_delivery(self, delivery: ShareDelivery) -> MaskedInput:
        stage = "masked_input"
        target = self._advance(delivery, stage)
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
            key = _channel_key(self.epoch.channel_secret(sender), fed, plan.epoch, sender, self.node_id)
            try:
                plaintext = crypto.unseal(key, blob, _share_header(fed, plan.epoch, sender, self.node_id, plan.roster_digest))
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
        words, self.clipped = fp.encode(self._vector, crypto.uniform_draws(rounding_key, self._vector.shape[0]))
        n = words.shape[0]
        scratch = crypto.keystream_scratch(n, fp.ring_bits)
        words += self_mask(ep.seeds[i], fed, r, self.node_id, n, fp.ring_bits, scratch)
        mask_key = crypto.X25519Private(ep.mask_privates[i])
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

    def _on_consistency(self, request: ConsistencyRequest) -> ConsistencySignature:
        stage = "consistency_check"
        target = self._advance(request, stage)
        self._expect_round(request.round, stage)
        self._check_view(request.alive, request.dropped, stage)
        assert self.epoch is not None and self.epoch.plan is not None
        self._view = (request.alive, request.dropped)
        fed = self.provisioning.federation_id
        signed = view_signed_bytes(fed, self.round, self.epoch.plan.roster_digest, request.alive, request.dropped)
        self.state = target
        return ConsistencySignature(federation_id=fed, round=self.round, node_id=self.node_id,
                                    signature=crypto.sign(self._identity, signed))

    # -- stage 4: unmask -----------------------------------------------------------------------------
    def _on_unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        stage = "unmask"
        target = self._advance(request, stage)
        self._expect_round(request.round, stage)
        self._check_view(request.alive, request.dropped, stage)
        ep = self.epoch
        assert ep is not None and ep.plan is not None
        plan, fed = ep.plan, self.provisioning.federation_id
        if self.state == "signed":
            if (request.alive, request.dropped) != self._view:
                raise self._abort("the unmask request's survivor view differs from the view this node signed", stage)
            # Every survivor must have signed this very view: a survivor that refused it (e.g. because it did not
            # mask with the others) is never unmasked without its consent, and two answered views cannot coexist.
            missing = sorted(set(request.alive) - set(request.signatures))
            if missing:
                raise self._abort(f"survivors {missing[:3]} did not confirm the view; every survivor must sign it", stage)
            signed = view_signed_bytes(fed, self.round, plan.roster_digest, request.alive, request.dropped)
            for signer, signature in request.signatures.items():
                public = self.provisioning.identities.get(signer)
                if signer not in request.alive or public is None or not crypto.verify(public, signature, signed):
                    raise self._abort(f"the signature of {signer!r} is not over this node's view: survivor sets differ "
                                      "between nodes", stage)
        i = self.round - plan.epoch
        holdings = set(ep.own_shares)
        self_mask_shares = {o: ep.own_shares[o][i][1] for o in sorted(holdings & set(request.alive))}
        mask_key_shares = {o: ep.own_shares[o][i][0] for o in sorted(holdings & set(request.dropped))}
        self.state = target
        self._view = None
        return UnmaskResponse(federation_id=fed, round=self.round, node_id=self.node_id,
                              self_mask_shares=self_mask_shares, mask_key_shares=mask_key_shares)


# ---------------------------------------------------------------------------------------------------------
# Server


SERVER_TRANSITIONS: dict[str, dict[str, str]] = {
    "idle": {"start_round(new epoch)": "collect_advertisements", "start_round(same epoch)": "collect_inputs"},
    "collect_advertisements": {"KeyAdvertisement": "collect_advertisements",
                               "close_stage(complete graph)": "collect_shares", "close_stage(SecAgg+ graph)": "collect_reveals"},
    "collect_reveals": {"GraphSeedReveal": "collect_reveals", "close_stage": "collect_shares"},
    "collect_shares": {"ShareBundle": "collect_shares", "close_stage": "collect_inputs"},
    "collect_inputs": {"MaskedInput": "collect_inputs", "close_stage(nobody dropped)": "collect_unmask",
                       "close_stage(dropouts or SecAgg+)": "collect_signatures"},
    "collect_signatures": {"ConsistencySignature": "collect_signatures", "close_stage": "collect_unmask"},
    "collect_unmask": {"UnmaskResponse": "collect_unmask", "close_stage": "idle"},
    "aborted": {"start_round(new epoch)": "collect_advertisements"},
}
# Any state may also take the local event ``abandon_round`` (the driver gives up on the round) -> aborted.

SERVER_STAGE = {"collect_advertisements": "advertise_keys", "collect_reveals": "graph_seed", "collect_shares": "share_keys", "collect_inputs": "masked_input",
                "collect_signatures": "consistency_check", "collect_unmask": "unmask", "idle": "idle", "aborted": "aborted"}


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



def transition_tables_markdown() -> str:
    """The node and server state tables as Markdown; SPEC.md embeds exactly this text (a test checks it)."""
    lines = ["Node (`NODE_TRANSITIONS`; any other event aborts the node):", "",
             "| state | event | next state |", "|---|---|---|"]
    lines += [f"| {s} | {e} | {t} |" for s, events in NODE_TRANSITIONS.items() for e, t in events.items()]
    lines += ["", "Server (`SERVER_TRANSITIONS`; a node message not listed for the state is refused with MessageError):", "",
              "| state | event | next state |", "|---|---|---|"]
    lines += [f"| {s} | {e} | {t} |" for s, events in SERVER_TRANSITIONS.items() for e, t in events.items()]
    return "\n".join(lines) + "\n"
