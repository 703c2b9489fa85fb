"""The transition tables of ckks-v1 (SPEC section 5) and the refusal rule; SPEC.md's table is generated here."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from geofed_secure.errors import (
    GeofedError,
    LocalProtocolError,
    MessageError,
    ProtocolAborted,
)

# Node: one upload per round; a new round may start while an aggregate is still awaited (the server gave up on
# the previous round, e.g. below the floor).
NODE_TRANSITIONS: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "ready": {"CkksRoundStart": "uploaded"},
    "uploaded": {"CkksRoundStart": "uploaded", "CkksAggregate": "ready"},
    "aborted": {},
})
NODE_PEER_EVENTS = ("CkksRoundStart", "CkksAggregate")

SERVER_TRANSITIONS: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "idle": {"start_round": "collecting"},
    "collecting": {"CkksEncryptedInput": "collecting", "finish": "idle"},
    "aborted": {},
})
SERVER_PEER_EVENTS = ("CkksEncryptedInput",)
SERVER_LOCAL_EVENTS = ("start_round", "finish")


def refusal(machine: str, state: str, event: str) -> tuple[type[GeofedError], str]:
    """What an illegal ``event`` in ``state`` raises, and the state it leaves (``machine``: "node" or "server").

    Any call on an aborted session is our own misuse. A node aborts on any out-of-order server message (its
    only peer). The server never lets one node end a round for everyone: an out-of-order upload is dropped
    with :class:`MessageError` and the state is kept. Our own out-of-order call aborts (h11's rule).
    """
    if state == "aborted":
        return LocalProtocolError, "aborted"
    if machine == "node":
        return ProtocolAborted, "aborted"
    if event in SERVER_PEER_EVENTS:
        return MessageError, state
    return LocalProtocolError, "aborted"


def transition_table_markdown() -> str:
    """The SPEC's state tables, generated from :data:`NODE_TRANSITIONS`, :data:`SERVER_TRANSITIONS` and
    :func:`refusal`: every (state, event) pair, legal or refused."""
    lines = []
    for machine, table, peer in (("node", NODE_TRANSITIONS, NODE_PEER_EVENTS),
                                 ("server", SERVER_TRANSITIONS, SERVER_PEER_EVENTS)):
        events = peer if machine == "node" else (*SERVER_LOCAL_EVENTS[:1], *peer, *SERVER_LOCAL_EVENTS[1:])
        lines += [f"#### {machine}", "", "| state | event | from | outcome |", "|---|---|---|---|"]
        for state, moves in table.items():
            for event in events:
                source = "peer" if event in peer else "local"
                if event in moves:
                    outcome = f"-> `{moves[event]}`"
                else:
                    error, after = refusal(machine, state, event)
                    outcome = f"refused: `{error.__name__}`, stays `{after}`" if after == state else \
                        f"refused: `{error.__name__}`, -> `{after}`"
                lines.append(f"| `{state}` | `{event}` | {source} | {outcome} |")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
