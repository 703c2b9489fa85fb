"""The published protocol vectors: regenerated and diffed, then replayed through fresh state machines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geofed_secure.errors import MessageError, ProtocolAborted
from geofed_secure.secagg import vectors
from geofed_secure.secagg.masking import MaskingParameters
from geofed_secure.secagg.masking.federation import MaskingFederation
from geofed_secure.secagg.masking.messages import RoundStart, decode

SECAGG_FILE = vectors.PROTOCOLS_DIR / "secagg-v1" / "vectors.json"


def test_committed_vectors_equal_what_the_code_generates():
    # Prepare / Execute
    expected = vectors.expected_files()
    # Assert: CI fails when code and published vectors drift apart
    for path, text in expected.items():
        assert path.is_file(), f"{path} missing: run python -m geofed_secure.secagg.vectors"
        assert path.read_text() == text, f"{path} is stale: run python -m geofed_secure.secagg.vectors"


def _load():
    return json.loads(SECAGG_FILE.read_text())


def _fresh(case):
    params = MaskingParameters(**case["parameters"])
    inputs = {k: np.array(v) for k, v in case["inputs"].items()}
    fed = MaskingFederation.provision(tuple(inputs), params, seed=case["seed"], federation_id=case["federation_id"])
    return fed, inputs


@pytest.mark.parametrize("index", range(len(json.loads(SECAGG_FILE.read_text())["valid"])))
def test_nodes_replay_the_transcript_byte_for_byte(index):
    case = _load()["valid"][index]
    fed, inputs = _fresh(case)
    sent_by = {v: [bytes.fromhex(r["hex"]) for r in case["transcript"] if r["sender"] == v] for v in inputs}
    position = dict.fromkeys(inputs, 0)
    for record in case["transcript"]:
        if record["sender"] != "server":
            continue
        node = fed.nodes[record["receiver"]]
        message = decode(bytes.fromhex(record["hex"]))
        reply = node.begin_round(message, inputs[node.node_id]) if isinstance(message, RoundStart) else node.receive(message)
        k = position[node.node_id]
        if k < len(sent_by[node.node_id]):  # a node that dropped computed a reply nobody received
            assert reply.encode() == sent_by[node.node_id][k], f"{node.node_id} reply {k} differs from the vector"
            position[node.node_id] += 1
    assert all(position[v] == len(sent_by[v]) for v in inputs)


@pytest.mark.parametrize("index", range(len(json.loads(SECAGG_FILE.read_text())["valid"])))
def test_server_replays_the_transcript_and_gets_the_published_sum(index):
    case = _load()["valid"][index]
    fed, inputs = _fresh(case)
    server = fed.server
    length = len(next(iter(inputs.values())))
    results = {r["round"]: r for r in [case["result"], *case["later_results"]]}
    round_, outcomes = 1, {}
    outgoing = server.start_round(1, length, cohort=tuple(inputs))
    stage = server.stage
    for record in case["transcript"]:  # a change of the server's stage marks where the driver closed a stage
        if record["round"] != round_:  # the driver finished the round, then opened the next one
            assert server.close_stage() == {}
            outcomes[round_] = server.outcome
            round_ = record["round"]
            outgoing, stage = server.start_round(round_, length, cohort=tuple(inputs)), server.stage
        if record["sender"] == "server":
            if record["stage"] != stage:
                outgoing, stage = server.close_stage(), record["stage"]
            assert outgoing[record["receiver"]].encode().hex() == record["hex"]
        else:
            server.receive(decode(bytes.fromhex(record["hex"])))
    assert server.close_stage() == {}
    outcomes[round_] = server.outcome
    assert set(outcomes) == set(results)
    for r, outcome in outcomes.items():
        assert outcome is not None and outcome.round == r
        assert list(outcome.contributors) == results[r]["contributors"]
        np.testing.assert_array_equal(outcome.aggregate, np.array(results[r]["aggregate"]))
        exact = np.array(results[r]["exact_sum_of_clipped_inputs"])
        assert np.abs(outcome.aggregate - exact).max() <= results[r]["max_abs_error"]


@pytest.mark.parametrize("invalid", _load()["invalid"], ids=lambda c: c["name"])
def test_invalid_vectors_are_refused(invalid):
    case = _load()["valid"][0]
    fed, inputs = _fresh(case)
    blob = bytes.fromhex(invalid["hex"])
    if invalid["error"] == "MessageError":
        with pytest.raises(MessageError):
            decode(blob)
        return
    # Drive the receiver with the valid transcript until it reaches the state the vector names.
    node = fed.nodes[invalid["receiver"]]
    for record in case["transcript"]:
        if node.state == invalid["receiver_state"] and node.round >= 1:
            break
        if record["sender"] == "server" and record["receiver"] == node.node_id:
            message = decode(bytes.fromhex(record["hex"]))
            if isinstance(message, RoundStart):
                node.begin_round(message, inputs[node.node_id])
            else:
                node.receive(message)
    assert node.state == invalid["receiver_state"]
    with pytest.raises(ProtocolAborted):
        node.receive(decode(blob))
    assert node.state == "aborted"
