"""ckks-v1: keys, exact sums within the stated bound, packing, dropouts, refusals, wire fuzzing, state table, vectors."""

from __future__ import annotations

import doctest
import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geofed_secure.errors import (
    AnchorDigestMismatch,
    ConfigError,
    DataError,
    LocalProtocolError,
    MessageError,
    ProtocolAborted,
    RemoteProtocolError,
)
from geofed_secure.secagg import ckks
from geofed_secure.secagg.ckks import (
    NODE_TRANSITIONS,
    SERVER_TRANSITIONS,
    CkksAggregate,
    CkksEncryptedInput,
    CkksNode,
    CkksRoundStart,
    CkksServer,
    build_vectors,
    chunk_bounds,
    ckks_error_bound,
    context_digest,
    decode_ckks_message,
    decrypt_chunks,
    expected_aggregate,
    provision_ckks_keys,
    refusal,
    run_ckks_aggregation,
    transition_table_markdown,
    vector_input,
)
from geofed_secure.secagg.ckks.tables import NodeEvent, NodeState, ServerEvent, ServerState
from geofed_secure.secagg.common import SERVER

PROTOCOL_DIR = Path(__file__).resolve().parents[3] / "protocols" / "ckks-v1"
FED = "fed"
ANCHORS = hashlib.sha256(b"test anchors").hexdigest()
IDS = ("a", "b", "c")


