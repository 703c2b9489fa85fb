"""secagg-v1 primitives and fixed point: Shamir, HKDF domains, keystream, AEAD, injected randomness, no-wrap encoding."""

from __future__ import annotations

import hashlib
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geofed_secure.errors import ConfigError, DataError
from geofed_secure.secagg.masking import primitives as crypto
from geofed_secure.secagg.masking.fixedpoint import FixedPoint, automatic_ring_bits

FAST = settings(max_examples=25, deadline=None)
SECRET = bytes(range(32))


# -- Shamir over GF(2^521 - 1) ------------------------------------------------------------------------


@FAST
@given(secret=st.binary(min_size=32, max_size=32), threshold=st.integers(1, 5), extra=st.integers(0, 3),
       data=st.data())
def test_any_threshold_shares_reconstruct_and_fewer_do_not(secret, threshold, extra, data):
    # Prepare
    xs = data.draw(st.lists(st.integers(1, 10**6), min_size=threshold + extra, max_size=threshold + extra, unique=True))
    shares = crypto.shamir_split(secret, threshold, xs, crypto.DeterministicRandomness(secret, "shamir"))
    points = list(zip(xs, shares, strict=True))
    subset = data.draw(st.permutations(points))[:threshold]

    # Execute / Assert: any t shares give the secret
    assert crypto.shamir_combine(subset) == secret
    assert all(len(s) == crypto.SHARE_BYTES for s in shares)
    if threshold == 1:
        return
    # t - 1 shares do not: either they interpolate to a value beyond 32 bytes or to another secret
    try:
        partial = crypto.shamir_combine(subset[:-1])
    except ValueError:
        return
    assert partial != secret


def test_every_subset_of_size_t_reconstructs_and_no_subset_below_t_does():
    # Prepare
    xs = [1, 2, 3, 4, 5]
    shares = crypto.shamir_split(SECRET, 3, xs, crypto.DeterministicRandomness(b"all-subsets"))
    points = list(zip(xs, shares, strict=True))

    # Execute / Assert
    for subset in itertools.combinations(points, 3):
        assert crypto.shamir_combine(list(subset)) == SECRET
    for subset in itertools.combinations(points, 2):
        try:
            assert crypto.shamir_combine(list(subset)) != SECRET
        except ValueError:
            pass


def test_a_tampered_share_does_not_reconstruct_the_secret():
    shares = crypto.shamir_split(SECRET, 2, [1, 2], crypto.DeterministicRandomness(b"tamper"))
    bad = (int.from_bytes(shares[1], "big") ^ 1).to_bytes(crypto.SHARE_BYTES, "big")
    try:
        assert crypto.shamir_combine([(1, shares[0]), (2, bad)]) != SECRET
    except ValueError:
        pass


@pytest.mark.parametrize("secret, threshold, xs", [
    (b"short", 2, [1, 2]),           # not a 32-byte secret
    (SECRET, 0, [1, 2]),             # threshold below 1
    (SECRET, 3, [1, 2]),             # threshold above the number of holders
    (SECRET, 2, [1, 1]),             # duplicate evaluation points
    (SECRET, 2, [0, 1]),             # x = 0 would hand out the secret itself
    (SECRET, 2, [1, crypto.FIELD_PRIME]),  # outside the field
])
def test_shamir_split_refuses_bad_parameters(secret, threshold, xs):
    with pytest.raises(ValueError):
        crypto.shamir_split(secret, threshold, xs, crypto.DeterministicRandomness(b"x"))


def test_shamir_combine_refuses_duplicate_points():
    shares = crypto.shamir_split(SECRET, 2, [1, 2], crypto.DeterministicRandomness(b"dup"))
    with pytest.raises(ValueError):
        crypto.shamir_combine([(1, shares[0]), (1, shares[0])])


# -- HKDF domain separation -----------------------------------------------------------------------------


