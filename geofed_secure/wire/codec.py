"""The one codec of the framed wire families (secagg-v1, ckks-v1): id checks, canonical JSON, framing, field kinds.

Wire format of a family (:class:`Framing`): ``MAGIC (4 bytes) | version (1 byte) | header length (4 bytes,
big-endian) | header | body``. The header is canonical JSON (sorted keys, no spaces, ASCII): an object holding
``type`` and one member per field. The body holds the raw bytes of at most one field (ring words, ciphertexts,
a roster's advertisements), whose sizes the header fixes.

A message is a frozen dataclass deriving from :class:`WireMessage` that declares ``SCHEMA = {field: kind}``.
A kind (:data:`ID`, :data:`DIGEST`, :class:`Int`, :class:`Bytes`, :class:`List`, :class:`IdMap`,
:class:`Words`, :class:`Chunks`) checks a value when a message is built and converts it to
and from the wire, so one declaration gives validation, encoding and decoding. :meth:`Codec.decode` is strict:
magic, version, header size, a JSON object, a known type, the exact field set, every value, the body framing,
and that re-encoding gives the same bytes; every defect raises :class:`~geofed_secure.errors.MessageError`.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from geofed_secure.errors import MessageError

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
DIGEST_PATTERN = re.compile(r"^[0-9a-f]{64}\Z")
PREFIX_BYTES = 9  # magic (4) + version (1) + header length (4)


def fail(what: str, problem: str) -> MessageError:
    """The error for a defect of ``what`` (a message, or ``Message.field``)."""
    return MessageError(f"{what}: {problem}")


def check_id(value: Any, *, what: str) -> str:
    """A federation or node id: 1 to 64 characters of ``[A-Za-z0-9._-]``, starting with a letter or digit."""
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise fail(what, f"{value!r} is not a valid id ([A-Za-z0-9._-], <= 64 characters)")
    return value


_ID_RUN = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._-]{0,63}\n)*\Z")


def check_ids(values: Iterable[Any], *, what: str) -> None:
    """:func:`check_id` of every value in one regular-expression match (views and maps of n ids reach every node).

    A value holding the separator (a newline) would split in two, so the separator count must equal the count of
    values; on any failure the values are checked one by one, for the exact error."""
    values = values if isinstance(values, tuple | list) else list(values)
    try:
        joined = "\n".join(values) + "\n"
    except TypeError:
        joined = ""
    if joined.count("\n") != len(values) or not _ID_RUN.match(joined):
        for value in values:
            check_id(value, what=what)


def check_digest(value: Any, *, what: str) -> str:
    """A SHA-256 digest written as 64 lowercase hex characters."""
    if not isinstance(value, str) or not DIGEST_PATTERN.match(value):
        raise fail(what, "must be 64 lowercase hex characters (SHA-256)")
    return value


def check_int(value: Any, low: int, high: int | None = None, *, what: str) -> int:
    """An int (not a bool) in ``[low, high]``; ``high=None`` leaves it unbounded above."""
    if (not isinstance(value, int) or isinstance(value, bool) or value < low
            or (high is not None and value > high)):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise fail(what, f"must be an integer {bound}, got {value!r}")
    return value


def canonical_json(obj: Any) -> bytes:
    """The one JSON encoding of ``obj``: sorted keys, no spaces, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


# -- field kinds ------------------------------------------------------------------------------------------------


class Kind:
    """How one field is checked when a message is built, written to the header, and read back from the wire.

    ``from_json`` only converts the JSON form to the Python form (hex to bytes, ...); the message's
    constructor then runs ``check``, so a decoded message passes the same checks as one built in code.
    """

    __slots__ = ()

    def check(self, value: Any, *, what: str) -> Any:
        """Validate ``value``; return its frozen form."""
        raise NotImplementedError

    def to_json(self, value: Any) -> Any:
        return value

    def from_json(self, raw: Any, *, what: str) -> Any:
        return raw

    def header_key(self, name: str) -> str:
        """The header member that describes field ``name``."""
        return name


@dataclass(frozen=True, slots=True)
class Id(Kind):
    """A federation or node id (:func:`check_id`)."""

    def check(self, value: Any, *, what: str) -> str:
        return check_id(value, what=what)


