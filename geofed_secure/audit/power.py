"""What an audit of a given size can and cannot show: exact low-FPR intervals and the power of every result.

An audit that detects nothing says something only next to the smallest effect it could have detected, and a DP
claim held against an audit says something only next to the largest epsilon that audit could have refuted. Pure
functions here (:mod:`.metrics` attaches them to every :class:`~geofed_secure.audit.metrics.AttackResult`):

- :func:`low_fpr_interval`: TPR at a fixed FPR with an interval that covers without assuming a distribution.
  The FPR of a threshold set from ``n`` negatives is itself random (the k-th highest negative's true FPR is
  Beta(k, n - k + 1)); the interval takes a conservative threshold (true FPR <= p with probability 1 - alpha/4)
  and a liberal one (true FPR >= p, same probability) from the negatives' order statistics and a Clopper-Pearson
  bound of the positives' rate at each, so it covers TPR(p) with probability >= 1 - alpha for independent trials.
  With fewer than about ``ln(4/alpha) / p`` negatives no threshold can be shown to have FPR <= p: the lower end
  is 0 and the point is flagged as below the audit's resolution. The percentile bootstrap of the same extreme
  order statistic does not cover (``tests/audit/test_power.py`` shows both by simulation).
- :func:`min_detectable_auc`, :func:`min_detectable_tpr`: the smallest AUC / TPR at FPR p this many trials detects
  with 80% power at the 5% level.
- :func:`max_certifiable_epsilon`: the largest epsilon a perfect membership attack (every member above every
  non-member) on this many trials could refute; :func:`canary_max_certifiable_epsilon`: the same for the one-run
  canary audit (every guess right).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from geofed_secure.audit.canary import epsilon_lower_bound
from geofed_secure.errors import DataError

POWER = 0.8  # the detection probability "minimum detectable" refers to
ALPHA = 0.05  # two-sided level of every interval


def z_score(confidence: float) -> float:
    """The standard normal quantile of a two-sided ``confidence`` interval (1.96 for 0.95)."""
    return float(stats.norm.ppf(0.5 + confidence / 2))


def clopper_pearson(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """Exact two-sided (1 - alpha) binomial interval (each tail alpha / 2).

    >>> [round(x, 4) for x in clopper_pearson(0, 10, 0.05)]
    [0.0, 0.3085]
    """
    if trials <= 0 or not 0 <= successes <= trials:
        raise DataError(f"clopper_pearson: need 0 <= successes <= trials, trials > 0, got {successes}, {trials}")
    low = 0.0 if successes == 0 else float(stats.beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return low, high


def _order_ranks(negatives: int, fpr: float, alpha: float) -> tuple[int | None, int]:
    """(k_conservative, k_liberal): ranks among the negatives' scores, counted from the highest (1 = highest), whose
    thresholds have true FPR <= fpr (resp. >= fpr) with probability >= 1 - alpha / 4 each. None: no rank qualifies.

    P[true FPR of the k-th highest negative < p] = P[Binomial(n, p) >= k].
    """
    # liberal: smallest k with P[Bin(n, p) >= k] <= alpha / 4
    k_liberal = min(negatives, int(stats.binom.ppf(1 - alpha / 4, negatives, fpr)) + 1)
    # conservative: largest k with P[Bin(n, p) <= k - 1] <= alpha / 4
    cdf = stats.binom.cdf(np.arange(negatives), negatives, fpr)
    ok = np.flatnonzero(cdf <= alpha / 4)
    return (int(ok[-1]) + 1 if ok.size else None), k_liberal


def low_fpr_interval(member_scores: np.ndarray, nonmember_scores: np.ndarray, fpr: float, *,
                     alpha: float = ALPHA) -> dict[str, float | int | bool]:
    """TPR at FPR ``fpr`` with what is behind it: the empirical point (highest TPR among thresholds whose empirical
    FPR is <= fpr), the FPR that point actually achieved, the negatives and false positives behind it, whether the
    point is resolved (>= 1 false positive allowed: negatives * fpr >= 1) and a distribution-free interval (see the
    module docstring; ``low`` is 0 whenever no threshold can be shown to hold FPR <= fpr)."""
    pos = np.sort(np.asarray(member_scores, np.float64))
    neg = np.sort(np.asarray(nonmember_scores, np.float64))[::-1]
    n_pos, n_neg = pos.size, neg.size
    if n_pos == 0 or n_neg == 0 or not 0 < fpr < 1:
        raise DataError("low_fpr_interval: need members, non-members and 0 < fpr < 1")
    allowed = math.floor(fpr * n_neg + 1e-9)  # false positives an empirical threshold may take
    # empirical point: threshold just above the (allowed + 1)-th highest negative
    cut = neg[allowed] if allowed < n_neg else -np.inf
    false_pos = int((neg > cut).sum())
    true_pos = int(n_pos - np.searchsorted(pos, cut, side="right"))
    k_cons, k_lib = _order_ranks(n_neg, fpr, alpha)
    if k_cons is None:
        low = 0.0
    else:  # strictly above the conservative threshold: FPR <= fpr with probability >= 1 - alpha / 4
        above = int(n_pos - np.searchsorted(pos, neg[k_cons - 1], side="right"))
        low = clopper_pearson(above, n_pos, alpha / 2)[0]
    at_or_above = int(n_pos - np.searchsorted(pos, neg[k_lib - 1], side="left"))
    high = clopper_pearson(at_or_above, n_pos, alpha / 2)[1]
    return {"value": true_pos / n_pos, "low": low, "high": high, "achieved_fpr": false_pos / n_neg,
            "false_positives": false_pos, "negatives": n_neg, "positives": n_pos, "resolved": n_neg * fpr >= 1,
            "resolution": 1.0 / n_neg, "certifiable": k_cons is not None}


def min_detectable_auc(positives: float, negatives: float, *, alpha: float = ALPHA, power: float = POWER,
                       standard_error: float | None = None) -> float:
    """Smallest AUC whose interval would exclude 0.5 with probability ``power``: 0.5 + (z_(1-alpha/2) + z_power) * SE,
    SE the null standard error of the AUC (Mann-Whitney, sqrt((n1 + n0 + 1) / (12 n1 n0))) or ``standard_error``
    when the trials are dependent and a larger one was measured.

    >>> round(min_detectable_auc(100, 100), 3)
    0.615
    """
    if positives <= 0 or negatives <= 0:
        raise DataError("min_detectable_auc: need positives and negatives")
    se = math.sqrt((positives + negatives + 1) / (12 * positives * negatives))
    se = max(se, standard_error or 0.0)
    return float(min(1.0, 0.5 + (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * se))


def min_detectable_tpr(positives: int, negatives: int, fpr: float, *, alpha: float = ALPHA,
                       power: float = POWER) -> float:
    """Smallest TPR at FPR ``fpr`` whose :func:`low_fpr_interval` lower end would exceed ``fpr`` (chance) with
    probability ``power`` (1.0 when no threshold can be certified at this many negatives: nothing is detectable).

    >>> min_detectable_tpr(1000, 600, 0.001)
    1.0
    >>> 0.005 < min_detectable_tpr(1000, 10000, 0.001) < 0.01
    True
    """
    if _order_ranks(negatives, fpr, alpha)[0] is None:
        return 1.0
    counts = np.arange(positives + 1)
    lows = stats.beta.ppf(alpha / 4, np.maximum(counts, 1), positives - counts + 1)
    lows[0] = 0.0
    need = int(np.flatnonzero(lows > fpr)[0]) if (lows > fpr).any() else positives + 1
    if need > positives:
        return 1.0
    grid = np.linspace(fpr, 1.0, 2001)
    hit = stats.binom.sf(need - 1, positives, grid) >= power
    return float(grid[np.flatnonzero(hit)[0]]) if hit.any() else 1.0


def max_certifiable_epsilon(positives: int, negatives: int, *, delta: float = 1e-5, alpha: float = ALPHA) -> float:
    """Largest epsilon that a PERFECT membership attack on these trials refutes at one threshold: every member
    caught (TPR >= its Clopper-Pearson lower end) and no non-member (FPR <= its upper end), and (epsilon, delta)-DP
    forces TPR <= e^epsilon FPR + delta. No attack on this many trials can certify more.

    >>> round(max_certifiable_epsilon(3000, 3000), 2)  # log(0.025^(1/3000) / (1 - 0.025^(1/3000)))
    6.7
    """
    if positives <= 0 or negatives <= 0:
        raise DataError("max_certifiable_epsilon: need positives and negatives")
    tpr_low = clopper_pearson(positives, positives, alpha)[0]
    fpr_high = clopper_pearson(0, negatives, alpha)[1]
    return max(0.0, math.log(max(tpr_low - delta, 1e-300) / fpr_high))


def canary_max_certifiable_epsilon(canaries: int, guesses: int, *, delta: float, confidence: float = 0.95) -> float:
    """Largest epsilon the one-run canary audit could refute with every one of its ``guesses`` right.

    >>> round(canary_max_certifiable_epsilon(100, 40, delta=1e-5), 2)
    2.55
    """
    return epsilon_lower_bound(canaries, guesses, guesses, delta=delta, confidence=confidence)


def canaries_needed(epsilon: float, *, delta: float, guess_fraction: float = 0.2, confidence: float = 0.95,
                    limit: int = 100_000) -> int | None:
    """Fewest canaries whose audit (guessing ``guess_fraction`` in and as many out), every guess right, refutes
    ``epsilon``; None if no number up to ``limit`` can (the bound peaks and then falls as m grows, by its 2 m delta
    term: at delta 1e-5 guessing 20% in and 20% out never refutes 8; guessing all takes ~16,000 canaries)."""
    m = 10
    while m <= limit:
        guesses = 2 * max(1, int(guess_fraction * m))
        if canary_max_certifiable_epsilon(m, guesses, delta=delta, confidence=confidence) > epsilon:
            return m
        m = int(m * 1.25) + 1
    return None


def dp_max_auc(epsilon: float, delta: float = 0.0) -> float:
    """Largest membership AUC an (epsilon, delta)-DP mechanism allows: the area under the DP ROC bound
    TPR <= min(e^eps FPR + delta, 1 - e^-eps (1 - FPR - delta)) (Kairouz et al. 2015), integrated numerically.

    >>> round(dp_max_auc(1.0), 3)  # e f*^2 / 2 + (1 - f*) - (1 - f*)^2 / (2 e), f* = 1 / (1 + e)
    0.731
    """
    if epsilon < 0 or not 0 <= delta < 1:
        raise DataError(f"dp_max_auc: need epsilon >= 0 and delta in [0, 1), got {epsilon}, {delta}")
    f = np.linspace(0.0, 1.0, 200_001)
    e = math.exp(min(epsilon, 700.0))
    tpr = np.minimum(np.minimum(e * f + delta, 1 - (1 - f - delta) / e), 1.0)
    return float(np.trapezoid(np.clip(tpr, 0.0, 1.0), f))


def min_detectable_difference(values: np.ndarray, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest mean difference (e.g. an extraction error below its baseline, paired per independent unit) that the
    two-sided one-sample t test of :func:`mean_difference_interval` at level ``alpha`` detects with probability
    ``power``, from the spread of the observed paired differences (t quantiles with n - 1 degrees of freedom, so a
    handful of units is not credited with the power of a normal approximation)."""
    v = np.asarray(values, np.float64).ravel()
    if v.size < 2:
        return math.inf
    df = v.size - 1
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * v.std(ddof=1) / math.sqrt(v.size))


def mean_difference_interval(values: np.ndarray, *, alpha: float = ALPHA) -> tuple[float, float, float]:
    """(mean, low, high): the two-sided 1 - ``alpha`` t interval of the mean of paired differences, one value per
    independent unit. A difference is detected when the interval excludes 0: the test whose power
    :func:`min_detectable_difference` states."""
    v = np.asarray(values, np.float64).ravel()
    if v.size < 2:
        mean = float(v.mean()) if v.size else math.nan
        return mean, -math.inf, math.inf
    half = float(stats.t.ppf(1 - alpha / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return float(v.mean()), float(v.mean()) - half, float(v.mean()) + half
