"""What a node's failures and private statistics reveal to the server (issue 12, part 6).

Only the secure sums and public facts may reach the server: a failing node sends a typed FailureCode (its error's
text stays in its own log), and under secure aggregation the per-node clipped counts, precision weights and losses
stay in ``nodes/<id>/log.jsonl`` while the server learns the total clipped count through the masked/encrypted sum.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import with_sections

from geofed_secure.errors import DataError, FailureCode, MessageError, PrivacyBudgetExceeded, TrainingError
from geofed_secure.runtime.nodelog import NodeLog
from geofed_secure.runtime.secure import CLIPPED_FIELD, COUNT_RADIX, SecureInputLayout
from geofed_secure.runtime.simulator import Simulator
from geofed_secure.runtime.transcript import SERVER, Transcript
from geofed_secure.server.server import Server
from geofed_secure.wire.round import FailureNotice, NodeUpdate, decode_message, encode_message

SECRET = "record 4711 of patient-7f3a"  # stands for error text that depends on private data


class RecordingReporter:
    """The console, which models the server operator's log."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def round_started(self, round_: int, total: int) -> None:
        self.lines.append(f"round {round_}/{total}")

    def node_done(self, round_: int, node_id: str, info: str) -> None:
        self.lines.append(f"{node_id} {info}")

    def round_done(self, round_: int, line: str) -> None:
        self.lines.append(line)

    def log(self, message: str) -> None:
        self.lines.append(message)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def node_log(run_dir, node_id: str) -> list[dict]:
    return NodeLog(run_dir / "nodes" / node_id / "log.jsonl").records()


def server_outputs(run_dir) -> bytes:
    """Every byte the run wrote for the server: summary, transcript index and wire bytes."""
    return b"".join((run_dir / p).read_bytes() for p in ("summary.json", "transcript/index.jsonl", "transcript/messages.bin"))


def fail_in_round(node, round_: int, exc: Exception) -> None:
    """Make ``node``'s local round ``round_`` raise ``exc`` (as its training or its own checks would)."""
    healthy = node.local_round

    def local_round(r, *, consensus):
        if r == round_:
            raise exc
        return healthy(r, consensus=consensus)

    node.local_round = local_round


def inflate_uploads(node, factor: float) -> None:
    """Scale ``node``'s weighted B by ``factor`` (a node whose update is large), so secure.clip clips some of it."""
    healthy = node.local_round

    def local_round(r, *, consensus):
        payload = healthy(r, consensus=consensus)
        return {k: (v * np.float32(factor)).astype(np.float32) if k.startswith("weighted/") else v for k, v in payload.items()}

    node.local_round = local_round


# -- failure codes -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["none", "masking"])
@pytest.mark.parametrize("error, code", [(TrainingError(f"tab: non-finite gradient at {SECRET}"), "invalid_update"),
                                         (DataError(f"NaN in {SECRET}"), "invalid_update")])
def test_a_failing_node_sends_only_its_code_and_keeps_the_text(tiny_config, tiny_modalities, tmp_path, protocol, error, code):
    # Prepare
    config = with_sections(tiny_config, federation={"rounds": 2}, secure={"protocol": protocol})
    reporter = RecordingReporter()
    sim = Simulator(config, tiny_modalities, tmp_path, reporter=reporter, secure_seed=1)
    fail_in_round(sim.nodes["tab"], 2, error)
    # Execute
    result = sim.run()
    # Assert: the server recorded the code, and nothing the server holds or prints carries the text
    assert result.summary["rounds"][1]["nodes"]["tab"]["failure"] == code
    assert result.summary["rounds"][0]["nodes"]["tab"]["failure"] is None
    assert SECRET.encode() not in server_outputs(tmp_path)
    assert SECRET not in reporter.text
    notices = [(rec, m) for rec, m in Transcript.load(tmp_path / "transcript").messages() if isinstance(m, FailureNotice)]
    assert [(rec.round, rec.sender, rec.receiver, m.node_id, m.code) for rec, m in notices] == [(2, "tab", SERVER, "tab", code)]
    # the node's own log has the full error
    failures = [r for r in node_log(tmp_path, "tab") if r["event"] == "failure"]
    assert failures == [{"round": 2, "event": "failure", "code": code, "error": f"{type(error).__name__}: {error}"}]


def test_privacy_budget_code_and_local_only_mode(tiny_config, tiny_modalities, tmp_path):
    config = with_sections(tiny_config, federation={"rounds": 1, "mode": "local-only"})
    sim = Simulator(config, tiny_modalities, tmp_path)
    exhausted = PrivacyBudgetExceeded(node_id="txt", round_=1, spent=2.5, after=3.1, budget=3.0, delta=1e-5)
    fail_in_round(sim.nodes["txt"], 1, exhausted)
    result = sim.run()
    assert result.summary["rounds"][0]["nodes"]["txt"]["failure"] == "privacy_budget_exhausted"
    assert "has spent epsilon" not in (tmp_path / "summary.json").read_text()
    assert "has spent epsilon 2.500" in node_log(tmp_path, "txt")[0]["error"]


