"""Interoperability: a secagg-v1 written from SPEC.md alone re-creates the published vectors byte for byte.

The implementation under test is `secagg_v1_from_spec` (next to this file); nothing from geofed_secure is used.
Section numbers refer to protocols/secagg-v1/SPEC.md; the vector format is its section 10.
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from pathlib import Path

import pytest
import secagg_v1_from_spec as spec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PROTOCOL_DIR = Path(__file__).parents[2] / "protocols" / "secagg-v1"
VECTORS = json.loads((PROTOCOL_DIR / "vectors.json").read_text())
VALID = VECTORS["valid"]
INVALID = VECTORS["invalid"]
ERRORS = {"MessageError": spec.MessageError, "ProtocolAborted": spec.ProtocolAborted}
NODE_KINDS = ("KeyAdvertisement", "GraphSeedReveal", "ShareBundle", "MaskedInput", "ConsistencySignature",
              "UnmaskResponse")
EPOCH_KINDS = ("KeyAdvertisement", "GraphSeedReveal", "ShareBundle")  # the rest are per round


def case_ids(cases):
    return [c["name"] for c in cases]


def every_result(case) -> list[dict]:
    """Round 1's result, then the steady-state rounds of the same epoch (section 10)."""
    return [case["result"], *case["later_results"]]


RESULTS = [(case, result) for case in VALID for result in every_result(case)]


def threshold_of(case) -> int:
    p = case["parameters"]
    return p["threshold"] or spec.default_threshold(len(case["inputs"]), p["degree"], p["colluders"])


def epoch_of(rnd: int, rounds_per_epoch: int) -> int:
    """The epoch serving round `rnd` when no round aborts: a new one every K rounds from round 1 (section 7)."""
    return 1 + (rnd - 1) // rounds_per_epoch * rounds_per_epoch


def build_nodes(case) -> dict[str, spec.Node]:
    names = sorted(case["inputs"])
    ids, rngs, _ = spec.simulation_randomness(case["seed"], names)
    identity_keys = {v: Ed25519PrivateKey.from_private_bytes(ids[v]).public_key().public_bytes_raw() for v in names}
    p = case["parameters"]
    return {v: spec.Node(v, federation=case["federation_id"], identity_seed=ids[v], identity_keys=identity_keys,
                         anchor_digest=case["anchor_digest"], ring_bits=p["ring_bits"], clip=p["clip"],
                         threshold=p["threshold"], degree=p["degree"], rounds_per_epoch=p["rounds_per_epoch"],
                         colluders=p["colluders"], rng=rngs[v], inputs=case["inputs"][v]) for v in names}


def replay_nodes(case):
    """Feed every node the server messages it receives in the transcript; collect what it answers."""
    nodes = build_nodes(case)
    sent = {v: [] for v in nodes}
    for msg in case["transcript"]:
        if msg["sender"] == "server":
            sent[msg["receiver"]].append(nodes[msg["receiver"]].handle(bytes.fromhex(msg["hex"])).hex())
    return nodes, sent


class ServerInbox:
    """What the server has received so far: the epoch's node messages, and each round's."""

    def __init__(self):
        self.epoch = {kind: [] for kind in EPOCH_KINDS}
        self.rounds: dict[int, dict[str, list]] = {}
        self.words: dict[int, dict[str, list[int]]] = {}

    def receive(self, entry) -> None:
        _, header, body = spec.decode_message(bytes.fromhex(entry["hex"]))
        if entry["kind"] in EPOCH_KINDS:
            self.epoch[entry["kind"]].append(header)
            return
        self.round(entry["round"])[entry["kind"]].append(header)
        if entry["kind"] == "MaskedInput":
            self.words.setdefault(entry["round"], {})[header["node_id"]] = spec.body_words(
                body, header["words"]["ring_bits"])

    def round(self, rnd: int) -> dict[str, list]:
        return self.rounds.setdefault(rnd, {kind: [] for kind in NODE_KINDS if kind not in EPOCH_KINDS})


def inbox_of(case) -> ServerInbox:
    inbox = ServerInbox()
    for m in case["transcript"]:
        if m["receiver"] == "server":
            inbox.receive(m)
    return inbox


