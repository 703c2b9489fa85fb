"""Messages of secagg-v1 (SPEC section 4): frozen, validated when built, with one canonical wire encoding.

Wire format: ``b"GFSA" | version (1 byte) | header length (4 bytes, big-endian) | header | body``. The header
is canonical JSON (sorted keys, no spaces) holding ``type`` and every field; bytes are lowercase hex; the
body carries only the ring words of a :class:`MaskedInput`. :func:`decode` checks the exact field set and
every type, length and range, and raises only :class:`~geofed_secure.errors.MessageError`.

Signed content (:func:`advertisement_signed_bytes`, :func:`view_signed_bytes`) is built from the same
canonical JSON, prefixed with a domain string, so a signature over one kind of message is never valid for
another kind.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from geofed_secure.errors import MessageError
from geofed_secure.secagg.masking.primitives import KEY_BYTES, PROTOCOL_ID, SIGNATURE_BYTES

MAGIC = b"GFSA"
VERSION = 1
MAX_HEADER_BYTES = 64 * 1024 * 1024
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")

# Field kinds: how each field is checked and how it is written to JSON.
ID, INT, DIGEST, KEY, SIG, BLOB, IDS, KEYS, ID_BLOBS, ID_KEYS, ID_SIGS, ADVERTS, WORDS = (
    "id", "int", "digest", "key", "sig", "blob", "ids", "keys", "id_blobs", "id_keys", "id_sigs", "adverts", "words")


def _fail(what: str, problem: str) -> MessageError:
    return MessageError(f"{what}: {problem}")


def _check(kind: str, value: Any, *, what: str) -> Any:
    """Validate one field value of the given kind; return its frozen form."""
    if kind == ID:
        if not isinstance(value, str) or not _ID.match(value):
            raise _fail(what, f"{value!r} is not a valid id ([A-Za-z0-9._-], <= 64 characters)")
        return value
    if kind == INT:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
            raise _fail(what, f"must be an integer in [0, 2^31), got {value!r}")
        return value
    if kind == DIGEST:
        if not isinstance(value, str) or not _HEX64.match(value):
            raise _fail(what, "must be 64 lowercase hex characters")
        return value
    if kind in (KEY, SIG, BLOB):
        if not isinstance(value, bytes):
            raise _fail(what, f"must be bytes, got {type(value).__name__}")
        size = {KEY: KEY_BYTES, SIG: SIGNATURE_BYTES}.get(kind)
        if size is not None and len(value) != size:
            raise _fail(what, f"must be {size} bytes, got {len(value)}")
        return value
    if kind == IDS:
        if not isinstance(value, tuple | list):
            raise _fail(what, "must be a list of ids")
        ids = tuple(_check(ID, v, what=what) for v in value)
        if list(ids) != sorted(set(ids)):
            raise _fail(what, "ids must be sorted and unique")
        return ids
    if kind == KEYS:
        if not isinstance(value, tuple | list) or not value:
            raise _fail(what, "must be a non-empty list of keys")
        return tuple(_check(KEY, v, what=what) for v in value)
    if kind in (ID_BLOBS, ID_KEYS, ID_SIGS):
        if not isinstance(value, Mapping):
            raise _fail(what, "must be a mapping id -> bytes")
        inner = {ID_SIGS: SIG, ID_KEYS: KEY, ID_BLOBS: BLOB}[kind]
        return MappingProxyType({_check(ID, k, what=what): _check(inner, v, what=f"{what}[{k}]") for k, v in sorted(value.items())})
    if kind == ADVERTS:
        if not isinstance(value, tuple | list) or not all(isinstance(a, KeyAdvertisement) for a in value):
            raise _fail(what, "must be a list of KeyAdvertisement")
        ids = [a.node_id for a in value]
        if ids != sorted(set(ids)):
            raise _fail(what, "advertisements must be sorted by node id, one per node")
        return tuple(value)
    if kind == WORDS:
        if not isinstance(value, np.ndarray) or value.ndim != 1 or value.dtype not in (np.dtype("<u4"), np.dtype("<u8")):
            raise _fail(what, "must be a 1-D little-endian uint32 or uint64 array")
        frozen = value.copy()
        frozen.setflags(write=False)
        return frozen
    raise AssertionError(kind)


class _Message:
    """Base of all secagg-v1 messages: schema-driven validation and canonical JSON."""

    SCHEMA: ClassVar[dict[str, str]]

    def __post_init__(self) -> None:
        for name, kind in self.SCHEMA.items():
            object.__setattr__(self, name, _check(kind, getattr(self, name), what=f"{type(self).__name__}.{name}"))

    def header(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": type(self).__name__}
        for name, kind in self.SCHEMA.items():
            value = getattr(self, name)
            if kind == WORDS:
                out[name] = {"ring_bits": value.dtype.itemsize * 8, "length": int(value.shape[0])}
            else:
                out[name] = _to_json(kind, value)
        return out

    def encode(self) -> bytes:
        header = _canonical(self.header())
        body = b"".join(getattr(self, n).tobytes() for n, k in self.SCHEMA.items() if k == WORDS)
        return MAGIC + bytes([VERSION]) + len(header).to_bytes(4, "big") + header + body


def _to_json(kind: str, value: Any) -> Any:
    if kind in (KEY, SIG, BLOB):
        return value.hex()
    if kind == KEYS:
        return [v.hex() for v in value]
    if kind == IDS:
        return list(value)
    if kind in (ID_BLOBS, ID_KEYS, ID_SIGS):
        return {k: v.hex() for k, v in value.items()}
    if kind == ADVERTS:
        return [a.header() for a in value]
    return value


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


_M = dict  # shorthand for the schema literals below


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
    SCHEMA: ClassVar = _M(federation_id=ID, round=INT, epoch=INT, anchor_digest=DIGEST, vector_length=INT)


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
    SCHEMA: ClassVar = _M(federation_id=ID, epoch=INT, node_id=ID, channel_key=KEY, mask_keys=KEYS,
                          commitments=KEYS, graph_commitment=KEY, signature=SIG)

    def __post_init__(self) -> None:
        _Message.__post_init__(self)
        if len(self.mask_keys) != len(self.commitments):
            raise _fail("KeyAdvertisement", "one commitment per mask key is required")


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRoster(_Message):
    """Server -> node: every advertisement received for the epoch (each still signed by its node)."""

    federation_id: str
    epoch: int
    advertisements: tuple[KeyAdvertisement, ...]
    SCHEMA: ClassVar = _M(federation_id=ID, epoch=INT, advertisements=ADVERTS)


@dataclass(frozen=True, slots=True, kw_only=True)
class GraphSeedReveal(_Message):
    """Node -> server (SecAgg+ graphs only): the nonce behind the node's ``graph_commitment``, sent after the roster."""

    federation_id: str
    epoch: int
    node_id: str
    nonce: bytes
    SCHEMA: ClassVar = _M(federation_id=ID, epoch=INT, node_id=ID, nonce=KEY)


