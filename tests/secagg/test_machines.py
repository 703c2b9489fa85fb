"""The one state-machine base class of secure aggregation: its gate, the refusal rule both protocols share, the
guards of secagg-v1, and runs that replay from seeds. The (state, event) pairs of each machine are sent through
its public API in tests/secagg/masking/test_tables.py and tests/secagg/ckks/test_ckks.py (the state table)."""

from __future__ import annotations

import dataclasses
import functools
from enum import StrEnum
from types import MappingProxyType

import numpy as np
import pytest

from geofed_secure.errors import LocalProtocolError, MessageError, ProtocolAborted, RemoteProtocolError
from geofed_secure.secagg.ckks import CkksNode, CkksServer
from geofed_secure.secagg.ckks import tables as ckks_tables
from geofed_secure.secagg.machine import Role, StateMachine, refusal, rows
from geofed_secure.secagg.masking import MaskingNode, MaskingParameters, MaskingServer
from geofed_secure.secagg.masking import tables as masking_tables
from geofed_secure.secagg.masking.federation import MaskingFederation
from geofed_secure.secagg.masking.messages import RoundStart, UnmaskRequest
from geofed_secure.secagg.masking.tables import Guard

# -- the gate, on a toy machine ------------------------------------------------------------------------------


class Light(StrEnum):
    OFF = "off"
    ON = "on"
    BLINKING = "blinking"
    BROKEN = "broken"


class Press(StrEnum):
    BUTTON = "button"  # a peer's event
    UNPLUG = "unplug"  # our own call


class Mode(StrEnum):
    STEADY = "steady"
    BLINK = "blink"


class Toy(StateMachine[Light, Press]):
    """A node-side toy: a guarded row from ``off``, our own call ``unplug`` from ``on``."""

    TRANSITIONS = MappingProxyType({
        Light.OFF: {(Press.BUTTON, Mode.STEADY): Light.ON, (Press.BUTTON, Mode.BLINK): Light.BLINKING},
        Light.ON: {Press.UNPLUG: Light.OFF}, Light.BLINKING: {}, Light.BROKEN: {}})
    ABORTED = Light.BROKEN
    REFUSAL = staticmethod(lambda state, event: refusal(Role.NODE, state, event, local=event is Press.UNPLUG,
                                                        aborted=Light.BROKEN))
    party = "toy"

    def __init__(self) -> None:
        super().__init__(Light.OFF)
        self.secret: str | None = "key"

    def _forget(self) -> None:
        self.secret = None


class ServerToy(Toy):
    REFUSAL = staticmethod(lambda state, event: refusal(Role.SERVER, state, event, local=event is Press.UNPLUG,
                                                        aborted=Light.BROKEN))


def toy(role=Role.NODE):
    return Toy() if role is Role.NODE else ServerToy()


@pytest.mark.parametrize("guard, target", [(Mode.STEADY, Light.ON), (Mode.BLINK, Light.BLINKING)])
def test_a_guarded_row_applies_only_under_its_guard(guard, target):
    machine = toy()
    assert machine._legal(Press.BUTTON) and not machine._legal(Press.UNPLUG)
    assert machine._move(Press.BUTTON, guard) is target and machine.state is target


def test_a_guarded_event_without_its_guard_is_refused_like_an_event_without_a_row():
    machine = toy()
    with pytest.raises(ProtocolAborted, match="button is not legal") as info:
        machine._move(Press.BUTTON)
    assert (info.value.party, machine.state, machine.secret) == ("toy", Light.BROKEN, None)


@pytest.mark.parametrize("role, error, after", [(Role.NODE, ProtocolAborted, Light.BROKEN),
                                                (Role.SERVER, RemoteProtocolError, Light.ON)])
def test_a_peer_event_out_of_order_is_a_security_stop_for_a_node_and_kept_state_for_a_server(role, error, after):
    machine = toy(role)
    machine._move(Press.BUTTON, Mode.STEADY)
    with pytest.raises(error):
        machine._move(Press.BUTTON, Mode.STEADY)
    assert machine.state is after