def test_derive_key_separates_purposes_contexts_and_field_boundaries():
    # Prepare
    ikm = b"\x07" * 32
    variants = [
        ("self-mask", ("fed", 1, "a")),
        ("pairwise-mask", ("fed", 1, "a")),          # other purpose
        ("self-mask", ("fed", 2, "a")),              # other round
        ("self-mask", ("other", 1, "a")),            # other federation
        ("self-mask", ("fed", 1, "b")),              # other owner
        ("self-mask", ("fed", 1, "a", "b")),         # extra field
        ("self-mask", ("fe", "d1", "a")),            # same concatenation, other boundaries
        ("self-mask", ("fed1", "a")),
    ]

    # Execute
    keys = [crypto.derive_key(ikm, purpose, *context) for purpose, context in variants]

    # Assert
    assert len(set(keys)) == len(keys)
    assert all(len(k) == crypto.KEY_BYTES for k in keys)
    assert crypto.derive_key(ikm, "self-mask", "fed", 1, "a") == keys[0]  # deterministic
    assert crypto.derive_key(b"\x08" * 32, "self-mask", "fed", 1, "a") != keys[0]  # other input key material


# -- keystream ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ring_bits, dtype", [(32, np.dtype("<u4")), (64, np.dtype("<u8"))])
def test_keystream_is_reproducible_prefix_stable_and_key_specific(ring_bits, dtype):
    # Prepare
    k1, k2 = b"\x01" * 32, b"\x02" * 32

    # Execute
    a = crypto.keystream_words(k1, 64, ring_bits)

    # Assert
    assert a.dtype == dtype and a.shape == (64,)
    assert np.array_equal(a, crypto.keystream_words(k1, 64, ring_bits))
    assert np.array_equal(a[:10], crypto.keystream_words(k1, 10, ring_bits))
    other = crypto.keystream_words(k2, 64, ring_bits)
    assert not np.array_equal(a, other)
    assert (a != other).mean() > 0.9  # independent words, not a shifted or related stream
    assert len(np.unique(a)) > 60  # not a constant or short-period stream
    assert crypto.keystream_words(k1, 0, ring_bits).shape == (0,)


@pytest.mark.parametrize("ring_bits", [32, 64])
def test_keystream_scratch_buffer_gives_the_same_words(ring_bits):
    # Prepare
    key = b"\x05" * 32
    plain = crypto.keystream_words(key, 33, ring_bits).copy()
    scratch = crypto.keystream_scratch(33, ring_bits)

    # Execute
    into = crypto.keystream_words(key, 33, ring_bits, scratch=scratch)
    into_matches = np.array_equal(into, plain)
    shorter = crypto.keystream_words(key, 7, ring_bits, scratch=scratch).copy()
    too_small = crypto.keystream_words(key, 33, ring_bits, scratch=np.empty(8, np.uint8))
    longer_first = crypto.keystream_words(key, 1000, ring_bits)  # grows the shared zero buffer

    # Assert
    assert into_matches
    assert np.array_equal(shorter, plain[:7])
    assert np.array_equal(too_small, plain)
    assert np.array_equal(longer_first[:33], plain)
    assert np.array_equal(crypto.keystream_words(key, 33, ring_bits), plain)  # the grown buffer stays all-zero
    assert into.base is not None  # a view of the scratch: valid until its next use


def test_loaded_x25519_key_agrees_with_the_raw_exchange():
    rng = crypto.DeterministicRandomness(b"loaded")
    a_private, _ = crypto.x25519_keypair(rng)
    _, b_public = crypto.x25519_keypair(rng)
    assert crypto.X25519Private(a_private).exchange(b_public) == crypto.x25519_shared(a_private, b_public)


# -- AEAD ----------------------------------------------------------------------------------------------


def test_seal_round_trip_and_every_tampering_is_one_opaque_error():
    # Prepare
    key, header, plaintext = b"\x03" * 32, b"geofed|shares|fed|1|a|b", b"share-bytes" * 12
    sealed = crypto.seal(key, plaintext, header)

    # Execute / Assert
    assert crypto.unseal(key, sealed, header) == plaintext
    for i in range(len(sealed)):
        flipped = bytearray(sealed)
        flipped[i] ^= 0x80
        with pytest.raises(crypto.DecryptionFailed):
            crypto.unseal(key, bytes(flipped), header)
    for bad_header in (b"", header[:-1], header + b"x", header.replace(b"|a|b", b"|b|a")):
        with pytest.raises(crypto.DecryptionFailed):
            crypto.unseal(key, sealed, bad_header)
    for bad in (sealed[:-1], sealed[:15], b"", sealed + b"\x00"):
        with pytest.raises(crypto.DecryptionFailed):
            crypto.unseal(key, bad, header)
    with pytest.raises(crypto.DecryptionFailed):
        crypto.unseal(b"\x04" * 32, sealed, header)
    with pytest.raises(crypto.DecryptionFailed):
        crypto.unseal(b"\x04" * 16, sealed, header)  # a malformed key is the same opaque error


