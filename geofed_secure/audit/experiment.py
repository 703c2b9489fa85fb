"""The audit experiment: train the target node many times and record every release an adversary could see.

What is trained (and what is not, said plainly because shadow runs retrain only what the attacks need):

- the TARGET node (the plan's ``target``, a demo node with its real model: frozen encoder tokens -> its adapter ->
  the MiniLM backbone with GeoDoRA -> its head) is trained ``runs`` times per privacy level, run ``i`` on a random
  half (exactly ``P // 2`` records) of its data pool (its train + test records, P in all), for ``rounds`` x
  ``local_steps`` local steps with the task loss and the CKA loss against a FIXED consensus (the mean Gram of the
  other nodes). Every run starts from the same public initial state (the federation seed fixes the adapter
  initialisation and the shared GeoDoRA A) and differs only in its data half and its batch / noise streams. The
  averaging with the other nodes' B between rounds is left out: it is independent of the target's membership bits
  and would only add noise, so leaving it out makes the attacks' job easier (a conservative audit);
- the OTHER demo nodes are trained once each on their own data (``truth``: what they upload) and once more on a
  random half with other randomness (``estimate``: the adversary's own simulation of them, used to subtract their
  unknown contribution from a sum). They do not use DP (DP on them would only add noise to a sum).

For each run the experiment records the releases of every sharing scheme from the SAME trained model:
``update`` (the method's precision-weighted GeoDoRA B upload), ``gram`` (cosine Gram of the 50 public anchors,
upper triangle: the method), ``prototypes`` (FedProto-style per-class means of the node's embeddings of its
PRIVATE training records) and ``raw_embeddings`` (its embeddings of the public anchors), plus what the
attacks' ground truth needs: its logits on the pool and on public records, its embeddings of the modality's public
samples (anchors and evaluation anchors). Results are cached on disk by the plan and config digests so every threat model's report reads the same experiment.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geofed_secure.alignment.geometry import centred_gram_from_upper
from geofed_secure.audit.attacks.extraction import unit_rows
from geofed_secure.audit.attacks.prototypes import class_prototypes
from geofed_secure.audit.canary_run import run_canary_audit
from geofed_secure.audit.gradient_canaries import run_gradient_canary_audit
from geofed_secure.audit.parallel import RunPool, available_cores, resolve_workers
from geofed_secure.audit.plan import AuditPlan
from geofed_secure.config import NodeSpec, PrivacySection, RunConfig, load_config
from geofed_secure.data.features import TokenFeatures, concat_features
from geofed_secure.encoders.cache import FeatureCache
from geofed_secure.errors import CheckpointError, ConfigError
from geofed_secure.node import Node, NodeData
from geofed_secure.privacy.noise import derived_node_secret
from geofed_secure.seeding import numpy_rng
from geofed_secure.wire.round import GRAM_FIELD, WEIGHTED_PREFIX

RELEASES = ("update", "gram", "prototypes", "raw_embeddings")
CACHE_VERSION = 3  # 3: every training run uses one torch thread (other floats than version 2's experiments)


def level_name(epsilon: float | None) -> str:
    return "no-dp" if epsilon is None else f"dp-eps{epsilon:g}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainedLevel:
    """The target's ``runs`` training runs at one privacy level (epsilon None: no DP)."""

    epsilon: float | None
    membership: np.ndarray  # [N, P] bool: record x in run i's training set
    pool_logits: np.ndarray  # [N, P, C]
    pool_embeddings: np.ndarray  # [N, P, d] the run's own embeddings of the pool (white-box upper bounds)
    population_logits: np.ndarray  # [N, Z, C] on public records never trained on (RMIA's population)
    public_embeddings: np.ndarray  # [N, 150, d] unit rows: anchors first, then the public evaluation samples
    releases: Mapping[str, np.ndarray]  # release -> [N, D]
    accountant_epsilon: np.ndarray  # [N] (NaN without DP)
    heldout_accuracy: np.ndarray  # [N] task accuracy on the run's non-members


