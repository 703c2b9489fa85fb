"""Messages of secagg-v1 (SPEC section 4): frozen, validated when built, with one canonical wire encoding.

Wire format: ``b"GFSA" | version (1 byte) | header length (4 bytes, big-endian) | header | body``. The header
is canonical JSON (sorted keys, no spaces) holding ``type`` and every field; bytes are lowercase hex; a body
carries the ring words of a :class:`MaskedInput` or the advertisements (each its own wire bytes) of a
:class:`KeyRoster`. Each message declares ``SCHEMA = {field: kind}``
with the shared kinds of :mod:`geofed_secure.wire.codec`, which checks, encodes and decodes it;
:func:`decode` checks the exact field set and every type, length and range, and raises only
:class:`~geofed_secure.errors.MessageError`.

Signed content (:func:`advertisement_signed_bytes`, :func:`view_signed_bytes`) is built from the same
canonical JSON, prefixed with a domain string, so a signature over one kind of message is never valid for
another kind.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from geofed_secure.errors import MessageError
from geofed_secure.secagg.masking.primitives import KEY_BYTES, PROTOCOL_ID, SIGNATURE_BYTES
from geofed_secure.wire.codec import (
    DIGEST,
    ID,
    IDS,
    Bytes,
    Chunks,
    Codec,
    Framing,
    IdMap,
    Int,
    List,
    WireMessage,
    Words,
    canonical_json,
    schema,
)

MAGIC = b"GFSA"
VERSION = 2  # 2: the KeyRoster carries advertisements as wire bytes in its body (1: nested headers)
MAX_HEADER_BYTES = 64 * 1024 * 1024
FRAMING = Framing(name="secagg-v1", magic=MAGIC, version=VERSION, max_header_bytes=MAX_HEADER_BYTES)

# Field kinds of secagg-v1 (SPEC 4): integers below 2^31, keys and signatures of fixed size, shares of any size.
INT = Int(0, 2**31 - 1)
KEY = Bytes(KEY_BYTES)
SIG = Bytes(SIGNATURE_BYTES)
KEYS = List(KEY, min_count=1)
ID_BLOBS, ID_KEYS, ID_SIGS = IdMap(Bytes()), IdMap(KEY), IdMap(SIG)
WORDS = Words(ring_bits=(32, 64))
# A roster's advertisements: one per member (at most 2^20), each at most 1 MiB (K = 1024 round keys is ~140 kB).
ADVERTS = Chunks(max_count=2**20, max_chunk_bytes=2**20, size_key="advertisement_bytes")


class _Message(WireMessage):
    """Base of all secagg-v1 messages: checked from ``SCHEMA``, framed with :data:`FRAMING`."""

    __slots__ = ()
    FRAMING: ClassVar = FRAMING


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundStart(_Message):
    """Server -> node: round ``round`` begins; ``epoch`` is the round at which the current keys were set up.

    ``epoch == round`` asks for fresh keys (advertise_keys); otherwise the node reuses the epoch's
    pre-shared round keys and answers with its masked input directly (steady state).
    """

    federation_id: str
    round: int
    epoch: int
    anchor_digest: str
    vector_length: int
    SCHEMA: ClassVar = schema(federation_id=ID, round=INT, epoch=INT, anchor_digest=DIGEST, vector_length=INT)


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyAdvertisement(_Message):
    """Node -> server: the node's public keys for an epoch, signed with its provisioned Ed25519 identity key.

    ``mask_keys[i]`` and ``commitments[i]`` belong to round ``epoch + i``: one X25519 mask key and one
    commitment to the self-mask seed per round, so revealing one round's secrets exposes only that round.
    ``graph_commitment`` commits to the node's graph-seed nonce, revealed only after the roster is fixed
    (SecAgg+ graphs, SPEC 5.2), so the server cannot choose the graph by choosing the roster.
    The signature covers :func:`advertisement_signed_bytes` (every field but ``signature``).
    """

    federation_id: str
    epoch: int
    node_id: str
    channel_key: bytes
    mask_keys: tuple[bytes, ...]
    commitments: tuple[bytes, ...]
    graph_commitment: bytes
    signature: bytes
    SCHEMA: ClassVar = schema(federation_id=ID, epoch=INT, node_id=ID, channel_key=KEY, mask_keys=KEYS,
                              commitments=KEYS, graph_commitment=KEY, signature=SIG)

    def _check_together(self) -> None:
        if len(self.mask_keys) != len(self.commitments):
            raise MessageError("KeyAdvertisement: one commitment per mask key is required")


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRoster(_Message):
    """Server -> node: the epoch's members with their graph commitments, and every member's advertisement.

    ``graph_commitments`` lists the members (sorted ids) with the graph commitment of each one's advertisement;
    ``advertisements`` travels in the body: each member's KeyAdvertisement as its own wire bytes, in member order,
    still signed by its node. A node decodes only the advertisements it uses (its share holders', SPEC 5.3), so
    its key material per epoch is O(degree), not O(n); the commitments are all it needs of the others (the graph
    seed, SPEC 5.2). Build one with :meth:`of`.
    """

    federation_id: str
    epoch: int
    graph_commitments: Mapping[str, bytes]
    advertisements: tuple[bytes, ...]
    SCHEMA: ClassVar = schema(federation_id=ID, epoch=INT, graph_commitments=ID_KEYS, advertisements=ADVERTS)

    def _check_together(self) -> None:
        if len(self.advertisements) != len(self.graph_commitments):
            raise MessageError(f"KeyRoster: {len(self.graph_commitments)} members but {len(self.advertisements)} "
                               "advertisements (one per member, in member order)")

    @classmethod
    def of(cls, federation_id: str, epoch: int, adverts: Iterable[KeyAdvertisement]) -> KeyRoster:
        """The roster of ``adverts`` (any order; one per member): their wire bytes and graph commitments."""
        ordered = sorted(adverts, key=lambda a: a.node_id)
        return cls(federation_id=federation_id, epoch=epoch,
                   graph_commitments={a.node_id: a.graph_commitment for a in ordered},
                   advertisements=tuple(a.encode() for a in ordered))

    @property
    def members(self) -> tuple[str, ...]:
        """The member ids, sorted (the order of :attr:`advertisements`)."""
        return tuple(self.graph_commitments)

    def decoded(self) -> tuple[KeyAdvertisement, ...]:
        """Every advertisement, decoded (for adversaries and tests: a node decodes only its holders')."""
        adverts = tuple(decode(blob) for blob in self.advertisements)
        if not all(isinstance(a, KeyAdvertisement) for a in adverts):
            raise MessageError("KeyRoster: the body holds a message that is not a KeyAdvertisement")
        return adverts  # type: ignore[return-value]


@dataclass(frozen=True, slots=True, kw_only=True)
class GraphSeedReveal(_Message):
    """Node -> server (SecAgg+ graphs only): the nonce behind the node's ``graph_commitment``, sent after the roster."""

    federation_id: str
    epoch: int
    node_id: str
    nonce: bytes
    SCHEMA: ClassVar = schema(federation_id=ID, epoch=INT, node_id=ID, nonce=KEY)


@dataclass(frozen=True, slots=True, kw_only=True)
class GraphSeeds(_Message):
    """Server -> node (SecAgg+ graphs only): every roster member's revealed nonce; together they fix the graph."""

    federation_id: str
    epoch: int
    nonces: Mapping[str, bytes]
    SCHEMA: ClassVar = schema(federation_id=ID, epoch=INT, nonces=ID_KEYS)


@dataclass(frozen=True, slots=True, kw_only=True)
class ShareBundle(_Message):
    """Node -> server: the node's Shamir shares for each neighbour, sealed to that neighbour."""

    federation_id: str
    epoch: int
    node_id: str
    sealed: Mapping[str, bytes]
    SCHEMA: ClassVar = schema(federation_id=ID, epoch=INT, node_id=ID, sealed=ID_BLOBS)


@dataclass(frozen=True, slots=True, kw_only=True)
class ShareDelivery(_Message):
    """Server -> node: the sealed shares addressed to ``receiver``, by sender."""

    federation_id: str
    epoch: int
    receiver: str
    sealed: Mapping[str, bytes]
    SCHEMA: ClassVar = schema(federation_id=ID, epoch=INT, receiver=ID, sealed=ID_BLOBS)


@dataclass(frozen=True, slots=True, kw_only=True)
class MaskedInput(_Message):
    """Node -> server: encoded input plus self mask plus pairwise masks, in Z_(2^b) (SPEC 5.3)."""

    federation_id: str
    round: int
    node_id: str
    words: np.ndarray
    SCHEMA: ClassVar = schema(federation_id=ID, round=INT, node_id=ID, words=WORDS)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsistencyRequest(_Message):
    """Server -> node: the survivor view (who sent a masked input, who dropped), to be signed."""

    federation_id: str
    round: int
    alive: tuple[str, ...]
    dropped: tuple[str, ...]
    SCHEMA: ClassVar = schema(federation_id=ID, round=INT, alive=IDS, dropped=IDS)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsistencySignature(_Message):
    """Node -> server: the node's Ed25519 signature over the view it was shown."""

    federation_id: str
    round: int
    node_id: str
    signature: bytes
    SCHEMA: ClassVar = schema(federation_id=ID, round=INT, node_id=ID, signature=SIG)


@dataclass(frozen=True, slots=True, kw_only=True)
class UnmaskRequest(_Message):
    """Server -> node: reveal shares for this view; ``signatures`` is empty only when nobody dropped."""

    federation_id: str
    round: int
    alive: tuple[str, ...]
    dropped: tuple[str, ...]
    signatures: Mapping[str, bytes]
    SCHEMA: ClassVar = schema(federation_id=ID, round=INT, alive=IDS, dropped=IDS, signatures=ID_SIGS)


@dataclass(frozen=True, slots=True, kw_only=True)
class UnmaskResponse(_Message):
    """Node -> server: self-mask-seed shares of alive owners and mask-key shares of dropped owners."""

    federation_id: str
    round: int
    node_id: str
    self_mask_shares: Mapping[str, bytes]
    mask_key_shares: Mapping[str, bytes]
    SCHEMA: ClassVar = schema(federation_id=ID, round=INT, node_id=ID, self_mask_shares=ID_BLOBS, mask_key_shares=ID_BLOBS)


CODEC = Codec(FRAMING, (
    RoundStart, KeyAdvertisement, KeyRoster, GraphSeedReveal, GraphSeeds, ShareBundle, ShareDelivery, MaskedInput,
    ConsistencyRequest, ConsistencySignature, UnmaskRequest, UnmaskResponse))
MESSAGE_TYPES = CODEC.types
Message = (RoundStart | KeyAdvertisement | KeyRoster | GraphSeedReveal | GraphSeeds | ShareBundle | ShareDelivery
           | MaskedInput | ConsistencyRequest | ConsistencySignature | UnmaskRequest | UnmaskResponse)


def advertisement_signed_bytes(*, federation_id: str, epoch: int, node_id: str, channel_key: bytes,
                               mask_keys: tuple[bytes, ...], commitments: tuple[bytes, ...], graph_commitment: bytes) -> bytes:
    """What a node signs when it advertises keys (SPEC 2.7): ``"geofed-secagg-v1|advertise|"`` followed by the
    canonical JSON of the advertisement's header without its ``type`` and ``signature`` members."""
    return PROTOCOL_ID + b"|advertise|" + canonical_json({
        "federation_id": federation_id, "epoch": epoch, "node_id": node_id, "channel_key": channel_key.hex(),
        "mask_keys": [k.hex() for k in mask_keys], "commitments": [c.hex() for c in commitments],
        "graph_commitment": graph_commitment.hex()})


def signed_bytes_of(advert: KeyAdvertisement) -> bytes:
    """:func:`advertisement_signed_bytes` of an advertisement as received."""
    return advertisement_signed_bytes(federation_id=advert.federation_id, epoch=advert.epoch, node_id=advert.node_id,
                                      channel_key=advert.channel_key, mask_keys=advert.mask_keys,
                                      commitments=advert.commitments, graph_commitment=advert.graph_commitment)


def view_signed_bytes(federation_id: str, round_: int, roster_digest: bytes, alive: tuple[str, ...],
                      dropped: tuple[str, ...]) -> bytes:
    """What a node signs in the consistency check (SPEC 2.7): the view, bound to the epoch's roster digest."""
    return PROTOCOL_ID + b"|view|" + canonical_json({"federation_id": federation_id, "round": round_,
                                                  "roster": roster_digest.hex(), "alive": list(alive),
                                                  "dropped": list(dropped)})


def decode(data: bytes) -> Message:
    """Parse and validate wire bytes; any defect raises :class:`MessageError` naming what was wrong."""
    return CODEC.decode(data)  # type: ignore[return-value]
