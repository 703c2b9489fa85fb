"""Secure aggregation inside `geofed run`: same model as plaintext, and the server only ever sees masked vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import with_sections

from geofed_secure.errors import GeofedError, ProtocolAborted
from geofed_secure.runtime.simulator import Simulator
from geofed_secure.runtime.transcript import SERVER, Transcript
from geofed_secure.secagg.masking.fixedpoint import FixedPoint, automatic_ring_bits
from geofed_secure.secagg.masking.messages import MaskedInput
from geofed_secure.server.checkpoint import CheckpointStore
from geofed_secure.wire.round import NodeUpdate, RoundBroadcast

NODE_TO_SERVER_SECAGG = {"KeyAdvertisement", "ShareBundle", "MaskedInput", "ConsistencySignature", "UnmaskResponse"}


@pytest.fixture(scope="module")
def plaintext_run(tiny_config, tiny_modalities, tmp_path_factory):
    return Simulator(tiny_config, tiny_modalities, tmp_path_factory.mktemp("plain")).run()


def test_masking_gives_the_plaintext_model_and_the_server_sees_only_masked_vectors(tiny_config, tiny_modalities, tmp_path,
                                                                                   plaintext_run):
    # Prepare
    config = with_sections(tiny_config, secure={"protocol": "masking", "rounds_per_epoch": 2, "ring_bits": 64})
    # Execute
    result = Simulator(config, tiny_modalities, tmp_path, secure_seed=3).run()
    # Assert: same global model as the plaintext run, up to quantisation (64-bit ring: ~1e-11 per round)
    for key, value in plaintext_run.global_state.items():
        np.testing.assert_allclose(result.global_state[key], value, rtol=0, atol=1e-6, err_msg=key)
    # the transcript holds no NodeUpdate: nodes send only secagg messages, the server broadcasts and secagg requests
    transcript = Transcript.load(tmp_path / "transcript")
    kinds = {(rec.sender == SERVER, type(m).__name__) for rec, m in transcript.messages()}
    assert not any(isinstance(m, NodeUpdate) for _, m in transcript.messages())
    assert {k for is_server, k in kinds if not is_server} <= NODE_TO_SERVER_SECAGG
    # epochs of 2 rounds: keys are advertised in rounds 1 and 3 only; round 2 is a two-round-trip steady state
    adverts = {rec.round for rec, m in transcript.messages() if type(m).__name__ == "KeyAdvertisement"}
    assert adverts == {1, 3}
    round2 = {type(m).__name__ for rec, m in transcript.messages(round_=2) if rec.sender == SERVER}
    assert round2 == {"RoundBroadcast", "RoundStart", "UnmaskRequest"}
    # a masked input looks nothing like the upload it hides: decoded as fixed point, almost every coordinate is far
    # outside the range of real uploads (|value| < 100), as for uniform ring words (expected fraction 100 * 2^(f+1-64))
    masked = next(m for _, m in transcript.messages(round_=1) if isinstance(m, MaskedInput))
    frac_bits = FixedPoint.for_cohort(4, config.secure.clip, 64).frac_bits
    decoded = masked.words.view(np.int64).astype(np.float64) / 2.0**frac_bits
    assert np.mean(np.abs(decoded) < 100) < 0.02
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["secure_aggregation"]["protocol"] == "masking"
    assert all(n["weight"] is None for n in summary["nodes"])  # individual weights are hidden from the server


@pytest.mark.parametrize("stage, contributes", [("advertise_keys", False), ("share_keys", False), ("masked_input", False),
                                                ("consistency_check", True), ("unmask", True)])
def test_dropout_at_every_secure_stage_still_aggregates(tiny_config, tiny_modalities, tmp_path, stage, contributes):
    config = with_sections(tiny_config, federation={"rounds": 1}, secure={"protocol": "masking"})

    def drop(hook_stage, round_, node_id):
        if node_id == "tab" and hook_stage == f"secagg/{stage}":
            raise GeofedError(f"simulated dropout at {stage}")

    # a dropout at masked_input forces the consistency check; the others keep the fast path
    result = Simulator(config, tiny_modalities, tmp_path, fault_hook=drop, secure_seed=1).run()
    failure = result.summary["rounds"][0]["nodes"]["tab"]["failure"]
    assert (failure is None) == contributes
    signatures = [m for rec, m in result.transcript.messages() if type(m).__name__ == "ConsistencySignature"]
    assert bool(signatures) == (stage == "masked_input")


def test_too_many_dropouts_abort_and_keep_the_last_checkpoint(tiny_config, tiny_modalities, tmp_path):
    config = with_sections(tiny_config, federation={"rounds": 2}, secure={"protocol": "masking"})

    def drop(hook_stage, round_, node_id):
        if round_ == 2 and hook_stage == "secagg/masked_input" and node_id in ("tab", "txt"):
            raise GeofedError("simulated dropout")

    with pytest.raises(ProtocolAborted, match="floor"):
        Simulator(config, tiny_modalities, tmp_path, fault_hook=drop, secure_seed=1).run()
    assert CheckpointStore(tmp_path).latest_round() == 1  # the failed round 2 left round 1's checkpoint intact
    resumed = Simulator(config, tiny_modalities, tmp_path, secure_seed=2).run(resume=True)
    assert [r["round"] for r in resumed.summary["rounds"]] == [1, 2]


def test_broadcast_is_the_only_plaintext_the_server_sends(tiny_config, tiny_modalities, tmp_path):
    config = with_sections(tiny_config, federation={"rounds": 1}, secure={"protocol": "masking"})
    result = Simulator(config, tiny_modalities, tmp_path, secure_seed=5).run()
    from_server = {type(m).__name__ for rec, m in result.transcript.messages() if rec.sender == SERVER}
    assert RoundBroadcast.__name__ in from_server and "NodeUpdate" not in from_server


def test_ckks_gives_the_plaintext_model_and_the_server_sees_only_ciphertexts_and_the_sum(tiny_config, tiny_modalities,
                                                                                         tmp_path, plaintext_run):
    config = with_sections(tiny_config, secure={"protocol": "ckks", "clip": 100.0})

    def drop(hook_stage, round_, node_id):  # the first decryptor is offline in round 2: another one releases the sum
        if round_ == 2 and hook_stage == "secagg/unmask" and node_id == "img-a":
            raise GeofedError("offline")

    result = Simulator(config, tiny_modalities, tmp_path, fault_hook=drop).run()
    for key, value in plaintext_run.global_state.items():
        np.testing.assert_allclose(result.global_state[key], value, rtol=0, atol=1e-5, err_msg=key)
    kinds = {(rec.sender == SERVER, type(m).__name__) for rec, m in result.transcript.messages()}
    assert {k for is_server, k in kinds if not is_server} == {"CkksEncryptedInput", "AggregateRelease"}
    releases = [(rec.round, m.node_id) for rec, m in result.transcript.messages() if type(m).__name__ == "AggregateRelease"]
    assert releases == [(1, "img-a"), (2, "img-b"), (3, "img-a")]


def test_automatic_ring_is_32_bit_here_and_uploads_4_bytes_a_coordinate(tiny_config, tiny_modalities, tmp_path,
                                                                        plaintext_run):
    # Prepare: the default secure.ring_bits = 0 picks the ring from the nodes and the clip bound
    config = with_sections(tiny_config, secure={"protocol": "masking"})
    assert config.secure.ring_bits == 0 and automatic_ring_bits(len(config.nodes), config.secure.clip) == 32
    # Execute
    result = Simulator(config, tiny_modalities, tmp_path, secure_seed=3).run()
    # Assert: 4 bytes a coordinate (plus a header), the model within the coarser quantisation of the plaintext one
    masked = [m for _, m in Transcript.load(tmp_path / "transcript").messages() if isinstance(m, MaskedInput)]
    assert masked and all(m.words.dtype == np.uint32 for m in masked)
    assert all(len(m.encode()) - 4 * m.words.shape[0] < 200 for m in masked)  # the words and a header of ~130 bytes
    step = 2.0 ** -FixedPoint.for_cohort(len(config.nodes), config.secure.clip, 32).frac_bits
    assert step <= config.secure.clip * 2.0**-24
    for key, value in plaintext_run.global_state.items():
        np.testing.assert_allclose(result.global_state[key], value, rtol=0, atol=1e-3, err_msg=key)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["secure_aggregation"]["ring_bits"] == 32
