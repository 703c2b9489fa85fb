"""In-process simulator: drives the transport-agnostic node and server logic for a whole run.

Each round is :class:`~geofed_secure.runtime.round.FederatedRound` (the round every driver runs) over an
:class:`InProcessLink`: the server's broadcast is encoded, recorded in the transcript and decoded by each node; each
node's upload is encoded, recorded and decoded by the server (so the simulator exercises the real wire format). Then
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
from typing import Any

import numpy as np
import safetensors.numpy
import torch

from geofed_secure.config import RunConfig
from geofed_secure.data import ModalityData
from geofed_secure.errors import CheckpointError, DataError, FailureCode, GeofedError
from geofed_secure.model import geodora
from geofed_secure.model.backbone import load_backbone
from geofed_secure.node.node import LocalRoundStats, Node
from geofed_secure.privacy import ACCOUNTANT_DESCRIPTIONS, ADJACENCY, ADJACENCY_STATEMENT, PRIVACY_COVERAGE
from geofed_secure.privacy.noise import DOES_NOT_HOLD_AGAINST, HOLDS_AGAINST, NOTICES, randomness_source
from geofed_secure.runtime.evaluation import Evaluation, evaluate
from geofed_secure.runtime.federation import FederationData, build_federation
from geofed_secure.runtime.nodelog import NodeLog
from geofed_secure.runtime.outdir import check_resumable, claim_for_new_run, output_folder
from geofed_secure.runtime.round import (
    NODE_LOG,
    Answer,
    FaultHook,
    FederatedRound,
    NodeAnswer,
    NodeSide,
    Reporter,
    SilentReporter,
    local_only_round,
)
from geofed_secure.runtime.secure import SecureInputLayout, in_process
from geofed_secure.runtime.secure.masking import ring_bits_of
from geofed_secure.runtime.transcript import SERVER, Transcript
from geofed_secure.server.checkpoint import CheckpointStore
from geofed_secure.server.server import Server
from geofed_secure.wire.round import RoundBroadcast, decode_message, encode_message

STAGES = ("broadcast", "local_training", "upload", "aggregate", "checkpoint")


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


def server_model_and_initial_state(config: RunConfig, make_backbone: Callable[[], torch.nn.Module]
                                   ) -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    """The server's copy of the public backbone with the shared-seed A, and the initial global state it defines
    (B = 0, and m = ||W0|| when magnitudes are averaged). Every driver's server starts from exactly this."""
    model = geodora.apply_geodora(make_backbone(), geodora.GeoDoRAConfig.from_section(config.model),
                                  federation_seed=config.federation.seed)
    initial = {k: v.numpy() for k, v in geodora.get_lora_b(model).items()}
    if config.model.magnitude == "averaged":
        initial |= {k: v.numpy() for k, v in geodora.get_magnitudes(model).items()}
    return model, initial


