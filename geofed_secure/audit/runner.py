"""``geofed audit --run DIR``: inventory a finished run folder from one threat model's view (the first version).

The full audit (sharing schemes x protections x attacks on a trained experiment) is ``geofed audit --plan``
(:mod:`geofed_secure.audit.suite`). What this one does, on a run written by ``geofed run``:

1. selects the adversary's view (:mod:`geofed_secure.audit.views`) and inventories it: message types, bytes, whose
   uploads it holds in clear, masked or encrypted, which aggregates it sees, whether it holds the final model;
2. Gram inversion (:mod:`geofed_secure.audit.attacks.gram_inversion`) against every node for round 1: the adversary
   inverts the most specific Gram it holds for that node (the node's own upload if it is in clear in the view,
   otherwise the consensus it was broadcast) and the result is scored against the node's TRUE round-1 Gram, taken
   from a reference run (``--reference-run``: the same configuration and seed with ``--secure none``, whose round-1
   uploads are those of the audited run, since round 1 starts from the same public state). Error = Procrustes
   distance between the embeddings recovered from the estimate and those determined by the true Gram.

It reads the run's real transcript, so it also shows what a deployment's messages hold (types, bytes, which
uploads in clear / masked / encrypted); it runs no membership or extraction attack.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from geofed_secure.audit.attacks.gram_inversion import invert_gram_upper, procrustes_error
from geofed_secure.audit.metrics import AttackResult, Interval
from geofed_secure.audit.threat_model import ThreatModel
from geofed_secure.audit.views import View, load_run_view
from geofed_secure.errors import CheckpointError, ConfigError
from geofed_secure.wire.round import GRAM_FIELD

RANKS = (5, 10, 20)


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
        elif record.type == "RoundBroadcast" and message.consensus_gram is not None and record.round not in consensus_rounds:
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
    individual = {m.node_id: np.asarray(m.payload[GRAM_FIELD]) for _, m in view.messages(type_="NodeUpdate", round_=1)}
    consensus = next((np.asarray(m.consensus_gram) for _, m in view.messages(type_="RoundBroadcast", round_=2)
                      if m.consensus_gram is not None), None)
    return individual, consensus


def _n_anchors(upper: np.ndarray) -> int:
    n = int(round((1 + np.sqrt(1 + 8 * upper.size)) / 2))
    if n * (n - 1) // 2 != upper.size:
        raise CheckpointError(f"a Gram upper triangle of {upper.size} entries is not B(B-1)/2 for any B")
    return n


def gram_inversion_results(view: View, truth: dict[str, np.ndarray], *, seed: int) -> list[AttackResult]:
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
            attack="gram_inversion", threat_model=view.threat_model.name, target=node_id, trials=n, seed=seed,
            metrics={k: Interval(value=v, low=v, high=v, confidence=1.0) for k, v in metrics.items()},
            metadata={"round": 1, "source": source, "anchors": n, "true_rank": int(target.shape[1]),
                      "note": "deterministic (no sampling): the interval is the point"}))
    return results


def reference_grams(reference_run: Path) -> dict[str, np.ndarray]:
    """The true round-1 Gram of every node, from a plaintext (``--secure none``) twin of the audited run."""
    server = ThreatModel(name="auditor-reference", description="", role="server", behaviour="honest-but-curious",
                         observes=("transcript",))
    view = load_run_view(server, reference_run)
    grams, _ = _round_one_grams(view)
    if not grams:
        raise ConfigError("--reference-run", f"{reference_run} holds no round-1 upload in clear; run the same configuration "
                          "and seed with --secure none to get one")
    return grams


def _verdict(tm: ThreatModel, inv: dict[str, Any], results: list[AttackResult]) -> list[str]:
    lines = []
    clear = inv["uploads"]["in_clear"]
    if clear:
        lines.append(f"{tm.name} holds {len(clear)} node(s)' uploads in clear ({', '.join(clear)}): their B matrices, "
                     "precision weights and anchor Grams.")
    if inv["uploads"]["masked"]:
        lines.append(f"It holds masked inputs of {len(inv['uploads']['masked'])} node(s); only their sum is readable.")
    if inv["uploads"]["encrypted"]:
        lines.append(f"It holds CKKS ciphertexts of {len(inv['uploads']['encrypted'])} node(s); with ANY one node's secret key "
                     "(a colluding node) each is readable.")
    if not inv["messages"]:
        lines.append(f"{tm.name} sees no protocol message" + (", only the released final model." if inv["final_model"] else "."))
    for r in results:
        err = r.metrics["procrustes_error"].value
        base = r.metrics["procrustes_error_no_knowledge"].value
        without = r.metrics.get("procrustes_error_without_node")
        how = "exactly, up to rotation" if err < 1e-4 else (
            f"with Procrustes error {err:.3f} (0 = exact; the others' consensus alone: "
            f"{without.value if without else float('nan'):.3f}; knowing nothing: {base:.3f})")
        lines.append(f"Gram inversion, {r.target}: anchor embeddings recovered from its {r.metadata['source']} {how}.")
    return lines


def audit_run(threat_model: ThreatModel, run_dir: str | Path, out_dir: str | Path, *,
              reference_run: str | Path | None = None, seed: int = 0,
              progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Audit ``run_dir`` from ``threat_model``'s view; writes ``report.json`` and ``report.md`` into ``out_dir``."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / "summary.json").is_file():
        raise ConfigError("--run", f"{run_dir} holds no summary.json; pass a folder written by geofed run")
    progress(f"selecting the view of {threat_model.name} ({threat_model.role}, {threat_model.behaviour})")
    view = load_run_view(threat_model, run_dir)
    inv = inventory(view)
    progress(f"  {inv['messages']} messages, {inv['bytes']:,} bytes, types {inv['types']}")
    results: list[AttackResult] = []
    if reference_run is not None:
        progress("gram inversion against every node (round 1), scored against the reference run's true Grams")
        results = gram_inversion_results(view, reference_grams(Path(reference_run)), seed=seed)
    report = {
        "threat_model": {"name": threat_model.name, "description": threat_model.description, "role": threat_model.role,
                         "behaviour": threat_model.behaviour, "nodes": list(threat_model.nodes),
                         "observes": list(threat_model.observes)},
        "run": str(run_dir), "reference_run": str(reference_run) if reference_run else None, "seed": seed,
        "protocol": json.loads((run_dir / "summary.json").read_text())["secure_aggregation"]["protocol"],
        "view": inv, "results": [r.to_dict() for r in results], "verdict": _verdict(threat_model, inv, results),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    (out_dir / "report.md").write_text(_markdown(report))
    return report


def _markdown(report: dict[str, Any]) -> str:
    tm, inv = report["threat_model"], report["view"]
    lines = [f"# Audit: {tm['name']}", "", tm["description"], "",
             f"- run: `{report['run']}` (secure aggregation: {report['protocol']})",
             f"- adversary: role {tm['role']}, {tm['behaviour']}, nodes {tm['nodes'] or '-'}, observes {', '.join(tm['observes'])}",
             f"- reference run (ground truth): `{report['reference_run']}`" if report["reference_run"] else
             "- no reference run: attacks that need ground truth were not scored", "",
             "## What the adversary sees", "",
             f"{inv['messages']} messages, {inv['bytes']:,} bytes, rounds {inv['rounds']}; final model: {'yes' if inv['final_model'] else 'no'}.", "",
             "| message type | count |", "|---|---|"]
    lines += [f"| {t} | {n} |" for t, n in inv["types"].items()]
    lines += ["", "| uploads | nodes (rounds) |", "|---|---|"]
    lines += [f"| {form.replace('_', ' ')} | " + (", ".join(f"{k} ({v})" for k, v in nodes.items()) or "none") + " |"
              for form, nodes in inv["uploads"].items()]
    if report["results"]:
        lines += ["", "## Gram inversion (round 1)", "",
                  "| node | source | anchors | Procrustes error | rank 5 | rank 10 | rank 20 | consensus without the node | knowing nothing |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in report["results"]:
            m = {k: v["value"] for k, v in r["metrics"].items()}
            cells = [r["target"], r["metadata"]["source"], str(r["metadata"]["anchors"]), f"{m['procrustes_error']:.3g}",
                     *(f"{m[f'procrustes_error_rank_{k}']:.3g}" for k in RANKS),
                     f"{m['procrustes_error_without_node']:.3g}" if "procrustes_error_without_node" in m else "-",
                     f"{m['procrustes_error_no_knowledge']:.3g}"]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Verdict", ""] + [f"- {line}" for line in report["verdict"]] + [""]
    return "\n".join(lines)
