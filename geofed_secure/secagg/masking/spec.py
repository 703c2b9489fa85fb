"""secagg-v1 constants, provisioned parameters and the pure derivations of SPEC sections 2, 3 and 5.1-5.2.

Everything here is a function of provisioned values and messages: the threshold and view-quorum rules, the
SecAgg+ graph, the epoch plan each party checks, and the mask keystreams. The state machines
(:mod:`.node`, :mod:`.server`) compose these; nothing here holds state.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from geofed_secure.errors import (
    ConfigError,
    LocalProtocolError,
    MessageError,
    ProtocolAborted,
)
from geofed_secure.secagg.masking import primitives as crypto
from geofed_secure.secagg.masking.fixedpoint import FixedPoint
from geofed_secure.secagg.masking.messages import (
    KeyAdvertisement,
    KeyRoster,
    decode,
    signed_bytes_of,
)

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
    """More than (m + z) / 2 of a holder set of size m, and at least 3 (SPEC 5.5, rule 4).

    Two views that each list this many of one owner's m holders alive, every one of them signing, share an honest
    signer, and an honest node signs one view per round: so all honest holders of one owner that answer in a round
    answer the same view. In the complete graph every owner's holders are all M members, which makes this the
    global rule "at most one view per round is answered".

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
    quorum: int  # of one owner's holders, how many an answered view must list alive (view_quorum of m)
    fixed_point: FixedPoint
    roster_digest: bytes  # binds share transport and view signatures to this exact roster
    graph_seed: bytes | None  # None for the complete graph

    def x_of(self, node_id: str) -> int:
        """Shamir evaluation point of a node: its 1-based position in the sorted member list."""
        return self.members.index(node_id) + 1

    def neighbours(self, node_id: str) -> tuple[str, ...]:
        return tuple(v for v in self.holders[node_id] if v != node_id)

    @property
    def sparse(self) -> bool:
        return self.graph_seed is not None

    def signature_scope(self, node_id: str) -> frozenset[str]:
        """The members whose view signature ``node_id`` checks before it unmasks (SPEC 5.5, rule 4).

        The holders of every owner whose shares it holds, and of every neighbour of those owners: three hops in the
        share graph. Both graphs are symmetric (u holds v's shares iff v holds u's), so the owners a node holds
        shares of are its own holders. In the complete graph this is every member; in a SecAgg+ ring of degree k it
        is the 6 ceil(k/2) + 1 members nearest on the ring, so a node's checks are O(k), not O(n).
        """
        if not self.sparse:
            return frozenset(self.members)
        near = {p for o in self.holders[node_id] for p in self.holders[o]}
        return frozenset(h for p in near for h in self.holders[p])

    def quorum_shortfall(self, node_id: str, alive: tuple[str, ...], dropped: tuple[str, ...]) -> tuple[str, int] | None:
        """The first owner whose holders a view lists too thinly for ``node_id`` to answer it, with their count.

        Rule 4 of SPEC 5.5: for every owner the node would reveal a share of (listed alive or dropped), and for every
        neighbour listed alive of an owner listed alive, at least ``quorum`` of that owner's holders are listed
        alive (and so, by the unmask rule, signed this very view). None when the view passes. In the complete graph
        this is the global floor, checked on its own (``view_floor``).
        """
        if not self.sparse:
            return None
        alive_set = set(alive)
        listed = alive_set | set(dropped)
        owners: set[str] = set()
        for o in self.holders[node_id]:
            if o in listed:
                owners.add(o)
            if o in alive_set:
                owners.update(p for p in self.holders[o] if p in alive_set)
        for o in sorted(owners):
            count = sum(1 for h in self.holders[o] if h in alive_set)
            if count < self.quorum:
                return o, count
        return None

    @property
    def view_floor(self) -> int:
        return max(MIN_COHORT, self.threshold, self.quorum)


def roster_digest(roster: KeyRoster) -> bytes:
    """SHA-256 of the roster's wire bytes, domain-separated (SPEC 2.8)."""
    return crypto.digest("roster", roster.encode())


