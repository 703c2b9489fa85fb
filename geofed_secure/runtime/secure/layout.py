"""Secure aggregation inside the federation runtime: the server receives node uploads only as a sum.

Each node's :class:`~geofed_secure.wire.round.NodeUpdate` stays on the node. Its payload (weighted B,
weighted m if averaged, Gram upper triangle, precision weight) is flattened in a public :class:`PayloadLayout`
and aggregated with ``secagg-v1`` (pairwise masking) or ``ckks-v1`` (TenSEAL); the server gets the summed
fields and the contributor set, and :func:`geofed_secure.server.server.aggregate` turns them into the new
global state exactly as in plaintext mode. Every protocol message is recorded in the run transcript.

Clipping happens on the node (:meth:`SecureInputLayout.node_input`): each node clips its vector to
``[-secure.clip, secure.clip]`` and counts the coordinates it clipped; the count stays on the node and travels
only as extra coordinates of the same masked/encrypted vector, so the server learns the SUM of the counts over
the contributors and no node's own count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from geofed_secure.errors import DataError, FailureCode, MessageError
from geofed_secure.wire.round import (
    GRAM_FIELD,
    WEIGHT_FIELD,
    WEIGHTED_PREFIX,
)

FaultHook = Callable[[str, int, str], None]


@dataclass(frozen=True, slots=True)
class PayloadLayout:
    """Public order and shapes of the upload fields; every node flattens its payload the same way."""

    fields: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def for_round(cls, global_state: Mapping[str, np.ndarray], n_anchors: int) -> PayloadLayout:
        names = {WEIGHTED_PREFIX + k: tuple(v.shape) for k, v in global_state.items()}
        names[GRAM_FIELD] = (n_anchors * (n_anchors - 1) // 2,)
        names[WEIGHT_FIELD] = (1,)
        return cls(tuple(sorted(names.items())))

    @property
    def length(self) -> int:
        return sum(int(np.prod(shape)) for _, shape in self.fields)

    def flatten(self, payload: Mapping[str, np.ndarray]) -> np.ndarray:
        got = {k: tuple(v.shape) for k, v in payload.items()}
        if got != dict(self.fields):
            raise MessageError(f"upload does not match the public layout: fields {sorted(set(got) ^ set(dict(self.fields)))[:3]} "
                               "differ or have the wrong shape")
        return np.concatenate([np.asarray(payload[k], np.float64).ravel() for k, _ in self.fields])

    def unflatten(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        out, start = {}, 0
        for name, shape in self.fields:
            size = int(np.prod(shape))
            out[name] = vector[start:start + size].reshape(shape)
            start += size
        return out


CLIPPED_FIELD = "clipped_coordinates"  # base-COUNT_RADIX digits of a node's clipped-coordinate count
COUNT_RADIX = 16


@dataclass(frozen=True, slots=True)
class SecureInputLayout:
    """What a node masks or encrypts: its flattened upload, clipped, then the digits of its clipped count.

    The count c (0 <= c < 16^digits) is sent as ``digits`` coordinates, digit i (least significant first) as
    ``d_i * clip / 16``: each lies in ``[0, clip)``, so the protocol never clips it, and the sum over contributors
    of coordinate i, times ``16 / clip``, is the integer sum of their i-th digits. The total is exact while the
    protocol's error bound times ``16 / clip`` stays below 1/2 (pairwise masking: about ``4 n^2 16 / 2^ring_bits``;
    CKKS: ``n 2^-20 16 / clip``), see :meth:`clipped_total`. Under DP the count is post-processing of the
    already-privatised upload.
    """

    payload: PayloadLayout
    clip: float
    digits: int

    @classmethod
    def for_round(cls, global_state: Mapping[str, np.ndarray], n_anchors: int, *, clip: float) -> SecureInputLayout:
        payload = PayloadLayout.for_round(global_state, n_anchors)
        digits = 1
        while COUNT_RADIX**digits <= payload.length:
            digits += 1
        return cls(payload, float(clip), digits)

    @property
    def length(self) -> int:
        return self.payload.length + self.digits

    def node_input(self, payload: Mapping[str, np.ndarray]) -> tuple[np.ndarray, int]:
        """ON THE NODE: (vector to mask or encrypt, number of coordinates clipped). The count must stay local.

        Refuses (:class:`DataError`) a payload off the public layout, a non-finite value, or a precision weight
        above ``clip`` (clipping the weight would silently give every contributor a wrong share of the average).
        """
        try:
            vector = self.payload.flatten(payload)
        except MessageError as exc:
            raise DataError(str(exc)) from None
        if not np.isfinite(vector).all():
            raise DataError("upload has NaN/inf values; the node refuses to mask it")
        weight = float(np.asarray(payload[WEIGHT_FIELD]).ravel()[0])
        if weight > self.clip:
            raise DataError(f"precision weight exceeds secure.clip = {self.clip:g}; the node refuses to upload a clipped weight")
        bounded = np.clip(vector, -self.clip, self.clip)
        clipped = int(np.count_nonzero(bounded != vector))
        digits = [(clipped // COUNT_RADIX**i) % COUNT_RADIX for i in range(self.digits)]
        return np.concatenate([bounded, np.asarray(digits, np.float64) * (self.clip / COUNT_RADIX)]), clipped

    def unflatten(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """Summed vector -> named sums (the upload fields and ``CLIPPED_FIELD``); extra trailing values are ignored."""
        out = self.payload.unflatten(vector[:self.payload.length])
        out[CLIPPED_FIELD] = np.asarray(vector[self.payload.length:self.length], np.float64)
        return out

    def clipped_total(self, sums: Mapping[str, np.ndarray], max_abs_error: float) -> int | None:
        """The contributors' total clipped count from the summed digits; None when the error bound cannot
        guarantee the exact integer (a huge cohort in a 32-bit ring)."""
        scale = COUNT_RADIX / self.clip
        if not max_abs_error * scale < 0.5:
            return None
        digit_sums = np.rint(np.asarray(sums[CLIPPED_FIELD], np.float64) * scale).astype(np.int64)
        return int(sum(int(d) * COUNT_RADIX**i for i, d in enumerate(digit_sums)))


@dataclass(frozen=True, slots=True, kw_only=True)
class SecureRound:
    """What a secure-aggregation round gives the server: sums, contributors, who was left out and at which
    stage (the server observes where a node's messages stopped), bytes per node, the protocol's error bound."""

    sums: dict[str, np.ndarray]
    contributors: tuple[str, ...]
    left_out: dict[str, FailureCode]  # node id -> why it is not in the sum
    dropped_at: dict[str, str]  # node id -> protocol stage after which nothing more arrived
    bytes_sent: dict[str, int]
    max_abs_error: float
