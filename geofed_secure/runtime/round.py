"""One federated round, written once for every driver (the in-process simulator today, a Flower driver next).

A round has two sides, kept apart so that a driver supplies only the transport between them:

- the NODE side, :class:`NodeSide`: what a site does with the server's messages. It decodes the broadcast,
  trains, and answers with its encoded :class:`~geofed_secure.wire.round.NodeUpdate` (clear uploads), or turns the
  update into its clipped secure input ON THE SITE and answers the round's first secure-aggregation message with
  it (secure uploads: :mod:`geofed_secure.runtime.secure.session`), or answers with a
  :class:`~geofed_secure.wire.round.FailureNotice` carrying only a typed code. Later secure-aggregation messages
  go to :meth:`NodeSide.secure_step`. The error's text and the node's training statistics go to the node's own
  log, never to the server.
- the SERVER side, :class:`FederatedRound`: opens the round on the :class:`~geofed_secure.server.server.Server`
  (and on the secure aggregator, whose first message travels with the broadcast), sends each node its broadcast
  through a :class:`NodeLink`, takes what arrives (or notes that nothing did), runs the secure aggregator's later
  stages through the same link, and closes the round with the clear uploads or the secure sums.

A :class:`NodeLink` is the driver's transport: it carries the broadcast to one node and brings back the node's
:class:`NodeAnswer`, then the secure-aggregation stages. The simulator's link calls a :class:`NodeSide` in the same
process (with fault injection); a Flower link sends the same bytes in Flower messages. The round logic, the
failure codes and what is logged where are the same for both: a steady-state secure round costs two round trips
(the broadcast with the first protocol message, then the unmask), a clear round one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from geofed_secure.errors import FailureCode, GeofedError, MessageError, PrivacyBudgetExceeded, ProtocolAborted
from geofed_secure.runtime.nodelog import NodeLog
from geofed_secure.runtime.secure import FaultHook, NodeSession, SecureAggregator, SecureInputLayout, SecureReply
from geofed_secure.runtime.transcript import SERVER, Transcript
from geofed_secure.server.server import Server
from geofed_secure.wire.round import FailureNotice, NodeUpdate, RoundBroadcast, decode_message, encode_message

if TYPE_CHECKING:  # a node's training stack is imported by whoever builds the node, not by the round
    from geofed_secure.node.node import LocalRoundStats, Node

NODE_LOG = "nodes/{node_id}/log.jsonl"  # relative to the run folder; stands for the node's own disk


class Reporter(Protocol):
    """Progress lines for the operator (the console); they carry only what the server may know."""

    def round_started(self, round_: int, total: int) -> None: ...
    def node_done(self, round_: int, node_id: str, info: str) -> None: ...
    def round_done(self, round_: int, line: str) -> None: ...
    def log(self, message: str) -> None: ...


class SilentReporter:
    """A :class:`Reporter` that prints nothing (tests, the audit)."""

    def round_started(self, round_: int, total: int) -> None: ...
    def node_done(self, round_: int, node_id: str, info: str) -> None: ...
    def round_done(self, round_: int, line: str) -> None: ...
    def log(self, message: str) -> None: ...


class Answer(StrEnum):
    """What came back from one node after the broadcast."""

    UPLOAD = "upload"  # an encoded NodeUpdate (clear uploads)
    SECURE = "secure"  # a secure-aggregation protocol message (the first one carries the node's secure input)
    REFUSED = "refused"  # the node refused a server's protocol message (blob: the reason, UTF-8); the round ends
    FAILURE = "failure"  # an encoded FailureNotice (a typed code, nothing else)
    NOTHING = "nothing"  # the node dropped: nothing arrived


@dataclass(frozen=True, slots=True)
class NodeAnswer:
    kind: Answer
    blob: bytes = b""  # the encoded NodeUpdate, FailureNotice or protocol message, as it crossed the wire
    info: str = ""  # a progress note for the console (clear uploads only: what the server sees anyway)
    stage: str = ""  # SECURE/REFUSED: the protocol stage of the answer (secagg.common.STAGES)


def stats_line(node: Node) -> str:
    """A node's training statistics as one console line (only shown when the server sees them anyway)."""
    s = node.last_stats
    if s is None:
        return ""
    geo = f" geo={s.geo_loss:.3f}" if s.geo_loss is not None else ""
    return f"task={s.task_loss:.3f}{geo} p={s.precision_weight:.2f}"


