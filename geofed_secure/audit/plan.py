"""Audit plans (``audits/plan.toml``): which sharing schemes, protections and attacks ``geofed audit`` runs, and how.

A plan is independent of the threat model: the experiment it describes (:mod:`geofed_secure.audit.experiment`)
trains the target node and the other demo nodes once, and every threat model's report reads the same
experiment through its own view (:mod:`geofed_secure.audit.protections`). ``audits/plan.toml`` spells out every
key with its default (a test keeps the two equal).

Named presets (``geofed audit --plan quick``), each spelled out in ``audits/plan-<name>.toml`` (a test keeps them
equal): ``quick`` (CI and first looks: 4 runs, no DP and one budget, in clear and masked; a few minutes),
``standard`` (the default plan, ``audits/plan.toml``) and ``high-power`` (32 runs per level, 1,000 bootstrap
resamples: the plan of the reference reports). :mod:`.progress` estimates each plan's time before it runs.

A plan may also name a finished ``geofed run`` folder (``run``, optionally ``reference_run``, its plaintext twin):
the audit then inventories that run's recorded transcript from the threat model's view and scores round-1 Gram
inversion against it (:mod:`geofed_secure.audit.recorded_run`), in the same report. A plan with no protection and
no epsilon trains nothing and audits only the recorded run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from geofed_secure.config import did_you_mean, read_toml
from geofed_secure.errors import ConfigError

SCHEMES = ("gram", "prototypes", "raw_embeddings")
PROTECTIONS = ("none", "masking", "ckks")


@dataclass(frozen=True, kw_only=True)
class AuditPlan:
    seed: int = 0
    target: str = "clinic-images-a"  # the node attacked (a demo node id)
    runs: int = 12  # training runs of the target per privacy level: each is the target once, the others its shadows
    schemes: tuple[str, ...] = SCHEMES  # alignment signals compared (the method's B update is always audited too)
    protections: tuple[str, ...] = PROTECTIONS  # how uploads travel, without DP
    epsilons: tuple[float, ...] = (8.0, 1.0)  # DP-SGD budgets of the target (uploads then in clear: the worst case)
    rounds: int = 4  # local rounds of every training run (x local_steps steps)
    local_steps: int = 8
    batch_size: int = 32
    lr: float = 2e-3
    lambda_geo: float = 1.0  # CKA weight against the other nodes' consensus Gram
    extraction_anchors: tuple[int, ...] = (10, 25, 50, 100)  # B for the extraction / inversion sweep (of the public samples)
    extraction_draws: int = 3  # random anchor draws per B and run
    canaries: int = 100  # one-run canary audit per privacy level (0 = skip)
    gradient_canaries: int = 0  # one-run audit with Dirac gradient canaries, white box, at every epsilon (0 = skip)
    gradient_canary_guess_fraction: float = 0.5  # guesses "in" and as many "out" (0.5: every canary, the most power)
    seed_attack_candidates: int = 0  # white-box cell at the smallest epsilon: a server holding the noise seed (0 = skip)
    bootstrap: int = 200  # bootstrap resamples for confidence intervals
    cache_dir: str = ""  # "" -> $GEOFED_CACHE or ~/.cache/geofed-secure (features and experiment results)
    run: str = ""  # a finished geofed run folder to inventory from the threat model's view ("" = none)
    reference_run: str = ""  # with run: the same configuration and seed run with --secure none (round-1 ground truth)
    config: str = ""  # the federation audited: a geofed run config TOML (own nodes, docs/own-federation.md); "" = the demo
    workers: int = 0  # training processes (0 = one per available core, at most runs; 1 = in this process)

    def __post_init__(self) -> None:
        def fail(key: str, problem: str) -> ConfigError:
            return ConfigError(key, problem)

        if not 3 <= self.runs <= 256:
            raise fail("runs", f"must be between 3 and 256 (each run is the target once, the rest are shadows), got {self.runs}")
        for key in ("rounds", "local_steps", "batch_size", "extraction_draws"):
            if getattr(self, key) < 1:
                raise fail(key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("canaries", "bootstrap", "seed_attack_candidates", "gradient_canaries", "workers"):
            if getattr(self, key) < 0:
                raise fail(key, f"must be >= 0, got {getattr(self, key)}")
        if not (self.lr > 0 and math.isfinite(self.lr)) or not (self.lambda_geo >= 0 and math.isfinite(self.lambda_geo)):
            raise fail("lr", f"lr must be > 0 and lambda_geo >= 0, got {self.lr}, {self.lambda_geo}")
        for key, allowed in (("schemes", SCHEMES), ("protections", PROTECTIONS)):
            values = getattr(self, key)
            bad = [v for v in values if v not in allowed]
            if bad or len(set(values)) != len(values):
                raise fail(key, f"must be distinct values of {allowed}, got {list(values)}")
        if not self.protections and not self.epsilons and not self.run:
            raise fail("protections", "the plan audits nothing: give at least one protection, one epsilon or a run")
        if not 0 < self.gradient_canary_guess_fraction <= 0.5:
            raise fail("gradient_canary_guess_fraction", f"must be in (0, 0.5], got {self.gradient_canary_guess_fraction}")
        if self.gradient_canaries and (self.gradient_canaries < 2 or not self.epsilons):
            raise fail("gradient_canaries", f"must be 0, or >= 2 with at least one epsilon (it audits DP-SGD), got "
                       f"{self.gradient_canaries}")
        if self.seed_attack_candidates and (self.seed_attack_candidates < 2 or not self.epsilons):
            raise fail("seed_attack_candidates", f"must be 0, or >= 2 with at least one epsilon, got {self.seed_attack_candidates}")
        if self.reference_run and not self.run:
            raise fail("reference_run", "applies only with run (the recorded run it is the plaintext twin of)")
        if any(not (e > 0 and math.isfinite(e)) for e in self.epsilons) or len(set(self.epsilons)) != len(self.epsilons):
            raise fail("epsilons", f"must be distinct finite budgets > 0, got {list(self.epsilons)}")
        if any(b < 3 for b in self.extraction_anchors):  # the upper end depends on the federation: checked before training
            raise fail("extraction_anchors", f"each B must be >= 3, got {list(self.extraction_anchors)}")

    @property
    def levels(self) -> tuple[float | None, ...]:
        """Privacy levels trained: None (no DP) when any protection is audited, then every epsilon."""
        return ((None,) if self.protections else ()) + tuple(self.epsilons)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self, *, exclude: tuple[str, ...] = ("cache_dir", "bootstrap", "run", "reference_run",
                                                    "seed_attack_candidates", "config", "workers")) -> str:
        """SHA-256 of what determines the experiment's training runs (cache key, with the federation's config digest; a
        recorded run trains nothing; the number of worker processes does not change what is trained)."""
        data = {k: v for k, v in self.to_dict().items() if k not in exclude}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def plan_from_dict(data: dict[str, Any], *, source: str | None = None) -> AuditPlan:
    known = {f.name: f for f in fields(AuditPlan)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(key, f"unknown key{did_you_mean(key, known)}; known: {sorted(known)}", source=source)
        default = known[key].default
        if isinstance(default, tuple):
            item = float if key == "epsilons" else int if key == "extraction_anchors" else str
            ok = isinstance(value, list) and all(isinstance(v, item) or (item is float and isinstance(v, int))
                                                 for v in value) and not any(isinstance(v, bool) for v in value)
            if not ok:
                raise ConfigError(key, f"must be a list of {item.__name__}, got {value!r}", source=source)
            value = tuple(float(v) if item is float else v for v in value)
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(key, f"must be a number, got {value!r}", source=source)
            value = float(value)
        elif isinstance(value, bool) or not isinstance(value, type(default)):
            raise ConfigError(key, f"must be {type(default).__name__}, got {value!r}", source=source)
        values[key] = value
    try:
        return AuditPlan(**values)
    except ConfigError as exc:
        raise ConfigError(exc.field, str(exc).split(": ", 1)[1], source=source) from None


PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"runs": 4, "protections": ["none", "masking"], "epsilons": [1.0], "extraction_anchors": [25, 100],
              "extraction_draws": 1, "bootstrap": 100},
    "standard": {},
    "high-power": {"runs": 32, "bootstrap": 1000, "seed_attack_candidates": 12, "gradient_canaries": 16100},
}


def load_plan(path: str | Path | None) -> AuditPlan:
    """The plan in ``path`` (TOML), a preset by name (:data:`PRESETS`: quick, standard, high-power) when no such file
    exists, or the default plan (``standard``) when None; errors name the key and the file."""
    if path is None:
        return AuditPlan()
    if str(path) in PRESETS and not Path(path).exists():
        return plan_from_dict(PRESETS[str(path)], source=f"preset {path}")
    return plan_from_dict(read_toml(path, option="--plan"), source=str(path))
