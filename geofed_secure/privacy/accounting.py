"""Privacy accounting for one node under REPLACE-ONE adjacency: noise calibration, budget enforcement, checkpoints.

Adjacency. Two datasets of a node are neighbours when they have the same size ``n`` and differ in ONE record (any
record substituted by any other). This is what geofed can deliver with ``n`` public: the sampling rates
``batch_size / n`` and ``lap_samples / n`` depend on ``n``, and ``summary.json`` publishes ``n``, the rates and the
noise multipliers, so add/remove-one DP (whose neighbours differ in size) would be claimed over facts the node
itself publishes. Replace-one costs more epsilon for the same noise (measured on the demo at batch 32: a run
calibrated to add/remove epsilon 3 spends 3.2-3.8 under replace-one), so the noise is calibrated for replace-one here.

What a node's budget covers (per round): ``local_steps`` DP-SGD steps on its private task loss, each a
Poisson-subsampled Gaussian mechanism at ``sample_rate = batch_size / n`` whose per-record contribution (a clipped
gradient) lies in a ball of radius ``max_grad_norm``; and ONE release of its privatised precision weight, a
Poisson-subsampled Gaussian sum at ``lap_sample_rate = lap_samples / n`` whose per-record term lies in a ball of radius
``(U_max - 1) / 2`` (:mod:`geofed_secure.privacy.mechanisms`). Under replace-one a record's contribution can move by
twice that radius; the accountants below use the exact replace-one pair of the Poisson-subsampled Gaussian,
``(1-q) N(0, s^2) + q N(-1, s^2)`` against ``(1-q) N(0, s^2) + q N(+1, s^2)`` with ``s`` the noise multiplier.
Each mechanism has its own noise multiplier: the weight's is calibrated so that its releases alone cost
``weight_budget_share`` of epsilon, the DP-SGD one so that both together meet epsilon.

Accountants (``privacy.accountant``):

- ``"pld"`` (default): Google's ``dp_accounting`` privacy-loss-distribution accountant with
  ``NeighboringRelation.REPLACE_ONE`` (pessimistic connect-the-dots discretisation, so an upper bound), the tightest.
- ``"rdp"``: Renyi DP of the same replace-one pair, computed per order by numerical integration (``dp_accounting``'s
  RDP accountant supports REPLACE_ONE only for sampling without replacement, not for Poisson sampling), composed by
  addition and converted with ``dp_accounting``'s RDP-to-(epsilon, delta) conversion. Looser than ``"pld"``.

Pure functions (:func:`epsilon_of`, :func:`calibrate_noise_multiplier`, :func:`replace_one_rdp`) are apart from the
stateful :class:`PrivacyLedger`, which records every step the DP optimizer takes and every weight release, refuses a
round that would exceed the budget (:class:`~geofed_secure.errors.PrivacyBudgetExceeded`), and is part of the node's
checkpoint (``state_dict``/``load_state_dict``), so a resumed run keeps its spent budget.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from dp_accounting import dp_event, pld
from dp_accounting.privacy_accountant import NeighboringRelation
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon as rdp_to_epsilon
from scipy.special import logsumexp

from geofed_secure.config import ACCOUNTANTS
from geofed_secure.errors import CheckpointError, ConfigError, PrivacyBudgetExceeded

# A mechanism applied ``steps`` times: (noise multiplier, sample rate, steps), Opacus's history format.
Step = tuple[float, float, int]
ADJACENCY = "replace-one"
ADJACENCY_STATEMENT = ("replace-one: a node's neighbouring datasets have the same size n and differ in one record (any record "
                       "substituted by any other); n, the sampling rates and the noise multipliers are public")
ACCOUNTANT_DESCRIPTIONS = {
    "pld": "dp_accounting privacy loss distributions, NeighboringRelation.REPLACE_ONE",
    "rdp": "Renyi DP of the replace-one Poisson-subsampled Gaussian pair, dp_accounting's RDP-to-(epsilon, delta) conversion",
}
_SIGMA_RANGE = (0.3, 200.0)
# PLD discretisation: pessimistic, so any interval gives an upper bound; 1e-3 is within 0.01 of 1e-4 on the demo's
# histories at a tenth of the cost (0.1-0.4 s per evaluation).
PLD_DISCRETIZATION = 1e-3
RDP_ORDERS = (1.1, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 10.0, 12.0, 14.0, 16.0, 20.0,
              24.0, 28.0, 32.0, 40.0, 48.0, 64.0, 96.0, 128.0, 256.0)
_RDP_POINTS_PER_STD = 64
_RDP_MARGIN = 1e-6  # relative safety margin on the numerical integral (its measured error is below 1e-9)


def canonical_history(history: Iterable[Step]) -> list[Step]:
    """Merge entries of the same (noise multiplier, sample rate): composition does not depend on order.

    >>> canonical_history([(1.0, 0.1, 8), (1.0, 0.3, 1), (1.0, 0.1, 8)])
    [(1.0, 0.1, 16), (1.0, 0.3, 1)]
    """
    merged: dict[tuple[float, float], int] = {}
    for sigma, rate, steps in history:
        merged[(float(sigma), float(rate))] = merged.get((float(sigma), float(rate)), 0) + int(steps)
    return [(sigma, rate, steps) for (sigma, rate), steps in merged.items() if steps > 0]


@functools.lru_cache(maxsize=4096)
def replace_one_rdp(noise_multiplier: float, sample_rate: float) -> tuple[float, ...]:
    """Renyi divergences at :data:`RDP_ORDERS` of one Poisson-subsampled Gaussian step under replace-one adjacency.

    The pair is ``P = (1-q) N(0, s^2) + q N(-1, s^2)`` and ``Q = (1-q) N(0, s^2) + q N(1, s^2)`` (symmetric, so
    ``D_a(P||Q) = D_a(Q||P)``); ``log int p^a q^(1-a)`` is summed on a grid of ``s / 64`` spacing wide enough that
    the integrand's ends lie 60 nats below its peak. With ``q = 1`` it is the Gaussian mechanism with sensitivity 2:

    >>> rdp = replace_one_rdp(2.0, 1.0)
    >>> all(abs(r / (2 * a / 2.0 ** 2) - 1) < 2e-6 for r, a in zip(rdp, RDP_ORDERS))  # 1e-6 margin included
    True
    """
    s, q = float(noise_multiplier), float(sample_rate)
    if not (s > 0 and 0 < q <= 1):
        raise ConfigError("privacy", f"RDP needs a positive noise multiplier and a rate in (0, 1], got {s}, {q}")
    log_norm = -math.log(s * math.sqrt(2 * math.pi))
    out = []
    for order in RDP_ORDERS:
        lo, hi = -(2 * order + 1) - 20 * s, 2 + 20 * s
        while True:
            x = np.linspace(lo, hi, math.ceil((hi - lo) / s * _RDP_POINTS_PER_STD) + 1)
            centre = -x ** 2 / (2 * s ** 2)
            if q < 1:
                log_p = np.logaddexp(math.log1p(-q) + centre, math.log(q) - (x + 1) ** 2 / (2 * s ** 2))
                log_q = np.logaddexp(math.log1p(-q) + centre, math.log(q) - (x - 1) ** 2 / (2 * s ** 2))
            else:
                log_p, log_q = -(x + 1) ** 2 / (2 * s ** 2), -(x - 1) ** 2 / (2 * s ** 2)
            integrand = order * log_p + (1 - order) * log_q + log_norm
            if max(integrand[0], integrand[-1]) < integrand.max() - 60:
                break
            lo, hi = lo - (hi - lo), hi + (hi - lo)  # mass near an end: widen and integrate again
        log_integral = float(logsumexp(integrand)) + math.log(x[1] - x[0])
        out.append(max(0.0, log_integral / (order - 1)) * (1 + _RDP_MARGIN))
    return tuple(out)


def _pld_epsilon(steps: Sequence[Step], delta: float) -> float:
    accountant = pld.PLDAccountant(NeighboringRelation.REPLACE_ONE, value_discretization_interval=PLD_DISCRETIZATION)
    for sigma, rate, count in steps:
        accountant.compose(dp_event.PoissonSampledDpEvent(rate, dp_event.GaussianDpEvent(sigma)), count)
    return float(accountant.get_epsilon(delta))


def _rdp_epsilon(steps: Sequence[Step], delta: float) -> float:
    if any(sigma <= 0 for sigma, _, _ in steps):
        return math.inf
    total = sum(count * np.array(replace_one_rdp(sigma, rate)) for sigma, rate, count in steps if rate > 0)
    if isinstance(total, int):  # only rate-0 steps
        return 0.0
    return float(rdp_to_epsilon(RDP_ORDERS, total, delta)[0])


def epsilon_of(history: Sequence[Step], delta: float, kind: str) -> float:
    """Epsilon under replace-one adjacency of composing ``history`` at ``delta`` (inf if it cannot be bounded).

    The history is canonicalised first, so the same steps give the same epsilon however they were interleaved.
    """
    if kind not in ACCOUNTANTS:
        raise ConfigError("privacy.accountant", f"must be one of {ACCOUNTANTS}, got {kind!r}")
    return _epsilon_of(tuple(sorted(canonical_history(history))), float(delta), kind)


@functools.lru_cache(maxsize=1024)
def _epsilon_of(steps: tuple[Step, ...], delta: float, kind: str) -> float:
    if not steps:
        return 0.0
    try:
        eps = _pld_epsilon(steps, delta) if kind == "pld" else _rdp_epsilon(steps, delta)
    except (ValueError, RuntimeError, OverflowError, FloatingPointError, MemoryError):  # far outside any budget
        return math.inf
    return eps if math.isfinite(eps) and eps >= 0 else math.inf


@functools.lru_cache(maxsize=256)
def calibrate_noise_multiplier(target_epsilon: float, delta: float, kind: str,
                               plan: tuple[tuple[float, int], ...], *, fixed: tuple[Step, ...] = (),
                               tolerance: float = 0.01) -> float:
    """Smallest noise multiplier (to ``tolerance`` relative epsilon) with ``epsilon(plan + fixed) <= target_epsilon``
    under replace-one adjacency.

    ``plan`` lists (sample rate, steps) of the mechanisms that use the returned multiplier; ``fixed`` lists
    mechanisms whose multiplier is already chosen (composed in). Raises :class:`ConfigError` when no multiplier up to
    200 meets the budget.

    >>> sigma = calibrate_noise_multiplier(2.0, 1e-5, "pld", ((0.01, 1000),))
    >>> 1.0 < sigma < 1.6 and 0.98 * 2.0 <= epsilon_of([(sigma, 0.01, 1000)], 1e-5, "pld") <= 2.0
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
        the smallest that keeps the composition of BOTH within ``epsilon``. (Measured with the earlier add/remove
        accounting: with one shared multiplier the weight releases, at a sampling rate near 0.4 on the demo, took 95% of
        the budget, 7.6 of epsilon 8.)
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


