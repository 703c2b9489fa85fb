"""ckks-v1 key provisioning and the TenSEAL wrappers: every TenSEAL failure becomes one of our typed errors.

TenSEAL draws its keys and encryption noise from SEAL's own CSPRNG, which cannot be injected: ciphertexts and
the public-context digest differ between runs.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import tenseal as ts

from geofed_secure.errors import (
    ConfigError,
    DataError,
    LocalProtocolError,
    MessageError,
)
from geofed_secure.secagg.ckks.spec import (
    CkksParameters,
    chunk_bounds,
)


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
class Keyring:
    """A loaded context with what the protocol checks ciphertexts against."""

    context: ts.Context
    slots: int
    scale: float
    parms_id: tuple[int, ...]
    digest: str

    @classmethod
    def load(cls, data: bytes, *, what: str) -> Keyring:
        """The keyring of serialised context ``data``. Parties of one process that hold the same context bytes (the
        simulator's nodes share the federation's one secret context) share one loaded keyring: loading took 47 ms
        a party at N = 8192, a fifth of a 10-node round. Nothing here changes a loaded context."""
        key = hashlib.sha256(data).digest() if isinstance(data, bytes) else None
        known = _KEYRINGS.get(key) if key is not None else None
        if known is None:
            known = cls._load(data, what=what)
            if key is not None:
                while len(_KEYRINGS) >= 4:
                    _KEYRINGS.pop(next(iter(_KEYRINGS)), None)
                _KEYRINGS[key] = known
        return known

    @classmethod
    def _load(cls, data: bytes, *, what: str) -> Keyring:
        ctx = _load_context(data, what=what)
        seal = ctx.seal_context().data
        slots = seal.key_context_data().parms().poly_modulus_degree() // 2
        return cls(context=ctx, slots=slots, scale=float(ctx.global_scale), parms_id=tuple(seal.first_parms_id()),
                   digest=hashlib.sha256(_public_bytes(ctx)).hexdigest())

    @property
    def has_secret_key(self) -> bool:
        return bool(self.context.has_secret_key())


_KEYRINGS: dict[bytes, Keyring] = {}  # SHA-256 of the context bytes -> loaded keyring (the last few)


def encrypt_chunks(keyring: Keyring, values: np.ndarray) -> tuple[bytes, ...]:
    """One ciphertext per slot-sized chunk, so TenSEAL never packs (and never warns about) several ciphertexts."""
    return tuple(ts.ckks_vector(keyring.context, values[a:b].tolist()).serialize()
                 for a, b in chunk_bounds(values.shape[0] - 1, keyring.slots))


def load_chunks(keyring: Keyring, chunks: tuple[bytes, ...], length: int, *, what: str) -> list[ts.CKKSVector]:
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


def decrypt_vectors(keyring: Keyring, vectors: list[ts.CKKSVector], *, what: str) -> np.ndarray:
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
    keyring = Keyring.load(context, what="decrypt_chunks")
    if not keyring.has_secret_key:
        raise LocalProtocolError("decrypt_chunks: this context holds no secret key; only nodes can decrypt")
    return decrypt_vectors(keyring, load_chunks(keyring, tuple(chunks), length, what="decrypt_chunks"), what="decrypt_chunks")


def context_digest(public_context: bytes) -> str:
    """SHA-256 (hex) of the canonical public context: the name nodes and server give to the key set.

    Canonical: the context is loaded and re-serialised with the public key only, so the digest does not depend on
    which optional keys the given bytes carried.
    """
    return hashlib.sha256(_public_bytes(_load_context(public_context, what="public context"))).hexdigest()
