"""secagg-v1 against a dishonest server: the catalogue, curious partial sums, colluding nodes, the graph seed."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from geofed_secure.errors import (
    ConfigError,
    ProtocolAborted,
)
from geofed_secure.secagg import simulate_aggregation
from geofed_secure.secagg.common import SERVER
from geofed_secure.secagg.masking import (
    MaskingParameters,
    pairwise_mask,
    self_mask,
)
from geofed_secure.secagg.masking import primitives as crypto
from geofed_secure.secagg.masking.adversary import CATALOGUE, Adversary
from geofed_secure.secagg.masking.messages import (
    ConsistencyRequest,
    ConsistencySignature,
    KeyAdvertisement,
    MaskedInput,
    ShareBundle,
    UnmaskRequest,
    UnmaskResponse,
    decode,
)
from secagg.masking.support import (
    IDS,
    LENGTH,
    default_threshold,
    feed,
    individual_inputs_the_server_can_compute,
    node_in,
    provision,
    reference_round,
    revealed,
    unmask_records,
    vectors,
)

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
