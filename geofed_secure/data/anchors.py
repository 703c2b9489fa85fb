"""Anchor-set commitments (DESIGN.md section 2, "Anchor integrity").

The public anchor set is identified by a SHA-256 digest over a canonical, order-sensitive
encoding of its RAW samples, their concept labels and the modality. A node is provisioned with
the digests and refuses a round whose anchor digest differs (:func:`verify_anchor_digest`):
otherwise a dishonest server could slip candidate private records into the "public" anchors.

Canonical encoding (version 1), all integers unsigned 64-bit little-endian (``u64``)::

    b"geofed-secure/anchor-digest/v1\\0"
    u64 len(modality) || modality (UTF-8)
    u64 N
    samples:
      ndarray -> b"A" || u64 len(dtype.str) || dtype.str (little-endian form, e.g. "|u1", "<f4")
                      || u64 ndim || u64 shape[i]... || C-order little-endian bytes
      strings -> b"S" || for each sample: u64 len(utf8) || utf8
    labels  -> N x int64 little-endian

Changing one sample, one label, the order, or the modality changes the digest.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geofed_secure.errors import AnchorDigestMismatch, DataError

__all__ = ["DIGEST_DOMAIN", "AnchorManifest", "anchor_digest", "verify_anchor_digest"]

DIGEST_DOMAIN = b"geofed-secure/anchor-digest/v1\x00"
_MANIFEST_DOMAIN = b"geofed-secure/anchor-manifest/v1\x00"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def u64(n: int) -> bytes:
    return struct.pack("<Q", int(n))


def feed_str(h: hashlib._Hash, s: str) -> None:
    b = s.encode("utf-8")
    h.update(u64(len(b)))
    h.update(b)


def feed_array(h: hashlib._Hash, array: np.ndarray) -> None:
    """b"A" || u64 len(dtype.str) || dtype.str (little-endian form) || u64 ndim || u64 shape[i]... || C-order bytes."""
    arr = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    h.update(b"A")
    feed_str(h, arr.dtype.str)
    h.update(u64(arr.ndim))
    for size in arr.shape:
        h.update(u64(size))
    h.update(arr.tobytes(order="C"))


def anchor_digest(modality: str, samples: np.ndarray | Sequence[str], labels: np.ndarray) -> str:
    """Hex SHA-256 over the canonical encoding of (modality, raw samples, labels); see module doc."""
    if not isinstance(modality, str) or not modality:
        raise DataError(f"anchor_digest: modality must be a non-empty string, got {modality!r}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"anchor_digest: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    h = hashlib.sha256(DIGEST_DOMAIN)
    feed_str(h, modality)
    if isinstance(samples, np.ndarray):
        if samples.ndim < 1 or samples.shape[0] != labels.shape[0]:
            raise DataError(f"anchor_digest: {samples.shape[:1]} samples but {labels.shape[0]} labels")
        if samples.dtype.kind not in "biuf":
            raise DataError(f"anchor_digest: unsupported sample dtype {samples.dtype}; use numeric arrays or strings")
        h.update(u64(samples.shape[0]))
        feed_array(h, samples)
    elif isinstance(samples, (list, tuple)):
        if len(samples) != labels.shape[0]:
            raise DataError(f"anchor_digest: {len(samples)} samples but {labels.shape[0]} labels")
        h.update(u64(len(samples)))
        h.update(b"S")
        for s in samples:
            if not isinstance(s, str):
                raise DataError(f"anchor_digest: string samples expected, got {type(s).__name__}")
            feed_str(h, s)
    else:
        raise DataError(f"anchor_digest: samples must be a numpy array or a list of str, got {type(samples).__name__}")
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


def _check_hex(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise DataError(f"{what} must be a 64-character lowercase hex SHA-256 digest, got {value!r}")
    return value


@dataclass(frozen=True)
class AnchorManifest:
    """The anchor digests a node is provisioned with, one per modality.

    ``digest`` commits to the whole manifest: SHA-256 over the sorted ``(modality, digest)`` pairs.
    """

    per_modality: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.per_modality, Mapping):
            raise DataError(f"AnchorManifest.per_modality must be a mapping, got {type(self.per_modality).__name__}")
        clean: dict[str, str] = {}
        for m, d in self.per_modality.items():
            if not isinstance(m, str) or not m:
                raise DataError(f"AnchorManifest: modality names must be non-empty strings, got {m!r}")
            clean[m] = _check_hex(d, f"AnchorManifest digest for {m!r}")
        object.__setattr__(self, "per_modality", dict(sorted(clean.items())))

    def __hash__(self) -> int:
        return hash(self.digest)

    @property
    def digest(self) -> str:
        h = hashlib.sha256(_MANIFEST_DOMAIN)
        h.update(u64(len(self.per_modality)))
        for m, d in sorted(self.per_modality.items()):
            feed_str(h, m)
            feed_str(h, d)
        return h.hexdigest()

    def to_json(self) -> str:
        return json.dumps(
            {"version": 1, "per_modality": dict(sorted(self.per_modality.items())), "digest": self.digest},
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> AnchorManifest:
        """Parse :meth:`to_json` output; a stored ``digest`` that does not match -> AnchorDigestMismatch."""
        try:
            obj = json.loads(text)
        except (ValueError, TypeError) as exc:
            raise DataError(f"AnchorManifest.from_json: not valid JSON: {exc}") from exc
        if not isinstance(obj, dict) or obj.get("version") != 1 or not isinstance(obj.get("per_modality"), dict):
            raise DataError("AnchorManifest.from_json: expected an object with version 1 and 'per_modality'")
        manifest = cls(dict(obj["per_modality"]))
        if "digest" in obj:
            verify_anchor_digest(_check_hex(obj["digest"], "manifest digest"), manifest.digest, where="AnchorManifest.from_json")
        return manifest


def verify_anchor_digest(expected: str, got: str, *, where: str) -> None:
    """Raise :class:`AnchorDigestMismatch` unless ``got == expected`` (constant-time comparison)."""
    if not isinstance(expected, str) or not isinstance(got, str):
        raise AnchorDigestMismatch(str(expected), str(got), where=where)
    if not hmac.compare_digest(expected.encode("utf-8"), got.encode("utf-8")):
        raise AnchorDigestMismatch(expected, got, where=where)