def fast(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def keys():
    return provision_ckks_keys()


@pytest.fixture(scope="module")
def other_keys():
    return provision_ckks_keys()


def make_node(keys, node_id="a", **kw):
    return CkksNode(node_id=node_id, federation_id=FED, secret_context=keys.secret_context, anchor_digest=ANCHORS, **kw)


def make_server(keys, cohort=IDS, **kw):
    return CkksServer(federation_id=FED, public_context=keys.public_context, cohort=cohort, **kw)


def start_for(keys, round_=1, cohort=IDS, length=3, **changes):
    fields = {"federation_id": FED, "round": round_, "anchor_digest": ANCHORS, "context_digest": keys.context_digest,
              "cohort": cohort, "length": length, **changes}
    return CkksRoundStart(**fields)


def full_round(keys, *, length=3, round_=1):
    """Three nodes upload ones; returns (nodes, server after finish, starts, aggregate)."""
    server = make_server(keys)
    nodes = {v: make_node(keys, v) for v in IDS}
    starts = server.start_round(round_, anchor_digest=ANCHORS, length=length)
    for v in IDS:
        server.receive(nodes[v].begin_round(starts[v], np.full(length, 1.5)))
    return nodes, server, starts, server.finish()


# -- pure functions -------------------------------------------------------------------------------------


def test_doctests():
    assert doctest.testmod(ckks, raise_on_error=True).failed == 0


def test_chunk_bounds_cover_vector_and_weight_slot():
    for length in (1, 4095, 4096, 4097, 12_000):
        bounds = chunk_bounds(length, 4096)
        assert bounds[0][0] == 0 and bounds[-1][1] == length + 1
        assert all(b - a <= 4096 for a, b in bounds) and all(x[1] == y[0] for x, y in itertools.pairwise(bounds))


# -- keys -----------------------------------------------------------------------------------------------


def test_server_context_cannot_decrypt(keys):
    _, _, _, aggregate = full_round(keys)
    plain = decrypt_chunks(keys.secret_context, aggregate.chunks, aggregate.length)
    assert np.allclose(plain, [4.5, 4.5, 4.5, 3.0], atol=1e-5)
    with pytest.raises(LocalProtocolError, match="no secret key"):
        decrypt_chunks(keys.public_context, aggregate.chunks, aggregate.length)
    with pytest.raises(LocalProtocolError, match="no secret key"):
        CkksNode(node_id="a", federation_id=FED, secret_context=keys.public_context, anchor_digest=ANCHORS)
    with pytest.raises(LocalProtocolError, match="secret key"):
        CkksServer(federation_id=FED, public_context=keys.secret_context, cohort=IDS)
    # not only our guard: the key is absent from the server's context, so TenSEAL itself cannot decrypt
    server_ctx = ts.context_from(keys.public_context)
    assert not server_ctx.has_secret_key() and server_ctx.is_public()
    with pytest.raises(ValueError, match="secret_key"):
        ts.ckks_vector_from(server_ctx, aggregate.chunks[0]).decrypt()
    assert len(keys.public_context) < len(keys.secret_context)


def test_context_digest_names_the_key_set(keys, other_keys):
    assert context_digest(keys.public_context) == keys.context_digest == hashlib.sha256(keys.public_context).hexdigest()
    assert make_node(keys).context_digest == make_server(keys).context_digest == keys.context_digest
    assert other_keys.context_digest != keys.context_digest  # fresh keys are random: the digest is not reproducible
    with pytest.raises(DataError):
        context_digest(b"not a context")


def test_bad_parameters_are_config_errors():
    with pytest.raises(ConfigError, match="poly_modulus_degree"):
        ckks.CkksParameters(poly_modulus_degree=1000)
    with pytest.raises(ConfigError, match="overflows"):
        ckks.CkksParameters(coeff_mod_bit_sizes=(40, 60))


# -- sums -----------------------------------------------------------------------------------------------


@fast(4)
@given(st.integers(3, 5), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_exact_sum_within_bound(keys, n, length, seed):
    rng = np.random.default_rng(seed)
    inputs = {f"n{i}": rng.uniform(-10, 10, size=length) for i in range(n)}
    result = run_ckks_aggregation(inputs, keys=keys, clip=10.0, seed=seed)
    exact = expected_aggregate(inputs, sorted(inputs), clip=10.0)
    assert result.max_abs_error == ckks_error_bound(n, clip=10.0)
    assert np.abs(result.aggregate - exact[:-1]).max() <= result.max_abs_error
    assert abs(result.total_weight - n) <= result.max_abs_error
    assert result.contributors == tuple(sorted(inputs)) and result.protocol == "ckks-v1"


def test_weights_and_clipping(keys):
    inputs = {"a": np.array([1.0, -2.0, 3.0]), "b": np.array([0.5, 0.5, 0.5]), "c": np.array([-4.0, 0.0, 1.0])}
    weights = {"a": 2.0, "b": 0.25, "c": 1.0}
    result = run_ckks_aggregation(inputs, weights=weights, keys=keys, clip=5.0)
    # a's weighted 6.0 is clipped to 5.0; nothing else is
    assert np.abs(result.aggregate - np.array([2.0 + 0.125 - 4.0, -4.0 + 0.125, 5.0 + 0.125 + 1.0])).max() <= result.max_abs_error
    assert abs(result.total_weight - 3.25) <= result.max_abs_error
    assert dict(result.clipped) == {"a": 1, "b": 0, "c": 0}
    assert result.max_abs_error == ckks_error_bound(3, clip=5.0, max_weight=2.0)


def test_large_values_stay_within_bound(keys):
    rng = np.random.default_rng(5)
    inputs = {v: rng.uniform(-1e6, 1e6, size=64) for v in IDS}
    weights = {"a": 1000.0, "b": 1.0, "c": 7.5}
    result = run_ckks_aggregation(inputs, weights=weights, keys=keys, clip=2.0**30)
    exact = expected_aggregate(inputs, IDS, clip=2.0**30, weights=weights)
    assert np.abs(result.aggregate - exact[:-1]).max() <= result.max_abs_error


def test_packing_across_chunks_without_tenseal_warning(keys, capfd):
    length = 5000  # 5001 values: two ciphertexts of 4096 and 905
    rng = np.random.default_rng(1)
    inputs = {v: rng.normal(size=length) for v in IDS}
    result = run_ckks_aggregation(inputs, keys=keys)
    uploads = [decode_ckks_message(r.data) for r in result.transcript if r.stage == "encrypted_input"]
    assert all(isinstance(u, CkksEncryptedInput) and len(u.chunks) == 2 for u in uploads)
    assert np.abs(result.aggregate - sum(inputs.values())).max() <= result.max_abs_error
    out, err = capfd.readouterr()
    assert "does not fit" not in out + err


def test_transcript_and_bytes(keys):
    inputs = {v: np.zeros(4) for v in ("a", "b", "c", "d")}
    result = run_ckks_aggregation(inputs, keys=keys, dropouts={"d": "unmask"}, seed=2)
    stages = [(r.stage, r.sender, r.receiver, r.kind) for r in result.transcript]
    assert stages[:4] == [("round_start", SERVER, v, "CkksRoundStart") for v in "abcd"]
    assert [s for s in stages if s[0] == "encrypted_input"] == [
        ("encrypted_input", v, SERVER, "CkksEncryptedInput") for v in ckks.arrival_order("abcd", 2)]
    assert [s[2] for s in stages if s[0] == "aggregate"] == ["a", "b", "c"]  # d dropped after uploading
    for party in ("a", "b", "c", "d", SERVER):
        assert result.bytes_sent[party] == sum(r.nbytes for r in result.transcript if r.sender == party)
    assert all(decode_ckks_message(r.data).encode() == r.data for r in result.transcript)


# -- dropouts and the floor -----------------------------------------------------------------------------


@pytest.mark.parametrize("stage, contributes", [("advertise_keys", False), ("share_keys", False), ("masked_input", False),
                                                ("consistency_check", True), ("unmask", True)])
def test_dropout_stage_mapping(keys, stage, contributes):
    inputs = {v: np.full(2, float(i + 1)) for i, v in enumerate("abcd")}
    result = run_ckks_aggregation(inputs, keys=keys, dropouts={"d": stage})
    assert ("d" in result.contributors) is contributes
    assert np.allclose(result.aggregate, 10.0 if contributes else 6.0, atol=result.max_abs_error)
    assert "d" not in [r.receiver for r in result.transcript if r.stage == "aggregate"]


def test_fewer_than_three_contributors_abort(keys):
    inputs = {v: np.ones(2) for v in "abcd"}
    with pytest.raises(ProtocolAborted, match="below the floor") as info:
        run_ckks_aggregation(inputs, keys=keys, dropouts={"a": "advertise_keys", "b": "masked_input"})
    assert info.value.party == SERVER
    with pytest.raises(ProtocolAborted, match="cohort of 2"):
        run_ckks_aggregation({"a": np.ones(2), "b": np.ones(2)}, keys=keys)
    with pytest.raises(ProtocolAborted, match="nobody is left"):
        run_ckks_aggregation({v: np.ones(2) for v in "abc"}, keys=keys, dropouts=dict.fromkeys("abc", "unmask"))
    with pytest.raises(ProtocolAborted, match="below the floor of 4"):
        run_ckks_aggregation(inputs, keys=keys, floor=4, dropouts={"a": "share_keys"})


def test_driver_input_errors(keys):
    with pytest.raises(DataError):
        run_ckks_aggregation({"a": np.ones(2), "b": np.ones(3), "c": np.ones(2)}, keys=keys)
    with pytest.raises(DataError):
        run_ckks_aggregation({v: np.ones(2) for v in IDS}, keys=keys, dropouts={"z": "unmask"})
    with pytest.raises(ConfigError):
        run_ckks_aggregation({v: np.ones(2) for v in IDS}, keys=keys, dropouts={"a": "lunch"})
    with pytest.raises(DataError, match="NaN"):
        run_ckks_aggregation({"a": np.array([np.nan, 1.0]), "b": np.ones(2), "c": np.ones(2)}, keys=keys)


# -- node refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, match", [
    ({"federation_id": "other"}, "federation"),
    ({"anchor_digest": "0" * 64}, "anchor digest mismatch"),
    ({"context_digest": "1" * 64}, "other CKKS keys"),
    ({"cohort": ("b", "c", "d")}, "not in the round's cohort"),
    ({"cohort": ("a", "b")}, "below the floor"),
])
def test_node_refuses_bad_round_start(keys, changes, match):
    node = make_node(keys)
    with pytest.raises(ProtocolAborted, match=match) as info:
        node.begin_round(start_for(keys, **changes), np.ones(3))
    assert node.state == "aborted" and info.value.party == "a" and info.value.stage == "round_start"
    if "anchor_digest" in changes:
        assert isinstance(info.value.__cause__, AnchorDigestMismatch)
    with pytest.raises(LocalProtocolError, match="aborted"):
        node.begin_round(start_for(keys, round_=2), np.ones(3))


