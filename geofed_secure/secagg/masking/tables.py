"""The transition tables of secagg-v1 (SPEC sections 5 and 8), their guards and the refusal rule: data, not code.

:data:`NODE_TRANSITIONS` and :data:`SERVER_TRANSITIONS` drive :class:`~.node.MaskingNode` and
:class:`~.server.MaskingServer` through :class:`~geofed_secure.secagg.machine.StateMachine`;
:func:`transition_tables_markdown` generates the tables SPEC.md embeds.

An event is one message type or one call of the driver. Where a (state, event) leads to one of two states, the
table has one row per :class:`Guard` value, keyed ``(event, guard)``; the guard functions below decide which value
holds (pure functions of the message and what the machine holds), and :data:`GUARD_RULES` lists them for the SPEC.
A guard value without a row is refused like an event without one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from enum import StrEnum
from types import MappingProxyType

from geofed_secure.errors import GeofedError
from geofed_secure.secagg.machine import Role, rows
from geofed_secure.secagg.machine import refusal as refusal_rule
from geofed_secure.secagg.masking.messages import (
    ConsistencyRequest,
    ConsistencySignature,
    GraphSeedReveal,
    GraphSeeds,
    KeyAdvertisement,
    KeyRoster,
    MaskedInput,
    Message,
    RoundStart,
    ShareBundle,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from geofed_secure.secagg.masking.spec import is_sparse


class NodeState(StrEnum):
    READY = "ready"
    ADVERTISED = "advertised"
    REVEALED = "revealed"
    SHARED = "shared"
    MASKED = "masked"
    SIGNED = "signed"
    ABORTED = "aborted"


class NodeEvent(StrEnum):
    """What a node sees: a server message (by type) or its driver's ``abandon_round``."""

    ROUND_START = "RoundStart"
    KEY_ROSTER = "KeyRoster"
    GRAPH_SEEDS = "GraphSeeds"
    SHARE_DELIVERY = "ShareDelivery"
    CONSISTENCY_REQUEST = "ConsistencyRequest"
    UNMASK_REQUEST = "UnmaskRequest"
    ABANDON_ROUND = "abandon_round"


class ServerState(StrEnum):
    IDLE = "idle"
    COLLECT_ADVERTISEMENTS = "collect_advertisements"
    COLLECT_REVEALS = "collect_reveals"
    COLLECT_SHARES = "collect_shares"
    COLLECT_INPUTS = "collect_inputs"
    COLLECT_SIGNATURES = "collect_signatures"
    COLLECT_UNMASK = "collect_unmask"
    ABORTED = "aborted"


class ServerEvent(StrEnum):
    """What the server sees: a node message (by type) or its driver's call."""

    START_ROUND = "start_round"
    KEY_ADVERTISEMENT = "KeyAdvertisement"
    GRAPH_SEED_REVEAL = "GraphSeedReveal"
    SHARE_BUNDLE = "ShareBundle"
    MASKED_INPUT = "MaskedInput"
    CONSISTENCY_SIGNATURE = "ConsistencySignature"
    UNMASK_RESPONSE = "UnmaskResponse"
    CLOSE_STAGE = "close_stage"
    ABANDON_ROUND = "abandon_round"


class Guard(StrEnum):
    """The condition that picks one row of a (state, event) with two (see :data:`GUARD_RULES`)."""

    NEW_EPOCH = "new epoch"
    SAME_EPOCH = "same epoch"
    COMPLETE_GRAPH = "complete graph"
    SECAGG_PLUS_GRAPH = "SecAgg+ graph"
    NOBODY_DROPPED = "nobody dropped"
    UNCHECKED_SECAGG_PLUS = "unchecked, SecAgg+ epoch"
    AFTER_CHECK = "after check"
    DROPOUTS_OR_SECAGG_PLUS = "dropouts or SecAgg+"


