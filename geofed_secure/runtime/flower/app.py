"""The Flower driver: a ServerApp and a ClientApp over Flower's Message API that run the project's own round.

Nothing here re-implements a round. The ServerApp runs :class:`~geofed_secure.runtime.round.FederatedRound` (the
round the in-process simulator runs) over a :class:`FlowerLink`; the ClientApp answers through a
:class:`~geofed_secure.runtime.flower.site.Site`, i.e. the same :class:`~geofed_secure.runtime.round.NodeSide`.
Payloads are the project's canonical wire bytes (``geofed_secure.wire.round``) in one Flower ``ConfigRecord``
(:data:`RECORD`: ``wire`` holds the bytes, ``answer`` what kind of answer they are); Flower only carries them.

Messages:

- ``query`` (discovery): the ServerApp asks every connected SuperNode which federation node it is; the ClientApp
  answers its ``node-id`` node-config value. The ServerApp refuses a SuperNode that is not a node of the
  configuration or a node that connects twice.
- ``train`` (one per node per round, ``group_id`` = the round): the broadcast in (with ``secure``: the round's first
  secure-aggregation message), the node's answer back (``answer``: its kind; ``wire``: an encoded NodeUpdate, a
  protocol message, or a FailureNotice carrying only a code; ``stage``: the protocol stage of a protocol answer).
- ``train.secagg`` (``group_id`` = the round): one later secure-aggregation stage; node-to-node protocol messages
  (sealed key shares) travel through the ServerApp as through any server.

Round trips per round: one with clear uploads; two in a steady-state secagg-v1 round (the broadcast with the
RoundStart, answered by the masked input; then the unmask) and in a ckks-v1 round (the broadcast with the round start,
answered by the ciphertext; then one contributor's decryption); more when keys are set up or nodes drop
(protocols/secagg-v1/SPEC.md section 5). Flower's own SecAgg+ workflow needs four after the training round.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import safetensors.numpy
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from geofed_secure.config import RunConfig
from geofed_secure.errors import CheckpointError, ConfigError, GeofedError, MessageError
from geofed_secure.runtime.flower.site import Site, SiteState
from geofed_secure.runtime.outdir import check_resumable, claim_for_new_run, output_folder
from geofed_secure.runtime.round import Answer, FederatedRound, NodeAnswer, Reporter, SilentReporter
from geofed_secure.runtime.secure import SecureInputLayout
from geofed_secure.runtime.secure.keys import server_aggregator
from geofed_secure.runtime.transcript import SERVER, Transcript
from geofed_secure.server.server import Server
from geofed_secure.wire.round import RoundBroadcast, decode_message, encode_message

RECORD = "geofed"  # the ConfigRecord that carries our bytes
QUERY, TRAIN, SECAGG_ACTION = "query", "train", "secagg"
SECAGG = f"{TRAIN}.{SECAGG_ACTION}"
DEFAULT_TIMEOUT_S = 600.0
REPLY_POLL_S = 0.2  # how often the ServerApp asks the SuperLink for replies (flwr's send_and_receive: every 3 s)


def round_trip(grid: Grid, messages: list[Message], *, timeout: float, poll: float = REPLY_POLL_S) -> list[Message]:
    """Push ``messages`` and pull their replies every ``poll`` seconds until all arrived or ``timeout`` passed.

    flwr 1.41's ``Grid.send_and_receive`` does the same but sleeps 3 s between pulls (hard-coded), so every round
    trip waits up to 3 s for replies that are already there; a secure round has two. A grid that only delivers whole
    round trips (the in-process grid) is asked with ``send_and_receive``."""
    try:
        pending = set(grid.push_messages(messages))
    except NotImplementedError:
        return list(grid.send_and_receive(messages, timeout=timeout))
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    while pending:
        arrived = list(grid.pull_messages(pending))
        replies.extend(arrived)
        pending.difference_update(m.metadata.reply_to_message_id for m in arrived)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(poll)
    return replies


def pack(**values: bytes | str | int) -> RecordDict:
    return RecordDict({RECORD: ConfigRecord(dict(values))})


def _value(message: Message, key: str, kind: type) -> object:
    record = message.content.config_records.get(RECORD)
    value = None if record is None else record.get(key)
    if not isinstance(value, kind):
        raise MessageError(f"Flower message without a {kind.__name__} '{key}' in record '{RECORD}'")
    return value


def unpack_bytes(message: Message, key: str) -> bytes:
    """``message``'s bytes value ``key``; missing or of another type: a MessageError naming it."""
    value = _value(message, key, bytes)
    assert isinstance(value, bytes)
    return value


