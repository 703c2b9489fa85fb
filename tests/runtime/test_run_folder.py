"""A run's output folder (issue 18): locked while a run writes it, never overwritten without --resume or
overwrite, a damaged newest checkpoint replaced by the previous round's, and --cache-dir free on resume."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import with_sections

from geofed_secure.errors import CheckpointError, MessageError, OutputFolderError, OutputFolderLocked
from geofed_secure.runtime.outdir import LOCK_FILE, claim_for_new_run, output_folder
from geofed_secure.runtime.simulator import Simulator
from geofed_secure.runtime.transcript import Transcript
from geofed_secure.wire.round import RoundBroadcast, encode_message


class Crash(Exception):
    """Stands in for a process dying (not a GeofedError, so nothing catches it)."""


def hold_lock_in_another_process(folder):
    """A child process that holds the folder's lock until its stdin closes (or it is killed)."""
    code = textwrap.dedent(f"""
        import sys
        from geofed_secure.runtime.outdir import output_folder
        with output_folder({str(folder)!r}, owner="test holder"):
            print("locked", flush=True)
            sys.stdin.read()
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "locked"
    return child


def test_a_folder_is_locked_while_a_run_writes_it_and_a_dead_holder_does_not_block(tmp_path):
    child = hold_lock_in_another_process(tmp_path)
    try:
        with pytest.raises(OutputFolderLocked, match=f"pid {child.pid}.*test holder"), \
                output_folder(tmp_path, owner="geofed run"):
            pass
    finally:
        child.kill()  # dies holding the lock: the kernel releases it with the process
        child.wait()
    assert (tmp_path / LOCK_FILE).exists()  # the stale lock file stays, and does not block
    # the same process may nest (the CLI takes the lock before loading data, then the simulator)
    with output_folder(tmp_path, owner="geofed run"), output_folder(tmp_path, owner="geofed run"):
        pass


def test_a_second_simulator_into_a_locked_folder_is_refused(tiny_config, tiny_modalities, tmp_path):
    child = hold_lock_in_another_process(tmp_path)
    try:
        with pytest.raises(OutputFolderLocked):
            Simulator(tiny_config, tiny_modalities, tmp_path).run()
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
    assert not (tmp_path / "transcript").exists() and not (tmp_path / "config.json").exists()


def test_a_run_killed_in_round_1_is_not_overwritten_without_overwrite(tiny_config, tiny_modalities, tmp_path):
    """Issue 18: a new run into a folder holding a run killed in round 1 emptied its transcript."""
    config = with_sections(tiny_config, federation={"rounds": 1})

    def crash(stage, round_, node_id):
        if stage == "local_training" and node_id == "tab":
            raise Crash()

    with pytest.raises(Crash):
        Simulator(config, tiny_modalities, tmp_path, fault_hook=crash).run()
    before = (tmp_path / "transcript" / "messages.bin").read_bytes()
    assert before and (tmp_path / "config.json").is_file()
    with pytest.raises(OutputFolderError, match="already holds a run.*--overwrite"):
        Simulator(config, tiny_modalities, tmp_path).run()
    assert (tmp_path / "transcript" / "messages.bin").read_bytes() == before
    result = Simulator(config, tiny_modalities, tmp_path).run(overwrite=True)
    assert [r["round"] for r in result.summary["rounds"]] == [1]
    assert len(Transcript.load(tmp_path / "transcript")) == 2 * 4


def test_claiming_a_folder_leaves_foreign_files_and_refuses_files_as_folders(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    claim_for_new_run(tmp_path, overwrite=False)  # nothing of a run there: fine
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(OutputFolderError, match="summary.json"):
        claim_for_new_run(tmp_path, overwrite=False)
    claim_for_new_run(tmp_path, overwrite=True)
    assert not (tmp_path / "summary.json").exists() and (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(OutputFolderError, match="not a folder"), output_folder(tmp_path / "notes.txt", owner="run"):
        pass
    with pytest.raises(OutputFolderError, match="cannot create"), output_folder(tmp_path / "notes.txt" / "x", owner="run"):
        pass


def test_a_new_transcript_never_replaces_a_recorded_one(tmp_path):
    transcript = Transcript(tmp_path)
    message = RoundBroadcast(federation_id="f", round=1, anchor_digest="a" * 64, global_state={})
    transcript.record(1, "server", "n", encode_message(message), message)
    with pytest.raises(OutputFolderError, match="already holds"):
        Transcript(tmp_path)
    assert len(Transcript.load(tmp_path)) == 1


def test_an_edited_checkpoint_is_not_resumed_the_previous_round_is(recorded_runs, tiny_config, tiny_modalities, tmp_path,
                                                                    caplog):
    """Issue 18: a metric edited in round-N/state.json landed in summary.json on resume."""
    run = tmp_path / "run"
    shutil.copytree(recorded_runs["none"], run)
    original = json.loads((run / "summary.json").read_text())["rounds"][-1]["metrics"]["task_accuracy"]
    state_path = run / "checkpoints" / "round-0002" / "state.json"
    state = json.loads(state_path.read_text())
    state["history"][-1]["metrics"]["task_accuracy"] = 0.987654
    state_path.write_text(json.dumps(state, indent=1, sort_keys=True))
    config = with_sections(tiny_config, federation={"rounds": 2}, secure={"protocol": "none"})
    with caplog.at_level(logging.WARNING, logger="geofed_secure"):
        result = Simulator(config, tiny_modalities, run, secure_seed=3).run(resume=True)
    assert "round-0002" in caplog.text and "state.json" in caplog.text
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"][-1]["metrics"]["task_accuracy"] == original
    assert result.summary["rounds"][-1]["metrics"]["task_accuracy"] == original


def _as_wire_version(transcript_dir, version: int) -> int:
    """Rewrite every secagg-v1 record of a saved transcript to carry ``version`` (its SHA-256 fixed): what another
    release would have written. Returns how many records changed."""
    index = [json.loads(line) for line in (transcript_dir / "index.jsonl").read_text().splitlines()]
    data = bytearray((transcript_dir / "messages.bin").read_bytes())
    changed = 0
    for rec in index:
        start = rec["offset"]
        if data[start:start + 4] == b"GFSA":
            data[start + 4] = version
            rec["sha256"] = hashlib.sha256(data[start:start + rec["nbytes"]]).hexdigest()
            changed += 1
    (transcript_dir / "messages.bin").write_bytes(bytes(data))
    (transcript_dir / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in index))
    return changed


def test_resume_refuses_a_transcript_of_another_secure_aggregation_wire_version(recorded_runs, tiny_config,
                                                                              tiny_modalities, tmp_path):
    # Prepare: a masked run whose transcript the release before secagg-v1 wire version 2 wrote
    run = tmp_path / "run"
    shutil.copytree(recorded_runs["masking"], run)
    assert _as_wire_version(run / "transcript", 1) > 0
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    config = with_sections(tiny_config, federation={"rounds": 3}, secure={"protocol": "masking"})
    # Execute / Assert: refused before anything in the folder changes (mixing versions would leave it unauditable)
    with pytest.raises(CheckpointError, match="secagg-v1 wire version 1, and this geofed-secure writes version 2"):
        Simulator(config, tiny_modalities, run, secure_seed=3).run(resume=True)
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before
    # and reading it (the audit does) names the record and what to do
    with pytest.raises(MessageError, match=r"transcript record \d+ \(\w+, round 1, .*wire version 1 is not supported.*same "
                                           r"wire version"):
        list(Transcript.load(run / "transcript").messages())


def test_resume_accepts_another_cache_dir(recorded_runs, tiny_config, tiny_modalities, tmp_path):
    """Issue 18: --resume DIR --cache-dir X was refused as a different configuration (the cache holds features keyed
    by encoder and data digest; where it lives changes no result)."""
    run = tmp_path / "run"
    shutil.copytree(recorded_runs["none"], run)
    config = with_sections(tiny_config, federation={"rounds": 2}, secure={"protocol": "none"},
                           data={"cache_dir": str(tmp_path / "elsewhere")})
    result = Simulator(config, tiny_modalities, run, secure_seed=3).run(resume=True)
    assert [r["round"] for r in result.summary["rounds"]] == [1, 2]


@pytest.mark.parametrize("line", [b"[1, 2]", b'{"event": "trained"}', b'{"round": "two", "event": "x"}', b"\xff\xfe"])
def test_a_damaged_node_log_is_a_checkpoint_error_on_resume(tmp_path, line):
    from geofed_secure.errors import CheckpointError
    from geofed_secure.runtime.nodelog import NodeLog

    path = tmp_path / "log.jsonl"
    path.write_bytes(line + b"\n" + b'{"round": 1, "event": "trained"}\n')
    with pytest.raises(CheckpointError, match="log.jsonl"):
        NodeLog.resume(path, last_round=1)
