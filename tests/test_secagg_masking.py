"""secagg-v1 pairwise masking: exact sums under dropouts, every (state, message) pair, replays, the dishonest-server
catalogue, wire fuzzing and the steady state. Written as an attacker and as a tired operator would use it."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from geofed_secure.errors import (
    ConfigError,
    DataError,
    LocalProtocolError,
    MessageError,
    ProtocolAborted,
    RemoteProtocolError,
)
from geofed_secure.secagg import STAGES, simulate_aggregation
from geofed_secure.secagg.common import SERVER
from geofed_secure.secagg.machine import rows
from geofed_secure.secagg.masking import (
    MaskingParameters,
    pairwise_mask,
    self_mask,
)
from geofed_secure.secagg.masking import primitives as crypto
from geofed_secure.secagg.masking.adversary import CATALOGUE, Adversary
from geofed_secure.secagg.masking.federation import MaskingFederation
from geofed_secure.secagg.masking.messages import (
    MAGIC,
    MESSAGE_TYPES,
    VERSION,
    ConsistencyRequest,
    ConsistencySignature,
    GraphSeedReveal,
    GraphSeeds,
    KeyAdvertisement,
    KeyRoster,
    MaskedInput,
    RoundStart,
    ShareBundle,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
    decode,
)
from geofed_secure.secagg.masking.tables import (
    NODE_TRANSITIONS,
    SERVER_TRANSITIONS,
    Guard,
    NodeEvent,
    NodeState,
    ServerEvent,
    ServerState,
    graph_guard,
    refusal,
    unmask_guard,
)

FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IDS = ("n0", "n1", "n2", "n3", "n4")
LENGTH = 3
SEED = 11
NODE_REPLIES = (KeyAdvertisement, GraphSeedReveal, ShareBundle, MaskedInput, ConsistencySignature, UnmaskResponse)
SERVER_SENDS = (RoundStart, KeyRoster, GraphSeeds, ShareDelivery, ConsistencyRequest, UnmaskRequest)
# The (state, message) tables run on a SecAgg+ federation (7 nodes, degree 4), whose set-up has the graph-seed reveal;
# a roster of 5 of them is a complete graph, so both roster events exist for one node.
TABLE_IDS = (*IDS, "n5", "n6")
TABLE_DEGREE = 4


def vectors(ids=IDS, length=LENGTH, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return {v: rng.normal(scale=scale, size=length) for v in ids}


def wire(message):
    """Every message crosses the wire for real: encode, then decode as the receiver does."""
    return decode(message.encode())


def provision(ids=IDS, *, rounds_per_epoch=3, seed=SEED, **parameters):
    return MaskingFederation.provision(ids, MaskingParameters(rounds_per_epoch=rounds_per_epoch, **parameters), seed=seed)


def table_fed(**kwargs):
    """The federation of the (state, message) tables: 7 nodes, SecAgg+ degree 4 (threshold 3, view quorum 4)."""
    return provision(TABLE_IDS, degree=TABLE_DEGREE, **kwargs)


def table_vectors(seed=0):
    return vectors(TABLE_IDS, seed=seed)


def sent_to(stages, kind, receiver="n0"):
    """What ``receiver`` got in the first stage whose messages are of ``kind``."""
    return next(stage.outgoing[receiver] for stage in stages if isinstance(stage.outgoing.get(receiver), kind))


def feed(node, message, vector=None):
    message = wire(message)
    if isinstance(message, RoundStart):
        return node.begin_round(message, np.zeros(message.vector_length) if vector is None else vector)
    return node.receive(message)


@dataclasses.dataclass
class Stage:
    state: str  # the server's state while it waits for these replies
    outgoing: dict  # what the server sent, per node
    replies: dict  # what the nodes answered, per node (before any dropout)


def drive(fed, round_, inputs, *, until=None, silent=None):
    """Run ``round_`` honestly, stage by stage. ``silent[server_state]`` holds nodes whose reply is lost in that stage.

    With ``until``, stop when the server waits in that state, after the nodes answered; those replies are held back
    (the last Stage). Returns the stages in order.
    """
    silent = silent or {}
    stages = []
    outgoing = fed.server.start_round(round_, LENGTH, cohort=tuple(inputs))
    while outgoing:
        replies = {v: wire(feed(fed.nodes[v], m, inputs[v])) for v, m in sorted(outgoing.items())}
        stages.append(Stage(fed.server.state, outgoing, replies))
        if fed.server.state == until:
            return stages
        for v, reply in replies.items():
            if v not in silent.get(fed.server.state, ()):
                fed.server.receive(reply)
        outgoing = fed.server.close_stage()
    for node in fed.nodes.values():
        if node.state not in ("ready", "aborted"):
            node.abandon_round()
    return stages


def unmask_records(transcript, round_):
    return [decode(r.data) for r in transcript if r.round == round_ and r.kind == "UnmaskResponse"]


def revealed(transcript, round_):
    """Per owner: (self-mask shares, mask-key shares) the server received in ``round_``."""
    counts: dict[str, list[int]] = {}
    for response in unmask_records(transcript, round_):
        for owner in response.self_mask_shares:
            counts.setdefault(owner, [0, 0])[0] += 1
        for owner in response.mask_key_shares:
            counts.setdefault(owner, [0, 0])[1] += 1
    return counts


def individual_inputs_the_server_can_compute(transcript, round_, *, threshold, clip=1.0e4, colluders=None):
    """Every individual input a (malicious) server can compute from what it saw, with its colluders' secrets.

    The server knows a node v's input once it holds v's masked input, v's self-mask seed for the round and, for each
    peer p that v masked with (the senders of the shares it delivered to v), p's mask key: rebuilt from t shares
    (unmask responses plus shares the colluders hold) or known outright when p colludes. Returns {v: decoded input}.
    """
    colluders = colluders or {}
    messages = [decode(r.data) for r in transcript]
    roster = next((m for m in messages if isinstance(m, KeyRoster)), None)
    if roster is None:
        return {}
    members = tuple(a.node_id for a in roster.advertisements)
    adverts = {a.node_id: a for a in roster.advertisements}
    epoch = roster.epoch
    i = round_ - epoch
    fid = roster.federation_id
    x_of = {v: k + 1 for k, v in enumerate(members)}
    peers = {r.receiver: tuple(sorted(m.sealed)) for r, m in zip(transcript, messages) if isinstance(m, ShareDelivery)}
    inputs = {m.node_id: m.words for m in messages if isinstance(m, MaskedInput) and m.round == round_}
    points: dict[tuple[str, str], dict[int, bytes]] = {}  # (owner, "seed"|"key") -> {x: share}
    for m in messages:
        if isinstance(m, UnmaskResponse) and m.round == round_:
            for owner, share in m.self_mask_shares.items():
                points.setdefault((owner, "seed"), {})[x_of[m.node_id]] = share
            for owner, share in m.mask_key_shares.items():
                points.setdefault((owner, "key"), {})[x_of[m.node_id]] = share
    for c, node in colluders.items():
        for owner, per_round in node.epoch.own_shares.items():
            points.setdefault((owner, "key"), {})[x_of[c]] = per_round[i][0]
            points.setdefault((owner, "seed"), {})[x_of[c]] = per_round[i][1]

    def secret(owner, which):
        if owner in colluders:
            ep = colluders[owner].epoch
            return ep.seeds[i] if which == "seed" else ep.mask_privates[i]
        known = sorted(points.get((owner, which), {}).items())
        if len(known) < threshold:
            return None
        value = crypto.shamir_combine(known[:threshold])
        check = (crypto.commitment(value, fid, round_, owner) == adverts[owner].commitments[i] if which == "seed"
                 else crypto.x25519_public(value) == adverts[owner].mask_keys[i])
        return value if check else None

    from geofed_secure.secagg.masking.fixedpoint import FixedPoint
    exposed = {}
    for v, words in inputs.items():
        if v in colluders:
            continue
        seed = secret(v, "seed")
        keys = {p: secret(p, "key") for p in peers.get(v, ())}
        if seed is None or any(k is None for k in keys.values()):
            continue
        ring_bits = words.dtype.itemsize * 8
        total = words - self_mask(seed, fid, round_, v, len(words), ring_bits)
        for p, key in keys.items():
            mask = pairwise_mask(crypto.x25519_shared(key, adverts[v].mask_keys[i]), fid, round_, v, p, len(words), ring_bits)
            total = total - mask if v < p else total + mask
        exposed[v] = FixedPoint.for_cohort(len(members), clip, ring_bits).decode(total)
    return exposed


def default_threshold(n, neighbors=None):
    m = n if neighbors is None or neighbors >= n - 1 else min(n, neighbors + neighbors % 2 + 1)
    return max(3, m // 2 + 1)  # from the PROVISIONED size, never below 3


def expected_contributors(ids, dropouts, threshold):
    """The outcome the protocol promises for the complete graph: the contributors, or None (the round aborts)."""
    def gone(stage):
        return {v for v, s in dropouts.items() if s == stage}

    members = set(ids) - gone("advertise_keys")
    t = threshold if threshold is not None else max(3, len(ids) // 2 + 1)  # provisioned size, not the roster
    if len(members) < 3 or t > len(members) or 2 * t <= len(members):
        return None
    floor = max(3, t, len(members) // 2 + 1)  # an answered view lists more than half the epoch's members
    shared = members - gone("graph_seed") - gone("share_keys")  # the complete graph has no reveal: graph_seed = share_keys
    alive = shared - gone("masked_input")
    if len(shared) < max(3, t) or len(alive) < floor:
        return None
    if alive != shared:
        if gone("consistency_check") & alive:  # every survivor must sign the view
            return None
        responders = alive - gone("unmask")
    else:
        responders = alive - gone("consistency_check") - gone("unmask")
    return tuple(sorted(alive)) if len(responders) >= t else None


def assert_exact(result, inputs, clip, weights=None):
    contributors = result.contributors
    if weights is None:
        exact = np.sum([np.clip(inputs[v], -clip, clip) for v in contributors], axis=0)
        assert result.total_weight == len(contributors)
    else:
        exact = np.sum([np.clip(weights[v] * inputs[v], -clip, clip) for v in contributors], axis=0)
        total = sum(min(weights[v], clip) for v in contributors)
        assert abs(result.total_weight - total) <= result.max_abs_error
    assert result.aggregate.shape == exact.shape
    assert np.abs(result.aggregate - exact).max() <= result.max_abs_error


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


# =========================================================================================================
# 3. The dishonest-server catalogue


VIEW_ATTACKS = {"alive_and_dropped", "split_views", "cohort_below_floor", "unmask_without_check", "replay_round"}


def test_view_attack_list_names_catalogue_entries():
    assert VIEW_ATTACKS <= set(CATALOGUE)


CATALOGUE_RUNS = [(name, n, neighbors, dropouts) for name in sorted(CATALOGUE)
                  for n, neighbors, dropouts in [(5, None, None), (8, 4, {"n01": "masked_input"}), (7, None, None),
                                                 (10, 4, None)]
                  if neighbors is not None or not CATALOGUE[name].sparse_only]


@pytest.mark.parametrize("name, n, neighbors, dropouts", CATALOGUE_RUNS)
def test_every_catalogue_attack_is_refused_by_a_node_before_anything_is_revealed(name, n, neighbors, dropouts):
    # Prepare
    ids = tuple(f"n{i:02d}" for i in range(n))
    attack = CATALOGUE[name]
    attacked_round = attack.rounds
    t = default_threshold(n, neighbors)

    # Execute
    with pytest.raises(ProtocolAborted) as info:
        simulate_aggregation(vectors(ids), neighbors=neighbors, dropouts=dropouts, adversary=name, seed=5)

    # Assert: a node refused, at the stage the catalogue names
    exc = info.value
    assert exc.party in ids and exc.party != SERVER
    assert exc.stage in attack.refused_at.split("|")
    assert exc.refusals and set(exc.refusals) <= set(ids)
    # Assert: nothing revealed in the attacked round
    for owner, (self_shares, key_shares) in revealed(exc.transcript, attacked_round).items():
        assert not (self_shares >= t and key_shares >= t), f"{owner}: both secrets reconstructible"
    assert individual_inputs_the_server_can_compute(exc.transcript, attacked_round, threshold=t) == {}
    if name in VIEW_ATTACKS:
        assert unmask_records(exc.transcript, attacked_round) == []


class RandomViews(Adversary):
    """A smarter view attack: each survivor gets its own story (true view, a view in which the victim dropped, an
    unchecked 'nobody dropped' unmask, or an unmask without a check), and each signer is later asked to unmask with
    every signature that is valid over its view."""

    name = "random_views"

    def __init__(self, choices, victim):
        self.choices, self.victim = choices, victim
        self.views: dict[str, tuple] = {}
        self.plan = None
        self.done = False

    def tamper(self, outgoing, ctx):
        first = next(iter(outgoing.values()), None)
        if self.plan is not None or not isinstance(first, ConsistencyRequest | UnmaskRequest):
            return dict(outgoing)
        self.plan = ctx.server.plan
        alive, dropped = first.alive, first.dropped
        victim = alive[self.victim % len(alive)]
        fed = ctx.server.provisioning.federation_id
        false_view = (tuple(v for v in alive if v != victim), tuple(sorted({*dropped, victim})))
        out = {}
        for i, v in enumerate(sorted(outgoing)):
            choice = self.choices[i % len(self.choices)]
            if choice == "nobody":
                out[v] = UnmaskRequest(federation_id=fed, round=ctx.round, alive=tuple(sorted({*alive, *dropped})),
                                       dropped=(), signatures={})
            elif choice == "unchecked":
                out[v] = UnmaskRequest(federation_id=fed, round=ctx.round, alive=false_view[0], dropped=false_view[1],
                                       signatures={v: bytes(64)})
            else:
                view = (alive, dropped) if choice == "true" or v == victim else false_view
                self.views[v] = view
                out[v] = ConsistencyRequest(federation_id=fed, round=ctx.round, alive=view[0], dropped=view[1])
        return out

    def intercept(self, reply, ctx):
        if isinstance(reply, ConsistencySignature):
            ctx.intercepted[reply.node_id] = reply
            return True
        return False

    def override(self, ctx):
        if self.done or not ctx.intercepted:
            return None
        self.done = True
        fed = ctx.server.provisioning.federation_id
        out = {}
        for v, view in self.views.items():
            sigs = {s: m.signature for s, m in ctx.intercepted.items() if self.views.get(s) == view and s in view[0]}
            out[v] = UnmaskRequest(federation_id=fed, round=ctx.round, alive=view[0], dropped=view[1], signatures=sigs)
        return out


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(4, 8), sparse=st.booleans(), drop=st.booleans(), victim=st.integers(0, 7),
       choices=st.lists(st.sampled_from(["true", "false", "nobody", "unchecked"]), min_size=1, max_size=8))
def test_no_survivor_story_lets_the_server_rebuild_both_secrets_of_a_node(n, sparse, drop, victim, choices):
    # Prepare
    ids = tuple(f"n{i}" for i in range(n))
    neighbors = 4 if sparse and n >= 6 else None
    fed = provision(ids, rounds_per_epoch=1, degree=neighbors, seed=n)
    adversary = RandomViews(choices, victim)

    # Execute
    try:
        fed.run_round(1, vectors(ids), dropouts={ids[-1]: "masked_input"} if drop else None, adversary=adversary)
    except ProtocolAborted as exc:
        assert exc.party == SERVER  # the honest twin gives up: it never got the signatures

    # Assert
    if adversary.plan is None:
        return
    t = adversary.plan.threshold
    event(f"unmask responses sent: {min(len(unmask_records(fed.transcript, 1)), 2)}+")
    for owner, (self_shares, key_shares) in revealed(fed.transcript, 1).items():
        assert not (self_shares >= t and key_shares >= t), f"{owner}: both secrets of one round reconstructible"


# -- a curious server with SecAgg+ ---------------------------------------------------------------------


def curious_partial_sum(fed, round_, subset):
    """What an honest-but-curious server computes from its own transcript for ``subset`` of the survivors."""
    plan = fed.server.plan
    fp, fid = plan.fixed_point, fed.provisioning.federation_id
    received = [decode(r.data) for r in fed.transcript if r.round <= round_ and r.receiver == SERVER]
    inputs = {m.node_id: m.words for m in received if isinstance(m, MaskedInput) and m.round == round_}
    responses = sorted((m for m in received if isinstance(m, UnmaskResponse) and m.round == round_), key=lambda m: m.node_id)
    adverts = {m.node_id: m for m in received if isinstance(m, KeyAdvertisement) and m.epoch == plan.epoch}
    shared = {m.node_id for m in received if isinstance(m, ShareBundle) and m.epoch == plan.epoch}
    dropped = sorted(shared - set(inputs))
    i = round_ - plan.epoch

    def rebuild(owner, which):
        points = [(plan.x_of(r.node_id), getattr(r, which)[owner]) for r in responses if owner in getattr(r, which)]
        return crypto.shamir_combine(points[:plan.threshold])

    total = np.zeros(LENGTH, dtype=fp.dtype)
    for u in subset:
        total += inputs[u] - self_mask(rebuild(u, "self_mask_shares"), fid, round_, u, LENGTH, fp.ring_bits)
    for d in dropped:
        key = rebuild(d, "mask_key_shares")
        for u in subset:
            if d in plan.neighbours(u):
                mask = pairwise_mask(crypto.x25519_shared(key, adverts[u].mask_keys[i]), fid, round_, u, d, LENGTH, fp.ring_bits)
                total = total - mask if u < d else total + mask
    return fp.decode(total)


def ring_order(holders):
    order = [min(holders)]
    while len(order) < len(holders):
        order.append(next(u for u in holders[order[-1]] if u not in order))
    return order


def test_curious_partial_sum_is_the_aggregate_for_all_survivors_and_noise_for_a_pair_in_the_complete_graph():
    # Prepare: a control for the SecAgg+ test below
    ids = tuple(f"n{i}" for i in range(6))
    inputs = vectors(ids, seed=4)
    fed = provision(ids, rounds_per_epoch=1, clip=100.0)

    # Execute
    assert fed.run_round(1, inputs, dropouts={"n5": "masked_input"}) == {}
    everyone = curious_partial_sum(fed, 1, ids[:5])
    pair = curious_partial_sum(fed, 1, ids[:2])

    # Assert
    assert np.allclose(everyone, fed.server.outcome.aggregate)
    assert np.allclose(everyone, sum(inputs[v] for v in ids[:5]), atol=1e-9)
    assert not np.allclose(pair, inputs["n0"] + inputs["n1"], atol=1e-3)


def test_secagg_plus_never_lets_the_server_learn_a_sum_of_fewer_than_three_inputs():
    """With neighbors=2 (3 share holders, threshold 2) two honest dropouts cut the ring into pairs, and the server,
    following the protocol, learns x_a + x_b of two nodes: below the cohort floor of 3 (DESIGN section 3)."""
    # Prepare: learn the (seeded, deterministic) ring, then drop two opposite nodes of it
    ids = tuple(f"n{i}" for i in range(6))
    inputs = vectors(ids, seed=4)
    try:
        probe = provision(ids, rounds_per_epoch=1, degree=2, clip=100.0)
        probe.run_round(1, inputs)
        order = ring_order(probe.server.plan.holders)
        fed = provision(ids, rounds_per_epoch=1, degree=2, clip=100.0)
        refusals = fed.run_round(1, inputs, dropouts={order[2]: "masked_input", order[5]: "masked_input"})
    except (ConfigError, ProtocolAborted):
        return  # refusing such a graph or such a round is a fix
    if refusals:
        return

    # Execute: the curious server sums only the first arc
    pair = curious_partial_sum(fed, 1, order[:2])

    # Assert
    assert not np.allclose(pair, inputs[order[0]] + inputs[order[1]], atol=1e-6), \
        "the server learnt the sum of two nodes' inputs"


# -- colluding nodes: the bound t >= z + 3 (each alive owner keeps two honest alive peers) -------------------


def ring_neighbours(plan, victim):
    return [v for v in plan.holders[victim] if v != victim]


@pytest.mark.parametrize("kwargs", [{"degree": 2, "colluders": 1}, {"degree": 4, "colluders": 3}, {"threshold": 3, "colluders": 1},
                                    {"threshold": 4, "colluders": 2}, {"colluders": -1}, {"colluders": True}])
def test_parameters_outside_the_colluder_bound_are_refused(kwargs):
    with pytest.raises(ConfigError):
        MaskingParameters(**kwargs)


def test_outside_the_bound_two_colluding_ring_neighbours_give_the_server_an_input_on_the_honest_fast_path():
    """Issue 12.2 reproduced: degree 2 (m = t = 3) tolerates no colluder; the two ring neighbours of a victim hand the
    server its input. secure.colluders = 2 with degree 2 is therefore refused (test above)."""
    ids = tuple(f"n{i}" for i in range(6))
    inputs = vectors(ids, seed=9)
    fed = provision(ids, rounds_per_epoch=1, degree=2, clip=100.0)
    assert fed.run_round(1, inputs) == {}
    victim = "n0"
    colluders = {v: fed.nodes[v] for v in ring_neighbours(fed.server.plan, victim)}

    exposed = individual_inputs_the_server_can_compute(fed.transcript, 1, threshold=3, clip=100.0, colluders=colluders)

    assert np.allclose(exposed[victim], inputs[victim], atol=1e-9)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from([(8, 4, 1), (10, 6, 2), (7, None, 1)]), victim=st.integers(0, 9), data=st.data())
def test_within_the_bound_colluding_neighbours_learn_no_honest_input_under_any_dropouts(case, victim, data):
    # Prepare: z colluders chosen among the victim's neighbours (the worst case), any dropouts after the set-up
    n, degree, z = case
    ids = tuple(f"n{i}" for i in range(n))
    inputs = vectors(ids, seed=victim)
    fed = provision(ids, rounds_per_epoch=1, degree=degree, colluders=z, clip=100.0)
    late = data.draw(st.dictionaries(st.sampled_from(ids), st.sampled_from(["masked_input", "consistency_check", "unmask"]),
                                     max_size=n // 3))

    # Execute
    try:
        fed.run_round(1, inputs, dropouts=late)
    except ProtocolAborted:
        event("aborted by the server")
    plan = fed.server.plan
    if plan is None:
        return
    target = ids[victim % n]
    colluders = {v: fed.nodes[v] for v in ring_neighbours(plan, target)[:z]}
    assert target not in colluders
    exposed = individual_inputs_the_server_can_compute(fed.transcript, 1, threshold=plan.threshold, clip=100.0,
                                                       colluders=colluders)

    # Assert
    event(f"unmask responses: {min(len(unmask_records(fed.transcript, 1)), 1)}")
    assert exposed == {}


def test_a_survivor_that_does_not_sign_the_view_aborts_the_round():
    """The price of 'every survivor signs' (SPEC 5.5): with one node dropped before its masked input, a second one
    lost during the consistency check now aborts the round (Bonawitz et al. 2017 would unmask without it)."""
    inputs = vectors(seed=3)
    with pytest.raises(ProtocolAborted) as info:
        simulate_aggregation(inputs, dropouts={"n1": "masked_input", "n3": "consistency_check"}, seed=3)
    assert info.value.party == SERVER and info.value.stage == "consistency_check"
    assert "did not confirm the view" in info.value.reason
    # nobody dropped before the masked input: the fast path needs no signatures and survives the same loss
    result = simulate_aggregation(inputs, dropouts={"n3": "consistency_check"}, seed=3)
    assert result.contributors == IDS


# -- the SecAgg+ graph seed: committed before the roster, revealed after it -----------------------------------


def test_no_graph_nonce_is_on_the_wire_before_the_roster_and_the_graph_needs_all_of_them():
    # Prepare / Execute
    ids = tuple(f"n{i}" for i in range(8))
    fed = provision(ids, rounds_per_epoch=1, degree=4)
    assert fed.run_round(1, vectors(ids)) == {}
    plan = fed.server.plan
    nonces = {v: fed.nodes[v].epoch.graph_nonce for v in ids}
    roster_at = next(k for k, r in enumerate(fed.transcript) if r.kind == "KeyRoster")

    # Assert: before the roster went out, no message carried any nonce (the server fixed the roster blind)
    assert not any(nonce.hex().encode() in r.data for r in fed.transcript[:roster_at] for nonce in nonces.values())
    # Assert: the graph is the ring order of SHA-256(seed || id) under the seed of every member's nonce
    roster = decode(fed.transcript[roster_at].data)
    from geofed_secure.secagg.masking import graph_seed, neighbourhoods, roster_digest
    seed = graph_seed(fed.provisioning.federation_id, 1, roster_digest(roster), nonces, ids)
    assert plan.graph_seed == seed and dict(plan.holders) == neighbourhoods(ids, 4, seed)
    # Assert: one other nonce gives another graph (the nonce, not the server's roster choice, fixes it)
    other = neighbourhoods(ids, 4, graph_seed(fed.provisioning.federation_id, 1, roster_digest(roster),
                                              {**nonces, "n3": bytes(32)}, ids))
    assert other != dict(plan.holders)


def test_a_node_that_revealed_its_nonce_refuses_a_second_roster():
    node = node_in("revealed")
    with pytest.raises(ProtocolAborted):
        feed(node, reference_round()["small_roster"])
    assert node.state == "aborted"


def test_a_member_that_does_not_reveal_its_nonce_aborts_the_set_up():
    ids = tuple(f"n{i}" for i in range(8))
    with pytest.raises(ProtocolAborted) as info:
        simulate_aggregation(vectors(ids), neighbors=4, dropouts={"n2": "graph_seed"}, seed=1)
    assert info.value.party == SERVER and info.value.stage == "graph_seed"


# =========================================================================================================
# 4. The (state, event) tables: every event in every state, through the public API (Flower's secaggplus_mod_test
# habit), legal pairs to the table's target, the others refused as refusal() says


@functools.lru_cache(maxsize=1)
def reference_round():
    """Round 1 of the table federation where n4's masked input is lost, as n0 receives it (deterministic)."""
    fed = table_fed()
    stages = drive(fed, 1, table_vectors(), silent={"collect_inputs": {"n4"}})
    inbox = [stage.outgoing["n0"] for stage in stages]
    start, roster, seeds, delivery, check, unmask = inbox
    small = dataclasses.replace(roster, advertisements=roster.advertisements[:5])  # n0..n4: a complete graph
    assert graph_guard(TABLE_DEGREE, len(small.advertisements)) is Guard.COMPLETE_GRAPH
    nobody = UnmaskRequest(federation_id=fed.provisioning.federation_id, round=1, alive=TABLE_IDS, dropped=(), signatures={})
    replies = {type(r): r for stage in stages for r in stage.replies.values()}
    return {"start": start, "roster": roster, "small_roster": small, "seeds": seeds, "delivery": delivery, "check": check,
            "unmask": unmask, "nobody": nobody, "deliveries": {v: sent_to(stages, ShareDelivery, v) for v in TABLE_IDS},
            "replies": replies}