def graph_seed(federation_id: str, epoch: int, digest: bytes, nonces: Mapping[str, bytes], members: tuple[str, ...]) -> bytes:
    """The SecAgg+ graph seed (SPEC 5.2): every member's revealed nonce, in member order, bound to the roster."""
    return crypto.digest("graph-seed", federation_id, epoch, digest, *(nonces[v] for v in members))


def neighbourhoods(members: tuple[str, ...], degree: int | None, seed: bytes | None) -> Mapping[str, tuple[str, ...]]:
    """Share holders per member: a ring lattice of ``degree`` on a seeded order (SecAgg+), or all members.

    Ring order: members sorted by SHA-256(seed || id); each member's holders are itself and the ceil(degree/2)
    members before and after it in that order (cyclically). ``seed`` comes from a commit-reveal among the members
    (:func:`graph_seed`), so the server cannot choose the graph.
    """
    n = len(members)
    if not is_sparse(degree, n):
        return {v: members for v in members}
    assert degree is not None and seed is not None
    return RingHolders(tuple(sorted(members, key=lambda v: hashlib.sha256(seed + v.encode()).digest())),
                       (degree + 1) // 2)


class RingHolders(Mapping[str, tuple[str, ...]]):
    """The holders of each member on a SecAgg+ ring, computed when first asked for.

    A node looks up the holders of its own few-hop neighbourhood only; building all n entries at every node cost
    O(n degree) per node, O(n^2 degree) a round (3 ms per node at n = 1000). Iteration is in ring order.
    """

    __slots__ = ("_half", "_index", "_known", "_order")

    def __init__(self, order: tuple[str, ...], half: int) -> None:
        self._order, self._half = order, half
        self._index = {v: i for i, v in enumerate(order)}
        self._known: dict[str, tuple[str, ...]] = {}

    def __getitem__(self, node_id: str) -> tuple[str, ...]:
        known = self._known.get(node_id)
        if known is None:
            i, n, order = self._index[node_id], len(self._order), self._order
            known = self._known[node_id] = tuple(sorted({order[(i + d) % n] for d in range(-self._half, self._half + 1)}))
        return known

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._index

    def __getstate__(self) -> tuple[tuple[str, ...], int]:
        return self._order, self._half

    def __setstate__(self, state: tuple[tuple[str, ...], int]) -> None:
        self.__init__(*state)  # type: ignore[misc]


def check_roster(provisioning: Provisioning, roster: KeyRoster, *, party: str) -> tuple[str, ...]:
    """The roster checks that need no graph (SPEC 5.1); returns the members. A bad roster aborts.

    Only the member list is checked here; an advertisement is decoded and checked where it is used
    (:func:`roster_advertisement`): the server checked every one on arrival.
    """
    members = roster.members
    strangers = [v for v in members if v not in provisioning.identities]
    if strangers:
        raise ProtocolAborted(f"roster holds keys of {strangers[0]!r}, who is not a provisioned node (injected key)",
                              party=party, stage="share_keys")
    if len(members) < MIN_COHORT:
        raise ProtocolAborted(f"epoch {roster.epoch} has {len(members)} member(s); the floor is {MIN_COHORT}",
                              party=party, stage="share_keys")
    return members


def roster_advertisement(provisioning: Provisioning, roster: KeyRoster, member: str, index: int, *,
                         party: str) -> KeyAdvertisement:
    """Decode and check the advertisement of ``member``, the roster's member ``index`` (SPEC 5.1, 5.3); a bad one
    aborts.

    It must be a KeyAdvertisement of that very member, for this federation and epoch, with the federation's
    number of round keys and the graph commitment the roster lists for it, signed by the member's identity key.
    """
    try:
        advert = decode(roster.advertisements[index])
    except MessageError as exc:
        raise ProtocolAborted(f"the roster's advertisement of {member!r} is malformed ({exc})",
                              party=party, stage="share_keys") from None
    if not isinstance(advert, KeyAdvertisement) or advert.node_id != member:
        raise ProtocolAborted(f"the roster lists {member!r} with another message or another node's advertisement "
                              "(replaced key)", party=party, stage="share_keys")
    if advert.federation_id != provisioning.federation_id or advert.epoch != roster.epoch:
        raise ProtocolAborted(f"the advertisement of {member!r} is for another federation or epoch (replayed)",
                              party=party, stage="share_keys")
    if len(advert.mask_keys) != provisioning.parameters.rounds_per_epoch:
        raise ProtocolAborted(f"{member!r} advertised {len(advert.mask_keys)} round keys, the federation uses "
                              f"{provisioning.parameters.rounds_per_epoch}", party=party, stage="share_keys")
    if advert.graph_commitment != roster.graph_commitments[member]:
        raise ProtocolAborted(f"the roster lists a graph commitment of {member!r} that its advertisement does not "
                              "hold (the server tried to steer the graph)", party=party, stage="share_keys")
    if not crypto.verify(provisioning.identities[member], advert.signature, signed_bytes_of(advert)):
        raise ProtocolAborted(f"the keys advertised for {member!r} are not signed by its identity key "
                              "(injected, replaced or replayed key)", party=party, stage="share_keys")
    return advert


def holder_advertisements(provisioning: Provisioning, roster: KeyRoster, plan: EpochPlan, *,
                          party: str) -> dict[str, KeyAdvertisement]:
    """The checked advertisements of ``party``'s share holders (its neighbours), the only keys a node uses.

    O(degree) decodings and signature checks per node: the rest of the roster stays undecoded bytes. A forged
    advertisement elsewhere can change the graph (availability) but no key this node encrypts or masks with.
    """
    return {v: roster_advertisement(provisioning, roster, v, bisect.bisect_left(plan.members, v), party=party)
            for v in plan.holders[party] if v != party}


def plan_epoch(provisioning: Provisioning, roster: KeyRoster, *, party: str,
               nonces: Mapping[str, bytes] | None = None, digest: bytes | None = None) -> EpochPlan:
    """Check a roster (and, for a SecAgg+ graph, every member's revealed nonce) and derive the epoch plan.

    ``digest``: :func:`roster_digest` of this very roster when the caller computed it already (a SecAgg+ node hashes
    the roster when it arrives and plans after the graph seeds).

    A bad roster or nonce aborts: this is where a steered graph is caught. Keys are checked where they are used:
    the server verified every advertisement on arrival (MaskingServer.receive); a node checks those of its share
    holders (:func:`holder_advertisements`) and compares its own byte for byte.
    """
    params = provisioning.parameters
    members = check_roster(provisioning, roster, party=party)
    fed, epoch = provisioning.federation_id, roster.epoch
    digest = digest or roster_digest(roster)
    seed = None
    if is_sparse(params.degree, len(members)):
        if nonces is None:
            raise LocalProtocolError("a SecAgg+ epoch needs every member's graph-seed nonce before it can be planned")
        missing = sorted(set(members) - set(nonces))
        if missing or set(nonces) - set(members):
            raise ProtocolAborted(f"graph-seed nonces of {missing[:3]} are missing or strangers' nonces were added: the "
                                  "graph must come from every member's nonce (the server may not pick a subset)",
                                  party=party, stage="share_keys")
        unopened = crypto.first_unopened(nonces, roster.graph_commitments, fed, epoch, purpose="graph-commit")
        if unopened is not None:
            raise ProtocolAborted(f"the graph-seed nonce of {unopened!r} does not match its commitment (the server tried "
                                  "to steer the graph)", party=party, stage="share_keys")
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
    return EpochPlan(epoch=epoch, members=members, holders=holders, threshold=threshold,
                     quorum=view_quorum(m, params.colluders),
                     fixed_point=FixedPoint.for_cohort(len(members), params.clip, params.ring_bits),
                     roster_digest=digest, graph_seed=seed)


def channel_key(shared_secret: bytes, federation_id: str, epoch: int, sender: str, receiver: str) -> bytes:
    return crypto.derive_key(shared_secret, "share-channel", federation_id, epoch, sender, receiver)


def share_header(federation_id: str, epoch: int, sender: str, receiver: str, digest: bytes) -> bytes:
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