def unpack_str(message: Message, key: str) -> str:
    """``message``'s string value ``key``; missing or of another type: a MessageError naming it."""
    value = _value(message, key, str)
    assert isinstance(value, str)
    return value


class FlowerLink:
    """:class:`~geofed_secure.runtime.round.NodeLink` over a Flower ``Grid``: the whole cohort's broadcasts go out in
    one round trip (:func:`round_trip`); a node whose reply does not arrive in ``timeout`` seconds (or arrives as a Flower error)
    counts as dropped."""

    def __init__(self, grid: Grid, flower_ids: Mapping[str, int], *, timeout: float = DEFAULT_TIMEOUT_S,
                 reporter: Reporter | None = None, config: RunConfig | None = None) -> None:
        self.grid = grid
        self.flower_ids = dict(flower_ids)
        self.timeout = timeout
        self.reporter = reporter or SilentReporter()
        self.config = config  # for re-discovery of SuperNodes that come back (None: the mapping never changes)
        self.silent: set[str] = set()  # nodes that answered nothing in the last round trip

    def rediscover(self, round_: int) -> None:
        """A SuperNode that restarts comes back under a new Flower node id: before each round, ask every connected
        SuperNode the link does not know which node it is. Its claim replaces the node's old SuperNode only when that
        one is gone (no longer connected, or silent in the last round trip); any other claim is ignored and logged.
        Who may connect at all is Flower's business: in production run the SuperLink with TLS and SuperNode
        authentication, so that only the sites' own SuperNodes can claim a node."""
        if self.config is None:
            return
        connected = set(self.grid.get_node_ids())
        unknown = sorted(connected - set(self.flower_ids.values()))
        if not unknown:
            return
        for flower_id, (claimed, _) in _claims(self.grid, self.config, unknown, self.timeout).items():
            old = self.flower_ids.get(claimed)
            if old is None or (old in connected and claimed not in self.silent):
                self.reporter.log(f"round {round_}: ignored SuperNode {flower_id}, which claims node {claimed!r} "
                                  + ("(not a node of this federation)" if old is None else "while its SuperNode is active"))
                continue
            self.flower_ids[claimed] = flower_id
            self.silent.discard(claimed)
            self.reporter.log(f"round {round_}: node {claimed} is back (SuperNode {flower_id})")

    def exchange(self, round_: int, broadcasts: Mapping[str, RoundBroadcast], transcript: Transcript, *,
                 secure_layout: SecureInputLayout | None, secure_open: Mapping[str, bytes] | None = None
                 ) -> dict[str, NodeAnswer]:
        self.rediscover(round_)
        messages = []
        for node_id, broadcast in broadcasts.items():
            blob = encode_message(broadcast)
            transcript.record(round_, SERVER, node_id, blob, broadcast)
            values: dict[str, bytes | str | int] = {"wire": blob}
            if secure_open is not None and node_id in secure_open:
                values["secure"] = secure_open[node_id]
            messages.append(Message(pack(**values), self.flower_ids[node_id], TRAIN, group_id=str(round_)))
        answers = self._collect(round_, messages, list(broadcasts))
        for node_id, answer in answers.items():  # protocol messages are recorded by the secure aggregator
            if answer.kind in (Answer.UPLOAD, Answer.FAILURE):
                try:
                    transcript.record(round_, node_id, SERVER, answer.blob, decode_message(answer.blob))
                except GeofedError as exc:
                    self.reporter.log(f"round {round_}: {node_id} sent an unreadable answer ({type(exc).__name__}: {exc})")
                    answers[node_id] = NodeAnswer(Answer.UPLOAD, b"")  # the server's decode refuses it: rejected_by_server
        return answers

    def secure_exchange(self, round_: int, messages: Mapping[str, bytes]) -> dict[str, NodeAnswer]:
        out = [Message(pack(wire=blob), self.flower_ids[node_id], SECAGG, group_id=str(round_))
               for node_id, blob in messages.items()]
        return self._collect(round_, out, list(messages))

    def _collect(self, round_: int, messages: list[Message], node_ids: list[str]) -> dict[str, NodeAnswer]:
        """Send ``messages`` in one round trip; each node's answer, or NOTHING when none arrived in time."""
        replies = {m.metadata.src_node_id: m for m in round_trip(self.grid, messages, timeout=self.timeout)}
        answers: dict[str, NodeAnswer] = {}
        for node_id in node_ids:
            reply = replies.get(self.flower_ids[node_id])
            if reply is None or reply.has_error():
                why = (f"no reply within {self.timeout:g} s" if reply is None
                       else f"Flower error {reply.error.code}: {reply.error.reason}")
                self.reporter.log(f"round {round_}: {node_id}: {why}")
                answers[node_id] = NodeAnswer(Answer.NOTHING)
                self.silent.add(node_id)
                continue
            self.silent.discard(node_id)
            try:
                kind = Answer(unpack_str(reply, "answer"))
                blob = unpack_bytes(reply, "wire")
                stage = unpack_str(reply, "stage") if kind in (Answer.SECURE, Answer.REFUSED) else ""
            except (GeofedError, ValueError) as exc:  # ValueError: an unknown answer kind
                self.reporter.log(f"round {round_}: {node_id} sent an unreadable answer ({type(exc).__name__}: {exc})")
                answers[node_id] = NodeAnswer(Answer.UPLOAD, b"")  # the server's decode refuses it: rejected_by_server
                continue
            answers[node_id] = NodeAnswer(kind, blob, stage=stage)
        return answers