PATH_TO = {"advertised": ("start",), "revealed": ("start", "roster"), "shared": ("start", "roster", "seeds"),
           "masked": ("start", "roster", "seeds", "delivery"), "signed": ("start", "roster", "seeds", "delivery", "check"),
           "ready": ("start", "roster", "seeds", "delivery", "check", "unmask")}


def node_in(state):
    """A fresh n0 (same seed as the reference) driven into ``state`` in round 1 (``ready``: after round 1)."""
    node = table_fed().nodes["n0"]
    ref = reference_round()
    for key in PATH_TO.get(state, ()):
        feed(node, ref[key], table_vectors()["n0"])
    if state == "aborted":
        with pytest.raises(ProtocolAborted):
            feed(node, ref["check"])
    assert node.state == state
    return node


# Every way a node sees an event: (event, the guard its message carries; "unchecked": decided by the node's epoch).
NODE_TRIGGERS = ((NodeEvent.ROUND_START, Guard.NEW_EPOCH), (NodeEvent.ROUND_START, Guard.SAME_EPOCH),
                 (NodeEvent.KEY_ROSTER, Guard.COMPLETE_GRAPH), (NodeEvent.KEY_ROSTER, Guard.SECAGG_PLUS_GRAPH),
                 (NodeEvent.GRAPH_SEEDS, None), (NodeEvent.SHARE_DELIVERY, None), (NodeEvent.CONSISTENCY_REQUEST, None),
                 (NodeEvent.UNMASK_REQUEST, "unchecked"), (NodeEvent.UNMASK_REQUEST, Guard.AFTER_CHECK),
                 (NodeEvent.ABANDON_ROUND, None))