class NoisedOptimizer(Protocol):
    """What the step hook reads from the DP optimizer (Opacus's ``DPOptimizer``)."""

    noise_multiplier: float


class PrivacyLedger:
    """A node's spent budget: the history of mechanisms it ran (one entry per DP-SGD step and per weight release),
    accounted under replace-one adjacency with the configured accountant.

    The noise multipliers are fixed when the run starts (calibrated for the planned rounds) and travel in the
    checkpoint: a run resumed with more rounds keeps them, and the node refuses the rounds its budget does not cover.
    """

    def __init__(self, plan: PrivacyPlan, noise_multiplier: float, weight_noise_multiplier: float) -> None:
        self.plan = plan
        self.noise_multiplier = float(noise_multiplier)
        self.weight_noise_multiplier = float(weight_noise_multiplier)
        self.history: list[Step] = []  # (noise multiplier, sample rate, count), consecutive equal entries merged
        self.steps = 0  # DP-SGD optimizer steps recorded
        self.releases = 0  # precision-weight releases recorded

    def _record(self, noise_multiplier: float, sample_rate: float) -> None:
        entry = (float(noise_multiplier), float(sample_rate))
        if self.history and self.history[-1][:2] == entry:
            self.history[-1] = (*entry, self.history[-1][2] + 1)
        else:
            self.history.append((*entry, 1))

    def spent(self) -> float:
        return epsilon_of(self.history, self.plan.delta, self.plan.accountant)

    def check_round(self, node_id: str, round_: int) -> float:
        """Raise :class:`PrivacyBudgetExceeded` if one more round would exceed the budget; else return its epsilon."""
        after = epsilon_of([*self.history, *self.plan.round_history(self.noise_multiplier, self.weight_noise_multiplier)],
                           self.plan.delta, self.plan.accountant)
        if after > self.plan.epsilon * (1 + 1e-9):
            raise PrivacyBudgetExceeded(node_id=node_id, round_=round_, spent=self.spent(), after=after,
                                        budget=self.plan.epsilon, delta=self.plan.delta)
        return after

    def optimizer_hook(self) -> Callable[[NoisedOptimizer], None]:
        """The DP optimizer's step hook (called once per noised step): records the multiplier the optimizer used."""

        def hook(optimizer: NoisedOptimizer) -> None:
            self._record(optimizer.noise_multiplier, self.plan.sample_rate)
            self.steps += 1

        return hook

    def record_release(self) -> None:
        self._record(self.weight_noise_multiplier, self.plan.lap_sample_rate)
        self.releases += 1

    def summary(self) -> dict[str, float | int | str]:
        return {"epsilon": self.spent(), "epsilon_budget": self.plan.epsilon, "delta": self.plan.delta,
                "adjacency": ADJACENCY, "accountant": self.plan.accountant, "noise_multiplier": self.noise_multiplier,
                "sample_rate": self.plan.sample_rate, "steps": self.steps, "max_grad_norm": self.plan.max_grad_norm,
                "weight_noise_multiplier": self.weight_noise_multiplier, "weight_sample_rate": self.plan.lap_sample_rate,
                "weight_releases": self.releases, "weight_budget_share": self.plan.weight_budget_share}

    # -- checkpointing: the history as a float64 tensor [k, 3], the multipliers and the counters ---------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        history = np.array([[s, q, n] for s, q, n in self.history], np.float64).reshape(-1, 3)
        return {"privacy/history": torch.from_numpy(history),
                "privacy/noise_multiplier": torch.tensor([self.noise_multiplier, self.weight_noise_multiplier], dtype=torch.float64),
                "privacy/counts": torch.tensor([self.steps, self.releases], dtype=torch.int64)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        missing = [k for k in ("privacy/history", "privacy/noise_multiplier", "privacy/counts") if k not in state]
        if missing:
            raise CheckpointError(f"the checkpoint holds no privacy accountant state ({missing[0]}) for a DP node; "
                                  "it was written by a run without DP")
        history = state["privacy/history"].numpy().reshape(-1, 3)
        self.history = [(float(s), float(q), int(n)) for s, q, n in history]
        self.noise_multiplier, self.weight_noise_multiplier = (float(v) for v in state["privacy/noise_multiplier"])
        self.steps, self.releases = (int(v) for v in state["privacy/counts"])