def _claims(grid: Grid, config: RunConfig, flower_ids: list[int], timeout: float) -> dict[int, tuple[str, int]]:
    """Ask each SuperNode which node it is and the last round its node trained in (its own disk's answer; 0 for a
    new site): Flower node id -> (claimed node id, last round). A SuperNode that does not answer is left out."""
    queries = [Message(pack(federation=config.federation.id), nid, QUERY, group_id="discovery") for nid in flower_ids]
    claims: dict[int, tuple[str, int]] = {}
    for reply in round_trip(grid, queries, timeout=timeout):
        if reply.has_error():
            continue
        last = _value(reply, "last_round", int)  # a MessageError when missing or not an integer
        assert isinstance(last, int)
        claims[reply.metadata.src_node_id] = (unpack_str(reply, "node_id"), last)
    return claims


def discover(grid: Grid, config: RunConfig, *, timeout: float = DEFAULT_TIMEOUT_S, poll: float = 1.0
             ) -> tuple[dict[str, int], dict[str, int]]:
    """Map each configured node id to its SuperNode: wait until enough SuperNodes are connected, ask each which node
    it is and the last round its node trained in. Returns (Flower node id, last round) per node id. Raises
    ConfigError when a SuperNode claims an unknown or already claimed node, or a node is missing."""
    wanted = {n.id for n in config.nodes}
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < len(wanted):
        if time.monotonic() > deadline:
            raise ConfigError("nodes", f"only {len(list(grid.get_node_ids()))} of {len(wanted)} SuperNodes connected "
                                       f"within {timeout:g} s")
        time.sleep(poll)
    found: dict[str, int] = {}
    last_rounds: dict[str, int] = {}
    for flower_id, (claimed, last) in _claims(grid, config, list(grid.get_node_ids()), timeout).items():
        if claimed not in wanted:
            raise ConfigError("node-id", f"a SuperNode says it is node {claimed!r}, which federation "
                                         f"{config.federation.id!r} does not have")
        if claimed in found:
            raise ConfigError("node-id", f"two SuperNodes both say they are node {claimed!r}")
        found[claimed], last_rounds[claimed] = flower_id, last
    missing = sorted(wanted - set(found))
    if missing:
        raise ConfigError("nodes", f"no SuperNode answered for node(s) {', '.join(missing)}")
    return found, last_rounds


