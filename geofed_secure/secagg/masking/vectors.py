"""Test vectors of secagg-v1 (``protocols/secagg-v1/vectors.json``), generated from fixed seeds.

Each case holds the inputs, parameters, intermediates an independent implementation can check step by step
(identity and round keys, HKDF outputs, keystream prefixes, Shamir shares), the full message transcript as
wire bytes, the result, and INVALID cases (a message, the receiver's state, the error it must raise).
``python -m geofed_secure.secagg.vectors`` writes (or ``--check``s) the files of both protocols.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np

from geofed_secure.secagg.masking import primitives as crypto
from geofed_secure.secagg.masking.federation import MaskingFederation
from geofed_secure.secagg.masking.messages import KeyRoster, ShareDelivery, UnmaskRequest, decode
from geofed_secure.secagg.masking.spec import MaskingParameters, pairwise_mask, self_mask

PREFIX_WORDS = 4


def _inputs(n: int, length: int, seed: int, *, scale: float = 1.0, outlier: float | None = None) -> dict[str, np.ndarray]:
    """Inputs in [-scale, scale] (6 decimals of scale); ``outlier`` replaces each node's first coordinate (to be clipped)."""
    rng = np.random.default_rng(seed)
    out = {f"node-{i}": np.round(rng.uniform(-1, 1, length), 6) * scale for i in range(n)}
    if outlier is not None:
        for i, x in enumerate(out.values()):
            x[0] = outlier if i % 2 == 0 else -outlier
    return out


def _replayed_draws(seed: int, federation_ids: tuple[str, ...], node_id: str, params: MaskingParameters, threshold: int,
                    length: int) -> dict[str, Any]:
    """A node's randomness, re-drawn here in the order SPEC 2.9 fixes (independently of the node's own code).

    The generator checks that the node used exactly these values (its advertisement and masked input must match)."""
    root = crypto.DeterministicRandomness(str(seed).encode(), "simulation")
    for v in sorted(federation_ids):
        root.child(f"identity/{v}")
    rng = next(child for v, child in ((v, root.child(f"node/{v}")) for v in sorted(federation_ids)) if v == node_id)
    k = params.rounds_per_epoch
    out: dict[str, Any] = {"channel_private_key": rng.token(32).hex(), "mask_private_keys": [], "self_mask_seeds": []}
    for _ in range(k):
        out["mask_private_keys"].append(rng.token(32).hex())
        out["self_mask_seeds"].append(rng.token(32).hex())
    out["graph_nonce"] = rng.token(32).hex()
    out["shamir_coefficient_bytes"] = [{"mask_key": [rng.token(crypto.SHARE_BYTES).hex() for _ in range(threshold - 1)],
                                        "self_mask_seed": [rng.token(crypto.SHARE_BYTES).hex() for _ in range(threshold - 1)]}
                                       for _ in range(k)]
    out["rounding_seed"] = rng.token(32).hex()
    return out


def _result(outcome: Any, inputs: dict[str, np.ndarray], clip: float, weighted: bool) -> dict[str, Any]:
    exact = sum(np.clip(inputs[v], -clip, clip) for v in outcome.contributors)
    out = {"round": outcome.round, "contributors": list(outcome.contributors), "aggregate": outcome.aggregate.tolist(),
           "max_abs_error": outcome.max_abs_error, "exact_sum_of_clipped_inputs": [float(x) for x in exact]}
    if weighted:
        out["total_weight"] = float(outcome.aggregate[-1])
    return out


