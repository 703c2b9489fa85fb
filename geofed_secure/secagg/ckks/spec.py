"""ckks-v1 constants, parameters and pure functions (SPEC sections 2-3): chunking, the error bound, setting checks."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from geofed_secure.errors import ConfigError, MessageError

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


def checked_setting(check: Any, value: Any, name: str) -> Any:
    try:
        return check(value, what=name)
    except MessageError as exc:
        raise ConfigError(f"ckks.{name}", str(exc)) from exc


def checked_clip(clip: Any) -> float:
    if not isinstance(clip, int | float) or isinstance(clip, bool) or not (math.isfinite(clip) and 0 < clip <= MAX_CLIP):
        raise ConfigError("ckks.clip", f"must be a finite number in (0, {MAX_CLIP:g}], got {clip!r}")
    return float(clip)


def checked_floor(floor: Any) -> int:
    if not isinstance(floor, int) or isinstance(floor, bool) or not 1 <= floor <= MAX_COHORT:
        raise ConfigError("ckks.floor", f"must be an integer in [1, {MAX_COHORT}], got {floor!r}")
    return floor