def trigger_message(event, guard):
    ref = reference_round()
    return {
        (NodeEvent.ROUND_START, Guard.NEW_EPOCH): dataclasses.replace(ref["start"], round=2, epoch=2),
        (NodeEvent.ROUND_START, Guard.SAME_EPOCH): dataclasses.replace(ref["start"], round=2, epoch=1),
        (NodeEvent.KEY_ROSTER, Guard.COMPLETE_GRAPH): ref["small_roster"],
        (NodeEvent.KEY_ROSTER, Guard.SECAGG_PLUS_GRAPH): ref["roster"],
        (NodeEvent.GRAPH_SEEDS, None): ref["seeds"], (NodeEvent.SHARE_DELIVERY, None): ref["delivery"],
        (NodeEvent.CONSISTENCY_REQUEST, None): ref["check"], (NodeEvent.UNMASK_REQUEST, "unchecked"): ref["nobody"],
        (NodeEvent.UNMASK_REQUEST, Guard.AFTER_CHECK): ref["unmask"],
    }[event, guard]


def fire(node, event, guard):
    """Make ``node`` see (event, guard): a driver call or a server message, through the public API."""
    if event is NodeEvent.ABANDON_ROUND:
        return node.abandon_round()
    return feed(node, trigger_message(event, guard), np.ones(LENGTH))


