"""Bring your own federation (issue 15): node tables in the config, the loader's checks, and the worked example end to end.

The worked example (examples/own_federation.py) writes a CSV table, a folder of PNGs and a JSONL file with tiny randomly
initialised Hugging Face checkpoints; the last test trains it with masking and DP through `geofed run` and audits it
through `geofed audit`, as a new user would.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from geofed_secure.config import config_from_dict, load_config
from geofed_secure.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]


def _example_module():
    spec = importlib.util.spec_from_file_location("own_federation_example", ROOT / "examples" / "own_federation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The worked example written once; tests copy its config and change one thing."""
    folder = tmp_path_factory.mktemp("own-federation")
    config = _example_module().write_example(folder)
    return folder, config


def _node(i: int, **extra):
    base = {"id": f"site-{i}", "modality": f"m{i}", "data": {"kind": "table", "path": f"d{i}.csv"},
            "anchors": {"kind": "table", "path": f"a{i}.csv", "label_column": "concept"},
            "encoder": {"kind": "builtin", "name": "numeric-columns"}}
    return base | extra


def _config(nodes=None, **sections):
    data = {"anchors": {"concepts": ["a", "b"]}, "nodes": nodes or [_node(i) for i in range(3)]} | sections
    return config_from_dict(data)


# ------------------------------------------------------------------------------------------------------------------
# the config
# ------------------------------------------------------------------------------------------------------------------


def test_own_nodes_parse_with_free_modality_names_and_label_sets():
    config = _config([_node(0, labels=["low", "high"]), _node(1), _node(2, modality="m1")])
    assert [n.modality for n in config.nodes] == ["m0", "m1", "m1"]
    assert config.nodes[0].data.kind == "table" and config.nodes[0].encoder.name == "numeric-columns"
    assert config.nodes[0].labels == ("low", "high") and config.anchors.concepts == ("a", "b")


@pytest.mark.parametrize("change, field", [
    (lambda n: n[0].pop("anchors"), "nodes[0].anchors"),
    (lambda n: n[1].pop("encoder"), "nodes[1].encoder"),
    (lambda n: n[0]["data"].update(kind="xls"), "nodes[0].data.kind"),
    (lambda n: n[0]["data"].update(path=""), "nodes[0].data.path"),
    (lambda n: n[0]["data"].update(colour="red"), "nodes[0].data.colour"),
    (lambda n: n[0]["encoder"].update(kind="hf"), "nodes[0].encoder.path"),
    (lambda n: n[0]["encoder"].update(kind="callable"), "nodes[0].encoder.factory"),
    (lambda n: n[0]["encoder"].update(kind="callable", factory="no_colon"), "nodes[0].encoder.factory"),
    (lambda n: n[0]["encoder"].update(name="resnet"), "nodes[0].encoder.name"),
    (lambda n: n[0]["encoder"].update(layout="cls"), "nodes[0].encoder.layout"),
    (lambda n: n[0]["encoder"].update(kind="precomputed"), "nodes[0].encoder.kind"),
    (lambda n: n[0].update(labels=["only"]), "nodes[0].labels"),
    (lambda n: n[0].update(labels=["x", "x"]), "nodes[0].labels"),
    (lambda n: n[0].update(modality="../up"), "nodes[0].modality"),
    (lambda n: n[0].update(paired_modality="text"), "nodes[0].paired_data"),
    (lambda n: n[0].update(paired_modality="m0", paired_data={"kind": "table", "path": "p.csv"},
                           paired_encoder={"kind": "builtin", "name": "numeric-columns"}), "nodes[0].paired_modality"),
    (lambda n: n[0].update(paired_modality="m9", paired_data={"kind": "table", "path": "p.csv"},
                           paired_encoder={"kind": "hf"}), "nodes[0].paired_encoder.path"),
    (lambda n: [n[2].pop(k) for k in ("data", "anchors", "encoder")] and n[2].update(modality="image"), "nodes[2].data"),
])
def test_bad_own_node_tables_name_the_field(change, field):
    nodes = [_node(i) for i in range(3)]
    change(nodes)
    with pytest.raises(ConfigError) as info:
        _config(nodes)
    assert info.value.field == field, str(info.value)


def test_an_own_bridge_nodes_paired_modality_is_not_a_pool_to_load():
    from geofed_secure.config import needed_modalities

    paired = {"paired_modality": "px", "paired_data": {"kind": "table", "path": "p.csv"},
              "paired_encoder": {"kind": "builtin", "name": "numeric-columns"}}
    assert needed_modalities(_config([_node(0, **paired), _node(1), _node(2)])) == ["m0", "m1", "m2"]


