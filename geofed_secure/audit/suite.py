"""``geofed audit --threat-model FILE [--plan FILE] --out DIR``: attack the federation from one adversary's view.

Runs (or loads from the cache) the plan's experiment (:mod:`geofed_secure.audit.experiment`), then for every cell
of the plan (a protection without DP, or a DP budget with uploads in clear) and every release the adversary sees
(:mod:`geofed_secure.audit.protections`) it runs the attacks and collects one :class:`AttackResult` each:

- ``lira_release`` / ``lira_release_unit``: LiRA on the whole released vector (every release: the B update, Gram,
  prototypes, raw anchor embeddings), as released and scaled to unit norm; shadows = the other training runs;
- ``prototype_threshold`` / ``prototype_lira``: membership from cos(e0(x), prototype of x's class);
  ``prototype_label_inference``: labels of the node's records from the nearest released prototype;
- ``extraction``: functional extraction of the node's encoder from its anchor release (Gram inverted, or raw
  embeddings) for each B of the sweep, with Gram inversion errors by rank, against the public-model baseline;
- reference (not in any federation adversary's view; the ceiling DP must bound): ``model_threshold``, ``model_lira``,
  ``model_lira_offline`` (OUT shadows only, per-candidate variance), ``model_rmia`` (ties broken exactly) on the
  node's trained model at each privacy level, and the one-run canary audit;

Every result carries its power (:mod:`.power`): what it could have detected and, for DP, the largest epsilon it
could have refuted; the verdict is worded from it.
- ``transcript_gram_inversion``, when the plan names a finished run (``run``, ``reference_run``): the adversary's
  view of that run's recorded transcript, inventoried, and round-1 Gram inversion against every node
  (:mod:`geofed_secure.audit.recorded_run`). A plan with no protection and no epsilon trains nothing and audits
  only the recorded run.

Writes ``report.json`` (every result with metrics, intervals, trials, seed), ``report.md`` and PNG plots.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from geofed_secure.audit.attacks import membership as mia
from geofed_secure.audit.attacks.extraction import extraction_metrics, fit_extraction, nearest_centroid, unit_rows
from geofed_secure.audit.attacks.gram_inversion import invert_gram, procrustes_error
from geofed_secure.audit.attacks.prototypes import label_inference_accuracy, prototype_statistic
from geofed_secure.audit.experiment import Experiment, TrainedLevel, level_name, run_config, run_experiment
from geofed_secure.audit.metrics import AttackResult, Interval, membership_grid_result
from geofed_secure.audit.plan import AuditPlan
from geofed_secure.audit.power import canary_max_certifiable_epsilon, mean_difference_interval, min_detectable_difference
from geofed_secure.audit.progress import EtaProgress
from geofed_secure.audit.protections import (
    AGGREGATE,
    check_target,
    observed,
    observed_public,
    protocol_sums,
    release_view,
)
from geofed_secure.audit.recorded_run import audit_recorded_run, check_recorded_nodes
from geofed_secure.audit.seed_attack import run_seed_attack
from geofed_secure.audit.threat_model import ThreatModel
from geofed_secure.config import RunConfig, did_you_mean
from geofed_secure.errors import ConfigError
from geofed_secure.node import N_CLASSES
from geofed_secure.seeding import numpy_rng

INVERSION_RANKS = (5, 10, 20)
EXTRACTION_RUNS = 4  # target runs used by the extraction sweep (times the plan's draws per B)
REFERENCE = "reference:node-model"
RETRAINED = ("the target node only, node-locally (no averaging with the others); the other nodes trained once, plus "
             "once more as the adversary's simulation")


def cells(plan: AuditPlan) -> list[tuple[str, str, str]]:
    """(cell label, protection, privacy level) for every column of the audit."""
    out = [(p, p, level_name(None)) for p in plan.protections]
    return out + [(level_name(e), "none", level_name(e)) for e in plan.epsilons]


def _interval(values: list[float], confidence: float = 0.95) -> Interval:
    v = np.asarray(values, np.float64)
    tail = (1 - confidence) / 2
    return Interval(value=float(v.mean()), low=float(np.quantile(v, tail)), high=float(np.quantile(v, 1 - tail)),
                    confidence=confidence)


def _membership(scores: np.ndarray, level: TrainedLevel, *, attack: str, tm: str, target: str, seed: int,
                bootstrap: int, metadata: dict[str, Any]) -> AttackResult:
    return membership_grid_result(scores, level.membership, attack=attack, threat_model=tm, target=target, seed=seed,
                                  bootstrap=bootstrap, metadata=metadata)


def _prototype_attacks(exp: Experiment, level: TrainedLevel, obs: np.ndarray, meta: dict[str, Any], tm: str) -> list[AttackResult]:
    """Membership and label inference from prototypes, for two adversaries: one embedding candidates with the public
    model ``e0`` (what a server can run), and an upper bound that embeds them with the attacked run's own trained
    encoder (an adversary that also extracted or obtained the node's encoder)."""
    plan, n = exp.plan, level.membership.shape[0]
    shape = (-1, exp.e0_pool.shape[1])  # one prototype per task label of the target
    observed_protos = [obs[i].reshape(shape) for i in range(n)]
    shadow_protos = [level.releases["prototypes"][j].reshape(shape) for j in range(n)]
    common: dict[str, Any] = {"tm": tm, "target": exp.target, "seed": plan.seed, "bootstrap": plan.bootstrap}
    anchors = slice(0, exp.n_anchors)
    results = []
    for suffix, embedding in (("", "public model e0"), ("_node_encoder", "the attacked run's own encoder (upper bound)")):
        def embed(i: int, suffix: str = suffix) -> np.ndarray:
            return exp.e0_pool if not suffix else level.pool_embeddings[i]

        def public_anchor_embeddings(i: int, suffix: str = suffix) -> np.ndarray:
            return exp.e0_public[anchors] if not suffix else level.public_embeddings[i][anchors]

        target_stats = np.stack([prototype_statistic(observed_protos[i], embed(i), exp.pool_labels) for i in range(n)])
        if suffix:
            shadow_stats = np.stack([[prototype_statistic(shadow_protos[j], embed(i), exp.pool_labels) for j in range(n)]
                                     for i in range(n)])
        else:
            shadow_stats = np.stack([prototype_statistic(shadow_protos[j], exp.e0_pool, exp.pool_labels) for j in range(n)])
        m = meta | {"embedding": embedding}
        results += [
            _membership(mia.threshold_scores(target_stats), level, attack=f"prototype_threshold{suffix}",
                        metadata=m | {"shadows": 0}, **common),
            _membership(mia.lira_scores(target_stats, level.membership, shadow_stats=shadow_stats), level,
                        attack=f"prototype_lira{suffix}", metadata=m | {"shadows": n - 1}, **common)]
        leaked, public = [], []
        for i in range(n):
            out = ~level.membership[i]
            records = embed(i)[out]
            leaked.append(label_inference_accuracy(observed_protos[i], records, exp.pool_labels[out]))
            public.append(float((nearest_centroid(records, public_anchor_embeddings(i), exp.public_labels[anchors])
                                 == exp.pool_labels[out]).mean()))
        results.append(AttackResult(
            attack=f"prototype_label_inference{suffix}", threat_model=tm, target=exp.target,
            metrics={"accuracy": _interval(leaked), "public_baseline_accuracy": _interval(public)},
            trials=int((~level.membership).sum()), seed=plan.seed,
            power={"min_detectable_difference": min_detectable_difference(np.subtract(leaked, public)), "power": 0.8},
            metadata=m | {"note": "labels of the node's records outside the run from the nearest released prototype; "
                                  "baseline: nearest class centroid of the public anchors in the same embedding; "
                                  "interval over runs"}))
    return results


def _extraction(exp: Experiment, tm: ThreatModel, level: TrainedLevel, protection: str, release: str,
                meta: dict[str, Any]) -> list[AttackResult]:
    """The extraction sweep over B; from a sum, once by the adversary that subtracts its simulation of the other
    nodes and once more, at the largest B, by one that reads the sum as it is (``simulated_others`` in metadata)."""
    results = _extraction_sweep(exp, tm, level, protection, release, meta, plan_anchors=exp.plan.extraction_anchors,
                                simulate_others=True)
    if release_view(tm, protection, release) == AGGREGATE:
        results += _extraction_sweep(exp, tm, level, protection, release, meta,
                                     plan_anchors=(max(exp.plan.extraction_anchors),), simulate_others=False)
    return results


def _extraction_sweep(exp: Experiment, tm: ThreatModel, level: TrainedLevel, protection: str, release: str,
                      meta: dict[str, Any], *, plan_anchors: tuple[int, ...], simulate_others: bool) -> list[AttackResult]:
    plan = exp.plan
    n_public = exp.e0_public.shape[0]
    results = []
    aggregate = release_view(tm, protection, release) == AGGREGATE
    for b in plan_anchors:
        rng = numpy_rng(plan.seed, "extraction", release, b)
        values: dict[str, list[float]] = {}
        run_of: list[int] = []  # the training run of each trial: the unit the reduction is tested over
        for run in range(min(EXTRACTION_RUNS, level.membership.shape[0])):
            truth = level.public_embeddings[run].astype(np.float64)
            for _ in range(plan.extraction_draws):
                index = np.sort(rng.choice(n_public, size=b, replace=False))
                held = np.setdiff1d(np.arange(n_public), index)
                seen = observed_public(exp, tm, level, protection, release, run, index, simulate_others=simulate_others)
                if seen is None:
                    return []
                released = invert_gram(seen) if release == "gram" else seen
                extracted, aligned = fit_extraction(exp.e0_public[index], released, exp.e0_public[held])
                got = extraction_metrics(extracted, aligned, truth[held], truth[index], exp.public_labels[index])
                base = extraction_metrics(exp.e0_public[held], exp.e0_public[index], truth[held], truth[index],
                                          exp.public_labels[index])
                got |= {f"baseline_{k}": v for k, v in base.items()}
                got["anchor_procrustes_error"] = procrustes_error(released, truth[index])
                if release == "gram":
                    got |= {f"anchor_procrustes_error_rank_{r}": procrustes_error(invert_gram(seen, r), truth[index])
                            for r in INVERSION_RANKS if r < b}
                for key, value in got.items():
                    values.setdefault(key, []).append(value)
                run_of.append(run)
        # The anchor draws of one run share its trained model: the independent unit is the run. Detection is a paired
        # t test over runs of the mean error reduction against the public model, the test the stated power is for.
        gain = np.subtract(values["baseline_procrustes_error"], values["procrustes_error"])
        per_run = [float(gain[np.asarray(run_of) == r].mean()) for r in sorted(set(run_of))]
        mean, low, high = mean_difference_interval(np.asarray(per_run))
        metrics = {k: _interval(v) for k, v in values.items()}
        metrics["procrustes_error_reduction"] = Interval(value=mean, low=low, high=high)
        results.append(AttackResult(attack="extraction", threat_model=tm.name, target=exp.target,
                                    metrics=metrics, trials=len(values["procrustes_error"]), seed=plan.seed,
                                    power={"min_detectable_difference": min_detectable_difference(np.asarray(per_run)),
                                           "power": 0.8},
                                    metadata=meta | {"anchors": b, "heldout": n_public - b, "runs": len(per_run),
                                                     "simulated_others": simulate_others if aggregate else None,
                                                     "note": "release (Gram: inverted) rotated onto e0, ridge map of the node's "
                                                             "departure from e0, scored on held-out public inputs after "
                                                             "orthogonal alignment; baseline = the public initial model e0; "
                                                             "error intervals: 2.5-97.5% of the trials; reduction: 95% t "
                                                             "interval of the mean over runs"}))
    return results


def _model_attacks(exp: Experiment, level: TrainedLevel, meta: dict[str, Any]) -> list[AttackResult]:
    plan, n = exp.plan, level.membership.shape[0]
    conf = np.stack([mia.logit_confidence(level.pool_logits[i], exp.pool_labels) for i in range(n)])
    prob = np.stack([mia.true_label_probability(level.pool_logits[i], exp.pool_labels) for i in range(n)])
    common: dict[str, Any] = {"tm": REFERENCE, "target": exp.target, "seed": plan.seed, "bootstrap": plan.bootstrap}
    rmia = []
    if (exp.population_labels >= 0).all():  # -1: the target's own label set does not label the public population
        pop = np.stack([mia.true_label_probability(level.population_logits[i], exp.population_labels) for i in range(n)])
        rmia.append(_membership(mia.rmia_scores(prob, pop), level, attack="model_rmia",
                                metadata=meta | {"reference_models": n - 1, "population": pop.shape[1], "gamma": 1.0,
                                                 "ties": "broken by the position between population ratios"}, **common))
    return [
        _membership(mia.threshold_scores(np.log(np.maximum(prob, 1e-300))), level, attack="model_threshold",
                    metadata=meta | {"shadows": 0, "statistic": "log p(true label) = minus the loss"}, **common),
        _membership(mia.lira_scores(conf, level.membership), level, attack="model_lira",
                    metadata=meta | {"shadows": n - 1, "statistic": "logit-scaled confidence"}, **common),
        _membership(mia.lira_offline_scores(conf, level.membership), level, attack="model_lira_offline",
                    metadata=meta | {"shadows": n - 1, "statistic": "logit-scaled confidence",
                                     "note": "offline: OUT shadows only, per-candidate mean and variance"}, **common),
    ] + rmia


def _experiment_results(exp: Experiment, threat_model: ThreatModel, plan: AuditPlan, progress: Callable[[str], None]
                        ) -> tuple[list[AttackResult], dict[str, dict[str, str]]]:
    """Every attack of the plan on the experiment, through ``threat_model``'s views (results; views by cell)."""
    check_target(threat_model, exp)
    n_public = exp.e0_public.shape[0]
    if any(b > n_public - 10 for b in plan.extraction_anchors) and {"gram", "raw_embeddings"} & set(plan.schemes):
        raise ConfigError("extraction_anchors", f"the target's modality has {n_public} public samples; every B must leave "
                          f">= 10 held out (B <= {n_public - 10}), got {list(plan.extraction_anchors)}")
    results: list[AttackResult] = []
    views: dict[str, dict[str, str]] = {}
    for label, protection, lvl in cells(plan):
        level = exp.levels[lvl]
        releases = ("update", *plan.schemes)
        kinds = {r: release_view(threat_model, protection, r) for r in releases}
        views[label] = kinds
        sums = protocol_sums(exp, level, protection, seed=plan.seed) if AGGREGATE in kinds.values() else None
        progress(f"{label}: views " + ", ".join(f"{r} {k}" for r, k in kinds.items()))
        for release in releases:
            obs = observed(exp, threat_model, level, protection, release, sums)
            if obs is None:
                continue
            meta = {"release": release, "protection": label, "epsilon": level.epsilon, "view": kinds[release],
                    "retrained": RETRAINED}
            shadows = np.asarray(level.releases[release])
            scores = mia.lira_vector_scores(obs, level.membership, shadow_releases=shadows)
            results.append(_membership(scores, level, attack="lira_release", tm=threat_model.name, target=exp.target,
                                       seed=plan.seed, bootstrap=plan.bootstrap, metadata=meta | {"shadows": plan.runs - 1}))
            # The same on releases scaled to unit norm: the B update carries the precision weight p_k, whose scale
            # varies between runs (up to 2.4x the mean on the demo) and misleads the isotropic model.
            scores = mia.lira_vector_scores(unit_rows(obs), level.membership, shadow_releases=unit_rows(shadows))
            results.append(_membership(scores, level, attack="lira_release_unit", tm=threat_model.name, target=exp.target,
                                       seed=plan.seed, bootstrap=plan.bootstrap,
                                       metadata=meta | {"shadows": plan.runs - 1, "note": "releases scaled to unit norm"}))
            if release == "prototypes":
                results += _prototype_attacks(exp, level, obs, meta, threat_model.name)
            if release in ("gram", "raw_embeddings"):
                results += _extraction(exp, threat_model, level, protection, release, meta)
        progress(f"{label}: {sum(r.metadata.get('protection') == label for r in results)} results")
    for lvl_name, level in exp.levels.items():
        results += _model_attacks(exp, level, {"release": "node model", "protection": lvl_name, "epsilon": level.epsilon,
                                               "view": "reference ceiling (no federation adversary sees the node's model)",
                                               "retrained": RETRAINED})
    for key, canary in exp.canaries.items():
        lvl_name = key.split("/")[0]  # "<level>" (input canaries) or "<level>/gradient"
        results.append(AttackResult(
            attack="canary_one_run", threat_model=REFERENCE, target=exp.target, trials=int(canary["guesses"]), seed=plan.seed,
            metrics={"epsilon_lower_bound": Interval(value=canary["epsilon_lower_bound"], low=canary["epsilon_lower_bound"],
                                                     high=canary["epsilon_lower_bound"], confidence=canary["confidence"]),
                     "correct_guesses": Interval(value=canary["correct"], low=canary["correct"], high=canary["correct"], confidence=1.0)},
            power={"max_certifiable_epsilon": canary_max_certifiable_epsilon(
                int(canary["canaries"]), int(canary["guesses"]), delta=canary["delta"], confidence=canary["confidence"])},
            metadata={"protection": lvl_name, "epsilon": canary["epsilon_budget"], "accountant_epsilon": canary["accountant_epsilon"],
                      "canaries": canary["canaries"], "failed": canary["failed"], "release": "node model",
                      "canary_kind": canary.get("kind", "input"),
                      "note": "one-run audit (Steinke, Nasr, Jagielski 2023): a one-sided lower bound" + (
                          "; Dirac gradient canaries, white box: every noisy gradient seen (Nasr et al. 2023)"
                          if canary.get("kind") == "gradient" else "")}))
    return results, views


def _experiment_summary(exp: Experiment, plan: AuditPlan) -> dict[str, Any]:
    return {"target": exp.target, "modality": exp.modality, "pool": int(exp.pool_labels.size), "anchors": exp.n_anchors,
            "delta": run_config(plan, max(plan.epsilons, default=1.0)).privacy.delta,
            "runs": plan.runs, "other_nodes": list(exp.others.node_ids), "retrained": RETRAINED, "seconds": dict(exp.seconds),
            "levels": {k: {"epsilon": v.epsilon, "heldout_accuracy": float(v.heldout_accuracy.mean()),
                           "accountant_epsilon": None if v.epsilon is None else float(np.nanmax(v.accountant_epsilon))}
                       for k, v in exp.levels.items()}}


def seed_cells(plan: AuditPlan, progress: Callable[[str], None], *, base_config: RunConfig | None = None,
               modalities: Mapping[str, Any] | None = None) -> list[AttackResult]:
    """The white-box cell (:mod:`.seed_attack`) at the plan's smallest epsilon: the same attack on the node trained
    with the unsafe ``shared_seed_noise`` (a server holding the seed) and as deployed (node-secret noise)."""
    from geofed_secure.inputs import load_modalities
    from geofed_secure.runtime import backbone_factory, build_federation

    epsilon = min(plan.epsilons)
    results = []
    for shared in (True, False):
        config = run_config(plan, epsilon, base=base_config)
        config = config.replace(privacy=replace(config.privacy, shared_seed_noise=shared))
        mods = dict(modalities) if modalities is not None else load_modalities(config)
        fed = build_federation(config, mods)
        spec = next(n for n in config.nodes if n.id == plan.target)
        data = fed.nodes[plan.target]
        attack = run_seed_attack(config, spec, data, data.test, anchor_digest=fed.anchor_digest,
                                 backbone_factory=backbone_factory(config), seed=plan.seed,
                                 candidates=min(plan.seed_attack_candidates, len(data.test)), progress=progress)
        bound = attack.epsilon_lower_bound
        results.append(AttackResult(
            attack="seed_attack_whitebox", threat_model=REFERENCE, target=plan.target, trials=attack.candidates,
            seed=plan.seed,
            metrics={"epsilon_lower_bound": Interval(value=bound, low=bound, high=bound, confidence=attack.confidence),
                     "correct_guesses": Interval(value=attack.correct, low=attack.correct, high=attack.correct,
                                                 confidence=1.0)},
            power={"max_certifiable_epsilon": attack.max_certifiable_epsilon},
            metadata={"protection": level_name(epsilon), "epsilon": epsilon, "release": "update",
                      "randomness": attack.randomness, "exact_matches": attack.exact_matches,
                      "accountant_epsilon": attack.accountant_epsilon,
                      "failed": bool(bound > attack.accountant_epsilon),
                      "note": "an adversary that knows every record but the candidate and regenerates the node's DP "
                              "noise from the seed it holds, for both worlds"}))
    return results


def check_audit(threat_model: ThreatModel, plan: AuditPlan) -> None:
    """What can be checked before anything trains or is read: the plan's target and the threat model's nodes exist in
    the federation the plan trains (the demo's) and in the recorded run it names, the target is not the adversary's
    own node, and the extraction sweep leaves public samples held out."""
    if plan.levels:
        config = run_config(plan)
        nodes = [n.id for n in config.nodes]
        if plan.target not in nodes:
            raise ConfigError("target", f"unknown node {plan.target!r}{did_you_mean(plan.target, nodes)}; the audited "
                              f"federation's nodes: {', '.join(nodes)}")
        own = any(n.own_data for n in config.nodes)  # own anchors: counted when they are read (run_experiment)
        n_public = N_CLASSES * (config.data.anchors_per_class + config.data.eval_per_class)
        if not own and {"gram", "raw_embeddings"} & set(plan.schemes) and any(b > n_public - 10 for b in plan.extraction_anchors):
            raise ConfigError("extraction_anchors", f"the target's modality has {n_public} public samples; every B must "
                              f"leave >= 10 held out (B <= {n_public - 10}), got {list(plan.extraction_anchors)}")
        if plan.target in threat_model.nodes:
            raise ConfigError("target", f"the audit target {plan.target!r} is one of the adversary's own nodes in "
                              f"{threat_model.name!r}; choose another target in the plan")
        unknown = sorted(set(threat_model.nodes) - set(nodes))
        if unknown:
            raise ConfigError("adversary.nodes", f"threat model {threat_model.name!r} names node(s) {unknown} that the audited "
                              f"federation does not have{did_you_mean(unknown[0], nodes)}; its nodes: {', '.join(nodes)}")
    if plan.run:
        check_recorded_nodes(threat_model, plan.run)


def run_audit(threat_model: ThreatModel, plan: AuditPlan, out_dir: str | Path, *, experiment: Experiment | None = None,
              progress: Callable[[str], None] = lambda line: None, plots: bool = True) -> dict[str, Any]:
    """Audit the plan from ``threat_model``'s view; writes report.json, report.md (and plots) into ``out_dir``.

    The plan's experiment is trained (or loaded from the cache, or ``experiment`` is used) unless the plan has no
    protection and no epsilon; the recorded run the plan names (``run``), if any, is audited into the same report.
    """
    if experiment is None:
        check_audit(threat_model, plan)
    started = time.perf_counter()
    out_dir = Path(out_dir)
    results: list[AttackResult] = []
    recorded = None
    if plan.run:
        recorded = audit_recorded_run(threat_model, plan.run, reference_run=plan.reference_run or None, seed=plan.seed,
                                      progress=progress)
    views: dict[str, dict[str, str]] = {}
    summary = None
    if plan.levels:
        progress(f"audit plan {plan.digest()[:12]}: target {plan.target}, {plan.runs} runs per privacy level, "
                 f"schemes {list(plan.schemes)}, protections {list(plan.protections)}, epsilons {list(plan.epsilons)}")
        eta = EtaProgress(plan, len(run_config(plan).nodes) - 1, progress)
        if experiment is None:
            progress(eta.opening())
        exp = experiment or run_experiment(plan, progress=eta)
        results, views = _experiment_results(exp, threat_model, plan, progress)
        summary = _experiment_summary(exp, plan)
        if plan.seed_attack_candidates:
            results += seed_cells(plan, progress)
    if recorded is not None:
        results += recorded.results
    from geofed_secure.audit.report import verdict, write_markdown, write_plots

    report = {
        "threat_model": {"name": threat_model.name, "description": threat_model.description, "role": threat_model.role,
                         "behaviour": threat_model.behaviour, "nodes": list(threat_model.nodes),
                         "observes": list(threat_model.observes)},
        "plan": plan.to_dict(), "plan_digest": plan.digest(), "seed": plan.seed,
        "experiment": summary,
        "views": views,
        "recorded_run": None if recorded is None else recorded.to_dict(),
        "results": [r.to_dict() for r in results],
    }
    report["verdict"] = verdict(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    report["plots"] = [p.name for p in write_plots(results, report, out_dir)] if plots else []
    report["seconds"] = round(time.perf_counter() - started, 1)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1, allow_nan=True))
    (out_dir / "report.md").write_text(write_markdown(report))
    return report
