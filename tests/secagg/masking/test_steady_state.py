"""secagg-v1 steady state: two round trips per round within an epoch, dropouts, new epochs, recovery."""

from __future__ import annotations

import numpy as np
import pytest

from geofed_secure.errors import (
    ProtocolAborted,
)
from geofed_secure.secagg.common import SERVER
from geofed_secure.secagg.masking.adversary import CATALOGUE
from geofed_secure.secagg.masking.messages import (
    decode,
)
from secagg.masking.support import (
    IDS,
    LENGTH,
    individual_inputs_the_server_can_compute,
    provision,
    vectors,
)

# =========================================================================================================
# 7. Steady state


def server_to_node_kinds(transcript, round_):
    kinds: dict[str, list[str]] = {}
    for record in transcript:
        if record.round == round_ and record.sender == SERVER:
            kinds.setdefault(record.receiver, []).append(record.kind)
    return kinds


def test_steady_state_rounds_take_two_round_trips():
    # Prepare
    fed = provision(rounds_per_epoch=3)
    inputs = {r: vectors(seed=r) for r in (1, 2, 3)}

    # Execute
    outcomes = {}
    for round_ in (1, 2, 3):
        assert fed.run_round(round_, inputs[round_]) == {}
        outcomes[round_] = fed.server.outcome

    # Assert
    for round_ in (2, 3):
        kinds = {r.kind for r in fed.transcript if r.round == round_}
        assert kinds == {"RoundStart", "MaskedInput", "UnmaskRequest", "UnmaskResponse"}
        assert server_to_node_kinds(fed.transcript, round_) == {v: ["RoundStart", "UnmaskRequest"] for v in IDS}
    for round_, outcome in outcomes.items():
        assert outcome.round == round_ and outcome.contributors == IDS
        assert np.abs(outcome.aggregate - sum(inputs[round_].values())).max() <= outcome.max_abs_error


def test_steady_state_dropout_gives_the_exact_sum_and_the_node_comes_back():
    # Prepare
    fed = provision(rounds_per_epoch=3, clip=100.0)
    inputs = {r: vectors(seed=r) for r in (1, 2, 3)}
    outcomes = {}

    # Execute
    for round_, dropouts in ((1, None), (2, {"n3": "masked_input"}), (3, None)):
        assert fed.run_round(round_, inputs[round_], dropouts=dropouts) == {}
        outcomes[round_] = fed.server.outcome
        assert fed.nodes["n3"].state == "ready"

    # Assert
    assert not {r.kind for r in fed.transcript if r.round > 1} & {"KeyAdvertisement", "ShareBundle"}
    assert server_to_node_kinds(fed.transcript, 3) == {v: ["RoundStart", "UnmaskRequest"] for v in IDS}
    for round_, outcome in outcomes.items():
        contributors = tuple(v for v in IDS if not (round_ == 2 and v == "n3"))
        assert outcome.contributors == contributors
        exact = sum(inputs[round_][v] for v in contributors)
        assert np.abs(outcome.aggregate - exact).max() <= outcome.max_abs_error


def test_a_new_epoch_starts_when_the_epoch_is_used_up():
    fed = provision(rounds_per_epoch=3)
    for round_ in (1, 2, 3, 4):
        assert fed.run_round(round_, vectors(seed=round_)) == {}
    adverts = {r.round for r in fed.transcript if r.kind == "KeyAdvertisement"}
    assert adverts == {1, 4}


def test_steady_state_never_reuses_a_round_key():
    # Prepare
    fed = provision(rounds_per_epoch=3)
    for round_ in (1, 2, 3):
        fed.run_round(round_, {v: np.zeros(LENGTH) for v in IDS})

    # Assert: with zero inputs, equal masked words would mean a reused mask
    words = [decode(r.data).words.tobytes() for r in fed.transcript if r.kind == "MaskedInput"]
    assert len(words) == 15 and len(set(words)) == 15


def test_federation_recovers_after_a_round_the_server_aborted():
    """A tired operator retries after a round with too few survivors: the next round must work for everyone."""
    # Prepare
    fed = provision(rounds_per_epoch=3)
    with pytest.raises(ProtocolAborted):
        fed.run_round(1, vectors(), dropouts={v: "masked_input" for v in ("n0", "n1", "n2")})

    # Execute
    refusals = fed.run_round(2, vectors(seed=2))

    # Assert
    assert refusals == {}
    assert fed.server.outcome is not None and fed.server.outcome.contributors == IDS


# -- SecAgg+: an unchecked fast path for some nodes and a check view for the others ---------------------------


def test_secagg_plus_fast_path_and_check_view_split_reveals_no_input():
    ids = tuple(f"n{i}" for i in range(9))
    inputs = vectors(ids, seed=2)
    fed = provision(ids, rounds_per_epoch=1, degree=4)
    adversary = CATALOGUE["sparse_fast_path_split"]()
    try:
        fed.run_round(1, inputs, adversary=adversary)
    except ProtocolAborted:
        pass  # the honest twin cannot finish: fine
    assert adversary.order is not None and adversary.plan.threshold == 3
    exposed = individual_inputs_the_server_can_compute(fed.transcript, 1, threshold=3)
    assert exposed == {}, f"the server computed the inputs of {sorted(exposed)}"