def run_federation(grid: Grid, config: RunConfig, *, anchor_digest: str, initial_state: Mapping[str, np.ndarray],
                   out_dir: str | Path, timeout: float = DEFAULT_TIMEOUT_S, reporter: Reporter | None = None,
                   n_anchors: int = 0, keys_dir: str | Path | None = None, resume: bool = False) -> dict[str, np.ndarray]:
    """The ServerApp's work: discovery, then ``config.federation.rounds`` rounds of the shared round, a transcript
    and a server checkpoint per round in ``out_dir``; returns the final global state (also written to
    ``out_dir/final/global_adapters.safetensors``). ``out_dir`` is locked while the run writes it; a folder that
    already holds a run is refused (OutputFolderError), as ``geofed run`` refuses it without --resume/--overwrite.

    Secure aggregation (``config.secure.protocol`` masking or ckks) needs ``keys_dir`` (the server's key folder,
    :mod:`geofed_secure.runtime.secure.keys`) and ``n_anchors`` (the public anchor count, for the upload layout).

    ``resume``: continue the run in ``out_dir`` from its last verified checkpoint (a ServerApp that stopped or crashed;
    the same configuration, more rounds allowed). The sites kept their nodes; a site whose node already trained in a
    round the server never checkpointed (the ServerApp died after the broadcast) must not train under that round
    number again, so the run skips those round numbers: they are recorded as abandoned in the history, and the next
    round broadcasts the checkpointed global state. The transcript keeps every message of the abandoned round that
    reached it (the server saw them). A new secure-aggregation session starts (a new key epoch)."""
    from geofed_secure.server.checkpoint import CheckpointStore  # torch: imported by the ServerApp only, not by sites

    secure = None
    if config.secure.protocol != "none":
        if keys_dir is None or n_anchors < 2:
            raise ConfigError("keys", f"secure.protocol = {config.secure.protocol!r} on Flower needs the server's key "
                                      "folder (run config keys='<folder>/server', made by geofed deploy keys) and the "
                                      "public anchor count")
        secure = server_aggregator(config, anchor_digest, keys_dir)
    if config.federation.mode != "federated":
        raise ConfigError("federation.mode", "the Flower driver runs federated mode only")
    reporter = reporter or SilentReporter()
    out = Path(out_dir)
    # the folder is locked while the ServerApp writes it and a finished or crashed run in it is never replaced
    with output_folder(out, owner="geofed Flower ServerApp"):
        checkpoints = CheckpointStore(out)
        node_ids = tuple(n.id for n in config.nodes)
        server = Server(federation_id=config.federation.id, anchor_digest=anchor_digest, node_ids=node_ids,
                        global_state=dict(initial_state))
        history: list[dict[str, object]] = []
        if resume:
            check_resumable(out, config.to_dict())
            ckpt = checkpoints.load_latest()
            if ckpt.meta.get("anchor_digest") != anchor_digest:
                raise CheckpointError("the anchor set changed since the checkpoint was written")
            server.load_state_dict(ckpt.server, round_=ckpt.round)
            history = list(ckpt.meta["history"])
            # what crossed the wire after the checkpoint was seen by the server: kept (that round is not run again)
            transcript = Transcript.load(out / "transcript", attach=True)  # refuses another wire version
            reporter.log(f"resumed from the checkpoint of round {ckpt.round}")
        else:
            claim_for_new_run(out, overwrite=False)
            transcript = Transcript(out / "transcript")
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1, sort_keys=True))
        flower_ids, last_rounds = discover(grid, config, timeout=timeout)
        ahead = max(last_rounds.values(), default=0)
        if ahead > server.round:  # sites trained rounds no checkpoint holds: never reuse those round numbers
            for skipped in range(server.round + 1, ahead + 1):
                history.append({"round": skipped, "abandoned": "the ServerApp stopped before this round's checkpoint"})
                reporter.log(f"round {skipped}: abandoned (sites trained in it, no checkpoint holds it); not run again")
            server.load_state_dict(server.state_dict(), round_=ahead)
        link = FlowerLink(grid, flower_ids, timeout=timeout, reporter=reporter, config=config)
        federated_round = FederatedRound(server, link, secure=secure, n_anchors=n_anchors, clip=config.secure.clip,
                                         reporter=reporter, fault_hook=lambda stage, round_, node_id: None, node_logs={})
        for round_ in range(server.round + 1, config.federation.rounds + 1):
            reporter.round_started(round_, config.federation.rounds)
            outcome = federated_round.run(round_, transcript, node_ids)
            history.append({"round": round_, "uploaded": outcome.uploaded,
                            "failures": {k: v.value for k, v in outcome.failures.items()},
                            "clipped_coordinates": outcome.clipped_total})
            checkpoints.save(round_, server.state_dict(), {}, {"history": history, "transcript_records": len(transcript),
                                                               "anchor_digest": anchor_digest})
            reporter.round_done(round_, f"round {round_}: {len(outcome.uploaded)} uploads, "
                                        f"{len(outcome.failures)} node(s) left out")
        (out / "final").mkdir(exist_ok=True)
        safetensors.numpy.save_file(dict(server.global_state), out / "final" / "global_adapters.safetensors")
        (out / "summary.json").write_text(json.dumps(server_summary(config, anchor_digest, history), indent=1))
        return dict(server.global_state)