@dataclass(frozen=True, slots=True, kw_only=True)
class OtherNodes:
    node_ids: tuple[str, ...]
    truth: Mapping[str, Mapping[str, np.ndarray]]  # node -> release -> vector (what it uploads)
    estimate: Mapping[str, Mapping[str, np.ndarray]]  # the adversary's simulation of the same node
    public_truth: Mapping[str, np.ndarray]  # node -> [150, d] unit embeddings of its modality's public samples
    public_estimate: Mapping[str, np.ndarray]


@dataclass(frozen=True, slots=True, kw_only=True)
class Experiment:
    plan: AuditPlan
    target: str
    modality: str
    n_anchors: int
    pool_labels: np.ndarray  # [P]
    population_labels: np.ndarray  # [Z]
    public_labels: np.ndarray  # [150]
    e0_pool: np.ndarray  # [P, d] the public initial model's unit embeddings (what an adversary can compute)
    e0_public: np.ndarray  # [150, d]
    levels: Mapping[str, TrainedLevel]
    others: OtherNodes
    canaries: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    seconds: Mapping[str, float] = field(default_factory=dict)


def run_config(plan: AuditPlan, epsilon: float | None = None, base: RunConfig | None = None) -> RunConfig:
    """The configuration the experiment trains with: ``base`` (default: the demo) with the plan's seed, training keys
    and privacy level (node-local rounds; secure aggregation does not apply to node-local training)."""
    if base is None:
        base = load_config(plan.config) if plan.config else RunConfig()
    return base.replace(
        federation=replace(base.federation, seed=plan.seed, rounds=plan.rounds, mode="local-only"),
        training=replace(base.training, local_steps=plan.local_steps, batch_size=plan.batch_size, lr=plan.lr,
                         lambda_geo=plan.lambda_geo),
        data=replace(base.data, cache_dir=plan.cache_dir or base.data.cache_dir),
        privacy=PrivacySection(epsilon=0.0 if epsilon is None else epsilon))


def _train(node: Node, rounds: int, consensus: torch.Tensor | None) -> dict[str, np.ndarray]:
    payload: dict[str, np.ndarray] = {}
    for round_ in range(1, rounds + 1):
        payload = node.local_round(round_, consensus=consensus)
    return payload


@torch.no_grad()
def _logits(node: Node, features: TokenFeatures) -> tuple[np.ndarray, np.ndarray]:
    z = node.embed(features)
    return z.numpy(), node.model.head(z).numpy()


def _releases(payload: Mapping[str, np.ndarray], train_embeddings: np.ndarray, train_labels: np.ndarray,
              public_embeddings: np.ndarray, n_anchors: int, n_classes: int) -> dict[str, np.ndarray]:
    update = np.concatenate([payload[k].ravel() for k in sorted(payload) if k.startswith(WEIGHTED_PREFIX)])
    return {"update": update.astype(np.float64), "gram": payload[GRAM_FIELD].astype(np.float64),
            "prototypes": class_prototypes(train_embeddings, train_labels, n_classes).ravel(),
            "raw_embeddings": public_embeddings[:n_anchors].ravel().astype(np.float64)}


@dataclass(frozen=True, slots=True, kw_only=True)
class _Context:
    """What every training run of one experiment shares (sent once to each worker process, :mod:`.parallel`)."""

    config: RunConfig  # the experiment's configuration without DP (the other nodes train with it)
    spec: NodeSpec  # the target
    pool: TokenFeatures  # the target's records (train + test); run i trains on its membership row
    public: TokenFeatures  # its modality's public samples: the anchors, then the evaluation anchors
    anchors: TokenFeatures
    n_classes: int
    labels_are_concepts: bool
    n_anchors: int
    anchor_digest: str
    rounds: int
    seed: int


_FACTORIES: dict[str, Callable[[], torch.nn.Module]] = {}  # backbone -> factory, loaded once per process