N, NE, G = NodeState, NodeEvent, Guard
NODE_TRANSITIONS: Mapping[NodeState, Mapping[NodeEvent | tuple[NodeEvent, Guard], NodeState]] = MappingProxyType({
    N.READY: {(NE.ROUND_START, G.NEW_EPOCH): N.ADVERTISED, (NE.ROUND_START, G.SAME_EPOCH): N.MASKED,
              NE.ABANDON_ROUND: N.READY},
    N.ADVERTISED: {(NE.KEY_ROSTER, G.COMPLETE_GRAPH): N.SHARED, (NE.KEY_ROSTER, G.SECAGG_PLUS_GRAPH): N.REVEALED,
                   NE.ABANDON_ROUND: N.READY},
    N.REVEALED: {NE.GRAPH_SEEDS: N.SHARED, NE.ABANDON_ROUND: N.READY},
    N.SHARED: {NE.SHARE_DELIVERY: N.MASKED, NE.ABANDON_ROUND: N.READY},
    N.MASKED: {NE.CONSISTENCY_REQUEST: N.SIGNED, (NE.UNMASK_REQUEST, G.NOBODY_DROPPED): N.READY, NE.ABANDON_ROUND: N.READY},
    N.SIGNED: {(NE.UNMASK_REQUEST, G.AFTER_CHECK): N.READY, NE.ABANDON_ROUND: N.READY},
    N.ABORTED: {},
})
NODE_LOCAL_EVENTS = frozenset({NodeEvent.ABANDON_ROUND})

S, SE = ServerState, ServerEvent
SERVER_TRANSITIONS: Mapping[ServerState, Mapping[ServerEvent | tuple[ServerEvent, Guard], ServerState]] = MappingProxyType({
    S.IDLE: {(SE.START_ROUND, G.NEW_EPOCH): S.COLLECT_ADVERTISEMENTS, (SE.START_ROUND, G.SAME_EPOCH): S.COLLECT_INPUTS,
             SE.ABANDON_ROUND: S.IDLE},
    S.COLLECT_ADVERTISEMENTS: {SE.KEY_ADVERTISEMENT: S.COLLECT_ADVERTISEMENTS,
                               (SE.CLOSE_STAGE, G.COMPLETE_GRAPH): S.COLLECT_SHARES,
                               (SE.CLOSE_STAGE, G.SECAGG_PLUS_GRAPH): S.COLLECT_REVEALS, SE.ABANDON_ROUND: S.IDLE},
    S.COLLECT_REVEALS: {SE.GRAPH_SEED_REVEAL: S.COLLECT_REVEALS, SE.CLOSE_STAGE: S.COLLECT_SHARES, SE.ABANDON_ROUND: S.IDLE},
    S.COLLECT_SHARES: {SE.SHARE_BUNDLE: S.COLLECT_SHARES, SE.CLOSE_STAGE: S.COLLECT_INPUTS, SE.ABANDON_ROUND: S.IDLE},
    S.COLLECT_INPUTS: {SE.MASKED_INPUT: S.COLLECT_INPUTS, (SE.CLOSE_STAGE, G.NOBODY_DROPPED): S.COLLECT_UNMASK,
                       (SE.CLOSE_STAGE, G.DROPOUTS_OR_SECAGG_PLUS): S.COLLECT_SIGNATURES, SE.ABANDON_ROUND: S.IDLE},
    S.COLLECT_SIGNATURES: {SE.CONSISTENCY_SIGNATURE: S.COLLECT_SIGNATURES, SE.CLOSE_STAGE: S.COLLECT_UNMASK,
                           SE.ABANDON_ROUND: S.IDLE},
    S.COLLECT_UNMASK: {SE.UNMASK_RESPONSE: S.COLLECT_UNMASK, SE.CLOSE_STAGE: S.IDLE, SE.ABANDON_ROUND: S.IDLE},
    S.ABORTED: {},
})
SERVER_LOCAL_EVENTS = frozenset({ServerEvent.START_ROUND, ServerEvent.CLOSE_STAGE, ServerEvent.ABANDON_ROUND})
del N, NE, G, S, SE

SERVER_STAGE: Mapping[ServerState, str] = MappingProxyType({
    ServerState.COLLECT_ADVERTISEMENTS: "advertise_keys", ServerState.COLLECT_REVEALS: "graph_seed",
    ServerState.COLLECT_SHARES: "share_keys", ServerState.COLLECT_INPUTS: "masked_input",
    ServerState.COLLECT_SIGNATURES: "consistency_check", ServerState.COLLECT_UNMASK: "unmask", ServerState.IDLE: "idle",
    ServerState.ABORTED: "aborted"})


