"""Attack metrics and the one result type every attack returns (TF Privacy's habit: reports come from results).

Membership-style attacks give a score per candidate (higher = "member"); :func:`membership_result` turns scores
into the ROC curve, AUC, TPR at fixed FPRs and the membership advantage (max TPR - FPR), each with a confidence
interval, and every result carries its POWER (:mod:`.power`): the smallest AUC / TPR at each stated FPR it could
have detected and the largest epsilon it could have refuted. TPR at a low FPR comes with the FPR it achieved, the
negatives behind it and a distribution-free interval (a percentile bootstrap of that extreme order statistic does
not cover). Pure functions here; ``tests/audit/test_audit.py`` checks them against scikit-learn and
``tests/audit/test_power.py`` checks the intervals' coverage by simulation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from geofed_secure.audit import power as pw
from geofed_secure.errors import DataError

FPR_POINTS = (0.01, 0.001)


@dataclass(frozen=True, slots=True, kw_only=True)
class Interval:
    value: float
    low: float
    high: float
    confidence: float = 0.95

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high, "confidence": self.confidence}


@dataclass(frozen=True, slots=True, kw_only=True)
class AttackResult:
    """One attack against one target under one threat model: metrics with intervals, trials, seed, metadata."""

    attack: str
    threat_model: str
    target: str
    metrics: Mapping[str, Interval]
    trials: int
    seed: int
    roc: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)  # (fpr, tpr), for plots
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # What this result could have shown at its size (e.g. min_detectable_auc, max_certifiable_epsilon; see .power)
    power: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))
        object.__setattr__(self, "power", MappingProxyType(dict(self.power)))

    def to_dict(self) -> dict[str, Any]:
        return {"attack": self.attack, "threat_model": self.threat_model, "target": self.target, "trials": self.trials,
                "seed": self.seed, "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
                "power": dict(self.power), "metadata": dict(self.metadata)}


def _scores_and_labels(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    members = np.asarray(member_scores, np.float64).reshape(-1)
    others = np.asarray(nonmember_scores, np.float64).reshape(-1)
    if members.size == 0 or others.size == 0:
        raise DataError("membership metrics need at least one member and one non-member score")
    scores = np.concatenate([members, others])
    if not np.isfinite(scores).all():
        raise DataError("membership scores contain NaN or inf")
    return scores, np.concatenate([np.ones(members.size), np.zeros(others.size)])


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold, from (0, 0) to (1, 1); ties handled as one threshold.

    >>> fpr, tpr = roc_curve(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0]))
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    distinct = np.r_[np.flatnonzero(np.diff(scores)), labels.size - 1]  # last index of each tie group
    tps = np.cumsum(labels)[distinct]
    fps = (distinct + 1) - tps
    positives, negatives = labels.sum(), labels.size - labels.sum()
    return np.r_[0.0, fps / negatives], np.r_[0.0, tps / positives]


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    return float(np.trapezoid(tpr, fpr))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Highest TPR among thresholds with FPR <= target (no interpolation: an attacker picks a real threshold)."""
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def advantage(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Membership advantage max_threshold (TPR - FPR) (Yeom et al. 2018)."""
    return float(np.max(tpr - fpr))


def _point_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    fpr, tpr = roc_curve(scores, labels)
    out = {"auc": auc(fpr, tpr), "advantage": advantage(fpr, tpr)}
    out |= {f"tpr_at_{p:g}_fpr": tpr_at_fpr(fpr, tpr, p) for p in FPR_POINTS}
    return out


def _percentile_interval(value: float, samples: Sequence[float], confidence: float) -> Interval:
    """Percentile-bootstrap interval, widened to contain the point estimate: the bootstrap distribution of a maximum
    (the advantage, max over thresholds of TPR - FPR) sits above it when the true value is near 0, and an interval
    that excludes its own estimate would be reported otherwise (measured: advantage 0.024, interval [0.034, 0.119])."""
    if not len(samples):
        return Interval(value=value, low=value, high=value, confidence=confidence)
    tail = (1 - confidence) / 2
    low, high = float(np.quantile(samples, tail)), float(np.quantile(samples, 1 - tail))
    return Interval(value=value, low=min(low, value), high=max(high, value), confidence=confidence)


def membership_result(member_scores: Sequence[float], nonmember_scores: Sequence[float], *, attack: str,
                      threat_model: str, target: str, seed: int, bootstrap: int = 200, confidence: float = 0.95,
                      metadata: Mapping[str, Any] | None = None) -> AttackResult:
    """Metrics of a membership attack from its scores, with percentile-bootstrap intervals (members and non-members
    resampled separately, ``bootstrap`` times, from ``seed``)."""
    scores, labels = _scores_and_labels(member_scores, nonmember_scores)
    point = _point_metrics(scores, labels)
    rng = np.random.default_rng(seed)
    members, others = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    samples: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(bootstrap):
        index = np.r_[rng.choice(members, members.size), rng.choice(others, others.size)]
        for key, value in _point_metrics(scores[index], labels[index]).items():
            samples[key].append(value)
    metrics = {k: _percentile_interval(v, samples[k] if bootstrap else [], confidence) for k, v in point.items()}
    low_fpr = _low_fpr(scores[members], scores[others], metrics, confidence)
    return AttackResult(attack=attack, threat_model=threat_model, target=target, metrics=metrics, trials=int(labels.size),
                        seed=seed, roc=roc_curve(scores, labels), power=_power(metrics, low_fpr, confidence),
                        metadata={"members": int(members.size), "nonmembers": int(others.size), "bootstrap": bootstrap,
                                  "low_fpr": low_fpr, **(metadata or {})})


def _low_fpr(members: np.ndarray, others: np.ndarray, metrics: dict[str, Interval], confidence: float,
             ) -> dict[str, dict[str, Any]]:
    """Replace each TPR-at-FPR interval by its distribution-free one (:func:`.power.low_fpr_interval`), widened to
    the bootstrap interval already there (which accounts for trials that share a run or a record); returns what is
    behind each point: achieved FPR, negatives, false positives, whether it is resolved."""
    out = {}
    for p in FPR_POINTS:
        key = f"tpr_at_{p:g}_fpr"
        exact = pw.low_fpr_interval(members, others, p, alpha=1 - confidence)
        boot = metrics[key]
        metrics[key] = Interval(value=boot.value, low=min(float(exact["low"]), boot.low),
                                high=max(float(exact["high"]), boot.high), confidence=confidence)
        out[f"{p:g}"] = {k: exact[k] for k in ("achieved_fpr", "false_positives", "negatives", "positives", "resolved",
                                               "resolution", "certifiable")}
    return out


def _power(metrics: Mapping[str, Interval], low_fpr: Mapping[str, Mapping[str, Any]], confidence: float) -> dict[str, float]:
    """The result's power: smallest detectable AUC (null standard error, or the bootstrap's if larger), smallest
    detectable TPR at each FPR point, largest epsilon a perfect attack on these trials could refute."""
    first = next(iter(low_fpr.values()))
    n_neg, n_pos = int(first["negatives"]), int(first["positives"])
    auc = metrics["auc"]
    z = pw.z_score(confidence)
    boot_se = (auc.high - auc.low) / (2 * z) if auc.high > auc.low else 0.0
    out = {"min_detectable_auc": pw.min_detectable_auc(n_pos, n_neg, alpha=1 - confidence, standard_error=boot_se)}
    out |= {f"min_detectable_tpr_at_{p:g}_fpr": pw.min_detectable_tpr(n_pos, n_neg, p, alpha=1 - confidence)
            for p in FPR_POINTS}
    out["max_certifiable_epsilon"] = pw.max_certifiable_epsilon(n_pos, n_neg, alpha=1 - confidence)
    out["power"] = pw.POWER
    return out


def membership_grid_result(scores: np.ndarray, membership: np.ndarray, *, attack: str, threat_model: str, target: str,
                           seed: int, bootstrap: int = 200, confidence: float = 0.95,
                           metadata: Mapping[str, Any] | None = None) -> AttackResult:
    """Metrics of a membership attack scored on a grid of (target run, candidate) pairs, ``scores`` and ``membership``
    both ``[runs, candidates]``, with TWO-WAY bootstrap intervals: runs and candidates are resampled independently
    and every (run, candidate) pair of the two samples is a trial (Owen 2007). Trials of one run share its model and
    trials of one candidate share its record, so resampling trials one by one (:func:`membership_result`) would
    understate the uncertainty."""
    s, m = np.asarray(scores, np.float64), np.asarray(membership, bool)
    if s.ndim != 2 or s.shape != m.shape:
        raise DataError(f"membership_grid_result: scores {s.shape} and membership {m.shape} must be equal [runs, candidates]")
    members, others = s[m], s[~m]
    flat_scores, flat_labels = _scores_and_labels(members, others)
    point = _point_metrics(flat_scores, flat_labels)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(bootstrap):
        grid = np.ix_(rng.integers(0, s.shape[0], s.shape[0]), rng.integers(0, s.shape[1], s.shape[1]))
        ms, ls = m[grid].ravel(), s[grid].ravel()
        if ms.all() or not ms.any():
            continue
        for key, value in _point_metrics(ls, ms.astype(np.float64)).items():
            samples[key].append(value)
    metrics = {k: _percentile_interval(v, samples[k], confidence) for k, v in point.items()}
    low_fpr = _low_fpr(members, others, metrics, confidence)
    return AttackResult(attack=attack, threat_model=threat_model, target=target, metrics=metrics, trials=int(m.size),
                        seed=seed, roc=roc_curve(flat_scores, flat_labels), power=_power(metrics, low_fpr, confidence),
                        metadata={"members": int(m.sum()), "nonmembers": int((~m).sum()), "runs": int(s.shape[0]),
                                  "bootstrap": bootstrap, "low_fpr": low_fpr,
                                  "interval": "two-way bootstrap over runs and candidates; TPR at low FPR: the union with "
                                              "the distribution-free order-statistic interval",
                                  **(metadata or {})})
