"""SecAgg+ view checks at scale (SPEC 5.5 rule 4, section 6): a node checks the view signatures of its scope only.

On a ring larger than a node's scope (6 ceil(k/2) + 1 members), distant arcs can be shown different views and answer
them; the tests here drive exactly that through the real state machines and require that the server still rebuilds
neither both secrets of any owner nor any individual input, with and without a colluding node.
"""

from __future__ import annotations

import hashlib

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from geofed_secure.errors import ProtocolAborted
from geofed_secure.secagg.common import SERVER
from geofed_secure.secagg.masking.adversary import Adversary, _CollectSignatures
from geofed_secure.secagg.masking.messages import ConsistencyRequest, UnmaskRequest, decode
from secagg.masking.support import individual_inputs_the_server_can_compute, provision, revealed, unmask_records, vectors

DEGREE = 4  # 5 holders per owner, threshold 3, quorum 3; a node's scope is the 13 members nearest on the ring


def ids_of(n):
    return tuple(f"n{i:02d}" for i in range(n))


def ring(plan):
    return sorted(plan.members, key=lambda v: hashlib.sha256(plan.graph_seed + v.encode()).digest())


def test_a_node_is_sent_and_checks_only_the_signatures_of_its_scope_and_the_sum_is_exact():
    # Prepare
    ids = ids_of(24)
    inputs = vectors(ids, seed=3)
    fed = provision(ids, rounds_per_epoch=1, degree=DEGREE, clip=100.0)

    # Execute: one dropout, so every survivor signs the view and is asked to unmask
    assert fed.run_round(1, inputs, dropouts={"n05": "masked_input"}) == {}

    # Assert
    plan = fed.server.plan
    requests = {r.receiver: decode(r.data) for r in fed.transcript if r.kind == "UnmaskRequest"}
    assert len(requests) == 23
    for v, request in requests.items():
        scope = plan.signature_scope(v)
        assert len(scope) == 13 and v in scope
        assert set(request.signatures) == set(request.alive) & scope
    outcome = fed.server.outcome
    assert np.abs(outcome.aggregate - sum(inputs[v] for v in ids if v != "n05")).max() <= outcome.max_abs_error


def test_the_scope_is_every_member_in_the_complete_graph_and_on_a_ring_smaller_than_it():
    for n, degree in [(7, None), (10, DEGREE), (13, DEGREE)]:
        fed = provision(ids_of(n), rounds_per_epoch=1, degree=degree)
        assert fed.run_round(1, vectors(ids_of(n))) == {}
        plan = fed.server.plan
        assert all(plan.signature_scope(v) == set(plan.members) for v in plan.members)


class _Unmask(Adversary):
    """Rewrites the honest server's unmask requests with ``edit(receiver, request, plan)``."""

    def __init__(self, edit):
        self.edit = edit

    def tamper(self, outgoing, ctx):
        out = dict(outgoing)
        for v, message in out.items():
            if isinstance(message, UnmaskRequest) and message.signatures:
                out[v] = self.edit(v, message, ctx.server.plan)
        return out


def _without(request, signer):
    return UnmaskRequest(federation_id=request.federation_id, round=request.round, alive=request.alive,
                         dropped=request.dropped, signatures={k: s for k, s in request.signatures.items() if k != signer})


def test_a_missing_signature_inside_the_scope_is_refused_and_one_outside_is_not_needed():
    # Prepare
    ids = ids_of(24)
    fed = provision(ids, rounds_per_epoch=1, degree=DEGREE)
    inputs = vectors(ids)
    fed.run_round(1, inputs)  # learn the seeded ring, then run the same federation seed again
    order = ring(fed.server.plan)
    victim, near, far = order[0], order[6], order[12]  # ring distance 6 (inside the scope) and 12 (outside)

    def forged(v, request, plan):
        if v != victim:
            return request
        forged = dict(request.signatures)
        forged[far] = bytes(64)  # outside the scope: not verified, not needed
        return _without(UnmaskRequest(federation_id=request.federation_id, round=request.round, alive=request.alive,
                                      dropped=request.dropped, signatures=forged), near)

    def far_only(v, request, plan):
        if v != victim:
            return request
        return UnmaskRequest(federation_id=request.federation_id, round=request.round, alive=request.alive,
                             dropped=request.dropped, signatures={**request.signatures, far: bytes(64)})

    # Execute / Assert: a forged signature of a member outside the scope changes nothing for the victim
    answered = provision(ids, rounds_per_epoch=1, degree=DEGREE)
    assert answered.run_round(1, inputs, adversary=_Unmask(far_only)) == {}
    # ... but a missing signature inside it is refused at the unmask
    refused = provision(ids, rounds_per_epoch=1, degree=DEGREE)
    refusals = refused.run_round(1, inputs, adversary=_Unmask(forged))
    assert set(refusals) == {victim}
    assert refusals[victim].stage == "unmask" and near in refusals[victim].reason
    assert not [m for m in unmask_records(refused.transcript, 1) if m.node_id == victim]