@dataclass(frozen=True, slots=True, kw_only=True)
class GraphSeeds(_Message):
    """Server -> node (SecAgg+ graphs only): every roster member's revealed nonce; together they fix the graph."""

    federation_id: str
    epoch: int
    nonces: Mapping[str, bytes]
    SCHEMA: ClassVar = _M(federation_id=ID, epoch=INT, nonces=ID_KEYS)


@dataclass(frozen=True, slots=True, kw_only=True)
class ShareBundle(_Message):
    """Node -> server: the node's Shamir shares for each neighbour, sealed to that neighbour."""

    federation_id: str
    epoch: int
    node_id: str
    sealed: Mapping[str, bytes]
    SCHEMA: ClassVar = _M(federation_id=ID, epoch=INT, node_id=ID, sealed=ID_BLOBS)


@dataclass(frozen=True, slots=True, kw_only=True)
class ShareDelivery(_Message):
    """Server -> node: the sealed shares addressed to ``receiver``, by sender."""

    federation_id: str
    epoch: int
    receiver: str
    sealed: Mapping[str, bytes]
    SCHEMA: ClassVar = _M(federation_id=ID, epoch=INT, receiver=ID, sealed=ID_BLOBS)


@dataclass(frozen=True, slots=True, kw_only=True)
class MaskedInput(_Message):
    """Node -> server: encoded input plus self mask plus pairwise masks, in Z_(2^b) (SPEC 5.3)."""

    federation_id: str
    round: int
    node_id: str
    words: np.ndarray
    SCHEMA: ClassVar = _M(federation_id=ID, round=INT, node_id=ID, words=WORDS)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsistencyRequest(_Message):
    """Server -> node: the survivor view (who sent a masked input, who dropped), to be signed."""

    federation_id: str
    round: int
    alive: tuple[str, ...]
    dropped: tuple[str, ...]
    SCHEMA: ClassVar = _M(federation_id=ID, round=INT, alive=IDS, dropped=IDS)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsistencySignature(_Message):
    """Node -> server: the node's Ed25519 signature over the view it was shown."""

    federation_id: str
    round: int
    node_id: str
    signature: bytes
    SCHEMA: ClassVar = _M(federation_id=ID, round=INT, node_id=ID, signature=SIG)