class InProcessLink:
    """The simulator's :class:`~geofed_secure.runtime.round.NodeLink`: every node runs in this process.

    The broadcast and the node's answer are encoded, recorded in the transcript and decoded by the receiver, so
    the simulation exercises the real wire format. ``fault_hook`` injects dropouts at the named stages
    (``broadcast``, ``local_training``, ``upload``, and ``secagg/<stage>`` just before a node would send its answer
    of that protocol stage; a :class:`GeofedError` from the hook is a dropout: the node sends nothing more that round).
    """

    def __init__(self, sides: Mapping[str, NodeSide], fault_hook: FaultHook) -> None:
        self.sides = sides
        self.fault_hook = fault_hook
        self.stats: dict[str, LocalRoundStats] = {}  # nodes that trained this round (harness view)
        self.gone: set[str] = set()  # nodes that dropped during this round's secure aggregation

    def exchange(self, round_: int, broadcasts: Mapping[str, RoundBroadcast], transcript: Transcript, *,
                 secure_layout: SecureInputLayout | None, secure_open: Mapping[str, bytes] | None = None
                 ) -> dict[str, NodeAnswer]:
        """One node after the other, in the given order: broadcast, train, answer."""
        self.gone = set()
        return {k: self.deliver(round_, k, b, transcript, secure_layout=secure_layout,
                                secure_open=(secure_open or {}).get(k)) for k, b in broadcasts.items()}

    def deliver(self, round_: int, node_id: str, broadcast: RoundBroadcast, transcript: Transcript, *,
                secure_layout: SecureInputLayout | None, secure_open: bytes | None = None) -> NodeAnswer:
        side = self.sides[node_id]
        try:
            self.fault_hook("broadcast", round_, node_id)
            blob = encode_message(broadcast)
            transcript.record(round_, SERVER, node_id, blob, broadcast)
            self.fault_hook("local_training", round_, node_id)
        except GeofedError as exc:
            side.dropped(round_, exc)
            return NodeAnswer(Answer.NOTHING)
        result = side.train(round_, blob)
        if isinstance(result, bytes):
            return self._recorded(round_, node_id, transcript, NodeAnswer(Answer.FAILURE, result))
        if side.node.last_stats is not None:
            self.stats[node_id] = side.node.last_stats
        try:
            self.fault_hook("upload", round_, node_id)
        except GeofedError as exc:
            side.dropped(round_, exc)
            return NodeAnswer(Answer.NOTHING)
        answer = side.upload(round_, result, secure_layout=secure_layout, secure_open=secure_open)
        if answer.kind in (Answer.UPLOAD, Answer.FAILURE):
            return self._recorded(round_, node_id, transcript, answer)
        return self._secure(round_, node_id, answer)

    def secure_exchange(self, round_: int, messages: Mapping[str, bytes]) -> dict[str, NodeAnswer]:
        return {k: self._secure(round_, k, self.sides[k].secure_step(round_, blob)) if k not in self.gone
                else NodeAnswer(Answer.NOTHING) for k, blob in sorted(messages.items())}

    def _secure(self, round_: int, node_id: str, answer: NodeAnswer) -> NodeAnswer:
        if answer.kind is not Answer.SECURE:
            return answer
        try:
            self.fault_hook(f"secagg/{answer.stage}", round_, node_id)
        except GeofedError:
            self.gone.add(node_id)
            session = self.sides[node_id].secure
            if session is not None:
                session.abandon()
            return NodeAnswer(Answer.NOTHING)
        return answer

    @staticmethod
    def _recorded(round_: int, node_id: str, transcript: Transcript, answer: NodeAnswer) -> NodeAnswer:
        transcript.record(round_, node_id, SERVER, answer.blob, decode_message(answer.blob))
        return answer


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
        self.server_model, initial = server_model_and_initial_state(config, make_backbone)
        self.server = Server(federation_id=config.federation.id, anchor_digest=self.federation.anchor_digest,
                             node_ids=tuple(self.nodes), global_state=initial)
        self.federated = config.federation.mode == "federated"
        # Secure aggregation keys come from the OS CSPRNG; ``secure_seed`` exists for reproducible tests only. Each
        # node's session (its keys) stays with that node across rounds, as it stays on a site's disk.
        self.secure, self.secure_sessions = in_process(config, self.federation.anchor_digest, seed=secure_seed)
        anchor_counts = {len(d.anchors) for d in self.federation.modalities.values()}
        if len(anchor_counts) != 1:
            raise DataError(f"every modality needs the same number of public anchors, got {sorted(anchor_counts)}")
        self.n_anchors = anchor_counts.pop()
        self.checkpoints = CheckpointStore(self.out_dir)
        self.history: list[dict[str, Any]] = []
        self.weights: dict[str, float] = {}
        self.node_logs: dict[str, NodeLog] = {}

    # -- the run ------------------------------------------------------------------------------------
    def run(self, *, resume: bool = False, overwrite: bool = False) -> RunResult:
        """Run (or with ``resume`` continue) the federation in ``out_dir``, holding the folder's lock throughout.

        A new run refuses a folder that already holds a run unless ``overwrite`` (which removes that run's files).
        """
        with output_folder(self.out_dir, owner="geofed run"):
            if not resume:
                claim_for_new_run(self.out_dir, overwrite=overwrite)
            return self._run(resume=resume)

    def _run(self, *, resume: bool) -> RunResult:
        config_path = self.out_dir / "config.json"
        transcript_dir = self.out_dir / "transcript"
        start = 1
        if resume:
            start = self._restore(config_path) + 1
            transcript = Transcript.load(transcript_dir, attach=True)  # before anything in the folder changes
            config_path.write_text(json.dumps(self.config.to_dict(), indent=1, sort_keys=True))
            transcript.truncate(self._transcript_len)
            self.node_logs = {k: NodeLog.resume(self.out_dir / NODE_LOG.format(node_id=k), last_round=start - 1)
                              for k in self.nodes}
        else:
            config_path.write_text(json.dumps(self.config.to_dict(), indent=1, sort_keys=True))
            transcript = Transcript(transcript_dir)
            self.node_logs = {k: NodeLog.start(self.out_dir / NODE_LOG.format(node_id=k)) for k in self.nodes}
        for line in self.privacy_notice():
            self.reporter.log(line)
        total = self.config.federation.rounds
        for round_ in range(start, total + 1):
            self.reporter.round_started(round_, total)
            t0 = time.perf_counter()
            sides = {k: NodeSide(n, self.node_logs[k], federation_id=self.config.federation.id,
                                 secure=self.secure_sessions.get(k)) for k, n in self.nodes.items()}
            if self.federated:
                link = InProcessLink(sides, self.fault_hook)
                federated_round = FederatedRound(self.server, link, secure=self.secure, n_anchors=self.n_anchors,
                                                 clip=self.config.secure.clip, reporter=self.reporter,
                                                 fault_hook=self.fault_hook, node_logs=self.node_logs)
                outcome = federated_round.run(round_, transcript, tuple(self.nodes))
                outcome.stats = link.stats
                evaluation = evaluate(self.nodes, self._eval_anchors(), self.server.global_state,
                                      eval_samples=self.config.data.eval_samples)
            else:
                outcome = local_only_round(round_, sides, reporter=self.reporter, fault_hook=self.fault_hook)
                evaluation = evaluate(self.nodes, self._eval_anchors(), None, eval_samples=self.config.data.eval_samples)
            self.weights = outcome.weights
            collapsed = self._collapse_warnings(round_, evaluation)
            seconds = time.perf_counter() - t0
            # under secure aggregation a node's training statistics are its own: they are in its log, not here
            stats = {} if self.secure is not None else outcome.stats
            record = _round_record(round_, evaluation, outcome.uploaded, outcome.failures, self.weights, stats, seconds)
            record["collapsed_nodes"] = collapsed
            if self.secure is not None:
                record["clipped_coordinates"] = outcome.clipped_total
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

    def _collapse_warnings(self, round_: int, evaluation: Evaluation) -> list[str]:
        """Nodes whose training-anchor Gram scale is below ``training.collapse_scale`` (harness view), each warned."""
        floor = self.config.training.collapse_scale
        collapsed = sorted(k for k, m in evaluation.nodes.items() if m.gram_scale < floor)
        for node_id in collapsed:
            m = evaluation.nodes[node_id]
            self.reporter.log(f"WARNING round {round_}: node {node_id} has COLLAPSED: its anchor embeddings all point "
                              f"one way (Gram scale {m.gram_scale:.2e} < training.collapse_scale {floor:g}, effective "
                              f"rank {m.effective_rank:.2f}); it refuses to upload while collapsed")
        return collapsed

    def _eval_anchors(self):
        return {m: d.eval_anchors for m, d in self.federation.modalities.items()}

    def _checkpoint(self, round_: int, transcript_len: int) -> None:
        meta = {"history": self.history, "weights": self.weights,
                "transcript_records": transcript_len, "anchor_digest": self.federation.anchor_digest}
        self.checkpoints.save(round_, self.server.state_dict(), {k: n.state_dict() for k, n in self.nodes.items()}, meta)

    def _restore(self, config_path: Path) -> int:
        ckpt = self.checkpoints.load_latest()
        check_resumable(config_path.parent, self.config.to_dict())
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
            out |= {"spec": "protocols/secagg-v1/SPEC.md", "ring_bits": ring_bits_of(self.config),
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
                "heldout_cka": m.heldout_cka, "train_anchor_cka": m.train_anchor_cka, "centroid_cka": m.centroid_cka,
                "gram_scale": m.gram_scale, "effective_rank": m.effective_rank,
                "bytes_uploaded": uploaded.get(k, 0), "weight": weights.get(k),
                "task_loss": stats[k].task_loss if k in stats else None,
                "geo_loss": stats[k].geo_loss if k in stats else None,
                "failure": failures[k].value if k in failures else None}
            for k, m in ev.nodes.items()
        },
    }


def _round_line(record: Mapping[str, Any]) -> str:
    m = record["metrics"]
    centred = m.get("centred_top1")
    return (f"round {record['round']}: held-out anchor CKA {m['heldout_cka']:.3f} (training anchors "
            f"{m['train_anchor_cka']:.3f}), centred cross-modal top-1 {centred if centred is None else f'{centred:.3f}'} "
            f"(own-anchor baseline {m['own_anchor_top1']:.3f}), task acc {m['task_accuracy']:.3f}, "
            f"min Gram scale {m['min_gram_scale']:.3f} ({record['seconds']:.1f} s)")
