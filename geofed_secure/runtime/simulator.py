"""In-process simulator: drives the transport-agnostic node and server logic for a whole run.

Per round: the server's broadcast is encoded, recorded in the transcript and decoded by each node; each node's
upload is encoded, recorded and decoded by the server (so the simulator exercises the real wire format). Then
the evaluator scores the aggregated model, and a checkpoint is written atomically. ``resume=True`` continues
from the last checkpoint and, with the same seed, ends with bit-identical global weights: every random stream
derives from (seed, purpose, node, round), DP noise and sampling from each node's secret (kept in that node's
checkpoint), and local optimizers are rebuilt every round, so nothing else needs saving.
``fault_hook(stage, round, node_id)`` lets tests inject crashes and dropouts at named stages (a
:class:`GeofedError` from the hook is a dropout: the node sends nothing more that round).

The reporter (console), ``summary.json`` and the transcript model what the SERVER learns. A node that fails sends
only a :class:`~geofed_secure.wire.round.FailureNotice` with a typed
:class:`~geofed_secure.errors.FailureCode` (a dropout sends nothing and is recorded as ``dropped``); the error's
text, which may depend on private data, goes to the node's own log, ``<run>/nodes/<node_id>/log.jsonl``
(:mod:`geofed_secure.runtime.nodelog`), which stands for that node's disk. Under secure aggregation the node's
training statistics (losses, precision weight) and its own clipped-coordinate count go only there; the server's
outputs carry the sums that secure aggregation reveals (the total clipped count per round) and public facts
(contributors, bytes, failure codes). With ``secure.protocol = "none"`` (clear uploads, for tests) the server
sees every upload, weights included, and the console and summary show each node's statistics as before.
The evaluator's per-node metrics are the omniscient harness of :mod:`geofed_secure.runtime.evaluation`, not a
server observation.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import safetensors.numpy
import torch

from geofed_secure.config import RunConfig
from geofed_secure.data.demo import ModalityData
from geofed_secure.errors import CheckpointError, DataError, FailureCode, GeofedError, MessageError, PrivacyBudgetExceeded
from geofed_secure.model import geodora
from geofed_secure.model.backbone import load_backbone
from geofed_secure.node.node import LocalRoundStats, Node
from geofed_secure.privacy import ACCOUNTANT_DESCRIPTIONS, ADJACENCY, ADJACENCY_STATEMENT, PRIVACY_COVERAGE
from geofed_secure.privacy.noise import DOES_NOT_HOLD_AGAINST, HOLDS_AGAINST, NOTICES, randomness_source
from geofed_secure.runtime.evaluation import Evaluation, evaluate
from geofed_secure.runtime.federation import FederationData, build_federation
from geofed_secure.runtime.nodelog import NodeLog
from geofed_secure.runtime.secure import SecureInputLayout, make_aggregator
from geofed_secure.runtime.transcript import SERVER, Transcript
from geofed_secure.server.checkpoint import CheckpointStore
from geofed_secure.server.server import Server
from geofed_secure.wire.round import FailureNotice, NodeUpdate, RoundBroadcast, decode_message, encode_message

FaultHook = Callable[[str, int, str], None]
STAGES = ("broadcast", "local_training", "upload", "aggregate", "checkpoint")
NODE_LOG = "nodes/{node_id}/log.jsonl"  # relative to the run folder; stands for the node's own disk


class Reporter(Protocol):
    def round_started(self, round_: int, total: int) -> None: ...
    def node_done(self, round_: int, node_id: str, info: str) -> None: ...
    def round_done(self, round_: int, line: str) -> None: ...
    def log(self, message: str) -> None: ...


class SilentReporter:
    def round_started(self, round_: int, total: int) -> None: ...
    def node_done(self, round_: int, node_id: str, info: str) -> None: ...
    def round_done(self, round_: int, line: str) -> None: ...
    def log(self, message: str) -> None: ...


@dataclass
class RunResult:
    out_dir: Path
    summary: dict[str, Any]
    global_state: dict[str, np.ndarray]
    transcript: Transcript | None
    nodes: dict[str, Node] = field(repr=False)


def backbone_factory(config: RunConfig) -> Callable[[], torch.nn.Module]:
    """Load the pretrained backbone once; every node and the server get their own deep copy."""
    base = load_backbone(config.model.backbone)
    return lambda: copy.deepcopy(base)


class Simulator:
    def __init__(self, config: RunConfig, modalities: Mapping[str, ModalityData], out_dir: str | Path, *,
                 fault_hook: FaultHook | None = None, reporter: Reporter | None = None,
                 make_backbone: Callable[[], torch.nn.Module] | None = None, secure_seed: int | None = None,
                 node_secrets: Mapping[str, bytes] | None = None) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.fault_hook = fault_hook or (lambda stage, round_, node_id: None)
        self.reporter = reporter or SilentReporter()
        self.federation: FederationData = build_federation(config, modalities)
        make_backbone = make_backbone or backbone_factory(config)
        # Each node draws its own DP secret (os.urandom) unless ``node_secrets`` (tests only) fixes it.
        self.nodes = {
            spec.id: Node(spec, self.federation.nodes[spec.id], config, anchor_digest=self.federation.anchor_digest,
                          backbone_factory=make_backbone, dp_secret=(node_secrets or {}).get(spec.id))
            for spec in config.nodes
        }
        # The server holds the public pretrained backbone with the same shared-seed A: it defines the initial
        # global state (B = 0, m = ||W0||) and merges the final aggregate once.
        self.server_model = geodora.apply_geodora(
            make_backbone(),
            geodora.GeoDoRAConfig.from_section(config.model),
            federation_seed=config.federation.seed)
        initial = {k: v.numpy() for k, v in geodora.get_lora_b(self.server_model).items()}
        if config.model.magnitude == "averaged":
            initial |= {k: v.numpy() for k, v in geodora.get_magnitudes(self.server_model).items()}
        self.server = Server(federation_id=config.federation.id, anchor_digest=self.federation.anchor_digest,
                             node_ids=tuple(self.nodes), global_state=initial)
        self.federated = config.federation.mode == "federated"
        # Secure aggregation keys come from the OS CSPRNG; ``secure_seed`` exists for reproducible tests only.
        self.secure = make_aggregator(config, self.federation.anchor_digest, seed=secure_seed)
        anchor_counts = {len(d.anchors) for d in self.federation.modalities.values()}
        if len(anchor_counts) != 1:
            raise DataError(f"every modality needs the same number of public anchors, got {sorted(anchor_counts)}")
        self.n_anchors = anchor_counts.pop()
        self.checkpoints = CheckpointStore(self.out_dir)
        self.history: list[dict[str, Any]] = []
        self.weights: dict[str, float] = {}
        self.node_logs: dict[str, NodeLog] = {}
        self._round_stats: dict[str, LocalRoundStats] = {}  # nodes that trained in the current round

    # -- one round ----------------------------------------------------------------------------------
    def _node_round(self, round_: int, node_id: str, node: Node, broadcast: RoundBroadcast,
                    transcript: Transcript) -> NodeUpdate | None:
        """The node's side of a round: receive the broadcast over the wire, train, return its (local) NodeUpdate.

        None when the node is out of the round; that is handled here as the node and the network would: a dropout
        sends nothing (the server records ``dropped``), the node's own error is logged in full on the node and
        reported to the server as a :class:`FailureNotice` carrying only its code.
        """
        try:
            self.fault_hook("broadcast", round_, node_id)
            blob = encode_message(broadcast)
            transcript.record(round_, SERVER, node_id, blob, broadcast)
            self.fault_hook("local_training", round_, node_id)
        except GeofedError as exc:
            self._dropped(round_, node_id, exc)
            return None
        try:
            update = node.handle_broadcast(decode_message(blob))
        except GeofedError as exc:
            code = FailureCode.for_node_error(exc)
            if isinstance(exc, MessageError) and node.last_round >= round_:
                code = FailureCode.INVALID_UPDATE  # it trained; its own upload failed validation, not the broadcast
            self._node_failed(round_, node_id, code, exc, transcript)
            return None
        self._log_stats(round_, node_id, node)
        try:
            self.fault_hook("upload", round_, node_id)
        except GeofedError as exc:
            self._dropped(round_, node_id, exc)
            return None
        return update

    def _log_stats(self, round_: int, node_id: str, node: Node) -> None:
        stats = node.last_stats
        if stats is not None:
            self._round_stats[node_id] = stats
            self.node_logs[node_id].write(round_, "trained", task_loss=stats.task_loss, geo_loss=stats.geo_loss,
                                          precision_weight=stats.precision_weight)

    def _dropped(self, round_: int, node_id: str, exc: GeofedError) -> None:
        """Nothing more arrives from ``node_id`` this round: the server notes the absence, the node its cause."""
        self.node_logs[node_id].write(round_, "failure", code=FailureCode.DROPPED.value, error=f"{type(exc).__name__}: {exc}")
        if self.federated:
            self.server.reject(node_id, FailureCode.DROPPED)
        self.reporter.log(f"round {round_}: node {node_id} left out ({FailureCode.DROPPED.value}: nothing arrived)")

    def _node_failed(self, round_: int, node_id: str, code: FailureCode, exc: GeofedError,
                     transcript: Transcript | None) -> None:
        """The node's own failure: full text in its own log; to the server (if any) a FailureNotice with the code."""
        self.node_logs[node_id].write(round_, "failure", code=code.value, error=f"{type(exc).__name__}: {exc}")
        if transcript is not None:
            node = self.nodes[node_id]
            notice = FailureNotice(federation_id=self.config.federation.id, round=round_, node_id=node_id,
                                   anchor_digest=node.anchor_digest, code=code)
            blob = encode_message(notice)
            transcript.record(round_, node_id, SERVER, blob, notice)
            self.server.receive_failure(decode_message(blob))  # type: ignore[arg-type]
        self.reporter.log(f"round {round_}: node {node_id} left out ({code.value}; the error stays in its own log)")

    def _federated_round(self, round_: int, transcript: Transcript) -> tuple[dict[str, int], dict[str, FailureCode], int | None]:
        """(bytes each node sent, typed failures as the server recorded them, total clipped count or None)."""
        self._round_stats = {}
        if self.secure is not None:
            return self._secure_round(round_, transcript)
        uploaded: dict[str, int] = {}
        broadcasts = self.server.begin_round()
        for node_id, node in self.nodes.items():
            update = self._node_round(round_, node_id, node, broadcasts[node_id], transcript)
            if update is None:
                continue
            up_blob = encode_message(update)
            transcript.record(round_, node_id, SERVER, up_blob, update)
            try:
                self.server.receive(decode_message(up_blob))  # type: ignore[arg-type]
            except GeofedError as exc:  # the server's own verdict on an upload it holds in clear: it may keep why
                self.server.reject(node_id, FailureCode.REJECTED_BY_SERVER)
                self.reporter.log(f"round {round_}: the server rejected the upload of {node_id} ({type(exc).__name__}: {exc})")
                continue
            uploaded[node_id] = len(up_blob)
            self.reporter.node_done(round_, node_id, _stats_line(node))  # clear uploads: the server sees p_k anyway
        self.fault_hook("aggregate", round_, SERVER)
        result = self.server.finish_round()
        self.weights = dict(result.weights)
        return uploaded, dict(result.rejected), None

    def _secure_round(self, round_: int, transcript: Transcript) -> tuple[dict[str, int], dict[str, FailureCode], int | None]:
        """Local training as in plaintext mode, but uploads reach the server only as a masked/encrypted sum."""
        inputs: dict[str, np.ndarray] = {}
        layout = SecureInputLayout.for_round(self.server.global_state, self.n_anchors, clip=self.config.secure.clip)
        broadcasts = self.server.begin_round()
        for node_id, node in self.nodes.items():
            update = self._node_round(round_, node_id, node, broadcasts[node_id], transcript)
            if update is None:
                continue
            try:
                vector, clipped = layout.node_input(update.payload)  # on the node: checks, clips, counts
            except GeofedError as exc:
                self._node_failed(round_, node_id, FailureCode.INVALID_UPDATE, exc, transcript)
                continue
            self.node_logs[node_id].write(round_, "secure_input", clipped_coordinates=clipped, clip=layout.clip)
            inputs[node_id] = vector
            self.reporter.node_done(round_, node_id, f"trained; its statistics stay in {NODE_LOG.format(node_id=node_id)}")
        self.fault_hook("aggregate", round_, SERVER)
        outcome = self.secure.aggregate(round_, inputs, layout, transcript, self.fault_hook)
        for node_id, code in outcome.left_out.items():
            stage = outcome.dropped_at.get(node_id)
            where = f" at secure-aggregation stage {stage}" if stage else ""
            self.node_logs[node_id].write(round_, "failure", code=code.value, error=f"left out of the sum{where}")
            self.reporter.log(f"round {round_}: node {node_id} left out of the sum ({code.value}{where})")
        result = self.server.finish_round_from_sums(outcome.sums, outcome.contributors, outcome.left_out)
        self.weights = {}  # individual precision weights are hidden from the server
        clipped_total = layout.clipped_total(outcome.sums, outcome.max_abs_error)
        if clipped_total != 0:
            self.reporter.log(f"round {round_}: {clipped_total if clipped_total is not None else 'an unknown number of'} "
                              f"coordinate(s) clipped to +-{layout.clip:g}, summed over the {len(outcome.contributors)} "
                              "contributors (no node's own count reaches the server)")
        return dict(outcome.bytes_sent), dict(result.rejected), clipped_total

    def _local_round(self, round_: int) -> dict[str, FailureCode]:
        self._round_stats = {}
        failures: dict[str, FailureCode] = {}
        for node_id, node in self.nodes.items():
            try:
                self.fault_hook("local_training", round_, node_id)
                node.local_round(round_, consensus=None)
            except PrivacyBudgetExceeded as exc:  # this node stops; the others go on
                failures[node_id] = FailureCode.for_node_error(exc)
                self._node_failed(round_, node_id, failures[node_id], exc, None)
                continue
            self._log_stats(round_, node_id, node)
            self.reporter.node_done(round_, node_id, _stats_line(node))  # no server in local-only mode
        return failures

    # -- the run ------------------------------------------------------------------------------------
    def run(self, *, resume: bool = False) -> RunResult:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.out_dir / "config.json"
        transcript_dir = self.out_dir / "transcript"
        start = 1
        if resume:
            start = self._restore(config_path) + 1
            config_path.write_text(json.dumps(self.config.to_dict(), indent=1, sort_keys=True))
            transcript = Transcript.load(transcript_dir, attach=True)
            transcript.truncate(self._transcript_len)
            self.node_logs = {k: NodeLog.resume(self.out_dir / NODE_LOG.format(node_id=k), last_round=start - 1)
                              for k in self.nodes}
        else:
            if self.checkpoints.latest_round() is not None:
                raise CheckpointError(f"{self.out_dir} already holds a run; use --resume {self.out_dir} or another --out")
            config_path.write_text(json.dumps(self.config.to_dict(), indent=1, sort_keys=True))
            transcript = Transcript(transcript_dir)
            self.node_logs = {k: NodeLog.start(self.out_dir / NODE_LOG.format(node_id=k)) for k in self.nodes}
        for line in self.privacy_notice():
            self.reporter.log(line)
        total = self.config.federation.rounds
        for round_ in range(start, total + 1):
            self.reporter.round_started(round_, total)
            t0 = time.perf_counter()
            if self.federated:
                uploaded, failures, clipped = self._federated_round(round_, transcript)
                evaluation = evaluate(self.nodes, self._eval_anchors(), self.server.global_state,
                                      eval_samples=self.config.data.eval_samples)
            else:
                uploaded, failures, clipped = {}, self._local_round(round_), None
                evaluation = evaluate(self.nodes, self._eval_anchors(), None, eval_samples=self.config.data.eval_samples)
            seconds = time.perf_counter() - t0
            # under secure aggregation a node's training statistics are its own: they are in its log, not here
            stats = {} if self.secure is not None else self._round_stats
            record = _round_record(round_, evaluation, uploaded, failures, self.weights, stats, seconds)
            if self.secure is not None:
                record["clipped_coordinates"] = clipped
            self.history.append(record)
            self.fault_hook("checkpoint", round_, SERVER)
            self._checkpoint(round_, len(transcript))
            self.reporter.round_done(round_, _round_line(record))
        summary = self._summary()
        (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        final_dir = self.out_dir / "final"
        final_dir.mkdir(exist_ok=True)
        if self.federated:
            safetensors.numpy.save_file(self.server.global_state, final_dir / "global_adapters.safetensors")
            geodora.load_shared_state(self.server_model, {k: torch.from_numpy(v) for k, v in self.server.global_state.items()})
            merged = {k: v.contiguous().numpy() for k, v in geodora.merged_state(self.server_model).items()}
            safetensors.numpy.save_file(merged, final_dir / "merged_adapted_weights.safetensors")
        return RunResult(out_dir=self.out_dir, summary=summary, global_state=dict(self.server.global_state),
                         transcript=transcript if self.federated else None, nodes=self.nodes)

    def _eval_anchors(self):
        return {m: d.eval_anchors for m, d in self.federation.modalities.items()}

    def _checkpoint(self, round_: int, transcript_len: int) -> None:
        meta = {"history": self.history, "weights": self.weights,
                "transcript_records": transcript_len, "anchor_digest": self.federation.anchor_digest}
        self.checkpoints.save(round_, self.server.state_dict(), {k: n.state_dict() for k, n in self.nodes.items()}, meta)

    def _restore(self, config_path: Path) -> int:
        ckpt = self.checkpoints.load_latest()
        if not config_path.is_file():
            raise CheckpointError(f"{config_path} is missing; cannot check that the resumed run has the same configuration")
        if _without_rounds(json.loads(config_path.read_text())) != _without_rounds(self.config.to_dict()):
            raise CheckpointError(f"{self.out_dir} was started with a different configuration (only federation.rounds may change on resume)")
        if ckpt.meta.get("anchor_digest") != self.federation.anchor_digest:
            raise CheckpointError("the anchor set changed since the checkpoint was written")
        self.server.load_state_dict(ckpt.server, round_=ckpt.round)
        for node_id, node in self.nodes.items():
            if node_id not in ckpt.nodes:
                raise CheckpointError(f"checkpoint round {ckpt.round} has no state for node {node_id}")
            node.load_state_dict(ckpt.nodes[node_id])
        self.history = list(ckpt.meta["history"])
        self.weights = dict(ckpt.meta.get("weights", {}))
        self._transcript_len = int(ckpt.meta["transcript_records"])
        self.reporter.log(f"resumed from checkpoint of round {ckpt.round}")
        return ckpt.round

    def _secure_summary(self) -> dict[str, Any]:
        sec = self.config.secure
        if self.secure is None:
            return {"protocol": "none" if self.federated else "not used (local-only)",
                    "server_sees": "every upload in clear" if self.federated else "nothing"}
        counts = [r.get("clipped_coordinates") for r in self.history]
        out: dict[str, Any] = {
            "protocol": sec.protocol, "clip": sec.clip,
            # the sum over contributors and rounds, as secure aggregation revealed it (None: a round's sum was not exact)
            "clipped_coordinates": None if None in counts else sum(counts),
            "node_statistics": f"kept on each node ({NODE_LOG}): losses, precision weight, own clipped count, error text"}
        if sec.protocol == "masking":
            out |= {"spec": "protocols/secagg-v1/SPEC.md", "ring_bits": sec.ring_bits,
                    "threshold": sec.threshold or "max(3, majority of share holders)", "neighbors": sec.neighbors or "complete graph",
                    "rounds_per_epoch": sec.rounds_per_epoch, "server_sees": "masked vectors and their sum"}
        else:
            out |= {"spec": "protocols/ckks-v1/SPEC.md", "server_sees": "ciphertexts; the sum after a node decrypts it"}
        return out

    def _privacy_summary(self) -> dict[str, Any]:
        dp = self.config.privacy
        if not dp.enabled:
            return {"enabled": False, "epsilon": None,
                    "note": "no differential privacy: uploads and the final model carry each node's data (epsilon infinite)"}
        source = randomness_source(dp)
        return {"enabled": True, "adjacency": ADJACENCY, "unit": ADJACENCY_STATEMENT,
                "accountant": f"{dp.accountant} ({ACCOUNTANT_DESCRIPTIONS[dp.accountant]})",
                "noise_source": source, "secure_mode": dp.secure_mode, "shared_seed_noise": dp.shared_seed_noise,
                "holds_against": list(HOLDS_AGAINST[source]), "does_not_hold_against": list(DOES_NOT_HOLD_AGAINST[source]),
                "covers": PRIVACY_COVERAGE,
                "nodes": {k: n.privacy.summary() for k, n in self.nodes.items() if n.privacy is not None}}

    def privacy_notice(self) -> list[str]:
        """Lines for the run log: each node's calibrated noise, against whom the budget holds, where the noise comes from."""
        dp = self.config.privacy
        if not dp.enabled:
            return []
        source = randomness_source(dp)
        lines = [f"DP-SGD on every node: budget epsilon {dp.epsilon:g} at delta {dp.delta:g} ({ADJACENCY} adjacency, "
                 f"{dp.accountant} accountant), "
                 f"per-sample clip {dp.max_grad_norm:g}; noise multipliers "
                 + ", ".join(f"{k} {n.privacy.noise_multiplier:.3f} (q {n.privacy.plan.sample_rate:.3f})"
                             for k, n in self.nodes.items() if n.privacy is not None)
                 + f"; precision weights: {dp.weight_budget_share:.0%} of the budget, noise multipliers "
                 + ", ".join(f"{n.privacy.weight_noise_multiplier:.2f}" for n in self.nodes.values() if n.privacy is not None)]
        holds = "DP epsilon holds against: " + "; ".join(HOLDS_AGAINST[source])
        if DOES_NOT_HOLD_AGAINST[source]:
            holds += ". It does NOT hold against: " + "; ".join(DOES_NOT_HOLD_AGAINST[source])
        return [*lines, holds, NOTICES[source]]

    def _summary(self) -> dict[str, Any]:
        shared = sum(int(np.prod(v.shape)) for v in self.server.global_state.values())
        backbone_params = sum(p.numel() for p in self.server_model.parameters())
        final = dict(self.history[-1]["metrics"]) if self.history else {}
        return {
            "federation_id": self.config.federation.id,
            "mode": self.config.federation.mode,
            "seed": self.config.federation.seed,
            "anchor_digest": self.federation.anchor_digest,
            "anchors_per_modality": {m: len(d.anchors) for m, d in self.federation.modalities.items()},
            "synthetic_modalities": sorted(m for m, d in self.federation.modalities.items() if d.synthetic),
            "nodes": [
                {"id": k, "modality": n.spec.modality, "paired_modality": n.spec.paired_modality or None,
                 "samples": len(n.data.train), "test_samples": len(n.data.test),
                 "weight": self.weights.get(k), "synthetic_data": self.federation.modalities[n.spec.modality].synthetic}
                for k, n in self.nodes.items()
            ],
            "secure_aggregation": self._secure_summary(),
            "privacy": self._privacy_summary(),
            "communication": {"shared_parameters": shared, "full_model_parameters": int(backbone_params),
                              "full_model_bytes_float32": int(backbone_params) * 4},
            "rounds": self.history,
            "final": final,
            "config": self.config.to_dict(),
        }


def _without_rounds(config: Mapping[str, Any]) -> dict[str, Any]:
    plain = json.loads(json.dumps(config))
    plain["federation"].pop("rounds", None)
    return plain


def _stats_line(node: Node) -> str:
    s = node.last_stats
    if s is None:
        return ""
    geo = f" geo={s.geo_loss:.3f}" if s.geo_loss is not None else ""
    return f"task={s.task_loss:.3f}{geo} p={s.precision_weight:.2f}"


def _round_record(round_: int, ev: Evaluation, uploaded: Mapping[str, int], failures: Mapping[str, FailureCode],
                  weights: Mapping[str, float], stats: Mapping[str, LocalRoundStats], seconds: float) -> dict[str, Any]:
    """One round of ``summary.json``: ``stats`` only for nodes that trained this round, and empty under secure
    aggregation (a node's losses are its own); ``failure`` is a :class:`FailureCode` value, never an error's text."""
    return {
        "round": round_,
        "seconds": round(seconds, 3),
        "metrics": ev.summary(),
        "nodes": {
            k: {"cka_to_consensus": m.cka_to_consensus, "debiased_cka": m.debiased_cka, "task_accuracy": m.task_accuracy,
                "bytes_uploaded": uploaded.get(k, 0), "weight": weights.get(k),
                "task_loss": stats[k].task_loss if k in stats else None,
                "geo_loss": stats[k].geo_loss if k in stats else None,
                "failure": failures[k].value if k in failures else None}
            for k, m in ev.nodes.items()
        },
    }


def _round_line(record: Mapping[str, Any]) -> str:
    m = record["metrics"]
    top1 = m["cross_modal_top1"]
    return (f"round {record['round']}: cross-modal top-1 {top1 if top1 is None else f'{top1:.3f}'}, "
            f"CKA {m['cka_to_consensus']:.3f}, task acc {m['task_accuracy']:.3f} ({record['seconds']:.1f} s)")
