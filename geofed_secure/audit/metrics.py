"""Attack metrics and the one result type every attack returns (TF Privacy's habit: reports come from results).

Membership-style attacks give a score per candidate (higher = "member"); :func:`membership_result` turns scores
into the ROC curve, AUC, TPR at fixed FPRs and the membership advantage (max TPR - FPR), each with a bootstrap
confidence interval. Pure functions here; ``tests/audit/test_audit.py`` checks them against scikit-learn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

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

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    def to_dict(self) -> dict[str, Any]:
        return {"attack": self.attack, "threat_model": self.threat_model, "target": self.target, "trials": self.trials,
                "seed": self.seed, "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
                "metadata": dict(self.metadata)}


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
    tail = (1 - confidence) / 2
    metrics = {k: Interval(value=v, low=float(np.quantile(samples[k], tail)) if bootstrap else v,
                           high=float(np.quantile(samples[k], 1 - tail)) if bootstrap else v, confidence=confidence)
               for k, v in point.items()}
    return AttackResult(attack=attack, threat_model=threat_model, target=target, metrics=metrics, trials=int(labels.size),
                        seed=seed, roc=roc_curve(scores, labels),
                        metadata={"members": int(members.size), "nonmembers": int(others.size), "bootstrap": bootstrap,
                                  **(metadata or {})})


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
    tail = (1 - confidence) / 2
    metrics = {k: Interval(value=v, low=float(np.quantile(samples[k], tail)) if samples[k] else v,
                           high=float(np.quantile(samples[k], 1 - tail)) if samples[k] else v, confidence=confidence)
               for k, v in point.items()}
    return AttackResult(attack=attack, threat_model=threat_model, target=target, metrics=metrics, trials=int(m.size),
                        seed=seed, roc=roc_curve(flat_scores, flat_labels),
                        metadata={"members": int(m.sum()), "nonmembers": int((~m).sum()), "runs": int(s.shape[0]),
                                  "bootstrap": bootstrap, "interval": "two-way bootstrap over runs and candidates",
                                  **(metadata or {})})
