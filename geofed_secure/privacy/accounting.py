"""Privacy accounting for one node: Opacus accountants (PRV default, RDP), noise calibration, budget enforcement.

What a node's budget covers (per round): ``local_steps`` DP-SGD steps on its private task loss, each a
Poisson-subsampled Gaussian mechanism at ``sample_rate = batch_size / n_train``, and ONE release of its privatised
precision weight, a Poisson-subsampled Gaussian sum at ``lap_sample_rate = lap_samples / n_train``
(:mod:`geofed_secure.privacy.mechanisms`). Each has its own noise multiplier: the weight's is calibrated so that
its releases alone cost ``weight_budget_share`` of epsilon, the DP-SGD one so that both together meet epsilon. Records are the unit of privacy (add/remove adjacency, as in Opacus); the node's dataset size is treated
as public, as Opacus does when it derives the sample rate.

Pure functions (:func:`epsilon_of`, :func:`calibrate_noise_multiplier`) are apart from the stateful
:class:`PrivacyLedger`, which holds the real Opacus accountant, is fed by the DP optimizer's step hook, refuses a round
that would exceed the budget (:class:`~geofed_secure.errors.PrivacyBudgetExceeded`), and is part of the node's
checkpoint (``state_dict``/``load_state_dict``), so a resumed run keeps its spent budget.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from opacus.accountants import IAccountant, PRVAccountant, RDPAccountant

from geofed_secure.config import ACCOUNTANTS
from geofed_secure.errors import CheckpointError, ConfigError, PrivacyBudgetExceeded

# A mechanism applied ``steps`` times: (noise multiplier, sample rate, steps), Opacus's history format.
Step = tuple[float, float, int]
_SIGMA_RANGE = (0.3, 200.0)


def make_accountant(kind: str) -> IAccountant:
    if kind == "prv":
        return PRVAccountant()
    if kind == "rdp":
        return RDPAccountant()
    raise ConfigError("privacy.accountant", f"must be one of {ACCOUNTANTS}, got {kind!r}")


def canonical_history(history: Iterable[Step]) -> list[Step]:
    """Merge entries of the same (noise multiplier, sample rate): composition does not depend on order.

    >>> canonical_history([(1.0, 0.1, 8), (1.0, 0.3, 1), (1.0, 0.1, 8)])
    [(1.0, 0.1, 16), (1.0, 0.3, 1)]
    """
    merged: dict[tuple[float, float], int] = {}
    for sigma, rate, steps in history:
        merged[(float(sigma), float(rate))] = merged.get((float(sigma), float(rate)), 0) + int(steps)
    return [(sigma, rate, steps) for (sigma, rate), steps in merged.items() if steps > 0]


def epsilon_of(history: Sequence[Step], delta: float, kind: str) -> float:
    """Epsilon of composing ``history`` at ``delta`` with the ``kind`` accountant (inf if it cannot be bounded).

    The history is canonicalised first, so the same steps give the same epsilon however they were interleaved.
    """
    steps = canonical_history(history)
    if not steps:
        return 0.0
    accountant = make_accountant(kind)
    accountant.history = steps
    try:
        with warnings.catch_warnings():
            # RDP at an extreme multiplier: "optimal order is the largest/smallest alpha"; the bound is loose, still valid.
            warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha")
            eps = float(accountant.get_epsilon(delta=delta))
    except (ValueError, RuntimeError, OverflowError, FloatingPointError):  # PRV domain too small: far outside budget
        return math.inf
    return eps if math.isfinite(eps) and eps >= 0 else math.inf


@functools.lru_cache(maxsize=256)
def calibrate_noise_multiplier(target_epsilon: float, delta: float, kind: str,
                               plan: tuple[tuple[float, int], ...], *, fixed: tuple[Step, ...] = (),
                               tolerance: float = 0.01) -> float:
    """Smallest noise multiplier (to ``tolerance`` relative epsilon) with ``epsilon(plan + fixed) <= target_epsilon``.

    ``plan`` lists (sample rate, steps) of the mechanisms that use the returned multiplier; ``fixed`` lists
    mechanisms whose multiplier is already chosen (composed in). Raises :class:`ConfigError` when no multiplier up to
    200 meets the budget.

    >>> sigma = calibrate_noise_multiplier(2.0, 1e-5, "rdp", ((0.01, 1000),))
    >>> 1.0 < sigma < 1.2 and epsilon_of([(sigma, 0.01, 1000)], 1e-5, "rdp") <= 2.0
    True
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ConfigError("privacy.epsilon", f"must be a positive finite number, got {target_epsilon!r}")

    def eps(sigma: float) -> float:
        return epsilon_of([*fixed, *((sigma, rate, steps) for rate, steps in plan)], delta, kind)

    lo, hi = _SIGMA_RANGE
    if eps(hi) > target_epsilon:
        raise ConfigError("privacy.epsilon", f"epsilon {target_epsilon} at delta {delta} cannot be met for this plan "
                          f"(noise multiplier {hi} still gives {eps(hi):.3g}); raise epsilon or plan fewer rounds/steps")
    if eps(lo) <= target_epsilon:
        return lo
    while True:  # bisection in log space: epsilon decreases monotonically in the noise multiplier
        mid = math.sqrt(lo * hi)
        value = eps(mid)
        if value > target_epsilon:
            lo = mid
        else:
            hi = mid
            if value >= target_epsilon * (1 - tolerance):
                return hi
        if hi / lo < 1 + 1e-4:
            return hi


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacyPlan:
    """The mechanisms one node runs per round, and the budget they must fit for the planned rounds."""

    epsilon: float
    delta: float
    accountant: str
    max_grad_norm: float
    sample_rate: float  # DP-SGD Poisson rate: batch_size / n_train
    steps_per_round: int
    lap_sample_rate: float  # precision-weight Poisson rate: lap_samples / n_train
    rounds: int
    weight_budget_share: float = 0.1  # the weight releases ALONE may cost at most this share of epsilon

    def round_history(self, noise_multiplier: float, weight_noise_multiplier: float) -> list[Step]:
        return [(noise_multiplier, self.sample_rate, self.steps_per_round), (weight_noise_multiplier, self.lap_sample_rate, 1)]

    def calibrate(self) -> tuple[float, float]:
        """(DP-SGD noise multiplier, weight noise multiplier) for the planned rounds.

        The weight releases alone are calibrated to ``weight_budget_share * epsilon``; the DP-SGD multiplier is then
        the smallest that keeps the composition of BOTH within ``epsilon``. (With one shared multiplier the weight
        releases, at a sampling rate near 0.4 on the demo, took 95% of the budget: 7.6 of epsilon 8.)
        """
        return _calibrated(self)