def test_failure_code_mapping_and_notice_wire_format():
    assert FailureCode.for_node_error(PrivacyBudgetExceeded(node_id="a", round_=1, spent=1, after=2, budget=1, delta=1e-5)) \
        == FailureCode.PRIVACY_BUDGET_EXHAUSTED
    assert FailureCode.for_node_error(MessageError("stale broadcast")) == FailureCode.REFUSED_ROUND
    assert FailureCode.for_node_error(DataError("NaN")) == FailureCode.INVALID_UPDATE
    assert FailureCode.for_node_error(ValueError("other")) == FailureCode.NODE_ERROR
    common = {"federation_id": "f", "round": 3, "node_id": "a", "anchor_digest": "a" * 64}
    notice = FailureNotice(**common, code=FailureCode.INVALID_UPDATE)
    assert decode_message(encode_message(notice)) == notice
    # a closed set: free text, and codes a node never sends, are refused at the boundary
    for bad in (f"TrainingError: {SECRET}", "dropped", "rejected_by_server"):
        with pytest.raises(MessageError):
            FailureNotice(**common, code=bad)


def test_server_records_codes_never_free_text():
    state = {"m.lora_B": np.zeros((4, 2), np.float32)}
    server = Server(federation_id="f", anchor_digest="a" * 64, node_ids=("a", "b", "c"), global_state=state)
    server.begin_round()
    with pytest.raises(ValueError):
        server.reject("b", f"TrainingError: {SECRET}")
    server.reject("b", FailureCode.DROPPED)
    stale = FailureNotice(federation_id="f", round=2, node_id="c", anchor_digest="a" * 64, code=FailureCode.INVALID_UPDATE)
    with pytest.raises(MessageError, match="replayed or stale"):
        server.receive_failure(stale)
    server.receive_failure(FailureNotice(federation_id="f", round=1, node_id="c", anchor_digest="a" * 64,
                                         code=FailureCode.INVALID_UPDATE))
    # the server's own rejection of a clear upload is typed too (its exception, which it may keep, is raised)
    bad = NodeUpdate(federation_id="f", round=1, node_id="a", anchor_digest="a" * 64,
                     payload={"gram_upper": np.zeros(3, np.float32), "precision_weight": np.ones(1, np.float32)})
    with pytest.raises(MessageError, match="layout"):
        server.receive(bad)
    sums = {"weighted/m.lora_B": np.ones((4, 2)), "precision_weight": np.array([1.0]), "gram_upper": np.zeros(3)}
    result = server.finish_round_from_sums(sums, ("x",), {})
    assert result.rejected == {"a": FailureCode.REJECTED_BY_SERVER, "b": FailureCode.DROPPED, "c": FailureCode.INVALID_UPDATE}
    assert all(type(v) is FailureCode for v in result.rejected.values())


# -- secure aggregation: per-node statistics stay on the node ----------------------------------------------------
@pytest.mark.parametrize("protocol", ["masking", "ckks"])
def test_under_secure_aggregation_only_the_clipped_sum_reaches_the_server(tiny_config, tiny_modalities, tmp_path, protocol):
    # Prepare: two nodes with large updates, so clip = 100 clips some of their coordinates; tab drops out of the
    # sum in round 2 after it clipped (its own count must then be missing from round 2's total)
    config = with_sections(tiny_config, federation={"rounds": 2}, secure={"protocol": protocol, "clip": 100.0})
    reporter = RecordingReporter()

    def drop(stage, round_, node_id):
        if stage == "secagg/masked_input" and round_ == 2 and node_id == "tab":
            raise MessageError("offline")

    sim = Simulator(config, tiny_modalities, tmp_path, reporter=reporter, fault_hook=drop, secure_seed=2)
    inflate_uploads(sim.nodes["img-a"], 1e5)
    inflate_uploads(sim.nodes["tab"], 3e4)
    # Execute
    result = sim.run()
    summary = json.loads((tmp_path / "summary.json").read_text())
    # Assert: each node's own count is in its log only; the server's total is the sum over the round's contributors
    local = {k: {r["round"]: r["clipped_coordinates"] for r in node_log(tmp_path, k) if r["event"] == "secure_input"}
             for k in sim.nodes}
    assert local["img-a"][1] > 0 and local["tab"][2] > 0 and local["txt"][1] == 0
    contributors = {1: set(sim.nodes), 2: set(sim.nodes) - {"tab"}}
    totals = [r["clipped_coordinates"] for r in summary["rounds"]]
    assert totals == [sum(local[k][r] for k in contributors[r]) for r in (1, 2)]
    assert summary["secure_aggregation"]["clipped_coordinates"] == sum(totals)
    assert summary["rounds"][1]["nodes"]["tab"]["failure"] == "dropped"
    # no per-node count, weight or loss in the summary or on the console
    for record in summary["rounds"]:
        for node in record["nodes"].values():
            assert node["weight"] is None and node["task_loss"] is None and node["geo_loss"] is None
    assert all(n["weight"] is None for n in summary["nodes"])
    weights = [r["precision_weight"] for k in sim.nodes for r in node_log(tmp_path, k) if r["event"] == "trained"]
    assert len(weights) == 8 and all(w >= 1 for w in weights)
    assert "p=" not in reporter.text and "task=" not in reporter.text
    clip_lines = [line for line in reporter.lines if "clipped" in line]
    assert [line.split(" to ")[0] for line in clip_lines] == [f"round {r}: {totals[r - 1]} coordinate(s) clipped" for r in (1, 2)]
    assert result.summary["secure_aggregation"] == summary["secure_aggregation"]


