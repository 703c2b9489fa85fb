"""In-process simulator: drives the transport-agnostic node and server logic for a whole run.

Per round: the server's broadcast is encoded, recorded in the transcript and decoded by each node; each node's
upload is encoded, recorded and decoded by the server (so the simulator exercises the real wire format). Then
the evaluator scores the aggregated model, and a checkpoint is written atomically. ``resume=True`` continues
from the last checkpoint and, with the same seed, ends with bit-identical global weights: every random stream
derives from (seed, purpose, node, round) and local optimizers are rebuilt every round, so nothing else needs
saving. ``fault_hook(stage, round, node_id)`` lets tests inject crashes and dropouts at named stages.
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
from geofed_secure.errors import CheckpointError, DataError, GeofedError, PrivacyBudgetExceeded
from geofed_secure.model import geodora
from geofed_secure.model.backbone import load_backbone
from geofed_secure.node.node import Node
from geofed_secure.privacy import PRIVACY_COVERAGE
from geofed_secure.privacy.noise import SECURE_MODE_OFF_NOTICE
from geofed_secure.runtime.evaluation import Evaluation, evaluate
from geofed_secure.runtime.federation import FederationData, build_federation
from geofed_secure.runtime.messages import decode_message, encode_message
from geofed_secure.runtime.secure import PayloadLayout, make_aggregator
from geofed_secure.runtime.transcript import SERVER, Transcript
from geofed_secure.server.checkpoint import CheckpointStore
from geofed_secure.server.server import Server

FaultHook = Callable[[str, int, str], None]
STAGES = ("broadcast", "local_training", "upload", "aggregate", "checkpoint")


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
                 make_backbone: Callable[[], torch.nn.Module] | None = None, secure_seed: int | None = None) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.fault_hook = fault_hook or (lambda stage, round_, node_id: None)
        self.reporter = reporter or SilentReporter()
        self.federation: FederationData = build_federation(config, modalities)
        make_backbone = make_backbone or backbone_factory(config)
        self.nodes = {
            spec.id: Node(spec, self.federation.nodes[spec.id], config, anchor_digest=self.federation.anchor_digest,
                          backbone_factory=make_backbone)
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
        self.clipped: dict[str, int] = {}
        self.checkpoints = CheckpointStore(self.out_dir)
        self.history: list[dict[str, Any]] = []
        self.weights: dict[str, float] = {}

    # -- one round ----------------------------------------------------------------------------------
    def _train(self, round_: int, node_id: str, node: Node, broadcast, transcript: Transcript):
        """Deliver the broadcast over the wire and run the node's local round; returns its (local) NodeUpdate."""
        self.fault_hook("broadcast", round_, node_id)
        blob = encode_message(broadcast)
        transcript.record(round_, SERVER, node_id, blob, broadcast)
        self.fault_hook("local_training", round_, node_id)
        update = node.handle_broadcast(decode_message(blob))
        self.fault_hook("upload", round_, node_id)
        return update

    def _federated_round(self, round_: int, transcript: Transcript) -> tuple[dict[str, int], dict[str, str]]:
        if self.secure is not None:
            return self._secure_round(round_, transcript)
        uploaded: dict[str, int] = {}
        failures: dict[str, str] = {}
        broadcasts = self.server.begin_round()
        for node_id, node in self.nodes.items():
            try:
                update = self._train(round_, node_id, node, broadcasts[node_id], transcript)
                up_blob = encode_message(update)
                transcript.record(round_, node_id, SERVER, up_blob, update)
                self.server.receive(decode_message(up_blob))
                uploaded[node_id] = len(up_blob)
                self.reporter.node_done(round_, node_id, _stats_line(node))
            except GeofedError as exc:  # a node's failure or dropout: the round continues without it
                self.server.reject(node_id, str(exc))
                failures[node_id] = f"{type(exc).__name__}: {exc}"
                self.reporter.log(f"round {round_}: node {node_id} left out ({type(exc).__name__}: {exc})")
        self.fault_hook("aggregate", round_, SERVER)
        result = self.server.finish_round()
        self.weights = dict(result.weights)
        return uploaded, failures

    def _secure_round(self, round_: int, transcript: Transcript) -> tuple[dict[str, int], dict[str, str]]:
        """Local training as in plaintext mode, but uploads reach the server only as a masked/encrypted sum."""
        failures: dict[str, str] = {}
        updates = {}
        layout = PayloadLayout.for_round(self.server.global_state, self.n_anchors)
        broadcasts = self.server.begin_round()
        for node_id, node in self.nodes.items():
            try:
                update = self._train(round_, node_id, node, broadcasts[node_id], transcript)
                layout.flatten(update.payload)  # a malformed update is caught here, on the node
                updates[node_id] = update
                self.reporter.node_done(round_, node_id, _stats_line(node))
            except GeofedError as exc:
                failures[node_id] = f"{type(exc).__name__}: {exc}"
                self.reporter.log(f"round {round_}: node {node_id} left out ({type(exc).__name__}: {exc})")
        self.fault_hook("aggregate", round_, SERVER)
        outcome = self.secure.aggregate(round_, updates, layout, transcript, self.fault_hook)
        for node_id, reason in outcome.left_out.items():
            failures[node_id] = reason
            self.reporter.log(f"round {round_}: node {node_id} left out of the sum ({reason})")
        self.server.finish_round_from_sums(outcome.sums, outcome.contributors, {**failures})
        self.weights = {}  # individual precision weights are hidden from the server
        self.clipped = {k: self.clipped.get(k, 0) + v for k, v in outcome.clipped.items()}
        if any(outcome.clipped.values()):
            self.reporter.log(f"round {round_}: clipped coordinates per node {outcome.clipped} (secure.clip = {self.config.secure.clip})")
        return dict(outcome.bytes_sent), failures

    def _local_round(self, round_: int) -> dict[str, str]:
        failures: dict[str, str] = {}
        for node_id, node in self.nodes.items():
            try:
                self.fault_hook("local_training", round_, node_id)
                node.local_round(round_, consensus=None)
                self.reporter.node_done(round_, node_id, _stats_line(node))
            except PrivacyBudgetExceeded as exc:  # this node stops; the others go on
                failures[node_id] = f"{type(exc).__name__}: {exc}"
                self.reporter.log(f"round {round_}: node {node_id} left out ({type(exc).__name__}: {exc})")
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
        else:
            if self.checkpoints.latest_round() is not None:
                raise CheckpointError(f"{self.out_dir} already holds a run; use --resume {self.out_dir} or another --out")
            config_path.write_text(json.dumps(self.config.to_dict(), indent=1, sort_keys=True))
            transcript = Transcript(transcript_dir)
        for line in self.privacy_notice():
            self.reporter.log(line)
        total = self.config.federation.rounds
        for round_ in range(start, total + 1):
            self.reporter.round_started(round_, total)
            t0 = time.perf_counter()
            if self.federated:
                uploaded, failures = self._federated_round(round_, transcript)
                evaluation = evaluate(self.nodes, self._eval_anchors(), self.server.global_state,
                                      eval_samples=self.config.data.eval_samples)
            else:
                uploaded, failures = {}, self._local_round(round_)
                evaluation = evaluate(self.nodes, self._eval_anchors(), None, eval_samples=self.config.data.eval_samples)
            seconds = time.perf_counter() - t0
            record = _round_record(round_, evaluation, uploaded, failures, self.weights, self.nodes, seconds)
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
        out: dict[str, Any] = {"protocol": sec.protocol, "clip": sec.clip, "clipped_coordinates": dict(self.clipped)}
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
        return {"enabled": True, "secure_mode": dp.secure_mode, "unit": "one record (add/remove adjacency)",
                "covers": PRIVACY_COVERAGE,
                "nodes": {k: n.privacy.summary() for k, n in self.nodes.items() if n.privacy is not None}}

    def privacy_notice(self) -> list[str]:
        """Lines for the run log: each node's calibrated noise, and what secure_mode off means."""
        dp = self.config.privacy
        if not dp.enabled:
            return []
        lines = [f"DP-SGD on every node: budget epsilon {dp.epsilon:g} at delta {dp.delta:g} ({dp.accountant} accountant), "
                 f"per-sample clip {dp.max_grad_norm:g}; noise multipliers "
                 + ", ".join(f"{k} {n.privacy.noise_multiplier:.3f} (q {n.privacy.plan.sample_rate:.3f})"
                             for k, n in self.nodes.items() if n.privacy is not None)
                 + f"; precision weights: {dp.weight_budget_share:.0%} of the budget, noise multipliers "
                 + ", ".join(f"{n.privacy.weight_noise_multiplier:.2f}" for n in self.nodes.values() if n.privacy is not None)]
        if not dp.secure_mode:
            lines.append(SECURE_MODE_OFF_NOTICE)
        return lines

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


def _round_record(round_: int, ev: Evaluation, uploaded: Mapping[str, int], failures: Mapping[str, str],
                  weights: Mapping[str, float], nodes: Mapping[str, Node], seconds: float) -> dict[str, Any]:
    return {
        "round": round_,
        "seconds": round(seconds, 3),
        "metrics": ev.summary(),
        "nodes": {
            k: {"cka_to_consensus": m.cka_to_consensus, "debiased_cka": m.debiased_cka, "task_accuracy": m.task_accuracy,
                "bytes_uploaded": uploaded.get(k, 0), "weight": weights.get(k),
                "task_loss": nodes[k].last_stats.task_loss if nodes[k].last_stats else None,
                "geo_loss": nodes[k].last_stats.geo_loss if nodes[k].last_stats else None,
                "failure": failures.get(k)}
            for k, m in ev.nodes.items()
        },
    }


def _round_line(record: Mapping[str, Any]) -> str:
    m = record["metrics"]
    top1 = m["cross_modal_top1"]
    return (f"round {record['round']}: cross-modal top-1 {top1 if top1 is None else f'{top1:.3f}'}, "
            f"CKA {m['cka_to_consensus']:.3f}, task acc {m['task_accuracy']:.3f} ({record['seconds']:.1f} s)")
