"""Typed round messages and their wire encoding.

A round is: the server sends each node a :class:`RoundBroadcast`; each node answers with a
:class:`NodeUpdate`, or with a :class:`FailureNotice` (a typed code only) when it cannot take part. Messages
are frozen dataclasses, validated once when built or decoded; after that no code looks at untyped dicts.

Wire format (version 1): a safetensors blob. Its ``__metadata__`` holds the scalar fields (all strings, as
safetensors requires) and ``geofed.type``/``geofed.version``; the arrays are its tensors. Every field that a
:class:`NodeUpdate` carries in ``payload`` is SUMMABLE: the server only needs the sum over nodes of each
field (weighted B, weighted m, Gram upper triangle, precision weight), which is what secure aggregation
will later reveal instead of the individual values.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import safetensors.numpy

from geofed_secure.errors import FailureCode, MessageError
from geofed_secure.wire.codec import IDS, check_digest, check_id, check_int

WIRE_VERSION = "1"

# Payload field names of a NodeUpdate (a prefix "weighted/" marks fields already multiplied by the weight).
GRAM_FIELD = "gram_upper"
WEIGHT_FIELD = "precision_weight"
WEIGHTED_PREFIX = "weighted/"


def _frozen_arrays(arrays: Mapping[str, np.ndarray], *, what: str) -> Mapping[str, np.ndarray]:
    out = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not key:
            raise MessageError(f"{what}: array names must be non-empty strings")
        arr = np.ascontiguousarray(value)
        if arr.dtype != np.float32:
            raise MessageError(f"{what}: '{key}' must be float32, got {arr.dtype}")
        if not np.isfinite(arr).all():
            raise MessageError(f"{what}: '{key}' contains NaN or inf")
        arr = arr.copy()
        arr.setflags(write=False)
        out[key] = arr
    return MappingProxyType(dict(sorted(out.items())))


def _check_common(federation_id: str, round_: int, anchor_digest: str, *, what: str) -> None:
    check_id(federation_id, what=f"{what}.federation_id")
    check_int(round_, 1, what=f"{what}.round")
    check_digest(anchor_digest, what=f"{what}.anchor_digest")


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundBroadcast:
    """Server -> node at the start of a round: the global shared state and the Gram consensus.

    ``global_state`` holds ``<module>.lora_B`` (and ``<module>.magnitude`` when magnitudes are averaged);
    ``consensus_gram`` is the strict upper triangle of G_bar, or None in the first round.
    """

    federation_id: str
    round: int
    anchor_digest: str
    global_state: Mapping[str, np.ndarray] = field(default_factory=dict)
    consensus_gram: np.ndarray | None = None

    def __post_init__(self) -> None:
        _check_common(self.federation_id, self.round, self.anchor_digest, what="RoundBroadcast")
        object.__setattr__(self, "global_state", _frozen_arrays(self.global_state, what="RoundBroadcast.global_state"))
        if self.consensus_gram is not None:
            gram = _frozen_arrays({"consensus_gram": self.consensus_gram}, what="RoundBroadcast")["consensus_gram"]
            if gram.ndim != 1:
                raise MessageError("RoundBroadcast: consensus_gram must be the 1-D upper triangle")
            object.__setattr__(self, "consensus_gram", gram)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeUpdate:
    """Node -> server at the end of a round. Every ``payload`` field is summable across nodes."""

    federation_id: str
    round: int
    node_id: str
    anchor_digest: str
    payload: Mapping[str, np.ndarray]

    def __post_init__(self) -> None:
        _check_common(self.federation_id, self.round, self.anchor_digest, what="NodeUpdate")
        check_id(self.node_id, what="NodeUpdate.node_id")
        payload = _frozen_arrays(self.payload, what=f"NodeUpdate from {self.node_id}")
        if GRAM_FIELD not in payload or WEIGHT_FIELD not in payload:
            raise MessageError(f"NodeUpdate from {self.node_id}: payload needs '{GRAM_FIELD}' and '{WEIGHT_FIELD}'")
        if payload[WEIGHT_FIELD].shape != (1,) or not payload[WEIGHT_FIELD][0] > 0:
            raise MessageError(f"NodeUpdate from {self.node_id}: '{WEIGHT_FIELD}' must be one positive number")
        object.__setattr__(self, "payload", payload)


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregateRelease:
    """Node -> server under CKKS: the decrypted SUM of the round's uploads (the server holds no secret key).

    It carries exactly what pairwise masking reveals to the server (the summed fields and the contributors),
    never an individual upload; ``node_id`` is the contributor that decrypted and released it.
    """

    federation_id: str
    round: int
    node_id: str
    anchor_digest: str
    contributors: tuple[str, ...]
    sums: Mapping[str, np.ndarray]

    def __post_init__(self) -> None:
        _check_common(self.federation_id, self.round, self.anchor_digest, what="AggregateRelease")
        check_id(self.node_id, what="AggregateRelease.node_id")
        object.__setattr__(self, "contributors", IDS.check(self.contributors, what="AggregateRelease.contributors"))
        object.__setattr__(self, "sums", _frozen_arrays(self.sums, what="AggregateRelease"))


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureNotice:
    """Node -> server: this node is out of the round, and the typed reason (:class:`FailureCode`), nothing else.

    The error behind it (which may depend on the node's private data) stays in the node's own log. A node that
    dropped sends nothing, and a rejection is the server's own verdict, so neither code is accepted here.
    """

    federation_id: str
    round: int
    node_id: str
    anchor_digest: str
    code: FailureCode

    def __post_init__(self) -> None:
        _check_common(self.federation_id, self.round, self.anchor_digest, what="FailureNotice")
        check_id(self.node_id, what="FailureNotice.node_id")
        try:
            code = FailureCode(self.code)
        except ValueError:
            known = [c.value for c in FailureCode]
            raise MessageError(f"FailureNotice: unknown failure code {self.code!r}; known: {known}") from None
        if not code.sent_by_node:
            raise MessageError(f"FailureNotice: a node does not send the code {code.value!r}")
        object.__setattr__(self, "code", code)


Message = RoundBroadcast | NodeUpdate | AggregateRelease | FailureNotice


def encode_message(message: Message) -> bytes:
    """Canonical bytes of a message (deterministic: same message -> same bytes)."""
    meta = {"geofed.version": WIRE_VERSION, "federation_id": message.federation_id, "round": str(message.round),
            "anchor_digest": message.anchor_digest}
    if isinstance(message, RoundBroadcast):
        meta["geofed.type"] = "RoundBroadcast"
        tensors = {f"global/{k}": v for k, v in message.global_state.items()}
        if message.consensus_gram is not None:
            tensors["consensus_gram"] = message.consensus_gram
    elif isinstance(message, NodeUpdate):
        meta["geofed.type"] = "NodeUpdate"
        meta["node_id"] = message.node_id
        tensors = {f"payload/{k}": v for k, v in message.payload.items()}
    elif isinstance(message, AggregateRelease):
        meta["geofed.type"] = "AggregateRelease"
        meta["node_id"] = message.node_id
        meta["contributors"] = ",".join(message.contributors)
        tensors = {f"sum/{k}": v for k, v in message.sums.items()}
    elif isinstance(message, FailureNotice):
        meta["geofed.type"] = "FailureNotice"
        meta["node_id"] = message.node_id
        meta["code"] = message.code.value
        tensors = {}
    else:
        raise TypeError(f"not a geofed message: {type(message).__name__}")
    return canonical_safetensors(tensors, meta)


def canonical_safetensors(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    """safetensors bytes with a canonical header (sorted keys, fixed separators, tensors in name order).

    The reference writer serialises its header from a hash map, whose order varies between calls; a
    message's bytes must not (they are hashed in the transcript and, later, signed and masked).
    """
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    chunks, offset = [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name], dtype="<f4")
        data = arr.tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(chunks)


def _metadata(blob: bytes) -> dict[str, str]:
    if len(blob) < 8:
        raise MessageError("message too short to hold a header")
    (size,) = struct.unpack("<Q", blob[:8])
    if size > len(blob) - 8 or size > 1 << 20:
        raise MessageError("message header length is out of range")
    try:
        header = json.loads(blob[8:8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError("message header is not valid JSON") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise MessageError("message header has no string metadata")
    return meta


def decode_message(blob: bytes) -> Message:
    """Parse and validate bytes from the wire; anything malformed raises :class:`MessageError`."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise MessageError(f"expected bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    meta = _metadata(blob)
    try:
        tensors = safetensors.numpy.load(blob)
    except Exception as exc:  # safetensors raises its own untyped error
        raise MessageError(f"message body is not valid safetensors: {exc}") from exc
    if meta.get("geofed.version") != WIRE_VERSION:
        raise MessageError(f"unsupported wire version {meta.get('geofed.version')!r} (this build speaks {WIRE_VERSION})")
    try:
        round_ = int(meta["round"])
        common: dict[str, Any] = {"federation_id": meta["federation_id"], "round": round_, "anchor_digest": meta["anchor_digest"]}
        kind = meta["geofed.type"]
    except (KeyError, ValueError) as exc:
        raise MessageError(f"message metadata incomplete or malformed: {exc}") from exc
    if kind == "RoundBroadcast":
        unknown = [k for k in tensors if not (k.startswith("global/") or k == "consensus_gram")]
        if unknown:
            raise MessageError(f"RoundBroadcast carries unexpected tensors {unknown[:3]}")
        state = {k[len("global/"):]: v for k, v in tensors.items() if k.startswith("global/")}
        return RoundBroadcast(**common, global_state=state, consensus_gram=tensors.get("consensus_gram"))
    if kind == "NodeUpdate":
        unknown = [k for k in tensors if not k.startswith("payload/")]
        if unknown or "node_id" not in meta:
            raise MessageError("NodeUpdate carries unexpected tensors or no node_id")
        payload = {k[len("payload/"):]: v for k, v in tensors.items()}
        return NodeUpdate(**common, node_id=meta["node_id"], payload=payload)
    if kind == "AggregateRelease":
        if any(not k.startswith("sum/") for k in tensors) or "node_id" not in meta or "contributors" not in meta:
            raise MessageError("AggregateRelease carries unexpected tensors or no node_id/contributors")
        contributors = tuple(meta["contributors"].split(",")) if meta["contributors"] else ()
        return AggregateRelease(**common, node_id=meta["node_id"], contributors=contributors,
                                sums={k[len("sum/"):]: v for k, v in tensors.items()})
    if kind == "FailureNotice":
        if tensors or "node_id" not in meta or "code" not in meta:
            raise MessageError("FailureNotice carries tensors or no node_id/code")
        return FailureNotice(**common, node_id=meta["node_id"], code=meta["code"])  # type: ignore[arg-type]
    raise MessageError(f"unknown message type {kind!r}")
