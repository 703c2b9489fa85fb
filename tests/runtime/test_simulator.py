"""End-to-end runs of the in-process simulator on a tiny checkpoint and synthetic modalities."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import with_sections

from geofed_secure.errors import AnchorDigestMismatch, CheckpointError, MessageError, OutputFolderError
from geofed_secure.runtime.simulator import Simulator
from geofed_secure.runtime.transcript import SERVER, Transcript
from geofed_secure.server.checkpoint import CheckpointStore
from geofed_secure.wire.round import NodeUpdate, RoundBroadcast, decode_message, encode_message


class Crash(Exception):
    """Stands in for a process dying (not a GeofedError, so nothing catches it)."""


def test_run_writes_summary_transcript_checkpoints(tiny_config, tiny_modalities, tmp_path):
    result = Simulator(tiny_config, tiny_modalities, tmp_path).run()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2, 3]
    assert {n["id"] for n in summary["nodes"]} == {"img-a", "img-b", "txt", "tab"}
    assert abs(sum(n["weight"] for n in summary["nodes"]) - 1) < 1e-6
    for key in ("cross_modal_top1", "mutual_knn", "cka_to_consensus", "task_accuracy"):
        assert summary["final"][key] is not None
    for record in summary["rounds"]:
        for node in record["nodes"].values():
            assert node["bytes_uploaded"] > 0
    # transcript: per round one broadcast to and one upload from every node, and it reloads from disk
    loaded = Transcript.load(tmp_path / "transcript")
    assert len(loaded) == 3 * 2 * 4
    kinds = [(r.sender == SERVER, type(m)) for r, m in loaded.messages()]
    assert all((is_server and t is RoundBroadcast) or (not is_server and t is NodeUpdate) for is_server, t in kinds)
    assert CheckpointStore(tmp_path).latest_round() == 3
    assert (tmp_path / "final" / "merged_adapted_weights.safetensors").is_file()
    # the upload carries weight * B: dividing by the weight recovers a finite B of the right shape
    upload = next(m for _, m in loaded.messages(round_=1) if isinstance(m, NodeUpdate))
    assert {k.removeprefix("weighted/") for k in upload.payload if k.startswith("weighted/")} == set(result.global_state)


def test_resume_after_crash_is_bit_identical(tiny_config, tiny_modalities, tmp_path):
    reference = Simulator(tiny_config, tiny_modalities, tmp_path / "ref").run()

    def crash_in_round_3(stage, round_, node_id):
        if stage == "local_training" and round_ == 3 and node_id == "txt":
            raise Crash()

    with pytest.raises(Crash):
        Simulator(tiny_config, tiny_modalities, tmp_path / "run", fault_hook=crash_in_round_3).run()
    assert CheckpointStore(tmp_path / "run").latest_round() == 2
    resumed = Simulator(tiny_config, tiny_modalities, tmp_path / "run").run(resume=True)
    assert resumed.global_state.keys() == reference.global_state.keys()
    for key, value in reference.global_state.items():
        assert np.array_equal(value, resumed.global_state[key]), key
    # the transcript was rolled back to the checkpoint and continued: identical bytes to the uninterrupted run
    ref_t, res_t = Transcript.load(tmp_path / "ref" / "transcript"), Transcript.load(tmp_path / "run" / "transcript")
    assert [r.sha256 for r in ref_t.records] == [r.sha256 for r in res_t.records]


def test_crash_while_checkpointing_keeps_last_good_checkpoint(tiny_config, tiny_modalities, tmp_path):
    def crash_at_checkpoint_2(stage, round_, node_id):
        if stage == "checkpoint" and round_ == 2:
            raise Crash()

    with pytest.raises(Crash):
        Simulator(tiny_config, tiny_modalities, tmp_path, fault_hook=crash_at_checkpoint_2).run()
    assert CheckpointStore(tmp_path).latest_round() == 1
    result = Simulator(tiny_config, tiny_modalities, tmp_path).run(resume=True)
    assert [r["round"] for r in result.summary["rounds"]] == [1, 2, 3]


def test_node_dropout_round_continues_without_it(tiny_config, tiny_modalities, tmp_path):
    def drop(stage, round_, node_id):
        if stage == "upload" and round_ == 2 and node_id == "tab":
            raise MessageError("connection lost")

    result = Simulator(tiny_config, tiny_modalities, tmp_path, fault_hook=drop).run()
    round2 = result.summary["rounds"][1]["nodes"]
    assert round2["tab"]["bytes_uploaded"] == 0 and round2["tab"]["failure"] == "dropped"
    assert round2["txt"]["bytes_uploaded"] > 0
    # the cause is the node's own business: in its log, not in the summary
    log = [json.loads(line) for line in (tmp_path / "nodes" / "tab" / "log.jsonl").read_text().splitlines()]
    assert any(r["round"] == 2 and r["event"] == "failure" and "connection lost" in r["error"] for r in log)
    assert "connection lost" not in (tmp_path / "summary.json").read_text()


def test_second_run_into_same_folder_is_refused(tiny_config, tiny_modalities, tmp_path):
    Simulator(with_sections(tiny_config, federation={"rounds": 1}), tiny_modalities, tmp_path).run()
    with pytest.raises(OutputFolderError, match="already holds a run"):
        Simulator(tiny_config, tiny_modalities, tmp_path).run()


def test_resume_with_changed_config_is_refused(tiny_config, tiny_modalities, tmp_path):
    Simulator(with_sections(tiny_config, federation={"rounds": 1}), tiny_modalities, tmp_path).run()
    changed = with_sections(tiny_config, training={"lambda_geo": 0.0})
    with pytest.raises(CheckpointError, match="different configuration"):
        Simulator(changed, tiny_modalities, tmp_path).run(resume=True)


def test_node_refuses_broadcast_with_foreign_anchor_digest(tiny_config, tiny_modalities, tmp_path):
    sim = Simulator(tiny_config, tiny_modalities, tmp_path)
    broadcast = sim.server.begin_round()["txt"]
    forged = RoundBroadcast(federation_id=broadcast.federation_id, round=1, anchor_digest="f" * 64,
                            global_state=broadcast.global_state)
    with pytest.raises(AnchorDigestMismatch):
        sim.nodes["txt"].handle_broadcast(decode_message(encode_message(forged)))
    update = sim.nodes["txt"].handle_broadcast(broadcast)
    with pytest.raises(MessageError, match="replayed or stale"):
        sim.nodes["txt"].handle_broadcast(broadcast)  # replay of the same round
    sim.server.receive(update)
    with pytest.raises(MessageError, match="second upload"):
        sim.server.receive(update)


def test_local_only_mode_has_no_transcript_traffic(tiny_config, tiny_modalities, tmp_path):
    config = with_sections(tiny_config, federation={"mode": "local-only", "rounds": 2})
    result = Simulator(config, tiny_modalities, tmp_path).run()
    assert len(Transcript.load(tmp_path / "transcript")) == 0
    assert result.summary["final"]["task_accuracy"] is not None


def _uploaded_names(transcript):
    return {k for _, m in transcript.messages() if isinstance(m, NodeUpdate) for k in m.payload}


def test_local_magnitude_and_adapters_never_leave_the_node(tiny_config, tiny_modalities, tmp_path):
    result = Simulator(with_sections(tiny_config, federation={"rounds": 1}), tiny_modalities, tmp_path).run()
    names = _uploaded_names(result.transcript)
    assert names == {"gram_upper", "precision_weight"} | {f"weighted/{k}" for k in result.global_state}
    assert all(k.endswith(".lora_B") for k in result.global_state)  # no magnitude, adapter or head on the wire


def test_averaged_magnitude_is_uploaded_weighted_and_broadcast(tiny_config, tiny_modalities, tmp_path):
    config = with_sections(tiny_config, model={"magnitude": "averaged"}, federation={"rounds": 2})
    result = Simulator(config, tiny_modalities, tmp_path).run()
    mags = {k for k in result.global_state if k.endswith(".magnitude")}
    assert mags and {f"weighted/{k}" for k in mags} <= _uploaded_names(result.transcript)
    # round 2's broadcast carries round 1's precision-weighted mean of m, recomputed here from the uploads
    uploads = [m for r, m in result.transcript.messages(round_=1) if isinstance(m, NodeUpdate)]
    broadcast = next(m for r, m in result.transcript.messages(round_=2) if isinstance(m, RoundBroadcast))
    total = sum(float(u.payload["precision_weight"][0]) for u in uploads)
    for key in mags:
        expected = sum(u.payload[f"weighted/{key}"].astype(np.float64) for u in uploads) / total
        assert np.allclose(broadcast.global_state[key], expected, rtol=1e-5)


def test_crash_before_first_checkpoint_then_fresh_run_starts_clean(tiny_config, tiny_modalities, tmp_path):
    def crash_in_round_1(stage, round_, node_id):
        if stage == "upload" and round_ == 1 and node_id == "tab":
            raise Crash()

    with pytest.raises(Crash):
        Simulator(tiny_config, tiny_modalities, tmp_path, fault_hook=crash_in_round_1).run()
    with pytest.raises(CheckpointError, match="nothing to resume"):
        Simulator(tiny_config, tiny_modalities, tmp_path).run(resume=True)
    with pytest.raises(OutputFolderError, match="already holds a run"):  # never silently over a run's files
        Simulator(tiny_config, tiny_modalities, tmp_path).run()
    Simulator(tiny_config, tiny_modalities, tmp_path).run(overwrite=True)
    assert len(Transcript.load(tmp_path / "transcript")) == 3 * 2 * 4  # no stale records from the crashed attempt


def test_transcript_load_detects_tampering(tiny_config, tiny_modalities, tmp_path):
    Simulator(with_sections(tiny_config, federation={"rounds": 1}), tiny_modalities, tmp_path).run()
    data = bytearray((tmp_path / "transcript" / "messages.bin").read_bytes())
    data[100] ^= 0xFF
    (tmp_path / "transcript" / "messages.bin").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        Transcript.load(tmp_path / "transcript")


def test_corrupt_checkpoint_is_refused_on_resume(tiny_config, tiny_modalities, tmp_path):
    Simulator(with_sections(tiny_config, federation={"rounds": 1}), tiny_modalities, tmp_path).run()
    server_file = tmp_path / "checkpoints" / "round-0001" / "server.safetensors"
    server_file.write_bytes(server_file.read_bytes()[:-4])
    with pytest.raises(CheckpointError, match="does not match its SHA-256"):
        Simulator(tiny_config, tiny_modalities, tmp_path).run(resume=True)


def test_non_finite_training_leaves_node_out_and_unchanged(tiny_config, tiny_modalities, tmp_path):
    import torch

    sim = Simulator(tiny_config, tiny_modalities, tmp_path)
    node = sim.nodes["tab"]
    healthy_head = node.model.head.forward

    def fault(stage, round_, node_id):
        if node_id == "tab" and stage == "local_training":
            nan_head = lambda z: healthy_head(z) * torch.tensor(float("nan"))
            node.model.head.forward = nan_head if round_ == 2 else healthy_head

    sim.fault_hook = fault
    result = sim.run()
    round2 = result.summary["rounds"][1]["nodes"]["tab"]
    assert round2["bytes_uploaded"] == 0 and round2["failure"] == "invalid_update"
    assert result.summary["rounds"][2]["nodes"]["tab"]["bytes_uploaded"] > 0  # back in round 3
    assert sim.nodes["tab"].last_round == 3


def test_failed_local_round_restores_node_state(tiny_config, tiny_modalities, tmp_path):
    import torch

    from geofed_secure.errors import TrainingError

    sim = Simulator(tiny_config, tiny_modalities, tmp_path)
    node = sim.nodes["txt"]
    broadcast = sim.server.begin_round()["txt"]
    before = {k: v.clone() for k, v in node.state_dict().items()}
    healthy = node.model.head.forward
    node.model.head.forward = lambda z: healthy(z) * torch.tensor(float("nan"))
    with pytest.raises(TrainingError, match="non-finite"):
        node.handle_broadcast(broadcast)
    after = node.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert node.last_round == 0
