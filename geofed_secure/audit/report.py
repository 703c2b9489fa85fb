"""The audit report: a plain verdict computed from the results, Markdown tables, and PNG plots.

Everything here reads :class:`AttackResult` objects or their ``to_dict()`` form (and, for a recorded run, the
inventory of the adversary's view); nothing is measured here. A report has the same keys whatever the plan audits:
``experiment`` is None when the plan trains nothing, ``recorded_run`` is None when it names no run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geofed_secure.audit.metrics import AttackResult
from geofed_secure.audit.power import dp_max_auc
from geofed_secure.privacy.accounting import ADJACENCY
from geofed_secure.privacy.noise import HOLDS_AGAINST

MEMBERSHIP = ("lira_release", "lira_release_unit", "prototype_threshold", "prototype_lira", "prototype_threshold_node_encoder",
              "prototype_lira_node_encoder", "model_threshold", "model_lira", "model_lira_offline", "model_rmia")


def _find(report: dict[str, Any], attack: str, **meta: Any) -> list[dict[str, Any]]:
    return [r for r in report["results"] if r["attack"] == attack
            and all(r["metadata"].get(k) == v for k, v in meta.items())]


def _best(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The strongest of several attacks on one release (highest AUC), as a one-element list (empty if none)."""
    return [max(rows, key=lambda r: r["metrics"]["auc"]["value"])] if rows else []


def _ci(metric: dict[str, float], digits: int = 3) -> str:
    return f"{metric['value']:.{digits}f} [{metric['low']:.{digits}f}, {metric['high']:.{digits}f}]"


UNCOVERED_BY_DP = {"prototypes": "class means of PRIVATE records, released with no DP mechanism",
                   "update": "", "gram": "", "raw_embeddings": ""}  # Gram and anchor embeddings: post-processing


def detection(row: dict[str, Any]) -> str:
    """A membership result in words that carry its power: 'DETECTED: ...' or 'not detected ...; this attack could
    have detected AUC >= X', with TPR at 1% FPR, the FPR it achieved and the negatives behind it, and a flag for
    FPR points below the audit's resolution."""
    m, power, md = row["metrics"], row.get("power") or {}, row["metadata"]
    low = md.get("low_fpr", {})
    at1 = low.get("0.01", {})
    if m["auc"]["low"] > 0.5:
        text = f"DETECTED: AUC {_ci(m['auc'])}"
    elif m["auc"]["high"] < 0.5:
        # Below chance beyond its interval: either the statistic carries membership information with the opposite
        # sign (an attacker that learns the sign on its shadows would score 1 - AUC) or the interval is too narrow
        # for this few runs. Either way the power computed for a calibrated attack does not hold for it.
        text = (f"not detected, and BELOW CHANCE (AUC {_ci(m['auc'])}): the statistic is inverted or its interval "
                f"too narrow for this few runs, so its nominal power (AUC >= "
                f"{power.get('min_detectable_auc', float('nan')):.3f} with {row['trials']} trials) does not hold and "
                "'not detected' says little (the same statistic with its sign learnt on shadows would score "
                f"{1 - m['auc']['value']:.3f})")
    else:
        text = (f"not detected (AUC {_ci(m['auc'])}); with {row['trials']} trials this attack could have detected AUC >= "
                f"{power.get('min_detectable_auc', float('nan')):.3f} (80% power)")
    text += f"; TPR at 1% FPR {_ci(m['tpr_at_0.01_fpr'])}"
    if at1:
        text += f" (achieved FPR {at1['achieved_fpr']:.4f} over {at1['negatives']} non-members)"
    at01 = low.get("0.001", {})
    if at01 and not at01["resolved"]:
        text += f"; 0.1% FPR is below this audit's resolution ({at01['negatives']} non-members: only FPR 0 is reachable)"
    elif at01:
        text += f"; TPR at 0.1% FPR {_ci(m['tpr_at_0.001_fpr'], 4)}"
    return text


