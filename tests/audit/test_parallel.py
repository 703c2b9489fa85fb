"""The audit's worker pool (geofed_secure/audit/parallel.py): results in task order, errors with their own type."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import pytest

from geofed_secure.audit.parallel import THREADS_PER_RUN, RunPool, available_cores, resolve_workers
from geofed_secure.errors import AnchorDigestMismatch, ConfigError, PrivacyBudgetExceeded, ProtocolAborted


def _scaled(context: dict[str, float], value: float, wait_for: str = "", then_write: str = "") -> tuple[float, int]:
    """``value`` scaled by the shared context, after ``wait_for`` exists (at most 60 s); then writes ``then_write``."""
    deadline = time.monotonic() + 60
    while wait_for and not Path(wait_for).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    if then_write:
        Path(then_write).write_text("done")
    import torch

    return context["scale"] * value, torch.get_num_threads()


def _refuse(context: dict[str, float], round_: int) -> None:
    if round_ == 2:
        raise PrivacyBudgetExceeded(node_id="img-a", round_=round_, spent=0.9, after=1.2, budget=1.0, delta=1e-5)


def test_in_process_runs_restore_the_callers_torch_threads():
    import torch

    before = torch.get_num_threads()
    with RunPool({"scale": 1.0}, 1) as pool:
        assert pool.run(_scaled, [(1.0,)])[0][1] == THREADS_PER_RUN
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("workers", [1, 2])
def test_results_come_back_in_task_order_with_the_shared_context(workers, tmp_path):
    done: list[int] = []
    marker = str(tmp_path / "last-task-ran")
    # with two workers the first task waits for the last one to have run, so it finishes last, and still comes first
    tasks = [(1.0, marker if workers == 2 else ""), (2.0,), (5.0, "", marker)]
    with RunPool({"scale": 3.0}, workers) as pool:
        results = pool.run(_scaled, tasks, on_done=lambda i, r: done.append(i))
    assert [r[0] for r in results] == [3.0, 6.0, 15.0] and sorted(done) == [0, 1, 2]
    assert {r[1] for r in results} == {THREADS_PER_RUN}  # in a worker or in this process: the floats depend on it
    if workers == 2:
        assert done[-1] == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_an_error_in_a_worker_reaches_the_caller_with_its_type_and_fields(workers):
    with pytest.raises(PrivacyBudgetExceeded, match="refuses round 2") as raised, RunPool({}, workers) as pool:
        pool.run(_refuse, [(1,), (2,), (3,)])
    assert raised.value.node_id == "img-a" and raised.value.budget == 1.0


@pytest.mark.parametrize("error", [
    ConfigError("workers", "must be >= 0, got -1", source="plan.toml"),
    PrivacyBudgetExceeded(node_id="n", round_=4, spent=1.0, after=2.0, budget=1.5, delta=1e-5),
    ProtocolAborted("too few survivors", party="server", stage="unmask"),
    AnchorDigestMismatch("a" * 64, "b" * 64, where="node n"),
])
def test_every_kind_of_error_survives_pickling(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error) and copy.__dict__ == error.__dict__


def test_resolve_workers_never_exceeds_the_tasks_and_zero_means_the_cores():
    assert resolve_workers(0, 100) == min(available_cores(), 100)
    assert resolve_workers(8, 3) == 3 and resolve_workers(1, 12) == 1 and resolve_workers(0, 1) == 1


def test_the_plan_and_the_command_refuse_negative_workers_before_training(tmp_path, capsys):
    from geofed_secure.audit.plan import AuditPlan, load_plan
    from geofed_secure.cli import main

    with pytest.raises(ConfigError, match="workers"):
        AuditPlan(workers=-1)
    assert load_plan("audits/plan.toml").workers == 0
    rc = main(["audit", "--threat-model", "threat_models/hbc-server.toml", "--plan", "quick", "--workers", "-1",
               "--out", str(tmp_path / "out")])
    assert rc == 2 and "workers" in capsys.readouterr().err and not (tmp_path / "out").exists()