def test_node_refuses_replayed_round(keys):
    nodes, _, starts, aggregate = full_round(keys, round_=5)
    nodes["a"].receive_aggregate(aggregate)
    with pytest.raises(ProtocolAborted, match="replayed"):
        nodes["a"].begin_round(starts["a"], np.ones(3))
    with pytest.raises(ProtocolAborted, match="replayed"):
        nodes["b"].begin_round(start_for(keys, round_=4), np.ones(3))


def test_node_data_errors_leave_session_usable(keys):
    node = make_node(keys)
    start = start_for(keys)
    for vector, weight in ((np.array([1.0, np.inf, 0.0]), None), (np.ones(4), None), (np.ones((3, 1)), None),
                           (np.array(["x", "y", "z"]), None), (np.ones(3), 0.0), (np.ones(3), float("nan")),
                           (np.ones(3), True), (np.ones(3), 2.0**31)):
        with pytest.raises(DataError):
            node.begin_round(start, vector, weight)
        assert node.state == "ready"
    upload = node.begin_round(start, np.array([1.0, 2.0, 30_000.0]), weight=1.0)
    assert node.state == "uploaded" and node.clipped == 1 and len(upload.chunks) == 1


@pytest.mark.parametrize("changes, match", [
    ({"federation_id": "other"}, "federation"),
    ({"round": 2}, "round 2"),
    ({"contributors": ("a", "b", "z")}, "not in the round's cohort"),
    ({"contributors": ("a", "b")}, "below the floor"),
    ({"length": 4}, "length"),
])
def test_node_refuses_bad_aggregate(keys, changes, match):
    nodes, _, _, aggregate = full_round(keys)
    fields = {"federation_id": aggregate.federation_id, "round": aggregate.round, "contributors": aggregate.contributors,
              "length": aggregate.length, "chunks": aggregate.chunks, **changes}
    with pytest.raises(ProtocolAborted, match=match):
        nodes["a"].receive_aggregate(CkksAggregate(**fields))
    assert nodes["a"].state == "aborted"