# -- events -----------------------------------------------------------------------------------------------
NODE_EVENT_OF: Mapping[type, NodeEvent] = MappingProxyType({
    RoundStart: NodeEvent.ROUND_START, KeyRoster: NodeEvent.KEY_ROSTER, GraphSeeds: NodeEvent.GRAPH_SEEDS,
    ShareDelivery: NodeEvent.SHARE_DELIVERY, ConsistencyRequest: NodeEvent.CONSISTENCY_REQUEST,
    UnmaskRequest: NodeEvent.UNMASK_REQUEST})
SERVER_EVENT_OF: Mapping[type, ServerEvent] = MappingProxyType({
    KeyAdvertisement: ServerEvent.KEY_ADVERTISEMENT, GraphSeedReveal: ServerEvent.GRAPH_SEED_REVEAL,
    ShareBundle: ServerEvent.SHARE_BUNDLE, MaskedInput: ServerEvent.MASKED_INPUT,
    ConsistencySignature: ServerEvent.CONSISTENCY_SIGNATURE, UnmaskResponse: ServerEvent.UNMASK_RESPONSE})


def node_event(message: Message) -> NodeEvent | None:
    """The event a server message is for a node (None: not a message a server sends)."""
    return NODE_EVENT_OF.get(type(message))


# -- guards -----------------------------------------------------------------------------------------------
def round_start_guard(start: RoundStart) -> Guard:
    """NEW_EPOCH when ``start.epoch == start.round`` (the server asks for fresh keys), else SAME_EPOCH (SPEC 5)."""
    return Guard.NEW_EPOCH if start.epoch == start.round else Guard.SAME_EPOCH


def start_round_guard(round_: int, cohort: Collection[str], *, epoch: int | None, shared: Collection[str],
                      rounds_per_epoch: int) -> Guard:
    """SAME_EPOCH when the last epoch set up (``epoch``, None: none usable) still serves ``round_`` and every cohort
    node shared its keys in it (``shared``), else NEW_EPOCH (SPEC 7)."""
    usable = epoch is not None and round_ - epoch < rounds_per_epoch and set(cohort) <= set(shared)
    return Guard.SAME_EPOCH if usable else Guard.NEW_EPOCH


def graph_guard(degree: int | None, members: int) -> Guard:
    """SECAGG_PLUS_GRAPH when the provisioned degree leaves some of the ``members`` out of a node's neighbourhood
    (``is_sparse``: a graph-seed reveal follows the roster, SPEC 5.2), else COMPLETE_GRAPH."""
    return Guard.SECAGG_PLUS_GRAPH if is_sparse(degree, members) else Guard.COMPLETE_GRAPH


def unmask_guard(request: UnmaskRequest, *, sparse_epoch: bool) -> Guard:
    """For a node: AFTER_CHECK when the request lists dropped nodes or carries signatures; an unchecked request is
    NOBODY_DROPPED on a complete graph and UNCHECKED_SECAGG_PLUS in a SecAgg+ epoch (never legal there, SPEC 5.5)."""
    if request.dropped or request.signatures:
        return Guard.AFTER_CHECK
    return Guard.UNCHECKED_SECAGG_PLUS if sparse_epoch else Guard.NOBODY_DROPPED


def view_guard(dropped: Collection[str], *, sparse_epoch: bool) -> Guard:
    """For the server closing the masked inputs: NOBODY_DROPPED (the unchecked fast path) when no node whose shares
    went out is missing and the graph is complete, else DROPOUTS_OR_SECAGG_PLUS (the consistency check, SPEC 5.5)."""
    return Guard.DROPOUTS_OR_SECAGG_PLUS if dropped or sparse_epoch else Guard.NOBODY_DROPPED


