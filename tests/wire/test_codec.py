"""The shared codec (geofed_secure/wire/codec.py): every field kind's refusals, strict framing, declaration
errors, and the properties both wire families rely on (exact round trip; a mutated message is refused or is
itself canonical).

A toy family declared here covers every kind; the published vectors of secagg-v1 and ckks-v1 give real messages.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geofed_secure.errors import MessageError
from geofed_secure.secagg.ckks.messages import decode_ckks_message
from geofed_secure.secagg.masking.messages import decode
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
    check_digest,
    check_id,
    check_ids,
    check_int,
    schema,
)

PROTOCOLS = Path(__file__).resolve().parents[2] / "protocols"
TOY = Framing(name="toy-v1", magic=b"TOYW", version=3, max_header_bytes=1 << 16)


class _Toy(WireMessage):
    __slots__ = ()
    FRAMING: ClassVar = TOY


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry(_Toy):
    name: str
    value: int
    SCHEMA: ClassVar = schema(name=ID, value=Int(0, 9))


@dataclass(frozen=True, slots=True, kw_only=True)
class Everything(_Toy):
    """One field of every header kind, and ring words in the body."""

    owner: str
    digest: str
    count: int
    blob: bytes
    key: bytes
    members: tuple[str, ...]
    keys: tuple[bytes, ...]
    shares: Any
    words: np.ndarray
    SCHEMA: ClassVar = schema(owner=ID, digest=DIGEST, count=Int(1, 1000), blob=Bytes(), key=Bytes(4),
                              members=List(ID, min_count=1, max_count=3, sorted_unique=True), keys=List(Bytes(2)),
                              shares=IdMap(Bytes(3)), words=Words())


@dataclass(frozen=True, slots=True, kw_only=True)
class Parcel(_Toy):
    """Opaque chunks in the body, at most ``limit`` of them (a rule between two fields)."""

    owner: str
    limit: int
    chunks: tuple[bytes, ...] = field(repr=False)
    SCHEMA: ClassVar = schema(owner=ID, limit=Int(1, 3), chunks=Chunks(max_count=3, max_chunk_bytes=8))

    def _check_together(self) -> None:
        if len(self.chunks) > self.limit:
            raise MessageError(f"Parcel: {len(self.chunks)} chunks, limit {self.limit}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Roll(_Toy):
    """Ids only: no body."""

    ids: tuple[str, ...]
    SCHEMA: ClassVar = schema(ids=IDS)


CODEC = Codec(TOY, (Entry, Everything, Parcel, Roll))
DIGEST_HEX = "ab" * 32


def everything(**changes: Any) -> Everything:
    values = {"owner": "node-1", "digest": DIGEST_HEX, "count": 7, "blob": b"\x00\xff", "key": b"abcd",
              "members": ("a", "b"), "keys": (b"k1", b"k2"), "shares": {"b": b"sh1", "a": b"sh0"},
              "words": np.array([1, 2, 2**32 - 1], dtype="<u4")}
    return Everything(**{**values, **changes})


def parcel(**changes: Any) -> Parcel:
    return Parcel(**{"owner": "n", "limit": 2, "chunks": (b"abc", b"d"), **changes})


def same(a: WireMessage, b: WireMessage) -> bool:
    """Field-by-field equality (dataclass == cannot compare numpy arrays)."""
    if type(a) is not type(b):
        return False
    for f in dataclasses.fields(a):  # type: ignore[arg-type]
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            if not (isinstance(y, np.ndarray) and x.dtype == y.dtype and np.array_equal(x, y)):
                return False
        elif x != y:
            return False
    return True


def parts(blob: bytes) -> tuple[dict[str, Any], bytes]:
    size = int.from_bytes(blob[5:9], "big")
    return json.loads(blob[9:9 + size]), blob[9 + size:]


def reframe(header: Any, body: bytes = b"", *, raw: bytes | None = None) -> bytes:
    raw = canonical_json(header) if raw is None else raw
    return TOY.magic + bytes([TOY.version]) + len(raw).to_bytes(4, "big") + raw + body


# -- shared checks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "-a", ".a", "a b", "a/b", "a" * 65, "é", "a\n", 3, None, b"a", ["a"]])
def test_check_id_refuses(value):
    with pytest.raises(MessageError, match="Thing.id"):
        check_id(value, what="Thing.id")


@pytest.mark.parametrize("value", ["a", "A.b_c-9", "9" + "x" * 63])
def test_check_id_accepts(value):
    assert check_id(value, what="id") == value


@pytest.mark.parametrize("value", ["", "-a", ".a", "a b", "a" * 65, "é", "a\n", "a\nb", "\n", 3, None, b"a"])
def test_a_list_or_map_of_ids_refuses_what_check_id_refuses(value):
    # Prepare: the bad id among good ones (the whole run is matched at once, "a\nb" would split into two good ids)
    ids = ["x", value, "z"]
    # Execute / Assert
    with pytest.raises(MessageError, match="Thing.ids"):
        check_ids(ids, what="Thing.ids")
    with pytest.raises(MessageError, match="Thing.ids"):
        List(ID).check(ids, what="Thing.ids")
    if isinstance(value, str):
        with pytest.raises(MessageError, match="Thing.ids"):
            IdMap(Int()).check(dict.fromkeys(ids, 1), what="Thing.ids")


def test_a_list_of_ids_accepts_good_ids_and_none():
    assert check_ids(["a", "A.b_c-9", "9" + "x" * 63], what="ids") is None
    assert List(ID).check([], what="ids") == ()


@pytest.mark.parametrize("value", ["AB" * 32, "ab" * 31, "ab" * 33, "ab" * 32 + "\n", "g" * 64, 5, None])
def test_check_digest_refuses(value):
    with pytest.raises(MessageError, match="64 lowercase hex"):
        check_digest(value, what="digest")


@pytest.mark.parametrize("value, low, high", [
    (0, 1, None), (True, 0, 5), (1.0, 0, 5), ("1", 0, 5), (6, 0, 5), (-1, 0, 5), (None, 0, 5)])
def test_check_int_refuses(value, low, high):
    with pytest.raises(MessageError, match="must be an integer"):
        check_int(value, low, high, what="n")


def test_canonical_json_is_sorted_compact_ascii():
    assert canonical_json({"b": [1, "é"], "a": {"d": 1, "c": 2}}) == b'{"a":{"c":2,"d":1},"b":[1,"\\u00e9"]}'


# -- every kind's refusals when a message is built ------------------------------------------------------------


@pytest.mark.parametrize("changes, match", [
    ({"owner": "bad id!"}, "Everything.owner: 'bad id!' is not a valid id"),
    ({"digest": "AB" * 32}, "Everything.digest"),
    ({"count": 0}, r"Everything.count: must be an integer in \[1, 1000\]"),
    ({"count": 1001}, "Everything.count"),
    ({"count": True}, "Everything.count"),
    ({"blob": "00ff"}, "Everything.blob: must be bytes, got str"),
    ({"blob": bytearray(b"x")}, "must be bytes, got bytearray"),
    ({"key": b"abc"}, "Everything.key: must be 4 bytes, got 3"),
    ({"members": "a"}, "Everything.members: must be a list"),
    ({"members": ()}, "must hold 1 to 3 items, got 0"),
    ({"members": ("a", "b", "c", "d")}, "must hold 1 to 3 items, got 4"),
    ({"members": ("b", "a")}, "sorted and unique"),
    ({"members": ("a", "a")}, "sorted and unique"),
    ({"members": ("a", "bad id!")}, "not a valid id"),
    ({"keys": (b"k1", b"k")}, "must be 2 bytes"),
    ({"keys": b"k1k2"}, "must be a list"),
    ({"shares": [("a", b"sh0")]}, "must be a mapping"),
    ({"shares": {"bad id!": b"sh0"}}, "not a valid id"),
    ({"shares": {1: b"sh0"}}, "not a valid id"),
    ({"shares": {"a": b"sh"}}, r"Everything.shares\[a\]: must be 3 bytes"),
    ({"words": [1, 2]}, "Everything.words: must be a 1-D little-endian uint32 or uint64 array"),
    ({"words": np.zeros((2, 2), "<u4")}, "1-D"),
    ({"words": np.zeros(2, "<i4")}, "uint32"),
    ({"words": np.zeros(2, ">u4")}, "little-endian"),
])
def test_every_header_kind_refuses_bad_values(changes, match):
    with pytest.raises(MessageError, match=match):
        everything(**changes)


@pytest.mark.parametrize("changes, match", [
    ({"chunks": b"abc"}, "Parcel.chunks: must be a list of byte strings"),
    ({"chunks": ()}, "must hold 1 to 3 chunks, got 0"),
    ({"chunks": (b"a",) * 4}, "must hold 1 to 3 chunks, got 4"),
    ({"chunks": (b"a", b"")}, "chunk 1 must be 1 to 8 bytes"),
    ({"chunks": (b"a" * 9,)}, "chunk 0 must be 1 to 8 bytes"),
    ({"chunks": ("abc",)}, "chunk 0"),
    ({"limit": 1}, "Parcel: 2 chunks, limit 1"),
])
def test_chunks_kind_and_rules_between_fields_refuse_bad_values(changes, match):
    with pytest.raises(MessageError, match=match):
        parcel(**changes)


def test_built_values_are_frozen_and_normalised():
    message = everything(members=["a", "b"], shares={"b": b"sh1", "a": b"sh0"})
    assert message.members == ("a", "b") and list(message.shares) == ["a", "b"]
    with pytest.raises(TypeError):
        message.shares["c"] = b"sh2"  # type: ignore[index]
    with pytest.raises(ValueError):
        message.words[0] = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.count = 8  # type: ignore[misc]


# -- framing and decoding refusals ---------------------------------------------------------------------------


def test_round_trip_of_each_toy_message():
    for message in (everything(), parcel(), Roll(ids=()), Entry(name="e", value=0),
                    everything(words=np.arange(3, dtype="<u8"), keys=())):
        blob = message.encode()
        assert blob[:4] == b"TOYW" and blob[4] == 3
        back = CODEC.decode(blob)
        assert same(back, message) and back.encode() == blob
        assert CODEC.decode(bytearray(blob)).encode() == CODEC.decode(memoryview(blob)).encode() == blob


def test_header_and_body_layout():
    header, body = parts(parcel().encode())
    assert header == {"type": "Parcel", "owner": "n", "limit": 2, "chunk_bytes": [3, 1]} and body == b"abcd"
    header, body = parts(everything().encode())
    assert header["words"] == {"ring_bits": 32, "length": 3} and len(body) == 12
    assert header["shares"] == {"a": "736830", "b": "736831"} and header["members"] == ["a", "b"]


def _edited(message: WireMessage, **changes: Any) -> bytes:
    header, body = parts(message.encode())
    for key, value in changes.items():
        if value is _DROP:
            del header[key]
        else:
            header[key] = value
    return reframe(header, body)


_DROP = object()
GOOD = parcel().encode()
ROLL = Roll(ids=("a",)).encode()
_HEADER = canonical_json(parts(ROLL)[0])


@pytest.mark.parametrize("blob, match", [
    (b"", "not a toy-v1 message \\(bad magic\\)"),
    (b"TOYW\x03\x00\x00", "bad magic"),
    (b"GFSA" + GOOD[4:], "bad magic"),
    (GOOD[:4] + b"\x04" + GOOD[5:], "toy-v1 wire version 4 is not supported \\(this is version 3\\)"),
    (GOOD[:20], "header length"),
    (ROLL[:5] + (len(_HEADER) + 1).to_bytes(4, "big") + ROLL[9:], "header length"),
    (reframe(None, raw=b"{" + b" " * (1 << 16) + b"}"), "header length 65538 exceeds"),
    (reframe(None, raw=b"{x}"), "not valid JSON"),
    (reframe(None, raw=b'{"a":"\xff"}'), "not valid JSON"),
    (reframe(None, raw=b"[]"), "must be a JSON object"),
    (reframe({"ids": []}), "unknown toy-v1 message type None"),
    (reframe({"type": 5, "ids": []}), "unknown toy-v1 message type 5"),
    (reframe({"type": "Scroll", "ids": []}), "unknown toy-v1 message type 'Scroll'"),
    (reframe({"type": "WireMessage"}), "unknown toy-v1 message type"),
    (_edited(parcel(), limit=_DROP), r"Parcel: header fields wrong \(missing \['limit'\], unexpected \[\]\)"),
    (_edited(parcel(), extra=1), r"unexpected \['extra'\]"),
    (_edited(parcel(), chunk_bytes=_DROP, chunks=["616263", "64"]), r"missing \['chunk_bytes'\], unexpected \['chunks'\]"),
    (ROLL + b"\x00", "Roll: carries 1 unexpected body bytes"),
    (GOOD + b"\x00", "Parcel.chunk_bytes: body holds 5 bytes but chunk_bytes add up to 4"),
    (GOOD[:-1], "add up to"),
    (_edited(parcel(), chunk_bytes=[]), "must be a list of 1 to 3 chunk sizes"),
    (_edited(parcel(), chunk_bytes="4"), "chunk sizes"),
    (_edited(parcel(), chunk_bytes=[4, 0]), "Parcel.chunk_bytes: must be an integer in \\[1, 8\\]"),
    (_edited(parcel(), chunk_bytes=[2.0, 2]), "must be an integer"),
    (_edited(parcel(), limit="2"), "Parcel.limit"),
    (everything().encode() + b"\x00", "body holds 13 bytes, header announces 3 words of 32 bits"),
    (_edited(everything(), words={"ring_bits": 16, "length": 6}), "ring_bits must be one of \\[32, 64\\]"),
    (_edited(everything(), words={"ring_bits": 32.0, "length": 3}), "ring_bits"),
    (_edited(everything(), words={"ring_bits": 32, "length": -1}), "words.length"),
    (_edited(everything(), words={"ring_bits": 32, "length": 3, "x": 1}), "exactly ring_bits and length"),
    (_edited(everything(), words=[32, 3]), "exactly ring_bits and length"),
    (_edited(everything(), blob="0F"), "bytes must be lowercase hex"),
    (_edited(everything(), blob="0"), "bytes must be lowercase hex"),
    (_edited(everything(), blob="00 f"), "bytes must be lowercase hex"),
    (_edited(everything(), blob=15), "bytes must be lowercase hex"),
    (_edited(everything(), keys="6b31"), "Everything.keys: must be a list"),
    (_edited(everything(), shares=["a"]), "Everything.shares: must be a JSON object"),
    (_edited(everything(), members=[]), "must hold 1 to 3 items"),
], ids=lambda v: v[:40] if isinstance(v, str) else "bytes")
def test_malformed_bytes_raise_message_error(blob, match):
    with pytest.raises(MessageError, match=match):
        CODEC.decode(blob)


@pytest.mark.parametrize("raw", [
    json.dumps({"type": "Roll", "ids": ["a"]}).encode(),  # spaces
    b'{"type":"Roll","ids":["a"]}',  # keys not sorted
    _HEADER + b" ",  # trailing space
    _HEADER.replace(b'"a"', b'"\\u0061"'),  # an escape where none is needed
])
def test_non_canonical_headers_are_refused(raw):
    assert json.loads(raw) == json.loads(_HEADER)
    with pytest.raises(MessageError, match="Roll: not in canonical form"):
        CODEC.decode(reframe(None, raw=raw))


def test_numbers_written_otherwise_are_refused():
    for raw in (_HEADER.replace(b"Roll", b"Parcel").replace(b'"ids":["a"]', b'"chunk_bytes":[1],"limit":1e0,"owner":"n"'),
                canonical_json({"type": "Parcel", "chunk_bytes": [1], "limit": 1, "owner": "n"}).replace(b"1]", b"01]")):
        with pytest.raises(MessageError):
            CODEC.decode(reframe(None, raw=raw) + b"x")


@pytest.mark.parametrize("data", ["TOYW", None, 12, [1, 2]])
def test_non_bytes_are_refused(data):
    with pytest.raises(MessageError, match="toy-v1 message must be bytes"):
        CODEC.decode(data)  # type: ignore[arg-type]


def test_deeply_nested_json_is_a_message_error():
    with pytest.raises(MessageError):
        CODEC.decode(reframe(None, raw=b"[" * 3000 + b"]" * 3000))
    nested: dict[str, Any] = {"type": "Entry", "name": "x", "value": 1}
    for _ in range(200):
        nested = {"type": "Entry", "name": "x", "value": nested}
    with pytest.raises(MessageError, match="Entry.value"):
        CODEC.decode(reframe(nested))


# -- declaration errors (programming errors, caught when the codec is built) ---------------------------------


def test_bad_declarations_are_caught_at_import():
    @dataclass(frozen=True, slots=True, kw_only=True)
    class TwoBodies(_Toy):
        a: np.ndarray
        b: tuple[bytes, ...]
        SCHEMA: ClassVar = schema(a=Words(), b=Chunks(max_count=1, max_chunk_bytes=1))

    @dataclass(frozen=True, slots=True, kw_only=True)
    class Missing(_Toy):
        a: str
        b: str
        SCHEMA: ClassVar = schema(a=ID)

    @dataclass(frozen=True, slots=True, kw_only=True)
    class Clash(_Toy):
        a: str
        chunks: tuple[bytes, ...]
        SCHEMA: ClassVar = schema(a=ID, chunks=Chunks(max_count=1, max_chunk_bytes=1, size_key="a"))

    @dataclass(frozen=True, slots=True, kw_only=True)
    class Typed(_Toy):
        type: str
        SCHEMA: ClassVar = schema(type=ID)

    @dataclass(frozen=True, slots=True, kw_only=True)
    class Elsewhere(WireMessage):
        a: str
        FRAMING: ClassVar = Framing(name="other", magic=b"OTHR", version=1, max_header_bytes=10)
        SCHEMA: ClassVar = schema(a=ID)

    for cls, match in ((TwoBodies, "at most one field"), (Missing, "SCHEMA and dataclass fields differ"),
                       (Clash, "unique"), (Typed, "not 'type'"), (Elsewhere, "FRAMING")):
        with pytest.raises(TypeError, match=match):
            Codec(TOY, (cls,))
    with pytest.raises(TypeError):
        Everything.SCHEMA["owner"] = DIGEST  # type: ignore[index]


# -- properties ----------------------------------------------------------------------------------------------

ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,7}\Z")
sorted_ids = st.lists(ids, unique=True, max_size=4).map(lambda v: tuple(sorted(v)))
entry = st.builds(Entry, name=ids, value=st.integers(0, 9))
toy_messages = st.one_of(
    st.builds(Everything, owner=ids, digest=st.binary(min_size=32, max_size=32).map(bytes.hex),
              count=st.integers(1, 1000), blob=st.binary(max_size=8), key=st.binary(min_size=4, max_size=4),
              members=sorted_ids.filter(lambda v: 1 <= len(v) <= 3),
              keys=st.lists(st.binary(min_size=2, max_size=2), max_size=3).map(tuple),
              shares=st.dictionaries(ids, st.binary(min_size=3, max_size=3), max_size=3),
              words=st.one_of(st.lists(st.integers(0, 2**32 - 1), max_size=5).map(lambda v: np.array(v, "<u4")),
                              st.lists(st.integers(0, 2**64 - 1), max_size=5).map(lambda v: np.array(v, "<u8")))),
    st.builds(Parcel, owner=ids, limit=st.just(3), chunks=st.lists(st.binary(min_size=1, max_size=8), min_size=1,
                                                                     max_size=3).map(tuple)),
    st.builds(Roll, ids=sorted_ids),
    entry,
)


def _valid_vector_messages() -> list[Any]:
    """One published message of each type of both protocols: pytest.param(family, bytes, id=family-type)."""
    secagg = json.loads((PROTOCOLS / "secagg-v1" / "vectors.json").read_text())
    ckks = json.loads((PROTOCOLS / "ckks-v1" / "vectors.json").read_text())
    found = {}
    for case in secagg["valid"]:
        for record in case["transcript"]:
            found.setdefault(record["kind"], ("secagg", bytes.fromhex(record["hex"])))
    for case in ckks["messages"]["valid"]:
        found.setdefault(case["type"], ("ckks", bytes.fromhex(case["hex"])))
    return [pytest.param(family, blob, id=f"{family}-{kind}") for kind, (family, blob) in sorted(found.items())]


VECTOR_MESSAGES = _valid_vector_messages()
DECODERS = {"secagg": decode, "ckks": decode_ckks_message, "toy": CODEC.decode}


def refused_or_canonical(decoder: Any, blob: bytes) -> None:
    try:
        message = decoder(blob)
    except MessageError:
        return
    assert message.encode() == blob


@settings(max_examples=300, deadline=None)
@given(toy_messages)
def test_decode_of_encode_is_the_message(message):
    blob = message.encode()
    back = CODEC.decode(blob)
    assert same(back, message) and back.encode() == blob


@settings(max_examples=400, deadline=None)
@given(message=toy_messages, data=st.data())
def test_one_byte_mutation_is_refused_or_canonical(message, data):
    blob = bytearray(message.encode())
    position = data.draw(st.integers(0, len(blob) - 1))
    blob[position] = data.draw(st.integers(0, 255).filter(lambda b: b != blob[position]))
    refused_or_canonical(CODEC.decode, bytes(blob))


@pytest.mark.parametrize("family, blob", VECTOR_MESSAGES)
def test_every_one_byte_mutation_of_published_messages_is_refused_or_canonical(family, blob):
    assert DECODERS[family](blob).encode() == blob
    step = max(1, len(blob) // 600)  # every byte of the short messages; a spread of the long ones
    for position in range(0, len(blob), step):
        for value in {0x00, 0xFF, blob[position] ^ 0x01, blob[position] ^ 0x20, ord('"'), ord("0"), ord("1")}:
            if value != blob[position]:
                mutated = bytearray(blob)
                mutated[position] = value
                refused_or_canonical(DECODERS[family], bytes(mutated))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80).map(lambda b: TOY.magic + bytes([TOY.version]) + b))
def test_random_bytes_after_the_magic_only_raise_message_error(blob):
    refused_or_canonical(CODEC.decode, blob)