def test_node_refuses_aggregate_without_itself(keys):
    server = CkksServer(federation_id=FED, public_context=keys.public_context, cohort=("a", "b", "c", "d"))
    nodes = {v: make_node(keys, v) for v in "abcd"}
    starts = server.start_round(1, anchor_digest=ANCHORS, length=2)
    uploads = {v: nodes[v].begin_round(starts[v], np.ones(2)) for v in "abcd"}
    for v in "bcd":
        server.receive(uploads[v])
    with pytest.raises(ProtocolAborted, match="not listed as a contributor"):
        nodes["a"].receive_aggregate(server.finish())


def test_node_refuses_unloadable_aggregate(keys):
    nodes, _, _, aggregate = full_round(keys)
    broken = CkksAggregate(federation_id=FED, round=1, contributors=IDS, length=3, chunks=(b"\x00garbage",))
    with pytest.raises(RemoteProtocolError, match="does not load"):
        nodes["a"].receive_aggregate(broken)
    assert nodes["a"].state == "aborted"
    assert np.abs(nodes["b"].receive_aggregate(aggregate) - [4.5, 4.5, 4.5, 3.0]).max() <= ckks_error_bound(3, clip=2.0)


# -- server refusals -------------------------------------------------------------------------------------


def test_server_drops_bad_uploads_and_keeps_going(keys, other_keys):
    server = make_server(keys, cohort=("a", "b", "c", "d"))
    nodes = {v: make_node(keys, v) for v in "abcd"}
    starts = server.start_round(3, anchor_digest=ANCHORS, length=5000)
    good = {v: nodes[v].begin_round(starts[v], np.full(5000, 1.0)) for v in "abc"}
    server.receive(good["a"])
    stranger = CkksNode(node_id="d", federation_id=FED, secret_context=other_keys.secret_context, anchor_digest=ANCHORS)
    bad_key_start = start_for(other_keys, round_=3, cohort=("a", "b", "c", "d"), length=5000)
    under_other_keys = stranger.begin_round(bad_key_start, np.ones(5000))

    def edit(message, **changes):
        fields = {f: getattr(message, f) for f in ("federation_id", "round", "node_id", "context_digest", "length",
                                                    "chunks")}
        return CkksEncryptedInput(**{**fields, **changes})

    bad = [
        (edit(good["b"], federation_id="other"), "federation"),
        (edit(good["b"], round=2), "replayed or stale"),
        (edit(good["b"], node_id="zed"), "not in the cohort"),
        (good["a"], "duplicate"),
        (edit(under_other_keys), "other keys"),
        (edit(good["b"], length=4999), "length"),
        (edit(good["b"], chunks=good["b"].chunks[:1]), "1 ciphertexts"),
        (edit(good["b"], chunks=(good["b"].chunks[0], b"\x01junk")), "does not load"),
        (edit(good["b"], chunks=good["b"].chunks[::-1]), "holds 905 values"),
    ]
    for message, match in bad:
        with pytest.raises(RemoteProtocolError, match=match):
            server.receive(message)
        assert server.state == "collecting" and server.contributors == ("a",)
    with pytest.raises(RemoteProtocolError):
        server.receive(starts["a"])  # type: ignore[arg-type]
    server.receive(good["b"])
    server.receive(good["c"])
    aggregate = server.finish()
    assert aggregate.contributors == ("a", "b", "c")
    plain = nodes["a"].receive_aggregate(aggregate)
    assert np.abs(plain - 3.0).max() <= ckks_error_bound(3, clip=1.0)