def _factory(config: RunConfig) -> Callable[[], torch.nn.Module]:
    from geofed_secure.runtime import backbone_factory

    if config.model.backbone not in _FACTORIES:
        _FACTORIES[config.model.backbone] = backbone_factory(config)
    return _FACTORIES[config.model.backbone]


def _other_run(ctx: _Context, spec: NodeSpec, data: NodeData, public: TokenFeatures, randomness_id: str,
               which: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Another node trained once (``which``: its upload, or the adversary's simulation of it on a half)."""
    node = Node(spec, data, ctx.config, anchor_digest=ctx.anchor_digest, backbone_factory=_factory(ctx.config),
                randomness_id=randomness_id)
    payload = _train(node, ctx.rounds, None)
    z_train, _ = _logits(node, data.train)
    z_public = unit_rows(_logits(node, public)[0])
    return _releases(payload, z_train, data.train.labels, z_public, ctx.n_anchors, data.n_classes), z_public.astype(np.float32)


def _target_run(ctx: _Context, i: int, members: np.ndarray, config: RunConfig, consensus: torch.Tensor) -> dict[str, Any]:
    """Run ``i`` of the target at one privacy level (``config``): trained on the pool's ``members``."""
    out = np.ones(len(ctx.pool), bool)
    out[members] = False
    run_data = NodeData(train=ctx.pool.subset(members), test=ctx.pool.subset(np.flatnonzero(out)), anchors=ctx.anchors,
                        n_classes=ctx.n_classes, labels_are_concepts=ctx.labels_are_concepts)
    # The auditor plays the node: its DP secret (default node-secret mode) is fixed by the plan seed so the
    # experiment repeats; the simulated adversaries never read it.
    node = Node(ctx.spec, run_data, config, anchor_digest=ctx.anchor_digest, backbone_factory=_factory(ctx.config),
                randomness_id=f"{ctx.spec.id}/audit-run-{i}", dp_secret=derived_node_secret(ctx.seed, "audit", ctx.spec.id, i))
    payload = _train(node, ctx.rounds, consensus)
    z_pool, logits_pool = _logits(node, ctx.pool)
    z_public, logits_public = _logits(node, ctx.public)
    z_public = unit_rows(z_public)
    run: dict[str, Any] = _releases(payload, z_pool[members], ctx.pool.labels[members], z_public, ctx.n_anchors, ctx.n_classes)
    return run | {"pool": logits_pool.astype(np.float32), "pool_z": unit_rows(z_pool).astype(np.float32),
                  "population": logits_public[ctx.n_anchors:].astype(np.float32), "public": z_public.astype(np.float32),
                  "eps": np.float64(node.privacy.spent() if node.privacy else np.nan),
                  "acc": np.float64((logits_pool[out].argmax(axis=1) == ctx.pool.labels[out]).mean())}


def run_experiment(plan: AuditPlan, *, progress: Callable[[str], None] = lambda line: None, use_cache: bool = True,
                   base_config: RunConfig | None = None, modalities: Mapping[str, Any] | None = None) -> Experiment:
    """Train and record everything the plan's attacks need (or load it from the cache; see the module docstring).

    ``base_config`` / ``modalities`` replace the demo federation (its nodes, backbone and encoded data), e.g. in tests.
    """
    from geofed_secure.inputs import load_modalities
    from geofed_secure.runtime import backbone_factory, build_federation

    config = run_config(plan, base=base_config)
    specs = {n.id: n for n in config.nodes}
    if plan.target not in specs:
        raise ConfigError("target", f"unknown node {plan.target!r}; the federation's nodes are {sorted(specs)}")
    cache = _cache_path(plan, config)
    if use_cache and (cache / "experiment.npz").is_file():
        progress(f"experiment loaded from the cache {cache}")
        return load_experiment(plan, cache)
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    progress("loading the federation's data (cached encoder features)")
    modalities = dict(modalities) if modalities is not None else load_modalities(config)
    fed = build_federation(config, modalities)
    spec = specs[plan.target]
    mod = modalities[spec.modality]
    data = fed.nodes[plan.target]
    pool = concat_features(data.train, data.test)
    public = concat_features(mod.anchors, mod.eval_anchors)
    n_anchors = len(mod.anchors)
    # RMIA's population: the public evaluation samples, labelled by concept. A target with its own label set has no
    # task label for them: -1, and RMIA is skipped (suite._model_attacks says so).
    population_labels = mod.eval_anchors.labels.copy() if data.labels_are_concepts else np.full(len(mod.eval_anchors), -1)
    if {"gram", "raw_embeddings"} & set(plan.schemes) and any(b > len(public) - 10 for b in plan.extraction_anchors):
        raise ConfigError("extraction_anchors", f"the target's modality has {len(public)} public samples; every B must "
                          f"leave >= 10 held out (B <= {len(public) - 10}), got {list(plan.extraction_anchors)}")
    factory = backbone_factory(config)
    seconds["data"] = time.perf_counter() - started

    # The other nodes: what they upload, and the adversary's simulation of them.
    t0 = time.perf_counter()
    _FACTORIES[config.model.backbone] = factory  # this process's workers reuse the loaded backbone
    tasks: list[tuple[Any, ...]] = []
    for node_id, other in specs.items():
        if node_id == plan.target:
            continue
        other_data = fed.nodes[node_id]
        other_public = concat_features(modalities[other.modality].anchors, modalities[other.modality].eval_anchors)
        half = numpy_rng(plan.seed, "audit-estimate", node_id).permutation(len(other_data.train))[: len(other_data.train) // 2]
        tasks += [(other, other_data, other_public, node_id, "truth"),
                  (other, replace(other_data, train=other_data.train.subset(half)), other_public, f"{node_id}/estimate",
                   "estimate")]
    context = _Context(config=config, spec=spec, pool=pool, public=public, anchors=data.anchors,
                       n_classes=data.n_classes, labels_are_concepts=data.labels_are_concepts, n_anchors=n_anchors,
                       anchor_digest=fed.anchor_digest, rounds=plan.rounds, seed=plan.seed)
    truth: dict[str, dict[str, np.ndarray]] = {}
    estimate: dict[str, dict[str, np.ndarray]] = {}
    public_truth: dict[str, np.ndarray] = {}
    public_estimate: dict[str, np.ndarray] = {}
    workers = resolve_workers(plan.workers, plan.runs)
    progress(f"training on {workers} worker process{'es' if workers > 1 else ''}"
             + (f" ({available_cores()} cores)" if workers > 1 else " (this process)") + ", one torch thread per run")
    with RunPool(context, workers) as runs_pool:
        for index, (rel, z_public) in runs_pool.map(_other_run, tasks):
            node_id, which = tasks[index][0].id, tasks[index][4]
            (truth if which == "truth" else estimate)[node_id] = rel
            (public_truth if which == "truth" else public_estimate)[node_id] = z_public
            if node_id in truth and node_id in estimate:
                progress(f"  other node {node_id} trained (its upload, and the adversary's simulation of it)")
        truth = {k: truth[k] for k in specs if k in truth}  # the federation's node order, whatever finished first
        others = OtherNodes(node_ids=tuple(truth), truth=truth, estimate=estimate, public_truth=public_truth,
                            public_estimate=public_estimate)
        consensus_upper = np.mean([truth[k]["gram"] for k in truth], axis=0)
        consensus = centred_gram_from_upper(torch.from_numpy(consensus_upper), n_anchors).float()  # uploads are centred Grams
        seconds["other_nodes"] = time.perf_counter() - t0

        # The public initial model: what every adversary can run itself.
        initial = Node(spec, replace(data, train=pool), config, anchor_digest=fed.anchor_digest, backbone_factory=factory)
        e0_pool = unit_rows(_logits(initial, pool)[0]).astype(np.float32)
        e0_public = unit_rows(_logits(initial, public)[0]).astype(np.float32)

        rng = numpy_rng(plan.seed, "audit-membership", plan.target)
        membership = np.zeros((plan.runs, len(pool)), bool)
        for i in range(plan.runs):
            membership[i, rng.permutation(len(pool))[: len(pool) // 2]] = True

        levels: dict[str, TrainedLevel] = {}
        canaries: dict[str, dict[str, Any]] = {}
        for epsilon in plan.levels:
            name = level_name(epsilon)
            t0 = time.perf_counter()
            level_config = run_config(plan, epsilon, base=base_config)
            tasks = [(i, np.flatnonzero(membership[i]), level_config, consensus) for i in range(plan.runs)]

            def done(i: int, run: dict[str, Any], name: str = name, epsilon: float | None = epsilon) -> None:
                progress(f"  {name}: run {i + 1}/{plan.runs} trained on {membership[i].sum()} records, held-out accuracy "
                         f"{run['acc']:.3f}" + (f", epsilon spent {run['eps']:.2f}" if epsilon else ""))

            finished = runs_pool.run(_target_run, tasks, on_done=done)
            rows = {k: [run[k] for run in finished] for k in ("pool", "pool_z", "population", "public", "eps", "acc", *RELEASES)}
            levels[name] = TrainedLevel(
                epsilon=epsilon, membership=membership.copy(), pool_logits=np.stack(rows["pool"]),
                pool_embeddings=np.stack(rows["pool_z"]),
                population_logits=np.stack(rows["population"]), public_embeddings=np.stack(rows["public"]),
                releases={k: np.stack(rows[k]) for k in RELEASES}, accountant_epsilon=np.array(rows["eps"]),
                heldout_accuracy=np.array(rows["acc"]))
            seconds[f"train_{name}"] = time.perf_counter() - t0
            if plan.canaries:
                t0 = time.perf_counter()
                n_canaries = min(plan.canaries, len(data.test))
                audit = run_canary_audit(level_config, spec, data, data.test, anchor_digest=fed.anchor_digest,
                                         backbone_factory=factory, canaries=n_canaries, seed=plan.seed)
                canaries[name] = audit.to_dict() | {"epsilon_budget": epsilon}
                seconds[f"canary_{name}"] = time.perf_counter() - t0
                progress(f"  {name}: canary audit {audit.correct}/{audit.guesses} correct guesses, empirical epsilon lower "
                         f"bound {audit.epsilon_lower_bound:.2f}" + (f" (accountant {audit.accountant_epsilon:.2f})"
                                                                     if audit.accountant_epsilon is not None else ""))
            if plan.gradient_canaries and epsilon is not None:
                t0 = time.perf_counter()
                audit = run_gradient_canary_audit(level_config, spec, data, anchor_digest=fed.anchor_digest,
                                                  backbone_factory=factory, canaries=plan.gradient_canaries, seed=plan.seed,
                                                  guess_fraction=plan.gradient_canary_guess_fraction)
                canaries[f"{name}/gradient"] = audit.to_dict() | {"epsilon_budget": epsilon, "kind": "gradient"}
                seconds[f"gradient_canary_{name}"] = time.perf_counter() - t0
                progress(f"  {name}: gradient-canary audit {audit.correct}/{audit.guesses} correct guesses, empirical "
                         f"epsilon lower bound {audit.epsilon_lower_bound:.2f} (accountant {audit.accountant_epsilon:.2f})")
    seconds["total"] = time.perf_counter() - started
    experiment = Experiment(plan=plan, target=plan.target, modality=spec.modality, n_anchors=n_anchors,
                            pool_labels=pool.labels.copy(), population_labels=population_labels,
                            public_labels=public.labels.copy(), e0_pool=e0_pool, e0_public=e0_public, levels=levels,
                            others=others, canaries=canaries, seconds=seconds)
    save_experiment(experiment, cache)
    return experiment


# -- cache -------------------------------------------------------------------------------------------------------
def _cache_path(plan: AuditPlan, config: RunConfig) -> Path:
    # the version is part of the key: an experiment cached by an older version is not found (and not reused)
    key = hashlib.sha256((plan.digest() + config.digest() + f"v{CACHE_VERSION}").encode()).hexdigest()[:16]
    return FeatureCache(config.data.cache_dir or None).root / "audit" / key


def save_experiment(exp: Experiment, folder: Path) -> None:
    """Arrays in one ``.npz``, the rest in ``meta.json``; written to temporary names first, then renamed."""
    arrays: dict[str, np.ndarray] = {"pool_labels": exp.pool_labels, "population_labels": exp.population_labels,
                                     "public_labels": exp.public_labels, "e0_pool": exp.e0_pool, "e0_public": exp.e0_public}
    for name, lv in exp.levels.items():
        for key in ("membership", "pool_logits", "pool_embeddings", "population_logits", "public_embeddings",
                    "accountant_epsilon", "heldout_accuracy"):
            arrays[f"level/{name}/{key}"] = getattr(lv, key)
        arrays |= {f"level/{name}/release/{k}": v for k, v in lv.releases.items()}
    for node in exp.others.node_ids:
        for which in ("truth", "estimate"):
            arrays |= {f"others/{which}/{node}/{k}": v for k, v in getattr(exp.others, which)[node].items()}
        arrays[f"others/public_truth/{node}"] = exp.others.public_truth[node]
        arrays[f"others/public_estimate/{node}"] = exp.others.public_estimate[node]
    meta = {"version": CACHE_VERSION, "plan": exp.plan.to_dict(), "target": exp.target, "modality": exp.modality,
            "n_anchors": exp.n_anchors, "levels": {k: v.epsilon for k, v in exp.levels.items()},
            "others": list(exp.others.node_ids), "canaries": exp.canaries, "seconds": exp.seconds}
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "experiment.tmp.npz", "wb") as handle:
        # numpy's stub checks **arrays against savez's own allow_pickle: bool too; no key here is 'allow_pickle'.
        np.savez(handle, **arrays)  # type: ignore[arg-type]
    (folder / "meta.tmp.json").write_text(json.dumps(meta, indent=1))
    (folder / "meta.tmp.json").replace(folder / "meta.json")
    (folder / "experiment.tmp.npz").replace(folder / "experiment.npz")


def load_experiment(plan: AuditPlan, folder: Path) -> Experiment:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        data = np.load(folder / "experiment.npz")
        if meta.get("version") != CACHE_VERSION:
            raise CheckpointError(f"{folder}: cache version {meta.get('version')} is not {CACHE_VERSION}; delete the folder")
        levels = {name: TrainedLevel(
            epsilon=eps, releases={k: data[f"level/{name}/release/{k}"] for k in RELEASES},
            **{key: data[f"level/{name}/{key}"] for key in ("membership", "pool_logits", "pool_embeddings", "population_logits",
                                                            "public_embeddings", "accountant_epsilon", "heldout_accuracy")})
            for name, eps in meta["levels"].items()}
        nodes = tuple(meta["others"])
        others = OtherNodes(
            node_ids=nodes,
            truth={n: {k: data[f"others/truth/{n}/{k}"] for k in RELEASES} for n in nodes},
            estimate={n: {k: data[f"others/estimate/{n}/{k}"] for k in RELEASES} for n in nodes},
            public_truth={n: data[f"others/public_truth/{n}"] for n in nodes},
            public_estimate={n: data[f"others/public_estimate/{n}"] for n in nodes})
        return Experiment(plan=plan, target=meta["target"], modality=meta["modality"], n_anchors=meta["n_anchors"],
                          pool_labels=data["pool_labels"], population_labels=data["population_labels"],
                          public_labels=data["public_labels"], e0_pool=data["e0_pool"], e0_public=data["e0_public"],
                          levels=levels, others=others, canaries=meta["canaries"], seconds=meta["seconds"])
    except (KeyError, ValueError, OSError) as exc:
        raise CheckpointError(f"the cached audit experiment in {folder} is unreadable ({exc}); delete the folder to retrain") from None
