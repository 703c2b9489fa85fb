"""Wire messages: canonical encoding, round trip, and typed errors for anything malformed."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st

from geofed_secure.errors import MessageError
from geofed_secure.wire.round import NodeUpdate, RoundBroadcast, decode_message, encode_message

DIGEST = "ab" * 32


def update(**kw):
    payload = {"weighted/x.lora_B": np.ones((3, 2), np.float32), "gram_upper": np.zeros(6, np.float32),
               "precision_weight": np.array([2.5], np.float32)}
    return NodeUpdate(**{"federation_id": "fed", "round": 2, "node_id": "n1", "anchor_digest": DIGEST, "payload": payload, **kw})


def test_round_trip_and_canonical_bytes():
    msg = RoundBroadcast(federation_id="fed", round=3, anchor_digest=DIGEST,
                         global_state={"b.lora_B": np.arange(6, dtype=np.float32).reshape(3, 2),
                                       "a.lora_B": np.ones((2, 2), np.float32)},
                         consensus_gram=np.linspace(0, 1, 6, dtype=np.float32))
    blob = encode_message(msg)
    assert blob == encode_message(msg)  # deterministic bytes (they are hashed into the transcript)
    back = decode_message(blob)
    assert isinstance(back, RoundBroadcast) and back.round == 3
    assert np.array_equal(back.global_state["b.lora_B"], msg.global_state["b.lora_B"])
    assert np.array_equal(back.consensus_gram, msg.consensus_gram)
    up = decode_message(encode_message(update()))
    assert isinstance(up, NodeUpdate) and up.node_id == "n1" and float(up.payload["precision_weight"][0]) == 2.5
    # the reference safetensors reader accepts our canonical writer's bytes
    assert set(safetensors.numpy.load(blob)) == {"global/a.lora_B", "global/b.lora_B", "consensus_gram"}


def test_messages_are_immutable():
    msg = update()
    with pytest.raises(ValueError):
        msg.payload["gram_upper"][0] = 1.0
    with pytest.raises((AttributeError, TypeError)):
        msg.round = 5  # type: ignore[misc]


@pytest.mark.parametrize("changes, match", [
    ({"round": 0}, "round"),
    ({"round": True}, "round"),
    ({"anchor_digest": "xyz"}, "anchor_digest"),
    ({"node_id": "bad id!"}, "node_id"),
    ({"federation_id": ""}, "federation_id"),
])
def test_invalid_fields_are_refused(changes, match):
    with pytest.raises(MessageError, match=match):
        update(**changes)


def test_invalid_payloads_are_refused():
    nan = {"weighted/x.lora_B": np.full((2,), np.nan, np.float32), "gram_upper": np.zeros(1, np.float32),
           "precision_weight": np.ones(1, np.float32)}
    with pytest.raises(MessageError, match="NaN"):
        update(payload=nan)
    with pytest.raises(MessageError, match="float32"):
        update(payload={**nan, "weighted/x.lora_B": np.zeros(2, np.float64)})
    with pytest.raises(MessageError, match="precision_weight"):
        update(payload={"gram_upper": np.zeros(1, np.float32), "precision_weight": np.array([-1.0], np.float32)})


def test_wrong_version_and_type_are_refused():
    blob = encode_message(update())
    with pytest.raises(MessageError, match="version"):
        decode_message(blob.replace(b'"geofed.version":"1"', b'"geofed.version":"9"'))
    with pytest.raises(MessageError, match="unknown message type"):
        decode_message(blob.replace(b'"NodeUpdate"', b'"NodeUpdat3"'))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_fuzzed_bytes_give_only_message_errors(blob):
    with pytest.raises(MessageError):
        decode_message(blob)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_valid_messages_decode_or_raise_message_error(data):
    blob = bytearray(encode_message(update()))
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    try:
        msg = decode_message(bytes(blob))
    except MessageError:
        return
    assert isinstance(msg, (NodeUpdate, RoundBroadcast))
