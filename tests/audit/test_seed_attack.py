"""The white-box seed cell (issue 17, item 4): a server holding the seed defeats shared-seed DP, not node-secret DP."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import with_sections


def _seed_attack(tiny_config, tiny_modalities, tiny_backbone_dir, *, shared_seed_noise: bool, candidates: int,
                 epsilon: float = 1.0):
    from conftest import synthetic_modality

    from geofed_secure.audit.seed_attack import run_seed_attack
    from geofed_secure.model.backbone import load_backbone
    from geofed_secure.runtime import build_federation

    config = with_sections(tiny_config, federation={"rounds": 1, "mode": "local-only"},
                           training={"local_steps": 3, "lr": 0.01, "lambda_geo": 0.0},
                           privacy={"accountant": "rdp", "epsilon": epsilon, "shared_seed_noise": shared_seed_noise})
    fed = build_federation(config, tiny_modalities)
    held_out = synthetic_modality("image", dim=12, tokens=4, seed=1, n_pool=400).pool.subset(np.arange(240, 400))
    spec = config.nodes[0]
    return run_seed_attack(config, spec, fed.nodes[spec.id], held_out, anchor_digest=fed.anchor_digest,
                           backbone_factory=lambda: load_backbone(str(tiny_backbone_dir)), candidates=candidates, seed=0)


def test_a_server_holding_the_shared_seed_identifies_every_candidate(tiny_config, tiny_modalities, tiny_backbone_dir):
    attack = _seed_attack(tiny_config, tiny_modalities, tiny_backbone_dir, shared_seed_noise=True, candidates=8,
                          epsilon=0.5)
    assert attack.randomness == "shared-seed" and attack.correct == attack.exact_matches == 8
    # 8 of 8 right refutes every epsilon up to what 8 candidates can certify (0.79), above the accountant's 0.5
    assert attack.epsilon_lower_bound == pytest.approx(attack.max_certifiable_epsilon) and attack.epsilon_lower_bound > 0.5
    assert attack.accountant_epsilon <= 0.5 and attack.epsilon_lower_bound > attack.accountant_epsilon


def test_with_the_node_secret_the_same_attack_regenerates_nothing(tiny_config, tiny_modalities, tiny_backbone_dir):
    attack = _seed_attack(tiny_config, tiny_modalities, tiny_backbone_dir, shared_seed_noise=False, candidates=6)
    assert attack.randomness == "node-secret" and attack.exact_matches == 0
    assert attack.epsilon_lower_bound <= attack.accountant_epsilon


def test_the_seed_cell_reports_both_noise_modes_and_the_verdict_says_which_holds(tiny_config, tiny_modalities,
                                                                                  tiny_backbone_dir):
    from geofed_secure.audit.plan import AuditPlan
    from geofed_secure.audit.report import verdict
    from geofed_secure.audit.suite import seed_cells

    plan = AuditPlan(target="img-a", rounds=1, local_steps=2, batch_size=16, protections=(), epsilons=(4.0, 1.0),
                     seed_attack_candidates=2)
    config = with_sections(tiny_config, privacy={"accountant": "rdp"})
    rows = [r.to_dict() for r in seed_cells(plan, lambda line: None, base_config=config, modalities=tiny_modalities)]
    assert [r["metadata"]["randomness"] for r in rows] == ["shared-seed", "node-secret"]
    assert all(r["metadata"]["epsilon"] == 1.0 and r["trials"] == 2 for r in rows)
    assert rows[0]["metadata"]["exact_matches"] == 2 and rows[1]["metadata"]["exact_matches"] == 0
    report = {"threat_model": {"name": "t"}, "views": {}, "experiment": None, "plan": plan.to_dict(), "results": rows}
    lines = [line for line in verdict(report) if "white box" in line]
    assert len(lines) == 2 and "2/2 candidates identified (2 releases regenerated bit for bit)" in lines[0]
    assert "certifies at most" in lines[1]
