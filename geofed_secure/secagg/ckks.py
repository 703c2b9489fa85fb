"""ckks-v1: secure aggregation by CKKS homomorphic encryption (TenSEAL), sans-IO (``protocols/ckks-v1/SPEC.md``).

Every node holds the same CKKS secret key (provisioned once); the server holds only a public context, adds the
nodes' ciphertexts and sends the encrypted sum back; nodes decrypt it. The server never sees an upload nor the
sum in clear, but ANY one node holding the key decrypts every individual upload it can get hold of, so one
node colluding with the server reads everything (SPEC section 6). Nothing here authenticates a party.

Layers, as in the SPEC:

- parameters and pure functions (:func:`chunk_bounds`, :func:`ckks_error_bound`, :func:`context_digest`);
- key provisioning (:func:`provision_ckks_keys`) and the TenSEAL wrappers (every TenSEAL failure becomes one
  of our typed errors);
- messages (:class:`CkksRoundStart`, :class:`CkksEncryptedInput`, :class:`CkksAggregate`) with one canonical
  wire encoding and a strict :func:`decode_ckks_message`;
- the state machines :class:`CkksNode` and :class:`CkksServer`, driven by the tables
  :data:`NODE_TRANSITIONS` and :data:`SERVER_TRANSITIONS` (the SPEC's table is
  :func:`transition_table_markdown`);
- the in-process driver :func:`run_ckks_aggregation` and the vector generator :func:`build_vectors`.

TenSEAL draws its keys and encryption noise from SEAL's own CSPRNG, which cannot be injected: ciphertexts and
the public-context digest differ between runs, so the published vectors hold only deterministic content.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import tenseal as ts

from geofed_secure.errors import (
    AnchorDigestMismatch,
    ConfigError,
    DataError,
    GeofedError,
    LocalProtocolError,
    MessageError,
    ProtocolAborted,
)
from geofed_secure.secagg.types import SERVER, AggregationResult, WireRecord, checked_dropouts

PROTOCOL_ID = "ckks-v1"
MAGIC = b"GFCK"
VERSION = 1
MIN_COHORT = 3  # with 2 contributors each learns the other's input from the sum (DESIGN.md section 3)
MAX_COHORT = 1024
MAX_LENGTH = 1 << 24  # coordinates of one upload (the weight slot comes on top)
MAX_ROUND = 2**31 - 1
MAX_CLIP = 2.0**30
MAX_WEIGHT = 2.0**30
MAX_HEADER_BYTES = 1 << 20
MAX_CHUNK_BYTES = 1 << 24
DEFAULT_CLIP = 1.0e4  # same default as secagg-v1's simulate_aggregation
HEADROOM_BITS = 48  # |value| <= 2^30 (clip, weight) summed over <= 2^10 nodes, a sign bit and 7 bits margin
SIMULATION_ANCHOR_DIGEST = hashlib.sha256(b"geofed-ckks-v1 simulation anchors").hexdigest()

# secagg-v1 stages (the keys of ``dropouts``) at which a node's ciphertext has not yet reached the server.
STAGES_BEFORE_UPLOAD = ("advertise_keys", "graph_seed", "share_keys", "masked_input")
# Wire stages of ckks-v1, in order (WireRecord.stage).
WIRE_STAGES = ("round_start", "encrypted_input", "aggregate")

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")


# ---------------------------------------------------------------------------------------------------------
# Parameters and pure functions


@dataclass(frozen=True, slots=True, kw_only=True)
class CkksParameters:
    """CKKS parameters (SPEC section 2). Sums need no Galois or relinearisation keys, so none are made."""

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    scale_bits: int = 40

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if not isinstance(n, int) or isinstance(n, bool) or n not in (4096, 8192, 16384, 32768):
            raise ConfigError("ckks.poly_modulus_degree", f"must be 4096, 8192, 16384 or 32768, got {n!r}")
        bits = self.coeff_mod_bit_sizes
        if (not isinstance(bits, tuple | list) or len(bits) < 2
                or not all(isinstance(b, int) and not isinstance(b, bool) and 20 <= b <= 60 for b in bits)):
            raise ConfigError("ckks.coeff_mod_bit_sizes", f"must be >= 2 integers in [20, 60], got {bits!r}")
        object.__setattr__(self, "coeff_mod_bit_sizes", tuple(bits))
        s = self.scale_bits
        if not isinstance(s, int) or isinstance(s, bool) or not 20 <= s <= 60:
            raise ConfigError("ckks.scale_bits", f"must be an integer in [20, 60], got {s!r}")
        if self.data_modulus_bits - s < HEADROOM_BITS:
            raise ConfigError("ckks.coeff_mod_bit_sizes", f"the data modulus ({self.data_modulus_bits} bits) must exceed "
                              f"the scale by {HEADROOM_BITS} bits so that no sum overflows")

    @property
    def slots(self) -> int:
        """Values one ciphertext holds."""
        return self.poly_modulus_degree // 2

    @property
    def data_modulus_bits(self) -> int:
        """Bits of the modulus a fresh ciphertext lives under (all primes but the special last one)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    def as_dict(self) -> dict[str, Any]:
        return {"poly_modulus_degree": self.poly_modulus_degree, "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
                "scale_bits": self.scale_bits, "slots": self.slots}


def chunk_bounds(length: int, slots: int) -> tuple[tuple[int, int], ...]:
    """Half-open ranges ``[start, stop)`` of the ``length + 1`` packed values (vector, then weight), one per ciphertext.

    >>> chunk_bounds(5, 4096)
    ((0, 6),)
    >>> chunk_bounds(4096, 4096)
    ((0, 4096), (4096, 4097))
    """
    values = length + 1
    return tuple((start, min(start + slots, values)) for start in range(0, values, slots))