def server_graph(case):
    """What the server knows of the epoch: roster adverts, roster digest, graph seed, holders."""
    roster_wire = next(bytes.fromhex(m["hex"]) for m in case["transcript"] if m["kind"] == "KeyRoster")
    adverts = {a["node_id"]: a for a in spec.decode_roster(roster_wire)[1]}
    digest = spec.H("roster", roster_wire)
    reveals = inbox_of(case).epoch["GraphSeedReveal"]
    seed = (spec.graph_seed(case["federation_id"], 1, digest, {r["node_id"]: bytes.fromhex(r["nonce"]) for r in reveals})
            if reveals else None)
    return adverts, digest, seed, spec.graph_holders(sorted(adverts), case["parameters"]["degree"], seed)


def as_hex(obj):
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, dict):
        return {k: as_hex(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [as_hex(v) for v in obj]
    return obj


# ---------------------------------------------------------------- 0. the vector format (section 10)

@pytest.mark.parametrize("case", VALID, ids=case_ids(VALID))
def test_transcript_entries_follow_section_10(case):
    # Prepare
    degree = case["parameters"]["degree"]
    rounds = [r["round"] for r in every_result(case)]
    # Execute / Assert
    assert rounds == list(range(1, len(rounds) + 1))
    assert sorted({m["round"] for m in case["transcript"]}) == rounds
    assert len(case["later_results"]) == case["parameters"]["rounds_per_epoch"] - 1  # the epoch's other rounds
    for m in case["transcript"]:
        kind, header, _ = spec.decode_message(bytes.fromhex(m["hex"]))
        assert kind == m["kind"]
        assert "server" in (m["sender"], m["receiver"]) and m["sender"] != m["receiver"]
        node = m["receiver"] if m["sender"] == "server" else m["sender"]
        assert node in case["inputs"]
        assert (kind in NODE_KINDS) == (m["receiver"] == "server"), m
        assert header.get("round", m["round"]) == m["round"]
        assert header.get("node_id", node) == node and header.get("receiver", node) == node
        assert m["stage"] == spec.message_stage(kind, header, degree), m


# ---------------------------------------------------------------- 1. randomness (2.9)

def derive_draws(rng, K: int, t: int) -> dict:
    draws = {"channel_private_key": rng.token(32), "mask_private_keys": [], "self_mask_seeds": []}
    for _ in range(K):
        draws["mask_private_keys"].append(rng.token(32))
        draws["self_mask_seeds"].append(rng.token(32))
    draws["graph_nonce"] = rng.token(32)
    draws["shamir_coefficient_bytes"] = []
    for _ in range(K):
        entry = {}
        for name in ("mask_key", "self_mask_seed"):
            log = []
            for _ in range(t - 1):
                spec.shamir_coefficient(rng, log)
            entry[name] = log
        draws["shamir_coefficient_bytes"].append(entry)
    draws["rounding_seed"] = rng.token(32)  # 2.9 item 3: one 32-byte rounding seed per masked input
    return draws


@pytest.mark.parametrize("case", VALID, ids=case_ids(VALID))
def test_randomness_rederived_from_seed(case):
    # Prepare
    names = sorted(case["inputs"])
    p, inter = case["parameters"], case["intermediates"]
    # Execute
    ids, rngs, _ = spec.simulation_randomness(case["seed"], names)
    derived = {v: as_hex(derive_draws(rngs[v], p["rounds_per_epoch"], threshold_of(case))) for v in names}
    identity = {v: Ed25519PrivateKey.from_private_bytes(ids[v]).public_key().public_bytes_raw().hex() for v in names}
    # Assert
    for v in names:
        assert derived[v] == inter["nodes"][v]["draws"], v
        assert identity[v] == inter["nodes"][v]["identity_public_key"], v


@pytest.mark.parametrize("case", VALID, ids=case_ids(VALID))
def test_parameters_and_graph(case):
    # Prepare
    p, inter = case["parameters"], case["intermediates"]
    n = len(case["inputs"])
    # Execute
    adverts, digest, seed, holders = server_graph(case)
    members = sorted(adverts)
    got = {"provisioned_nodes": n, "epoch_members": members, "threshold": threshold_of(case),
           "view_quorum": spec.view_quorum(spec.holders_per_owner(p["degree"], len(members)), p["colluders"]),
           "holders_per_owner": spec.holders_per_owner(p["degree"], len(members)),
           "fractional_bits": spec.fractional_bits(len(members), p["clip"], p["ring_bits"]),
           "roster_digest": digest.hex(), "graph_seed": seed.hex() if seed else None,
           "ring_order": spec.ring_order(seed, members) if seed else None, "holders": holders}
    # Assert
    assert got == {k: inter[k] for k in got}


# ---------------------------------------------------------------- 2. node messages and their intermediates

@pytest.mark.parametrize("case", VALID, ids=case_ids(VALID))
def test_node_messages_byte_for_byte(case):
    """Every round's node messages; a node that drops answers its dropout stage's message, but the answer is not sent
    (section 10), and receives nothing after it."""
    # Prepare
    expected = {v: [m["hex"] for m in case["transcript"] if m["sender"] == v] for v in case["inputs"]}
    # Execute
    _, sent = replay_nodes(case)
    # Assert
    for v, msgs in expected.items():
        unsent = 1 if v in case["dropouts"] else 0
        assert sent[v][:len(msgs)] == msgs, v
        assert len(sent[v]) == len(msgs) + unsent, v
    for v, stage in case["dropouts"].items():
        last = [m for m in case["transcript"] if m["receiver"] == v][-1]
        assert last["round"] == 1 and last["stage"] == stage, v


@pytest.mark.parametrize("case", VALID, ids=case_ids(VALID))
def test_node_intermediates(case):
    # Prepare
    published = case["intermediates"]["nodes"]
    # Execute
    nodes, _ = replay_nodes(case)
    # Assert
    for v, node in nodes.items():
        pub = published[v]
        drawn = as_hex({**node.draws, **({"rounding_seed": node.rounds[1]["rounding_seed"]}
                                         if 1 in node.rounds else {})})
        assert drawn == {k: pub["draws"][k] for k in drawn}, v  # what it drew is what the vectors list
        if "encoded_input" not in pub:  # never joined the epoch: only its draws and identity are published
            assert 1 not in node.rounds and set(pub) == {"draws", "identity_public_key"}, v
            continue
        r1, adv = as_hex(node.rounds[1]), node.my_advert
        got = {"channel_public_key": adv["channel_key"], "graph_commitment": adv["graph_commitment"],
               "self_mask_commitment_round1": adv["commitments"][0], "self_mask_key_round1": r1["self_mask_key"],
               "self_mask_prefix": r1["self_mask_prefix"], "rounding_key": r1["rounding_key"],
               "rounding_uniforms": r1["rounding_uniforms"],
               "encoded_input": r1["encoded_input"], "clipped_coordinates": r1["clipped_coordinates"],
               "pairwise": r1["pairwise"],
               "share_channels": {h: {**as_hex({**c, "associated_data": b""}),
                                      "associated_data": c["associated_data"].decode()}
                                  for h, c in node.share_channels.items()},
               "shares_held_round1": {o: {"mask_key": s[:66].hex(), "self_mask_seed": s[66:132].hex()}
                                      for o, s in node.held.items()},
               "identity_public_key": node.identity.public_key().public_bytes_raw().hex()}
        assert set(got) | {"draws"} == set(pub), v  # the draws: above, and in full in test_randomness_...
        for key, value in got.items():
            assert value == pub[key], (v, key)


# ---------------------------------------------------------------- 3. server messages, every round

@pytest.mark.parametrize("case", VALID, ids=case_ids(VALID))
def test_server_messages_byte_for_byte(case):
    """Each server message rebuilt from what the server had received before it, in every round of the transcript."""
    # Prepare
    fed, K = case["federation_id"], case["parameters"]["rounds_per_epoch"]
    sparse = spec.is_sparse(case["parameters"]["degree"], len(case["intermediates"]["epoch_members"]))
    inbox, checked = ServerInbox(), 0
    # Execute / Assert, message by message
    for m in case["transcript"]:
        if m["receiver"] == "server":
            inbox.receive(m)
            continue
        rnd, kind, got = m["round"], m["kind"], inbox.epoch
        epoch, now = epoch_of(rnd, K), inbox.round(rnd)
        alive, dropped = spec.server_view(got["ShareBundle"], now["MaskedInput"])
        check_path = bool(dropped) or sparse
        if kind == "RoundStart":
            expected = spec.server_round_start(fed, rnd, epoch, case["anchor_digest"], len(case["inputs"][m["receiver"]]))
        elif kind == "KeyRoster":
            expected = spec.server_roster(fed, epoch, got["KeyAdvertisement"])
        elif kind == "GraphSeeds":
            expected = spec.server_graph_seeds(fed, epoch, got["GraphSeedReveal"])
        elif kind == "ShareDelivery":
            expected = spec.server_delivery(fed, epoch, m["receiver"], got["ShareBundle"])
        elif kind == "UnmaskRequest" and check_path:
            scope = spec.signature_scope(case["intermediates"]["holders"], m["receiver"]) if sparse else None
            expected = spec.server_unmask_request(fed, rnd, alive, dropped, now["ConsistencySignature"], scope)
        else:  # what follows the inputs: ConsistencyRequest, or the fast path's UnmaskRequest
            expected = spec.server_after_inputs(fed, rnd, alive, dropped, sparse)
        assert expected.hex() == m["hex"], (rnd, kind, m["receiver"])
        checked += 1
    assert checked == sum(m["sender"] == "server" for m in case["transcript"])


# ---------------------------------------------------------------- 4. every published result (5.6, section 3)

def float64_sum_of_clipped(case, contributors) -> list[float]:
    """`exact_sum_of_clipped_inputs`: the binary64 sum of the clipped inputs, left to right in contributor order."""
    clip, d = case["parameters"]["clip"], len(case["inputs"][contributors[0]])
    total = [0.0] * d
    for u in contributors:
        total = [a + spec.clip_value(x, clip) for a, x in zip(total, case["inputs"][u])]
    return total


@pytest.mark.parametrize("case,published", RESULTS, ids=[f"{c['name']} / round {r['round']}" for c, r in RESULTS])
def test_server_reproduces_published_result(case, published):
    # Prepare
    p, rnd = case["parameters"], published["round"]
    epoch = epoch_of(rnd, p["rounds_per_epoch"])
    adverts, _, _, _ = server_graph(case)
    inbox = inbox_of(case)
    now = inbox.round(rnd)
    alive, dropped = spec.server_view(inbox.epoch["ShareBundle"], now["MaskedInput"])
    # Execute
    aggregate = spec.server_reconstruct(
        fed=case["federation_id"], rnd=rnd, epoch=epoch, adverts=adverts, peers=spec.server_peers(inbox.epoch["ShareBundle"]),
        t=threshold_of(case), z=p["colluders"], m=spec.holders_per_owner(p["degree"], len(adverts)), clip=p["clip"], bits=p["ring_bits"], masked=inbox.words[rnd],
        alive=alive, dropped=dropped, responses=now["UnmaskResponse"])
    result = spec.server_result(rnd=rnd, aggregate=aggregate, alive=alive, members=len(adverts), clip=p["clip"],
                                bits=p["ring_bits"], weighted="weights" in case)
    exact = float64_sum_of_clipped(case, alive)
    # Assert: every published field, exactly (the aggregate to the last bit of its float64)
    assert set(published) == set(result) | {"exact_sum_of_clipped_inputs"}
    assert result == {k: published[k] for k in result}
    assert exact == published["exact_sum_of_clipped_inputs"]
    # "max_abs_error" is the bound of section 3, c 2^-f + c clip 2^-52; the decoded sum lies within it
    assert max(abs(a - b) for a, b in zip(aggregate, exact)) <= result["max_abs_error"]


def test_steady_state_round_against_published_transcript():
    """Round 2 of the K = 2 case (5.4, 5.5, section 7): RoundStart of the same epoch answered directly with the
    masked input, then the unchecked fast path: two round trips; it uses round key i = 1 and the peers of the set-up,
    and its rounding seed follows round 1's in the node's stream (its key bound to round 2)."""
    # Prepare
    case = next(c for c in VALID if c["later_results"])
    names, K, d = sorted(case["inputs"]), case["parameters"]["rounds_per_epoch"], len(case["inputs"]["node-0"])
    round2 = [m for m in case["transcript"] if m["round"] == 2]
    _, rngs, _ = spec.simulation_randomness(case["seed"], names)
    for v in names:  # the set-up's draws and round 1's rounding seed (2.9 items 1-3) come first
        derive_draws(rngs[v], K, threshold_of(case))
    expected_seeds = {v: rngs[v].token(32) for v in names}
    # Execute
    nodes, _ = replay_nodes(case)
    replies = {v: [spec.decode_message(bytes.fromhex(m["hex"]))[1] for m in round2 if m["sender"] == v]
               for v in names}
    # Assert
    for v in names:  # two round trips per node, nothing else
        assert [(m["sender"], m["kind"]) for m in round2 if v in (m["sender"], m["receiver"])] == [
            ("server", "RoundStart"), (v, "MaskedInput"), ("server", "UnmaskRequest"), (v, "UnmaskResponse")], v
    for v, node in nodes.items():
        assert node.state == "ready" and node.epoch == 1
        assert node.rounds[2]["rounding_seed"] == expected_seeds[v]
        assert node.rounds[2]["rounding_seed"] != node.rounds[1]["rounding_seed"]
        assert node.rounds[2]["rounding_key"] == spec.kdf(expected_seeds[v], "rounding", case["federation_id"], 2, v)
        assert node.rounds[2]["rounding_uniforms"] == spec.rounding_uniforms(node.rounds[2]["rounding_key"], d)
        assert node.rounds[2]["self_mask_key"] != node.rounds[1]["self_mask_key"]  # round key i = 1
        assert replies[v][0]["words"] == {"length": d, "ring_bits": case["parameters"]["ring_bits"]}
        assert sorted(node.rounds[2]["pairwise"]) == node.peers
        response = replies[v][-1]
        assert response["mask_key_shares"] == {}
        assert response["self_mask_shares"] == {o: s[2 * 66 + 66:4 * 66].hex() for o, s in node.held.items()}


# ---------------------------------------------------------------- 5. fixed point (section 3)

def test_binary64_rounding_is_pinned_by_the_f59_case():
    """Section 3 / 10: encoded with binary64 sums; 16 of the 60 coordinates would encode differently with exact
    rational arithmetic; one clipped coordinate per node. The uniforms are those of the published rounding seed:
    AES-256-CTR words under KDF(seed, "rounding", federation, 1, u)."""
    # Prepare
    case = next(c for c in VALID if c["name"].startswith("64-bit ring, f = 59"))
    p, f = case["parameters"], 59
    differ = total = 0
    # Execute / Assert
    for v, x in case["inputs"].items():
        pub = case["intermediates"]["nodes"][v]
        key = spec.kdf(bytes.fromhex(pub["draws"]["rounding_seed"]), "rounding", case["federation_id"], 1, v)
        assert key.hex() == pub["rounding_key"], v
        us = spec.rounding_uniforms(key, len(x))
        assert us == pub["rounding_uniforms"], v
        binary64 = [spec.encode(xj, p["clip"], f, u, p["ring_bits"]) for xj, u in zip(x, us)]
        exact = [math.floor(Fraction(spec.clip_value(xj, p["clip"])) * 2**f + Fraction(u)) % 2 ** p["ring_bits"]
                 for xj, u in zip(x, us)]
        assert binary64 == pub["encoded_input"], v
        assert pub["clipped_coordinates"] == 1 == sum(abs(xj) > p["clip"] for xj in x), v
        differ += sum(a != b for a, b in zip(binary64, exact))
        total += len(x)
    assert (differ, total) == (16, 60)


@pytest.mark.parametrize("bits,clip,members,f,bound", [(32, 1.0, 100, 24, None), (32, 8.0, 10, 24, 6.0e-7),
                                                       (64, 1e4, 10, 46, 2.2e-11)])
def test_section_3_examples(bits, clip, members, f, bound):
    # Execute
    got_f = spec.fractional_bits(members, clip, bits)
    # Assert
    assert got_f == f
    if bound is not None:
        assert f"{spec.error_bound(members, got_f, clip):.1e}" == f"{bound:.1e}"


def test_fixed_point_refuses_parameters_where_f_0_does_not_fit():
    with pytest.raises(spec.ConfigError):
        spec.fractional_bits(2**20, 2.0**20, 32)


def test_weighted_inputs_and_weight_refusal():
    """Section 3: the (w x, w) values are binary64 products, weight last; a weight above clip is refused."""
    # Prepare
    case = next(c for c in VALID if "weights" in c)
    clip = case["parameters"]["clip"]
    # Execute / Assert
    for v, w in case["weights"].items():
        assert spec.weighted_input(case["unweighted_inputs"][v], w, clip) == case["inputs"][v], v
    assert spec.weighted_input([1.0], clip, clip) == [clip, clip]
    with pytest.raises(spec.DataError):
        spec.weighted_input([1.0], math.nextafter(clip, math.inf), clip)
    for result in every_result(case):
        weights = 0.0
        for u in result["contributors"]:
            weights += case["weights"][u]
        assert result["total_weight"] == weights == result["aggregate"][-1]


# ---------------------------------------------------------------- 6. examples and provisioning (sections 1, 4)

def test_section_4_example_round_start():
    # Prepare
    first = VALID[0]["transcript"][0]
    # Execute
    wire = spec.server_round_start(VALID[0]["federation_id"], 1, 1, VALID[0]["anchor_digest"],
                                   len(VALID[0]["inputs"]["node-0"]))
    # Assert
    assert first["kind"] == "RoundStart" and wire.hex() == first["hex"]
    assert wire[:9] == b"GFSA\x02\x00\x00\x00\xa8" and wire[9:].startswith(b'{"anchor_digest":"b31a')
    assert wire.endswith(b'72be","epoch":1,"federation_id":"vectors","round":1,"type":"RoundStart","vector_length":6}')


@pytest.mark.parametrize("threshold,degree,z", [(None, None, -1), (3, None, 1), (None, 2, 1), (None, 2, 2)])
def test_provisioning_refusals(threshold, degree, z):
    with pytest.raises(spec.ConfigError):
        spec.check_provisioning(threshold, degree, z)


def test_wrong_shaped_input_is_a_data_error_and_changes_nothing():
    # Prepare
    case = VALID[0]
    node = build_nodes({**case, "inputs": {**case["inputs"], "node-0": case["inputs"]["node-0"][:-1]}})["node-0"]
    _, rngs, _ = spec.simulation_randomness(case["seed"], sorted(case["inputs"]))
    # Execute / Assert
    with pytest.raises(spec.DataError):
        node.handle(bytes.fromhex(case["transcript"][0]["hex"]))
    assert (node.state, node.last_round, node.draws) == ("ready", 0, {})
    assert node.rng.token(32) == rngs["node-0"].token(32)  # nothing drawn


# ---------------------------------------------------------------- 7. refusals (sections 4, 5, 5.7)

def node_in_state(case, node_id: str, state: str, rnd: int = 1):
    """Node `node_id` driven through `case` until, in round `rnd`, it reaches `state`; also the entry it gets next."""
    node = build_nodes(case)[node_id]
    for m in case["transcript"]:
        if m["receiver"] == node_id:
            if node.state == state and m["round"] == rnd:
                return node, m
            node.handle(bytes.fromhex(m["hex"]))
    raise AssertionError(f"{node_id} never reaches {state} in round {rnd}")


def states_passed(case, node_id: str) -> list[tuple[int, str]]:
    """The (round, state) pairs in which `node_id` receives a message of `case`."""
    node, seen = build_nodes(case)[node_id], []
    for m in case["transcript"]:
        if m["receiver"] == node_id:
            if (m["round"], node.state) not in seen:
                seen.append((m["round"], node.state))
            node.handle(bytes.fromhex(m["hex"]))
    return seen


SECTIONS = set(re.findall(r"^(?:## )?(\d+(?:\.\d+)?)[. ]", (PROTOCOL_DIR / "SPEC.md").read_text(), re.MULTILINE))


@pytest.mark.parametrize("bad", INVALID, ids=case_ids(INVALID))
def test_invalid_message_refused(bad):
    """Cut from the transcript of case `from_case`: refused with the error class 5.7 names, in the stated state (for
    `any`, in every state the receiver passes through). ProtocolAborted names the receiver and the stage of the
    message it replaced, and ends the session; MessageError comes before any rule, so it changes nothing."""
    # Prepare
    case, wire = VALID[bad["from_case"]], bytes.fromhex(bad["hex"])
    error = ERRORS[bad["error"]]
    where = states_passed(case, bad["receiver"]) if bad["receiver_state"] == "any" else [(1, bad["receiver_state"])]
    assert re.match(r"\d+(\.\d+)?", bad["rule"]).group(0) in SECTIONS
    assert (bad["error"] == "MessageError") == (bad["receiver_state"] == "any")
    for rnd, state in where:
        node, genuine = node_in_state(case, bad["receiver"], state, rnd)
        control, _ = node_in_state(case, bad["receiver"], state, rnd)
        before = (node.state, node.last_round)
        # Execute / Assert: the genuine message of that state is accepted, the invalid one refused
        assert bad["hex"] != genuine["hex"]
        control.handle(bytes.fromhex(genuine["hex"]))
        with pytest.raises(error) as refused:
            node.handle(wire)
        if error is spec.ProtocolAborted:
            assert (refused.value.party, refused.value.stage) == (bad["receiver"], genuine["stage"])
            assert node.state == "aborted"
            with pytest.raises(spec.ProtocolAborted):  # it answers nothing more
                node.handle(bytes.fromhex(genuine["hex"]))
        else:
            assert (node.state, node.last_round) == before


def _reencoded(kind: str, fields_fn):
    """The first `kind` message of case 0 with its fields changed, re-encoded canonically: only a field rule breaks."""
    entry = next(m for m in VALID[0]["transcript"] if m["kind"] == kind)
    _, fields, body = spec.decode_message(bytes.fromhex(entry["hex"]))
    return spec.encode_message(kind, fields_fn(fields), body)


UNDECODABLE = [
    ("id with a trailing newline", "UnmaskRequest", lambda f: {**f, "alive": f["alive"][:-1] + ["node-3\n"]}),
    ("id not starting with a letter or digit", "MaskedInput", lambda f: {**f, "node_id": "-node-0"}),
    ("id list not sorted", "UnmaskRequest", lambda f: {**f, "alive": f["alive"][::-1]}),
    ("id list not unique", "UnmaskRequest", lambda f: {**f, "alive": f["alive"] + f["alive"][-1:]}),
    ("map key that is not an id", "ShareDelivery", lambda f: {**f, "sealed": {"node 1": "00" * 16}}),
    ("uppercase hex", "RoundStart", lambda f: {**f, "anchor_digest": f["anchor_digest"].upper()}),
    ("32-byte key of 31 bytes", "KeyAdvertisement", lambda f: {**f, "channel_key": f["channel_key"][2:]}),
    ("share of 65 bytes", "UnmaskResponse", lambda f: {**f, "self_mask_shares": {
        o: v[2:] for o, v in f["self_mask_shares"].items()}}),
    ("integer out of [0, 2^31)", "RoundStart", lambda f: {**f, "round": 2**31}),
    ("missing field", "RoundStart", lambda f: _drop_key(f, "vector_length")),
    ("extra field", "RoundStart", lambda f: {**f, "note": "x"}),
]


@pytest.mark.parametrize("kind,fields_fn", [u[1:] for u in UNDECODABLE], ids=[u[0] for u in UNDECODABLE])
def test_bytes_that_do_not_decode_raise_message_error(kind, fields_fn):
    # Prepare
    wire = _reencoded(kind, fields_fn)
    # Execute / Assert
    with pytest.raises(spec.MessageError):
        spec.decode_message(wire)


def _mutated(fields_fn):
    def mutate(wire: bytes) -> bytes:
        mtype, fields, body = spec.decode_message(wire)
        return spec.encode_message(mtype, fields_fn(fields), body)
    return mutate


def _roster_mutated(adverts_fn):
    """The roster rebuilt as the server of section 5.1 would, from its advertisements changed by ``adverts_fn``."""
    def mutate(wire: bytes) -> bytes:
        fields, adverts = spec.decode_roster(wire)
        return spec.server_roster(fields["federation_id"], fields["epoch"], adverts_fn(adverts))
    return mutate


def _roster_body_mutated(blobs_fn):
    """The roster with the same header and its advertisement messages (equal sizes) changed by ``blobs_fn``."""
    def mutate(wire: bytes) -> bytes:
        _, fields, body = spec.decode_message(wire)
        blobs = blobs_fn(spec.roster_advertisements(fields, body))
        assert [len(b) for b in blobs] == fields["advertisement_bytes"]
        return spec.encode_message("KeyRoster", fields, b"".join(blobs))
    return mutate


def _drop_key(mapping: dict, key: str) -> dict:
    return {k: v for k, v in mapping.items() if k != key}


def _round1_unmask_request(case_index: int, receiver: str):
    """The round-1 UnmaskRequest of `receiver`, replayed in place of a later round's message."""
    entry = next(m for m in VALID[case_index]["transcript"]
                 if m["round"] == 1 and m["kind"] == "UnmaskRequest" and m["receiver"] == receiver)
    return lambda wire: bytes.fromhex(entry["hex"])


STEADY = next(i for i, c in enumerate(VALID) if c["later_results"])

# (name, valid case, receiver, round, receiver state, mutation of the genuine message it gets next); section 5 rule
MUTATIONS = [
    ("anchor digest changed (5.1)", 0, "node-0", 1, "ready",
     _mutated(lambda f: {**f, "anchor_digest": "00" * 32})),
    ("roster with a non-provisioned node (5.1)", 0, "node-0", 1, "advertised",
     _roster_mutated(lambda a: a + [{**a[1], "node_id": "node-9"}])),
    ("roster with fewer than 3 members (5.1)", 0, "node-0", 1, "advertised",
     _roster_mutated(lambda a: a[:2])),
    ("roster with a replaced mask key of another node (5.3)", 0, "node-0", 1, "advertised",
     _roster_mutated(lambda a: [a[0], {**a[1], "mask_keys": [a[2]["mask_keys"][0]]}] + a[2:])),
    ("roster listing another graph commitment than a holder's advertisement (5.1)", 0, "node-0", 1, "advertised",
     _mutated(lambda f: {**f, "graph_commitments": {**f["graph_commitments"], "node-1": "22" * 32}})),
    ("roster entry that is another member's advertisement (5.1)", 0, "node-0", 1, "advertised",
     _roster_body_mutated(lambda ads: [ads[0], ads[2], ads[1], *ads[3:]])),
    ("roster entry that does not decode (5.1)", 0, "node-0", 1, "advertised",
     _roster_body_mutated(lambda ads: [ads[0], b"GFSA" + bytes(len(ads[1]) - 4), *ads[2:]])),
    ("graph seeds with one nonce replaced (5.2)", 2, "node-0", 1, "revealed",
     _mutated(lambda f: {**f, "nonces": {**f["nonces"], "node-3": "11" * 32}})),
    ("graph seeds with one nonce left out (5.2)", 2, "node-0", 1, "revealed",
     _mutated(lambda f: {**f, "nonces": _drop_key(f["nonces"], "node-3")})),
    ("delivery with fewer than t - 1 blobs (5.4)", 0, "node-0", 1, "shared",
     _mutated(lambda f: {**f, "sealed": {"node-1": f["sealed"]["node-1"]}})),
    ("delivery for another receiver (5.4)", 0, "node-0", 1, "shared",
     _mutated(lambda f: {**f, "receiver": "node-1"})),
    ("view with only 2 survivors (5.5 rule 2)", 1, "node-0", 1, "masked",
     _mutated(lambda f: {**f, "alive": ["node-0", "node-1"], "dropped": ["node-2", "node-3", "node-4"]})),
    ("view omitting a peer (5.5 rule 3)", 1, "node-0", 1, "masked",
     _mutated(lambda f: {**f, "dropped": []})),
    ("unmask request missing a survivor's signature (5.5)", 1, "node-0", 1, "signed",
     _mutated(lambda f: {**f, "signatures": _drop_key(f["signatures"], "node-4")})),
    ("unmask request with a view other than the signed one (5.5)", 1, "node-0", 1, "signed",
     _mutated(lambda f: {**f, "alive": [v for v in f["alive"] if v != "node-4"], "dropped": ["node-2", "node-4"],
                         "signatures": _drop_key(f["signatures"], "node-4")})),
    ("unchecked fast path in a SecAgg+ round (5.5)", 2, "node-0", 1, "masked",
     lambda wire: spec.encode_message("UnmaskRequest", {**spec.decode_message(wire)[1], "signatures": {}})),
    ("unmask request for another round (replay, 5)", 0, "node-0", 1, "masked",
     _mutated(lambda f: {**f, "round": 2})),
    ("steady state: round 1's unmask request replayed in round 2 (replay_round, 5)", STEADY, "node-0", 2, "masked",
     _round1_unmask_request(STEADY, "node-0")),
    ("steady state: round start past the epoch's K rounds (5)", STEADY, "node-0", 2, "ready",
     _mutated(lambda f: {**f, "round": 3})),
    ("steady state: round start for an epoch the node does not hold (5)", STEADY, "node-0", 2, "ready",
     _mutated(lambda f: {**f, "round": 3, "epoch": 2})),
    ("steady state: round that does not increase (5.1)", STEADY, "node-0", 2, "ready",
     _mutated(lambda f: {**f, "round": 1})),
    ("steady state: fast path with a member listed dropped (5.5)", STEADY, "node-0", 2, "masked",
     _mutated(lambda f: {**f, "alive": f["alive"][:-1], "dropped": f["alive"][-1:]})),
]


@pytest.mark.parametrize("name,index,receiver,rnd,state,mutate", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_node_refuses_mutated_message(name, index, receiver, rnd, state, mutate):
    # Prepare
    node, genuine = node_in_state(VALID[index], receiver, state, rnd)
    bad = mutate(bytes.fromhex(genuine["hex"]))
    # Execute / Assert
    assert bad.hex() != genuine["hex"]
    with pytest.raises(spec.ProtocolAborted) as refused:
        node.handle(bad)
    assert node.state == "aborted" and refused.value.party == receiver


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_and_weights_are_data_errors(bad):
    # Prepare
    case = VALID[0]
    inputs = {**case["inputs"], "node-0": [bad, *case["inputs"]["node-0"][1:]]}
    # Execute / Assert (section 3)
    with pytest.raises(spec.DataError):
        build_nodes({**case, "inputs": inputs})
    with pytest.raises(spec.DataError):
        spec.weighted_input([0.5, 0.25], bad, clip=4.0)
    with pytest.raises(spec.DataError):
        spec.weighted_input([0.5, 0.25], -1.0, clip=4.0)
