"""Messages of ckks-v1 (SPEC section 4): frozen, validated when built, one canonical wire encoding, strict decoding.

Each message declares ``SCHEMA = {field: kind}`` with the shared kinds of :mod:`geofed_secure.wire.codec`
(the same mechanism as secagg-v1), which checks, encodes and decodes it. The ciphertexts of a message travel
in the body; its header lists their sizes as ``chunk_bytes``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from geofed_secure.errors import MessageError
from geofed_secure.secagg.ckks.spec import (
    MAGIC,
    MAX_CHUNK_BYTES,
    MAX_COHORT,
    MAX_HEADER_BYTES,
    MAX_LENGTH,
    MAX_ROUND,
    VERSION,
)
from geofed_secure.wire.codec import (
    DIGEST,
    ID,
    Chunks,
    Codec,
    Framing,
    Int,
    List,
    WireMessage,
    canonical_json,
    check_digest,
    check_id,
    schema,
)

__all__ = ["CkksAggregate", "CkksEncryptedInput", "CkksMessage", "CkksRoundStart", "canonical_json", "check_digest",
           "check_id", "check_ids", "decode_ckks_message", "frame"]

FRAMING = Framing(name="ckks-v1", magic=MAGIC, version=VERSION, max_header_bytes=MAX_HEADER_BYTES)

# Field kinds of ckks-v1 (SPEC 4).
ROUND = Int(1, MAX_ROUND)
LENGTH = Int(1, MAX_LENGTH)
COHORT = List(ID, min_count=1, max_count=MAX_COHORT, sorted_unique=True)
CIPHERTEXTS = Chunks(max_count=MAX_LENGTH + 1, max_chunk_bytes=MAX_CHUNK_BYTES, size_key="chunk_bytes")


def check_ids(value: Any, *, what: str) -> tuple[str, ...]:
    """A cohort: 1 to ``MAX_COHORT`` valid node ids, sorted and unique."""
    return COHORT.check(value, what=what)


def frame(header: Mapping[str, Any], chunks: tuple[bytes, ...] = ()) -> bytes:
    """ckks-v1 framing of a header object and ciphertexts (for vectors that edit a valid header)."""
    return FRAMING.frame(header, list(chunks))


class _CkksMessage(WireMessage):
    """Base of the ckks-v1 messages: checked from ``SCHEMA``, framed with :data:`FRAMING`."""

    __slots__ = ()
    FRAMING: ClassVar = FRAMING


def _check_chunk_count(message: CkksEncryptedInput | CkksAggregate) -> None:
    """One ciphertext holds at least one of the ``length + 1`` values (SPEC 3), so there are at most that many."""
    if len(message.chunks) > message.length + 1:
        raise MessageError(f"{type(message).__name__}.chunks: needs 1 to length + 1 = {message.length + 1} "
                           f"ciphertexts, got {len(message.chunks)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class CkksRoundStart(_CkksMessage):
    """Server -> each cohort node: a round opens under these anchors and keys, for vectors of ``length``."""

    federation_id: str
    round: int
    anchor_digest: str
    context_digest: str
    cohort: tuple[str, ...]
    length: int
    SCHEMA: ClassVar = schema(federation_id=ID, round=ROUND, anchor_digest=DIGEST, context_digest=DIGEST,
                              cohort=COHORT, length=LENGTH)


@dataclass(frozen=True, slots=True, kw_only=True)
class CkksEncryptedInput(_CkksMessage):
    """Node -> server: concat(w * clip(x), [w]) encrypted, one serialised ciphertext per ``slots`` values."""

    federation_id: str
    round: int
    node_id: str
    context_digest: str
    length: int
    chunks: tuple[bytes, ...] = field(repr=False)
    SCHEMA: ClassVar = schema(federation_id=ID, round=ROUND, node_id=ID, context_digest=DIGEST, length=LENGTH,
                              chunks=CIPHERTEXTS)

    def _check_together(self) -> None:
        _check_chunk_count(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class CkksAggregate(_CkksMessage):
    """Server -> each contributor still online: the encrypted sum over ``contributors``."""

    federation_id: str
    round: int
    contributors: tuple[str, ...]
    length: int
    chunks: tuple[bytes, ...] = field(repr=False)
    SCHEMA: ClassVar = schema(federation_id=ID, round=ROUND, contributors=COHORT, length=LENGTH, chunks=CIPHERTEXTS)

    def _check_together(self) -> None:
        _check_chunk_count(self)


CkksMessage = CkksRoundStart | CkksEncryptedInput | CkksAggregate
CODEC = Codec(FRAMING, (CkksRoundStart, CkksEncryptedInput, CkksAggregate))


def decode_ckks_message(data: bytes) -> CkksMessage:
    """Parse and validate wire bytes. Any defect raises :class:`MessageError` (and nothing else).

    Checks magic, version, header size, canonical JSON, the exact field set of the type, every field's type
    and range, the body framing, and that re-encoding gives the same bytes. Ciphertexts stay opaque bytes here:
    the receiver loads them with its context (and a load failure is a :class:`MessageError` too).
    """
    return CODEC.decode(data)  # type: ignore[return-value]