def _masking_case(name: str, *, n: int, length: int, params: MaskingParameters, seed: int,
                  dropouts: dict[str, str] | None = None, weights: dict[str, float] | None = None,
                  scale: float = 1.0, outlier: float | None = None, rounds: int = 1) -> dict[str, Any]:
    raw = _inputs(n, length, seed, scale=scale, outlier=outlier)
    inputs = raw if weights is None else {v: np.concatenate([weights[v] * x, [weights[v]]]) for v, x in raw.items()}
    fed = MaskingFederation.provision(tuple(inputs), params, seed=seed, federation_id="vectors")
    results = []
    for round_ in range(1, rounds + 1):  # later rounds: the steady state of the same epoch, same inputs
        assert fed.run_round(round_, inputs, dropouts=dropouts if round_ == 1 else None) == {}
        results.append(_result(fed.server.outcome, inputs, params.clip, weights is not None))
    plan = fed.server.plan
    assert plan is not None
    d = len(next(iter(inputs.values())))
    fp = plan.fixed_point
    intermediates: dict[str, Any] = {
        "provisioned_nodes": len(fed.provisioning.identities), "epoch_members": list(plan.members),
        "holders_per_owner": len(plan.holders[plan.members[0]]), "threshold": plan.threshold, "view_quorum": plan.quorum,
        "fractional_bits": fp.frac_bits, "roster_digest": plan.roster_digest.hex(),
        "graph_seed": plan.graph_seed.hex() if plan.graph_seed is not None else None,
        "ring_order": (sorted(plan.members, key=lambda v: hashlib.sha256(plan.graph_seed + v.encode()).digest())
                       if plan.graph_seed is not None else None),
        "holders": {k: list(v) for k, v in plan.holders.items()}, "nodes": {}}
    for v, node in fed.nodes.items():
        ep = node.epoch
        draws = _replayed_draws(seed, tuple(inputs), v, params, plan.threshold, d)
        info: dict[str, Any] = {"identity_public_key": fed.provisioning.identities[v].hex(), "draws": draws}
        if ep is None or ep.plan is None:  # dropped before its keys were planned: only its draws
            intermediates["nodes"][v] = info
            continue
        assert ep.mask_privates[0].hex() == draws["mask_private_keys"][0] and ep.graph_nonce.hex() == draws["graph_nonce"]
        seed0 = ep.seeds[0]
        rounding_key = crypto.derive_key(bytes.fromhex(draws["rounding_seed"]), "rounding", "vectors", 1, v)
        uniforms = (np.frombuffer(crypto.keystream_words(rounding_key, d, 64).tobytes(), "<u8") >> np.uint64(11)
                    ).astype(np.float64) * 2.0**-53
        encoded, clipped = fp.encode(inputs[v], uniforms)
        info.update({
            "channel_public_key": crypto.x25519_public(ep.channel_private).hex(),
            "graph_commitment": crypto.commitment(ep.graph_nonce, "vectors", 1, v, purpose="graph-commit").hex(),
            "self_mask_commitment_round1": crypto.commitment(seed0, "vectors", 1, v).hex(),
            "self_mask_key_round1": crypto.derive_key(seed0, "self-mask", "vectors", 1, v).hex(),
            "self_mask_prefix": [int(w) for w in self_mask(seed0, "vectors", 1, v, PREFIX_WORDS, params.ring_bits)],
            "rounding_key": rounding_key.hex(), "rounding_uniforms": [float(u) for u in uniforms],
            "encoded_input": [int(w) for w in encoded], "clipped_coordinates": clipped,
            "shares_held_round1": {o: {"mask_key": s[0][0].hex(), "self_mask_seed": s[0][1].hex()}
                                   for o, s in sorted(ep.own_shares.items())},
            "share_channels": {}, "pairwise": {},
        })
        for holder in plan.neighbours(v):
            secret = crypto.x25519_shared(ep.channel_private, ep.adverts[holder].channel_key)
            info["share_channels"][holder] = {
                "x25519_shared": secret.hex(),
                "channel_key": crypto.derive_key(secret, "share-channel", "vectors", plan.epoch, v, holder).hex(),
                "associated_data": f"geofed-secagg-v1|shares|vectors|{plan.epoch}|{v}|{holder}|{plan.roster_digest.hex()}",
            }
        for peer in ep.peers:
            secret = crypto.x25519_shared(ep.mask_privates[0], ep.adverts[peer].mask_keys[0])
            low, high = sorted((v, peer))
            info["pairwise"][peer] = {
                "x25519_shared": secret.hex(),
                "mask_key": crypto.derive_key(secret, "pairwise-mask", "vectors", 1, low, high).hex(),
                "mask_prefix": [int(w) for w in pairwise_mask(secret, "vectors", 1, v, peer, PREFIX_WORDS, params.ring_bits)],
                "sign": "+" if v < peer else "-",
            }
        intermediates["nodes"][v] = info
    case = {
        "name": name,
        "seed": seed,
        "federation_id": "vectors",
        "anchor_digest": fed.provisioning.anchor_digest,
        "parameters": dataclasses.asdict(params),
        "inputs": {k: v.tolist() for k, v in inputs.items()},
        "dropouts": dropouts or {},
        "intermediates": intermediates,
        "transcript": [{"round": r.round, "stage": r.stage, "sender": r.sender, "receiver": r.receiver, "kind": r.kind,
                        "hex": r.data.hex()}
                       for r in fed.transcript],
        "result": results[0],
        "later_results": results[1:],  # steady-state rounds of the same epoch, same inputs, nobody dropping
    }
    if weights is not None:
        case["weights"] = weights
        case["unweighted_inputs"] = {k: v.tolist() for k, v in raw.items()}
    return case