def test_server_sum_leaves_uploads_untouched(keys):
    """TenSEAL's ``acc += x`` changes ``acc`` in place; the server must never alias an upload into its sum."""
    server = make_server(keys)
    nodes = {v: make_node(keys, v) for v in IDS}
    starts = server.start_round(1, anchor_digest=ANCHORS, length=2)
    uploads = [nodes[v].begin_round(starts[v], np.array([float(i), 1.0])) for i, v in enumerate(IDS)]
    before = [u.chunks for u in uploads]
    for u in uploads:
        server.receive(u)
    aggregate = server.finish()
    assert [u.chunks for u in uploads] == before
    assert np.allclose(decrypt_chunks(keys.secret_context, uploads[0].chunks, 2), [0.0, 1.0, 1.0], atol=1e-6)
    assert np.allclose(decrypt_chunks(keys.secret_context, aggregate.chunks, 2), [3.0, 3.0, 3.0], atol=1e-6)


def test_server_misuse(keys):
    with pytest.raises(ConfigError, match="below the floor"):
        make_server(keys, cohort=("a", "b"))
    with pytest.raises(ConfigError, match="floor"):
        make_server(keys, floor=0)
    server = make_server(keys)
    server.start_round(2, anchor_digest=ANCHORS, length=2)
    with pytest.raises(ProtocolAborted, match="0 contributors"):
        server.finish()
    assert server.state == "aborted"
    with pytest.raises(LocalProtocolError):
        server.start_round(3, anchor_digest=ANCHORS, length=2)
    server = make_server(keys)
    with pytest.raises(LocalProtocolError, match="does not follow"):
        server.start_round(0, anchor_digest=ANCHORS, length=2)
    assert server.state == "aborted"


# -- the state table --------------------------------------------------------------------------------------


def _node_in(keys, state):
    """A node in ``state`` plus, for each event, a message that is legal content-wise."""
    nodes, _, _, aggregate = full_round(keys)
    if state == "ready":
        node = make_node(keys)
    elif state == "uploaded":
        node = nodes["a"]
    else:
        node = make_node(keys)
        with pytest.raises(ProtocolAborted):
            node.receive_aggregate(aggregate)
    return node, {"CkksRoundStart": start_for(keys, round_=2), "CkksAggregate": aggregate}


def _server_in(keys, state):
    """A server in ``state`` (cohort a-d; a, b, c uploaded in round 1) and a callable per event."""
    cohort = ("a", "b", "c", "d")
    server = make_server(keys, cohort=cohort)
    if state in ("collecting", "idle"):
        starts = server.start_round(1, anchor_digest=ANCHORS, length=2)
        for v in IDS:
            server.receive(make_node(keys, v).begin_round(starts[v], np.ones(2)))
    if state == "idle":
        server.finish()
    if state == "aborted":
        with pytest.raises(LocalProtocolError):
            server.finish()
    assert server.state == state
    upload = make_node(keys, "d").begin_round(start_for(keys, round_=1, cohort=cohort, length=2), np.ones(2))
    return server, {"start_round": lambda: server.start_round(2, anchor_digest=ANCHORS, length=2),
                    "CkksEncryptedInput": lambda: server.receive(upload), "finish": server.finish}