def test_a_view_that_lists_an_owners_holders_too_thinly_is_refused_at_the_consistency_check():
    # Prepare: three ring-adjacent members listed dropped leave the middle one 2 alive holders (quorum 3)
    ids = ids_of(24)
    inputs = vectors(ids)
    probe = provision(ids, rounds_per_epoch=1, degree=DEGREE)
    probe.run_round(1, inputs)
    order = ring(probe.server.plan)
    gone = {order[5], order[6], order[7]}

    class ThinView(Adversary):
        def tamper(self, outgoing, ctx):
            out = dict(outgoing)
            if not isinstance(next(iter(out.values())), ConsistencyRequest):
                return out
            for v, m in out.items():
                out[v] = ConsistencyRequest(federation_id=m.federation_id, round=m.round,
                                            alive=tuple(a for a in m.alive if a not in gone),
                                            dropped=tuple(sorted({*m.dropped, *gone})))
            return {v: m for v, m in out.items() if v not in gone}

    fed = provision(ids, rounds_per_epoch=1, degree=DEGREE)

    # Execute
    try:
        refusals = fed.run_round(1, inputs, adversary=ThinView())
    except ProtocolAborted as exc:
        assert exc.party == SERVER
        refusals = exc.refusals

    # Assert: the holders of positions 5 and 7 (2 holders alive each: 3, 4 and 8, 9) refuse before signing, for rule 4
    # (their own peers are alive enough for rule 3)
    thin = {order[3], order[4], order[8], order[9]}
    assert thin <= set(refusals)
    for v in thin:
        assert refusals[v].stage == "consistency_check" and "share holders of" in refusals[v].reason, refusals[v].reason
    assert unmask_records(fed.transcript, 1) == []


class ArcViews(_CollectSignatures):  # keeps every consistency signature (intercept)
    """Cuts the ring into arcs and shows each arc its own view (each arc's view lists its own choice of members
    dropped); every signer is then asked to unmask with every signature that is valid over its view."""

    name = "arc_views"

    def __init__(self, cuts, drops):
        # ring positions where arcs start; per arc, in the order of their start positions (0..n-1), the ring
        # positions its view lists dropped
        self.cuts, self.drops = cuts, drops
        self.views: dict[str, tuple] = {}
        self.plan = None

    def tamper(self, outgoing, ctx):
        first = next(iter(outgoing.values()), None)
        if self.plan is not None or not isinstance(first, ConsistencyRequest):
            return dict(outgoing)
        self.plan = ctx.server.plan
        order = ring(self.plan)
        n = len(order)
        starts = sorted({c % n for c in self.cuts})
        out = {}
        for k, start in enumerate(starts):
            end = starts[(k + 1) % len(starts)] if len(starts) > 1 else start + n
            arc = [order[(start + j) % n] for j in range((end - start) % n or n)]
            dropped = {order[d % n] for d in self.drops[k % len(self.drops)]} | set(first.dropped)
            view = (tuple(v for v in first.alive if v not in dropped), tuple(sorted(dropped)))
            for v in arc:
                if v in outgoing:
                    self.views[v] = view
                    out[v] = ConsistencyRequest(federation_id=first.federation_id, round=ctx.round, alive=view[0],
                                                dropped=view[1])
        return out

    def override(self, ctx):
        if not ctx.intercepted:
            return None
        fed = ctx.server.provisioning.federation_id
        out = {}
        for v in ctx.intercepted:
            view = self.views[v]
            sigs = {s: m.signature for s, m in ctx.intercepted.items() if self.views.get(s) == view and s in view[0]}
            out[v] = UnmaskRequest(federation_id=fed, round=ctx.round, alive=view[0], dropped=view[1], signatures=sigs)
        ctx.intercepted.clear()
        return out


def assert_each_owner_answered_under_one_view(fed, adversary):
    """Rule 4's theorem, checked directly: all unmask responses that reveal a share of one owner answer one view."""
    views_of: dict[str, set] = {}
    for m in unmask_records(fed.transcript, 1):
        for owner in {*m.self_mask_shares, *m.mask_key_shares}:
            views_of.setdefault(owner, set()).add(adversary.views[m.node_id])
    assert all(len(views) == 1 for views in views_of.values()), \
        {o: len(v) for o, v in views_of.items() if len(v) > 1}


def _attack(n, cuts, drops, colluders=0, dropouts=None):
    ids = ids_of(n)
    inputs = vectors(ids, seed=n)
    fed = provision(ids, rounds_per_epoch=1, degree=DEGREE, colluders=colluders, clip=100.0)
    adversary = ArcViews(cuts, drops)
    try:
        fed.run_round(1, inputs, adversary=adversary, dropouts=dropouts)
    except ProtocolAborted as exc:
        assert exc.party == SERVER  # the honest twin never got the signatures
    return fed, adversary, inputs