@functools.lru_cache(maxsize=64)
def _calibrated(plan: PrivacyPlan) -> tuple[float, float]:
    """:meth:`PrivacyPlan.calibrate`, memoised: a pure function of the (frozen) plan, and each calibration costs
    several accountant evaluations (the audit trains one node many times with the same plan)."""
    weights = ((plan.lap_sample_rate, plan.rounds),)
    weight_sigma = calibrate_noise_multiplier(plan.weight_budget_share * plan.epsilon, plan.delta, plan.accountant, weights)
    sgd = ((plan.sample_rate, plan.steps_per_round * plan.rounds),)
    sigma = calibrate_noise_multiplier(plan.epsilon, plan.delta, plan.accountant, sgd,
                                       fixed=((weight_sigma, plan.lap_sample_rate, plan.rounds),))
    return sigma, weight_sigma


class PrivacyLedger:
    """A node's spent budget: an Opacus accountant fed one step per DP-SGD optimizer step and per weight release.

    The noise multipliers are fixed when the run starts (calibrated for the planned rounds) and travel in the
    checkpoint: a run resumed with more rounds keeps them, and the node refuses the rounds its budget does not cover.
    """

    def __init__(self, plan: PrivacyPlan, noise_multiplier: float, weight_noise_multiplier: float) -> None:
        self.plan = plan
        self.noise_multiplier = float(noise_multiplier)
        self.weight_noise_multiplier = float(weight_noise_multiplier)
        self.accountant = make_accountant(plan.accountant)
        self.steps = 0  # DP-SGD optimizer steps recorded
        self.releases = 0  # precision-weight releases recorded

    def spent(self) -> float:
        return epsilon_of(self.accountant.history, self.plan.delta, self.plan.accountant)

    def check_round(self, node_id: str, round_: int) -> float:
        """Raise :class:`PrivacyBudgetExceeded` if one more round would exceed the budget; else return its epsilon."""
        after = epsilon_of([*self.accountant.history, *self.plan.round_history(self.noise_multiplier, self.weight_noise_multiplier)],
                           self.plan.delta, self.plan.accountant)
        if after > self.plan.epsilon * (1 + 1e-9):
            raise PrivacyBudgetExceeded(node_id=node_id, round_=round_, spent=self.spent(), after=after,
                                        budget=self.plan.epsilon, delta=self.plan.delta)
        return after

    def optimizer_hook(self) -> Callable[[object], None]:
        """The DP optimizer's step hook: Opacus's own accountant hook, plus this ledger's step count."""
        opacus_hook = self.accountant.get_optimizer_hook_fn(sample_rate=self.plan.sample_rate)

        def hook(optimizer: object) -> None:
            opacus_hook(optimizer)
            self.steps += 1

        return hook

    def record_release(self) -> None:
        self.accountant.step(noise_multiplier=self.weight_noise_multiplier, sample_rate=self.plan.lap_sample_rate)
        self.releases += 1

    def summary(self) -> dict[str, float | int | str]:
        return {"epsilon": self.spent(), "epsilon_budget": self.plan.epsilon, "delta": self.plan.delta,
                "accountant": self.plan.accountant, "noise_multiplier": self.noise_multiplier,
                "sample_rate": self.plan.sample_rate, "steps": self.steps, "max_grad_norm": self.plan.max_grad_norm,
                "weight_noise_multiplier": self.weight_noise_multiplier, "weight_sample_rate": self.plan.lap_sample_rate,
                "weight_releases": self.releases, "weight_budget_share": self.plan.weight_budget_share}

    # -- checkpointing: the Opacus history as a float64 tensor [k, 3], the multiplier and the counters ---------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        history = np.array([[s, q, n] for s, q, n in self.accountant.history], np.float64).reshape(-1, 3)
        return {"privacy/history": torch.from_numpy(history),
                "privacy/noise_multiplier": torch.tensor([self.noise_multiplier, self.weight_noise_multiplier], dtype=torch.float64),
                "privacy/counts": torch.tensor([self.steps, self.releases], dtype=torch.int64)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        missing = [k for k in ("privacy/history", "privacy/noise_multiplier", "privacy/counts") if k not in state]
        if missing:
            raise CheckpointError(f"the checkpoint holds no privacy accountant state ({missing[0]}) for a DP node; "
                                  "it was written by a run without DP")
        history = state["privacy/history"].numpy().reshape(-1, 3)
        self.accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
        self.noise_multiplier, self.weight_noise_multiplier = (float(v) for v in state["privacy/noise_multiplier"])
        self.steps, self.releases = (int(v) for v in state["privacy/counts"])
