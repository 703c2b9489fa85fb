"""Fixed-point encoding of real vectors into the ring Z_(2^b), chosen so a sum of n inputs cannot wrap.

A node clips every coordinate to [-clip, clip] (explicitly, and counts how many it clipped), scales by
2^f and rounds stochastically (floor(y + U), unbiased: E[encode(x)] = x 2^f). With n parties, the signed sum of the
encodings lies in (-n (clip 2^f + 1), n (clip 2^f + 1)), so choosing the largest f with
n (clip 2^f + 1) <= 2^(b-1) - 1 guarantees no wrap (SPEC section 3). Each node's rounding error is below
2^-f, so the decoded sum is within n 2^-f (+ float64 rounding of the result) of the exact sum of the
clipped inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from geofed_secure.errors import ConfigError, DataError

RING_BITS = (32, 64)
FLOAT32_STEP = 2.0**-24  # each upload is quantised no coarser than float32 rounds a value at the clip bound


def automatic_ring_bits(n_parties: int, clip: float) -> int:
    """The ring a federation of ``n_parties`` with bound ``clip`` needs: 32 bits (4 bytes a parameter) when they suffice.

    32 when the 32-bit encoding of the sum of ``n_parties`` clipped inputs cannot wrap AND quantises each input with a
    step no coarser than float32 at the clip bound: ``n (clip 2^f + 1) <= 2^31 - 1`` (no wrap, SPEC 3) with
    ``2^-f <= 2^-24 clip``, i.e. ``clip 2^f >= 2^24``. Together: ``n (2^24 + 1) <= 2^31 - 1`` is necessary (n <= 127)
    and, since the largest f puts ``clip 2^f`` in ``[2^24, 2^25)``, ``n <= 63`` always suffices, whatever the clip.
    Otherwise 64 bits (and for a clip so small that f would pass the 32-bit cap of 30). The decoded sum is then within
    ``n 2^-f <= n 2^-24 clip`` of the exact sum of the clipped inputs (plus float64 rounding).

    >>> automatic_ring_bits(5, 1.0e4), automatic_ring_bits(63, 1.0e4), automatic_ring_bits(200, 1.0), automatic_ring_bits(5, 1e-4)
    (32, 32, 64, 64)
    """
    try:
        fp = FixedPoint.for_cohort(n_parties, clip, 32)
    except ConfigError:
        return 64
    return 32 if 2.0**-fp.frac_bits <= clip * FLOAT32_STEP else 64


@dataclass(frozen=True, slots=True)
class FixedPoint:
    ring_bits: int
    frac_bits: int
    clip: float

    @classmethod
    def for_cohort(cls, n_parties: int, clip: float, ring_bits: int) -> FixedPoint:
        """The most precise encoding for which the sum of ``n_parties`` clipped inputs cannot wrap.

        >>> FixedPoint.for_cohort(100, 1.0, 32).frac_bits
        24
        """
        if not all(type(v) in (int, float) for v in (n_parties, clip, ring_bits)):
            return cls._for_cohort(n_parties, clip, ring_bits)  # refused there, or too unusual to remember
        key = (n_parties, clip, ring_bits, type(clip), type(n_parties))
        known = _COHORT_ENCODINGS.get(key)
        if known is None:  # exact rational arithmetic, computed by every party at every epoch: once is enough
            known = cls._for_cohort(n_parties, clip, ring_bits)
            if len(_COHORT_ENCODINGS) < 4096:
                _COHORT_ENCODINGS[key] = known
        return known

    @classmethod
    def _for_cohort(cls, n_parties: int, clip: float, ring_bits: int) -> FixedPoint:
        if ring_bits not in RING_BITS:
            raise ConfigError("secure.ring_bits", f"must be 32 or 64, got {ring_bits!r}")
        if not (isinstance(clip, int | float) and math.isfinite(clip) and clip > 0):
            raise ConfigError("secure.clip", f"must be a positive finite number, got {clip!r}")
        if n_parties < 1:
            raise ConfigError("secure", "a cohort needs at least one party")
        limit = 2 ** (ring_bits - 1) - 1  # exact integer arithmetic: float64 cannot tell 2^63 from 2^63 - 1
        exact_clip = Fraction(clip)

        def fits(frac_bits: int) -> bool:
            return n_parties * (exact_clip * 2**frac_bits + 1) <= limit

        if not fits(0):
            raise ConfigError("secure.clip", f"clip {clip} with {n_parties} parties leaves no fractional bits in a "
                              f"{ring_bits}-bit ring; lower the clip bound or use ring_bits = 64")
        cap = 62 if ring_bits == 64 else 30
        frac_bits = max(0, min(cap, math.floor(math.log2(limit / n_parties / clip)) - 1))  # float guess, then exact steps
        while frac_bits > 0 and not fits(frac_bits):
            frac_bits -= 1
        while frac_bits < cap and fits(frac_bits + 1):
            frac_bits += 1
        return cls(ring_bits=ring_bits, frac_bits=frac_bits, clip=float(clip))

    @property
    def dtype(self) -> np.dtype:
        return np.dtype("<u4") if self.ring_bits == 32 else np.dtype("<u8")

    @property
    def signed_dtype(self) -> np.dtype:
        return np.dtype("<i4") if self.ring_bits == 32 else np.dtype("<i8")

    def max_abs_error(self, n_parties: int) -> float:
        """Bound on |decode(sum of encodings) - sum of clipped inputs| for ``n_parties`` inputs."""
        return n_parties * 2.0 ** -self.frac_bits + n_parties * self.clip * 2.0**-52

    def encode(self, values: np.ndarray, draws: np.ndarray | np.random.Generator, *, consume_draws: bool = False,
               out: np.ndarray | None = None, scratch: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """(ring words, number of clipped coordinates). Non-finite input raises :class:`DataError`.

        ``draws``: one uniform in [0, 1) per coordinate for the stochastic rounding (secagg-v1 takes them from
        :func:`~geofed_secure.secagg.masking.primitives.uniform_draws`, SPEC 3), or a numpy Generator to draw them from.
        ``consume_draws``: the caller's float64 ``draws`` array may be overwritten (no temporary vector is allocated);
        ``out``: a ring-word array of the input's length to write the words into (returned); ``scratch``: a float64
        array of that length for the scaled input.
        """
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 1:
            raise DataError(f"secure aggregation input must be a 1-D vector, got shape {x.shape}")
        # min and max propagate NaN and reach +-inf: two fast reductions tell finiteness and whether anything clips
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            bad = int((~np.isfinite(x)).sum())
            raise DataError(f"secure aggregation input has {bad} NaN/inf value(s); the node refuses to mask it")
        fresh = isinstance(draws, np.random.Generator)
        uniforms = draws.random(len(x)) if isinstance(draws, np.random.Generator) else np.asarray(draws, np.float64)
        if uniforms.shape != x.shape:
            raise DataError(f"need one rounding draw per coordinate: {uniforms.shape} draws for {x.shape} values")
        scaled = uniforms if (fresh or consume_draws) and uniforms.flags.writeable else np.array(uniforms)
        clipped = 0
        if lo < -self.clip or hi > self.clip:
            clipped = int(np.count_nonzero(np.abs(x) > self.clip))  # the coordinates np.clip changes
            x = np.clip(x, -self.clip, self.clip)
        # fl(clip(x) 2^f + U): the product is exact and a binary64 sum does not depend on the operand order, so
        # adding the scaled input onto the draws gives the same bits as the reverse; floor(y + U) rounds up with
        # probability frac(y): unbiased stochastic rounding
        if scratch is not None and scratch.shape == x.shape and scratch.dtype == np.float64 and scratch is not scaled:
            scaled += np.multiply(x, 2.0**self.frac_bits, out=scratch)
        else:
            scaled += x * 2.0**self.frac_bits
        np.floor(scaled, out=scaled)
        if out is None or out.shape != x.shape or out.dtype != self.dtype:
            return scaled.astype(self.signed_dtype).view(self.dtype), clipped
        np.copyto(out.view(self.signed_dtype), scaled, casting="unsafe")
        return out, clipped

    def decode(self, words: np.ndarray) -> np.ndarray:
        """Ring words (a sum of encodings) to float64, reading them as two's-complement signed integers."""
        return np.asarray(words, dtype=self.dtype).view(self.signed_dtype).astype(np.float64) * 2.0**-self.frac_bits


_COHORT_ENCODINGS: dict[tuple[object, ...], FixedPoint] = {}  # (n, clip, ring_bits, types) -> encoding