@pytest.mark.parametrize("role", list(Role))
def test_our_own_call_out_of_order_aborts_for_good_on_both_sides(role):
    machine = toy(role)
    with pytest.raises(LocalProtocolError, match="toy: unplug is not legal in state 'off'"):
        machine._move(Press.UNPLUG)
    assert machine.aborted and machine.secret is None
    for call in (lambda: machine._move(Press.BUTTON, Mode.STEADY), lambda: machine._check(Press.UNPLUG),
                 machine._alive):
        with pytest.raises(LocalProtocolError, match="the session is aborted; start a new session"):
            call()
    assert machine.state is Light.BROKEN


def test_misuse_and_security_stops_enter_the_error_state():
    for make in (lambda m: m._misuse("wrong argument"), lambda m: m._abort("threshold not met", "unmask")):
        machine = toy()
        error = make(machine)
        assert isinstance(error, LocalProtocolError | ProtocolAborted) and machine.aborted and machine.secret is None


def test_remote_protocol_error_is_a_message_error():
    assert issubclass(RemoteProtocolError, MessageError) and not issubclass(LocalProtocolError, MessageError)


# -- the four machines and their tables -----------------------------------------------------------------------

MACHINES = [(MaskingNode, masking_tables.NodeState, masking_tables.NodeEvent, "node", masking_tables.NODE_LOCAL_EVENTS),
            (MaskingServer, masking_tables.ServerState, masking_tables.ServerEvent, "server",
             masking_tables.SERVER_LOCAL_EVENTS),
            (CkksNode, ckks_tables.NodeState, ckks_tables.NodeEvent, "node", ()),
            (CkksServer, ckks_tables.ServerState, ckks_tables.ServerEvent, "server", ckks_tables.SERVER_LOCAL_EVENTS)]
MACHINE_IDS = [m[0].__name__ for m in MACHINES]


@pytest.mark.parametrize("machine, states, events, role, local", MACHINES, ids=MACHINE_IDS)
def test_every_machine_is_a_state_machine_over_enums_with_an_aborted_sink(machine, states, events, role, local):
    assert issubclass(machine, StateMachine)
    assert issubclass(states, StrEnum) and issubclass(events, StrEnum)
    assert set(machine.TRANSITIONS) == set(states) and machine.ABORTED is states.ABORTED
    assert machine.TRANSITIONS[states.ABORTED] == {}
    for state in states:
        for event, guard, target in rows(machine.TRANSITIONS, state):
            assert event in events and target in states and target is not states.ABORTED
            assert guard is None or isinstance(guard, Guard)


@pytest.mark.parametrize("machine, states, events, role, local", MACHINES, ids=MACHINE_IDS)
def test_one_refusal_rule_for_every_state_and_event(machine, states, events, role, local):
    """Anything on an aborted session, and our own call out of order, is LocalProtocolError and aborts; a node's
    peer out of order is a security stop; a server keeps its state for a node's message (the availability rule)."""
    for state in states:
        for event in events:
            error, after = machine.REFUSAL(state, event)
            if state is states.ABORTED or event in local:
                assert (error, after) == (LocalProtocolError, states.ABORTED)
            elif role == "node":
                assert (error, after) == (ProtocolAborted, states.ABORTED)
            else:
                assert (error, after) == (RemoteProtocolError, state)


def test_every_guard_of_the_masking_tables_is_documented_with_the_function_that_decides_it():
    documented = {(guard, who) for guard, _, who, _ in masking_tables.GUARD_RULES}
    for role, table in (("node", masking_tables.NODE_TRANSITIONS), ("server", masking_tables.SERVER_TRANSITIONS)):
        used = {guard for state in table for _, guard, _ in rows(table, state) if guard is not None}
        assert all((g, role) in documented or (g, "both") in documented for g in used), role
    assert {g for g, *_ in masking_tables.GUARD_RULES} == set(Guard)
    assert all(hasattr(masking_tables, function) for _, function, _, _ in masking_tables.GUARD_RULES)