def actual_guard(node, event, guard):
    """The guard the node's own context gives a trigger (an unchecked unmask depends on its epoch's graph)."""
    if guard != "unchecked":
        return guard
    sparse = node.epoch is not None and node.epoch.plan is not None and node.epoch.plan.graph_seed is not None
    return unmask_guard(trigger_message(event, guard), sparse_epoch=sparse)


def next_state(table, state, event, guard):
    row = table[state]
    return row.get(event, row.get((event, guard)))


REPLY_TO = {NodeEvent.ROUND_START: {Guard.NEW_EPOCH: KeyAdvertisement, Guard.SAME_EPOCH: MaskedInput},
            NodeEvent.KEY_ROSTER: {Guard.COMPLETE_GRAPH: ShareBundle, Guard.SECAGG_PLUS_GRAPH: GraphSeedReveal},
            NodeEvent.GRAPH_SEEDS: ShareBundle, NodeEvent.SHARE_DELIVERY: MaskedInput,
            NodeEvent.CONSISTENCY_REQUEST: ConsistencySignature, NodeEvent.UNMASK_REQUEST: UnmaskResponse,
            NodeEvent.ABANDON_ROUND: type(None)}


def test_node_triggers_cover_every_event_and_every_row():
    assert {e for e, _ in NODE_TRIGGERS} == set(NodeEvent)
    assert set(NODE_TRANSITIONS) == set(NodeState) and NODE_TRANSITIONS[NodeState.ABORTED] == {}
    guarded = {(e, g) for s in NODE_TRANSITIONS for e, g, _ in rows(NODE_TRANSITIONS, s) if g is not None}
    # masked + (UnmaskRequest, nobody dropped) needs a complete-graph epoch: test_the_fast_path_is_legal_from_masked...
    assert guarded - set(NODE_TRIGGERS) == {(NodeEvent.UNMASK_REQUEST, Guard.NOBODY_DROPPED)}


