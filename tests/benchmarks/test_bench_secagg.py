"""Secure-aggregation benchmarks: one masked round vs Flower's SecAgg+, the keystream floor and a plaintext sum.

Run deliberately, all in ONE run so the ratios compare like with like:
``python -m pytest tests/benchmarks/test_bench_secagg.py --benchmark-enable --benchmark-columns=median,rounds``
(flwr comes from the bench extra: ``pip install -e ".[bench]"``; without it the flwr rows are skipped).
In the default test run every benchmark executes once (``--benchmark-disable``) so none can rot.

Workload: n = 10 nodes, d = 1e5 parameters, 32-bit ring, clip 8 (flwr's default clipping range), one full
round from key set-up to the unmasked sum, every message encoded and decoded. ``steady`` rows: a round of an epoch
whose keys are already shared (SPEC 5.4, RoundStart -> MaskedInput -> unmask), as every round but the first of an
epoch in a run (``secure.rounds_per_epoch``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from geofed_secure.secagg import simulate_aggregation
from geofed_secure.secagg.masking import MaskingParameters
from geofed_secure.secagg.masking import primitives as crypto
from geofed_secure.secagg.masking.federation import MaskingFederation

pytestmark = pytest.mark.bench  # benchmarks measure; the default run deselects them (pyproject.toml)

N, D, DEGREE = 10, 100_000, 6  # flwr's num_shares = DEGREE + 1 (its neighbourhood counts the node itself)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    return {f"node-{i:02d}": rng.uniform(-1, 1, D) for i in range(N)}


def _exact(inputs):
    return np.sum(list(inputs.values()), axis=0)


@pytest.mark.parametrize("neighbors", [None, DEGREE], ids=["complete", f"degree{DEGREE}"])
def test_bench_geofed_masked_round(benchmark, inputs, neighbors):
    result = benchmark(simulate_aggregation, inputs, ring_bits=32, clip=8.0, neighbors=neighbors)
    assert np.abs(result.aggregate - _exact(inputs)).max() <= result.max_abs_error
    masked = next(r for r in result.transcript if r.kind == "MaskedInput")
    benchmark.extra_info["masked_upload_bytes_over_float32"] = masked.nbytes / (4 * D)


@pytest.mark.parametrize("neighbors", [None, DEGREE], ids=["complete", f"degree{DEGREE}"])
def test_bench_geofed_steady_round(benchmark, inputs, neighbors):
    """A round with the epoch's keys reused: no key set-up; masks, encoding, wire and unmasking only."""
    federation = MaskingFederation.provision(tuple(inputs), MaskingParameters(ring_bits=32, clip=8.0, degree=neighbors,
                                                                              rounds_per_epoch=1024))
    assert not federation.run_round(1, inputs)  # the epoch's set-up, outside the timing
    rounds = iter(range(2, 1025))

    def steady_round():
        federation.transcript.clear()
        return federation.run_round(next(rounds), inputs)

    assert not benchmark.pedantic(steady_round, rounds=20, warmup_rounds=2)
    outcome = federation.server.outcome
    assert outcome is not None and np.abs(outcome.aggregate - _exact(inputs)).max() <= outcome.max_abs_error
    assert {r.kind for r in federation.transcript} <= {"RoundStart", "MaskedInput", "ConsistencyRequest",
                                                      "ConsistencySignature", "UnmaskRequest", "UnmaskResponse"}


@pytest.mark.parametrize("neighbors", [None, DEGREE], ids=["complete", f"degree{DEGREE}"])
def test_bench_flwr_secaggplus_round(benchmark, inputs, neighbors):
    pytest.importorskip("flwr", reason="bench extra not installed: pip install -e '.[bench]'")
    from flwr_secaggplus import run_flwr_secaggplus

    num_shares = N if neighbors is None else neighbors + 1
    threshold = num_shares // 2 + 1
    aggregate = benchmark(run_flwr_secaggplus, inputs, num_shares=num_shares, reconstruction_threshold=threshold)
    assert np.abs(aggregate - _exact(inputs)).max() < N * 2 * 8.0 / 2**22 * 2


def test_bench_keystream_floor(benchmark):
    """The masks a pairwise protocol must generate in this round: n(n-1) pairwise + n self (nodes) + n self (server)."""
    keys = [os.urandom(32) for _ in range(N * (N - 1) + 2 * N)]
    scratch = crypto.keystream_scratch(D, 32)

    def generate():
        for key in keys:
            crypto.keystream_words(key, D, 32, scratch=scratch)

    benchmark(generate)


def test_bench_plaintext_sum(benchmark, inputs):
    vectors = [v.astype(np.float32) for v in inputs.values()]
    total = benchmark(lambda: np.sum(vectors, axis=0))
    assert total.shape == (D,)


def test_bench_ckks_round(benchmark, inputs):
    result = benchmark(simulate_aggregation, inputs, protocol="ckks", clip=8.0)
    assert np.abs(result.aggregate - _exact(inputs)).max() <= result.max_abs_error


def test_bench_ckks_round_provisioned(benchmark, inputs):
    """A ckks-v1 round with the federation's key set provisioned beforehand, as deployed (``geofed deploy keys``, once
    per federation) and as TenSEAL's rows below create their context outside the timing."""
    from geofed_secure.secagg.ckks.federation import run_ckks_aggregation
    from geofed_secure.secagg.ckks.keys import provision_ckks_keys

    keys = provision_ckks_keys()
    result = benchmark(run_ckks_aggregation, inputs, clip=8.0, keys=keys)
    assert np.abs(result.aggregate - _exact(inputs)).max() <= result.max_abs_error


def _tenseal_context():
    """A TenSEAL CKKS context with ckks-v1's parameters (SPEC 2), secret key included."""
    import tenseal as ts

    context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    context.global_scale = 2**40
    return context


def _tenseal_sums(context, vectors, slots=4096):
    """Each vector encrypted in chunks of ``slots`` and the chunks added up: one summed CKKSVector per chunk."""
    import tenseal as ts

    sums = []
    for start in range(0, D, slots):
        acc = ts.ckks_vector(context, vectors[0][start:start + slots])
        for v in vectors[1:]:
            acc += ts.ckks_vector(context, v[start:start + slots])
        sums.append(acc)
    return sums


def test_bench_tenseal_encrypt_add_decrypt(benchmark, inputs):
    """TenSEAL's own cost for the same vectors: encrypt each, add, decrypt once (same parameters as ckks-v1)."""
    context, vectors = _tenseal_context(), list(inputs.values())

    def round_trip():
        return np.concatenate([acc.decrypt() for acc in _tenseal_sums(context, vectors)])

    total = benchmark(round_trip)
    assert np.abs(total - _exact(inputs)).max() < 1e-3


def test_bench_tenseal_every_node_decrypts(benchmark, inputs):
    """TenSEAL's own cost for what ckks-v1 delivers: every node learns the sum (SPEC 1), so each of the n nodes loads
    the aggregate and decrypts it; the row above decrypts once. Same parameters, the sum serialised once and
    deserialised by each node (the server holds no secret key: the nodes decrypt)."""
    import tenseal as ts

    context, vectors = _tenseal_context(), list(inputs.values())

    def round_trip():
        sums = [acc.serialize() for acc in _tenseal_sums(context, vectors)]
        totals = [np.concatenate([ts.ckks_vector_from(context, blob).decrypt() for blob in sums]) for _ in vectors]
        return totals[-1]

    total = benchmark(round_trip)
    assert np.abs(total - _exact(inputs)).max() < 1e-3
