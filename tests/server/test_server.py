"""Server round logic: precision-weighted aggregation from sums, validation of uploads."""

from __future__ import annotations

import numpy as np
import pytest

from geofed_secure.errors import AnchorDigestMismatch, MessageError
from geofed_secure.server.server import RoundFailed, Server
from geofed_secure.wire.round import NodeUpdate

DIGEST = "cd" * 32


def make_server(**kw):
    return Server(federation_id="fed", anchor_digest=DIGEST, node_ids=("a", "b", "c"),
                  global_state={"m.lora_B": np.zeros((4, 2), np.float32)}, **kw)


def upload(node_id, b, weight, gram, round_=1, digest=DIGEST):
    return NodeUpdate(federation_id="fed", round=round_, node_id=node_id, anchor_digest=digest,
                      payload={"weighted/m.lora_B": (weight * b).astype(np.float32), "gram_upper": gram.astype(np.float32),
                               "precision_weight": np.array([weight], np.float32)})


def test_precision_weighted_mean_and_summed_gram_consensus():
    rng = np.random.default_rng(0)
    server = make_server()
    server.begin_round()
    bs = {k: rng.normal(size=(4, 2)) for k in "abc"}
    ws = {"a": 1.0, "b": 3.0, "c": 6.0}
    grams = {k: rng.uniform(-1, 1, size=3) for k in "abc"}
    for k in "abc":
        server.receive(upload(k, bs[k], ws[k], grams[k]))
    result = server.finish_round()
    expected_b = sum(ws[k] * bs[k] for k in "abc") / sum(ws.values())  # independent: weighted mean by hand
    assert np.allclose(server.global_state["m.lora_B"], expected_b, atol=1e-5)
    # the consensus is the SUM of the (node-normalised) uploads: each node takes its own out of it (leave-one-out)
    assert np.allclose(server.consensus, grams["a"] + grams["b"] + grams["c"], atol=1e-6)
    assert result.weights == pytest.approx({"a": 0.1, "b": 0.3, "c": 0.6})
    assert result.contributors == ("a", "b", "c") and server.round == 1


def test_degraded_weight_lowers_influence():
    server = make_server()
    server.begin_round()
    server.receive(upload("a", np.ones((4, 2)), 50.0, np.zeros(3)))
    server.receive(upload("b", -np.ones((4, 2)), 2.0, np.zeros(3)))
    server.finish_round()
    assert np.all(server.global_state["m.lora_B"] > 0.9)


@pytest.mark.parametrize("bad, error, match", [
    (lambda: upload("a", np.ones((4, 2)), 1.0, np.zeros(3), round_=2), MessageError, "replayed or stale"),
    (lambda: upload("zz", np.ones((4, 2)), 1.0, np.zeros(3)), MessageError, "unknown node"),
    (lambda: upload("a", np.ones((4, 2)), 1.0, np.zeros(3), digest="ef" * 32), AnchorDigestMismatch, "anchor digest"),
    (lambda: upload("a", np.ones((5, 2)), 1.0, np.zeros(3)), MessageError, "wrong shape"),
])
def test_invalid_uploads_are_refused(bad, error, match):
    server = make_server()
    server.begin_round()
    with pytest.raises(error, match=match):
        server.receive(bad())


def test_duplicate_and_out_of_round_uploads():
    server = make_server()
    with pytest.raises(MessageError, match="no round is open"):
        server.receive(upload("a", np.ones((4, 2)), 1.0, np.zeros(3)))
    server.begin_round()
    server.receive(upload("a", np.ones((4, 2)), 1.0, np.zeros(3)))
    with pytest.raises(MessageError, match="second upload"):
        server.receive(upload("a", np.ones((4, 2)), 1.0, np.zeros(3)))


def test_round_without_contributors_fails_and_keeps_state():
    server = make_server(min_contributors=2)
    before = server.global_state["m.lora_B"].copy()
    server.begin_round()
    server.receive(upload("a", np.ones((4, 2)), 1.0, np.zeros(3)))
    server.reject("b", "dropped")
    with pytest.raises(RoundFailed, match="need 2"):
        server.finish_round()
    assert np.array_equal(server.global_state["m.lora_B"], before) and server.round == 0
