"""Progress of ``geofed audit`` with a remaining-time estimate, from a cost model of the plan's training.

The experiment (:mod:`.experiment`) trains, in order: every other demo node twice (its upload and the adversary's
simulation of it), then per privacy level ``runs`` runs of the target and one canary run; the attacks follow. Each
unit's cost is counted in training steps (``rounds x local_steps``), a DP step weighing :data:`DP_STEP_COST` plain
ones (per-sample clipping), another node's step :data:`OTHER_STEP_COST`. Before anything runs the estimate uses
:data:`SECONDS_PER_STEP`, calibrated on the default plan (7 min 13 s on a quiet 2-core machine); once a unit has
finished it uses the pace measured on this machine, so a shared machine gets a truthful estimate.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from geofed_secure.audit.plan import AuditPlan

# Calibrated on the default plan's audit on a quiet 2-core machine (docs/evidence.md, "Audit: cost"): 433 s in all,
# 363 s training (other nodes 69 s for 8 x 32 steps, 12 runs without DP 66 s, 12 at epsilon 8 108 s, 12 at epsilon 1
# 98 s, three canary runs 20 s), the rest loading the cached features and the attacks.
SECONDS_PER_STEP = 0.17  # one training step of the target (66 s / 384 steps)
DP_STEP_COST = 1.55  # a DP-SGD step in plain steps ((108 + 98) / 2 / 66)
OTHER_STEP_COST = 1.6  # a step of another demo node (the text and DNA nodes are dearer: 69 s / 256 steps / 0.17)
FIXED_SECONDS = 25.0  # loading the cached demo features and building the federation
ATTACK_SECONDS = 45.0  # the attacks of the default plan (5 cells, 12 runs, 200 resamples, 4 B x 3 draws)

_OTHER = re.compile(r"other node \S+ trained")
_RUN = re.compile(r"(no-dp|dp-eps\S+): run \d+/\d+ trained")
_CANARY = re.compile(r"(no-dp|dp-eps\S+): (?:gradient-)?canary audit")
_CACHED = re.compile(r"experiment loaded from the cache")
_SEED = re.compile(r"seed attack \(")


def _steps(plan: AuditPlan, dp: bool) -> float:
    return plan.rounds * plan.local_steps * (DP_STEP_COST if dp else 1.0)


def training_units(plan: AuditPlan, other_nodes: int) -> dict[str, float]:
    """Target-step equivalents of each kind of unit the experiment trains (per unit), and their total."""
    levels = plan.levels
    units = {"other": 2 * plan.rounds * plan.local_steps * OTHER_STEP_COST}
    units |= {f"run:{lvl}": _steps(plan, lvl is not None) for lvl in levels}
    units["total"] = other_nodes * units["other"] + sum(plan.runs * units[f"run:{lvl}"] for lvl in levels)
    units["total"] += sum(units[f"run:{lvl}"] for lvl in levels) if plan.canaries else 0.0
    units["total"] += sum(units[f"run:{lvl}"] for lvl in levels if lvl is not None) if plan.gradient_canaries else 0.0
    # the white-box seed cell: per candidate, three DP trainings, once with shared-seed noise and once as deployed
    units["seed"] = 3 * _steps(plan, True)
    units["total"] += 2 * plan.seed_attack_candidates * units["seed"]
    return units


def attack_seconds(plan: AuditPlan) -> float:
    """The attacks after training, scaled from the default plan's by cells x runs x resamples (the bootstraps) and
    cells x B x draws (the extraction sweep), half each."""
    cells = len(plan.protections) + len(plan.epsilons)
    bootstrap = cells * plan.runs * plan.bootstrap / (5 * 12 * 200)
    extraction = cells * len(plan.extraction_anchors) * plan.extraction_draws / (5 * 4 * 3)
    return ATTACK_SECONDS * (bootstrap + extraction) / 2


def estimate_seconds(plan: AuditPlan, other_nodes: int, *, seconds_per_step: float = SECONDS_PER_STEP) -> float:
    """A-priori wall time of the plan's audit (training it, not loading it from the cache) on a quiet machine."""
    if not plan.levels:
        return 0.0
    scale = seconds_per_step / SECONDS_PER_STEP
    return FIXED_SECONDS + training_units(plan, other_nodes)["total"] * seconds_per_step + attack_seconds(plan) * scale


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


@dataclass
class EtaProgress:
    """Wraps a progress callback: each line gets '[done %, ~T left]' once the pace can be measured."""

    plan: AuditPlan
    other_nodes: int
    emit: Callable[[str], None]
    clock: Callable[[], float] = time.perf_counter
    started: float = field(default=0.0)
    done: float = 0.0
    first: tuple[float, float] | None = None  # (time, units done) when the first unit finished
    cached: bool = False

    def __post_init__(self) -> None:
        self.started = self.clock()
        self.units = training_units(self.plan, self.other_nodes)
        self.total = self.units["total"]

    def opening(self) -> str:
        """The estimate printed before anything runs."""
        return (f"estimated {_minutes(estimate_seconds(self.plan, self.other_nodes))} on a quiet 2-core machine if the "
                "experiment is not cached yet (a cached one takes seconds); the estimates below follow this machine's pace")

    def remaining(self) -> float | None:
        """Seconds left by the measured pace: training still to do, then the attacks (None before the first unit
        finished, or when the experiment came from the cache)."""
        if self.cached or self.first is None:
            return None
        now = self.clock()
        at, units = self.first
        if self.done > units:  # pace between the first finished unit and now (data loading excluded)
            pace = (now - at) / (self.done - units)
        else:  # only the first unit: its time less the fixed loading cost, at most half of it
            pace = max(now - self.started - FIXED_SECONDS, (now - self.started) / 2) / self.done
        return (self.total - self.done) * pace + attack_seconds(self.plan) * pace / SECONDS_PER_STEP

    def __call__(self, line: str) -> None:
        if _CACHED.search(line):
            self.cached = True
        unit = 0.0
        if _OTHER.search(line):
            unit = self.units["other"]
        elif _SEED.search(line):
            unit = self.units["seed"]
        elif (match := _RUN.search(line) or _CANARY.search(line)) is not None:
            level = None if match.group(1) == "no-dp" else float(match.group(1)[len("dp-eps"):])
            unit = self.units.get(f"run:{level}", 0.0)
        self.done = min(self.total, self.done + unit)
        if unit and self.first is None:
            self.first = (self.clock(), self.done)
        left = self.remaining()
        if unit and left is not None:
            line = f"{line} [{100 * self.done / self.total:.0f}% of training, ~{_minutes(left)} left]"
        self.emit(line)
