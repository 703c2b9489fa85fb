"""secagg-v1 sums: exact under any dropout schedule, and the operator's errors and parameter limits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from geofed_secure.errors import (
    ConfigError,
    DataError,
    ProtocolAborted,
)
from geofed_secure.secagg import STAGES, simulate_aggregation
from geofed_secure.secagg.common import SERVER
from geofed_secure.secagg.masking.messages import (
    MaskedInput,
    decode,
)
from secagg.masking.support import (
    FAST,
    assert_exact,
    expected_contributors,
    vectors,
)

# =========================================================================================================
# 1. Correctness


@pytest.mark.parametrize("ring_bits", [32, 64])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("n, neighbors", [(3, None), (5, None), (8, 4), (9, 2), (12, 4)])
def test_aggregate_is_the_exact_sum(ring_bits, weighted, n, neighbors):
    # Prepare
    ids = tuple(f"node-{i:02d}" for i in range(n))
    inputs = vectors(ids, length=6, seed=n, scale=3.0)
    weights = {v: 0.5 + i for i, v in enumerate(ids)} if weighted else None

    # Execute
    result = simulate_aggregation(inputs, weights=weights, neighbors=neighbors, seed=n, clip=100.0, ring_bits=ring_bits)

    # Assert
    assert result.protocol == "masking"
    assert result.contributors == ids
    assert_exact(result, inputs, 100.0, weights)
    assert 0 < result.max_abs_error < (1e-2 if ring_bits == 32 else 1e-9)
    assert set(result.bytes_sent) == {*ids, SERVER}
    assert all(result.bytes_sent[p] == sum(r.nbytes for r in result.transcript if r.sender == p) for p in result.bytes_sent)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 12), ring_bits=st.sampled_from([32, 64]), weighted=st.booleans(), data=st.data())
def test_exact_sum_of_exactly_the_contributors_under_any_dropout_schedule(n, ring_bits, weighted, data):
    # Prepare
    ids = tuple(f"n{i:02d}" for i in range(n))
    clip = 8.0
    row = st.lists(st.floats(-2 * clip, 2 * clip, allow_nan=False), min_size=2, max_size=2)
    inputs = {v: np.array(data.draw(row)) for v in ids}
    dropouts = data.draw(st.dictionaries(st.sampled_from(ids), st.sampled_from(STAGES), max_size=n))
    threshold = data.draw(st.one_of(st.none(), st.integers(3, max(3, n))))
    weights = {v: data.draw(st.floats(0.25, 2.0)) for v in ids} if weighted else None
    expected = expected_contributors(ids, dropouts, threshold)

    # Execute
    try:
        result = simulate_aggregation(inputs, weights=weights, threshold=threshold, dropouts=dropouts, seed=n,
                                      clip=clip, ring_bits=ring_bits)
    except ProtocolAborted:
        event("aborted")
        # Assert: a refusal only when too few survive (or the threshold is not a majority)
        assert expected is None, f"aborted although {expected} should have contributed"
        return

    # Assert
    event("completed")
    assert expected is not None, f"completed with {result.contributors} although the floor was not met"
    assert result.contributors == expected
    assert set(result.contributors).isdisjoint(v for v, s in dropouts.items()
                                               if s in ("advertise_keys", "graph_seed", "share_keys", "masked_input"))
    assert_exact(result, inputs, clip, weights)


@FAST
@given(n=st.integers(5, 11), neighbors=st.sampled_from([2, 3, 4]), data=st.data())
def test_secagg_plus_is_exact_or_refuses_never_wrong(n, neighbors, data):
    # Prepare
    ids = tuple(f"n{i:02d}" for i in range(n))
    inputs = vectors(ids, seed=n)
    dropouts = data.draw(st.dictionaries(st.sampled_from(ids), st.sampled_from(STAGES), max_size=3))

    # Execute
    try:
        result = simulate_aggregation(inputs, neighbors=neighbors, dropouts=dropouts, seed=n)
    except ProtocolAborted:
        event("aborted")
        assert dropouts, "an SecAgg+ round without dropouts must complete"
        return

    # Assert
    early = {v for v, s in dropouts.items() if s in ("advertise_keys", "graph_seed", "share_keys", "masked_input")}
    assert result.contributors == tuple(v for v in ids if v not in early)
    assert_exact(result, inputs, 1.0e4)


@pytest.mark.parametrize("stage, contributes", [("advertise_keys", False), ("share_keys", False),
                                                ("masked_input", False), ("consistency_check", True),
                                                ("unmask", True)])
def test_one_dropout_at_each_stage(stage, contributes):
    inputs = vectors(seed=1)
    result = simulate_aggregation(inputs, dropouts={"n2": stage}, seed=2)
    assert ("n2" in result.contributors) is contributes
    assert len(result.contributors) == 4 + contributes
    assert_exact(result, inputs, 1.0e4)


def test_plain_lists_float32_and_os_randomness_work():
    inputs = {"a": [1.0, 2.0], "b": np.array([0.5, -1.0], dtype=np.float32), "c": (3, 4)}
    result = simulate_aggregation(inputs)  # seed=None: SystemRandomness
    assert result.aggregate.dtype == np.float64
    assert np.abs(result.aggregate - [4.5, 5.0]).max() <= result.max_abs_error


def test_too_few_survivors_abort_at_the_server():
    inputs = vectors(seed=1)
    with pytest.raises(ProtocolAborted) as info:
        simulate_aggregation(inputs, dropouts={"n0": "masked_input", "n1": "share_keys", "n2": "advertise_keys"}, seed=2)
    assert info.value.party == SERVER
    assert len(info.value.transcript) > 0 and info.value.refusals == {}


# =========================================================================================================
# 2. Operator errors and parameter limits


def test_clipping_is_explicit_and_counted():
    # Prepare
    inputs = {"a": np.array([5.0, -7.0, 0.5]), "b": np.array([1.0, 2.0, 3.0]), "c": np.array([-9.0, 0.0, 2.5])}

    # Execute
    result = simulate_aggregation(inputs, clip=2.0, seed=1)

    # Assert
    assert result.clipped == {"a": 2, "b": 1, "c": 2}
    assert np.allclose(result.aggregate, [2.0 + 1.0 - 2.0, -2.0 + 2.0 + 0.0, 0.5 + 2.0 + 2.0], atol=result.max_abs_error)


def test_weighted_total_weight_is_the_sum_of_weights_or_refused():
    """A tired operator passes example counts as weights; the weight coordinate must not be clipped silently."""
    inputs = {v: np.array([0.1, -0.1]) for v in ("a", "b", "c")}
    weights = {"a": 2.0e4, "b": 3.0e4, "c": 100.0}
    try:
        result = simulate_aggregation(inputs, weights=weights, seed=1)  # default clip 1e4
    except (DataError, ConfigError):
        return
    assert result.total_weight == pytest.approx(sum(weights.values()))


@pytest.mark.parametrize("inputs, weights, error", [
    ({"a": [1.0, np.nan], "b": [0.0, 0.0], "c": [0.0, 0.0]}, None, DataError),
    ({"a": [1.0, np.inf], "b": [0.0, 0.0], "c": [0.0, 0.0]}, None, DataError),
    ({"a": [1.0, 2.0], "b": [0.0], "c": [0.0, 0.0]}, None, DataError),
    ({"a": [[1.0]], "b": [[0.0]], "c": [[0.0]]}, None, DataError),
    ({"a": [], "b": [], "c": []}, None, DataError),
    ({}, None, DataError),
    ({"a": [1.0], "b": [1.0], "c": [1.0]}, {"a": 1.0, "b": 1.0}, DataError),
    ({"a": [1.0], "b": [1.0], "c": [1.0]}, {"a": 1.0, "b": 1.0, "c": 0.0}, DataError),
    ({"a": [1.0], "b": [1.0], "c": [1.0]}, {"a": 1.0, "b": 1.0, "c": np.nan}, DataError),
    ({"a": [1.0], "b": [1.0], "c": [1.0]}, {"a": 1.0, "b": -1.0, "c": 1.0}, DataError),
])
def test_bad_inputs_are_a_data_error(inputs, weights, error):
    with pytest.raises(error):
        simulate_aggregation({k: np.array(v) for k, v in inputs.items()}, weights=weights, seed=1)


def test_invalid_node_ids_are_a_data_error():
    """The documented errors are DataError / ConfigError / ProtocolAborted; an id the wire refuses is a bad input."""
    with pytest.raises(DataError):
        simulate_aggregation({"node 1": np.ones(2), "b": np.ones(2), "c": np.ones(2)}, seed=1)


@pytest.mark.parametrize("kwargs", [
    {"dropouts": {"n0": "unmasking"}}, {"dropouts": {"n0": "Masked_Input"}}, {"protocol": "secagg"},
    {"adversary": "no-such-attack"}, {"ring_bits": 16}, {"clip": 0.0}, {"clip": float("nan")}, {"clip": -1.0},
    {"threshold": 1}, {"threshold": 0}, {"neighbors": 1}, {"neighbors": 0}, {"clip": 1.0e9, "ring_bits": 32},
])
def test_bad_parameters_are_a_config_error(kwargs):
    with pytest.raises(ConfigError):
        simulate_aggregation(vectors(), seed=1, **kwargs)


def test_dropout_of_an_unknown_node_is_a_data_error():
    with pytest.raises(DataError):
        simulate_aggregation(vectors(), dropouts={"n9": "unmask"}, seed=1)


def test_threshold_below_three_is_a_config_error():
    with pytest.raises(ConfigError, match="threshold"):
        simulate_aggregation(vectors(tuple(f"n{i}" for i in range(5))), threshold=2, seed=1)


@pytest.mark.parametrize("n, threshold", [(6, 3), (5, 6), (3, 4)])
def test_threshold_that_is_not_a_majority_or_exceeds_the_cohort_aborts_at_epoch_planning(n, threshold):
    ids = tuple(f"n{i}" for i in range(n))
    with pytest.raises(ProtocolAborted) as info:
        simulate_aggregation(vectors(ids), threshold=threshold, seed=1)
    assert info.value.party == SERVER
    assert info.value.stage == "advertise_keys"  # the server plans the epoch when it closes the advertisements
    assert not any(r.kind == "ShareBundle" for r in info.value.transcript)  # no share left any node


@pytest.mark.parametrize("n", [1, 2])
def test_fewer_than_three_nodes_abort(n):
    with pytest.raises(ProtocolAborted):
        simulate_aggregation(vectors(tuple(f"n{i}" for i in range(n))), seed=1)


def test_same_seed_same_transcript_other_seed_other_masks():
    inputs = vectors()
    a, b, c = (simulate_aggregation(inputs, seed=s) for s in (1, 1, 2))
    assert [r.data for r in a.transcript] == [r.data for r in b.transcript]
    masked = [r.data for r in a.transcript if r.kind == "MaskedInput"]
    assert masked != [r.data for r in c.transcript if r.kind == "MaskedInput"]


def test_masked_inputs_do_not_carry_inputs_or_weights_in_clear():
    inputs = {v: np.full(4, 0.25) for v in ("a", "b", "c")}
    result = simulate_aggregation(inputs, weights={"a": 7.0, "b": 7.0, "c": 7.0}, seed=1)
    for record in result.transcript:
        message = decode(record.data)
        if isinstance(message, MaskedInput):
            assert len(set(message.words.tolist())) == message.words.shape[0]  # no repeated (unmasked) word
        assert b"7.0" not in record.data and b"0.25" not in record.data
