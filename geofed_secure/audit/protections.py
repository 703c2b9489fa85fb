"""What a threat model's adversary sees of the target node's releases under each protection.

| adversary \\ protection | none (or DP: uploads in clear) | masking (secagg-v1) | ckks (ckks-v1) |
|---|---|---|---|
| server (honest-but-curious or malicious) | each upload | the sum of the uploads | the sum (released decrypted) |
| server + colluding nodes | each upload | the sum, minus the colluders' own uploads | each upload: ANY node's key decrypts every ciphertext |
| a node | the broadcast aggregate, minus its own upload | the same | the same |
| outside observer | the final model only: the aggregated update, no alignment release | the same | the same |

A malicious server sees what an honest-but-curious one sees: the deviations of the secure-aggregation adversary
catalogue (``geofed_secure.secagg.masking.adversary``) are refused by honest nodes before anything more is revealed (tested
in the secure-aggregation suite). An ``aggregate`` view holds the target's release plus the uploads of the nodes the
adversary does not control; the adversary subtracts its own nodes' uploads exactly and its SIMULATION of the others
(:class:`~geofed_secure.audit.experiment.OtherNodes` ``estimate``). The sums under masking and CKKS come out of the
real protocols (:func:`geofed_secure.secagg.simulate_aggregation`), so their rounding / CKKS noise is in the view.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from geofed_secure.audit.experiment import RELEASES, Experiment, TrainedLevel
from geofed_secure.audit.threat_model import ThreatModel
from geofed_secure.errors import ConfigError

INDIVIDUAL, AGGREGATE, HIDDEN = "individual", "aggregate", "hidden"


def release_view(threat_model: ThreatModel, protection: str, release: str) -> str:
    """``individual``, ``aggregate`` or ``hidden``: how ``release`` of the target reaches this adversary."""
    if release not in RELEASES:
        raise ConfigError("release", f"unknown release {release!r}; known: {RELEASES}")
    if protection not in ("none", "masking", "ckks"):
        raise ConfigError("protection", f"unknown protection {protection!r}")
    role = threat_model.role
    if role == "observer" or "transcript" not in threat_model.observes:
        return AGGREGATE if release == "update" and "final_model" in threat_model.observes else HIDDEN
    if role == "node":
        return AGGREGATE
    if protection == "none" or (protection == "ckks" and role == "colluding"):
        return INDIVIDUAL
    return AGGREGATE


def check_target(threat_model: ThreatModel, experiment: Experiment) -> None:
    if experiment.target in threat_model.nodes:
        raise ConfigError("target", f"the audit target {experiment.target!r} is one of the adversary's own nodes in "
                          f"{threat_model.name!r}; choose another target in the plan")
    unknown = sorted(set(threat_model.nodes) - set(experiment.others.node_ids))
    if unknown:
        raise ConfigError("adversary.nodes", f"{threat_model.name!r} names nodes the demo federation does not have: {unknown}")


def _concat(releases: Mapping[str, np.ndarray], sizes: Mapping[str, int]) -> np.ndarray:
    """The releases one after the other, each zero-padded to ``sizes`` (nodes with their own label sets upload
    prototypes of different lengths: one row per task label; a missing row sums as zeros)."""
    parts = []
    for key in RELEASES:
        flat = np.asarray(releases[key], np.float64).ravel()
        parts.append(np.pad(flat, (0, sizes[key] - flat.size)))
    return np.concatenate(parts)


def _split(vector: np.ndarray, like: Mapping[str, np.ndarray], sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    out, start = {}, 0
    for key in RELEASES:
        out[key] = vector[start:start + np.asarray(like[key]).size]
        start += sizes[key]
    return out


def protocol_sums(experiment: Experiment, level: TrainedLevel, protection: str, *, seed: int) -> list[dict[str, np.ndarray]]:
    """Per target run: the sum over all nodes of every release, as the protocol delivers it to the aggregator."""
    from geofed_secure.secagg import simulate_aggregation

    others = experiment.others
    sums = []
    for i in range(level.membership.shape[0]):
        target = {k: level.releases[k][i] for k in RELEASES}
        everyone = [target, *(others.truth[n] for n in others.node_ids)]
        sizes = {k: max(np.asarray(r[k]).size for r in everyone) for k in RELEASES}
        inputs = {experiment.target: _concat(target, sizes)} | {n: _concat(others.truth[n], sizes) for n in others.node_ids}
        if protection == "none":
            total = np.sum(list(inputs.values()), axis=0)
        else:
            total = np.asarray(simulate_aggregation(inputs, protocol=protection, seed=seed * 1000 + i).aggregate, np.float64)
        sums.append(_split(total, target, sizes))
    return sums


def observed(experiment: Experiment, threat_model: ThreatModel, level: TrainedLevel, protection: str, release: str,
             sums: list[dict[str, np.ndarray]] | None) -> np.ndarray | None:
    """[N, D] the adversary's reading of the target's ``release`` in every run (None when hidden).

    For an aggregate view: the protocol's sum minus the adversary's own nodes' uploads minus its simulation of the
    other nodes (for the outside observer and every aggregate the same subtraction applies).
    """
    kind = release_view(threat_model, protection, release)
    if kind == HIDDEN:
        return None
    if kind == INDIVIDUAL:
        return np.asarray(level.releases[release], np.float64)
    if sums is None:
        raise ConfigError("protection", "an aggregate view needs the protocol sums")
    others = experiment.others
    known = [n for n in others.node_ids if n in threat_model.nodes]
    unknown = [n for n in others.node_ids if n not in threat_model.nodes]
    size = np.asarray(level.releases[release][0]).size

    def fit(vector: np.ndarray) -> np.ndarray:  # another label set: the rows that land on the target's (see _concat)
        flat = np.asarray(vector, np.float64).ravel()[:size]
        return np.pad(flat, (0, size - flat.size))

    offset = sum((fit(others.truth[n][release]) for n in known), np.zeros(size))
    offset = offset + sum((fit(others.estimate[n][release]) for n in unknown), np.zeros(size))
    return np.stack([s[release] - offset for s in sums])


def observed_public(experiment: Experiment, threat_model: ThreatModel, level: TrainedLevel, protection: str, release: str,
                    run: int, index: np.ndarray, *, simulate_others: bool = True) -> np.ndarray | None:
    """The adversary's reading of the target's anchor release (``gram`` as a full matrix, or ``raw_embeddings``) in a
    hypothetical federation whose anchors are the public samples ``index``: for the extraction sweep over B.

    From a sum (``aggregate`` view) the adversary subtracts its simulation of each other node it does not know
    (retrained on half that node's data: a strong adversary); with ``simulate_others=False`` it subtracts nothing
    and reads the sum as it is (the weakest one). The two bracket what a sum gives away.

    Sums here are computed in floating point, not through the protocols (whose error, about 1e-11 for masking and
    3e-8 for CKKS, is far below the differences measured)."""
    kind = release_view(threat_model, protection, release)
    if kind == HIDDEN:
        return None

    def anchor_release(embeddings: np.ndarray) -> np.ndarray:
        z = np.asarray(embeddings, np.float64)[index]
        return z @ z.T if release == "gram" else z

    value = anchor_release(level.public_embeddings[run])
    if kind == AGGREGATE:
        others = experiment.others
        for n in others.node_ids:
            if n not in threat_model.nodes:  # known nodes cancel exactly: only the unknown ones leave a residual
                value = value + anchor_release(others.public_truth[n])
                if simulate_others:
                    value = value - anchor_release(others.public_estimate[n])
    return value
