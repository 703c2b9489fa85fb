"""geofed audit says how long it will take and how long is left (issue 17, item 6)."""

from __future__ import annotations

import pytest

from geofed_secure.audit.plan import AuditPlan, load_plan
from geofed_secure.audit.progress import SECONDS_PER_STEP, EtaProgress, attack_seconds, estimate_seconds, training_units


def test_training_units_count_every_training_of_the_default_plan():
    # 4 other nodes x 2 trainings x 32 steps (x 1.6); 12 runs at each of no DP, eps 8, eps 1 (a DP step counts 1.55);
    # 3 canary runs
    dp = 32 * 1.55
    assert training_units(AuditPlan(), 4)["total"] == pytest.approx(4 * 2 * 32 * 1.6 + 13 * (32 + 2 * dp))


def test_gradient_canaries_add_one_dp_training_per_epsilon():
    plan = AuditPlan(epsilons=(8.0, 1.0), canaries=0)
    extra = training_units(AuditPlan(epsilons=(8.0, 1.0), canaries=0, gradient_canaries=100), 4)["total"]
    assert extra - training_units(plan, 4)["total"] == pytest.approx(2 * 32 * 1.55)


def test_the_presets_fit_their_time_targets_by_the_calibrated_model():
    """quick < 3 min and standard < 10 min on a quiet 2-core machine (the model is calibrated on the default plan's
    measured 7 min 13 s); high-power is longer."""
    quick, standard, high = (estimate_seconds(load_plan(name), 4) for name in ("quick", "standard", "high-power"))
    assert quick < 180 < standard < 600 < high
    assert standard == pytest.approx(433, rel=0.05)  # the measurement the model is calibrated on


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_remaining_time_follows_the_measured_pace():
    plan = AuditPlan(runs=4, protections=("none",), epsilons=(1.0,), canaries=0)
    clock, lines = Clock(), []
    eta = EtaProgress(plan, 2, lines.append, clock=clock)
    pace = 0.5  # seconds per plain step on this (slow) machine, loading included in the first unit
    clock.now = 30.0
    eta("loading the demo data (cached encoder features)")
    assert eta.remaining() is None
    steps = [2 * 32 * 1.6] * 2 + [32] * 4 + [32 * 1.55] * 4  # two other nodes (x2 trainings), 4 plain runs, 4 DP runs
    names = ["  other node a trained", "  other node b trained"] + [f"  no-dp: run {i}/4 trained on 10" for i in range(1, 5)] \
        + [f"  dp-eps1: run {i}/4 trained on 10" for i in range(1, 5)]
    for i, (n, name) in enumerate(zip(steps, names)):
        clock.now += n * pace
        eta(name)
        if i == 5:  # half of the training done: the rest at the same pace, then the attacks
            left = sum(steps[6:]) * pace + attack_seconds(plan) * pace / SECONDS_PER_STEP
            assert eta.remaining() == pytest.approx(left, rel=1e-9)
    assert eta.done == pytest.approx(sum(steps)) and eta.total == pytest.approx(sum(steps))
    assert lines[-1].endswith("left]") and "100% of training" in lines[-1]


def test_a_cached_experiment_gets_no_estimate():
    lines = []
    eta = EtaProgress(AuditPlan(), 4, lines.append, clock=Clock())
    eta("experiment loaded from the cache /x")
    assert eta.remaining() is None and lines == ["experiment loaded from the cache /x"]


def test_the_real_experiments_progress_lines_are_all_counted(tiny_config, tiny_modalities, tmp_path):
    from geofed_secure.audit.experiment import run_experiment

    plan = AuditPlan(target="img-a", runs=3, rounds=1, local_steps=2, batch_size=16, protections=("none",), epsilons=(4.0,),
                     extraction_anchors=(10,), extraction_draws=1, canaries=10, bootstrap=10, cache_dir=str(tmp_path))
    lines: list[str] = []
    eta = EtaProgress(plan, len(tiny_config.nodes) - 1, lines.append)
    run_experiment(plan, progress=eta, base_config=tiny_config, modalities=tiny_modalities, use_cache=False)
    assert eta.done == eta.total
    assert sum("left]" in line for line in lines) == 3 + 2 * 3 + 2  # other nodes, runs, canary runs