@dataclass(frozen=True, slots=True)
class Digest(Kind):
    """A SHA-256 digest as 64 lowercase hex characters (:func:`check_digest`)."""

    def check(self, value: Any, *, what: str) -> str:
        return check_digest(value, what=what)


@dataclass(frozen=True, slots=True)
class Int(Kind):
    """An integer in ``[low, high]`` (a JSON number; never a bool or a float)."""

    low: int = 0
    high: int | None = None

    def check(self, value: Any, *, what: str) -> int:
        return check_int(value, self.low, self.high, what=what)


@dataclass(frozen=True, slots=True)
class Bytes(Kind):
    """Bytes, of exactly ``size`` when given; lowercase hex in the header."""

    size: int | None = None

    def check(self, value: Any, *, what: str) -> bytes:
        if not isinstance(value, bytes):
            raise fail(what, f"must be bytes, got {type(value).__name__}")
        if self.size is not None and len(value) != self.size:
            raise fail(what, f"must be {self.size} bytes, got {len(value)}")
        return value

    def to_json(self, value: bytes) -> str:
        return value.hex()

    def from_json(self, raw: Any, *, what: str) -> bytes:
        # bytes.fromhex takes upper case and spaces too: the round trip keeps exactly lowercase hex, two characters a
        # byte (a regular expression does the same 15x slower on long values such as sealed shares)
        try:
            value = bytes.fromhex(raw) if isinstance(raw, str) else None
        except ValueError:
            value = None
        if value is None or value.hex() != raw:
            raise fail(what, "bytes must be lowercase hex, two characters a byte")
        return value


@dataclass(frozen=True, slots=True)
class List(Kind):
    """A list of ``item`` values (a tuple once built), ``min_count`` to ``max_count`` long.

    ``sorted_unique``: the items must be sorted and unique (id lists); otherwise their order is free.
    """

    item: Kind
    min_count: int = 0
    max_count: int | None = None
    sorted_unique: bool = False

    def check(self, value: Any, *, what: str) -> tuple[Any, ...]:
        if not isinstance(value, tuple | list):
            raise fail(what, "must be a list")
        if len(value) < self.min_count or (self.max_count is not None and len(value) > self.max_count):
            bound = f"{self.min_count} or more" if self.max_count is None else f"{self.min_count} to {self.max_count}"
            raise fail(what, f"must hold {bound} items, got {len(value)}")
        if isinstance(self.item, Id):
            check_ids(value, what=what)
            items = tuple(value)
        else:
            items = tuple(self.item.check(v, what=what) for v in value)
        if self.sorted_unique and list(items) != sorted(set(items)):
            raise fail(what, "items must be sorted and unique")
        return items

    def to_json(self, value: tuple[Any, ...]) -> list[Any]:
        return [self.item.to_json(v) for v in value]

    def from_json(self, raw: Any, *, what: str) -> list[Any]:
        if not isinstance(raw, list):
            raise fail(what, "must be a list")
        return [self.item.from_json(v, what=what) for v in raw]


