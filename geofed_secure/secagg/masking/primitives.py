"""Cryptographic primitives of secagg-v1, apart from the protocol that composes them (pyca's hazmat habit).

Everything here is a thin, typed layer over ``cryptography``; nothing is hand-rolled except Shamir sharing
over the prime field GF(2^521 - 1) (twenty clear lines; no well-kept PyPI library offers it). Spec symbols
refer to ``protocols/secagg-v1/SPEC.md`` section 2.

- key agreement: X25519 (``x25519_keypair``, ``x25519_shared``)
- identity signatures: Ed25519 (``sign``, ``verify``)
- key derivation: HKDF-SHA256 with a length-prefixed, domain-separated ``info`` (``derive_key``)
- mask keystream: AES-256-CTR with an all-zero nonce under a single-use derived key (``keystream_words``)
- share transport: ChaCha20-Poly1305 (``seal``, ``unseal``); any failure is one opaque :class:`DecryptionFailed`
- secret sharing: Shamir over GF(2^521 - 1) for 32-byte secrets (``shamir_split``, ``shamir_combine``)
- randomness is injected (:class:`SystemRandomness` in production, :class:`DeterministicRandomness` for
  test vectors), so every run and vector is reproducible.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from geofed_secure.errors import GeofedError

PROTOCOL_ID = b"geofed-secagg-v1"
KEY_BYTES = 32
SIGNATURE_BYTES = 64
FIELD_PRIME = 2**521 - 1  # Mersenne prime > 2^256, so every 32-byte secret is a field element
SHARE_BYTES = 66  # ceil(521 / 8)


class DecryptionFailed(GeofedError):
    """A sealed share did not authenticate (wrong key, wrong header, or tampered bytes). Deliberately opaque."""


class Randomness(Protocol):
    def token(self, nbytes: int) -> bytes: ...


class SystemRandomness:
    """Production randomness: the operating system's CSPRNG."""

    def token(self, nbytes: int) -> bytes:
        return os.urandom(nbytes)


class DeterministicRandomness:
    """A reproducible CSPRNG for tests and vectors: the ChaCha20 keystream under SHA-256(label, seed).

    >>> DeterministicRandomness(b"seed").token(4) == DeterministicRandomness(b"seed").token(4)
    True
    """

    def __init__(self, seed: bytes, label: str = "") -> None:
        key = hashlib.sha256(PROTOCOL_ID + b"|rng|" + label.encode() + b"|" + seed).digest()
        self._stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()

    def token(self, nbytes: int) -> bytes:
        return self._stream.update(bytes(nbytes))

    def child(self, label: str) -> DeterministicRandomness:
        """An independent stream for one party (derived, so parties never share randomness)."""
        return DeterministicRandomness(self.token(32), label)


def _field(value: str | bytes | int) -> bytes:
    if type(value) is str:  # ids, purposes, the federation: few, and encoded thousands of times a round
        known = _STR_FIELDS.get(value)
        if known is None:
            known = _encode_field(value.encode())
            if len(_STR_FIELDS) < 65536:
                _STR_FIELDS[value] = known
        return known
    return _encode_field(value if isinstance(value, bytes) else str(value).encode())


def _encode_field(raw: bytes) -> bytes:
    return len(raw).to_bytes(4, "big") + raw


_STR_FIELDS: dict[str, bytes] = {}


_PROTOCOL_FIELD = _field(PROTOCOL_ID)


def derive_key(ikm: bytes, purpose: str, *context: str | bytes | int) -> bytes:
    """HKDF-SHA256(ikm, salt = none, info = PROTOCOL_ID || purpose || context...) -> 32 bytes (SPEC 2.2).

    Each info field is length-prefixed, so no two different contexts give the same info string.
    """
    info = _PROTOCOL_FIELD + _field(purpose) + b"".join([_field(c) for c in context])
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(ikm)


def x25519_keypair(rng: Randomness) -> tuple[bytes, bytes]:
    """(private, public) raw 32-byte X25519 keys from 32 bytes of ``rng``."""
    key = x25519_generate(rng)
    return key.private, key.public_bytes()


def x25519_generate(rng: Randomness) -> X25519Private:
    """A loaded X25519 key from 32 bytes of ``rng`` (loading computes the public key: keep it loaded)."""
    return X25519Private(rng.token(KEY_BYTES))


def x25519_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


class X25519Private:
    """A loaded X25519 private key, for several exchanges without re-parsing the raw bytes each time."""

    __slots__ = ("_key", "private")

    def __init__(self, private: bytes) -> None:
        self._key = X25519PrivateKey.from_private_bytes(private)
        self.private = self._key.private_bytes_raw()

    def public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes_raw()

    def exchange(self, peer_public: bytes) -> bytes:
        return self._key.exchange(X25519PublicKey.from_public_bytes(peer_public))