def test_plaintext_mode_still_shows_what_the_server_sees_in_clear(tiny_config, tiny_modalities, tmp_path):
    config = with_sections(tiny_config, federation={"rounds": 1})
    reporter = RecordingReporter()
    result = Simulator(config, tiny_modalities, tmp_path, reporter=reporter).run()
    record = result.summary["rounds"][0]["nodes"]
    assert all(v["weight"] is not None and v["task_loss"] is not None for v in record.values())
    assert "p=" in reporter.text  # clear uploads carry p_k: the console may show it
    assert "clipped_coordinates" not in result.summary["rounds"][0]
    assert [r["event"] for r in node_log(tmp_path, "txt")] == ["trained"]


def test_resume_drops_the_node_log_records_of_rounds_run_again(tiny_config, tiny_modalities, tmp_path):
    class Crash(Exception):
        pass

    def crash(stage, round_, node_id):
        if stage == "checkpoint" and round_ == 2:
            raise Crash()

    with pytest.raises(Crash):
        Simulator(tiny_config, tiny_modalities, tmp_path, fault_hook=crash).run()
    assert {r["round"] for r in node_log(tmp_path, "tab")} == {1, 2}  # round 2 logged, but not checkpointed
    Simulator(tiny_config, tiny_modalities, tmp_path).run(resume=True)
    assert [r["round"] for r in node_log(tmp_path, "tab")] == [1, 2, 3]


# -- the count travels inside the secure vector ------------------------------------------------------------------
def test_clipped_counts_sum_exactly_through_the_digit_coordinates():
    state = {"m.lora_B": np.zeros((40, 10), np.float32)}
    layout = SecureInputLayout.for_round(state, 5, clip=2.0)
    assert COUNT_RADIX ** layout.digits > layout.payload.length >= COUNT_RADIX ** (layout.digits - 1)
    rng = np.random.default_rng(0)
    vectors, counts = [], []
    for scale in (0.5, 3.0, 40.0):
        payload = {"weighted/m.lora_B": rng.normal(0, scale, (40, 10)).astype(np.float32),
                   "gram_upper": rng.uniform(-1, 1, 10).astype(np.float32), "precision_weight": np.array([1.5], np.float32)}
        vector, count = layout.node_input(payload)
        assert vector.shape == (layout.length,) and np.abs(vector).max() <= 2.0
        vectors.append(vector)
        counts.append(count)
    assert counts[0] < counts[1] < counts[2] and counts[2] >= COUNT_RADIX  # several digits carry
    sums = layout.unflatten(np.sum(vectors, axis=0) + 1e-6)  # a small aggregation error is absorbed
    assert set(sums) == {"weighted/m.lora_B", "gram_upper", "precision_weight", CLIPPED_FIELD}
    assert layout.clipped_total(sums, max_abs_error=1e-6) == sum(counts)
    assert layout.clipped_total(sums, max_abs_error=0.1) is None  # the bound cannot guarantee the integer
    too_heavy = {"weighted/m.lora_B": np.zeros((40, 10), np.float32), "gram_upper": np.zeros(10, np.float32),
                 "precision_weight": np.array([2.5], np.float32)}
    with pytest.raises(DataError, match="exceeds secure.clip"):
        layout.node_input(too_heavy)
    with pytest.raises(DataError, match="layout"):
        layout.node_input({"gram_upper": np.zeros(10, np.float32), "precision_weight": np.ones(1, np.float32)})