# -- identity and key agreement ---------------------------------------------------------------------------


def test_x25519_agreement_is_symmetric_and_low_order_keys_are_refused():
    rng = crypto.DeterministicRandomness(b"dh")
    a_private, a_public = crypto.x25519_keypair(rng)
    b_private, b_public = crypto.x25519_keypair(rng)
    assert crypto.x25519_shared(a_private, b_public) == crypto.x25519_shared(b_private, a_public)
    assert crypto.x25519_public(a_private) == a_public
    with pytest.raises(ValueError):
        crypto.x25519_shared(a_private, bytes(32))  # the all-zero point: the shared secret would be public


def test_signatures_bind_key_and_message():
    rng = crypto.DeterministicRandomness(b"sig")
    private, public = crypto.ed25519_keypair(rng)
    _, other_public = crypto.ed25519_keypair(rng)
    signature = crypto.sign(private, b"view")
    assert crypto.verify(public, signature, b"view")
    assert not crypto.verify(public, signature, b"view2")
    assert not crypto.verify(other_public, signature, b"view")
    assert not crypto.verify(public, bytes(64), b"view")
    assert not crypto.verify(b"short", signature, b"view")  # malformed key: False, not an exception


def test_commitment_binds_secret_and_context():
    c = crypto.commitment(SECRET, "fed", 1, "a")
    assert c == crypto.commitment(SECRET, "fed", 1, "a")
    assert len({c, crypto.commitment(SECRET, "fed", 2, "a"), crypto.commitment(SECRET, "fed", 1, "b"),
                crypto.commitment(bytes(32), "fed", 1, "a")}) == 4


