"""The recorded-run part of an audit plan (``run = DIR``): a finished ``geofed run`` seen from one threat model.

The plan-driven experiment (:mod:`geofed_secure.audit.experiment`) trains the target node-locally and simulates each
protection; this part reads what a deployment actually put on the wire. On the run folder named by the plan's
``run`` it

1. selects the adversary's view of the recorded transcript (:mod:`geofed_secure.audit.views`) and inventories it:
   message types, bytes, whose uploads it holds in clear, masked or encrypted, which aggregates it sees, whether it
   holds the final model;
2. with the plan's ``reference_run`` (the same configuration and seed run with ``--secure none``, whose round-1
   uploads are those of the audited run, since round 1 starts from the same public state): Gram inversion
   (:mod:`geofed_secure.audit.attacks.gram_inversion`) against every node for round 1. The adversary inverts the most
   specific Gram it holds for that node (the node's own upload if it is in clear in the view, otherwise the
   consensus it was broadcast); the result is scored against the node's TRUE round-1 Gram. Error = Procrustes
   distance between the embeddings recovered from the estimate and those determined by the true Gram.

It runs no membership or extraction attack: those are the experiment's.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geofed_secure.audit.attacks.gram_inversion import invert_gram_upper, procrustes_error
from geofed_secure.audit.metrics import AttackResult, Interval
from geofed_secure.audit.threat_model import ThreatModel
from geofed_secure.audit.views import View, load_run_view
from geofed_secure.config import did_you_mean
from geofed_secure.errors import CheckpointError, ConfigError
from geofed_secure.wire.round import GRAM_FIELD, NodeUpdate, RoundBroadcast

ATTACK = "transcript_gram_inversion"
RANKS = (5, 10, 20)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedRunAudit:
    """What one adversary holds of a recorded run (``inventory``) and the round-1 Gram inversion results."""

    run: str
    reference_run: str | None
    protocol: str  # the run's secure aggregation protocol, from its summary.json
    inventory: dict[str, Any]
    results: tuple[AttackResult, ...]

    def to_dict(self) -> dict[str, Any]:
        """The report's ``recorded_run`` section (the results go to the report's one result list)."""
        return {"run": self.run, "reference_run": self.reference_run, "protocol": self.protocol, "view": self.inventory}


def inventory(view: View) -> dict[str, Any]:
    """What the adversary holds, by kind (counts per type, whose uploads in which form, aggregates, final model)."""
    by_form: dict[str, dict[str, list[int]]] = {"in_clear": defaultdict(list), "masked": defaultdict(list),
                                                "encrypted": defaultdict(list)}
    form = {"NodeUpdate": "in_clear", "MaskedInput": "masked", "CkksEncryptedInput": "encrypted"}
    consensus_rounds, released = [], []
    own = view.threat_model.parties
    for record, message in view.messages():
        if record.type in form and record.sender not in own:  # an adversary's own uploads teach it nothing new
            by_form[form[record.type]][record.sender].append(record.round)
        elif isinstance(message, RoundBroadcast) and message.consensus_gram is not None and record.round not in consensus_rounds:
            consensus_rounds.append(record.round)
        elif record.type == "AggregateRelease" and record.round not in released:
            released.append(record.round)
    return {
        "messages": len(view.records), "bytes": sum(r.nbytes for r in view.records),
        "types": dict(sorted(Counter(r.type for r in view.records).items())), "rounds": list(view.rounds),
        "uploads": {k: {node: sorted(set(rounds)) for node, rounds in sorted(v.items())} for k, v in by_form.items()},
        "consensus_gram_broadcast_in_rounds": consensus_rounds, "decrypted_sums_in_rounds": released,
        "final_model": view.final_state is not None,
    }


def _round_one_grams(view: View) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """(individual round-1 Grams in clear, by node; the consensus of round 1 as broadcast in round 2)."""
    individual = {m.node_id: np.asarray(m.payload[GRAM_FIELD]) for _, m in view.messages(type_="NodeUpdate", round_=1)
                  if isinstance(m, NodeUpdate)}
    consensus = next((np.asarray(m.consensus_gram) for _, m in view.messages(type_="RoundBroadcast", round_=2)
                      if isinstance(m, RoundBroadcast) and m.consensus_gram is not None), None)
    return individual, consensus


def _n_anchors(upper: np.ndarray) -> int:
    n = round((1 + np.sqrt(1 + 8 * upper.size)) / 2)
    if n * (n - 1) // 2 != upper.size:
        raise CheckpointError(f"a Gram upper triangle of {upper.size} entries is not B(B-1)/2 for any B")
    return n


def gram_inversion_results(view: View, truth: dict[str, np.ndarray], *, seed: int,
                           metadata: dict[str, Any] | None = None) -> list[AttackResult]:
    """Round-1 Gram inversion against every node with a known true Gram."""
    individual, consensus = _round_one_grams(view)
    results = []
    for node_id, true_upper in sorted(truth.items()):
        estimate, source = (individual[node_id], "own upload in clear") if node_id in individual else (consensus, "consensus")
        if estimate is None:
            continue  # the view holds no Gram at all (e.g. an outside observer)
        n = _n_anchors(true_upper)
        target = invert_gram_upper(true_upper, n)
        metrics = {"procrustes_error": procrustes_error(invert_gram_upper(estimate, n), target),
                   # knowing nothing: orthogonal anchors (identity Gram); an estimate should beat this to carry signal
                   "procrustes_error_no_knowledge": procrustes_error(np.eye(n), target)}
        others = [g for other, g in truth.items() if other != node_id]
        if others:  # what the consensus would give WITHOUT this node: the part of the error its participation leaks
            metrics["procrustes_error_without_node"] = procrustes_error(invert_gram_upper(np.mean(others, axis=0), n), target)
        metrics |= {f"procrustes_error_rank_{r}": procrustes_error(invert_gram_upper(estimate, n, r), target) for r in RANKS}
        results.append(AttackResult(
            attack=ATTACK, threat_model=view.threat_model.name, target=node_id, trials=n, seed=seed,
            metrics={k: Interval(value=v, low=v, high=v, confidence=1.0) for k, v in metrics.items()},
            power=null_power(target, seed=seed),
            metadata=(metadata or {}) | {"round": 1, "source": source, "anchors": n, "true_rank": int(target.shape[1]),
                                         "note": "deterministic (no sampling): the interval is the point"}))
    return results


NULL_DRAWS = 200


def null_power(target: np.ndarray, *, seed: int, draws: int = NULL_DRAWS, alpha: float = 0.05) -> dict[str, float]:
    """What a Gram inversion could tell apart from knowing nothing about ``target`` (the true anchor embeddings,
    [B, r]): the Procrustes errors of ``draws`` random embeddings of the same shape and Frobenius norm (Gaussian
    directions; a guess with no information but the scale, which a Gram's trace gives away), and the ``alpha``
    quantile of them. An estimate with an error below ``detection_threshold`` beats an uninformed guess at level
    ``alpha``; above it, the inversion shows nothing this test could detect. With equal norms an error is at most
    sqrt(2) (the best rotation never anti-aligns), so the threshold is scale-free and below sqrt(2).

    (Until 2026-12-07 the draws were not scaled: unit-variance entries against embeddings of norm ~ sqrt(B) gave
    thresholds near 13 while the errors are of order 1, so every estimate, even one knowing nothing, "beat" them.)"""
    rng = np.random.default_rng([seed, 0x6A11])
    scale = float(np.linalg.norm(target))
    null = []
    for _ in range(draws):
        guess = rng.standard_normal(target.shape)
        null.append(procrustes_error(guess * (scale / np.linalg.norm(guess)), target))
    return {"detection_threshold": float(np.quantile(null, alpha)), "null_median": float(np.median(null)),
            "null_draws": float(draws), "alpha": alpha}


def reference_grams(reference_run: Path) -> dict[str, np.ndarray]:
    """The true round-1 Gram of every node, from a plaintext (``--secure none``) twin of the audited run."""
    server = ThreatModel(name="auditor-reference", description="", role="server", behaviour="honest-but-curious",
                         observes=("transcript",))
    view = load_run_view(server, reference_run)
    grams, _ = _round_one_grams(view)
    if not grams:
        raise ConfigError("reference_run", f"{reference_run} holds no round-1 upload in clear; run the same configuration "
                          "and seed with --secure none to get one")
    return grams


def _summary(run_dir: Path, key: str) -> dict[str, Any]:
    path = run_dir / "summary.json"
    if not path.is_file():
        raise ConfigError(key, f"{run_dir} holds no summary.json; name a folder written by geofed run")
    try:
        summary = json.loads(path.read_bytes())
    except (OSError, ValueError):
        summary = None
    secure = summary.get("secure_aggregation") if isinstance(summary, dict) else None
    nodes = summary.get("nodes") if isinstance(summary, dict) else None
    if (not isinstance(summary, dict) or not isinstance(secure, dict) or not isinstance(secure.get("protocol"), str)
            or not isinstance(nodes, list) or not all(isinstance(n, dict) and isinstance(n.get("id"), str) for n in nodes)):
        raise ConfigError(key, f"{path} is not the summary.json of a geofed run (unreadable or incomplete)")
    return summary


def _protocol(run_dir: Path, key: str) -> str:
    return _summary(run_dir, key)["secure_aggregation"]["protocol"]


def check_recorded_nodes(threat_model: ThreatModel, run_dir: str | Path, *, key: str = "run") -> None:
    """Refuse a threat model naming nodes the recorded run does not have (its view would be silently empty)."""
    nodes = [node["id"] for node in _summary(Path(run_dir), key)["nodes"]]
    unknown = sorted(set(threat_model.nodes) - set(nodes))
    if unknown:
        raise ConfigError("adversary.nodes", f"threat model {threat_model.name!r} names node(s) {unknown} that the recorded "
                          f"run {run_dir} does not have{did_you_mean(unknown[0], nodes)}; its nodes: {', '.join(nodes)}")


def audit_recorded_run(threat_model: ThreatModel, run_dir: str | Path, *, reference_run: str | Path | None = None,
                       seed: int = 0, progress: Callable[[str], None] = lambda line: None) -> RecordedRunAudit:
    """Inventory ``run_dir`` from ``threat_model``'s view; with ``reference_run``, score round-1 Gram inversion."""
    run_dir = Path(run_dir)
    protocol = _protocol(run_dir, "run")
    check_recorded_nodes(threat_model, run_dir)
    progress(f"recorded run {run_dir} ({protocol}): selecting the view of {threat_model.name} "
             f"({threat_model.role}, {threat_model.behaviour})")
    view = load_run_view(threat_model, run_dir)
    inv = inventory(view)
    progress(f"  {inv['messages']} messages, {inv['bytes']:,} bytes, types {inv['types']}")
    results: list[AttackResult] = []
    if reference_run is not None:
        progress("  gram inversion against every node (round 1), scored against the reference run's true Grams")
        meta = {"release": "gram", "view": f"recorded transcript ({protocol})", "run": str(run_dir)}
        results = gram_inversion_results(view, reference_grams(Path(reference_run)), seed=seed, metadata=meta)
    return RecordedRunAudit(run=str(run_dir), reference_run=None if reference_run is None else str(reference_run),
                            protocol=protocol, inventory=inv, results=tuple(results))