def ckks_error_bound(contributors: int, *, clip: float, max_weight: float = 1.0, scale_bits: int = 40) -> float:
    """A bound on |decrypted sum - exact float64 sum| for every packed value (SPEC section 7).

    ``contributors * (2^(20 - scale_bits) + 2^-40 * max(1, clip, max_weight))``: the encoding and encryption
    noise of a sum stays far below the absolute term (measured at scale 2^40: ~1e-8 for one ciphertext, ~4e-8
    for a sum of 30, i.e. 250x to 750x under the bound), and the float64 encode/decode adds a relative error far
    below 2^-40 (measured ~1e-15). Empirical with a wide margin, not a proof.

    >>> ckks_error_bound(10, clip=1.0) == 10 * 2.0**-20 + 10 * 2.0**-40
    True
    """
    magnitude = max(1.0, float(clip), float(max_weight))
    return contributors * (2.0 ** (20 - scale_bits) + 2.0**-40 * magnitude)


def context_digest(public_context: bytes) -> str:
    """SHA-256 (hex) of the canonical public context: the name nodes and server give to the key set.

    Canonical: the context is loaded and re-serialised with the public key only, so the digest does not depend on
    which optional keys the given bytes carried.
    """
    return hashlib.sha256(_public_bytes(_load_context(public_context, what="public context"))).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Keys and TenSEAL wrappers


@dataclass(frozen=True, slots=True, kw_only=True)
class CkksKeys:
    """The key material of one federation: what every node and the server receive at provisioning."""

    parameters: CkksParameters
    secret_context: bytes = field(repr=False)  # to every node: parameters, public key and the secret key
    public_context: bytes = field(repr=False)  # to the server: parameters and the public key, no secret key
    context_digest: str  # SHA-256 of public_context


def provision_ckks_keys(parameters: CkksParameters | None = None) -> CkksKeys:
    """Make a fresh CKKS key set (SEAL's CSPRNG; not reproducible) and the two contexts derived from it."""
    parameters = parameters or CkksParameters()
    try:
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=parameters.poly_modulus_degree,
                         coeff_mod_bit_sizes=list(parameters.coeff_mod_bit_sizes))
    except Exception as exc:  # SEAL refuses insecure or inconsistent parameter sets
        raise ConfigError("ckks", f"TenSEAL refuses these parameters: {exc}") from exc
    ctx.global_scale = 2.0**parameters.scale_bits
    secret = ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
    public = _public_bytes(ctx)
    return CkksKeys(parameters=parameters, secret_context=secret, public_context=public,
                    context_digest=hashlib.sha256(public).hexdigest())


def _public_bytes(ctx: ts.Context) -> bytes:
    return ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)


def _load_context(data: bytes, *, what: str) -> ts.Context:
    if not isinstance(data, bytes) or not data:
        raise DataError(f"{what}: expected the serialised TenSEAL context as non-empty bytes")
    try:
        ctx = ts.context_from(data)
        scheme = ctx.seal_context().data.key_context_data().parms().scheme()
        scale = ctx.global_scale
    except Exception as exc:  # TenSEAL raises ValueError/RuntimeError for corrupt bytes or a missing scale
        raise DataError(f"{what}: not a usable TenSEAL context ({exc})") from exc
    if scheme != ts.SCHEME_TYPE.CKKS.value:
        raise DataError(f"{what}: not a CKKS context")
    if not (math.isfinite(scale) and scale >= 1):
        raise DataError(f"{what}: global scale {scale!r} is unusable")
    return ctx


@dataclass(frozen=True, slots=True)
class _Keyring:
    """A loaded context with what the protocol checks ciphertexts against."""

    context: ts.Context
    slots: int
    scale: float
    parms_id: tuple[int, ...]
    digest: str

    @classmethod
    def load(cls, data: bytes, *, what: str) -> _Keyring:
        ctx = _load_context(data, what=what)
        seal = ctx.seal_context().data
        slots = seal.key_context_data().parms().poly_modulus_degree() // 2
        return cls(context=ctx, slots=slots, scale=float(ctx.global_scale), parms_id=tuple(seal.first_parms_id()),
                   digest=hashlib.sha256(_public_bytes(ctx)).hexdigest())

    @property
    def has_secret_key(self) -> bool:
        return bool(self.context.has_secret_key())


def _encrypt(keyring: _Keyring, values: np.ndarray) -> tuple[bytes, ...]:
    """One ciphertext per slot-sized chunk, so TenSEAL never packs (and never warns about) several ciphertexts."""
    return tuple(ts.ckks_vector(keyring.context, values[a:b].tolist()).serialize()
                 for a, b in chunk_bounds(values.shape[0] - 1, keyring.slots))


def _load_chunks(keyring: _Keyring, chunks: tuple[bytes, ...], length: int, *, what: str) -> list[ts.CKKSVector]:
    """Load ciphertexts and check each is one fresh, non-transparent ciphertext at our level and scale."""
    bounds = chunk_bounds(length, keyring.slots)
    if len(chunks) != len(bounds):
        raise MessageError(f"{what}: {len(chunks)} ciphertexts for {length} + 1 values; expected {len(bounds)}")
    vectors = []
    for i, (blob, (start, stop)) in enumerate(zip(chunks, bounds, strict=True)):
        try:
            vector = ts.ckks_vector_from(keyring.context, blob)
            size = vector.size()
            cts = vector.ciphertext()
            shape_ok = len(cts) == 1 and cts[0].size() == 2
            ok = shape_ok and tuple(cts[0].parms_id()) == keyring.parms_id and cts[0].scale == keyring.scale
            transparent = shape_ok and cts[0].is_transparent()
        except Exception as exc:  # SEAL/protobuf refuse corrupt bytes with ValueError or RuntimeError
            raise MessageError(f"{what}: ciphertext {i} does not load: {exc}") from exc
        if size != stop - start:
            raise MessageError(f"{what}: ciphertext {i} holds {size} values; expected {stop - start}")
        if not ok:
            raise MessageError(f"{what}: ciphertext {i} is not a fresh ciphertext at this context's level and scale")
        if transparent:
            raise MessageError(f"{what}: ciphertext {i} is transparent (it would carry its values in clear)")
        vectors.append(vector)
    return vectors


def _decrypt(keyring: _Keyring, vectors: list[ts.CKKSVector], *, what: str) -> np.ndarray:
    if not keyring.has_secret_key:
        raise LocalProtocolError(f"{what}: this context holds no secret key; only nodes can decrypt")
    try:
        return np.concatenate([np.asarray(v.decrypt(), dtype=np.float64) for v in vectors])
    except Exception as exc:
        raise MessageError(f"{what}: decryption failed: {exc}") from exc


