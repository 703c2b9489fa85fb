"""In-process driver of ckks-v1: :func:`run_ckks_aggregation` moves real wire bytes between real state machines."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from types import MappingProxyType

import numpy as np

from geofed_secure.errors import (
    DataError,
    ProtocolAborted,
)
from geofed_secure.secagg.ckks.keys import (
    CkksKeys,
    provision_ckks_keys,
)
from geofed_secure.secagg.ckks.messages import (
    CkksAggregate,
    CkksEncryptedInput,
    CkksMessage,
    CkksRoundStart,
    decode_ckks_message,
)
from geofed_secure.secagg.ckks.node import (
    CkksNode,
)
from geofed_secure.secagg.ckks.server import (
    CkksServer,
)
from geofed_secure.secagg.ckks.spec import (
    DEFAULT_CLIP,
    MIN_COHORT,
    PROTOCOL_ID,
    SIMULATION_ANCHOR_DIGEST,
    STAGES_BEFORE_UPLOAD,
    ckks_error_bound,
)
from geofed_secure.secagg.common import SERVER, AggregationResult, WireRecord, checked_dropouts


def arrival_order(node_ids: Iterable[str], seed: int | bytes | None) -> tuple[str, ...]:
    """The order in which uploads reach the server: sorted by SHA-256(seed, node id); sorted ids when None."""
    ids = sorted(node_ids)
    if seed is None:
        return tuple(ids)
    key = seed if isinstance(seed, bytes) else str(seed).encode()
    return tuple(sorted(ids, key=lambda v: hashlib.sha256(key + b"\x00" + v.encode()).digest()))


def _checked_inputs(inputs: Mapping[str, np.ndarray], weights: Mapping[str, float] | None,
                    dropouts: Mapping[str, str] | None) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, str]]:
    if not isinstance(inputs, Mapping) or not inputs:
        raise DataError("inputs must be a non-empty mapping node id -> 1-D float array")
    arrays = {str(k): np.asarray(v) for k, v in inputs.items()}
    lengths = {x.shape[0] if x.ndim == 1 else -1 for x in arrays.values()}
    if len(lengths) != 1 or -1 in lengths:
        raise DataError(f"all inputs must be 1-D arrays of one length, got shapes {sorted({x.shape for x in arrays.values()})}")
    if weights is not None and set(weights) != set(arrays):
        raise DataError("weights must give exactly one weight per input node")
    dropouts = checked_dropouts(dropouts, arrays)
    return arrays, dict(weights) if weights is not None else {}, dropouts


def run_ckks_aggregation(inputs: Mapping[str, np.ndarray], *, weights: Mapping[str, float] | None = None,
                         dropouts: Mapping[str, str] | None = None, seed: int | bytes | None = None,
                         clip: float = DEFAULT_CLIP, anchor_digest: str = SIMULATION_ANCHOR_DIGEST,
                         federation_id: str = "simulation", round_: int = 1, floor: int = MIN_COHORT,
                         keys: CkksKeys | None = None) -> AggregationResult:
    """Provision keys (unless ``keys`` is given) and run one ckks-v1 round in process, every message through
    encode/decode and recorded as a :class:`WireRecord`.

    ``weights``: node id -> weight (1 when None); ``aggregate`` is the weighted sum sum_k clip(w_k x_k) (each
    node clips its weighted coordinates to +-``clip``) and ``total_weight`` the decrypted sum of the weights.
    ``dropouts``: node id -> secagg-v1 stage; a node dropping at ``advertise_keys``, ``share_keys`` or
    ``masked_input`` never uploads; one dropping at ``consistency_check`` or ``unmask`` has uploaded (it
    contributes) but does not receive the aggregate. ``seed`` only fixes the upload arrival order
    (:func:`arrival_order`): TenSEAL's randomness cannot be seeded.

    Raises :class:`ProtocolAborted` below ``max(3, floor)`` contributors (or cohort), or when no contributor is
    left online to decrypt; :class:`DataError`/:class:`ConfigError` for bad inputs.
    """
    arrays, weight_of, dropouts = _checked_inputs(inputs, weights, dropouts)
    keys = keys or provision_ckks_keys()
    nodes = sorted(arrays)
    if len(nodes) < max(MIN_COHORT, floor):  # the server would refuse to open such a round (and nodes to join it)
        raise ProtocolAborted(f"cohort of {len(nodes)} is below the floor of {max(MIN_COHORT, floor)}",
                              party=SERVER, stage="round_start")
    length = next(iter(arrays.values())).shape[0]
    server = CkksServer(federation_id=federation_id, public_context=keys.public_context, cohort=nodes, floor=floor)
    parties = {v: CkksNode(node_id=v, federation_id=federation_id, secret_context=keys.secret_context,
                           anchor_digest=anchor_digest, clip=clip, floor=floor) for v in nodes}
    transcript: list[WireRecord] = []

    def send(stage: str, sender: str, receiver: str, message: CkksMessage) -> CkksMessage:
        blob = message.encode()
        transcript.append(WireRecord(round=round_, stage=stage, sender=sender, receiver=receiver,
                                     kind=type(message).__name__, data=blob))
        return decode_ckks_message(blob)

    starts = {v: send("round_start", SERVER, v, m) for v, m in server.start_round(
        round_, anchor_digest=anchor_digest, length=length).items()}
    uploaders = [v for v in nodes if dropouts.get(v) not in STAGES_BEFORE_UPLOAD]
    for v in arrival_order(uploaders, seed):
        start = starts[v]
        assert isinstance(start, CkksRoundStart)
        upload = parties[v].begin_round(start, arrays[v], weight_of.get(v))
        received = send("encrypted_input", v, SERVER, upload)
        assert isinstance(received, CkksEncryptedInput)
        server.receive(received)
    aggregate = server.finish()
    online = [v for v in aggregate.contributors if v not in dropouts]
    if not online:
        raise ProtocolAborted("every contributor dropped after uploading; nobody is left to decrypt the aggregate",
                              party=SERVER, stage="aggregate")
    plains = []
    for v in online:
        delivered = send("aggregate", SERVER, v, aggregate)
        assert isinstance(delivered, CkksAggregate)
        plains.append(parties[v].receive_aggregate(delivered))
    plain = plains[0]  # every node decrypts the same ciphertext with the same key: identical values
    sent = dict.fromkeys([*nodes, SERVER], 0)
    for record in transcript:
        sent[record.sender] += record.nbytes
    max_weight = max((weight_of.get(v, 1.0) for v in aggregate.contributors), default=1.0)
    return AggregationResult(
        protocol=PROTOCOL_ID, aggregate=plain[:-1].copy(), total_weight=float(plain[-1]),
        contributors=aggregate.contributors, bytes_sent=MappingProxyType(sent), transcript=tuple(transcript),
        clipped=MappingProxyType({v: parties[v].clipped for v in aggregate.contributors}),
        max_abs_error=ckks_error_bound(len(aggregate.contributors), clip=clip, max_weight=float(max_weight),
                                       scale_bits=keys.parameters.scale_bits))
