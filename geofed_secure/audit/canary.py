"""One-run canary audit statistic (Steinke, Nasr, Jagielski, "Privacy Auditing with One (1) Training Run", 2023).

m canaries are each included in a node's training data independently with probability 1/2. After training, the
auditor scores every canary, guesses "in" for the r_in highest, "out" for the r_out lowest and abstains on the rest
(r = r_in + r_out guesses), and counts v correct guesses. If training is (epsilon, delta)-DP, the number of
correct guesses is stochastically dominated so that (their Theorem 3.2 / Proposition 5.7)

    P[V >= v] <= P[Binomial(r, q_eps) >= v] + 2 m delta * max_{i=1..v} P[v > Binomial(r, q_eps) >= v - i] / i,
    q_eps = e^eps / (1 + e^eps).

:func:`epsilon_lower_bound` returns the largest epsilon that this p-value REJECTS at the given confidence: the
training run is demonstrably NOT (epsilon, delta)-DP for any smaller epsilon. A lower bound above the accountant's
epsilon is a failure of the DP implementation (or of the accounting).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from geofed_secure.errors import DataError


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Probability of at least ``v`` correct guesses out of ``r`` under (epsilon, delta)-DP, m canaries.

    >>> round(p_value(100, 100, 50, 0.0, 0.0), 4)  # coin flipping: half right is unremarkable
    0.5398
    """
    _check(m, r, v)
    if epsilon < 0 or not 0 <= delta <= 1:
        raise DataError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(1.0, tail)
    # max over i of P[v - i <= Bin < v] / i, via the cumulative pmf below v
    pmf = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)
    alpha = float(np.max(np.cumsum(pmf) / np.arange(1, v + 1)))
    return min(1.0, tail + 2 * m * delta * alpha)


def epsilon_lower_bound(m: int, r: int, v: int, *, delta: float, confidence: float = 0.95) -> float:
    """Largest epsilon rejected at ``confidence`` by :func:`p_value` (0 when even epsilon 0 is not rejected).

    >>> epsilon_lower_bound(1000, 1000, 500, delta=0.0)
    0.0
    >>> 0.5 < epsilon_lower_bound(1000, 1000, 700, delta=1e-5) < 0.85  # 70% right of 1000: e^eps/(1+e^eps) ~ 0.7
    True
    """
    _check(m, r, v)
    if not 0 < confidence < 1:
        raise DataError(f"confidence must be in (0, 1), got {confidence}")
    alpha = 1.0 - confidence
    if p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < alpha:
        low, high = high, 2 * high
        if high > 1e3:
            return math.inf
    for _ in range(60):  # p_value grows with epsilon; keep p(low) < alpha <= p(high)
        mid = (low + high) / 2
        if p_value(m, r, v, mid, delta) < alpha:
            low = mid
        else:
            high = mid
    return low


def _check(m: int, r: int, v: int) -> None:
    if not (isinstance(m, (int, np.integer)) and isinstance(r, (int, np.integer)) and isinstance(v, (int, np.integer))):
        raise DataError("m, r and v must be integers")
    if not 0 <= v <= r <= m or m < 1:
        raise DataError(f"need 0 <= v <= r <= m and m >= 1, got m={m}, r={r}, v={v}")