def decrypt_chunks(context: bytes, chunks: tuple[bytes, ...], length: int) -> np.ndarray:
    """Decrypt packed ciphertexts (``length + 1`` values) with a serialised context, outside any session.

    A context without the secret key (the server's) raises :class:`LocalProtocolError`; corrupt ciphertexts
    raise :class:`MessageError`.
    """
    keyring = _Keyring.load(context, what="decrypt_chunks")
    if not keyring.has_secret_key:
        raise LocalProtocolError("decrypt_chunks: this context holds no secret key; only nodes can decrypt")
    return _decrypt(keyring, _load_chunks(keyring, tuple(chunks), length, what="decrypt_chunks"), what="decrypt_chunks")


# ---------------------------------------------------------------------------------------------------------
# Messages and wire encoding (SPEC section 4)


def _fail(what: str, problem: str) -> MessageError:
    return MessageError(f"{what}: {problem}")


def _check_id(value: Any, *, what: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise _fail(what, f"{value!r} is not a valid id ([A-Za-z0-9._-], <= 64 characters)")
    return value


def _check_int(value: Any, low: int, high: int, *, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _fail(what, f"must be an integer in [{low}, {high}], got {value!r}")
    return value


def _check_digest(value: Any, *, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise _fail(what, "must be 64 lowercase hex characters (SHA-256)")
    return value


def _check_ids(value: Any, *, what: str) -> tuple[str, ...]:
    if not isinstance(value, tuple | list):
        raise _fail(what, "must be a list of node ids")
    ids = tuple(_check_id(v, what=what) for v in value)
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


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _frame(header: Mapping[str, Any], chunks: tuple[bytes, ...] = ()) -> bytes:
    raw = _canonical(header)
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
        _check_id(self.federation_id, what=f"{what}.federation_id")
        _check_int(self.round, 1, MAX_ROUND, what=f"{what}.round")
        _check_digest(self.anchor_digest, what=f"{what}.anchor_digest")
        _check_digest(self.context_digest, what=f"{what}.context_digest")
        object.__setattr__(self, "cohort", _check_ids(self.cohort, what=f"{what}.cohort"))
        _check_int(self.length, 1, MAX_LENGTH, what=f"{what}.length")

    def encode(self) -> bytes:
        return _frame({"type": "CkksRoundStart", "federation_id": self.federation_id, "round": self.round,
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
        _check_id(self.federation_id, what=f"{what}.federation_id")
        _check_int(self.round, 1, MAX_ROUND, what=f"{what}.round")
        _check_id(self.node_id, what=f"{what}.node_id")
        _check_digest(self.context_digest, what=f"{what}.context_digest")
        _check_int(self.length, 1, MAX_LENGTH, what=f"{what}.length")
        object.__setattr__(self, "chunks", _check_chunks(self.chunks, self.length, what=f"{what}.chunks"))

    def encode(self) -> bytes:
        return _frame({"type": "CkksEncryptedInput", "federation_id": self.federation_id, "round": self.round,
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
        _check_id(self.federation_id, what=f"{what}.federation_id")
        _check_int(self.round, 1, MAX_ROUND, what=f"{what}.round")
        object.__setattr__(self, "contributors", _check_ids(self.contributors, what=f"{what}.contributors"))
        _check_int(self.length, 1, MAX_LENGTH, what=f"{what}.length")
        object.__setattr__(self, "chunks", _check_chunks(self.chunks, self.length, what=f"{what}.chunks"))

    def encode(self) -> bytes:
        return _frame({"type": "CkksAggregate", "federation_id": self.federation_id, "round": self.round,
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


# ---------------------------------------------------------------------------------------------------------
# State machines (SPEC section 5)

# Node: one upload per round; a new round may start while an aggregate is still awaited (the server gave up on
# the previous round, e.g. below the floor).
NODE_TRANSITIONS: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "ready": {"CkksRoundStart": "uploaded"},
    "uploaded": {"CkksRoundStart": "uploaded", "CkksAggregate": "ready"},
    "aborted": {},
})
NODE_PEER_EVENTS = ("CkksRoundStart", "CkksAggregate")

SERVER_TRANSITIONS: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "idle": {"start_round": "collecting"},
    "collecting": {"CkksEncryptedInput": "collecting", "finish": "idle"},
    "aborted": {},
})
SERVER_PEER_EVENTS = ("CkksEncryptedInput",)
SERVER_LOCAL_EVENTS = ("start_round", "finish")


def refusal(machine: str, state: str, event: str) -> tuple[type[GeofedError], str]:
    """What an illegal ``event`` in ``state`` raises, and the state it leaves (``machine``: "node" or "server").

    Any call on an aborted session is our own misuse. A node aborts on any out-of-order server message (its
    only peer). The server never lets one node end a round for everyone: an out-of-order upload is dropped
    with :class:`MessageError` and the state is kept. Our own out-of-order call aborts (h11's rule).
    """
    if state == "aborted":
        return LocalProtocolError, "aborted"
    if machine == "node":
        return ProtocolAborted, "aborted"
    if event in SERVER_PEER_EVENTS:
        return MessageError, state
    return LocalProtocolError, "aborted"


def transition_table_markdown() -> str:
    """The SPEC's state tables, generated from :data:`NODE_TRANSITIONS`, :data:`SERVER_TRANSITIONS` and
    :func:`refusal`: every (state, event) pair, legal or refused."""
    lines = []
    for machine, table, peer in (("node", NODE_TRANSITIONS, NODE_PEER_EVENTS),
                                 ("server", SERVER_TRANSITIONS, SERVER_PEER_EVENTS)):
        events = peer if machine == "node" else (*SERVER_LOCAL_EVENTS[:1], *peer, *SERVER_LOCAL_EVENTS[1:])
        lines += [f"#### {machine}", "", "| state | event | from | outcome |", "|---|---|---|---|"]
        for state, moves in table.items():
            for event in events:
                source = "peer" if event in peer else "local"
                if event in moves:
                    outcome = f"-> `{moves[event]}`"
                else:
                    error, after = refusal(machine, state, event)
                    outcome = f"refused: `{error.__name__}`, stays `{after}`" if after == state else \
                        f"refused: `{error.__name__}`, -> `{after}`"
                lines.append(f"| `{state}` | `{event}` | {source} | {outcome} |")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


@dataclass(frozen=True, slots=True)
class _PendingRound:
    round: int
    cohort: tuple[str, ...]
    length: int


class CkksNode:
    """One node's side of ckks-v1. ``begin_round`` answers a round start with the encrypted upload;
    ``receive_aggregate`` checks and decrypts the sum.

    ``secret_context``: the serialised context with the secret key (provisioning); ``anchor_digest``: the
    anchor set this node was provisioned with; ``clip`` bounds every weighted coordinate; ``floor``: the
    smallest cohort and contributor set this node accepts (never below 3).
    """

    def __init__(self, *, node_id: str, federation_id: str, secret_context: bytes, anchor_digest: str,
                 clip: float = DEFAULT_CLIP, floor: int = MIN_COHORT) -> None:
        self.node_id = _checked_local(_check_id, node_id, "node_id")
        self.federation_id = _checked_local(_check_id, federation_id, "federation_id")
        self.anchor_digest = _checked_local(_check_digest, anchor_digest, "anchor_digest")
        self.clip = _checked_clip(clip)
        self.floor = max(MIN_COHORT, _checked_floor(floor))
        self._keyring = _Keyring.load(secret_context, what=f"{node_id}: secret context")
        if not self._keyring.has_secret_key:
            raise LocalProtocolError(f"{node_id}: the context holds no secret key; a node needs the secret context")
        self.state = "ready"
        self.last_round = 0  # the last round this node uploaded in; older or equal rounds are replays
        self.clipped = 0  # coordinates clipped in the last upload
        self._pending: _PendingRound | None = None

    @property
    def context_digest(self) -> str:
        return self._keyring.digest

    def _abort(self, reason: str, stage: str) -> ProtocolAborted:
        self.state = "aborted"
        self._pending = None
        return ProtocolAborted(reason, party=self.node_id, stage=stage)

    def _advance(self, event: str, stage: str) -> str:
        if self.state == "aborted":
            raise LocalProtocolError(f"{self.node_id}: the session is aborted; start a new CkksNode")
        target = NODE_TRANSITIONS[self.state].get(event)
        if target is None:
            raise self._abort(f"{event} is not legal in state {self.state!r}", stage)
        return target

    def begin_round(self, start: CkksRoundStart, vector: np.ndarray, weight: float | None = None) -> CkksEncryptedInput:
        """Check the round start, clip and encrypt concat(weight * vector, [weight]) (weight 1 when None).

        Refuses (:class:`ProtocolAborted`, session aborted) another federation, a replayed round, a changed
        anchor digest, other keys, a cohort without this node or below the floor. Bad ``vector``/``weight``
        raise :class:`DataError` and leave the session as it was.
        """
        if not isinstance(start, CkksRoundStart):
            raise LocalProtocolError(f"begin_round takes a CkksRoundStart, got {type(start).__name__}")
        stage = "round_start"
        target = self._advance("CkksRoundStart", stage)
        if start.federation_id != self.federation_id:
            raise self._abort(f"round start for federation {start.federation_id!r}", stage)
        if start.round <= self.last_round:
            raise self._abort(f"round {start.round} is not after round {self.last_round} (replayed or stale)", stage)
        if start.anchor_digest != self.anchor_digest:
            mismatch = AnchorDigestMismatch(self.anchor_digest, start.anchor_digest, where=f"{self.node_id} round start")
            raise self._abort(str(mismatch), stage) from mismatch
        if start.context_digest != self.context_digest:
            raise self._abort("the round names other CKKS keys (context digest differs from provisioning)", stage)
        if self.node_id not in start.cohort:
            raise self._abort("this node is not in the round's cohort", stage)
        if len(start.cohort) < self.floor:
            raise self._abort(f"cohort of {len(start.cohort)} is below the floor of {self.floor}", stage)
        values, clipped = self._pack(vector, weight, start.length)
        chunks = _encrypt(self._keyring, values)
        self.state, self.last_round, self.clipped = target, start.round, clipped
        self._pending = _PendingRound(start.round, start.cohort, start.length)
        return CkksEncryptedInput(federation_id=self.federation_id, round=start.round, node_id=self.node_id,
                                  context_digest=self.context_digest, length=start.length, chunks=chunks)

    def _pack(self, vector: np.ndarray, weight: float | None, length: int) -> tuple[np.ndarray, int]:
        x = np.asarray(vector)
        if x.dtype.kind not in "fiu" or x.ndim != 1 or x.shape[0] != length:
            raise DataError(f"{self.node_id}: input must be a real 1-D vector of {length} values, "
                            f"got {x.dtype} {x.shape}")
        x = x.astype(np.float64)
        if not np.isfinite(x).all():
            raise DataError(f"{self.node_id}: input has NaN/inf values; a node refuses to encrypt them")
        w = 1.0 if weight is None else weight
        if (not isinstance(w, int | float | np.floating | np.integer) or isinstance(w, bool)
                or not (math.isfinite(w) and 0 < w <= MAX_WEIGHT)):
            raise DataError(f"{self.node_id}: weight must be a finite number in (0, {MAX_WEIGHT:g}], got {weight!r}")
        weighted = float(w) * x
        bounded = np.clip(weighted, -self.clip, self.clip)
        return np.concatenate([bounded, [float(w)]]), int(np.count_nonzero(bounded != weighted))

    def receive_aggregate(self, message: CkksAggregate) -> np.ndarray:
        """Check and decrypt the sum: returns float64 concat(sum_k w_k x_k, [sum_k w_k]) (``length + 1`` values).

        Refuses (:class:`ProtocolAborted`) an aggregate for another federation or round, contributors outside
        the cohort, below the floor or without this node, or a different length; ciphertexts that do not load
        raise :class:`MessageError`. Either way the session is aborted.
        """
        if not isinstance(message, CkksAggregate):
            raise LocalProtocolError(f"receive_aggregate takes a CkksAggregate, got {type(message).__name__}")
        stage = "aggregate"
        target = self._advance("CkksAggregate", stage)
        pending = self._pending
        assert pending is not None  # "uploaded" always has a pending round
        if message.federation_id != self.federation_id:
            raise self._abort(f"aggregate for federation {message.federation_id!r}", stage)
        if message.round != pending.round:
            raise self._abort(f"aggregate for round {message.round} while round {pending.round} is open", stage)
        outsiders = sorted(set(message.contributors) - set(pending.cohort))
        if outsiders:
            raise self._abort(f"contributors {outsiders[:3]} are not in the round's cohort", stage)
        if len(message.contributors) < self.floor:
            raise self._abort(f"{len(message.contributors)} contributors are below the floor of {self.floor}", stage)
        if self.node_id not in message.contributors:
            raise self._abort("this node uploaded but is not listed as a contributor", stage)
        if message.length != pending.length:
            raise self._abort(f"aggregate of length {message.length}; the round's length is {pending.length}", stage)
        try:
            vectors = _load_chunks(self._keyring, message.chunks, message.length, what=f"{self.node_id}: aggregate")
            plain = _decrypt(self._keyring, vectors, what=f"{self.node_id}: aggregate")
        except MessageError:
            self._abort("the aggregate's ciphertexts are unusable", stage)
            raise
        if not np.isfinite(plain).all():
            raise self._abort("the aggregate does not decrypt to finite values", stage)
        self.state, self._pending = target, None
        return plain


class CkksServer:
    """The server's side of ckks-v1: it opens a round, adds the uploads it accepts, and sends the encrypted sum.

    ``public_context`` must not hold the secret key. An upload that is malformed, out of order, from outside
    the cohort, a duplicate, or under other keys raises :class:`MessageError` and is dropped (that node simply
    does not contribute). :meth:`finish` with fewer than ``max(3, floor)`` contributors raises
    :class:`ProtocolAborted`; an aborted session stays aborted.
    """

    def __init__(self, *, federation_id: str, public_context: bytes, cohort: Iterable[str],
                 floor: int = MIN_COHORT) -> None:
        self.federation_id = _checked_local(_check_id, federation_id, "federation_id")
        self.floor = max(MIN_COHORT, _checked_floor(floor))
        try:
            self.cohort = _check_ids(sorted(cohort), what="cohort")
        except (MessageError, TypeError) as exc:
            raise ConfigError("ckks.cohort", str(exc)) from exc
        if len(self.cohort) < self.floor:
            raise ConfigError("ckks.cohort", f"{len(self.cohort)} nodes are below the floor of {self.floor}")
        self._keyring = _Keyring.load(public_context, what="server: public context")
        if self._keyring.has_secret_key:
            raise LocalProtocolError("server: the context holds the secret key; the server must get the public context")
        self.state = "idle"
        self.round = 0
        self.length = 0
        self.anchor_digest = ""
        self._sum: list[ts.CKKSVector] = []
        self._contributors: list[str] = []

    @property
    def context_digest(self) -> str:
        return self._keyring.digest

    @property
    def contributors(self) -> tuple[str, ...]:
        return tuple(sorted(self._contributors))

    def _advance(self, event: str) -> str:
        if self.state == "aborted":
            raise LocalProtocolError("server: the session is aborted; start a new CkksServer")
        target = SERVER_TRANSITIONS[self.state].get(event)
        if target is None:
            error, after = refusal("server", self.state, event)
            state, self.state = self.state, after
            raise error(f"server: {event} is not legal in state {state!r}")
        return target

    def start_round(self, round_: int, *, anchor_digest: str, length: int) -> dict[str, CkksRoundStart]:
        """Open ``round_`` for vectors of ``length`` values; returns the round start for each cohort node."""
        target = self._advance("start_round")
        if not isinstance(round_, int) or isinstance(round_, bool) or round_ <= self.round:
            self.state = "aborted"
            raise LocalProtocolError(f"server: round {round_!r} does not follow round {self.round}")
        try:
            start = CkksRoundStart(federation_id=self.federation_id, round=round_, anchor_digest=anchor_digest,
                                   context_digest=self.context_digest, cohort=self.cohort, length=length)
        except MessageError as exc:
            self.state = "aborted"
            raise LocalProtocolError(f"server: cannot open round {round_}: {exc}") from exc
        self.state, self.round, self.length, self.anchor_digest = target, round_, length, anchor_digest
        self._sum, self._contributors = [], []
        return {node_id: start for node_id in self.cohort}

    def receive(self, message: CkksEncryptedInput) -> None:
        """Check one upload and add it to the running encrypted sum (or raise :class:`MessageError` and drop it)."""
        if self.state == "aborted":
            raise LocalProtocolError("server: the session is aborted; start a new CkksServer")
        if not isinstance(message, CkksEncryptedInput):
            raise MessageError(f"server: expected a CkksEncryptedInput, got {type(message).__name__}")
        target = self._advance("CkksEncryptedInput")
        who = f"server: upload from {message.node_id!r}"
        if message.federation_id != self.federation_id:
            raise MessageError(f"{who} is for federation {message.federation_id!r}")
        if message.round != self.round:
            raise MessageError(f"{who} is for round {message.round} during round {self.round} (replayed or stale)")
        if message.node_id not in self.cohort:
            raise MessageError(f"{who}: not in the cohort")
        if message.node_id in self._contributors:
            raise MessageError(f"{who}: duplicate (the first upload stands)")
        if message.context_digest != self.context_digest:
            raise MessageError(f"{who} is encrypted under other keys (context digest differs)")
        if message.length != self.length:
            raise MessageError(f"{who} has length {message.length}; the round's length is {self.length}")
        vectors = _load_chunks(self._keyring, message.chunks, message.length, what=who)
        try:  # ``a + b`` makes a new ciphertext; ``a += b`` would change the held sum (and its sources) in place
            added = [a + b for a, b in zip(self._sum, vectors, strict=True)] if self._sum else vectors
        except Exception as exc:
            raise MessageError(f"{who}: ciphertexts cannot be added to the sum: {exc}") from exc
        self._sum = added
        self._contributors.append(message.node_id)
        self.state = target

    def finish(self) -> CkksAggregate:
        """Close the round: the encrypted sum over the accepted uploads, or :class:`ProtocolAborted` below the floor."""
        target = self._advance("finish")
        if len(self._contributors) < self.floor:
            count = len(self._contributors)
            self.state, self._sum = "aborted", []
            raise ProtocolAborted(f"{count} contributors are below the floor of {self.floor}; nothing is released",
                                  party=SERVER, stage="aggregate")
        aggregate = CkksAggregate(federation_id=self.federation_id, round=self.round, contributors=self.contributors,
                                  length=self.length, chunks=tuple(v.serialize() for v in self._sum))
        self.state, self._sum = target, []
        return aggregate


def _checked_local(check: Any, value: Any, name: str) -> Any:
    try:
        return check(value, what=name)
    except MessageError as exc:
        raise ConfigError(f"ckks.{name}", str(exc)) from exc


def _checked_clip(clip: Any) -> float:
    if not isinstance(clip, int | float) or isinstance(clip, bool) or not (math.isfinite(clip) and 0 < clip <= MAX_CLIP):
        raise ConfigError("ckks.clip", f"must be a finite number in (0, {MAX_CLIP:g}], got {clip!r}")
    return float(clip)


def _checked_floor(floor: Any) -> int:
    if not isinstance(floor, int) or isinstance(floor, bool) or not 1 <= floor <= MAX_COHORT:
        raise ConfigError("ckks.floor", f"must be an integer in [1, {MAX_COHORT}], got {floor!r}")
    return floor


# ---------------------------------------------------------------------------------------------------------
# In-process driver


def arrival_order(node_ids: Iterable[str], seed: int | bytes | None) -> tuple[str, ...]:
    """The order in which uploads reach the server: sorted by SHA-256(seed, node id); sorted ids when None."""
    ids = sorted(node_ids)
    if seed is None:
        return tuple(ids)
    key = seed if isinstance(seed, bytes) else str(seed).encode()
    return tuple(sorted(ids, key=lambda v: hashlib.sha256(key + b"\x00" + v.encode()).digest()))


def _checked_inputs(inputs: Mapping[str, np.ndarray], weights: Mapping[str, float] | None,
                    dropouts: Mapping[str, str] | None) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, str]]:
    if not isinstance(inputs, Mapping) or not inputs:
        raise DataError("inputs must be a non-empty mapping node id -> 1-D float array")
    arrays = {str(k): np.asarray(v) for k, v in inputs.items()}
    lengths = {x.shape[0] if x.ndim == 1 else -1 for x in arrays.values()}
    if len(lengths) != 1 or -1 in lengths:
        raise DataError(f"all inputs must be 1-D arrays of one length, got shapes {sorted({x.shape for x in arrays.values()})}")
    if weights is not None and set(weights) != set(arrays):
        raise DataError("weights must give exactly one weight per input node")
    dropouts = checked_dropouts(dropouts, arrays)
    return arrays, dict(weights) if weights is not None else {}, dropouts


def run_ckks_aggregation(inputs: Mapping[str, np.ndarray], *, weights: Mapping[str, float] | None = None,
                         dropouts: Mapping[str, str] | None = None, seed: int | bytes | None = None,
                         clip: float = DEFAULT_CLIP, anchor_digest: str = SIMULATION_ANCHOR_DIGEST,
                         federation_id: str = "simulation", round_: int = 1, floor: int = MIN_COHORT,
                         keys: CkksKeys | None = None) -> AggregationResult:
    """Provision keys (unless ``keys`` is given) and run one ckks-v1 round in process, every message through
    encode/decode and recorded as a :class:`WireRecord`.

    ``weights``: node id -> weight (1 when None); ``aggregate`` is the weighted sum sum_k clip(w_k x_k) (each
    node clips its weighted coordinates to +-``clip``) and ``total_weight`` the decrypted sum of the weights.
    ``dropouts``: node id -> secagg-v1 stage; a node dropping at ``advertise_keys``, ``share_keys`` or
    ``masked_input`` never uploads; one dropping at ``consistency_check`` or ``unmask`` has uploaded (it
    contributes) but does not receive the aggregate. ``seed`` only fixes the upload arrival order
    (:func:`arrival_order`): TenSEAL's randomness cannot be seeded.

    Raises :class:`ProtocolAborted` below ``max(3, floor)`` contributors (or cohort), or when no contributor is
    left online to decrypt; :class:`DataError`/:class:`ConfigError` for bad inputs.
    """
    arrays, weight_of, dropouts = _checked_inputs(inputs, weights, dropouts)
    keys = keys or provision_ckks_keys()
    nodes = sorted(arrays)
    if len(nodes) < max(MIN_COHORT, floor):  # the server would refuse to open such a round (and nodes to join it)
        raise ProtocolAborted(f"cohort of {len(nodes)} is below the floor of {max(MIN_COHORT, floor)}",
                              party=SERVER, stage="round_start")
    length = next(iter(arrays.values())).shape[0]
    server = CkksServer(federation_id=federation_id, public_context=keys.public_context, cohort=nodes, floor=floor)
    parties = {v: CkksNode(node_id=v, federation_id=federation_id, secret_context=keys.secret_context,
                           anchor_digest=anchor_digest, clip=clip, floor=floor) for v in nodes}
    transcript: list[WireRecord] = []

    def send(stage: str, sender: str, receiver: str, message: CkksMessage) -> CkksMessage:
        blob = message.encode()
        transcript.append(WireRecord(round=round_, stage=stage, sender=sender, receiver=receiver,
                                     kind=type(message).__name__, data=blob))
        return decode_ckks_message(blob)

    starts = {v: send("round_start", SERVER, v, m) for v, m in server.start_round(
        round_, anchor_digest=anchor_digest, length=length).items()}
    uploaders = [v for v in nodes if dropouts.get(v) not in STAGES_BEFORE_UPLOAD]
    for v in arrival_order(uploaders, seed):
        start = starts[v]
        assert isinstance(start, CkksRoundStart)
        upload = parties[v].begin_round(start, arrays[v], weight_of.get(v))
        received = send("encrypted_input", v, SERVER, upload)
        assert isinstance(received, CkksEncryptedInput)
        server.receive(received)
    aggregate = server.finish()
    online = [v for v in aggregate.contributors if v not in dropouts]
    if not online:
        raise ProtocolAborted("every contributor dropped after uploading; nobody is left to decrypt the aggregate",
                              party=SERVER, stage="aggregate")
    plains = []
    for v in online:
        delivered = send("aggregate", SERVER, v, aggregate)
        assert isinstance(delivered, CkksAggregate)
        plains.append(parties[v].receive_aggregate(delivered))
    plain = plains[0]  # every node decrypts the same ciphertext with the same key: identical values
    sent = dict.fromkeys([*nodes, SERVER], 0)
    for record in transcript:
        sent[record.sender] += record.nbytes
    max_weight = max((weight_of.get(v, 1.0) for v in aggregate.contributors), default=1.0)
    return AggregationResult(
        protocol=PROTOCOL_ID, aggregate=plain[:-1].copy(), total_weight=float(plain[-1]),
        contributors=aggregate.contributors, bytes_sent=MappingProxyType(sent), transcript=tuple(transcript),
        clipped=MappingProxyType({v: parties[v].clipped for v in aggregate.contributors}),
        max_abs_error=ckks_error_bound(len(aggregate.contributors), clip=clip, max_weight=float(max_weight),
                                       scale_bits=keys.parameters.scale_bits))


# ---------------------------------------------------------------------------------------------------------
# Vectors (protocols/ckks-v1/vectors.json)

_VECTOR_DIGEST_ANCHORS = hashlib.sha256(b"ckks-v1 vectors: anchors").hexdigest()
_VECTOR_DIGEST_CONTEXT = hashlib.sha256(b"ckks-v1 vectors: context").hexdigest()
_EXPECTED_DECIMALS = 12


def vector_input(label: str, node_id: str, length: int, *, amplitude: int, decimals: int) -> np.ndarray:
    """Deterministic test input, reproducible in any language: SHAKE-256("ckks-v1 vectors/<label>/<node_id>")
    read as little-endian uint32 words u_i; x_i = ((u_i mod (2 a 10^d + 1)) - a 10^d) / 10^d."""
    raw = hashlib.shake_256(f"ckks-v1 vectors/{label}/{node_id}".encode()).digest(4 * length)
    words = np.frombuffer(raw, dtype="<u4").astype(np.int64)
    unit = 10**decimals
    return ((words % (2 * amplitude * unit + 1)) - amplitude * unit) / unit


def expected_aggregate(inputs: Mapping[str, np.ndarray], contributors: Iterable[str], *, clip: float,
                       weights: Mapping[str, float] | None = None) -> np.ndarray:
    """The exact float64 packed sum: concat(sum_k clip(w_k x_k), [sum_k w_k]) over ``contributors``."""
    parts = []
    for v in contributors:
        w = 1.0 if weights is None else float(weights[v])
        parts.append(np.concatenate([np.clip(w * np.asarray(inputs[v], dtype=np.float64), -clip, clip), [w]]))
    return np.sum(parts, axis=0)


def _aggregation_case(name: str, *, nodes: list[str], length: int, clip: float, amplitude: int, decimals: int,
                      weights: dict[str, float] | None = None, dropouts: dict[str, str] | None = None,
                      seed: int | None = None, literal: bool = True) -> dict[str, Any]:
    inputs = {v: vector_input(name, v, length, amplitude=amplitude, decimals=decimals) for v in nodes}
    dropouts = dropouts or {}
    contributors = [v for v in nodes if dropouts.get(v) not in STAGES_BEFORE_UPLOAD]
    case: dict[str, Any] = {"name": name, "nodes": nodes, "length": length, "clip": clip, "weights": weights,
                            "dropouts": dropouts, "seed": seed,
                            "chunks": [list(b) for b in chunk_bounds(length, CkksParameters().slots)]}
    if literal:
        case["inputs"] = {v: x.tolist() for v, x in inputs.items()}
    else:
        case["inputs_generator"] = {"label": name, "amplitude": amplitude, "decimals": decimals,
                                    "recipe": "vector_input(label, node_id, length, amplitude, decimals)"}
    if len(contributors) < MIN_COHORT:
        case["error"] = "ProtocolAborted"
        return case
    expected = expected_aggregate(inputs, contributors, clip=clip, weights=weights)
    clipped = {v: int(np.count_nonzero(np.abs((1.0 if weights is None else weights[v]) * inputs[v]) > clip))
               for v in contributors}
    max_weight = max(1.0 if weights is None else weights[v] for v in contributors)
    online = [v for v in contributors if v not in dropouts]
    case["expected"] = {
        "contributors": contributors,
        "total_weight": round(float(expected[-1]), _EXPECTED_DECIMALS),
        "clipped": clipped,
        "max_abs_error": ckks_error_bound(len(contributors), clip=clip, max_weight=max_weight),
        "transcript": ([["round_start", SERVER, v, "CkksRoundStart"] for v in nodes]
                       + [["encrypted_input", v, SERVER, "CkksEncryptedInput"] for v in arrival_order(contributors, seed)]
                       + [["aggregate", SERVER, v, "CkksAggregate"] for v in online]),
    }
    rounded = [round(float(a), _EXPECTED_DECIMALS) for a in expected[:-1]]
    if literal:
        case["expected"]["aggregate"] = rounded
    else:  # long vectors: the values around every chunk boundary
        picks = sorted({i for a, b in chunk_bounds(length, CkksParameters().slots)
                        for i in (a, a + 1, a + 2, b - 3, b - 2, b - 1) if 0 <= i < length})
        case["expected"]["aggregate_at"] = {str(i): rounded[i] for i in picks}
    return case


def _message_cases() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    fed, cohort = "vectors-fed", ["alice", "bob", "carol"]
    start = CkksRoundStart(federation_id=fed, round=7, anchor_digest=_VECTOR_DIGEST_ANCHORS,
                           context_digest=_VECTOR_DIGEST_CONTEXT, cohort=tuple(cohort), length=4096)
    chunks = (b"\x0aciphertext-0 (opaque to decoding)", b"\x0aciphertext-1")
    upload = CkksEncryptedInput(federation_id=fed, round=7, node_id="bob", context_digest=_VECTOR_DIGEST_CONTEXT,
                                length=4096, chunks=chunks)
    aggregate = CkksAggregate(federation_id=fed, round=7, contributors=tuple(cohort), length=4096, chunks=chunks)
    valid = []
    for name, message in (("round-start", start), ("encrypted-input", upload), ("aggregate", aggregate)):
        fields_ = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
        fields_ = {k: [c.hex() for c in v] if k == "chunks" else list(v) if isinstance(v, tuple) else v
                   for k, v in fields_.items()}
        valid.append({"name": name, "type": type(message).__name__, "fields": fields_, "hex": message.encode().hex()})

    def header_of(message: CkksMessage) -> dict[str, Any]:
        blob = message.encode()
        return json.loads(blob[9:9 + int.from_bytes(blob[5:9], "big")])

    def edited(message: CkksMessage, **changes: Any) -> bytes:
        header = header_of(message)
        for k, v in changes.items():
            if v is _DROP:
                header.pop(k)
            else:
                header[k] = v
        return _frame(header, getattr(message, "chunks", ()))

    good = start.encode()
    up = upload.encode()
    raw_header = _canonical(header_of(start))
    spaced = json.dumps(header_of(start), sort_keys=True).encode()
    invalid_bytes = [
        ("empty", b"", "bad magic"),
        ("bad-magic", b"GFSA" + good[4:], "bad magic"),
        ("unsupported-version", good[:4] + b"\x02" + good[5:], "version 2"),
        ("header-length-beyond-message", good[:5] + (len(raw_header) + 1).to_bytes(4, "big") + good[9:], "header length"),
        ("header-not-json", good[:5] + (3).to_bytes(4, "big") + b"{x}", "not valid JSON"),
        ("header-not-ascii", good[:5] + (2).to_bytes(4, "big") + b"\xff\xfe", "not valid JSON"),
        ("header-not-object", good[:5] + (2).to_bytes(4, "big") + b"[]", "JSON object"),
        ("unknown-type", edited(start, type="CkksRoundEnd"), "unknown ckks-v1 message type"),
        ("missing-field", edited(start, context_digest=_DROP), "missing ['context_digest']"),
        ("unexpected-field", edited(start, weight=1), "unexpected ['weight']"),
        ("round-zero", edited(start, round=0), "round"),
        ("round-bool", edited(start, round=True), "round"),
        ("round-float", edited(start, round=7.0), "round"),
        ("round-too-large", edited(start, round=2**31), "round"),
        ("digest-uppercase", edited(start, anchor_digest=_VECTOR_DIGEST_ANCHORS.upper()), "anchor_digest"),
        ("cohort-not-a-list", edited(start, cohort="alice"), "cohort"),
        ("cohort-unsorted", edited(start, cohort=["bob", "alice", "carol"]), "sorted and unique"),
        ("cohort-duplicate", edited(start, cohort=["alice", "alice", "bob"]), "sorted and unique"),
        ("cohort-bad-id", edited(start, cohort=["alice", "bob", "bad id!"]), "not a valid id"),
        ("length-zero", edited(start, length=0), "length"),
        ("non-canonical-json", good[:5] + len(spaced).to_bytes(4, "big") + spaced, "canonical"),
        ("round-start-with-body", good + b"\x00", "unexpected body"),
        ("node-id-invalid", edited(upload, node_id="bad id!"), "node_id"),
        ("chunk-bytes-beyond-body", edited(upload, chunk_bytes=[len(chunks[0]), len(chunks[1]) + 1]), "add up to"),
        ("trailing-bytes", up + b"\x00", "add up to"),
        ("chunk-bytes-zero", edited(upload, chunk_bytes=[len(chunks[0]) + len(chunks[1]), 0]), "chunk_bytes"),
        ("chunk-bytes-empty", edited(upload, chunk_bytes=[]), "chunk_bytes"),
        ("more-chunks-than-values", edited(upload, length=1, chunk_bytes=[1] * 3 + [sum(map(len, chunks)) - 3]),
         "ciphertexts"),
        ("contributors-empty", edited(aggregate, contributors=[]), "contributors"),
    ]
    invalid = [{"name": n, "hex": b.hex(), "error": "MessageError", "match": m} for n, b, m in invalid_bytes]
    return valid, invalid


_DROP = object()


def build_vectors() -> dict[str, Any]:
    """The content of ``protocols/ckks-v1/vectors.json`` (deterministic: no ciphertext, no key digest)."""
    params = CkksParameters()
    valid, invalid = _message_cases()
    three = ["alice", "bob", "carol"]
    five = ["n1", "n2", "n3", "n4", "n5"]
    return {
        "protocol": PROTOCOL_ID,
        "wire": {"magic": MAGIC.decode(), "version": VERSION},
        "parameters": params.as_dict(),
        "floor": MIN_COHORT,
        "error_bound": "contributors * (2^(20 - scale_bits) + 2^-40 * max(1, clip, max_weight))",
        "packing": [{"length": n, "chunks": [list(b) for b in chunk_bounds(n, params.slots)]}
                    for n in (1, 4094, 4095, 4096, 8191, 100_000)],
        "aggregations": [
            _aggregation_case("three-unweighted", nodes=three, length=8, clip=1.0, amplitude=2, decimals=3),
            _aggregation_case("weighted-with-dropouts", nodes=five, length=6, clip=4.0, amplitude=3, decimals=2,
                              weights={"n1": 1.0, "n2": 2.5, "n3": 0.5, "n4": 3.0, "n5": 1.25},
                              dropouts={"n2": "unmask", "n4": "share_keys"}, seed=11),
            _aggregation_case("two-chunks", nodes=three, length=4096, clip=100.0, amplitude=50, decimals=2,
                              weights={"alice": 1.0, "bob": 2.0, "carol": 3.0}, seed=3, literal=False),
            _aggregation_case("below-floor", nodes=["p", "q", "r", "s"], length=4, clip=1.0, amplitude=1, decimals=1,
                              dropouts={"p": "advertise_keys", "q": "masked_input"}),
        ],
        "messages": {"valid": valid, "invalid": invalid},
    }
