"""Configuration: TOML loading, validation errors that name the field, CLI overrides and error exits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geofed_secure.cli import main
from geofed_secure.config import RunConfig, config_from_dict, load_config, nodes_from_spec
from geofed_secure.data.features import TokenFeatures
from geofed_secure.errors import ConfigError, DataError


def test_shipped_example_is_the_default():
    assert load_config("examples/demo.toml") == RunConfig()


@pytest.mark.parametrize("data, field", [
    ({"training": {"lamda_geo": 1.0}}, "training.lamda_geo"),
    ({"training": {"lambda_geo": "high"}}, "training.lambda_geo"),
    ({"training": {"lambda_geo": -1.0}}, "training.lambda_geo"),
    ({"model": {"magnitude": "global"}}, "model.magnitude"),
    ({"model": {"rank": 0}}, "model.rank"),
    ({"federation": {"rounds": 0}}, "federation.rounds"),
    ({"federation": {"mode": "p2p"}}, "federation.mode"),
    ({"nodes": [{"id": "a", "modality": "audio"}]}, "nodes[0].modality"),
    ({"nodes": [{"id": "a"}]}, "nodes[0].modality"),
    ({"nodes": [{"id": "a", "modality": "text"}, {"id": "a", "modality": "dna"}]}, "nodes[1].id"),
    ({"nodes": [{"id": "bad id", "modality": "text"}]}, "nodes[0].id"),
    ({"nodes": [{"id": "a", "modality": "text", "paired_modality": "text"}]}, "nodes[0].paired_modality"),
    ({"surprise": {}}, "surprise"),
    ({"secure": {"neighbors": 2, "colluders": 2}}, "secure.colluders"),
    ({"secure": {"threshold": 3, "colluders": 1}}, "secure.threshold"),
])
def test_bad_config_names_the_field(data, field):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, source="run.toml")
    assert info.value.field == field
    assert "run.toml" in str(info.value)


def test_load_config_reports_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[training\nlr = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_nodes_spec():
    nodes = nodes_from_spec("image:2, text,dna")
    assert [n.modality for n in nodes] == ["image", "image", "text", "dna"]
    assert len({n.id for n in nodes}) == 4
    for bad in ("audio", "image:x", "image:0", ""):
        with pytest.raises(ConfigError):
            nodes_from_spec(bad)


def test_nan_and_misshaped_features_are_refused():
    tokens = np.zeros((3, 2, 4), np.float32)
    mask = np.ones((3, 2), bool)
    labels = np.zeros(3, np.int64)
    tokens[1, 0, 0] = np.nan
    with pytest.raises(DataError, match="1 sample"):
        TokenFeatures(tokens, mask, labels)
    with pytest.raises(DataError, match="mask"):
        TokenFeatures(np.zeros((3, 2, 4), np.float32), np.ones((3, 3), bool), labels)
    with pytest.raises(DataError, match="3-D"):
        TokenFeatures(np.zeros((3, 4), np.float32), mask, labels)


def test_cli_errors_exit_2_with_the_field(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[nodes]]\nid = "a"\nmodality = "audio"\n')
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nodes[0].modality" in err and "audio" in err and str(bad) in err
    assert main(["run", "--nodes", "image,sonar", "--out", str(tmp_path / "o")]) == 2
    assert "sonar" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no config.json" in capsys.readouterr().err
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(RunConfig().to_dict()))
    assert main(["run", "--resume", str(run_dir), "--lambda-geo", "0"]) == 2
    assert "--lambda-geo" in capsys.readouterr().err