@pytest.mark.parametrize("event, guard", NODE_TRIGGERS, ids=[f"{e}-{g}" for e, g in NODE_TRIGGERS])
@pytest.mark.parametrize("state", list(NodeState))
def test_node_state_event_pair(state, event, guard):
    # Prepare
    node = node_in(state)
    seen = actual_guard(node, event, guard)
    target = next_state(NODE_TRANSITIONS, state, event, seen)

    if target is not None:
        # Execute / Assert: legal pairs proceed to the table's target and answer with the right message
        reply = fire(node, event, guard)
        expected = REPLY_TO[event]
        assert isinstance(reply, expected[seen] if isinstance(expected, dict) else expected)
        assert node.state == target
        return
    # Execute / Assert: illegal pairs raise what refusal() documents and leave the state it documents ...
    error, after = refusal("node", state, event)
    with pytest.raises(error) as info:
        fire(node, event, guard)
    assert node.state == after == NodeState.ABORTED
    if error is ProtocolAborted:
        assert info.value.party == "n0"
    # ... for good: every later call is our own misuse
    for other in NODE_TRIGGERS:
        with pytest.raises(LocalProtocolError, match="start a new session"):
            fire(node, *other)
    assert node.state == NodeState.ABORTED


def test_the_fast_path_is_legal_from_masked_on_the_complete_graph():
    fed = provision()
    drive(fed, 1, vectors(), until="collect_inputs")
    node = fed.nodes["n0"]
    assert node.state == "masked"
    nobody = UnmaskRequest(federation_id=fed.provisioning.federation_id, round=1, alive=IDS, dropped=(), signatures={})
    assert unmask_guard(nobody, sparse_epoch=False) is Guard.NOBODY_DROPPED
    reply = feed(node, nobody)
    assert isinstance(reply, UnmaskResponse)
    assert node.state == NODE_TRANSITIONS[NodeState.MASKED][NodeEvent.UNMASK_REQUEST, Guard.NOBODY_DROPPED]
    assert set(reply.self_mask_shares) == set(IDS) and reply.mask_key_shares == {}


def test_fresh_node_without_keys_refuses_a_same_epoch_round_start():
    node = table_fed().nodes["n0"]
    with pytest.raises(ProtocolAborted):
        feed(node, trigger_message(NodeEvent.ROUND_START, Guard.SAME_EPOCH))
    assert node.state == "aborted"


@pytest.mark.parametrize("misuse", ["round start to receive", "roster to begin_round"])
def test_local_misuse_is_a_local_protocol_error_and_aborts(misuse):
    node = node_in("ready")
    with pytest.raises(LocalProtocolError):
        if misuse == "round start to receive":
            node.receive(trigger_message(NodeEvent.ROUND_START, Guard.NEW_EPOCH))
        else:
            node.begin_round(reference_round()["roster"], np.ones(LENGTH))
    assert node.state == "aborted"
    with pytest.raises(LocalProtocolError, match="aborted"):
        node.abandon_round()


@pytest.mark.parametrize("vector", [np.ones(LENGTH + 1), np.ones((1, LENGTH)), np.array([1.0, np.nan, 0.0]),
                                    np.array([np.inf, 0.0, 0.0])])
def test_bad_local_input_is_a_data_error_without_aborting(vector):
    node = node_in("ready")
    start = trigger_message(NodeEvent.ROUND_START, Guard.NEW_EPOCH)
    with pytest.raises(DataError):
        feed(node, start, vector)
    assert node.state == "ready"
    assert isinstance(feed(node, start, np.ones(LENGTH)), KeyAdvertisement)


