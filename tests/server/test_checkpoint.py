"""Checkpoints are verified as a whole: every file of a round (state.json included) and the LATEST pointer. A damaged
newest round is not the end of a run: the store falls back, with a logged warning, to the newest valid round
(issue 18)."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from geofed_secure.errors import CheckpointError
from geofed_secure.server.checkpoint import CheckpointStore


def save_rounds(run_dir, rounds=3, *, keep=3, nodes=("a", "b")):
    store = CheckpointStore(run_dir, keep=keep)
    for r in range(1, rounds + 1):
        store.save(r, {"w": np.full(3, r, np.float32)}, {n: {"x": torch.full((2,), float(r))} for n in nodes},
                   {"history": [{"round": i, "metrics": {"task_accuracy": 0.1 * i}} for i in range(1, r + 1)],
                    "weights": {}, "transcript_records": 4 * r, "anchor_digest": "d" * 64})
    return store


def round_dir(run_dir, r):
    return run_dir / "checkpoints" / f"round-{r:04d}"


def test_a_checkpoint_round_trips(tmp_path):
    ckpt = save_rounds(tmp_path).load_latest()
    assert ckpt.round == 3 and ckpt.meta["transcript_records"] == 12
    assert np.array_equal(ckpt.server["w"], np.full(3, 3, np.float32))
    assert set(ckpt.nodes) == {"a", "b"} and torch.equal(ckpt.nodes["b"]["x"], torch.full((2,), 3.0))


def test_an_edited_state_json_is_refused_and_the_previous_round_is_used(tmp_path, caplog):
    """Issue 18: an edited metric in round-N/state.json was loaded (only the tensor files were hashed)."""
    store = save_rounds(tmp_path)
    state_path = round_dir(tmp_path, 3) / "state.json"
    state = json.loads(state_path.read_text())
    state["history"][-1]["metrics"]["task_accuracy"] = 0.99
    state_path.write_text(json.dumps(state, indent=1, sort_keys=True))
    with caplog.at_level(logging.WARNING, logger="geofed_secure"):
        ckpt = store.load_latest()
    assert ckpt.round == 2
    assert all(r["metrics"]["task_accuracy"] != 0.99 for r in ckpt.meta["history"])
    assert "round-0003" in caplog.text and "state.json" in caplog.text and "round-0002" in caplog.text


@pytest.mark.parametrize("damage", ["flip_tensor", "truncate_tensor", "delete_node", "extra_file", "edit_manifest",
                                    "delete_manifest", "delete_state"])
def test_any_damaged_file_of_the_newest_round_falls_back(tmp_path, damage):
    store = save_rounds(tmp_path)
    folder = round_dir(tmp_path, 3)
    if damage == "flip_tensor":
        data = bytearray((folder / "server.safetensors").read_bytes())
        data[-1] ^= 1
        (folder / "server.safetensors").write_bytes(bytes(data))
    elif damage == "truncate_tensor":
        path = folder / "nodes" / "a.safetensors"
        path.write_bytes(path.read_bytes()[:-3])
    elif damage == "delete_node":
        (folder / "nodes" / "b.safetensors").unlink()
    elif damage == "extra_file":
        shutil.copy(folder / "nodes" / "a.safetensors", folder / "nodes" / "intruder.safetensors")
    elif damage == "edit_manifest":
        manifest = folder / "MANIFEST.json"
        manifest.write_text(manifest.read_text().replace('"round": 3', '"round": 3 '))
    elif damage == "delete_manifest":
        (folder / "MANIFEST.json").unlink()
    elif damage == "delete_state":
        (folder / "state.json").unlink()
    assert store.load_latest().round == 2


@pytest.mark.parametrize("latest, expected", [
    ("garbage", 3), ("round-0009", 3), (b"\xff\xfe\x00", 3), ("dir", 3), ("missing", 3),
    # names round 3 but with another manifest digest: round 3 may have been rewritten (manifest and state together),
    # so it is not trusted either
    ("round-0003 " + "0" * 64, 2),
])
def test_a_damaged_latest_pointer_falls_back_to_the_newest_valid_round(tmp_path, latest, expected, caplog):
    store = save_rounds(tmp_path)
    pointer = tmp_path / "checkpoints" / "LATEST"
    pointer.unlink()
    if latest == "dir":
        pointer.mkdir()
    elif isinstance(latest, bytes):
        pointer.write_bytes(latest)
    elif latest != "missing":
        pointer.write_text(latest + "\n")
    with caplog.at_level(logging.WARNING, logger="geofed_secure"):
        assert store.load_latest().round == expected
    assert "checkpoints/LATEST" in caplog.text and "round-0003" in caplog.text


def test_the_pointer_is_bound_to_the_round_it_names(tmp_path):
    """A round folder swapped under an intact LATEST (an older round's files renamed into place) is refused."""
    store = save_rounds(tmp_path)
    shutil.rmtree(round_dir(tmp_path, 3))
    shutil.copytree(round_dir(tmp_path, 2), round_dir(tmp_path, 3))
    assert store.load_latest().round == 2  # round-0003 now holds round 2's manifest: not what LATEST pointed at


def test_no_valid_round_is_a_checkpoint_error_naming_each_problem(tmp_path):
    store = save_rounds(tmp_path)
    for r in (1, 2, 3):
        (round_dir(tmp_path, r) / "state.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no valid checkpoint") as info:
        store.load_latest()
    assert all(f"round-000{r}" in str(info.value) for r in (1, 2, 3))


def test_nothing_to_resume_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        CheckpointStore(tmp_path).load_latest()


def test_a_round_without_node_state_is_valid(tmp_path):
    """A driver whose nodes keep their own state elsewhere (the Flower driver) saves the server's state only."""
    store = save_rounds(tmp_path, rounds=2, nodes=())
    ckpt = store.load_latest()
    assert ckpt.round == 2 and ckpt.nodes == {}
