"""geofed audit refuses what it cannot use before anything trains, and says what was probably meant (issue 18)."""

from __future__ import annotations

import pytest

from geofed_secure.audit import suite
from geofed_secure.audit.plan import AuditPlan, plan_from_dict
from geofed_secure.audit.threat_model import ThreatModel, load_threat_model, threat_model_from_dict
from geofed_secure.cli import main
from geofed_secure.errors import ConfigError

SERVER = {"role": "server", "behaviour": "honest-but-curious"}


class Trained(BaseException):
    """Raised in place of the experiment: the audit got as far as training."""


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise Trained()

    monkeypatch.setattr(suite, "run_experiment", refuse)


@pytest.mark.parametrize("data, field, hint", [
    ({"name": "x", "adversery": SERVER}, "adversery", "adversary"),
    ({"name": "x", "adversary": SERVER, "observe": ["transcript"]}, "observe", "observes"),
    ({"name": "x", "adversary": SERVER | {"node": ["a"]}}, "adversary.node", "nodes"),
    ({"name": "x", "adversary": {"role": "sever", "behaviour": "malicious"}}, "adversary.role", "server"),
    ({"name": "x", "adversary": {"role": "server", "behaviour": "honest-but-curios"}}, "adversary.behaviour",
     "honest-but-curious"),
    ({"name": "x", "adversary": SERVER, "observes": ["transcrpt"]}, "observes", "transcript"),
])
def test_misspelt_threat_model_keys_and_values_get_a_did_you_mean(data, field, hint):
    with pytest.raises(ConfigError, match=f"did you mean '{hint}'") as info:
        threat_model_from_dict(data, source="t.toml")
    assert info.value.field == field


def test_misspelt_plan_keys_get_a_did_you_mean():
    with pytest.raises(ConfigError, match="did you mean 'epsilons'"):
        plan_from_dict({"epsilon": [1.0]}, source="plan.toml")


@pytest.mark.parametrize("nodes", [["nobody"], ["clinic-images-a"]])
def test_an_unknown_or_target_node_is_refused_before_the_audit_trains(nodes, no_training, tmp_path):
    """Issue 18: an unknown node in a threat model was found only after the experiment trained."""
    threat_model = ThreatModel(name="coalition", description="", role="colluding", behaviour="malicious", nodes=tuple(nodes))
    with pytest.raises(ConfigError, match="nobody|target"):
        suite.run_audit(threat_model, AuditPlan(), tmp_path)
    known = ThreatModel(name="coalition", description="", role="colluding", behaviour="malicious",
                        nodes=("lab-notes-text",))
    with pytest.raises(Trained):
        suite.run_audit(known, AuditPlan(), tmp_path)


@pytest.mark.parametrize("plan, field", [
    (AuditPlan(target="clinic-imagse-a"), "target"),
    (AuditPlan(extraction_anchors=(10, 291)), "extraction_anchors"),  # 300 public samples: 10 must stay held out
    (AuditPlan(extraction_anchors=(10, 140), protections=("none",)), None),
])
def test_the_plan_is_refused_before_the_audit_trains(plan, field, no_training, tmp_path):
    """Issue 17 (5): every check that needs no data runs before training."""
    server = ThreatModel(name="s", description="", role="server", behaviour="honest-but-curious")
    if field is None:
        with pytest.raises(Trained):
            suite.run_audit(server, plan, tmp_path)
        return
    with pytest.raises(ConfigError) as info:
        suite.run_audit(server, plan, tmp_path)
    assert info.value.field == field


def test_too_many_extraction_anchors_for_the_federation_are_refused_before_training(no_training, tmp_path, monkeypatch):
    import dataclasses

    from geofed_secure.config import DataSection, RunConfig

    small = RunConfig().replace(data=dataclasses.replace(DataSection(), anchors_per_class=3, eval_per_class=5))  # 80 public
    monkeypatch.setattr(suite, "run_config", lambda plan, epsilon=None, base=None: small)
    server = ThreatModel(name="s", description="", role="server", behaviour="honest-but-curious")
    with pytest.raises(ConfigError, match="80 public samples"):
        suite.run_audit(server, AuditPlan(extraction_anchors=(10, 100)), tmp_path)


def test_an_unknown_node_of_a_recorded_run_is_refused_before_anything(recorded_runs, no_training, tmp_path):
    threat_model = ThreatModel(name="curious", description="", role="node", behaviour="honest-but-curious",
                               nodes=("clinic-images-a",))  # a demo node, not one of the recorded tiny run's
    plan = AuditPlan(protections=(), epsilons=(), run=str(recorded_runs["none"]))
    with pytest.raises(ConfigError, match="clinic-images-a.*img-a"):
        suite.run_audit(threat_model, plan, tmp_path)


def test_the_cli_refuses_an_unknown_node_with_exit_2_before_training(no_training, tmp_path, capsys):
    path = tmp_path / "tm.toml"
    path.write_text('name = "x"\n[adversary]\nrole = "node"\nbehaviour = "malicious"\nnodes = ["clinic-imagse-a"]\n')
    assert main(["audit", "--threat-model", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "clinic-imagse-a" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\xff", None])
def test_a_binary_or_folder_threat_model_is_a_config_error(tmp_path, content):
    path = tmp_path / "tm.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError):
        load_threat_model(path)
    assert main(["audit", "--threat-model", str(path), "--out", str(tmp_path / "out")]) == 2