@pytest.mark.parametrize("state", ["advertised", "masked", "signed"])
def test_a_round_is_never_masked_twice(state):
    """Two masked inputs under the same round's masks would give the server x - x' of one node."""
    # Prepare: n0 got round 2 (steady state for masked/signed), then its driver gave up on the round
    node = node_in("ready")
    start = trigger_message(NodeEvent.ROUND_START, Guard.NEW_EPOCH if state == "advertised" else Guard.SAME_EPOCH)
    feed(node, start, np.ones(LENGTH))
    if state == "signed":
        feed(node, dataclasses.replace(reference_round()["check"], round=2))
    assert node.state == state
    node.abandon_round()

    # Execute / Assert: the same round start again is a replay
    with pytest.raises(ProtocolAborted):
        feed(node, start, np.zeros(LENGTH))
    assert node.state == "aborted"


@pytest.mark.parametrize("state", ["advertised", "revealed", "shared", "masked", "signed"])
def test_abandoned_round_returns_to_ready_and_keeps_only_a_finished_set_up(state):
    node = node_in(state)
    node.abandon_round()
    assert node.state == "ready"
    if state in ("advertised", "revealed", "shared"):  # unfinished set-up: a same-epoch start has no keys
        with pytest.raises(ProtocolAborted):
            feed(node, trigger_message(NodeEvent.ROUND_START, Guard.SAME_EPOCH))
    else:
        assert isinstance(feed(node, trigger_message(NodeEvent.ROUND_START, Guard.SAME_EPOCH)), MaskedInput)


# -- server --------------------------------------------------------------------------------------------


def server_in(state, *, steady=False, complete=False):
    """A server waiting in ``state``, and the node replies it is waiting for (held back). ``complete``: a 5-node
    complete-graph federation where nobody drops (the other rows of the guarded close_stage)."""
    fed = provision() if complete else table_fed()
    ids, inputs = (IDS, vectors()) if complete else (TABLE_IDS, table_vectors())
    if state == "idle":
        if steady:
            drive(fed, 1, inputs)
        return fed, {}
    if state == "aborted":
        with pytest.raises(ProtocolAborted):
            drive(fed, 1, inputs, silent={"collect_advertisements": set(ids[:5])})
        return fed, {}
    round_ = 1
    if steady:
        drive(fed, 1, inputs)
        round_ = 2
    silent = {"collect_inputs": {"n4"}} if state == "collect_signatures" and not complete else {}
    stages = drive(fed, round_, inputs, until=state, silent=silent)
    assert fed.server.state == state
    return fed, stages[-1].replies


SERVER_CASES = [("idle", False, False), ("idle", True, False), ("collect_advertisements", False, False),
                ("collect_advertisements", False, True), ("collect_reveals", False, False),
                ("collect_shares", False, False), ("collect_inputs", False, False), ("collect_inputs", True, False),
                ("collect_inputs", False, True), ("collect_signatures", False, False), ("collect_unmask", False, False),
                ("collect_unmask", True, False), ("aborted", False, False)]
SERVER_TRIGGERS = (ServerEvent.START_ROUND, *(ServerEvent(k.__name__) for k in NODE_REPLIES), ServerEvent.CLOSE_STAGE,
                   ServerEvent.ABANDON_ROUND)


def server_guard(state, event, steady, complete):
    """The guard the case's context gives (the federations are built so: see server_in)."""
    if event is ServerEvent.START_ROUND:
        return Guard.SAME_EPOCH if steady and state == "idle" else Guard.NEW_EPOCH
    if event is ServerEvent.CLOSE_STAGE and state == "collect_advertisements":
        return Guard.COMPLETE_GRAPH if complete else Guard.SECAGG_PLUS_GRAPH
    if event is ServerEvent.CLOSE_STAGE and state == "collect_inputs":
        return Guard.NOBODY_DROPPED if complete else Guard.DROPOUTS_OR_SECAGG_PLUS
    return None


def test_server_cases_and_triggers_cover_every_state_event_and_row():
    assert {s for s, _, _ in SERVER_CASES} == set(ServerState) == set(SERVER_TRANSITIONS)
    assert set(SERVER_TRIGGERS) == set(ServerEvent)
    exercised = {(s, e, server_guard(s, e, steady, complete)) for s, steady, complete in SERVER_CASES for e in SERVER_TRIGGERS}
    assert {(s, e, g) for s in SERVER_TRANSITIONS for e, g, _ in rows(SERVER_TRANSITIONS, s)} <= exercised


@pytest.mark.parametrize("event", SERVER_TRIGGERS, ids=str)
@pytest.mark.parametrize("state, steady, complete", SERVER_CASES)
def test_server_state_event_pair(state, steady, complete, event):
    # Prepare
    fed, held = server_in(state, steady=steady, complete=complete)
    server = fed.server
    target = next_state(SERVER_TRANSITIONS, state, event, server_guard(state, event, steady, complete))
    ref = reference_round()
    kind = {k.__name__: k for k in NODE_REPLIES}.get(event)
    act = {ServerEvent.START_ROUND: lambda: server.start_round(server.round + 1, LENGTH),
           ServerEvent.CLOSE_STAGE: server.close_stage, ServerEvent.ABANDON_ROUND: server.abandon_round}.get(
        event, lambda: server.receive(wire(ref["replies"][kind])))

    if target is not None:
        # Execute / Assert: every held reply of this stage is accepted and the state does not move; a driver call
        # (closing the stage after the replies arrived) moves to the table's target
        assert kind is None or (held and all(isinstance(r, kind) for r in held.values()))
        for reply in held.values():
            server.receive(reply)
            assert server.state == state
        if kind is None:
            act()
            assert server.state == target
        return
    # Execute / Assert: anything else is refused as refusal() says: a node message with the state kept (the
    # availability rule), a driver call or anything on an aborted session for good
    error, after = refusal("server", state, event)
    with pytest.raises(error):
        act()
    assert server.state == after
    if after == ServerState.ABORTED:
        for call in (lambda: server.start_round(server.round + 1, LENGTH), server.close_stage, server.abandon_round,
                     lambda: server.receive(wire(ref["replies"][MaskedInput]))):
            with pytest.raises(LocalProtocolError, match="start a new session"):
                call()


@pytest.mark.parametrize("kind", SERVER_SENDS, ids=lambda k: k.__name__)
def test_a_server_message_sent_to_the_server_is_a_remote_error_and_changes_nothing(kind):
    fed, _ = server_in("collect_inputs", steady=True)
    ref = reference_round()
    message = {RoundStart: ref["start"], KeyRoster: ref["roster"], GraphSeeds: ref["seeds"], ShareDelivery: ref["delivery"],
               ConsistencyRequest: ref["check"], UnmaskRequest: ref["unmask"]}[kind]
    with pytest.raises(RemoteProtocolError):
        fed.server.receive(wire(message))
    assert fed.server.state == "collect_inputs"


