"""Progress of ``geofed audit`` with a remaining-time estimate, from a cost model of the plan's training.

The experiment (:mod:`.experiment`) trains, in order: every other demo node twice (its upload and the adversary's
simulation of it), then per privacy level ``runs`` runs of the target and one canary run; the attacks follow. Each
unit's cost is counted in training steps (``rounds x local_steps``), a DP step weighing :data:`DP_STEP_COST` plain
ones (per-sample clipping). Before anything runs the estimate uses :data:`SECONDS_PER_STEP`, calibrated on the
default plan (7 min 13 s on a quiet 2-core machine, issue 17); once a unit has finished it uses the pace measured
on this machine, so a shared machine gets a truthful estimate.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from geofed_secure.audit.plan import AuditPlan

SECONDS_PER_STEP = 0.15  # one plain training step of a demo node, quiet 2-core machine (default plan: 433 s in all)
DP_STEP_COST = 2.0  # a DP-SGD step (ghost clipping: two backward passes) in plain steps
FIXED_SECONDS = 40.0  # loading the cached demo features and building the federation
ATTACK_SHARE = 0.15  # the attacks after training, as a share of the training time

_OTHER = re.compile(r"other node \S+ trained")
_RUN = re.compile(r"(no-dp|dp-eps\S+): run \d+/\d+ trained")
_CANARY = re.compile(r"(no-dp|dp-eps\S+): canary audit")
_CACHED = re.compile(r"experiment loaded from the cache")


def _steps(plan: AuditPlan, dp: bool) -> float:
    return plan.rounds * plan.local_steps * (DP_STEP_COST if dp else 1.0)


def training_units(plan: AuditPlan, other_nodes: int) -> dict[str, float]:
    """Plain-step equivalents of each kind of unit the experiment trains (per unit), and their total."""
    levels = plan.levels
    units = {"other": 2 * _steps(plan, False)}
    units |= {f"run:{lvl}": _steps(plan, lvl is not None) for lvl in levels}
    units["total"] = other_nodes * units["other"] + sum(plan.runs * units[f"run:{lvl}"] for lvl in levels)
    units["total"] += sum(units[f"run:{lvl}"] for lvl in levels) if plan.canaries else 0.0
    return units


def estimate_seconds(plan: AuditPlan, other_nodes: int, *, seconds_per_step: float = SECONDS_PER_STEP) -> float:
    """A-priori wall time of the plan's audit (training it, not loading it from the cache) on a quiet machine."""
    if not plan.levels:
        return 0.0
    train = training_units(plan, other_nodes)["total"] * seconds_per_step
    return FIXED_SECONDS + train * (1 + ATTACK_SHARE)


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
        return (self.total - self.done) * pace + self.total * pace * ATTACK_SHARE

    def __call__(self, line: str) -> None:
        if _CACHED.search(line):
            self.cached = True
        unit = 0.0
        if _OTHER.search(line):
            unit = self.units["other"]
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
