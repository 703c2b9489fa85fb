"""Messages of ckks-v1 (SPEC section 4): frozen, validated when built, one canonical wire encoding, strict decoding."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from geofed_secure.errors import (
    MessageError,
)
from geofed_secure.secagg.ckks.spec import (
    _HEX64,
    _ID,
    MAGIC,
    MAX_CHUNK_BYTES,
    MAX_COHORT,
    MAX_HEADER_BYTES,
    MAX_LENGTH,
    MAX_ROUND,
    VERSION,
)


def _fail(what: str, problem: str) -> MessageError:
    return MessageError(f"{what}: {problem}")


def check_id(value: Any, *, what: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise _fail(what, f"{value!r} is not a valid id ([A-Za-z0-9._-], <= 64 characters)")
    return value


def _check_int(value: Any, low: int, high: int, *, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _fail(what, f"must be an integer in [{low}, {high}], got {value!r}")
    return value


def check_digest(value: Any, *, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise _fail(what, "must be 64 lowercase hex characters (SHA-256)")
    return value


def check_ids(value: Any, *, what: str) -> tuple[str, ...]:
    if not isinstance(value, tuple | list):
        raise _fail(what, "must be a list of node ids")
    ids = tuple(check_id(v, what=what) for v in value)
    if not 1 <= len(ids) <= MAX_COHORT:
        raise _fail(what, f"must hold 1 to {MAX_COHORT} ids, got {len(ids)}")
    if list(ids) != sorted(set(ids)):
        raise _fail(what, "ids must be sorted and unique")
    return ids


def _check_chunks(value: Any, length: int, *, what: str) -> tuple[bytes, ...]:
    if not isinstance(value, tuple | list):
        raise _fail(what, "chunks must be a list of serialised ciphertexts (bytes)")
    if not 1 <= len(value) <= length + 1:
        raise _fail(what, f"needs 1 to length + 1 = {length + 1} ciphertexts, got {len(value)}")
    for i, blob in enumerate(value):
        if not isinstance(blob, bytes) or not 1 <= len(blob) <= MAX_CHUNK_BYTES:
            raise _fail(what, f"ciphertext {i} must be 1 to {MAX_CHUNK_BYTES} bytes")
    return tuple(value)


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def frame(header: Mapping[str, Any], chunks: tuple[bytes, ...] = ()) -> bytes:
    raw = canonical_json(header)
    return MAGIC + bytes([VERSION]) + len(raw).to_bytes(4, "big") + raw + b"".join(chunks)


@dataclass(frozen=True, slots=True, kw_only=True)
class CkksRoundStart:
    """Server -> each cohort node: a round opens under these anchors and keys, for vectors of ``length``."""

    federation_id: str
    round: int
    anchor_digest: str
    context_digest: str
    cohort: tuple[str, ...]
    length: int

    def __post_init__(self) -> None:
        what = "CkksRoundStart"
        check_id(self.federation_id, what=f"{what}.federation_id")
        _check_int(self.round, 1, MAX_ROUND, what=f"{what}.round")
        check_digest(self.anchor_digest, what=f"{what}.anchor_digest")
        check_digest(self.context_digest, what=f"{what}.context_digest")
        object.__setattr__(self, "cohort", check_ids(self.cohort, what=f"{what}.cohort"))
        _check_int(self.length, 1, MAX_LENGTH, what=f"{what}.length")

    def encode(self) -> bytes:
        return frame({"type": "CkksRoundStart", "federation_id": self.federation_id, "round": self.round,
                       "anchor_digest": self.anchor_digest, "context_digest": self.context_digest,
                       "cohort": list(self.cohort), "length": self.length})


@dataclass(frozen=True, slots=True, kw_only=True)
class CkksEncryptedInput:
    """Node -> server: concat(w * clip(x), [w]) encrypted, one serialised ciphertext per ``slots`` values."""

    federation_id: str
    round: int
    node_id: str
    context_digest: str
    length: int
    chunks: tuple[bytes, ...] = field(repr=False)

    def __post_init__(self) -> None:
        what = "CkksEncryptedInput"
        check_id(self.federation_id, what=f"{what}.federation_id")
        _check_int(self.round, 1, MAX_ROUND, what=f"{what}.round")
        check_id(self.node_id, what=f"{what}.node_id")
        check_digest(self.context_digest, what=f"{what}.context_digest")
        _check_int(self.length, 1, MAX_LENGTH, what=f"{what}.length")
        object.__setattr__(self, "chunks", _check_chunks(self.chunks, self.length, what=f"{what}.chunks"))

    def encode(self) -> bytes:
        return frame({"type": "CkksEncryptedInput", "federation_id": self.federation_id, "round": self.round,
                       "node_id": self.node_id, "context_digest": self.context_digest, "length": self.length,
                       "chunk_bytes": [len(c) for c in self.chunks]}, self.chunks)


@dataclass(frozen=True, slots=True, kw_only=True)
class CkksAggregate:
    """Server -> each contributor still online: the encrypted sum over ``contributors``."""

    federation_id: str
    round: int
    contributors: tuple[str, ...]
    length: int
    chunks: tuple[bytes, ...] = field(repr=False)

    def __post_init__(self) -> None:
        what = "CkksAggregate"
        check_id(self.federation_id, what=f"{what}.federation_id")
        _check_int(self.round, 1, MAX_ROUND, what=f"{what}.round")
        object.__setattr__(self, "contributors", check_ids(self.contributors, what=f"{what}.contributors"))
        _check_int(self.length, 1, MAX_LENGTH, what=f"{what}.length")
        object.__setattr__(self, "chunks", _check_chunks(self.chunks, self.length, what=f"{what}.chunks"))

    def encode(self) -> bytes:
        return frame({"type": "CkksAggregate", "federation_id": self.federation_id, "round": self.round,
                       "contributors": list(self.contributors), "length": self.length,
                       "chunk_bytes": [len(c) for c in self.chunks]}, self.chunks)


CkksMessage = CkksRoundStart | CkksEncryptedInput | CkksAggregate

# Header fields of each message type on the wire (besides "type"); "chunk_bytes" frames the body.
WIRE_FIELDS: Mapping[str, tuple[type, frozenset[str]]] = MappingProxyType({
    "CkksRoundStart": (CkksRoundStart, frozenset(
        {"federation_id", "round", "anchor_digest", "context_digest", "cohort", "length"})),
    "CkksEncryptedInput": (CkksEncryptedInput, frozenset(
        {"federation_id", "round", "node_id", "context_digest", "length", "chunk_bytes"})),
    "CkksAggregate": (CkksAggregate, frozenset({"federation_id", "round", "contributors", "length", "chunk_bytes"})),
})


def decode_ckks_message(data: bytes) -> CkksMessage:
    """Parse and validate wire bytes. Any defect raises :class:`MessageError` (and nothing else).

    Checks magic, version, header size, canonical JSON, the exact field set of the type, every field's type
    and range, the body framing, and that re-encoding gives the same bytes. Ciphertexts stay opaque bytes here:
    the receiver loads them with its context (and a load failure is a :class:`MessageError` too).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MessageError("ckks-v1 message must be bytes")
    data = bytes(data)
    if len(data) < 9 or data[:4] != MAGIC:
        raise MessageError("not a ckks-v1 message (bad magic)")
    if data[4] != VERSION:
        raise MessageError(f"ckks-v1 wire version {data[4]} is not supported (this is version {VERSION})")
    size = int.from_bytes(data[5:9], "big")
    if size > MAX_HEADER_BYTES or 9 + size > len(data):
        raise MessageError("ckks-v1 header length exceeds the message or the limit")
    try:
        header = json.loads(data[9:9 + size].decode("ascii"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise MessageError(f"ckks-v1 header is not valid JSON: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise MessageError("ckks-v1 header must be a JSON object")
    kind = header.pop("type", None)
    if not isinstance(kind, str) or kind not in WIRE_FIELDS:
        raise MessageError(f"unknown ckks-v1 message type {kind!r}")
    cls, expected = WIRE_FIELDS[kind]
    if set(header) != expected:
        missing, extra = sorted(expected - set(header)), sorted(set(header) - expected)
        raise MessageError(f"{kind}: header fields wrong (missing {missing}, unexpected {extra})")
    body = data[9 + size:]
    if "chunk_bytes" in header:
        header["chunks"] = _split_body(header.pop("chunk_bytes"), body, what=kind)
    elif body:
        raise MessageError(f"{kind}: carries {len(body)} unexpected body bytes")
    message = cls(**header)  # __post_init__ raises MessageError for every bad value
    if message.encode() != data:
        raise MessageError(f"{kind}: not in canonical form")
    return message


def _split_body(sizes: Any, body: bytes, *, what: str) -> tuple[bytes, ...]:
    if not isinstance(sizes, list) or not sizes or len(sizes) > MAX_LENGTH + 1:
        raise MessageError(f"{what}.chunk_bytes must be a non-empty list of sizes")
    chunks, offset = [], 0
    for size in sizes:
        _check_int(size, 1, MAX_CHUNK_BYTES, what=f"{what}.chunk_bytes")
        chunks.append(body[offset:offset + size])
        offset += size
    if offset != len(body):
        raise MessageError(f"{what}: body holds {len(body)} bytes but chunk_bytes add up to {offset}")
    return tuple(chunks)