@pytest.mark.parametrize("misuse", ["round number goes back", "unprovisioned cohort"])
def test_server_misuse_aborts_its_session_for_good(misuse):
    fed, _ = server_in("idle", steady=True)
    server = fed.server
    with pytest.raises(LocalProtocolError):
        if misuse == "round number goes back":
            server.start_round(server.round, LENGTH)
        else:
            server.start_round(server.round + 1, LENGTH, cohort=("n0", "n1", "stranger"))
    assert server.state == "aborted" and server.plan is None
    with pytest.raises(LocalProtocolError, match="start a new session"):
        server.start_round(server.round + 1, LENGTH)


# =========================================================================================================
# 5. Replays, duplicates, other federations, misrouting


def round_two(state, *, new_epoch):
    """A federation after round 1 (n4's masked input lost), with round 2 (a new epoch or the steady state) driven
    until n0 is in ``state``. Returns (federation, round-1 stages, round-2 stages)."""
    fed = table_fed(rounds_per_epoch=1 if new_epoch else 3)
    lost = {"collect_inputs": {"n4"}}
    first = drive(fed, 1, table_vectors(), silent=lost)
    target = {"advertised": "collect_advertisements", "revealed": "collect_reveals", "shared": "collect_shares",
              "masked": "collect_inputs", "signed": "collect_signatures"}[state]
    second = drive(fed, 2, table_vectors(), until=target, silent=lost)
    assert fed.nodes["n0"].state == state
    assert isinstance(second[0].outgoing["n0"], RoundStart) and (second[0].outgoing["n0"].epoch == 2) is new_epoch
    return fed, first, second


@pytest.mark.parametrize("round_, epoch", [(1, 1), (0, 0), (1, 0)])
def test_replayed_round_start_is_refused(round_, epoch):
    node = node_in("ready")
    with pytest.raises(ProtocolAborted):
        feed(node, dataclasses.replace(reference_round()["start"], round=round_, epoch=epoch))
    assert node.state == "aborted"


@pytest.mark.parametrize("relabel", [False, True])
def test_roster_of_an_earlier_epoch_is_refused(relabel):
    # Prepare: n0 advertised for epoch 2; the server replays epoch 1's roster (optionally relabelled as epoch 2)
    fed, first, _ = round_two("advertised", new_epoch=True)
    old = first[1].outgoing["n0"]
    message = dataclasses.replace(old, epoch=2) if relabel else old

    # Execute / Assert
    with pytest.raises(ProtocolAborted):
        feed(fed.nodes["n0"], message)
    assert fed.nodes["n0"].state == "aborted"


@pytest.mark.parametrize("relabel", [False, True])
def test_share_delivery_of_an_earlier_epoch_is_refused(relabel):
    fed, first, _ = round_two("shared", new_epoch=True)
    old = sent_to(first, ShareDelivery)
    with pytest.raises(ProtocolAborted):
        feed(fed.nodes["n0"], dataclasses.replace(old, epoch=2) if relabel else old)


@pytest.mark.parametrize("relabel", [False, True])
def test_misrouted_share_delivery_is_refused(relabel):
    node = node_in("shared")
    other = reference_round()["deliveries"]["n1"]
    with pytest.raises(ProtocolAborted):
        feed(node, dataclasses.replace(other, receiver="n0") if relabel else other)
    assert node.state == "aborted"


def test_share_delivery_from_a_stranger_or_with_a_swapped_sender_is_refused():
    ref = reference_round()["delivery"]
    swapped = dict(ref.sealed)
    a, b = sorted(swapped)[:2]
    swapped[a], swapped[b] = swapped[b], swapped[a]
    for sealed in (swapped, {**ref.sealed, "n9": next(iter(ref.sealed.values()))}):
        node = node_in("shared")
        with pytest.raises(ProtocolAborted):
            feed(node, dataclasses.replace(ref, sealed=sealed))


@pytest.mark.parametrize("state", ["advertised", "shared", "masked", "signed"])
def test_duplicate_server_message_is_refused(state):
    node = node_in(state)
    last = reference_round()[PATH_TO[state][-1]]
    with pytest.raises(ProtocolAborted):
        feed(node, last)
    assert node.state == "aborted"


def test_duplicate_unmask_request_after_the_round_is_refused():
    node = node_in("ready")
    with pytest.raises(ProtocolAborted):
        feed(node, reference_round()["unmask"])


@pytest.mark.parametrize("state, event, guard", [(s, e, g) for s in NODE_TRANSITIONS for e, g, _ in rows(NODE_TRANSITIONS, s)
                                                 if (e, g) in NODE_TRIGGERS and e is not NodeEvent.ABANDON_ROUND], ids=str)
def test_legal_message_for_another_federation_is_refused(state, event, guard):
    node = node_in(state)
    with pytest.raises(ProtocolAborted):
        feed(node, dataclasses.replace(trigger_message(event, guard), federation_id="another-federation"))
    assert node.state == "aborted"


def test_whole_round_of_another_federation_is_refused():
    # Prepare: same node ids, other federation and keys
    other = MaskingFederation.provision(TABLE_IDS, MaskingParameters(rounds_per_epoch=3, degree=TABLE_DEGREE), seed=SEED,
                                        federation_id="other")
    stages = drive(other, 1, table_vectors())
    node = table_fed().nodes["n0"]

    # Execute / Assert
    with pytest.raises(ProtocolAborted):
        feed(node, stages[0].outgoing["n0"])


def test_check_and_unmask_of_an_earlier_round_are_refused_in_the_steady_state():
    # Prepare: round 2 reuses epoch 1; n4 drops, so n0 goes through the consistency check
    fed, first, _ = round_two("masked", new_epoch=False)

    # Execute / Assert: round 1's check replayed in round 2
    with pytest.raises(ProtocolAborted):
        feed(fed.nodes["n0"], sent_to(first, ConsistencyRequest))
    assert fed.nodes["n0"].state == "aborted"


def test_round_one_signatures_are_refused_in_round_two():
    # Prepare: n0 signed round 2's view (which equals round 1's view: n4 dropped both times)
    fed, first, second = round_two("signed", new_epoch=False)
    check2 = second[-1].outgoing["n0"]
    round1 = sent_to(first, UnmaskRequest)
    assert (check2.alive, check2.dropped) == (round1.alive, round1.dropped)
    replay = dataclasses.replace(round1, round=2)

    # Execute / Assert
    with pytest.raises(ProtocolAborted):
        feed(fed.nodes["n0"], replay)
    assert revealed(fed.transcript, 2) == {}


def test_server_refuses_stale_duplicate_foreign_and_unexpected_node_messages():
    # Prepare: the server waits for round 2's masked inputs (steady state)
    fed, held = server_in("collect_inputs", steady=True)
    round1_input = reference_round()["replies"][MaskedInput]
    mine = held["n0"]

    # Execute / Assert
    with pytest.raises(RemoteProtocolError):
        fed.server.receive(round1_input)  # replayed from round 1
    with pytest.raises(RemoteProtocolError):
        fed.server.receive(dataclasses.replace(mine, federation_id="another-federation"))
    with pytest.raises(RemoteProtocolError):
        fed.server.receive(dataclasses.replace(mine, node_id="stranger"))
    with pytest.raises(RemoteProtocolError):
        fed.server.receive(dataclasses.replace(mine, words=mine.words[:-1]))
    with pytest.raises(RemoteProtocolError):
        fed.server.receive(dataclasses.replace(mine, words=mine.words.astype("<u4")))
    fed.server.receive(mine)
    with pytest.raises(RemoteProtocolError):
        fed.server.receive(mine)  # duplicate
    assert fed.server.state == "collect_inputs"