# (guard, function that decides it, who, when it holds): rendered into SPEC section 8.
GUARD_RULES: tuple[tuple[Guard, str, str, str], ...] = (
    (Guard.NEW_EPOCH, "round_start_guard", "node", "`RoundStart.epoch == RoundStart.round`"),
    (Guard.SAME_EPOCH, "round_start_guard", "node", "`RoundStart.epoch != RoundStart.round`"),
    (Guard.NEW_EPOCH, "start_round_guard", "server",
     "no epoch set up, or it has served K rounds, or a cohort node did not share keys in it (also after `abandon_round`)"),
    (Guard.SAME_EPOCH, "start_round_guard", "server",
     "the last epoch serves this round and every cohort node shared keys in it"),
    (Guard.COMPLETE_GRAPH, "graph_guard", "both", "`k >= M - 1` (no degree, or a degree covering the M roster members)"),
    (Guard.SECAGG_PLUS_GRAPH, "graph_guard", "both", "`k < M - 1`: a graph-seed reveal follows the roster"),
    (Guard.NOBODY_DROPPED, "unmask_guard", "node", "no `dropped`, no `signatures`, complete-graph epoch"),
    (Guard.UNCHECKED_SECAGG_PLUS, "unmask_guard", "node", "no `dropped`, no `signatures`, SecAgg+ epoch"),
    (Guard.AFTER_CHECK, "unmask_guard", "node", "`dropped` or `signatures` not empty"),
    (Guard.NOBODY_DROPPED, "view_guard", "server",
     "every node whose shares went out sent its masked input, complete graph"),
    (Guard.DROPOUTS_OR_SECAGG_PLUS, "view_guard", "server", "a dropout, or a SecAgg+ epoch"),
)


# -- refusals ---------------------------------------------------------------------------------------------
def refusal(machine: str, state: StrEnum, event: StrEnum) -> tuple[type[GeofedError], StrEnum]:
    """What a refused ``event`` raises in ``state`` and the state it leaves (``machine``: "node" or "server").

    The rule of :func:`geofed_secure.secagg.machine.refusal`: a node aborts on any out-of-order server message
    (``ProtocolAborted``); the server refuses an out-of-order node message with ``RemoteProtocolError`` and keeps
    its state (the availability rule, as for a node message that fails a check); our own out-of-order call raises
    ``LocalProtocolError`` and aborts; anything on an aborted session raises ``LocalProtocolError``.
    """
    if Role(machine) is Role.NODE:
        return refusal_rule(Role.NODE, state, event, local=event in NODE_LOCAL_EVENTS, aborted=NodeState.ABORTED)
    return refusal_rule(Role.SERVER, state, event, local=event in SERVER_LOCAL_EVENTS, aborted=ServerState.ABORTED)


# -- SPEC -------------------------------------------------------------------------------------------------
def _refused(machine: str, state: StrEnum, event: StrEnum) -> str:
    error, after = refusal(machine, state, event)
    then = f"-> {after}" if after != state else "stays aborted" if after in (NodeState.ABORTED, ServerState.ABORTED) else "state kept"
    return f"| `{error.__name__}` | {then} |"


def transition_tables_markdown() -> str:
    """The node and server state tables, the refusal rule and the guards as Markdown; SPEC.md embeds exactly this
    text (a test checks it)."""
    lines: list[str] = []
    for machine, title, table, ready, peer, local, sender in (
            ("node", "Node (`NODE_TRANSITIONS`, `MaskingNode`)", NODE_TRANSITIONS, NodeState.READY,
             NodeEvent.UNMASK_REQUEST, NodeEvent.ABANDON_ROUND, "server"),
            ("server", "Server (`SERVER_TRANSITIONS`, `MaskingServer`)", SERVER_TRANSITIONS, ServerState.IDLE,
             ServerEvent.MASKED_INPUT, ServerEvent.CLOSE_STAGE, "node")):
        lines += [f"{title}; a row with a guard applies only when the guard holds:", "",
                  "| state | event | guard | next state |", "|---|---|---|---|"]
        lines += [f"| {state} | {event} | {guard or ''} | {target} |"
                  for state in table for event, guard, target in rows(table, state)]
        lines += ["", f"Refused by the {machine} (`refusal(\"{machine}\", state, event)`):", "",
                  "| what | raises | then |", "|---|---|---|",
                  f"| a {sender} message without a row in the state (or whose guard has none) {_refused(machine, ready, peer)}",
                  f"| a call of the driver without a row in the state {_refused(machine, ready, local)}",
                  f"| anything, once aborted {_refused(machine, type(ready).ABORTED, peer)}", ""]
    lines += ["Guards (pure functions in `tables.py`; the machine computes the guard, the table picks the row):", "",
              "| guard | decided by | for | holds when |", "|---|---|---|---|"]
    lines += [f"| {guard} | `{function}` | {who} | {rule} |" for guard, function, who, rule in GUARD_RULES]
    return "\n".join(lines) + "\n"