@pytest.mark.parametrize("state, event", [(s, e) for s in NODE_TRANSITIONS for e in ckks.NODE_PEER_EVENTS])
def test_every_node_state_event_pair(keys, state, event):
    node, messages = _node_in(keys, state)
    call = node.begin_round if event == "CkksRoundStart" else node.receive_aggregate
    args = (messages[event], np.ones(3)) if event == "CkksRoundStart" else (messages[event],)
    target = NODE_TRANSITIONS[state].get(event)
    if target is not None:
        call(*args)
        assert node.state == target
        return
    error, after = refusal("node", state, event)
    with pytest.raises(error):
        call(*args)
    assert node.state == after == "aborted"
    # for good: every later call is our own misuse
    with pytest.raises(LocalProtocolError, match="start a new session"):
        node.begin_round(start_for(keys, round_=9), np.ones(3))
    with pytest.raises(LocalProtocolError, match="start a new session"):
        node.receive_aggregate(messages["CkksAggregate"])


@pytest.mark.parametrize("state, event", [(s, e) for s in SERVER_TRANSITIONS
                                          for e in ("start_round", "CkksEncryptedInput", "finish")])
def test_every_server_state_event_pair(keys, state, event):
    server, actions = _server_in(keys, state)
    target = SERVER_TRANSITIONS[state].get(event)
    if target is not None:
        actions[event]()
        assert server.state == target
        return
    error, after = refusal("server", state, event)
    with pytest.raises(error):
        actions[event]()
    assert server.state == after
    if after == "aborted":  # for good: every later call is our own misuse
        for action in actions.values():
            with pytest.raises(LocalProtocolError, match="start a new session"):
                action()
    else:  # the availability rule: a node's upload out of order changes nothing
        assert error is RemoteProtocolError and event in ckks.SERVER_PEER_EVENTS


def test_every_state_and_event_has_a_case():
    assert set(NODE_TRANSITIONS) == set(NodeState) and set(ckks.NODE_PEER_EVENTS) == set(NodeEvent)
    assert set(SERVER_TRANSITIONS) == set(ServerState)
    assert {*ckks.SERVER_PEER_EVENTS, *ckks.SERVER_LOCAL_EVENTS} == set(ServerEvent)


@pytest.mark.parametrize("call", ["begin_round", "receive_aggregate"])
def test_node_local_misuse_aborts_the_session(keys, call):
    nodes, _, starts, aggregate = full_round(keys)
    node = nodes["a"] if call == "receive_aggregate" else make_node(keys)
    wrong = starts["a"] if call == "receive_aggregate" else aggregate
    with pytest.raises(LocalProtocolError, match="takes a"):
        getattr(node, call)(wrong, *(() if call == "receive_aggregate" else (np.ones(3),)))
    assert node.state == "aborted"


def test_spec_holds_the_generated_state_table():
    spec = (PROTOCOL_DIR / "SPEC.md").read_text()
    table = transition_table_markdown()
    assert table in spec
    assert spec.count("| state | event | from | outcome |") == table.count("| state | event | from | outcome |")


# -- wire --------------------------------------------------------------------------------------------------


def _sample_messages(keys):
    _, _, starts, aggregate = full_round(keys, length=2)
    upload = make_node(keys, "a").begin_round(start_for(keys, length=2), np.ones(2))
    return [starts["a"], upload, aggregate]


def test_round_trip_is_canonical(keys):
    for message in _sample_messages(keys):
        blob = message.encode()
        back = decode_ckks_message(blob)
        assert back == message and back.encode() == blob
    with pytest.raises((AttributeError, TypeError)):
        message.round = 9  # type: ignore[misc]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_message_error(blob):
    for data in (blob, ckks.MAGIC + b"\x01" + blob):
        with pytest.raises(MessageError):
            decode_ckks_message(data)


@fast(150)
@given(st.data())
def test_bit_flips_raise_only_message_error_or_decode(keys, data):
    if "messages" not in _FLIP_CACHE:
        _FLIP_CACHE["messages"] = _sample_messages(keys)
    messages = _FLIP_CACHE["messages"]
    message = data.draw(st.sampled_from(messages))
    blob = bytearray(message.encode())
    # flips in the header are the interesting ones; the body is opaque ciphertext bytes
    limit = 9 + int.from_bytes(blob[5:9], "big") + 64
    position = data.draw(st.integers(0, min(limit, len(blob)) - 1))
    blob[position] ^= 1 << data.draw(st.integers(0, 7))
    try:
        decoded = decode_ckks_message(bytes(blob))
    except MessageError:
        return
    assert decoded.encode() == bytes(blob)
    if isinstance(decoded, CkksEncryptedInput):  # the server may still refuse it, but only with MessageError
        server = make_server(keys)
        server.start_round(1, anchor_digest=ANCHORS, length=2)
        try:
            server.receive(decoded)
        except MessageError:
            pass