def test_two_distant_arcs_answer_two_views_and_the_server_still_learns_no_input_and_no_pair_of_secrets():
    """The price of O(degree) checks: on a ring of 30, the arc around position 0 answers a view in which position 15
    dropped and the arc around 15 one in which position 0 dropped; each arc's three central members find every
    signature of their scope over their own view. Every honest holder of one owner still answers one view (rule 4),
    so the server gets seeds of six owners, one secret each, and no input."""
    # Execute
    fed, adversary, _ = _attack(30, cuts=[-7, 8], drops=[[0], [15]])  # arcs in order of their start: 8..22, 23..7

    # Assert: both views were answered ...
    plan = adversary.plan
    order = ring(plan)
    responses = unmask_records(fed.transcript, 1)
    answered = {m.node_id for m in responses}
    assert answered == {order[-1], order[0], order[1], order[14], order[15], order[16]}
    assert len({adversary.views[v] for v in answered}) == 2
    # ... and still each owner's shares come from one view, no owner has both secrets rebuilt, and no input is exposed
    assert_each_owner_answered_under_one_view(fed, adversary)
    for owner, (seeds, keys) in revealed(fed.transcript, 1).items():
        assert not (seeds >= plan.threshold and keys >= plan.threshold), owner
    assert individual_inputs_the_server_can_compute(fed.transcript, 1, threshold=plan.threshold, clip=100.0) == {}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(16, 36), arcs=st.integers(2, 3), data=st.data(), colluders=st.integers(0, 1),
       late=st.booleans())
def test_no_arc_story_lets_the_server_rebuild_an_input_or_both_secrets_of_a_node(n, arcs, data, colluders, late):
    # Prepare: arcs of the ring, each shown its own view with up to 3 members (anywhere) listed dropped
    if data.draw(st.booleans(), label="even arcs"):  # arcs of equal length: the most likely to answer apart
        offset = data.draw(st.integers(0, n - 1))
        cuts = [offset + k * n // arcs for k in range(arcs)]
    else:
        cuts = data.draw(st.lists(st.integers(0, n - 1), min_size=arcs, max_size=arcs, unique=True))
    if data.draw(st.booleans(), label="each arc told members of the next arc dropped"):
        starts = sorted({c % n for c in cuts})
        offsets = data.draw(st.lists(st.lists(st.integers(0, n // arcs - 1), min_size=1, max_size=2), min_size=len(starts),
                                     max_size=len(starts)))
        drops = [[starts[(k + 1) % len(starts)] + o for o in offs] for k, offs in enumerate(offsets)]
    else:
        drops = data.draw(st.lists(st.lists(st.integers(0, n - 1), max_size=3), min_size=arcs, max_size=arcs))
    dropouts = {ids_of(n)[data.draw(st.integers(0, n - 1))]: "masked_input"} if late else None

    # Execute
    fed, adversary, _ = _attack(n, cuts, drops, colluders=colluders, dropouts=dropouts)

    # Assert
    plan = adversary.plan
    if plan is None:
        return
    responses = unmask_records(fed.transcript, 1)
    event(f"views answered: {len({adversary.views[m.node_id] for m in responses})}")
    assert_each_owner_answered_under_one_view(fed, adversary)
    for owner, (seeds, keys) in revealed(fed.transcript, 1).items():
        assert not (seeds >= plan.threshold and keys >= plan.threshold), owner
    order = ring(plan)
    spies = {}
    if colluders:  # the worst place for one colluder: next to the node with the most seed shares revealed
        counts = revealed(fed.transcript, 1)
        target = max(counts, key=lambda o: counts[o][0]) if counts else order[0]
        spy = order[(order.index(target) + 1) % n]
        spies = {spy: fed.nodes[spy]}
    exposed = individual_inputs_the_server_can_compute(fed.transcript, 1, threshold=plan.threshold, clip=100.0,
                                                       colluders=spies)
    assert exposed == {}


def test_a_secagg_plus_epoch_survives_pickling_of_every_party_between_rounds():
    """A deployed site keeps its session on disk between messages: the lazily built ring holders must pickle."""
    import pickle

    ids = ids_of(16)
    inputs = vectors(ids, seed=2)
    fed = provision(ids, rounds_per_epoch=3, degree=DEGREE, clip=100.0, seed=None)  # OS randomness, as deployed
    assert fed.run_round(1, inputs) == {}
    before = dict(fed.server.plan.holders)
    fed.nodes = {v: pickle.loads(pickle.dumps(node)) for v, node in fed.nodes.items()}
    assert dict(pickle.loads(pickle.dumps(fed.server.plan.holders))) == before  # the server's plan too

    assert fed.run_round(2, inputs, dropouts={"n03": "masked_input"}) == {}  # same epoch: no new key set-up

    assert dict(fed.server.plan.holders) == before
    assert not [r for r in fed.transcript if r.round == 2 and r.kind == "KeyRoster"]
    outcome = fed.server.outcome
    assert np.abs(outcome.aggregate - sum(inputs[v] for v in ids if v != "n03")).max() <= outcome.max_abs_error