def test_masking_guards():
    start = RoundStart(federation_id="f", round=4, epoch=4, anchor_digest="0" * 64, vector_length=1)
    assert masking_tables.round_start_guard(start) is Guard.NEW_EPOCH
    assert masking_tables.round_start_guard(dataclasses.replace(start, epoch=2)) is Guard.SAME_EPOCH
    assert masking_tables.graph_guard(None, 10) is Guard.COMPLETE_GRAPH
    assert masking_tables.graph_guard(4, 5) is Guard.COMPLETE_GRAPH and masking_tables.graph_guard(4, 6) is Guard.SECAGG_PLUS_GRAPH
    usable = functools.partial(masking_tables.start_round_guard, epoch=1, shared=("a", "b", "c"), rounds_per_epoch=3)
    assert usable(3, ("a", "b")) is Guard.SAME_EPOCH
    assert usable(4, ("a", "b")) is Guard.NEW_EPOCH and usable(2, ("a", "d")) is Guard.NEW_EPOCH
    assert masking_tables.start_round_guard(2, ("a",), epoch=None, shared=(), rounds_per_epoch=3) is Guard.NEW_EPOCH
    plain = UnmaskRequest(federation_id="f", round=1, alive=("a", "b", "c"), dropped=(), signatures={})
    assert masking_tables.unmask_guard(plain, sparse_epoch=False) is Guard.NOBODY_DROPPED
    assert masking_tables.unmask_guard(plain, sparse_epoch=True) is Guard.UNCHECKED_SECAGG_PLUS
    dropped = UnmaskRequest(federation_id="f", round=1, alive=("a", "b", "c"), dropped=("d",), signatures={})
    assert masking_tables.unmask_guard(dropped, sparse_epoch=False) is Guard.AFTER_CHECK
    assert masking_tables.view_guard((), sparse_epoch=False) is Guard.NOBODY_DROPPED
    assert masking_tables.view_guard(("d",), sparse_epoch=False) is Guard.DROPOUTS_OR_SECAGG_PLUS
    assert masking_tables.view_guard((), sparse_epoch=True) is Guard.DROPOUTS_OR_SECAGG_PLUS


# -- runs replay from seeds -------------------------------------------------------------------------------------

IDS = tuple(f"n{i}" for i in range(7))


def seeded_run(seed):
    """Four rounds: a SecAgg+ epoch with a dropout, the steady state, a round the server aborts (too few inputs) and
    the new session after it. Returns the transcript bytes and each round's outcome (or the abort's reason)."""
    fed = MaskingFederation.provision(IDS, MaskingParameters(degree=4, rounds_per_epoch=2), seed=seed)
    rng = np.random.default_rng(0)
    results = []
    for round_, dropouts in ((1, {"n3": "masked_input"}), (2, None), (3, {v: "masked_input" for v in IDS[:5]}), (4, None)):
        try:
            fed.run_round(round_, {v: rng.normal(size=4) for v in IDS}, dropouts=dropouts)
            outcome = fed.server.outcome
            results.append((outcome.contributors, outcome.aggregate.tobytes()))
        except ProtocolAborted as exc:
            results.append((exc.party, exc.stage, exc.reason))
    return [(r.round, r.stage, r.sender, r.receiver, r.kind, r.data) for r in fed.transcript], results, fed


def test_a_seeded_run_replays_byte_for_byte_server_included():
    """The server draws nothing random (its docstring says so); with seeded nodes two runs are identical."""
    first, first_results, fed = seeded_run(5)
    second, second_results, _ = seeded_run(5)
    assert first == second and first_results == second_results
    assert first_results[2][:2] == ("server", "masked_input")  # the abort is part of the replay
    assert fed.server.state == "idle" and fed.server.outcome.round == 4  # a new session after the abort
    adverts = sorted({r for r, _, _, _, kind, _ in first if kind == "KeyAdvertisement"})
    assert adverts == [1, 3, 4]  # K = 2: round 3 opens an epoch; round 4 another, the aborted session's keys unused
    other, _, _ = seeded_run(6)
    assert other != first


def test_the_federation_opens_a_new_server_session_only_after_a_security_stop():
    fed = MaskingFederation.provision(IDS[:5], MaskingParameters(rounds_per_epoch=3), seed=1)
    server = fed.server
    fed.run_round(1, {v: np.ones(2) for v in IDS[:5]}, dropouts={"n4": "advertise_keys"})
    assert fed.server is server  # a dropout is not an error
    with pytest.raises(ProtocolAborted):
        fed.run_round(2, {v: np.ones(2) for v in IDS[:5]}, dropouts={v: "masked_input" for v in IDS[:3]})
    assert server.aborted and fed.server is not server and fed.server.state == "idle"
    with pytest.raises(LocalProtocolError, match="start a new session"):
        server.start_round(3, 2)
