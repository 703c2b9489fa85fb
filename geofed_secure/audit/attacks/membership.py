"""Membership inference scores over N training runs of one node (pure functions; metrics in :mod:`..metrics`).

The experiment behind them (:mod:`geofed_secure.audit.experiment`) trains the target node N times, run ``i`` on a
random half of its data pool; ``membership[i, x]`` says whether record ``x`` was in run ``i``'s training set. Every
run serves in turn as the TARGET and the other N - 1 as the adversary's SHADOW runs (the "online" evaluation of
Carlini et al., S&P 2022): scores come back as an ``[N, P]`` array, one score per (target run, candidate), higher =
"member", and :func:`trials` flattens them into member / non-member scores.

Attacks:

- :func:`threshold_scores` (Yeom et al. 2018): the statistic itself, uncalibrated (e.g. minus the loss);
- :func:`lira_scores` (LiRA, Carlini et al. 2022): per-candidate Gaussians of a scalar statistic fitted on the
  shadow runs that did / did not train on the candidate; score = log-likelihood ratio of the target's statistic;
  ``fixed_variance`` pools the variance over candidates (the paper's choice for few shadows);
- :func:`lira_offline_scores` (offline LiRA, Carlini et al. 2022, section VI-C): only the shadows that did NOT train on
  the candidate, a Gaussian with a PER-CANDIDATE mean and variance; score = log Pr[N(mu_out, sd_out) < statistic]
  (an adversary that cannot retrain with the candidate: the shadows never saw it);
- :func:`lira_vector_scores`: LiRA on a whole released VECTOR (a Gram, prototypes, a B update) under an isotropic
  Gaussian with a shared variance: score = ||r - mu_out(x)||^2 - ||r - mu_in(x)||^2 (the log-likelihood ratio up
  to a positive factor), with the per-candidate means taken over the shadows' releases;
- :func:`rmia_scores` (RMIA, Zarifzadeh et al., ICML 2024): the target's likelihood ratio Pr(x|theta)/Pr(x) against
  population records z, Pr(.) averaged over reference (shadow) runs; score = fraction of z whose ratio x beats by
  more than ``gamma``, with ties broken exactly: between two population records the score interpolates their log
  ratios, beyond the most extreme it grows with the margin (a small population otherwise gives few distinct scores
  and non-members tie at the top, which makes TPR at low FPR an artefact).

The adversary may see the target run's release through a protection (a sum with other nodes' uploads): functions
take the TARGET statistics and the SHADOW statistics separately; in clear they are the same array.
"""

from __future__ import annotations

import numpy as np

from geofed_secure.errors import DataError


def _check(stats: np.ndarray, membership: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(stats, np.float64)
    m = np.asarray(membership, bool)
    if m.ndim != 2 or m.shape[0] < 3:
        raise DataError(f"{name}: membership must be [runs, candidates] with at least 3 runs, got shape {m.shape}")
    if s.shape[:2] != m.shape:
        raise DataError(f"{name}: statistics of shape {s.shape} do not match membership {m.shape}")
    if not np.isfinite(s).all():
        raise DataError(f"{name}: statistics contain NaN or inf")
    return s, m


def logit_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """log p_y - log(1 - p_y) from raw logits, computed stably (LiRA's scaled confidence).

    >>> round(float(logit_confidence(np.array([[2.0, 0.0]]), np.array([0]))[0]), 6)
    2.0
    """
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64)
    true = z[np.arange(len(y)), y]
    others = z.copy()
    others[np.arange(len(y)), y] = -np.inf
    top = others.max(axis=1)
    return true - (top + np.log(np.exp(others - top[:, None]).sum(axis=1)))