class NodeSide:
    """One site's side of a round: its :class:`Node`, its own log, and (under secure aggregation) its secure input.

    Everything here runs on the site. :meth:`answer` never raises for the node's own failures: it logs the full
    error in the node's log and answers with a :class:`FailureNotice` carrying only the code.
    """

    def __init__(self, node: Node, log: NodeLog, *, federation_id: str, secure: NodeSession | None = None) -> None:
        self.node = node
        self.log = log
        self.federation_id = federation_id
        self.secure = secure  # the node's secure-aggregation session (keys), kept on the site across rounds
        self.broadcast: RoundBroadcast | None = None  # the last broadcast train() decoded (the secure layout's source)

    def failure_notice(self, round_: int, code: FailureCode, exc: BaseException) -> bytes:
        """Log ``exc`` in full on the node; return the encoded notice (its code only) for the server."""
        self.log.write(round_, "failure", code=code.value, error=f"{type(exc).__name__}: {exc}")
        notice = FailureNotice(federation_id=self.federation_id, round=round_, node_id=self.node.node_id,
                               anchor_digest=self.node.anchor_digest, code=code)
        return encode_message(notice)

    def dropped(self, round_: int, exc: BaseException) -> None:
        """The node fell out of the round (crash, lost connection): only its own log knows why."""
        self.log.write(round_, "failure", code=FailureCode.DROPPED.value, error=f"{type(exc).__name__}: {exc}")

    def train(self, round_: int, broadcast_blob: bytes) -> NodeUpdate | bytes:
        """Handle the server's broadcast and train: the node's update (kept on the site), or an encoded notice."""
        node = self.node
        try:
            broadcast = decode_message(broadcast_blob)
            self.broadcast = broadcast if isinstance(broadcast, RoundBroadcast) else None
            update = node.handle_broadcast(broadcast)  # type: ignore[arg-type]
        except GeofedError as exc:
            code = FailureCode.for_node_error(exc)
            if isinstance(exc, MessageError) and node.last_round >= round_:
                code = FailureCode.INVALID_UPDATE  # it trained; its own upload failed validation, not the broadcast
            return self.failure_notice(round_, code, exc)
        stats = node.last_stats
        if stats is not None:
            self.log.write(round_, "trained", task_loss=stats.task_loss, geo_loss=stats.geo_loss,
                           precision_weight=stats.precision_weight)
        return update

    def upload(self, round_: int, update: NodeUpdate, *, secure_layout: SecureInputLayout | None,
               secure_open: bytes | None = None) -> NodeAnswer:
        """What the node sends after training: its encoded update in clear; or (secure) its update turned into its
        clipped secure input on the node, answering the round's first protocol message ``secure_open``; or a
        failure notice."""
        if secure_layout is None:
            return NodeAnswer(Answer.UPLOAD, encode_message(update), info=stats_line(self.node))
        if self.secure is None or secure_open is None:
            exc = MessageError("secure aggregation is configured but the round brought no protocol message "
                               "(or this node has no secure-aggregation session)")
            return NodeAnswer(Answer.FAILURE, self.failure_notice(round_, FailureCode.INVALID_UPDATE, exc))
        try:
            vector, clipped = secure_layout.node_input(update.payload)  # on the node: checks, clips, counts
        except GeofedError as exc:
            return NodeAnswer(Answer.FAILURE, self.failure_notice(round_, FailureCode.INVALID_UPDATE, exc))
        self.log.write(round_, "secure_input", clipped_coordinates=clipped, clip=secure_layout.clip)
        session = self.secure
        try:
            return secure_answer(self.log, round_, lambda: session.open(secure_open, vector, secure_layout))
        except GeofedError as exc:  # its own input cannot be masked or encrypted
            return NodeAnswer(Answer.FAILURE, self.failure_notice(round_, FailureCode.INVALID_UPDATE, exc))

    def secure_step(self, round_: int, blob: bytes) -> NodeAnswer:
        """Answer a later secure-aggregation message of the round (nothing when this node has no session)."""
        if self.secure is None:
            return NodeAnswer(Answer.NOTHING)
        session = self.secure
        return secure_answer(self.log, round_, lambda: session.step(blob))


def secure_answer(log: NodeLog, round_: int, call: Callable[[], SecureReply]) -> NodeAnswer:
    """ON THE NODE: run one step of its secure-aggregation session. A refusal (ProtocolAborted) is said to the server
    with its protocol reason; bytes the node cannot read change nothing and get no answer (the text goes to its log).
    Any other error (its own input cannot be masked) propagates."""
    try:
        reply = call()
    except ProtocolAborted as exc:  # the node refuses what the server sent: it says so, the round cannot complete
        log.write(round_, "refused", stage=exc.stage, error=str(exc))
        return NodeAnswer(Answer.REFUSED, exc.reason.encode(), stage=exc.stage)
    except MessageError as exc:
        log.write(round_, "failure", code=FailureCode.DROPPED.value, error=f"{type(exc).__name__}: {exc}")
        return NodeAnswer(Answer.NOTHING)
    return NodeAnswer(Answer.SECURE, reply.blob, stage=reply.stage)