def _invalid_cases(valid: dict[str, Any]) -> list[dict[str, Any]]:
    """Messages a node must refuse, each taken from the valid transcript and altered in one way."""
    records = valid["transcript"]
    roster_hex = next(r["hex"] for r in records if r["kind"] == "KeyRoster")
    roster = decode(bytes.fromhex(roster_hex))
    delivery_rec = next(r for r in records if r["kind"] == "ShareDelivery")
    unmask_rec = next(r for r in records if r["kind"] == "UnmaskRequest")
    assert isinstance(roster, KeyRoster)
    victim, second, *rest = roster.decoded()
    replaced = dataclasses.replace(victim, channel_key=second.channel_key)
    bad_roster = KeyRoster.of(roster.federation_id, roster.epoch, (replaced, second, *rest))
    delivery = decode(bytes.fromhex(delivery_rec["hex"]))
    assert isinstance(delivery, ShareDelivery)
    sender = next(iter(delivery.sealed))
    flipped = bytearray(delivery.sealed[sender])
    flipped[-1] ^= 0x80
    bad_delivery = dataclasses.replace(delivery, sealed={**delivery.sealed, sender: bytes(flipped)})
    unmask = decode(bytes.fromhex(unmask_rec["hex"]))
    assert isinstance(unmask, UnmaskRequest)
    both = dataclasses.replace(unmask, dropped=(unmask.alive[0],))
    return [
        {"name": "replaced channel key in roster", "rule": "5.3: a holder's advertisement must verify under its identity key", "receiver_state": "advertised", "receiver": unmask_rec["receiver"],
         "hex": bad_roster.encode().hex(), "error": "ProtocolAborted"},
        {"name": "tampered sealed share", "rule": "5.4: every blob must open (2.6)", "receiver_state": "shared", "receiver": delivery_rec["receiver"],
         "hex": bad_delivery.encode().hex(), "error": "ProtocolAborted"},
        {"name": "survivor listed alive and dropped", "rule": "5.5 rule 1", "receiver_state": "masked", "receiver": unmask_rec["receiver"],
         "hex": both.encode().hex(), "error": "ProtocolAborted"},
        {"name": "truncated message", "rule": "4: the header length in the prefix exceeds the message", "receiver_state": "any", "receiver": unmask_rec["receiver"],
         "hex": unmask_rec["hex"][:-2], "error": "MessageError"},
        {"name": "non-canonical header (extra space)", "rule": "4: one encoding per message", "receiver_state": "any", "receiver": unmask_rec["receiver"],
         "hex": _with_space(bytes.fromhex(unmask_rec["hex"])).hex(), "error": "MessageError"},
        {"name": "superseded wire version 0x01", "rule": "4: version 0x02", "receiver_state": "any", "receiver": unmask_rec["receiver"],
         "hex": (b"GFSA\x01" + bytes.fromhex(unmask_rec["hex"])[5:]).hex(), "error": "MessageError"},
    ]


def _with_space(blob: bytes) -> bytes:
    size = int.from_bytes(blob[5:9], "big")
    header = blob[9:9 + size].replace(b":", b": ", 1)
    return blob[:5] + len(header).to_bytes(4, "big") + header + blob[9 + size:]


def build_vectors() -> dict[str, Any]:
    complete = _masking_case("complete graph, 4 nodes, 32-bit ring", n=4, length=6,
                             params=MaskingParameters(ring_bits=32, clip=2.0, rounds_per_epoch=1), seed=1)
    dropout = _masking_case("complete graph, 5 nodes, node-2 drops before its masked input", n=5, length=6,
                            params=MaskingParameters(ring_bits=64, clip=2.0, rounds_per_epoch=1), seed=2,
                            dropouts={"node-2": "masked_input"})
    plus = _masking_case("SecAgg+ degree 2, 6 nodes, 64-bit ring", n=6, length=5,
                         params=MaskingParameters(ring_bits=64, clip=2.0, degree=2, rounds_per_epoch=1), seed=3)
    weighted = _masking_case("weighted, complete graph, 4 nodes, 2 rounds of one epoch (round 2: steady state)", n=4,
                             length=4, params=MaskingParameters(ring_bits=64, clip=4.0, rounds_per_epoch=2), seed=4,
                             weights={"node-0": 0.5, "node-1": 1.25, "node-2": 2.0, "node-3": 3.5}, rounds=2)
    small = _masking_case("64-bit ring, f = 59: small inputs (float64 rounding of clip(x) 2^f + U matters) and clipped "
                          "first coordinates", n=5, length=12, params=MaskingParameters(ring_bits=64, clip=2.0,
                                                                                        rounds_per_epoch=1),
                          seed=7, scale=0.02, outlier=3.0)
    provisioned = _masking_case("6 provisioned, node-5 never advertises: 5 epoch members, threshold 4 from the 6", n=6,
                                length=4, params=MaskingParameters(ring_bits=64, clip=2.0, rounds_per_epoch=1), seed=5,
                                dropouts={"node-5": "advertise_keys"})
    plus_dropout = _masking_case("SecAgg+ degree 4, 8 nodes, node-3 drops before its masked input", n=8, length=4,
                                 params=MaskingParameters(ring_bits=64, clip=2.0, degree=4, rounds_per_epoch=1), seed=6,
                                 dropouts={"node-3": "masked_input"})
    return {"protocol": "geofed-secagg-v1", "wire_version": 1,
            "note": "generated by `python -m geofed_secure.secagg.vectors`; do not edit by hand",
            "valid": [complete, dropout, plus, weighted, provisioned, plus_dropout, small],
            "invalid": [{"from_case": 0, **c} for c in _invalid_cases(complete)]}