def dp_power(row: dict[str, Any], epsilon: float, delta: float) -> str:
    """What a DP budget allows and what this result could have refuted of it."""
    refutable = (row.get("power") or {}).get("max_certifiable_epsilon", float("nan"))
    return (f"(epsilon {epsilon:g}, delta {delta:g})-DP allows membership AUC up to {dp_max_auc(epsilon, delta):.3f}; "
            f"a perfect attack on these trials could refute at most epsilon {refutable:.2f}"
            + (" (below the budget: this audit cannot refute the DP claim)" if refutable < epsilon else ""))


def verdict(report: dict[str, Any]) -> list[str]:
    """Plain sentences on the paper's claims and on DP, each with the numbers that support it and the power behind
    them; never 'no leakage': what was not detected is stated with the smallest effect the attack could detect."""
    lines: list[str] = []
    tm = report["threat_model"]["name"]
    delta = (report.get("experiment") or {}).get("delta", 1e-5)
    eps_of = {k: v["epsilon"] for k, v in (report.get("experiment") or {}).get("levels", {}).items()}
    for cell in report["views"]:
        epsilon = eps_of.get(cell)
        update = _best(_find(report, "lira_release", release="update", protection=cell)
                       + _find(report, "lira_release_unit", release="update", protection=cell))
        if update:
            line = (f"[{cell}] Membership from the GeoDoRA B update ({update[0]['metadata']['view']} view, "
                    f"{update[0]['attack']}): {detection(update[0])}")
            if epsilon is not None:
                line += "; " + dp_power(update[0], epsilon, delta)
            model = _best(_find(report, "model_lira", protection="no-dp") + _find(report, "model_rmia", protection="no-dp"))
            if epsilon is None and update[0]["metrics"]["auc"]["low"] <= 0.5 and model and \
                    model[0]["metrics"]["auc"]["low"] > 0.5:
                line += (f". The update is computed from the node's model, which itself leaks (reference {model[0]['attack']} "
                         f"AUC {_ci(model[0]['metrics']['auc'])}): no DP bounds what a stronger attack on the update could get")
            lines.append(line + ".")
        if epsilon is not None:
            shown = [r for r in ("update", *report["plan"]["schemes"]) if report["views"][cell].get(r) not in (None, "hidden")]
            uncovered = [f"{r} ({UNCOVERED_BY_DP[r]})" for r in shown if UNCOVERED_BY_DP.get(r)]
            lines.append(f"[{cell}] The DP budget covers the update, the Gram and the anchor embeddings (post-processing of "
                         "the DP-trained model and the privatised precision weight); "
                         + (f"NOT covered: {', '.join(uncovered)}." if uncovered else "every release in view is covered."))
        gram = _best(_find(report, "lira_release", release="gram", protection=cell)
                     + _find(report, "lira_release_unit", release="gram", protection=cell))
        proto = (_find(report, "prototype_lira", protection=cell) + _find(report, "prototype_threshold", protection=cell)
                 + _find(report, "lira_release", release="prototypes", protection=cell)
                 + _find(report, "lira_release_unit", release="prototypes", protection=cell))
        if gram and proto:
            g = gram[0]["metrics"]
            p = max(proto, key=lambda r: r["metrics"]["auc"]["value"])
            pm = p["metrics"]
            g_leaks, p_leaks = g["auc"]["low"] > 0.5, pm["auc"]["low"] > 0.5
            if p_leaks and not g_leaks:
                finding = (f"prototypes leak membership and the Gram's leakage was not detected (this attack could have detected "
                           f"AUC >= {gram[0]['power']['min_detectable_auc']:.3f}): consistent with the paper's claim at this power.")
            elif g_leaks and not p_leaks:
                finding = "the Gram leaks membership and prototypes' leakage was not detected: CONTRADICTS the paper's claim."
            elif g_leaks and p_leaks:
                finding = ("both leak; the Gram leaks " + ("less" if g["auc"]["high"] < pm["auc"]["low"] else "more"
                           if g["auc"]["low"] > pm["auc"]["high"] else "not distinguishably more or less") + " than prototypes at this power.")
            else:
                below = [name for name, row in (("Gram", gram[0]), ("prototype", p)) if row["metrics"]["auc"]["high"] < 0.5]
                finding = ((f"neither was detected (both AUC intervals include 0.5); these attacks could have detected AUC >= "
                            f"{gram[0]['power']['min_detectable_auc']:.3f} / {p['power']['min_detectable_auc']:.3f}.")
                           if not below else
                           f"neither was detected, but the {' and the '.join(below)} attack scored below chance beyond its "
                           "interval (inverted, or an interval too narrow for this few runs): this comparison says little.")
            lines.append(f"[{cell}] Membership from the Gram of public anchors ({gram[0]['attack']}): {detection(gram[0])}; "
                         f"from prototypes of private data ({p['attack']}): {detection(p)}; against {tm}, {finding}")
        upper = _best(_find(report, "prototype_lira_node_encoder", protection=cell)
                      + _find(report, "prototype_threshold_node_encoder", protection=cell))
        if upper:
            lines.append(f"[{cell}] Upper bound, an adversary that also holds the node's trained encoder: membership from "
                         f"prototypes ({upper[0]['attack']}): {detection(upper[0])} "
                         "(compare the model ceiling below: the encoder itself leaks). A Gram of public anchors is a function "
                         "of that encoder and public inputs: it adds nothing for such an adversary.")
        for release in ("gram", "raw_embeddings"):
            every = _find(report, "extraction", release=release, protection=cell)
            rows = [r for r in every if r["metadata"].get("simulated_others") is not False]
            plain = [r for r in every if r["metadata"].get("simulated_others") is False]
            if rows:
                best = max(rows, key=lambda r: r["metadata"]["anchors"])
                m = best["metrics"]
                reduction = m.get("procrustes_error_reduction")
                if reduction is not None:  # the paired t test over runs whose power the report states
                    better = reduction["low"] > 0
                    tested = (f"; mean error reduction {_ci(reduction)} (95% t interval over "
                              f"{best['metadata'].get('runs', '?')} training runs)")
                else:  # a report written before the paired test: its trial spreads do not overlap
                    better = m["procrustes_error"]["high"] < m["baseline_procrustes_error"]["low"]
                    tested = ""
                lines.append(
                    f"[{cell}] Extraction from the {release.replace('_', ' ')} (B = {best['metadata']['anchors']}): held-out "
                    f"Procrustes error {_ci(m['procrustes_error'])} vs {m['baseline_procrustes_error']['value']:.3f} for the "
                    f"public model{tested}; downstream agreement {m['downstream_agreement']['value']:.3f} vs "
                    f"{m['baseline_downstream_agreement']['value']:.3f}. "
                    + ("The release lets the adversary reproduce the node's encoder better than the public model: the "
                       "paper's claim that a Gram prevents reverse-engineering is REFUTED for this view." if better and release == "gram"
                       else "The release enables extraction beyond the public model." if better
                       else "No extraction beyond the public model was detected for this view; this sweep could have "
                       f"detected a mean error reduction >= {best['power'].get('min_detectable_difference', float('nan')):.3f}."))
                if best["metadata"].get("simulated_others"):
                    lines[-1] += (" (The adversary subtracted its simulation of the other nodes from the sum, each "
                                  "retrained on half that node's data.)")
            for row in plain:
                m, reduction = row["metrics"], row["metrics"]["procrustes_error_reduction"]
                lines.append(
                    f"[{cell}] Extraction from the {release.replace('_', ' ')} read as the sum it is, without simulating "
                    f"the other nodes (B = {row['metadata']['anchors']}): held-out Procrustes error "
                    f"{_ci(m['procrustes_error'])} vs {m['baseline_procrustes_error']['value']:.3f} for the public model; "
                    f"mean error reduction {_ci(reduction)} (95% t interval over {row['metadata'].get('runs', '?')} "
                    "training runs): " + ("DETECTED." if reduction["low"] > 0 else
                                          "not detected; this could have detected a mean error reduction >= "
                                          f"{row['power'].get('min_detectable_difference', float('nan')):.3f}."))
    for level in (report["experiment"] or {}).get("levels", {}):
        lira, rmia = _find(report, "model_lira", protection=level), _find(report, "model_rmia", protection=level)
        if lira and rmia:
            epsilon = eps_of.get(level)
            for row in (*lira, *rmia, *_find(report, "model_lira_offline", protection=level)):
                lines.append(f"[{level}] Reference ceiling, the node's trained model (in no federation adversary's view), "
                             f"{row['attack']}: {detection(row)}"
                             + (f"; {dp_power(row, epsilon, delta)}" if epsilon is not None else "") + ".")
    for row in _find(report, "canary_one_run"):
        md = row["metadata"]
        audit = ("Gradient-canary audit (Dirac canaries; white box: every noisy gradient seen)"
                 if md.get("canary_kind") == "gradient" else "Canary audit")
        bound = row["metrics"]["epsilon_lower_bound"]["value"]
        most = row["power"]["max_certifiable_epsilon"]
        size = (f"{row['metrics']['correct_guesses']['value']:.0f}/{row['trials']} correct guesses on {md['canaries']} "
                f"canaries; with every guess right it could certify at most epsilon {most:.2f}")
        if md["accountant_epsilon"] is None:
            lines.append(f"[{md['protection']}] Canary audit without DP (control): empirical epsilon lower bound {bound:.2f} "
                         f"({size}).")
        elif md["failed"]:
            lines.append(f"[{md['protection']}] {audit}: empirical epsilon lower bound {bound:.2f} ABOVE the accountant's "
                         f"{md['accountant_epsilon']:.2f} ({size}): FAILURE of the DP implementation or its accounting.")
        else:
            lines.append(f"[{md['protection']}] {audit}: empirical epsilon lower bound {bound:.2f}, accountant "
                         f"{md['accountant_epsilon']:.2f} ({size}): " + (
                             "the audit had the power to refute the accountant and did not." if most > md["accountant_epsilon"]
                             else "this audit is too small to refute the accountant's epsilon: it tests nothing about it."))
    for row in _find(report, "seed_attack_whitebox"):
        md = row["metadata"]
        lines.append(f"[{md['protection']}, white box, {md['randomness']} noise] A server that holds the noise seed and "
                     f"every record but the candidate: {row['metrics']['correct_guesses']['value']:.0f}/{row['trials']} "
                     f"candidates identified ({md['exact_matches']} releases regenerated bit for bit), empirical epsilon "
                     f"lower bound {row['metrics']['epsilon_lower_bound']['value']:.2f} vs accountant "
                     f"{md['accountant_epsilon']:.2f} (this size certifies at most {row['power']['max_certifiable_epsilon']:.2f})"
                     + (": the DP claim does NOT hold against this server." if md["failed"] else "."))
    for cell, kinds in report["views"].items():
        hidden = [r for r, k in kinds.items() if k == "hidden"]
        if hidden:
            lines.append(f"[{cell}] Not in {tm}'s view: {', '.join(hidden)}.")
    if report.get("recorded_run") is not None:
        lines += _recorded_run_verdict(report)
    return lines