def test_server_refuses_forged_adverts_bundles_signatures_and_shares():
    # Prepare
    fed, adverts = server_in("collect_advertisements")
    advert = adverts["n0"]

    # Execute / Assert: advertisements must carry the node's own signature for this epoch
    for forged in (dataclasses.replace(advert, epoch=2), dataclasses.replace(advert, channel_key=bytes(32)),
                   dataclasses.replace(advert, node_id="n1")):
        with pytest.raises(RemoteProtocolError):
            fed.server.receive(forged)

    fed, bundles = server_in("collect_shares")
    bundle = bundles["n0"]
    for sealed in ({k: v for k, v in list(bundle.sealed.items())[1:]}, {**bundle.sealed, "n0": b"x"}):
        with pytest.raises(RemoteProtocolError):
            fed.server.receive(dataclasses.replace(bundle, sealed=sealed))

    fed, signatures = server_in("collect_signatures")
    with pytest.raises(RemoteProtocolError):
        fed.server.receive(dataclasses.replace(signatures["n0"], signature=signatures["n1"].signature))

    fed, responses = server_in("collect_unmask")
    response = responses["n0"]
    short = {k: v[:-1] for k, v in response.self_mask_shares.items()}
    with pytest.raises(RemoteProtocolError):
        fed.server.receive(dataclasses.replace(response, self_mask_shares=short))


def test_a_lying_node_share_makes_the_server_abort_never_a_wrong_sum():
    # Prepare: n0 (first in the reconstruction order) returns a wrong self-mask share of another owner
    fed, responses = server_in("collect_unmask")
    response = responses["n0"]
    owner = next(o for o in response.self_mask_shares if o != "n0")
    bad = bytes(crypto.SHARE_BYTES - 1) + b"\x01"
    fed.server.receive(dataclasses.replace(response, self_mask_shares={**response.self_mask_shares, owner: bad}))
    for v, r in responses.items():
        if v != "n0":
            fed.server.receive(r)

    # Execute / Assert
    with pytest.raises(ProtocolAborted) as info:
        fed.server.close_stage()
    assert info.value.party == SERVER
    assert fed.server.outcome is None and fed.server.state == "aborted"


# =========================================================================================================
# 6. Wire fuzzing


@functools.lru_cache(maxsize=1)
def valid_wire_messages():
    result = simulate_aggregation(table_vectors(), neighbors=TABLE_DEGREE, dropouts={"n4": "masked_input"}, seed=3)
    out = {}
    for record in result.transcript:
        out.setdefault(record.kind, record.data)
    assert set(out) == set(MESSAGE_TYPES)
    return out


def decodes_canonically_or_refuses(data):
    try:
        message = decode(data)
    except MessageError:
        return
    assert message.encode() == bytes(data)


def frame(header: bytes, body: bytes = b"") -> bytes:
    return MAGIC + bytes([VERSION]) + len(header).to_bytes(4, "big") + header + body


@pytest.mark.parametrize("kind", sorted(MESSAGE_TYPES))
def test_every_message_type_round_trips_exactly(kind):
    data = valid_wire_messages()[kind]
    message = decode(data)
    assert type(message).__name__ == kind and message.encode() == data
    assert decode(bytearray(data)).encode() == decode(memoryview(data)).encode() == data


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(sorted(MESSAGE_TYPES)),
       flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 10**6)), insert=st.binary(max_size=4), at=st.integers(0, 10**6))
def test_mutated_messages_decode_canonically_or_raise_message_error(kind, flips, cut, insert, at):
    data = bytearray(valid_wire_messages()[kind])
    for position, mask in flips:
        data[position % len(data)] ^= mask
    if cut is not None:
        data = data[:cut % (len(data) + 1)]
    at %= len(data) + 1
    data[at:at] = insert
    decodes_canonically_or_refuses(bytes(data))


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.binary(max_size=64), st.binary(max_size=64).map(lambda b: frame(b[:32], b[32:]))))
def test_random_bytes_raise_only_message_error(data):
    decodes_canonically_or_refuses(data)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)


@settings(max_examples=120, deadline=None)
@given(kind=st.sampled_from(sorted(MESSAGE_TYPES)), data=st.data())
def test_header_fields_with_any_json_value_decode_canonically_or_raise_message_error(kind, data):
    raw = valid_wire_messages()[kind]
    size = int.from_bytes(raw[5:9], "big")
    header, body = json.loads(raw[9:9 + size]), raw[9 + size:]
    key = data.draw(st.sampled_from(sorted(header) + ["extra"]))
    if data.draw(st.booleans()) and key in header:
        del header[key]
    else:
        header[key] = data.draw(JSON)
    blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    decodes_canonically_or_refuses(frame(blob, body))


def test_non_canonical_and_wrong_version_headers_are_refused():
    raw = valid_wire_messages()["RoundStart"]
    size = int.from_bytes(raw[5:9], "big")
    header = json.loads(raw[9:9 + size])
    reordered = dict(reversed(header.items()))
    for blob in (json.dumps(header, sort_keys=True).encode(), json.dumps(reordered, separators=(",", ":")).encode(),
                 json.dumps(header, sort_keys=True, separators=(",", ":")).encode() + b" "):
        with pytest.raises(MessageError):
            decode(frame(blob))
    with pytest.raises(MessageError):
        decode(raw[:4] + bytes([VERSION + 1]) + raw[5:])
    with pytest.raises(MessageError):
        decode("not bytes")  # type: ignore[arg-type]


def test_huge_json_integer_raises_message_error():
    # Prepare: a 5000-digit round number, under CPython's default int/str conversion limit (test tools may lift it)
    raw = valid_wire_messages()["RoundStart"]
    size = int.from_bytes(raw[5:9], "big")
    header = raw[9:9 + size].replace(b'"round":1', b'"round":' + b"9" * 5000)
    assert header != raw[9:9 + size]
    previous = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(4300)
    try:
        # Execute / Assert
        with pytest.raises(MessageError):
            decode(frame(header))
    finally:
        sys.set_int_max_str_digits(previous)


def test_deeply_nested_roster_raises_message_error():
    inner: dict = {"type": "KeyRoster", "federation_id": "f", "epoch": 1, "advertisements": []}
    for _ in range(450):
        inner = {"type": "KeyRoster", "federation_id": "f", "epoch": 1, "advertisements": [inner]}
    with pytest.raises(MessageError):
        decode(frame(json.dumps(inner, sort_keys=True, separators=(",", ":")).encode()))


@pytest.mark.parametrize("field, value", [("federation_id", "simulation\n"), ("anchor_digest", "ab" * 32 + "\n")])
def test_ids_and_digests_with_a_trailing_newline_are_refused(field, value):
    start = dataclasses.asdict(decode(valid_wire_messages()["RoundStart"]))
    start[field] = value
    with pytest.raises(MessageError):
        RoundStart(**start)


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