_FLIP_CACHE: dict[str, list] = {}


def test_ciphertext_bit_flips_raise_only_message_error(keys):
    upload = _sample_messages(keys)[1]
    rng = np.random.default_rng(0)
    blob = upload.encode()
    accepted = 0
    for _ in range(30):
        data = bytearray(blob)
        position = int(rng.integers(len(blob) - len(upload.chunks[0]), len(blob)))
        data[position] ^= 1 << int(rng.integers(8))
        decoded = decode_ckks_message(bytes(data))  # ciphertexts are opaque to decoding
        server = make_server(keys)
        server.start_round(1, anchor_digest=ANCHORS, length=2)
        try:
            server.receive(decoded)
            accepted += 1  # no integrity protection: most flips load and decrypt to noise (SPEC section 6)
        except MessageError:
            pass
    assert accepted > 0


# -- published vectors -------------------------------------------------------------------------------------


def test_vectors_file_is_what_the_generator_builds():
    on_disk = json.loads((PROTOCOL_DIR / "vectors.json").read_text())
    assert on_disk == json.loads(json.dumps(build_vectors(), sort_keys=True))
    assert (PROTOCOL_DIR / "vectors.json").read_text() == json.dumps(build_vectors(), indent=1, sort_keys=True) + "\n"


def test_vectors_packing_and_messages():
    vectors = build_vectors()
    slots = vectors["parameters"]["slots"]
    for case in vectors["packing"]:
        assert [list(b) for b in chunk_bounds(case["length"], slots)] == case["chunks"]
    for case in vectors["messages"]["valid"]:
        message = decode_ckks_message(bytes.fromhex(case["hex"]))
        assert type(message).__name__ == case["type"]
        for name, value in case["fields"].items():
            got = getattr(message, name)
            assert ([c.hex() for c in got] if name == "chunks" else list(got) if isinstance(got, tuple) else got) == value
    for case in vectors["messages"]["invalid"]:
        assert case["error"] == "MessageError"
        with pytest.raises(MessageError, match=case["match"].replace("[", r"\[").replace("]", r"\]")):
            decode_ckks_message(bytes.fromhex(case["hex"]))


@pytest.mark.parametrize("index", range(4))
def test_vectors_aggregations_replay(keys, index):
    case = build_vectors()["aggregations"][index]
    if "inputs" in case:
        inputs = {v: np.array(x) for v, x in case["inputs"].items()}
    else:
        gen = case["inputs_generator"]
        inputs = {v: vector_input(gen["label"], v, case["length"], amplitude=gen["amplitude"], decimals=gen["decimals"])
                  for v in case["nodes"]}

    def run():
        return run_ckks_aggregation(inputs, weights=case["weights"], dropouts=case["dropouts"], seed=case["seed"],
                                    clip=case["clip"], keys=keys)

    if "error" in case:
        with pytest.raises(ProtocolAborted):
            run()
        return
    expected = case["expected"]
    result = run()
    tolerance = expected["max_abs_error"]
    assert result.max_abs_error == tolerance
    assert list(result.contributors) == expected["contributors"]
    assert dict(result.clipped) == expected["clipped"]
    assert abs(result.total_weight - expected["total_weight"]) <= tolerance
    assert [[r.stage, r.sender, r.receiver, r.kind] for r in result.transcript] == expected["transcript"]
    if "aggregate" in expected:
        assert np.abs(result.aggregate - np.array(expected["aggregate"])).max() <= tolerance
    else:
        for i, value in expected["aggregate_at"].items():
            assert abs(result.aggregate[int(i)] - value) <= tolerance
        exact = expected_aggregate(inputs, expected["contributors"], clip=case["clip"], weights=case["weights"])
        assert np.abs(result.aggregate - exact[:-1]).max() <= tolerance
    uploads = [decode_ckks_message(r.data) for r in result.transcript if r.stage == "encrypted_input"]
    assert all(len(u.chunks) == len(case["chunks"]) for u in uploads)