def _recorded_run_verdict(report: dict[str, Any]) -> list[str]:
    tm, recorded = report["threat_model"]["name"], report["recorded_run"]
    inv, where = recorded["view"], f"[recorded run, {recorded['protocol']}]"
    lines = []
    clear = inv["uploads"]["in_clear"]
    if clear:
        lines.append(f"{where} {tm} holds {len(clear)} node(s)' uploads in clear ({', '.join(clear)}): their B matrices, "
                     "precision weights and anchor Grams.")
    if inv["uploads"]["masked"]:
        lines.append(f"{where} It holds masked inputs of {len(inv['uploads']['masked'])} node(s); only their sum is readable.")
    if inv["uploads"]["encrypted"]:
        lines.append(f"{where} It holds CKKS ciphertexts of {len(inv['uploads']['encrypted'])} node(s); with ANY one node's "
                     "secret key (a colluding node) each is readable.")
    if not inv["messages"]:
        lines.append(f"{where} {tm} sees no protocol message"
                     + (", only the released final model." if inv["final_model"] else "."))
    for r in _find(report, "transcript_gram_inversion"):
        m = {k: v["value"] for k, v in r["metrics"].items()}
        err, base, without = m["procrustes_error"], m["procrustes_error_no_knowledge"], m.get("procrustes_error_without_node")
        how = "exactly, up to rotation" if err < 1e-4 else (
            f"with Procrustes error {err:.3f} (0 = exact; the others' consensus alone: "
            f"{without if without is not None else float('nan'):.3f}; knowing nothing: {base:.3f})")
        threshold = (r.get("power") or {}).get("detection_threshold")
        power = "" if threshold is None else (
            f" Power: an error below {threshold:.3f} beats a random guess of the same shape at 5% "
            f"({int(r['power']['null_draws'])} draws); " + ("this one does." if err < threshold else
                                                              "this one does not: not detected, which is not 'no leakage'."))
        lines.append(f"{where} Gram inversion, {r['target']}: anchor embeddings recovered from its "
                     f"{r['metadata']['source']} {how}.{power}")
    return lines


