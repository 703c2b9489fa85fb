"""What the secagg-v1 tests share: the test federations, a stage-by-stage driver and the exact-sum checks."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from geofed_secure.errors import (
    ProtocolAborted,
)
from geofed_secure.secagg.masking import (
    MaskingParameters,
    pairwise_mask,
    self_mask,
)
from geofed_secure.secagg.masking import primitives as crypto
from geofed_secure.secagg.masking.federation import MaskingFederation
from geofed_secure.secagg.masking.messages import (
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
    Guard,
    NodeEvent,
    ServerEvent,
    graph_guard,
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
    members = roster.members
    adverts = {a.node_id: a for a in roster.decoded()}
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


# -- driving one machine into a state (the (state, event) tables and the replay tests) ---------------------


@functools.lru_cache(maxsize=1)
def reference_round():
    """Round 1 of the table federation where n4's masked input is lost, as n0 receives it (deterministic)."""
    fed = table_fed()
    stages = drive(fed, 1, table_vectors(), silent={"collect_inputs": {"n4"}})
    inbox = [stage.outgoing["n0"] for stage in stages]
    start, roster, seeds, delivery, check, unmask = inbox
    small = KeyRoster.of(roster.federation_id, roster.epoch, roster.decoded()[:5])  # n0..n4: a complete graph
    assert graph_guard(TABLE_DEGREE, len(small.members)) is Guard.COMPLETE_GRAPH
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