def server_summary(config: RunConfig, anchor_digest: str, history: list[dict[str, object]]) -> dict[str, object]:
    """``summary.json`` of a Flower run: what the SERVER knows (no evaluation: it holds no node's data), in the
    simulator's layout where the fields mean the same, so ``geofed audit`` (plan ``run = <this folder>``) reads it."""
    sec = config.secure
    secure: dict[str, object] = {"protocol": sec.protocol, "server_sees": {
        "none": "every upload in clear", "masking": "masked vectors and their sum",
        "ckks": "ciphertexts; the sum after a node decrypts it"}[sec.protocol]}
    if sec.protocol != "none":
        secure |= {"clip": sec.clip, "spec": f"protocols/{'secagg' if sec.protocol == 'masking' else 'ckks'}-v1/SPEC.md"}
    return {"federation_id": config.federation.id, "driver": "flower", "mode": config.federation.mode,
            "seed": config.federation.seed, "anchor_digest": anchor_digest,
            "nodes": [{"id": n.id, "modality": n.modality, "paired_modality": n.paired_modality or None}
                      for n in config.nodes],
            "secure_aggregation": secure, "rounds": history, "config": config.to_dict()}


SiteFactory = Callable[[Context], Site]
StateFactory = Callable[[Context], SiteState]


def make_client_app(site_for: SiteFactory, state_for: StateFactory | None = None) -> ClientApp:
    """A ClientApp whose node is ``site_for(context)`` (built afresh for every message, as a SuperNode runs it).
    ``state_for(context)`` (default ``site_for``) gives the site without its node, for secure-aggregation steps."""
    app = ClientApp()
    state_of = state_for or site_for

    @app.query()
    def identify(message: Message, context: Context) -> Message:
        node_id = context.node_config.get("node-id")
        try:
            state = state_of(context)
            node_id, last_round = state.node_id, state.last_round()
        except ConfigError:  # not a node of this federation: the server refuses the claim itself, by name
            last_round = 0
        if not isinstance(node_id, str) or not node_id:
            raise ConfigError("node-id", "start the SuperNode with --node-config \"node-id='<this site's node id>'\"")
        return Message(pack(node_id=node_id, last_round=last_round), reply_to=message)

    def reply(answer: NodeAnswer, message: Message) -> Message:
        return Message(pack(answer=answer.kind.value, wire=answer.blob, stage=answer.stage), reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        site = site_for(context)
        record = message.content.config_records.get(RECORD)
        secure_open = record.get("secure") if record is not None else None
        answer = site.answer(int(message.metadata.group_id), unpack_bytes(message, "wire"),
                             secure_open if isinstance(secure_open, bytes) else None)
        return reply(answer, message)

    @app.train(SECAGG_ACTION)
    def secagg(message: Message, context: Context) -> Message:
        site = state_of(context)
        return reply(site.secure_step(int(message.metadata.group_id), unpack_bytes(message, "wire")), message)

    return app


def make_server_app(config: RunConfig, *, anchor_digest: str, initial_state: Mapping[str, np.ndarray],
                    out_dir: str | Path, timeout: float = DEFAULT_TIMEOUT_S, reporter: Reporter | None = None,
                    n_anchors: int = 0, keys_dir: str | Path | None = None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, config, anchor_digest=anchor_digest, initial_state=initial_state, out_dir=out_dir,
                       timeout=timeout, reporter=reporter, n_anchors=n_anchors, keys_dir=keys_dir)

    return app