def _recorded_run_markdown(report: dict[str, Any]) -> list[str]:
    recorded = report["recorded_run"]
    inv = recorded["view"]
    out = ["", f"## Recorded run: `{recorded['run']}`", "",
           f"Secure aggregation: {recorded['protocol']}; "
           + (f"reference run (ground truth): `{recorded['reference_run']}`." if recorded["reference_run"] else
              "no reference run: the Gram inversion (which needs ground truth) was not scored."), "",
           (f"{inv['messages']} messages, {inv['bytes']:,} bytes, rounds {inv['rounds']}; final model: "
            f"{'yes' if inv['final_model'] else 'no'}."), "", "| message type | count |", "|---|---|"]
    out += [f"| {t} | {n} |" for t, n in inv["types"].items()]
    out += ["", "| uploads | nodes (rounds) |", "|---|---|"]
    out += [f"| {form.replace('_', ' ')} | " + (", ".join(f"{k} ({v})" for k, v in nodes.items()) or "none") + " |"
            for form, nodes in inv["uploads"].items()]
    rows = _find(report, "transcript_gram_inversion")
    if rows:
        out += ["", "### Gram inversion (round 1)", "",
                ("| node | source | anchors | Procrustes error | rank 5 | rank 10 | rank 20 | consensus without the node "
                 "| knowing nothing | detectable below (5%, random guesses) |"), "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            m = {k: v["value"] for k, v in r["metrics"].items()}
            cells = [r["target"], r["metadata"]["source"], str(r["metadata"]["anchors"]), f"{m['procrustes_error']:.3g}",
                     *(f"{m[f'procrustes_error_rank_{k}']:.3g}" for k in (5, 10, 20)),
                     f"{m['procrustes_error_without_node']:.3g}" if "procrustes_error_without_node" in m else "-",
                     f"{m['procrustes_error_no_knowledge']:.3g}",
                     f"{r['power']['detection_threshold']:.3g}" if (r.get("power") or {}).get("detection_threshold")
                     is not None else "-"]
            out.append("| " + " | ".join(cells) + " |")
    return out


def _experiment_header(report: dict[str, Any]) -> list[str]:
    exp = report["experiment"]
    return [
        (f"- target: `{exp['target']}` ({exp['modality']}), pool of {exp['pool']} private records, B = {exp['anchors']} "
         f"public anchors; {exp['runs']} training runs per privacy level, each on a random half of the pool "
         "(each run is the target once, the others are its shadows)"),
        f"- retrained: {exp['retrained']}",
        (f"- plan digest `{report['plan_digest'][:16]}`, seed {report['seed']}; this audit took {report.get('seconds', 0)} s; "
         f"training the experiment took {round(exp['seconds'].get('total', 0), 1)} s when it ran (it is cached and "
         "shared by every threat model's audit of the same plan)"),
        "", "Privacy levels trained: " + "; ".join(
            f"{k}: held-out accuracy {v['heldout_accuracy']:.3f}" + (f", accountant epsilon {v['accountant_epsilon']:.2f}"
                                                                     if v["accountant_epsilon"] is not None else "")
            for k, v in exp["levels"].items()),
        *([(f"Accountant epsilons are for {ADJACENCY} adjacency; the audited node draws its DP noise from its own secret "
            f"(the default mode), so they hold against: {'; '.join(HOLDS_AGAINST['node-secret'])}.")]
          if any(v["accountant_epsilon"] is not None for v in exp["levels"].values()) else []),
    ]


def _experiment_sections(report: dict[str, Any]) -> list[str]:
    plan = report["plan"]
    out = ["", "## What the adversary sees", "", "| cell | " + " | ".join(["update", *plan["schemes"]]) + " |",
           "|---|" + "---|" * (1 + len(plan["schemes"]))]
    out += [f"| {cell} | " + " | ".join(kinds.get(r, "-") for r in ["update", *plan["schemes"]]) + " |"
            for cell, kinds in report["views"].items()]
    out += ["", ("`individual`: the node's own upload; `aggregate`: a sum with the uploads of nodes the adversary does not "
                 "control (it subtracts its own and its simulation of the others); `hidden`: not in the view."), "",
            "## Membership inference", "",
            ("Power: the smallest AUC each attack detects with 80% power at its number of trials (two-way bootstrap "
             "standard error where larger than the independent-trials one), and the largest epsilon a perfect attack on "
             "those trials could refute. TPR at a stated FPR: the FPR the chosen threshold achieved and the non-members "
             "behind it; intervals are distribution-free (order statistics + Clopper-Pearson, widened to the bootstrap); "
             "`n/r`: below resolution (fewer than 1/FPR non-members: only FPR 0 is reachable)."), "",
            ("| cell | release | attack | AUC [95% CI] | detectable AUC >= | TPR at 1% FPR (achieved FPR) | TPR at 0.1% FPR "
             "| advantage | max refutable epsilon | trials |"),
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        if r["attack"] in MEMBERSHIP:
            m, md, pw = r["metrics"], r["metadata"], r.get("power") or {}
            low = md.get("low_fpr", {})
            a1 = f" ({low['0.01']['achieved_fpr']:.4f})" if "0.01" in low else ""
            t01 = (_ci(m["tpr_at_0.001_fpr"], 4) + ("" if low.get("0.001", {}).get("resolved", True) else " n/r"))
            out.append(f"| {md['protection']} | {md['release']} | {r['attack']} | {_ci(m['auc'])} | "
                       f"{pw.get('min_detectable_auc', float('nan')):.3f} | {_ci(m['tpr_at_0.01_fpr'])}{a1} | {t01} | "
                       f"{_ci(m['advantage'])} | {pw.get('max_certifiable_epsilon', float('nan')):.2f} | {r['trials']} |")
    rows = [r for r in report["results"] if r["attack"].startswith("prototype_label_inference")]
    if rows:
        out += ["", "## Prototype leakage: label inference", "",
                ("Labels of the node's records (outside the run) guessed as the class of the nearest released prototype, "
                 "against the nearest public-anchor class centroid in the same embedding (interval over runs)."), "",
                "| cell | adversary's embedding | accuracy from prototypes | public baseline | trials |", "|---|---|---|---|---|"]
        out += [f"| {r['metadata']['protection']} | {r['metadata']['embedding']} | {_ci(r['metrics']['accuracy'])} | "
                f"{_ci(r['metrics']['public_baseline_accuracy'])} | {r['trials']} |" for r in rows]
    rows = [r for r in report["results"] if r["attack"] == "extraction"]
    if rows:
        out += ["", "## Functional extraction and Gram inversion", "",
                ("Held-out public inputs, after orthogonal alignment. Anchor error: the released anchor embeddings (a Gram "
                 "inverted by eigendecomposition) against the node's true ones; ranks 5 / 10 / 20 truncate the inversion."), "",
                ("Error intervals: 2.5-97.5% of the trials (the spread); reduction: mean error reduction against the public "
                 "model with its 95% t interval over training runs (the test: detected when it excludes 0)."), "",
                ("| cell | release | B | held-out Procrustes error | public-model baseline | reduction | downstream agreement "
                 "| baseline agreement | anchor error | rank 5 | rank 10 | rank 20 | trials |"),
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            m, md = r["metrics"], r["metadata"]
            ranks = [f"{m[k]['value']:.3f}" if k in m else "-" for k in
                     (f"anchor_procrustes_error_rank_{x}" for x in (5, 10, 20))]
            reduction = _ci(m["procrustes_error_reduction"]) if "procrustes_error_reduction" in m else "-"
            release = md["release"] + (" (sum as it is)" if md.get("simulated_others") is False else "")
            out.append(f"| {md['protection']} | {release} | {md['anchors']} | {_ci(m['procrustes_error'])} | "
                       f"{_ci(m['baseline_procrustes_error'])} | {reduction} | {m['downstream_agreement']['value']:.3f} | "
                       f"{m['baseline_downstream_agreement']['value']:.3f} | {m['anchor_procrustes_error']['value']:.3f} | "
                       + " | ".join(ranks) + f" | {r['trials']} |")
    rows = [r for r in report["results"] if r["attack"] == "canary_one_run"]
    if rows:
        out += ["", "## One-run canary audit (reference: the node's trained model)", "",
                ("| level | accountant epsilon | canaries | correct / guesses | empirical lower bound (95%) | largest epsilon it "
                 "could certify | failed |"), "|---|---|---|---|---|---|---|"]
        out += [f"| {r['metadata']['protection']} | " + ("-" if r["metadata"]["accountant_epsilon"] is None else
                                                        f"{r['metadata']['accountant_epsilon']:.2f}")
                + f" | {r['metadata']['canaries']} {r['metadata'].get('canary_kind', 'input')} | "
                f"{r['metrics']['correct_guesses']['value']:.0f} / {r['trials']} | "
                f"{r['metrics']['epsilon_lower_bound']['value']:.3f} | {r['power']['max_certifiable_epsilon']:.2f} | "
                f"{r['metadata']['failed']} |" for r in rows]
    return out


def write_markdown(report: dict[str, Any]) -> str:
    tm = report["threat_model"]
    out = [f"# Audit: {tm['name']}", "", tm["description"], "",
           f"- adversary: role {tm['role']}, {tm['behaviour']}, nodes {tm['nodes'] or '-'}, observes {', '.join(tm['observes'])}"]
    if report["experiment"] is not None:
        out += _experiment_header(report)
    else:
        out.append(f"- recorded run only (the plan trains nothing); seed {report['seed']}; this audit took "
                   f"{report.get('seconds', 0)} s")
    out += ["", "## Verdict", ""] + [f"- {line}" for line in report["verdict"]]
    if report["experiment"] is not None:
        out += _experiment_sections(report)
    if report.get("recorded_run") is not None:
        out += _recorded_run_markdown(report)
    if report.get("plots"):
        out += ["", "## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]]
    return "\n".join(out) + "\n"


def _save(figure: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_plots(results: Sequence[AttackResult], report: dict[str, Any], out_dir: Path) -> list[Path]:
    """roc.png (log-log ROC), leakage_vs_epsilon.png, extraction_vs_anchors.png (those with data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    first_cell = next(iter(report["views"]), None)
    curves = [r for r in results if r.roc is not None and r.metadata.get("protection") in (first_cell, "no-dp")
              and (r.threat_model != "reference:node-model" or r.metadata.get("protection") == "no-dp")]
    if curves:
        fig, ax = plt.subplots(figsize=(6.5, 5.5))
        for r in curves:
            assert r.roc is not None  # curves keeps only results with a ROC curve
            fpr, tpr = r.roc
            ok = (fpr > 0) & (tpr > 0)
            ax.plot(fpr[ok], tpr[ok], label=f"{r.metadata['release']}: {r.attack} (AUC {r.metrics['auc'].value:.3f})")
        ax.plot([1e-4, 1], [1e-4, 1], "k--", lw=0.8, label="chance")
        ax.set(xscale="log", yscale="log", xlim=(1e-4, 1), ylim=(1e-4, 1), xlabel="false positive rate",
               ylabel="true positive rate", title=f"Membership, {report['threat_model']['name']}, {first_cell} (log-log)")
        ax.legend(fontsize=6.5, loc="lower right")
        written.append(_save(fig, out_dir / "roc.png"))
    levels = (report["experiment"] or {}).get("levels", {})
    eps_cells = {name: v["epsilon"] for name, v in levels.items()}
    series: dict[str, list[tuple[float, float, float, float]]] = {}
    finite = [e for e in eps_cells.values() if e is not None]
    no_dp_x = 2 * max(finite) if finite else 1.0
    for r in results:
        cell = r.metadata.get("protection")
        if cell not in eps_cells or r.attack not in ("lira_release", "prototype_lira", "model_lira"):
            continue  # release cells without DP are named by protection: their in-clear point is added below
        x = eps_cells[cell] if eps_cells[cell] is not None else no_dp_x
        auc = r.metrics["auc"]
        series.setdefault(f"{r.metadata['release']}: {r.attack}", []).append((x, auc.value, auc.low, auc.high))
    for r in results:  # the in-clear release cell is the no-DP point of the release curves
        if r.metadata.get("protection") == "none" and r.attack in ("lira_release", "prototype_lira"):
            auc = r.metrics["auc"]
            series.setdefault(f"{r.metadata['release']}: {r.attack}", []).append((no_dp_x, auc.value, auc.low, auc.high))
    if finite and series:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for name, pts in sorted(series.items()):
            pts.sort()
            xs, ys, lo, hi = map(np.array, zip(*pts))
            ax.errorbar(xs, ys, yerr=[ys - lo, hi - ys], marker="o", capsize=3, label=name)
        ax.axhline(0.5, color="k", ls="--", lw=0.8)
        grid = np.geomspace(min(finite), max(finite), 50)
        delta = (report.get("experiment") or {}).get("delta", 1e-5)
        ax.plot(grid, [dp_max_auc(e, delta) for e in grid], color="0.5", ls=":", label="largest AUC DP allows")
        ax.set(xscale="log", xlabel="epsilon (rightmost point: no DP)", ylabel="membership AUC (95% CI)",
               title="Leakage vs epsilon (uploads in clear)")
        ax.legend(fontsize=7)
        written.append(_save(fig, out_dir / "leakage_vs_epsilon.png"))
    ext = [r for r in results if r.attack == "extraction" and r.metadata.get("protection") == first_cell
           and r.metadata.get("simulated_others") is not False]  # the sweep over B (the sum as it is: one B only)
    if ext:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for release in sorted({r.metadata["release"] for r in ext}):
            rows = sorted((r for r in ext if r.metadata["release"] == release), key=lambda r: r.metadata["anchors"])
            bs = [r.metadata["anchors"] for r in rows]
            ax.errorbar(bs, [r.metrics["procrustes_error"].value for r in rows],
                        yerr=[[r.metrics["procrustes_error"].value - r.metrics["procrustes_error"].low for r in rows],
                              [r.metrics["procrustes_error"].high - r.metrics["procrustes_error"].value for r in rows]],
                        marker="o", capsize=3, label=f"extracted from {release.replace('_', ' ')}")
        first = min({r.metadata["release"] for r in ext})  # every release has its own baseline draw: show one
        rows = sorted((r for r in ext if r.metadata["release"] == first), key=lambda r: r.metadata["anchors"])
        ax.plot([r.metadata["anchors"] for r in rows], [r.metrics["baseline_procrustes_error"].value for r in rows], "k--",
                label="public initial model (baseline)")
        ax.set(xlabel="public anchors B", ylabel="held-out Procrustes error (lower = better extraction)",
               title=f"Extraction fidelity vs B, {first_cell}")
        ax.legend(fontsize=8)
        written.append(_save(fig, out_dir / "extraction_vs_anchors.png"))
    return written
