"""In-process driver of secagg-v1 and the public entry point :func:`simulate_aggregation`.

Every message crosses the wire for real: it is encoded, recorded as a :class:`WireRecord`, and decoded by the
receiver, so the simulation exercises the same bytes a deployment sends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from geofed_secure.errors import ConfigError, DataError, MessageError, ProtocolAborted
from geofed_secure.secagg import primitives as crypto
from geofed_secure.secagg.adversary import CATALOGUE, Adversary, AttackContext
from geofed_secure.secagg.masking import (
    MaskingNode,
    MaskingParameters,
    MaskingServer,
    Provisioning,
)
from geofed_secure.secagg.messages import (
    _ID,
    ConsistencySignature,
    GraphSeedReveal,
    KeyAdvertisement,
    MaskedInput,
    Message,
    RoundStart,
    ShareBundle,
    UnmaskResponse,
    decode,
)
from geofed_secure.secagg.types import SERVER, STAGES, AggregationResult, WireRecord, checked_dropouts

# The stage at which a node sends each kind of reply (a node that drops at stage S sends nothing from S on).
REPLY_STAGE = {KeyAdvertisement: "advertise_keys", GraphSeedReveal: "graph_seed", ShareBundle: "share_keys", MaskedInput: "masked_input",
               ConsistencySignature: "consistency_check", UnmaskResponse: "unmask"}
DEMO_ANCHOR_DIGEST = hashlib.sha256(b"geofed-secagg-v1 simulation anchors").hexdigest()


@dataclass
class MaskingFederation:
    """Provisioned parties of one simulated federation: identity keys, node sessions and the server."""

    provisioning: Provisioning
    nodes: dict[str, MaskingNode]
    server: MaskingServer
    rng: crypto.Randomness
    transcript: list[WireRecord] = field(default_factory=list)
    _on_wire: Callable[[WireRecord, Message], None] | None = field(default=None, repr=False)
    _last_encoded: tuple[Message, bytes] | None = field(default=None, repr=False)

    @classmethod
    def provision(cls, node_ids: list[str] | tuple[str, ...], parameters: MaskingParameters, *, seed: int | bytes | None = None,
                  federation_id: str = "simulation", anchor_digest: str = DEMO_ANCHOR_DIGEST) -> MaskingFederation:
        if seed is None:
            child = lambda label: crypto.SystemRandomness()
        else:
            child = crypto.DeterministicRandomness(seed if isinstance(seed, bytes) else str(seed).encode(), "simulation").child
        identities, privates = {}, {}
        for v in sorted(node_ids):
            privates[v], identities[v] = crypto.ed25519_keypair(child(f"identity/{v}"))
        provisioning = Provisioning(federation_id=federation_id, identities=identities, anchor_digest=anchor_digest,
                                    parameters=parameters)
        nodes = {v: MaskingNode(v, privates[v], provisioning, child(f"node/{v}")) for v in sorted(node_ids)}
        return cls(provisioning=provisioning, nodes=nodes, server=MaskingServer(provisioning), rng=child("server"))

    def _send(self, round_: int, sender: str, receiver: str, message: Message) -> Message:
        # A broadcast is one object sent to many receivers: encode it once.
        if self._last_encoded is not None and self._last_encoded[0] is message:
            blob = self._last_encoded[1]
        else:
            blob = message.encode()
            self._last_encoded = (message, blob)
        stage = self.server.stage if sender == SERVER else REPLY_STAGE[type(message)]
        record = WireRecord(round=round_, stage=stage, sender=sender, receiver=receiver, kind=type(message).__name__, data=blob)
        self.transcript.append(record)
        if self._on_wire is not None:
            self._on_wire(record, message)
        return decode(blob)

    def run_round(self, round_: int, inputs: Mapping[str, np.ndarray], *, dropouts: Mapping[str, str] | None = None,
                  adversary: Adversary | None = None, ctx: AttackContext | None = None,
                  drops: Callable[[str, str], bool] | None = None,
                  on_wire: Callable[[WireRecord, Message], None] | None = None) -> dict[str, ProtocolAborted]:
        """One round; returns the refusals of honest nodes (empty when nobody refused). Server aborts raise.

        A node drops at stage S (sends nothing from S on) if ``dropouts[node] == S`` or ``drops(node, S)`` is true;
        ``on_wire`` sees every message as it crosses the wire (the runtime records it in its transcript).
        """
        dropouts = dict(dropouts or {})
        self._on_wire = on_wire
        adversary = adversary or Adversary()
        length = len(next(iter(inputs.values())))
        ctx = ctx or AttackContext(server=self.server, round=round_, rng=self.rng)
        ctx.round = round_
        refusals: dict[str, ProtocolAborted] = {}
        gone: set[str] = set()
        outgoing: dict[str, Message] = self.server.start_round(round_, length, cohort=tuple(v for v in inputs))
        try:
            while outgoing:
                outgoing = adversary.tamper(outgoing, ctx)
                for receiver, message in sorted(outgoing.items()):
                    ctx.sent.append((round_, receiver, message))
                    delivered = self._send(round_, SERVER, receiver, message)
                    node = self.nodes.get(receiver)
                    if node is None or receiver in gone or receiver in refusals:
                        continue
                    try:
                        if isinstance(delivered, RoundStart):
                            reply = node.begin_round(delivered, inputs[receiver])
                        else:
                            reply = node.receive(delivered)
                    except ProtocolAborted as exc:
                        refusals[receiver] = exc
                        continue
                    drop_stage = dropouts.get(receiver)
                    reply_stage = REPLY_STAGE[type(reply)]
                    if ((drop_stage is not None and STAGES.index(reply_stage) >= STAGES.index(drop_stage))
                            or (drops is not None and drops(receiver, reply_stage))):
                        gone.add(receiver)
                        node.abandon_round()
                        continue
                    received = self._send(round_, receiver, SERVER, reply)
                    if adversary.intercept(received, ctx):
                        continue
                    try:
                        self.server.receive(received)
                    except MessageError:
                        gone.add(receiver)  # the honest server ignores a message it cannot use
                override = adversary.override(ctx)
                if override is not None:
                    outgoing = override
                    continue
                if refusals:  # honest nodes refused: the round cannot complete; stop before anything else is asked
                    break
                outgoing = self.server.close_stage()
        finally:  # whatever happened, nobody stays mid-round: the next round must be able to start
            if self.server.outcome is None or self.server.outcome.round != round_:
                self.server.abandon_round("honest nodes refused or the round did not complete")
            for node in self.nodes.values():
                if node.state not in ("ready", "aborted"):
                    node.abandon_round()
        return refusals


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
        if not isinstance(node_id, str) or not _ID.fullmatch(node_id):
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
    ``unmask``). ``adversary``: a :data:`~geofed_secure.secagg.adversary.CATALOGUE` name; honest nodes refuse
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
        from geofed_secure.secagg.ckks import run_ckks_aggregation
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
        exc.transcript = tuple(federation.transcript)  # type: ignore[attr-defined]
        exc.refusals = {}  # type: ignore[attr-defined]
        raise
    if refusals:
        first = refusals[min(refusals)]
        exc = ProtocolAborted(first.reason, party=first.party, stage=first.stage)
        exc.transcript = tuple(federation.transcript)  # type: ignore[attr-defined]
        exc.refusals = {v: e.reason for v, e in refusals.items()}  # type: ignore[attr-defined]
        raise exc
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
