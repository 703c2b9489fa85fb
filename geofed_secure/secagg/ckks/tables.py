"""The transition tables of ckks-v1 (SPEC section 5) and the refusal rule; SPEC.md's table is generated here.

ckks-v1 has no guards: each (state, event) leads to at most one state, so the tables are plain
``{State: {Event: State}}`` for :class:`~geofed_secure.secagg.machine.StateMachine`.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from geofed_secure.errors import GeofedError
from geofed_secure.secagg.machine import Role, Table
from geofed_secure.secagg.machine import refusal as refusal_rule


class NodeState(StrEnum):
    READY = "ready"
    UPLOADED = "uploaded"
    ABORTED = "aborted"


class NodeEvent(StrEnum):
    """What a node sees: one of the server's two messages."""

    ROUND_START = "CkksRoundStart"
    AGGREGATE = "CkksAggregate"


class ServerState(StrEnum):
    IDLE = "idle"
    COLLECTING = "collecting"
    ABORTED = "aborted"


class ServerEvent(StrEnum):
    """What the server sees: its driver's calls and the nodes' uploads, in the order of a round."""

    START_ROUND = "start_round"
    ENCRYPTED_INPUT = "CkksEncryptedInput"
    FINISH = "finish"


# Node: one upload per round; a new round may start while an aggregate is still awaited (the server gave up on
# the previous round, e.g. below the floor).
NODE_TRANSITIONS: Mapping[NodeState, Mapping[NodeEvent, NodeState]] = MappingProxyType({
    NodeState.READY: {NodeEvent.ROUND_START: NodeState.UPLOADED},
    NodeState.UPLOADED: {NodeEvent.ROUND_START: NodeState.UPLOADED, NodeEvent.AGGREGATE: NodeState.READY},
    NodeState.ABORTED: {},
})
NODE_PEER_EVENTS = tuple(NodeEvent)

SERVER_TRANSITIONS: Mapping[ServerState, Mapping[ServerEvent, ServerState]] = MappingProxyType({
    ServerState.IDLE: {ServerEvent.START_ROUND: ServerState.COLLECTING},
    ServerState.COLLECTING: {ServerEvent.ENCRYPTED_INPUT: ServerState.COLLECTING, ServerEvent.FINISH: ServerState.IDLE},
    ServerState.ABORTED: {},
})
SERVER_PEER_EVENTS = (ServerEvent.ENCRYPTED_INPUT,)
SERVER_LOCAL_EVENTS = (ServerEvent.START_ROUND, ServerEvent.FINISH)


def refusal(machine: str, state: StrEnum, event: StrEnum) -> tuple[type[GeofedError], StrEnum]:
    """What an illegal ``event`` in ``state`` raises, and the state it leaves (``machine``: "node" or "server").

    The rule of :func:`geofed_secure.secagg.machine.refusal`: any call on an aborted session is our own misuse
    (``LocalProtocolError``). A node aborts on any out-of-order server message, its only peer
    (``ProtocolAborted``). The server never lets one node end a round for everyone: an out-of-order upload is
    dropped with ``RemoteProtocolError`` and the state is kept. Our own out-of-order call raises
    ``LocalProtocolError`` and aborts (h11's rule).
    """
    if Role(machine) is Role.NODE:
        return refusal_rule(Role.NODE, state, event, local=False, aborted=NodeState.ABORTED)
    return refusal_rule(Role.SERVER, state, event, local=event in SERVER_LOCAL_EVENTS, aborted=ServerState.ABORTED)


def transition_table_markdown() -> str:
    """The SPEC's state tables, generated from :data:`NODE_TRANSITIONS`, :data:`SERVER_TRANSITIONS` and
    :func:`refusal`: every (state, event) pair, legal or refused."""
    server_events = (SERVER_LOCAL_EVENTS[0], *SERVER_PEER_EVENTS, *SERVER_LOCAL_EVENTS[1:])  # in the order of a round
    return "\n".join([*_machine_lines("node", NODE_TRANSITIONS, NODE_PEER_EVENTS, NODE_PEER_EVENTS),
                      *_machine_lines("server", SERVER_TRANSITIONS, server_events, SERVER_PEER_EVENTS)]).rstrip("\n") + "\n"


def _machine_lines(machine: str, table: Table, events: tuple[StrEnum, ...], peer: tuple[StrEnum, ...]) -> list[str]:
    lines = [f"#### {machine}", "", "| state | event | from | outcome |", "|---|---|---|---|"]
    for state, moves in table.items():
        for event in events:
            source = "peer" if event in peer else "local"
            if event in moves:
                outcome = f"-> `{moves[event]}`"
            else:
                error, after = refusal(machine, state, event)
                outcome = f"refused: `{error.__name__}`, " + (f"stays `{after}`" if after == state else f"-> `{after}`")
            lines.append(f"| `{state}` | `{event}` | {source} | {outcome} |")
    return [*lines, ""]