@pytest.mark.parametrize("concepts", [[], ["one"], ["a", "a"], ["a", ""]])
def test_concepts_must_be_named(concepts):
    with pytest.raises(ConfigError) as info:
        _config(anchors={"concepts": concepts})
    assert info.value.field == "anchors.concepts"


def test_relative_paths_are_read_from_the_config_files_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    toml = tmp_path / "sub" / "fed.toml"
    toml.write_text('[anchors]\nconcepts = ["a", "b"]\n' + "".join(
        f'[[nodes]]\nid = "s{i}"\nmodality = "m"\ndata = {{ kind = "table", path = "d{i}.csv" }}\n'
        f'anchors = {{ kind = "table", path = "/abs/a.csv" }}\nencoder = {{ kind = "hf", path = "models/enc" }}\n'
        for i in range(3)))
    config = load_config(toml)
    assert config.nodes[1].data.path == str(tmp_path / "sub" / "d1.csv")
    assert config.nodes[1].anchors.path == "/abs/a.csv"
    assert config.nodes[1].encoder.path == str(tmp_path / "sub" / "models" / "enc")


# ------------------------------------------------------------------------------------------------------------------
# the loader (geofed_secure.inputs) on the worked example's files
# ------------------------------------------------------------------------------------------------------------------


def _cached(config, tmp_path):
    return config.replace(data=dataclasses.replace(config.data, cache_dir=str(tmp_path / "cache")))


def test_example_loads_each_node_with_its_own_rows_labels_and_anchors(example, tmp_path):
    from geofed_secure.inputs import load_modalities
    from geofed_secure.runtime import build_federation

    _, toml = example
    config = _cached(load_config(toml), tmp_path)
    modalities = load_modalities(config)
    assert sorted(modalities) == ["drawing", "measurements", "report"]
    for data in modalities.values():
        assert len(data.anchors) == 18 and len(data.eval_anchors) == 12  # 10 per concept, the last 4 held out
        assert data.anchors.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
        assert data.owners and len(data.pool) == 150
    fed = build_federation(config, modalities)
    registry = fed.nodes["registry-site"]
    assert registry.n_classes == 2 and not registry.labels_are_concepts
    assert fed.nodes["imaging-site"].n_classes == 3 and fed.nodes["imaging-site"].labels_are_concepts
    assert len(registry.train) + len(registry.test) == 150
    # the feature cache holds every encoded set: a second load encodes nothing
    from geofed_secure.encoders import FeatureCache

    before = sorted(p.name for p in FeatureCache(config.data.cache_dir).root.glob("*.safetensors"))
    again = load_modalities(config)
    assert sorted(p.name for p in FeatureCache(config.data.cache_dir).root.glob("*.safetensors")) == before
    np.testing.assert_array_equal(again["report"].pool.tokens, modalities["report"].pool.tokens)