class NodeLink(Protocol):
    """The driver's transport between the server and the nodes.

    ``exchange`` records each broadcast in the transcript, carries it (with the node's first secure-aggregation
    message from ``secure_open``, if any) to its node, and returns what came back from every node it was given, each
    UPLOAD/FAILURE blob already recorded (a dropped node gives ``NodeAnswer(Answer.NOTHING)``; the link logs the cause
    on the node's side if it knows it). ``secure_exchange`` carries one stage of secure-aggregation messages (the
    aggregator records them) and returns the answers. A link may deliver the messages one after another (in process)
    or all at once and collect the answers (Flower: one message round trip per call).
    """

    def exchange(self, round_: int, broadcasts: Mapping[str, RoundBroadcast], transcript: Transcript, *,
                 secure_layout: SecureInputLayout | None,
                 secure_open: Mapping[str, bytes] | None = None) -> dict[str, NodeAnswer]: ...

    def secure_exchange(self, round_: int, messages: Mapping[str, bytes]) -> dict[str, NodeAnswer]: ...


@dataclass
class RoundOutcome:
    """What the server knows after a round (plus, for the harness, the statistics of nodes that trained)."""

    uploaded: dict[str, int]  # bytes each node sent
    failures: dict[str, FailureCode]  # typed failures as the server recorded them
    clipped_total: int | None  # coordinates clipped, summed over contributors (secure rounds); None: unknown/clear
    weights: dict[str, float]  # individual precision weights (clear rounds only; empty under secure aggregation)
    stats: dict[str, LocalRoundStats] = field(default_factory=dict)