@dataclass(frozen=True, slots=True, kw_only=True)
class UnmaskRequest(_Message):
    """Server -> node: reveal shares for this view; ``signatures`` is empty only when nobody dropped."""

    federation_id: str
    round: int
    alive: tuple[str, ...]
    dropped: tuple[str, ...]
    signatures: Mapping[str, bytes]
    SCHEMA: ClassVar = _M(federation_id=ID, round=INT, alive=IDS, dropped=IDS, signatures=ID_SIGS)


@dataclass(frozen=True, slots=True, kw_only=True)
class UnmaskResponse(_Message):
    """Node -> server: self-mask-seed shares of alive owners and mask-key shares of dropped owners."""

    federation_id: str
    round: int
    node_id: str
    self_mask_shares: Mapping[str, bytes]
    mask_key_shares: Mapping[str, bytes]
    SCHEMA: ClassVar = _M(federation_id=ID, round=INT, node_id=ID, self_mask_shares=ID_BLOBS, mask_key_shares=ID_BLOBS)


MESSAGE_TYPES: dict[str, type[_Message]] = {cls.__name__: cls for cls in (
    RoundStart, KeyAdvertisement, KeyRoster, GraphSeedReveal, GraphSeeds, ShareBundle, ShareDelivery, MaskedInput,
    ConsistencyRequest, ConsistencySignature, UnmaskRequest, UnmaskResponse)}
Message = (RoundStart | KeyAdvertisement | KeyRoster | GraphSeedReveal | GraphSeeds | ShareBundle | ShareDelivery
           | MaskedInput | ConsistencyRequest | ConsistencySignature | UnmaskRequest | UnmaskResponse)


