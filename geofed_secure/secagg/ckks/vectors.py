"""Test vectors of ckks-v1 (``protocols/ckks-v1/vectors.json``): deterministic content only (TenSEAL's noise
cannot be injected).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from geofed_secure.secagg.ckks.federation import (
    arrival_order,
)
from geofed_secure.secagg.ckks.messages import (
    CkksAggregate,
    CkksEncryptedInput,
    CkksMessage,
    CkksRoundStart,
    canonical_json,
    frame,
)
from geofed_secure.secagg.ckks.spec import (
    MAGIC,
    MIN_COHORT,
    PROTOCOL_ID,
    STAGES_BEFORE_UPLOAD,
    VERSION,
    CkksParameters,
    chunk_bounds,
    ckks_error_bound,
)
from geofed_secure.secagg.common import SERVER

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
        return frame(header, getattr(message, "chunks", ()))

    good = start.encode()
    up = upload.encode()
    raw_header = canonical_json(header_of(start))
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