def _rewrite(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


def _copy_example(example, tmp_path) -> Path:
    import shutil

    folder, _ = example
    shutil.copytree(folder, tmp_path / "ex", ignore=shutil.ignore_patterns("run", "audit"))
    return tmp_path / "ex"


def test_a_concept_order_that_differs_between_modalities_is_refused_and_named(example, tmp_path):
    from geofed_secure.inputs import load_modalities

    folder = _copy_example(example, tmp_path)
    anchors = folder / "report-site" / "anchors.jsonl"
    anchors.write_text("\n".join(reversed(anchors.read_text().splitlines())) + "\n")  # triangles first, circles last
    with pytest.raises(DataError, match=r"report-site \(report\) follow another concept order.*position 0 is concept "
                                        r"'triangle' there but 'circle'"):
        load_modalities(_cached(load_config(folder / "federation.toml"), tmp_path))


def test_anchors_missing_a_concept_and_unknown_labels_are_refused(example, tmp_path):
    from geofed_secure.inputs import load_modalities

    folder = _copy_example(example, tmp_path)
    table = folder / "registry-site" / "anchors.csv"
    table.write_text("\n".join(line for line in table.read_text().splitlines() if not line.endswith(",triangle")) + "\n")
    config = _cached(load_config(folder / "federation.toml"), tmp_path)
    with pytest.raises(DataError, match=r"no anchor of concept\(s\) \['triangle'\]"):
        load_modalities(config)
    _rewrite(folder / "federation.toml", 'labels = ["small", "large"]', 'labels = ["small", "medium"]')
    with pytest.raises(DataError, match=r"label 'large'.*not in nodes\[2\].labels"):
        load_modalities(_cached(load_config(folder / "federation.toml"), tmp_path))


def test_a_checkpoint_that_is_not_on_disk_is_refused_before_anything_is_encoded(example, tmp_path):
    from geofed_secure.inputs import load_modalities

    folder = _copy_example(example, tmp_path)
    _rewrite(folder / "federation.toml", 'path = "models/text-encoder"', 'path = "bert-base-uncased"')
    with pytest.raises(DataError, match="nothing is downloaded"):
        load_modalities(_cached(load_config(folder / "federation.toml"), tmp_path))


# ------------------------------------------------------------------------------------------------------------------
# end to end: geofed run (masking + DP), then geofed audit
# ------------------------------------------------------------------------------------------------------------------


def test_worked_example_trains_with_masking_and_dp_then_audits(example, tmp_path, capsys):
    from geofed_secure.cli import main

    folder, toml = example
    cache = str(tmp_path / "cache")
    assert main(["run", "--config", str(toml), "--out", str(tmp_path / "run"), "--cache-dir", cache, "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["status"] == "ok"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["secure"]["protocol"] == "masking" and summary["config"]["privacy"]["epsilon"] == 8.0
    final = summary["rounds"][-1]
    assert set(final["nodes"]) == {"imaging-site", "report-site", "registry-site"}
    assert all(n["failure"] is None for n in final["nodes"].values())  # every site's upload was aggregated
    spent = summary["privacy"]["nodes"]
    assert set(spent) == set(final["nodes"]) and all(0 < n["epsilon"] <= 8.0 for n in spent.values())
    assert (tmp_path / "run" / "final" / "global_adapters.safetensors").is_file()

    plan = folder / "audit-plan.toml"
    assert main(["audit", "--config", str(toml), "--threat-model", str(ROOT / "threat_models" / "hbc-server.toml"),
                 "--plan", str(plan), "--out", str(tmp_path / "audit"), "--cache-dir", cache, "--json"]) == 0
    report = json.loads((tmp_path / "audit" / "report.json").read_text())
    assert report["plan"]["target"] == "registry-site" and report["results"]
    assert all("power" in r for r in report["results"])


def test_a_deployed_site_reads_only_its_own_records_and_the_public_anchors(example, tmp_path):
    """A Flower site of an own federation builds its node from its own files: the other sites' private records may be
    absent from its machine. It gets the same node and the same anchor commitment as the one-process build."""
    import shutil

    from geofed_secure.inputs import load_modalities
    from geofed_secure.runtime import build_federation
    from geofed_secure.runtime.flower.sitedata import DEMO, anchor_count, anchor_digests
    from geofed_secure.runtime.flower.sitedata import load_modalities as site_modalities

    full_config = _cached(load_config(example[1]), tmp_path)
    full = build_federation(full_config, load_modalities(full_config))
    folder = _copy_example(example, tmp_path)
    shutil.rmtree(folder / "imaging-site" / "records")
    (folder / "report-site" / "records.jsonl").unlink()
    config = _cached(load_config(folder / "federation.toml"), tmp_path)
    from geofed_secure.data.anchors import AnchorManifest

    manifest = AnchorManifest(per_modality=anchor_digests(DEMO, config))
    assert manifest.digest == full.anchor_digest and anchor_count(DEMO, config) == 18
    site = build_federation(config, site_modalities(DEMO, config, only=["registry-site"]), only=["registry-site"],
                            manifest=manifest)
    assert list(site.nodes) == ["registry-site"] and site.anchor_digest == full.anchor_digest
    mine, reference = site.nodes["registry-site"], full.nodes["registry-site"]
    for part in ("train", "test", "anchors"):
        np.testing.assert_array_equal(getattr(mine, part).tokens, getattr(reference, part).tokens)
        np.testing.assert_array_equal(getattr(mine, part).labels, getattr(reference, part).labels)
    with pytest.raises(DataError, match="imaging-site.*does not exist|records"):
        load_modalities(config)  # the one-process build needs every site's records


def test_an_own_config_survives_its_json_round_trip(example):
    """config.json in a run folder (resume) and the Flower run config carry the node tables."""
    config = load_config(example[1])
    assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_an_own_bridge_node_holds_two_modalities_row_by_row(example, tmp_path):
    """Item 4 of issue 15: a node may hold several modalities. Its paired file's row i is the same sample as its data's
    row i (the labels must agree); the intra-node contrastive loss trains on those pairs."""
    from geofed_secure.inputs import load_modalities
    from geofed_secure.runtime import Simulator, build_federation

    module = _example_module()
    folder = _copy_example(example, tmp_path)
    rng = np.random.default_rng(7)
    concepts = [module.CONCEPTS[i % 3] for i in range(60)]
    module.write_texts(folder / "bridge-site" / "records.jsonl", concepts, rng, key="shape")
    module.write_table(folder / "bridge-site" / "paired.csv", concepts, rng, key="shape", task=False)
    (folder / "federation.toml").write_text((folder / "federation.toml").read_text().replace("epsilon = 8.0", "epsilon = 0.0")
                                            + '''
[[nodes]]
id = "bridge-site"
modality = "report"
paired_modality = "measurements"
data = { kind = "jsonl", path = "bridge-site/records.jsonl", label_column = "shape" }
paired_data = { kind = "table", path = "bridge-site/paired.csv", label_column = "shape" }
anchors = { kind = "jsonl", path = "report-site/anchors.jsonl", label_column = "concept" }
encoder = { kind = "hf", path = "models/text-encoder", max_length = 12 }
paired_encoder = { kind = "builtin", name = "numeric-columns" }
''')
    config = _cached(load_config(folder / "federation.toml"), tmp_path)
    modalities = load_modalities(config)
    fed = build_federation(config, modalities)
    bridge = fed.nodes["bridge-site"]
    assert bridge.paired_train is not None and len(bridge.paired_train) == len(bridge.train) == 48
    np.testing.assert_array_equal(bridge.paired_train.labels, bridge.train.labels)
    assert bridge.paired_train.dim == modalities["measurements"].pool.dim  # the paired encoder's width
    result = Simulator(config.replace(federation=dataclasses.replace(config.federation, rounds=1)), modalities,
                       tmp_path / "run").run()
    assert result.summary["rounds"][-1]["nodes"]["bridge-site"]["failure"] is None

    paired = folder / "bridge-site" / "paired.csv"
    lines = paired.read_text().splitlines()
    lines[1], lines[2] = lines[2], lines[1]  # rows 0 and 1 (a circle and a square) swap: no longer the same samples
    paired.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="row 0 is labelled 'square' there but 'circle' in data"):
        load_modalities(config)


def test_precomputed_features_and_the_builtin_image_encoder_are_nodes_too(example, tmp_path):
    """Records that already are token features (encoder kind 'precomputed'), and an image folder through the demo's
    own image encoder (one image size)."""
    from geofed_secure.inputs import load_modalities

    folder = _copy_example(example, tmp_path)
    rng = np.random.default_rng(3)
    labels = np.array(["small", "large"])[rng.integers(0, 2, 150)]
    np.savez(folder / "registry-site" / "records.npz", tokens=rng.normal(size=(150, 3, 8)).astype(np.float32), labels=labels)
    concepts = np.repeat(["circle", "square", "triangle"], 10)
    np.savez(folder / "registry-site" / "anchors.npz", tokens=rng.normal(size=(30, 3, 8)).astype(np.float32), labels=concepts)
    text = (folder / "federation.toml").read_text()
    text = text.replace('data = { kind = "table", path = "registry-site/records.csv", label_column = "size" }',
                        'data = { kind = "features", path = "registry-site/records.npz" }')
    text = text.replace('anchors = { kind = "table", path = "registry-site/anchors.csv", label_column = "concept" }',
                        'anchors = { kind = "features", path = "registry-site/anchors.npz" }')
    text = text.replace('encoder = { kind = "builtin", name = "numeric-columns" }', 'encoder = { kind = "precomputed" }')
    text = text.replace('encoder = { kind = "hf", path = "models/image-encoder", layout = "patch" }',
                        'encoder = { kind = "builtin", name = "image" }')
    (folder / "federation.toml").write_text(text)
    modalities = load_modalities(_cached(load_config(folder / "federation.toml"), tmp_path))
    assert modalities["measurements"].pool.tokens.shape == (150, 3, 8)
    np.testing.assert_array_equal(modalities["measurements"].pool.labels, (labels == "large").astype(np.int64))
    assert modalities["drawing"].pool.dim == 1280 and modalities["drawing"].encoder_name.startswith("efficientnet")


def test_the_config_accepts_exactly_the_builtin_encoders_the_encoders_package_builds():
    from geofed_secure.config import BUILTIN_ENCODERS as accepted
    from geofed_secure.encoders.spec import BUILTIN_ENCODERS as built

    assert set(accepted) == set(built)
