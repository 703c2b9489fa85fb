"""The transition tables of secagg-v1 (SPEC section 5): data, not code.

:data:`NODE_TRANSITIONS` and :data:`SERVER_TRANSITIONS` drive :class:`~.node.MaskingNode` and
:class:`~.server.MaskingServer`; :func:`transition_tables_markdown` generates the tables SPEC.md embeds.
"""

from __future__ import annotations

from geofed_secure.secagg.masking.messages import (
    KeyRoster,
    Message,
    RoundStart,
    UnmaskRequest,
)
from geofed_secure.secagg.masking.spec import is_sparse

NODE_TRANSITIONS: dict[str, dict[str, str]] = {
    "ready": {"RoundStart(new epoch)": "advertised", "RoundStart(same epoch)": "masked"},
    "advertised": {"KeyRoster(complete graph)": "shared", "KeyRoster(SecAgg+ graph)": "revealed"},
    "revealed": {"GraphSeeds": "shared"},
    "shared": {"ShareDelivery": "masked"},
    "masked": {"ConsistencyRequest": "signed", "UnmaskRequest(nobody dropped)": "ready"},
    "signed": {"UnmaskRequest(after check)": "ready"},
    "aborted": {},
}


def node_event(message: Message, degree: int | None = None, *, sparse_epoch: bool = False) -> str:
    """The event a server message represents for a node (the keys of :data:`NODE_TRANSITIONS`).

    ``degree`` is the provisioned SecAgg+ degree: it decides whether a roster needs a graph-seed reveal.
    ``sparse_epoch``: the node's current epoch uses a SecAgg+ graph, where an unchecked unmask is no legal event
    (share holders differ between owners, so only a view every survivor signed may be unmasked, SPEC 5.5).
    """
    if isinstance(message, RoundStart):
        return "RoundStart(new epoch)" if message.epoch == message.round else "RoundStart(same epoch)"
    if isinstance(message, KeyRoster):
        sparse = is_sparse(degree, len(message.advertisements))
        return "KeyRoster(SecAgg+ graph)" if sparse else "KeyRoster(complete graph)"
    if isinstance(message, UnmaskRequest):
        if message.dropped or message.signatures:
            return "UnmaskRequest(after check)"
        return "UnmaskRequest(unchecked, SecAgg+ epoch)" if sparse_epoch else "UnmaskRequest(nobody dropped)"
    return type(message).__name__


SERVER_TRANSITIONS: dict[str, dict[str, str]] = {
    "idle": {"start_round(new epoch)": "collect_advertisements", "start_round(same epoch)": "collect_inputs"},
    "collect_advertisements": {"KeyAdvertisement": "collect_advertisements",
                               "close_stage(complete graph)": "collect_shares", "close_stage(SecAgg+ graph)": "collect_reveals"},
    "collect_reveals": {"GraphSeedReveal": "collect_reveals", "close_stage": "collect_shares"},
    "collect_shares": {"ShareBundle": "collect_shares", "close_stage": "collect_inputs"},
    "collect_inputs": {"MaskedInput": "collect_inputs", "close_stage(nobody dropped)": "collect_unmask",
                       "close_stage(dropouts or SecAgg+)": "collect_signatures"},
    "collect_signatures": {"ConsistencySignature": "collect_signatures", "close_stage": "collect_unmask"},
    "collect_unmask": {"UnmaskResponse": "collect_unmask", "close_stage": "idle"},
    "aborted": {"start_round(new epoch)": "collect_advertisements"},
}
# Any state may also take the local event ``abandon_round`` (the driver gives up on the round) -> aborted.

SERVER_STAGE = {"collect_advertisements": "advertise_keys", "collect_reveals": "graph_seed", "collect_shares": "share_keys", "collect_inputs": "masked_input",
                "collect_signatures": "consistency_check", "collect_unmask": "unmask", "idle": "idle", "aborted": "aborted"}


def transition_tables_markdown() -> str:
    """The node and server state tables as Markdown; SPEC.md embeds exactly this text (a test checks it)."""
    lines = ["Node (`NODE_TRANSITIONS`; any other event aborts the node):", "",
             "| state | event | next state |", "|---|---|---|"]
    lines += [f"| {s} | {e} | {t} |" for s, events in NODE_TRANSITIONS.items() for e, t in events.items()]
    lines += ["", "Server (`SERVER_TRANSITIONS`; a node message not listed for the state is refused with MessageError):", "",
              "| state | event | next state |", "|---|---|---|"]
    lines += [f"| {s} | {e} | {t} |" for s, events in SERVER_TRANSITIONS.items() for e, t in events.items()]
    return "\n".join(lines) + "\n"
