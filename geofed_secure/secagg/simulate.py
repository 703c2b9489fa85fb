"""The public entry point :func:`simulate_aggregation`: one secure-aggregation round in process, either protocol."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from geofed_secure.errors import ConfigError, DataError, ProtocolAborted
from geofed_secure.secagg.common import SERVER, AggregationResult, checked_dropouts
from geofed_secure.secagg.masking.adversary import CATALOGUE, Adversary, AttackContext
from geofed_secure.secagg.masking.federation import MaskingFederation
from geofed_secure.secagg.masking.spec import (
    MaskingParameters,
)
from geofed_secure.wire.codec import ID_PATTERN


def _validated(inputs: Mapping[str, np.ndarray], weights: Mapping[str, float] | None, clip: float) -> dict[str, np.ndarray]:
    if not isinstance(inputs, Mapping) or not inputs:
        raise DataError("inputs must be a non-empty mapping node id -> 1-D float array")
    arrays = {}
    for node_id, value in inputs.items():
        x = np.asarray(value, dtype=np.float64)
        if x.ndim != 1 or x.shape[0] == 0:
            raise DataError(f"input of {node_id!r} must be a non-empty 1-D array, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise DataError(f"input of {node_id!r} has NaN/inf values; a node refuses to mask them")
        if not isinstance(node_id, str) or not ID_PATTERN.match(node_id):
            raise DataError(f"node id {node_id!r} must be 1-64 characters of [A-Za-z0-9._-] starting with a letter or digit")
        arrays[node_id] = x
    lengths = {x.shape[0] for x in arrays.values()}
    if len(lengths) != 1:
        raise DataError(f"all inputs must have the same length, got lengths {sorted(lengths)}")
    if weights is None:
        return arrays
    if set(weights) != set(arrays):
        raise DataError("weights must give exactly one weight per input node")
    out = {}
    for node_id, x in arrays.items():
        w = float(weights[node_id])
        if not (np.isfinite(w) and w > 0):
            raise DataError(f"weight of {node_id!r} must be positive and finite, got {weights[node_id]!r}")
        if w > clip:
            raise DataError(f"weight {w} of {node_id!r} exceeds the clip bound {clip}: the masked weight would be clipped "
                            "and total_weight would be wrong; rescale the weights or raise clip")
        out[node_id] = np.concatenate([w * x, [w]])
    return out


def simulate_aggregation(inputs: Mapping[str, np.ndarray], *, protocol: str = "masking",
                         weights: Mapping[str, float] | None = None, threshold: int | None = None,
                         neighbors: int | None = None, dropouts: Mapping[str, str] | None = None,
                         adversary: str | None = None, seed: int | bytes | None = None,
                         clip: float = 1.0e4, ring_bits: int = 64) -> AggregationResult:
    """Run one secure-aggregation round in process and return what the aggregator learns.

    ``inputs``: node id -> 1-D float array (equal lengths). ``weights``: node id -> positive weight; the weight
    is masked together with the vector and ``aggregate`` is sum_k w_k x_k. ``threshold``/``neighbors``: Shamir
    threshold and SecAgg+ degree (None: majority of share holders / complete graph). ``dropouts``: node id ->
    stage at which it drops (one of ``advertise_keys``, ``share_keys``, ``masked_input``, ``consistency_check``,
    ``unmask``). ``adversary``: a :data:`~geofed_secure.secagg.masking.adversary.CATALOGUE` name; honest nodes refuse
    every entry, so this raises :class:`ProtocolAborted` whose ``transcript`` and ``refusals`` show what was
    said. ``seed`` makes every key, share and rounding reproducible (None: OS randomness). ``clip`` bounds each
    coordinate (weighted coordinates for weighted runs); ``ring_bits`` is 32 or 64.

    Raises :class:`ProtocolAborted` when fewer than the threshold (or 3) survive, :class:`DataError` for bad
    inputs, :class:`ConfigError` for bad parameters; all derive from ``GeofedError``.
    """
    vectors = _validated(inputs, weights, clip)
    dropouts = checked_dropouts(dropouts, vectors)
    if protocol == "ckks":
        if adversary is not None or threshold is not None or neighbors is not None:
            raise ConfigError("protocol", "adversary, threshold and neighbors apply to protocol='masking' only")
        from geofed_secure.secagg.ckks.federation import run_ckks_aggregation
        return run_ckks_aggregation(inputs, weights=weights, dropouts=dropouts, seed=seed, clip=clip)
    if protocol != "masking":
        raise ConfigError("protocol", f"must be 'masking' or 'ckks', got {protocol!r}")
    if adversary is not None and adversary not in CATALOGUE:
        raise ConfigError("adversary", f"unknown adversary {adversary!r}; the catalogue has {', '.join(sorted(CATALOGUE))}")
    attacker = CATALOGUE[adversary]() if adversary else Adversary()
    if attacker.sparse_only and (neighbors is None or neighbors >= len(vectors) - 1):
        raise ConfigError("adversary", f"{adversary!r} attacks the SecAgg+ graph seed; give neighbors < {len(vectors) - 1} "
                          "(with the complete graph there is no graph seed)")
    params = MaskingParameters(ring_bits=ring_bits, clip=clip, threshold=threshold, degree=neighbors,
                               rounds_per_epoch=max(1, attacker.rounds))
    federation = MaskingFederation.provision(tuple(vectors), params, seed=seed)
    ctx = AttackContext(server=federation.server, round=1, rng=federation.rng)
    refusals: dict[str, ProtocolAborted] = {}
    try:
        for round_ in range(1, attacker.rounds + 1):
            refusals = federation.run_round(round_, vectors, dropouts=dropouts if round_ == attacker.rounds else None,
                                            adversary=attacker, ctx=ctx)
            if refusals:
                break
    except ProtocolAborted as exc:
        exc.transcript = tuple(federation.transcript)
        exc.refusals = {}
        raise
    if refusals:
        first = refusals[min(refusals)]
        aborted = ProtocolAborted(first.reason, party=first.party, stage=first.stage)
        aborted.transcript = tuple(federation.transcript)
        aborted.refusals = {v: e.reason for v, e in refusals.items()}
        raise aborted
    outcome = federation.server.outcome
    if outcome is None:  # an adversary that ran its course without completing the round
        raise ProtocolAborted("the round did not complete", party=SERVER, stage="unmask")
    weighted = weights is not None
    d = next(iter(inputs.values())).__len__()
    aggregate = outcome.aggregate[:d] if weighted else outcome.aggregate
    total_weight = float(outcome.aggregate[d]) if weighted else float(len(outcome.contributors))
    sent: dict[str, int] = {v: 0 for v in [*vectors, SERVER]}
    for record in federation.transcript:
        sent[record.sender] += record.nbytes
    return AggregationResult(protocol="masking", aggregate=aggregate, total_weight=total_weight,
                             contributors=outcome.contributors, bytes_sent=sent,
                             transcript=tuple(federation.transcript),
                             clipped={v: n.clipped for v, n in federation.nodes.items()},
                             max_abs_error=outcome.max_abs_error)