@pytest.mark.parametrize("big", [65535, 65536, 300_000])
def test_digest_of_large_and_small_parts_is_the_spec_formula(big):
    # Prepare: SPEC 2.2's field(x) = 4-byte big-endian length || x, written out here independently
    def field(x: bytes) -> bytes:
        return len(x).to_bytes(4, "big") + x

    parts = (b"a", bytes(range(256)) * (big // 256) + b"z" * (big % 256), "fed", 7, b"\x01" * 70_000, b"tail")
    raw = [p if isinstance(p, bytes) else str(p).encode() for p in parts]
    expected = hashlib.sha256(field(crypto.PROTOCOL_ID) + field(b"roster") + b"".join(field(p) for p in raw)).digest()
    # Execute / Assert
    assert crypto.digest("roster", *parts) == expected


def test_first_unopened_finds_exactly_the_secret_that_does_not_open_its_commitment():
    # Prepare: commitments of three owners' secrets, made one by one with commitment()
    secrets = {v: bytes([i]) * 32 for i, v in enumerate("abc")}
    listed = {v: crypto.commitment(s, "fed", 4, v, purpose="graph-commit") for v, s in secrets.items()}
    # Execute / Assert
    assert crypto.first_unopened(secrets, listed, "fed", 4, purpose="graph-commit") is None
    assert crypto.first_unopened({**secrets, "b": bytes(32)}, listed, "fed", 4, purpose="graph-commit") == "b"
    assert crypto.first_unopened(secrets, listed, "fed", 5, purpose="graph-commit") == "a"  # another epoch
    assert crypto.first_unopened(secrets, listed, "fed", 4, purpose="commit") == "a"  # another purpose
    with pytest.raises(ValueError, match="32-byte"):
        crypto.first_unopened({**secrets, "a": b"short"}, listed, "fed", 4, purpose="graph-commit")


# -- injected randomness --------------------------------------------------------------------------------


def test_deterministic_randomness_is_reproducible_and_separated():
    # Prepare
    def fresh(seed=b"s", label=""):
        return crypto.DeterministicRandomness(seed, label)

    # Execute
    a = fresh().token(48)

    # Assert
    assert a == fresh().token(48)
    r = fresh()
    assert r.token(16) + r.token(32) == a  # one continuous stream, however it is read
    assert fresh(b"t").token(48) != a
    assert fresh(label="node/a").token(48) != a
    parent1, parent2 = fresh(), fresh()
    assert parent1.child("x").token(32) == parent2.child("x").token(32)
    parent3 = fresh()
    assert parent3.child("x").token(32) != parent3.child("x").token(32)  # each child draws fresh parent bytes
    assert fresh().child("x").token(32) != fresh().child("y").token(32)
    assert len(crypto.SystemRandomness().token(32)) == 32


# -- fixed point ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ring_bits", [32, 64])
@pytest.mark.parametrize("n", [3, 4, 5, 8, 10, 12, 100])
@pytest.mark.parametrize("clip", [1.0, 1.6, 0.1, 3.7, 1.0e4, 0.001])
def test_sum_of_n_inputs_at_the_clip_bound_never_wraps(ring_bits, n, clip):
    # Prepare
    try:
        fp = FixedPoint.for_cohort(n, clip, ring_bits)
    except ConfigError:
        return  # refusing a clip the ring cannot hold is allowed; wrapping is not
    rng = np.random.default_rng(0)
    x = np.array([clip, -clip, 2 * clip, -2 * clip])

    # Execute
    total = np.zeros(4, dtype=fp.dtype)
    for _ in range(n):
        words, clipped = fp.encode(x, rng)
        total += words

    # Assert
    assert clipped == 2
    expected = np.array([n * clip, -n * clip, n * clip, -n * clip])
    assert np.abs(fp.decode(total) - expected).max() <= fp.max_abs_error(n)


def _headroom_clip(n: int, ring_bits: int, shift: int) -> float:
    """A clip whose scaled value lands exactly on the float64 headroom the encoder computes (the worst case)."""
    return ((2 ** (ring_bits - 1) - 1) / n - 1) / 2.0**shift


@settings(max_examples=60, deadline=None)
@given(n=st.integers(3, 200), ring_bits=st.sampled_from([32, 64]), at_headroom=st.booleans(),
       mantissa=st.floats(1.0, 2.0, exclude_max=True), shift=st.integers(0, 60))
def test_no_wrap_for_any_clip(n, ring_bits, at_headroom, mantissa, shift):
    clip = _headroom_clip(n, ring_bits, shift) if at_headroom else math.ldexp(mantissa, shift - 30)
    try:
        fp = FixedPoint.for_cohort(n, clip, ring_bits)
    except ConfigError:
        return
    # the guarantee the module states: n (clip 2^f + 1) <= 2^(b-1) - 1, in exact integer arithmetic
    top = math.ceil(clip * 2**fp.frac_bits)  # clip * 2^f is exact in float64 (power-of-two scaling)
    assert n * top <= 2 ** (ring_bits - 1) - 1


@FAST
@given(n=st.integers(1, 12), ring_bits=st.sampled_from([32, 64]), data=st.data())
def test_decoded_sum_is_within_the_stated_error_of_the_clipped_sum(n, ring_bits, data):
    # Prepare
    clip = 50.0
    fp = FixedPoint.for_cohort(n, clip, ring_bits)
    values = st.floats(-2 * clip, 2 * clip, allow_nan=False)
    xs = [np.array(data.draw(st.lists(values, min_size=3, max_size=3))) for _ in range(n)]
    rng = np.random.default_rng(1)

    # Execute
    total = np.zeros(3, dtype=fp.dtype)
    clipped = 0
    for x in xs:
        words, c = fp.encode(x, rng)
        total += words
        clipped += c

    # Assert
    exact = np.sum([np.clip(x, -clip, clip) for x in xs], axis=0)
    assert np.abs(fp.decode(total) - exact).max() <= fp.max_abs_error(n)
    assert clipped == sum(int((np.abs(x) > clip).sum()) for x in xs)


def test_stochastic_rounding_is_unbiased():
    fp = FixedPoint(ring_bits=32, frac_bits=2, clip=10.0)
    x = np.full(20000, 0.1)  # 0.4 quanta: rounds to 0 or 1 quantum
    words, _ = fp.encode(x, np.random.default_rng(3))
    assert abs(fp.decode(words).mean() - 0.1) < 0.01


@pytest.mark.parametrize("values", [[1.0, np.nan], [np.inf, 0.0], [-np.inf], [[1.0, 2.0]]])
def test_encode_refuses_non_finite_or_non_vector_input(values):
    fp = FixedPoint.for_cohort(3, 1.0, 64)
    with pytest.raises(DataError):
        fp.encode(np.array(values), np.random.default_rng(0))


@pytest.mark.parametrize("n, clip, ring_bits", [
    (3, 1.0, 16), (3, 0.0, 64), (3, -1.0, 64), (3, float("nan"), 64), (3, float("inf"), 64),
    (0, 1.0, 64), (1000, 1.0e7, 32),
])
def test_for_cohort_refuses_bad_parameters(n, clip, ring_bits):
    with pytest.raises(ConfigError):
        FixedPoint.for_cohort(n, clip, ring_bits)


@pytest.mark.parametrize("module", ["masking.spec", "masking.primitives", "masking.fixedpoint"])
def test_secagg_doctests(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"geofed_secure.secagg.{module}"))
    assert result.failed == 0 and result.attempted > 0


def _reference_encode(fp: FixedPoint, x: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """SPEC 3 written out plainly: floor(fl(clip(x) 2^f + U)) in two's complement."""
    scaled = np.clip(x, -fp.clip, fp.clip) * 2.0**fp.frac_bits + uniforms
    return np.floor(scaled).astype(fp.signed_dtype).view(fp.dtype)


@FAST
@given(ring_bits=st.sampled_from([32, 64]), clip=st.sampled_from([1.0, 8.0, 1.0e4]), data=st.data())
def test_fast_encode_and_draws_give_the_reference_words(ring_bits, clip, data):
    # Prepare: values inside and beyond the clip bound, tiny and subnormal ones, signed zeros
    fp = FixedPoint.for_cohort(10, clip, ring_bits)
    special = st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 1e-300, clip, -clip, 2 * clip, -2 * clip])
    x = np.array(data.draw(st.lists(st.floats(-3 * clip, 3 * clip) | special, min_size=0, max_size=40)), np.float64)
    key = data.draw(st.binary(min_size=32, max_size=32))
    plain = crypto.keystream_words(key, len(x), 64) >> np.uint64(11)
    reference_draws = plain.astype(np.float64) * 2.0**-53

    # Execute: the draws through reused buffers, the words in place
    scratch, out = crypto.keystream_scratch(len(x) + 3, 64), np.empty(len(x))
    draws = crypto.uniform_draws(key, len(x), scratch=scratch, out=out)
    assert np.array_equal(draws, reference_draws) and np.array_equal(crypto.uniform_draws(key, len(x)), reference_draws)
    words_out = np.empty(len(x), fp.dtype)
    words, clipped = fp.encode(x, draws, consume_draws=True, out=words_out, scratch=np.empty(len(x)))
    kept, _ = fp.encode(x, reference_draws)

    # Assert: bit for bit the plain formula, the same clipped count, and the caller's draws untouched by default
    assert words is words_out and np.array_equal(words, _reference_encode(fp, x, reference_draws))
    assert np.array_equal(kept, words) and np.array_equal(reference_draws, plain.astype(np.float64) * 2.0**-53)
    assert clipped == int(np.count_nonzero(np.abs(x) > clip))


@FAST
@given(n=st.integers(1, 300), clip=st.floats(1e-6, 1e12))
def test_automatic_ring_is_32_bit_exactly_when_it_cannot_wrap_at_float32_step(n, clip):
    bits = automatic_ring_bits(n, clip)
    try:
        fp32 = FixedPoint.for_cohort(n, clip, 32)
    except ConfigError:
        assert bits == 64
        return
    fits = 2.0**-fp32.frac_bits <= clip * 2.0**-24  # no wrap is for_cohort's guarantee; the step is the rule
    assert bits == (32 if fits else 64)
    if n <= 63 and clip * 2.0**30 >= 2**25:
        assert bits == 32  # small federations always get 4 bytes a parameter (unless f would pass the 32-bit cap)
    if n >= 128:
        assert bits == 64


def test_reusable_buffers_are_per_name_and_grow():
    a = crypto.reusable("test-a", 100)
    assert a.nbytes == 100 and crypto.reusable("test-a", 50).base is a.base  # the same memory, reused
    assert crypto.reusable("test-b", 100).base is not a.base
    assert crypto.reusable("test-a", 10_000).nbytes == 10_000  # grown