def true_label_probability(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Softmax probability of the true label."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return p[np.arange(len(labels)), np.asarray(labels, np.int64)]


def threshold_scores(stats: np.ndarray) -> np.ndarray:
    """The statistic as the score (no shadows): higher statistic = member."""
    return np.asarray(stats, np.float64).copy()


def lira_scores(target_stats: np.ndarray, membership: np.ndarray, *, shadow_stats: np.ndarray | None = None,
                fixed_variance: bool = True, min_std: float = 1e-6) -> np.ndarray:
    """LiRA log-likelihood ratios [N, P]: run i's statistic scored against Gaussians fitted on the other runs.

    ``shadow_stats`` may be ``[N, N, P]`` when the adversary's statistic depends on the target it attacks (e.g. it
    embeds candidates with the target's own encoder): row ``i`` holds the shadows' statistics used against run i.
    A candidate with no IN (or no OUT) shadow gets score 0 (no evidence either way).
    """
    target, m = _check(target_stats, membership, "lira_scores")
    n = m.shape[0]
    if shadow_stats is None:
        shadow = target
    elif np.ndim(shadow_stats) == 3:  # the statistic depends on the target: [target run, shadow run, candidate]
        shadow = np.asarray(shadow_stats, np.float64)
        if shadow.shape != (n, *m.shape) or not np.isfinite(shadow).all():
            raise DataError(f"lira_scores: per-target shadow statistics must be finite [{n}, {n}, {m.shape[1]}], got {shadow.shape}")
    else:
        shadow = _check(shadow_stats, membership, "lira_scores")[0]
    scores = np.zeros_like(target)
    for i in range(n):
        others = np.arange(n) != i
        s, mi = (shadow[i] if shadow.ndim == 3 else shadow)[others], m[others]
        n_in, n_out = mi.sum(axis=0), (~mi).sum(axis=0)
        mu_in = np.where(n_in > 0, (s * mi).sum(axis=0) / np.maximum(n_in, 1), 0.0)
        mu_out = np.where(n_out > 0, (s * ~mi).sum(axis=0) / np.maximum(n_out, 1), 0.0)
        res_in, res_out = (s - mu_in) * mi, (s - mu_out) * ~mi
        if fixed_variance:
            sd_in = np.full(m.shape[1], np.sqrt((res_in ** 2).sum() / max(1, n_in.sum() - 1)))
            sd_out = np.full(m.shape[1], np.sqrt((res_out ** 2).sum() / max(1, n_out.sum() - 1)))
        else:
            sd_in = np.sqrt((res_in ** 2).sum(axis=0) / np.maximum(n_in - 1, 1))
            sd_out = np.sqrt((res_out ** 2).sum(axis=0) / np.maximum(n_out - 1, 1))
        sd_in, sd_out = np.maximum(sd_in, min_std), np.maximum(sd_out, min_std)
        x = target[i]
        llr = (-0.5 * ((x - mu_in) / sd_in) ** 2 - np.log(sd_in)) - (-0.5 * ((x - mu_out) / sd_out) ** 2 - np.log(sd_out))
        scores[i] = np.where((n_in > 0) & (n_out > 0), llr, 0.0)
    return scores


def lira_offline_scores(target_stats: np.ndarray, membership: np.ndarray, *, min_std: float = 1e-3,
                        min_out: int = 2) -> np.ndarray:
    """Offline LiRA scores [N, P]: log Pr[N(mu_out(x), sd_out(x)) < s_i(x)], mean and standard deviation of the
    candidate's statistic over the other runs that did NOT train on it (per-candidate variance). A candidate with
    fewer than ``min_out`` OUT shadows scores log(1/2), the score of a statistic at the OUT median (no evidence; 0,
    the top score, would rank it above every candidate with evidence).

    >>> m = np.array([[1, 0], [0, 0], [0, 1], [0, 0]], bool)
    >>> s = np.array([[5.0, 0.0], [0.0, 1.0], [1.0, 5.0], [-1.0, -1.0]])
    >>> bool(lira_offline_scores(s, m)[0, 0] > lira_offline_scores(s, m)[1, 0])
    True
    """
    from scipy.stats import norm

    stats, m = _check(target_stats, membership, "lira_offline_scores")
    n = m.shape[0]
    scores = np.zeros_like(stats)
    for i in range(n):
        others = np.arange(n) != i
        s, out = stats[others], ~m[others]
        n_out = out.sum(axis=0)
        mu = (s * out).sum(axis=0) / np.maximum(n_out, 1)
        sd = np.sqrt((((s - mu) * out) ** 2).sum(axis=0) / np.maximum(n_out - 1, 1))
        z = (stats[i] - mu) / np.maximum(sd, min_std)
        scores[i] = np.where(n_out >= min_out, norm.logcdf(z), np.log(0.5))
    return scores


def lira_vector_scores(target_releases: np.ndarray, membership: np.ndarray, *,
                       shadow_releases: np.ndarray | None = None) -> np.ndarray:
    """Isotropic-Gaussian LiRA on released vectors [N, D]: ||r_i - mu_out(x)||^2 - ||r_i - mu_in(x)||^2 per (i, x).

    mu_in(x) / mu_out(x) average the releases of the shadow runs (all runs but i) that did / did not train on x.
    """
    m = np.asarray(membership, bool)
    target = np.asarray(target_releases, np.float64)
    shadow = target if shadow_releases is None else np.asarray(shadow_releases, np.float64)
    if target.ndim != 2 or shadow.shape != target.shape or m.ndim != 2 or m.shape[0] != target.shape[0] or m.shape[0] < 3:
        raise DataError(f"lira_vector_scores: releases {target.shape} / {shadow.shape} must be [runs, D] matching "
                        f"membership {m.shape} (>= 3 runs)")
    if not (np.isfinite(target).all() and np.isfinite(shadow).all()):
        raise DataError("lira_vector_scores: releases contain NaN or inf")
    # Everything below is an inner product of releases, so it is computed from the [N, N] Gram matrices of the
    # releases (O(N^2 D + N^2 P)) instead of materialising per-candidate means (O(N P D)). The score is invariant to
    # translating all releases together; centring on the shadows' mean keeps the squared norms small.
    centre = shadow.mean(axis=0)
    x, y = shadow - centre, target - centre
    gram, cross = x @ x.T, y @ x.T            # gram[j, k] = x_j . x_k; cross[i, j] = y_i . x_j
    mf = m.astype(np.float64)                 # [N, P]
    a = mf.T @ gram                           # [P, N]: S_in(c) . x_j, S_in(c) = sum of releases of runs holding c
    s_in_sq = (a * mf.T).sum(axis=1)          # ||S_in(c)||^2
    t_dot_s_in = a.sum(axis=1)                # T . S_in(c), T = sum of all releases
    n = m.shape[0]
    n_in_all = mf.sum(axis=0)
    scores = np.zeros(m.shape)
    for i in range(n):
        mi = mf[i]
        n_in = n_in_all - mi
        n_out = (n - 1) - n_in
        # S_in' = S_in - m_i x_i (shadows only), S_out' = (T - x_i) - S_in'
        s_in_r = mf.T @ cross[i] - mi * cross[i, i]
        s_in_sq_i = s_in_sq - 2 * mi * a[:, i] + mi * gram[i, i]
        rest_r = cross[i].sum() - cross[i, i]
        rest_sq = gram.sum() - 2 * gram[i].sum() + gram[i, i]
        rest_dot_s_in = (t_dot_s_in - a[:, i]) - mi * (gram[i].sum() - gram[i, i])
        s_out_r = rest_r - s_in_r
        s_out_sq = rest_sq - 2 * rest_dot_s_in + s_in_sq_i
        ok = (n_in > 0) & (n_out > 0)
        n_in_safe, n_out_safe = np.maximum(n_in, 1), np.maximum(n_out, 1)
        # ||r - mu_out||^2 - ||r - mu_in||^2 = 2 r.(mu_in - mu_out) + ||mu_out||^2 - ||mu_in||^2
        value = 2 * (s_in_r / n_in_safe - s_out_r / n_out_safe) + s_out_sq / n_out_safe ** 2 - s_in_sq_i / n_in_safe ** 2
        scores[i] = np.where(ok, value, 0.0)
    return scores


def rmia_scores(target_probs: np.ndarray, population_probs: np.ndarray, *, gamma: float = 1.0) -> np.ndarray:
    """RMIA scores [N, P] from Pr(x | theta_j) of candidates [N, P] and of population records [N, Z] in every run.

    For target run i the reference models are all other runs: Pr(x) = mean_j Pr(x | theta_j), and the score of x is
    the fraction of population records z with (Pr(x|theta_i) / Pr(x)) / (Pr(z|theta_i) / Pr(z)) > gamma, made
    continuous so that it never ties where the ratios differ: to the count k of population records beaten it adds
    the position (in [0, 1), log scale) of the candidate's ratio in the gap to the next population ratio (below the
    smallest / above the largest: a monotone function of the log margin), divided by Z; floor(Z * score) = k.

    >>> scores = rmia_scores(np.array([[0.9, 0.95], [0.5, 0.5], [0.5, 0.5]]), np.array([[0.5, 0.6], [0.5, 0.5], [0.5, 0.5]]))
    >>> bool(scores[0, 1] > scores[0, 0] >= 1.0)  # both beat every population record; the higher ratio scores higher
    True
    """
    px = np.asarray(target_probs, np.float64)
    pz = np.asarray(population_probs, np.float64)
    if px.ndim != 2 or pz.ndim != 2 or px.shape[0] != pz.shape[0] or px.shape[0] < 2:
        raise DataError(f"rmia_scores: probabilities must be [runs, candidates] and [runs, population], got {px.shape}, {pz.shape}")
    if not (np.isfinite(px).all() and np.isfinite(pz).all()) or (px < 0).any() or (pz < 0).any():
        raise DataError("rmia_scores: probabilities must be finite and non-negative")
    if gamma <= 0:
        raise DataError(f"rmia_scores: gamma must be > 0, got {gamma}")
    n = px.shape[0]
    tiny = 1e-30
    scores = np.zeros(px.shape)
    for i in range(n):
        others = np.arange(n) != i
        ratio_x = np.log(np.maximum(px[i], tiny) / np.maximum(px[others].mean(axis=0), tiny)) - np.log(gamma)
        ratio_z = np.sort(np.log(np.maximum(pz[i], tiny) / np.maximum(pz[others].mean(axis=0), tiny)))
        # k = #{z : ratio_x / ratio_z > gamma} = #{z : ratio_z < ratio_x / gamma}, plus where ratio_x sits in the gap
        # to the next population ratio (a fraction in [0, 1)): floor(Z * score) is RMIA's count, ties are broken
        k = np.searchsorted(ratio_z, ratio_x, side="left")
        below = ratio_z[np.maximum(k - 1, 0)]
        above = ratio_z[np.minimum(k, ratio_z.size - 1)]
        gap = np.where((k > 0) & (k < ratio_z.size) & (ratio_x < above), (ratio_x - below) / np.maximum(above - below, tiny), 0.0)
        gap = np.where(k == 0, np.exp(np.minimum(ratio_x - ratio_z[0], 0.0)), gap)  # below every z: (0, 1)
        gap = np.where(k == ratio_z.size, 1.0 - np.exp(-(ratio_x - ratio_z[-1])), gap)  # above every z: [0, 1)
        scores[i] = (k + np.clip(gap, 0.0, 1.0 - 1e-12)) / ratio_z.size
    return scores


def trials(scores: np.ndarray, membership: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(member scores, non-member scores) over every (target run, candidate) pair."""
    s, m = np.asarray(scores, np.float64), np.asarray(membership, bool)
    if s.shape != m.shape:
        raise DataError(f"trials: scores {s.shape} and membership {m.shape} differ")
    return s[m], s[~m]