class FederatedRound:
    """The server's side of one federated round over any :class:`NodeLink`; the same for every driver."""

    def __init__(self, server: Server, link: NodeLink, *, secure: SecureAggregator | None,
                 n_anchors: int, clip: float, reporter: Reporter, fault_hook: FaultHook,
                 node_logs: Mapping[str, NodeLog]) -> None:
        self.server = server
        self.link = link
        self.secure = secure
        self.n_anchors = n_anchors
        self.clip = clip
        self.reporter = reporter
        self.fault_hook = fault_hook
        self.node_logs = node_logs  # only for an in-process secure aggregator's "left out of the sum" note

    def run(self, round_: int, transcript: Transcript, node_ids: tuple[str, ...]) -> RoundOutcome:
        layout = None
        if self.secure is not None:
            layout = SecureInputLayout.for_round(self.server.global_state, self.n_anchors, clip=self.clip)
        broadcasts = self.server.begin_round()
        done = False
        try:
            opening = None
            if self.secure is not None:
                assert layout is not None
                opening = self.secure.open(round_, layout, node_ids, transcript)
            answers = self.link.exchange(round_, {k: broadcasts[k] for k in node_ids}, transcript, secure_layout=layout,
                                         secure_open=opening)
            outcome = self._finish(round_, transcript, node_ids, answers, layout)
            done = True
            return outcome
        finally:
            if not done and self.secure is not None:
                self.secure.abandon()  # the next round can start (a new epoch after a server abort)

    def _finish(self, round_: int, transcript: Transcript, node_ids: tuple[str, ...], answers: Mapping[str, NodeAnswer],
                layout: SecureInputLayout | None) -> RoundOutcome:
        uploaded: dict[str, int] = {}
        ready: list[str] = []
        refusals: dict[str, NodeAnswer] = {}
        for node_id in node_ids:
            answer = answers.get(node_id, NodeAnswer(Answer.NOTHING))
            if answer.kind is Answer.NOTHING:
                self.server.reject(node_id, FailureCode.DROPPED)
                self.reporter.log(f"round {round_}: node {node_id} left out ({FailureCode.DROPPED.value}: nothing arrived)")
            elif answer.kind is Answer.FAILURE:
                try:
                    notice = decode_message(answer.blob)
                    if not isinstance(notice, FailureNotice):
                        raise MessageError(f"{node_id} answered a failure with a {type(notice).__name__}")
                    self.server.receive_failure(notice)
                except GeofedError as exc:  # a node's garbage must not end the round for everyone
                    self.server.reject(node_id, FailureCode.REJECTED_BY_SERVER)
                    self.reporter.log(f"round {round_}: the server rejected the answer of {node_id} ({type(exc).__name__}: {exc})")
                    continue
                self.reporter.log(f"round {round_}: node {node_id} left out ({notice.code.value}; "
                                  "the error stays in its own log)")
            elif answer.kind is Answer.REFUSED:
                refusals[node_id] = answer
            elif answer.kind is Answer.UPLOAD and self.secure is not None:  # a clear upload has no place in a secure round
                self.server.reject(node_id, FailureCode.REJECTED_BY_SERVER)
                self.reporter.log(f"round {round_}: the server rejected the answer of {node_id} (a clear upload under "
                                  "secure aggregation: not aggregated; the site's configuration is wrong)")
            elif answer.kind is Answer.SECURE and self.secure is not None:
                ready.append(node_id)
                self.secure.receive(round_, node_id, answer.blob, transcript)
                self.reporter.node_done(round_, node_id, f"trained; its statistics stay in {NODE_LOG.format(node_id=node_id)}")
            else:
                try:
                    self.server.receive(decode_message(answer.blob))  # type: ignore[arg-type]
                except GeofedError as exc:  # the server's own verdict on an upload it holds in clear: it may keep why
                    self.server.reject(node_id, FailureCode.REJECTED_BY_SERVER)
                    self.reporter.log(f"round {round_}: the server rejected the upload of {node_id} "
                                      f"({type(exc).__name__}: {exc})")
                    continue
                uploaded[node_id] = len(answer.blob)
                self.reporter.node_done(round_, node_id, answer.info)
        self.fault_hook("aggregate", round_, SERVER)
        if self.secure is None:
            result = self.server.finish_round()
            return RoundOutcome(uploaded=uploaded, failures=dict(result.rejected), clipped_total=None,
                                weights=dict(result.weights))
        assert layout is not None
        _raise_refusal(refusals)
        while outgoing := self.secure.next_stage(round_, transcript):
            for node_id, answer in sorted(self.link.secure_exchange(round_, outgoing).items()):
                if answer.kind is Answer.SECURE:
                    self.secure.receive(round_, node_id, answer.blob, transcript)
                elif answer.kind is Answer.REFUSED:
                    refusals[node_id] = answer
            _raise_refusal(refusals)
        outcome = self.secure.result(round_, layout, tuple(ready))
        for node_id, code in outcome.left_out.items():
            stage = outcome.dropped_at.get(node_id)
            where = f" at secure-aggregation stage {stage}" if stage else ""
            if node_id in self.node_logs:
                self.node_logs[node_id].write(round_, "failure", code=code.value, error=f"left out of the sum{where}")
            self.reporter.log(f"round {round_}: node {node_id} left out of the sum ({code.value}{where})")
        result = self.server.finish_round_from_sums(outcome.sums, outcome.contributors, outcome.left_out)
        clipped_total = layout.clipped_total(outcome.sums, outcome.max_abs_error)
        if clipped_total != 0:
            self.reporter.log(f"round {round_}: {clipped_total if clipped_total is not None else 'an unknown number of'} "
                              f"coordinate(s) clipped to +-{layout.clip:g}, summed over the {len(outcome.contributors)} "
                              "contributors (no node's own count reaches the server)")
        return RoundOutcome(uploaded=dict(outcome.bytes_sent), failures=dict(result.rejected), clipped_total=clipped_total,
                            weights={})  # individual precision weights are hidden from the server


def _raise_refusal(refusals: Mapping[str, NodeAnswer]) -> None:
    """Honest nodes refused a protocol message: the round cannot complete (the first refusal in id order is named)."""
    if refusals:
        node_id = min(refusals)
        answer = refusals[node_id]
        raise ProtocolAborted(answer.blob.decode("utf-8", "replace")[:500], party=node_id, stage=answer.stage)


def local_only_round(round_: int, sides: Mapping[str, NodeSide], *, reporter: Reporter,
                     fault_hook: FaultHook) -> RoundOutcome:
    """The local-only baseline: every node trains on its own, nothing is sent (there is no server)."""
    failures: dict[str, FailureCode] = {}
    stats: dict[str, LocalRoundStats] = {}
    for node_id, side in sides.items():
        try:
            fault_hook("local_training", round_, node_id)
            side.node.local_round(round_, consensus=None)
        except PrivacyBudgetExceeded as exc:  # this node stops; the others go on
            failures[node_id] = FailureCode.for_node_error(exc)
            side.log.write(round_, "failure", code=failures[node_id].value, error=f"{type(exc).__name__}: {exc}")
            reporter.log(f"round {round_}: node {node_id} left out ({failures[node_id].value}; the error stays in its own log)")
            continue
        s = side.node.last_stats
        if s is not None:
            stats[node_id] = s
            side.log.write(round_, "trained", task_loss=s.task_loss, geo_loss=s.geo_loss, precision_weight=s.precision_weight)
        reporter.node_done(round_, node_id, stats_line(side.node))
    return RoundOutcome(uploaded={}, failures=failures, clipped_total=None, weights={}, stats=stats)