def x25519_shared(private: bytes, peer_public: bytes) -> bytes:
    """Raw X25519 shared secret; a low-order peer key (all-zero output) raises ValueError."""
    return X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))


def ed25519_keypair(rng: Randomness) -> tuple[bytes, bytes]:
    private = Ed25519PrivateKey.from_private_bytes(rng.token(KEY_BYTES))
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def sign(private: bytes, message: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(private).sign(message)


class Ed25519Signer:
    """A loaded Ed25519 identity key, for several signatures without re-parsing the raw seed each time."""

    __slots__ = ("_key",)

    def __init__(self, private: bytes) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(private)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


@functools.lru_cache(maxsize=4096)
def _ed25519_public(public: bytes) -> Ed25519PublicKey:
    """Identity keys are provisioned and public: each is parsed once, not once per verification."""
    return Ed25519PublicKey.from_public_bytes(public)


def verify(public: bytes, signature: bytes, message: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``message`` under ``public``."""
    try:
        _ed25519_public(bytes(public)).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


_ZEROS = b""  # shared read-only zero plaintext, grown on demand (allocating it per call dominated the cost)


def keystream_words(key: bytes, nwords: int, ring_bits: int, *, scratch: np.ndarray | None = None) -> np.ndarray:
    """The first ``nwords`` little-endian ring words of the AES-256-CTR keystream under ``key`` (SPEC 2.3).

    The nonce is all-zero: every key is derived for exactly one (round, purpose, parties) and used once.
    ``scratch`` (uint8, at least nwords * word size + 16 bytes) is reused for the output when given; the
    returned array is then a view of it, valid until the next call with the same scratch.
    """
    global _ZEROS
    dtype = np.dtype("<u4") if ring_bits == 32 else np.dtype("<u8")
    nbytes = nwords * dtype.itemsize
    if len(_ZEROS) < nbytes:
        _ZEROS = bytes(nbytes)
    out = scratch if scratch is not None and scratch.nbytes >= nbytes + 16 else np.empty(nbytes + 16, np.uint8)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    if nbytes:
        encryptor.update_into(memoryview(_ZEROS)[:nbytes], out.data)
    return out[:nbytes].view(dtype)


def uniform_draws(key: bytes, count: int, *, scratch: np.ndarray | None = None,
                  out: np.ndarray | None = None) -> np.ndarray:
    """``count`` uniforms in [0, 1) for stochastic rounding (SPEC 3): the 64-bit words of the AES-256-CTR keystream
    under ``key`` (as for masks, 2.4), shifted right by 11 and multiplied by 2^-53 (exact in float64).

    One 32-byte seed from the party's randomness keys the whole vector: drawing 8 bytes per coordinate from the OS
    CSPRNG cost 3 ms per 1e5 coordinates, the keystream 0.1 ms. ``scratch`` (as for :func:`keystream_words`, 64-bit)
    and ``out`` (float64, ``count`` values) are reused when given: converting into a fresh array, or in place over
    the keystream, cost 0.6 ms per 1e5 coordinates against 0.05 ms into a separate, already touched buffer."""
    words = keystream_words(key, count, 64, scratch=scratch)
    np.right_shift(words, np.uint64(11), out=words)
    if out is None or out.shape != (count,) or out.dtype != np.float64:
        out = np.empty(count, np.float64)
    np.copyto(out, words.view(np.int64), casting="unsafe")  # values < 2^53: int64 -> float64 is exact
    out *= 2.0**-53
    return out


def keystream_scratch(nwords: int, ring_bits: int) -> np.ndarray:
    """A reusable output buffer for :func:`keystream_words`."""
    return np.empty(nwords * (ring_bits // 8) + 16, np.uint8)


_POOL = threading.local()


def reusable(name: str, nbytes: int) -> np.ndarray:
    """This thread's byte buffer ``name`` of at least ``nbytes``, kept between calls (a view of it: valid until the
    thread asks for ``name`` again). A round's keystreams and rounding draws written into fresh buffers cost a third
    more than into buffers already mapped (fresh pages fault in, and evict what the cache held)."""
    pool: dict[str, np.ndarray] | None = getattr(_POOL, "buffers", None)
    if pool is None:
        pool = _POOL.buffers = {}
    buffer = pool.get(name)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = pool[name] = np.empty(-(-nbytes // 64) * 64, np.uint8)
    return buffer[:nbytes]


def seal(key: bytes, plaintext: bytes, header: bytes) -> bytes:
    """ChaCha20-Poly1305 with the all-zero nonce (one message per derived key), ``header`` authenticated."""
    return ChaCha20Poly1305(key).encrypt(bytes(12), plaintext, header)


def unseal(key: bytes, ciphertext: bytes, header: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(bytes(12), ciphertext, header)
    except (InvalidTag, ValueError) as exc:
        raise DecryptionFailed("sealed share failed authentication") from exc


def commitment(secret: bytes, *context: str | int, purpose: str = "commit") -> bytes:
    """SHA-256 commitment to a 32-byte uniformly random secret, bound to its purpose and context (SPEC 2.4).

    SHA-256(field(PROTOCOL_ID) || field(purpose) || field(c1) || ... || field(ck) || secret); purposes are
    ``commit`` (self-mask seeds) and ``graph-commit`` (graph-seed nonces).
    """
    if len(secret) != KEY_BYTES:
        raise ValueError("commitments are to 32-byte secrets")
    return hashlib.sha256(_PROTOCOL_FIELD + _field(purpose) + b"".join(_field(c) for c in context) + secret).digest()


def first_unopened(secrets: Mapping[str, bytes], commitments: Mapping[str, bytes], *context: str | int,
                   purpose: str) -> str | None:
    """The first owner whose secret does not open its commitment, or None when all do.

    Owner ``v``'s commitment is ``commitment(secrets[v], *context, v, purpose=purpose)``; the common prefix is
    hashed once (a SecAgg+ node checks every member's graph commitment: O(n) hashes of a few dozen bytes).
    """
    prefix = hashlib.sha256(_PROTOCOL_FIELD + _field(purpose) + b"".join(_field(c) for c in context))
    for owner, committed in commitments.items():
        secret = secrets[owner]
        if len(secret) != KEY_BYTES:
            raise ValueError("commitments are to 32-byte secrets")
        h = prefix.copy()
        h.update(_field(owner) + secret)
        if h.digest() != committed:
            return owner
    return None


def digest(purpose: str, *parts: str | bytes | int) -> bytes:
    """SHA-256(field(PROTOCOL_ID) || field(purpose) || field(p1) || ... || field(pk)): a domain-separated hash.

    Large parts (a roster's wire bytes) are hashed where they lie, never copied into a joined buffer.
    """
    h = hashlib.sha256(_PROTOCOL_FIELD + _field(purpose))
    small: list[bytes] = []
    for part in parts:
        if type(part) is bytes and len(part) >= 65536:
            small.append(len(part).to_bytes(4, "big"))
            h.update(b"".join(small))
            h.update(part)
            small.clear()
        else:
            small.append(_field(part))
    h.update(b"".join(small))
    return h.digest()


def _field_element(rng: Randomness) -> int:
    while True:  # rejection sampling: uniform in [0, p)
        value = int.from_bytes(rng.token(SHARE_BYTES), "big") & ((1 << 521) - 1)
        if value < FIELD_PRIME:
            return value


def shamir_split(secret: bytes, threshold: int, xs: Sequence[int], rng: Randomness) -> list[bytes]:
    """Shares f(x) for x in ``xs`` of a random polynomial f of degree threshold-1 with f(0) = secret.

    >>> rng = DeterministicRandomness(b"doc")
    >>> shares = shamir_split(b"k" * 32, 2, [1, 2, 3], rng)
    >>> shamir_combine([(1, shares[0]), (3, shares[2])]) == b"k" * 32
    True
    """
    if len(secret) != KEY_BYTES:
        raise ValueError("Shamir secrets are 32 bytes")
    if not 1 <= threshold <= len(xs) or len(set(xs)) != len(xs) or any(not 0 < x < FIELD_PRIME for x in xs):
        raise ValueError("need 1 <= threshold <= len(xs) and distinct non-zero share points")
    coefficients = [int.from_bytes(secret, "big")] + [_field_element(rng) for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % FIELD_PRIME
        shares.append(y.to_bytes(SHARE_BYTES, "big"))
    return shares


def shamir_combine(points: Sequence[tuple[int, bytes]]) -> bytes:
    """Lagrange interpolation at 0 of exactly the given points; returns the 32-byte secret.

    Raises ValueError when the points do not interpolate to a 32-byte value (wrong or too few shares).
    """
    xs = [x for x, _ in points]
    if len(set(xs)) != len(xs):
        raise ValueError("duplicate share points")
    secret = 0
    for i, (xi, yi_bytes) in enumerate(points):
        yi = int.from_bytes(yi_bytes, "big")
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * (-xj) % FIELD_PRIME
                den = den * (xi - xj) % FIELD_PRIME
        secret = (secret + yi * num * pow(den, -1, FIELD_PRIME)) % FIELD_PRIME
    if secret >= 1 << (8 * KEY_BYTES):
        raise ValueError("shares do not interpolate to a 32-byte secret")
    return secret.to_bytes(KEY_BYTES, "big")