@dataclass(frozen=True, slots=True)
class IdMap(Kind):
    """A mapping id -> ``value`` kind, frozen and sorted by id once built; a JSON object on the wire."""

    value: Kind

    def check(self, value: Any, *, what: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise fail(what, "must be a mapping id -> value")
        check_ids(value.keys(), what=what)
        size = self.value.size if isinstance(self.value, Bytes) else None
        if size is not None and set(map(type, value.values())) <= {bytes} and set(map(len, value.values())) <= {size}:
            checked = dict(value)  # n keys at every node: all fixed-size bytes, checked in two C-level passes
        else:
            checked = {k: self.value.check(v, what=f"{what}[{k}]") for k, v in value.items()}
        return MappingProxyType(dict(sorted(checked.items())))

    def to_json(self, value: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self.value.to_json(v) for k, v in value.items()}

    def from_json(self, raw: Any, *, what: str) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise fail(what, "must be a JSON object")
        size = self.value.size if isinstance(self.value, Bytes) else None
        if size and raw:  # n keys or nonces at every node: one hex decoding of them all when all are well formed
            values = list(raw.values())
            joined = "".join(values) if set(map(type, values)) == {str} and set(map(len, values)) == {2 * size} else ""
            try:
                blob = bytes.fromhex(joined)
            except ValueError:
                blob = b""
            if blob and blob.hex() == joined:  # exactly lowercase hex, as Bytes.from_json requires of each
                return {k: blob[i * size:(i + 1) * size] for i, k in enumerate(raw)}
        return {k: self.value.from_json(v, what=f"{what}[{k}]") for k, v in raw.items()}


class BodyKind(Kind):
    """A kind whose bytes travel in the body; the header member ``header_key`` describes their size."""

    __slots__ = ()

    def to_json(self, value: Any) -> Any:
        raise NotImplementedError

    def to_body(self, value: Any) -> bytes:
        raise NotImplementedError

    def body_parts(self, value: Any) -> list[Any]:
        """The body as buffers to be joined once into the frame (no intermediate copy of a large body)."""
        return [self.to_body(value)]

    def from_body(self, raw: Any, body: bytes, *, what: str) -> Any:
        """The value described by header member ``raw`` whose bytes are all of ``body``."""
        raise NotImplementedError

    def is_body(self, value: Any, body: bytes) -> bool:
        """Whether ``value`` encodes to exactly ``body`` (the decoder's canonical-form check)."""
        return bool(self.to_body(value) == body)


@dataclass(frozen=True, slots=True)
class Words(BodyKind):
    """A 1-D array of little-endian ring words (``ring_bits`` each); header ``{"ring_bits", "length"}``."""

    ring_bits: tuple[int, ...] = (32, 64)

    def check(self, value: Any, *, what: str) -> np.ndarray:
        dtypes = [np.dtype(f"<u{bits // 8}") for bits in self.ring_bits]
        if not isinstance(value, np.ndarray) or value.ndim != 1 or value.dtype not in dtypes:
            sizes = " or ".join(f"uint{bits}" for bits in self.ring_bits)
            raise fail(what, f"must be a 1-D little-endian {sizes} array")
        if not value.flags.writeable and isinstance(value.base, bytes):
            return value  # a read-only view of immutable bytes (a decoded body) cannot change: no copy needed
        frozen = value.copy()
        frozen.setflags(write=False)
        return frozen

    def to_json(self, value: np.ndarray) -> dict[str, int]:
        return {"ring_bits": value.dtype.itemsize * 8, "length": int(value.shape[0])}

    def to_body(self, value: np.ndarray) -> bytes:
        return value.tobytes()

    def body_parts(self, value: np.ndarray) -> list[Any]:
        return [np.ascontiguousarray(value).data.cast("B")]

    def is_body(self, value: np.ndarray, body: bytes) -> bool:
        return value.base is body or value.tobytes() == body  # a decoded value is a view of its body: nothing to copy

    def from_body(self, raw: Any, body: bytes, *, what: str) -> np.ndarray:
        if not isinstance(raw, dict) or set(raw) != {"ring_bits", "length"}:
            raise fail(what, "must describe exactly ring_bits and length")
        bits = raw["ring_bits"]
        if not isinstance(bits, int) or isinstance(bits, bool) or bits not in self.ring_bits:
            raise fail(what, f"ring_bits must be one of {list(self.ring_bits)}, got {bits!r}")
        length = check_int(raw["length"], 0, what=f"{what}.length")
        dtype = np.dtype(f"<u{bits // 8}")
        if len(body) != length * dtype.itemsize:
            raise fail(what, f"body holds {len(body)} bytes, header announces {length} words of {bits} bits")
        return np.frombuffer(body, dtype=dtype)


@dataclass(frozen=True, slots=True)
class Chunks(BodyKind):
    """Opaque byte strings (ciphertexts), ``1`` to ``max_count`` of them, each ``1`` to ``max_chunk_bytes``.

    The header member ``size_key`` lists their sizes; their bytes follow one another in the body.
    """

    max_count: int
    max_chunk_bytes: int
    size_key: str = "chunk_bytes"

    def check(self, value: Any, *, what: str) -> tuple[bytes, ...]:
        if not isinstance(value, tuple | list):
            raise fail(what, "must be a list of byte strings")
        if not 1 <= len(value) <= self.max_count:
            raise fail(what, f"must hold 1 to {self.max_count} chunks, got {len(value)}")
        if set(map(type, value)) != {bytes} or not 1 <= min(map(len, value)) <= max(map(len, value)) <= self.max_chunk_bytes:
            for i, chunk in enumerate(value):  # the first bad chunk, for the error
                if not isinstance(chunk, bytes) or not 1 <= len(chunk) <= self.max_chunk_bytes:
                    raise fail(what, f"chunk {i} must be 1 to {self.max_chunk_bytes} bytes")
        return tuple(value)

    def header_key(self, name: str) -> str:
        return self.size_key

    def to_json(self, value: tuple[bytes, ...]) -> list[int]:
        return [len(chunk) for chunk in value]

    def to_body(self, value: tuple[bytes, ...]) -> bytes:
        return b"".join(value)

    def body_parts(self, value: tuple[bytes, ...]) -> list[Any]:
        return list(value)

    def is_body(self, value: tuple[bytes, ...], body: bytes) -> bool:
        # chunk by chunk in place (startswith at an offset is a memcmp): no joined copy of megabytes of ciphertexts
        # (a memoryview comparison would go element by element, 30x slower); many small chunks (a roster's
        # advertisements) are joined once instead, one C call rather than one per chunk
        whole, offset = body if isinstance(body, bytes) else bytes(body), 0
        if len(value) > 64 and len(whole) <= 64 * 2**20:
            return b"".join(value) == whole
        for chunk in value:
            if not whole.startswith(chunk, offset):
                return False
            offset += len(chunk)
        return offset == len(whole)

    def from_body(self, raw: Any, body: bytes, *, what: str) -> tuple[bytes, ...]:
        if not isinstance(raw, list) or not 1 <= len(raw) <= self.max_count:
            raise fail(what, f"must be a list of 1 to {self.max_count} chunk sizes")
        if set(map(type, raw)) != {int} or not 1 <= min(raw) <= max(raw) <= self.max_chunk_bytes:
            for size in raw:  # the first bad size, for the error
                check_int(size, 1, self.max_chunk_bytes, what=what)
        ends = list(itertools.accumulate(raw))
        if ends[-1] != len(body):
            raise fail(what, f"body holds {len(body)} bytes but {self.size_key} add up to {ends[-1]}")
        return tuple(body[end - size:end] for end, size in zip(ends, raw, strict=True))


ID = Id()
DIGEST = Digest()
IDS = List(ID, sorted_unique=True)  # sorted, unique ids; possibly none


def schema(**kinds: Kind) -> Mapping[str, Kind]:
    """A message's ``SCHEMA``: field name -> kind, in declaration order, read-only."""
    return MappingProxyType(kinds)


# -- messages ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Framing:
    """One wire family's frame: ``magic | version | header length | header | body`` (see the module docstring)."""

    name: str
    magic: bytes
    version: int
    max_header_bytes: int

    def frame(self, header: Mapping[str, Any], body: bytes | list[Any] = b"") -> bytes:
        """Frame a header object (written as canonical JSON) and a body (bytes, or buffers to join: one copy)."""
        raw = canonical_json(header)
        parts = body if isinstance(body, list) else [body]
        return b"".join([self.magic, bytes([self.version]), len(raw).to_bytes(4, "big"), raw, *parts])

    def unframe(self, data: Any) -> tuple[bytes, dict[str, Any], bytes]:
        """(raw header bytes, header object, body) of framed bytes; checks all but the header's content."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise MessageError(f"{self.name} message must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < PREFIX_BYTES or data[:4] != self.magic:
            raise MessageError(f"not a {self.name} message (bad magic)")
        if data[4] != self.version:
            raise MessageError(f"{self.name} wire version {data[4]} is not supported (this is version {self.version}): it "
                               "was written by another release of geofed-secure; both ends of a federation, and the "
                               "release that audits a transcript, must speak the same wire version")
        size = int.from_bytes(data[5:PREFIX_BYTES], "big")
        if size > self.max_header_bytes or PREFIX_BYTES + size > len(data):
            raise MessageError(f"{self.name} header length {size} exceeds the message or the limit")
        raw = data[PREFIX_BYTES:PREFIX_BYTES + size]
        try:
            header = json.loads(raw.decode("ascii"))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError, over-long integers
            raise MessageError(f"{self.name} header is not valid JSON: {type(exc).__name__}") from None
        if not isinstance(header, dict):
            raise MessageError(f"{self.name} header must be a JSON object")
        return raw, header, data[PREFIX_BYTES + size:]


class WireMessage:
    """Base of framed messages: checks from ``SCHEMA`` when built; ``header``, ``body`` and ``encode`` from it too.

    A subclass is a frozen dataclass with one field per ``SCHEMA`` entry and sets ``FRAMING``; rules that tie
    fields together go in :meth:`_check_together`.
    """

    __slots__ = ()
    SCHEMA: ClassVar[Mapping[str, Kind]]
    FRAMING: ClassVar[Framing]

    def __post_init__(self) -> None:
        for name, kind, _, what, _ in _layout(type(self)):
            object.__setattr__(self, name, kind.check(getattr(self, name), what=what))
        self._check_together()

    def _check_together(self) -> None:
        """Raise :class:`MessageError` if the (each valid) fields break a rule between them; none by default."""

    def header(self) -> dict[str, Any]:
        """The header object: ``type`` and each field's JSON form."""
        out: dict[str, Any] = {"type": type(self).__name__}
        for name, kind, key, _, _ in _layout(type(self)):
            out[key] = kind.to_json(getattr(self, name))
        return out

    def is_body(self, body: bytes) -> bool:
        """Whether :meth:`body` is exactly ``body`` (without re-encoding a decoded body where its kind can tell)."""
        kinds = [(name, kind) for name, kind in self.SCHEMA.items() if isinstance(kind, BodyKind)]
        if not kinds:
            return not body
        return all(kind.is_body(getattr(self, name), body) for name, kind in kinds)  # at most one body field

    def encode(self) -> bytes:
        """The message's one canonical wire encoding."""
        known = _ENCODED.get(id(self))
        if known is not None and known[0] is self:
            return known[1]
        # the body's buffers (at most one body field) go straight into the frame: one copy of a large body
        parts = [part for name, kind in self.SCHEMA.items() if isinstance(kind, BodyKind)
                 for part in kind.body_parts(getattr(self, name))]
        data = self.FRAMING.frame(self.header(), parts)
        _remember(self, data)
        return data


# The encodings of the last few large messages decoded or encoded (a roster, graph seeds, an unmask request), by
# identity: a frozen message's bytes never change, so a node hashing the roster it decoded (SPEC 2.8) does not encode
# it again. Entries hold the message, so an id is not reused while its entry lives; ring words and anything over
# 8 MiB are never kept.
_ENCODED: dict[int, tuple[WireMessage, bytes]] = {}
_ENCODED_ENTRIES = 16
_ENCODED_MIN_BYTES = 4096
_ENCODED_MAX_BYTES = 8 * 2**20


def _remember(message: WireMessage, data: bytes) -> None:
    if not _ENCODED_MIN_BYTES <= len(data) <= _ENCODED_MAX_BYTES or _layouts(type(message))[3]:
        return
    while len(_ENCODED) >= _ENCODED_ENTRIES:
        try:
            del _ENCODED[next(iter(_ENCODED))]
        except (KeyError, StopIteration, RuntimeError):  # another thread evicted it first
            break
    _ENCODED[id(message)] = (message, data)


_Layout = tuple[tuple[str, "Kind", str, str, str], ...]
_LAYOUTS: dict[type, tuple[_Layout, frozenset[str], bool, bool]] = {}


def _layouts(cls: type[WireMessage]) -> tuple[_Layout, frozenset[str], bool, bool]:
    """Computed once per message class: per field (name, kind, header member, what for a field error, what for a
    member error), the header members, whether a field travels in the body, and whether that field is ring words.
    Building these strings for every field of every message was a good part of decoding a key roster."""
    known = _LAYOUTS.get(cls)
    if known is None:
        layout = tuple((name, kind, kind.header_key(name), f"{cls.__name__}.{name}",
                        f"{cls.__name__}.{kind.header_key(name)}") for name, kind in cls.SCHEMA.items())
        known = _LAYOUTS[cls] = (layout, frozenset(key for _, _, key, _, _ in layout),
                                 any(isinstance(kind, BodyKind) for kind in cls.SCHEMA.values()),
                                 any(isinstance(kind, Words) for kind in cls.SCHEMA.values()))
    return known


def _layout(cls: type[WireMessage]) -> _Layout:
    return _layouts(cls)[0]


def build(cls: type[WireMessage], header: Mapping[str, Any], body: bytes) -> WireMessage:
    """A ``cls`` from its header members (without ``type``) and body; :class:`MessageError` on any defect."""
    _, expected, has_body, _ = _layouts(cls)
    if header.keys() != expected:
        missing, extra = sorted(expected - set(header)), sorted(set(header) - expected)
        raise fail(cls.__name__, f"header fields wrong (missing {missing}, unexpected {extra})")
    if body and not has_body:
        raise fail(cls.__name__, f"carries {len(body)} unexpected body bytes")
    if cls.__post_init__ is WireMessage.__post_init__:
        # The constructor's checks, field by field as each is read, without building the keyword arguments and
        # walking the fields a second time (views, rosters and graph seeds of n ids reach every node).
        message = object.__new__(cls)
        for name, kind, key, what_field, what in _layout(cls):
            raw = header[key]
            value = kind.from_body(raw, body, what=what) if isinstance(kind, BodyKind) else kind.from_json(raw, what=what)
            object.__setattr__(message, name, kind.check(value, what=what_field))
        message._check_together()
        return message
    values = {}
    for name, kind, key, _, what in _layout(cls):
        if isinstance(kind, BodyKind):
            values[name] = kind.from_body(header[key], body, what=what)
        else:
            values[name] = kind.from_json(header[key], what=what)
    return cls(**values)  # the constructor (with the class's own __post_init__) runs every check


class Codec:
    """Strict decoding of one wire family: its framing and its message classes, by type name."""

    def __init__(self, framing: Framing, messages: Iterable[type[WireMessage]]) -> None:
        self.framing = framing
        self.types: Mapping[str, type[WireMessage]] = MappingProxyType({cls.__name__: cls for cls in messages})
        for cls in self.types.values():
            _check_declaration(cls, framing)

    def decode(self, data: bytes) -> WireMessage:
        """Parse and validate wire bytes; any defect raises :class:`MessageError` naming what was wrong."""
        raw, header, body = self.framing.unframe(data)
        # One encoding per message: the header must be the canonical JSON of what it parses to. Every kind's
        # to_json(from_json(v)) is v for a value its checks accept (tests/wire/test_codec.py), so this equals
        # re-encoding the built message, without rebuilding every field's JSON form (a key roster's whole header).
        canonical = canonical_json(header) == raw
        name = header.pop("type", None)
        cls = self.types.get(name) if isinstance(name, str) else None
        if cls is None:
            raise MessageError(f"unknown {self.framing.name} message type {name!r}")
        message = build(cls, header, body)
        if not canonical or not message.is_body(body):
            raise fail(cls.__name__, "not in canonical form (one encoding per message)")
        _remember(message, data if isinstance(data, bytes) else bytes(data))
        return message


def _check_declaration(cls: type[WireMessage], framing: Framing) -> None:
    """Programming errors in a message declaration, caught at import rather than on the first odd message."""
    if not is_dataclass(cls) or cls.FRAMING is not framing:
        raise TypeError(f"{cls.__name__} must be a dataclass with FRAMING = {framing.name}'s framing")
    if {f.name for f in fields(cls)} != set(cls.SCHEMA):
        raise TypeError(f"{cls.__name__}: SCHEMA and dataclass fields differ")
    keys = [kind.header_key(name) for name, kind in cls.SCHEMA.items()]
    if "type" in keys or len(set(keys)) != len(keys):
        raise TypeError(f"{cls.__name__}: header members must be unique and not 'type'")
    if sum(isinstance(kind, BodyKind) for kind in cls.SCHEMA.values()) > 1:
        raise TypeError(f"{cls.__name__}: at most one field may travel in the body")
