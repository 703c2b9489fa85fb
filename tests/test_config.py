"""Configuration: TOML loading, validation errors that name the field, CLI overrides and error exits."""

from __future__ import annotations

import dataclasses
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
    ({"training": {"anchor_batch": 2}}, "training.anchor_batch"),
    ({"training": {"gram_scale_floor": 1.0}}, "training.gram_scale_floor"),
    ({"training": {"collapse_scale": -0.1}}, "training.collapse_scale"),
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


def test_with_overrides_changes_what_is_given_and_keeps_the_rest():
    # Prepare
    base = RunConfig()
    # Execute
    same = base.with_overrides()
    changed = base.with_overrides(rounds=2, seed=9, protocol="ckks", nodes="image,text,tabular")
    # Assert
    assert same == base
    assert (changed.federation.rounds, changed.federation.seed, changed.secure.protocol) == (2, 9, "ckks")
    assert changed.nodes == nodes_from_spec("image,text,tabular")
    assert (changed.model, changed.training, changed.privacy) == (base.model, base.training, base.privacy)
    assert changed.federation.mode == base.federation.mode
    with pytest.raises(ConfigError):
        base.with_overrides(rounds=0)


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


# -- issue 18: what was accepted at load time and failed late, or was never checked --------------------------------
FIVE = [{"id": f"n{i}", "modality": "text"} for i in range(5)]


@pytest.mark.parametrize("data, field", [
    ({"secure": {"threshold": 6}, "nodes": FIVE}, "secure.threshold"),  # more shares needed than holders exist
    ({"secure": {"threshold": 3}, "nodes": FIVE + [{"id": "n5", "modality": "dna"}]}, "secure.threshold"),  # 2t <= m
    ({"secure": {"neighbors": 8}, "nodes": FIVE}, "secure.neighbors"),  # degree above the node count
    ({"training": {"batch_size": 100_000_000}}, "training.batch_size"),
    ({"training": {"batch_size": 4000}}, "training.batch_size"),  # above data.max_pool: more than any node holds
    ({"model": {"rank": 100_000}}, "model.rank"),
    ({"training": {"local_steps": 10**9}}, "training.local_steps"),
    ({"federation": {"rounds": 10**9}}, "federation.rounds"),
    ({"federation": {"seed": -1}}, "federation.seed"),
    ({"federation": {"seed": 2**64}}, "federation.seed"),
    ({"federation": {"id": "../../escape"}}, "federation.id"),
    ({"federation": {"id": ".hidden"}}, "federation.id"),
    ({"federation": {"id": ""}}, "federation.id"),
    ({"nodes": [{"id": "..", "modality": "text"}]}, "nodes[0].id"),
    ({"training": {"max_inverse_uncertainty": float("inf")}}, "training.max_inverse_uncertainty"),
    ({"data": {"max_pool": 10**12}}, "data.max_pool"),
])
def test_out_of_range_values_are_refused_at_load_time(data, field):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, source="run.toml")
    assert info.value.field == field


def test_the_largest_accepted_values_still_load():
    config = config_from_dict({"federation": {"seed": 2**63 - 1, "id": "site-7.prod_A"}, "model": {"rank": 1024},
                               "training": {"batch_size": 2000}, "secure": {"threshold": 4, "neighbors": 4}})
    assert config.federation.seed == 2**63 - 1


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage\x81", b"[federation]\nid = \"\xe9\"\n"])
def test_a_binary_config_file_is_a_config_error(tmp_path, content):
    """Issue 18: binary garbage raised UnicodeDecodeError (a traceback and exit 1)."""
    path = tmp_path / "garbage.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="garbage.toml"):
        load_config(path)
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "o")]) == 2


def test_a_config_that_is_a_folder_is_a_config_error(tmp_path):
    """Issue 18: a directory raised IsADirectoryError."""
    with pytest.raises(ConfigError, match="not a file"):
        load_config(tmp_path)
    assert main(["run", "--config", str(tmp_path), "--out", str(tmp_path / "o")]) == 2


def test_preflight_checks_the_backbone_before_any_data(tiny_config, tiny_backbone_dir, tmp_path):
    from geofed_secure.config import preflight

    preflight(tiny_config)  # the tiny checkpoint has query/value linear layers of width 32
    missing = tiny_config.replace(model=dataclasses.replace(tiny_config.model, backbone=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError) as info:
        preflight(missing)
    assert info.value.field == "model.backbone"
    lacking = tiny_config.replace(model=dataclasses.replace(tiny_config.model, target_modules=("query", "qkv_proj")))
    with pytest.raises(ConfigError, match="qkv_proj.*query, value|qkv_proj.*key") as info:
        preflight(lacking)
    assert info.value.field == "model.target_modules"
    wide = tiny_config.replace(model=dataclasses.replace(tiny_config.model, rank=64))
    with pytest.raises(ConfigError, match="32") as info:
        preflight(wide)
    assert info.value.field == "model.rank"
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_bytes(b"\x00\xff not json")
    broken = tiny_config.replace(model=dataclasses.replace(tiny_config.model, backbone=str(tmp_path / "broken")))
    with pytest.raises(ConfigError) as info:
        preflight(broken)
    assert info.value.field == "model.backbone"