def advertisement_signed_bytes(*, federation_id: str, epoch: int, node_id: str, channel_key: bytes,
                               mask_keys: tuple[bytes, ...], commitments: tuple[bytes, ...], graph_commitment: bytes) -> bytes:
    """What a node signs when it advertises keys (SPEC 2.7): ``"geofed-secagg-v1|advertise|"`` followed by the
    canonical JSON of the advertisement's header without its ``type`` and ``signature`` members."""
    return PROTOCOL_ID + b"|advertise|" + _canonical({
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
    return PROTOCOL_ID + b"|view|" + _canonical({"federation_id": federation_id, "round": round_,
                                                  "roster": roster_digest.hex(), "alive": list(alive),
                                                  "dropped": list(dropped)})


def _from_json(kind: str, value: Any, *, what: str) -> Any:
    try:
        if kind in (KEY, SIG, BLOB):
            if not isinstance(value, str) or len(value) % 2 or value != value.lower():
                raise _fail(what, "bytes must be lowercase hex")
            return bytes.fromhex(value)
        if kind == KEYS:
            if not isinstance(value, list):
                raise _fail(what, "must be a list")
            return tuple(_from_json(KEY, v, what=what) for v in value)
        if kind in (ID_BLOBS, ID_KEYS, ID_SIGS):
            if not isinstance(value, dict):
                raise _fail(what, "must be an object")
            return {k: _from_json(BLOB, v, what=what) for k, v in value.items()}
        if kind == ADVERTS:
            if not isinstance(value, list):
                raise _fail(what, "must be a list")
            if not all(isinstance(h, dict) and h.get("type") == "KeyAdvertisement" for h in value):
                raise _fail(what, "must hold only KeyAdvertisement")  # checked first: no nesting, no deep recursion
            return tuple(_from_header(h, body=b"", what=what) for h in value)
    except ValueError as exc:
        if isinstance(exc, MessageError):
            raise
        raise _fail(what, str(exc)) from None
    return value


def _from_header(header: Any, *, body: bytes, what: str) -> _Message:
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise _fail(what, "header must be an object with a 'type'")
    cls = MESSAGE_TYPES.get(header["type"])
    if cls is None:
        raise _fail(what, f"unknown message type {header['type']!r}")
    expected = set(cls.SCHEMA) | {"type"}
    if set(header) != expected:
        raise _fail(cls.__name__, f"fields {sorted(set(header) ^ expected)} are missing or unexpected")
    kwargs: dict[str, Any] = {}
    for name, kind in cls.SCHEMA.items():
        if kind == WORDS:
            spec = header[name]
            if (not isinstance(spec, dict) or set(spec) != {"ring_bits", "length"} or spec["ring_bits"] not in (32, 64)
                    or not isinstance(spec["length"], int) or isinstance(spec["length"], bool) or spec["length"] < 0):
                raise _fail(cls.__name__, f"{name} must describe ring_bits (32|64) and a length")
            dtype = np.dtype("<u4") if spec["ring_bits"] == 32 else np.dtype("<u8")
            if len(body) != spec["length"] * dtype.itemsize:
                raise _fail(cls.__name__, f"body holds {len(body)} bytes, header announces {spec['length']} words")
            kwargs[name] = np.frombuffer(body, dtype=dtype)
        else:
            kwargs[name] = _from_json(kind, header[name], what=f"{cls.__name__}.{name}")
    if body and WORDS not in cls.SCHEMA.values():
        raise _fail(cls.__name__, "unexpected body")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # defensive: schema and dataclass disagree
        raise _fail(cls.__name__, str(exc)) from None


def decode(data: bytes) -> Message:
    """Parse and validate wire bytes; any defect raises :class:`MessageError` naming what was wrong."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MessageError("secagg message must be bytes")
    data = bytes(data)
    if len(data) < 9 or data[:4] != MAGIC:
        raise MessageError("not a secagg-v1 message (bad magic)")
    if data[4] != VERSION:
        raise MessageError(f"secagg wire version {data[4]} is not supported (this is version {VERSION})")
    size = int.from_bytes(data[5:9], "big")
    if size > MAX_HEADER_BYTES or 9 + size > len(data):
        raise MessageError("secagg message header length exceeds the message")
    try:
        header = json.loads(data[9:9 + size].decode("ascii"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, over-long integers
        raise MessageError(f"secagg message header is not valid JSON: {type(exc).__name__}") from None
    message = _from_header(header, body=data[9 + size:], what="secagg message")
    if _canonical(message.header()) != data[9:9 + size]:  # the body is raw words whose size the header fixes
        raise MessageError("secagg message is not in canonical form")
    return message  # type: ignore[return-value]


def field_names(cls: type[_Message]) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
