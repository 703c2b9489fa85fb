"""secagg-v1 (state, event) tables: every event in every state, through the public API (Flower's secaggplus_mod_test habit)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from geofed_secure.errors import (
    DataError,
    LocalProtocolError,
    ProtocolAborted,
    RemoteProtocolError,
)
from geofed_secure.secagg.machine import rows
from geofed_secure.secagg.masking.messages import (
    ConsistencyRequest,
    GraphSeeds,
    KeyAdvertisement,
    KeyRoster,
    MaskedInput,
    RoundStart,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from geofed_secure.secagg.masking.tables import (
    NODE_TRANSITIONS,
    SERVER_TRANSITIONS,
    Guard,
    NodeEvent,
    NodeState,
    ServerEvent,
    ServerState,
    refusal,
    unmask_guard,
)
from secagg.masking.support import (
    IDS,
    LENGTH,
    NODE_REPLIES,
    NODE_TRIGGERS,
    REPLY_TO,
    SERVER_CASES,
    SERVER_SENDS,
    SERVER_TRIGGERS,
    actual_guard,
    drive,
    feed,
    fire,
    next_state,
    node_in,
    provision,
    reference_round,
    server_guard,
    server_in,
    table_fed,
    trigger_message,
    vectors,
    wire,
)

# =========================================================================================================
# 4. The (state, event) tables: every event in every state, through the public API (Flower's secaggplus_mod_test
# habit), legal pairs to the table's target, the others refused as refusal() says


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
