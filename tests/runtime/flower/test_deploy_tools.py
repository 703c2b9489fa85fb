"""geofed deploy's pieces without starting Flower: certificates, the site's data on disk, the Flower app project, the
deployable apps' configuration, the command line (--dry-run), and the process stopper."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import safetensors.numpy
from conftest import with_sections
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Context, RecordDict
from flwr.cli.config_utils import load_and_validate

from geofed_secure.cli import main
from geofed_secure.config import NodeSpec
from geofed_secure.errors import ConfigError, DataError
from geofed_secure.runtime import build_federation
from geofed_secure.runtime.flower.apps import load_run_config, site_for
from geofed_secure.runtime.flower.certs import Certificates, make_certificates
from geofed_secure.runtime.flower.launch import (
    DeploymentError,
    Processes,
    prepare_loopback,
    run_loopback,
    write_app_project,
)
from geofed_secure.runtime.flower.sitedata import anchor_digests, load_modalities, save_modalities


def test_certificates_chain_to_their_ca_and_name_the_loopback_addresses(tmp_path):
    made = make_certificates(tmp_path / "certs")
    ca = x509.load_pem_x509_certificate(made.ca.read_bytes())
    server = x509.load_pem_x509_certificate(made.server_cert.read_bytes())
    ca.public_key().verify(server.signature, server.tbs_certificate_bytes, ec.ECDSA(server.signature_hash_algorithm))
    assert server.issuer == ca.subject
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert made.server_key.stat().st_mode & 0o077 == 0  # the key is its owner's only
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == ["ca.pem", "server.key", "server.pem"]  # no CA key
    assert Certificates.in_folder(tmp_path / "certs") == made
    with pytest.raises(ConfigError, match="already exists"):
        make_certificates(tmp_path / "certs")
    with pytest.raises(ConfigError, match="missing"):
        Certificates.in_folder(tmp_path)


def test_certificates_for_named_hosts(tmp_path):
    made = make_certificates(tmp_path, hosts=("superlink.example.org", "10.0.0.7"), days=30)
    server = x509.load_pem_x509_certificate(made.server_cert.read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["superlink.example.org"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    with pytest.raises(ConfigError, match="neither an IP address nor a DNS name"):
        make_certificates(tmp_path / "bad", hosts=("two words",))


def test_modalities_written_to_disk_load_back_equal(tiny_config, tiny_modalities, tmp_path):
    save_modalities(tmp_path, tiny_modalities)
    loaded = load_modalities(str(tmp_path), tiny_config)
    assert loaded.keys() == tiny_modalities.keys()
    for name, data in tiny_modalities.items():
        assert (loaded[name].modality, loaded[name].encoder_name, loaded[name].synthetic, loaded[name].anchor_digest) == \
               (data.modality, data.encoder_name, data.synthetic, data.anchor_digest)
        for part in ("pool", "anchors", "eval_anchors"):
            for field in ("tokens", "mask", "labels"):
                np.testing.assert_array_equal(getattr(getattr(loaded[name], part), field),
                                              getattr(getattr(data, part), field))
    # the server reads the public digests only
    assert anchor_digests(str(tmp_path), tiny_config) == {m: d.anchor_digest for m, d in tiny_modalities.items()}
    (tmp_path / "text.safetensors").unlink()
    with pytest.raises(DataError, match="text.safetensors is missing"):
        load_modalities(str(tmp_path), tiny_config)
    with pytest.raises(DataError, match="neither 'demo' nor a folder"):
        load_modalities(str(tmp_path / "nowhere"), tiny_config)


def _context(node_config, run_config):
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=run_config)


def test_a_site_is_built_from_its_node_config_and_the_run_config(tiny_config, tiny_modalities, tmp_path):
    save_modalities(tmp_path / "data", tiny_modalities)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(tiny_config.to_dict()))
    assert load_run_config(config_file) == tiny_config
    federation = build_federation(tiny_config, tiny_modalities)
    run_config = {"config": str(config_file), "data": str(tmp_path / "data")}
    site = site_for(_context({"node-id": "txt", "state-dir": str(tmp_path / "txt")}, run_config))
    assert site.node_id == "txt" and site.anchor_digest == federation.anchor_digest
    np.testing.assert_array_equal(site.data.train.tokens, federation.nodes["txt"].train.tokens)
    # a site's own copy of the configuration and its own data source win over the run configuration's
    elsewhere = {"node-id": "tab", "state-dir": str(tmp_path / "tab"), "config": str(config_file),
                 "data": str(tmp_path / "data")}
    assert site_for(_context(elsewhere, {})).node_id == "tab"
    with pytest.raises(ConfigError, match="state-dir"):
        site_for(_context({"node-id": "txt"}, run_config))
    with pytest.raises(ConfigError, match="not a node of federation"):
        site_for(_context({"node-id": "intruder", "state-dir": str(tmp_path)}, run_config))


def test_the_app_project_is_a_valid_flower_app(tmp_path):
    write_app_project(tmp_path, {"config": "/x/config.json", "data": "demo", "out-dir": "/x/server", "timeout": 60.0})
    config, _ = load_and_validate(tmp_path / "pyproject.toml")  # flwr run's own check, module lookup included
    assert config["tool"]["flwr"]["app"]["config"] == {"config": "/x/config.json", "data": "demo",
                                                       "out-dir": "/x/server", "timeout": 60.0}


def test_a_secure_plan_gives_the_server_public_keys_and_each_site_only_its_own(tiny_config, tmp_path):
    plan = prepare_loopback(with_sections(tiny_config, secure={"protocol": "masking"}), tmp_path / "a", insecure=True)
    run_config = (plan.app / "pyproject.toml").read_text()
    assert f'keys = "{plan.root / "keys" / "server"}"' in run_config
    public = json.loads((plan.root / "keys" / "server" / "public.json").read_text())
    assert sorted(public["identities"]) == ["img-a", "img-b", "tab", "txt"]
    assert sorted(p.name for p in (plan.root / "keys" / "server").iterdir()) == ["public.json"]  # no secret
    for node_id, argv in plan.supernodes.items():
        node_config = argv[argv.index("--node-config") + 1]
        assert f"keys='{plan.root / 'keys' / 'sites' / node_id}'" in node_config
        identity = plan.root / "keys" / "sites" / node_id / "identity.key"
        assert identity.stat().st_mode & 0o077 == 0  # the secret is readable by its owner only


def test_deploy_keys_writes_every_party_s_folder_and_never_over_old_keys(tiny_config, tmp_path, capsys):
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(tiny_config.to_dict()))
    assert main(["deploy", "keys", "--config", str(config_file), "--secure", "ckks", "--out", str(tmp_path / "k")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["protocol"] == "ckks" and result["sites"] == ["img-a", "img-b", "txt", "tab"]
    assert (tmp_path / "k" / "server" / "public.context").is_file()
    assert (tmp_path / "k" / "sites" / "tab" / "secret.context").is_file()
    assert main(["deploy", "keys", "--config", str(config_file), "--secure", "ckks", "--out", str(tmp_path / "k")]) == 2
    assert "never written over" in capsys.readouterr().err
    assert main(["deploy", "keys", "--config", str(config_file), "--secure", "none", "--out", str(tmp_path / "n")]) == 2
    assert "needs no keys" in capsys.readouterr().err


def test_a_remote_plan_is_not_started(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="--certs"):
        prepare_loopback(tiny_config, tmp_path / "b", superlink="10.0.0.7:9093")
    plan = prepare_loopback(tiny_config, tmp_path / "c", superlink="10.0.0.7:9093", insecure=True)
    assert "10.0.0.7:9093" in (plan.flwr_home / "config.toml").read_text()
    with pytest.raises(DeploymentError, match="only loopback plans"):
        run_loopback(plan)


def test_deploy_dry_run_writes_the_plan_and_prints_every_command(tiny_config, tmp_path, capsys):
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(tiny_config.to_dict()))
    out = tmp_path / "deployment"
    assert main(["deploy", "--config", str(config_file), "--sites", "2", "--rounds", "1", "--dry-run", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result["status"] == "prepared" and result["out"] == str(out)
    assert (out / "certs" / "ca.pem").is_file()  # TLS by default
    assert [n.id for n in load_run_config(out / "config.json").nodes] == ["img-a", "img-b"]
    assert "flower-superlink --ssl-certfile" in captured.err and captured.err.count("flower-supernode --root-certificates") == 4
    assert "--node-config \"node-id='img-b' state-dir=" in captured.err
    assert main(["deploy", "--config", str(config_file), "--sites", "5", "--dry-run", "--out", str(tmp_path / "x")]) == 2
    assert "--sites takes 1 to 4" in capsys.readouterr().err
    assert main(["deploy", "certs", "--out", str(tmp_path / "certs"), "--host", "127.0.0.1"]) == 0
    assert json.loads(capsys.readouterr().out)["ca"] == str(tmp_path / "certs" / "ca.pem")


def test_deploy_sites_and_nodes_shape_the_federation(tiny_config, tmp_path):
    from geofed_secure.runtime.flower.deploy import build_parser, resolve_config

    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(tiny_config.to_dict()))
    args = build_parser().parse_args(["--config", str(config_file), "--nodes", "image:2,text", "--secure", "none"])
    assert resolve_config(args).nodes == (NodeSpec(id="image-1", modality="image"), NodeSpec(id="image-2", modality="image"),
                                          NodeSpec(id="text-1", modality="text"))
    with pytest.raises(ConfigError, match="not both"):
        resolve_config(build_parser().parse_args(["--config", str(config_file), "--nodes", "text", "--sites", "1"]))


def test_stopping_ends_a_process_and_the_processes_it_started_in_their_own_session(tmp_path):
    spawn = ("import subprocess, sys, time; "
             "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True); "
             "print(child.pid, flush=True); time.sleep(120)")
    processes = Processes({})
    started = processes.start("parent", [sys.executable, "-c", spawn], tmp_path / "parent.log")
    deadline = time.monotonic() + 30
    while not started.log.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int(started.log.read_text().split()[0])
    processes.stop(grace=3)
    assert started.process.poll() is not None
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_a_simulation_plan_has_virtual_supernodes_and_no_site_processes(tiny_config, tmp_path):
    config = with_sections(tiny_config, secure={"protocol": "ckks"})
    plan = prepare_loopback(config, tmp_path / "sim", simulation=True)
    assert plan.supernodes == {} and plan.insecure and "--simulation" in plan.superlink
    assert "options.num-supernodes = 4" in (plan.flwr_home / "config.toml").read_text()
    run_config = (plan.app / "pyproject.toml").read_text()
    assert f'sites-dir = "{plan.root / "sites"}"' in run_config and f'site-keys = "{plan.root / "keys" / "sites"}"' in run_config
    with pytest.raises(ConfigError, match="takes no --superlink"):
        prepare_loopback(config, tmp_path / "x", simulation=True, superlink="10.0.0.7:9093")


def test_each_site_is_handed_only_its_own_share(tiny_config, tiny_modalities, tmp_path, capsys):
    from geofed_secure.runtime.flower.sitedata import load_site, save_modalities

    save_modalities(tmp_path / "data", tiny_modalities)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(tiny_config.to_dict()))
    assert main(["deploy", "split-data", "--config", str(config_file), "--data", str(tmp_path / "data"),
                 "--out", str(tmp_path / "split")]) == 0
    folders = json.loads(capsys.readouterr().out)["sites"]
    federation = build_federation(tiny_config, tiny_modalities)  # the shares as the simulator cuts them
    for node_id, folder in folders.items():
        data, digest = load_site(folder, node_id, tiny_config.federation.id)
        own = federation.nodes[node_id]
        assert digest == federation.anchor_digest
        assert np.array_equal(data.train.tokens, own.train.tokens) and np.array_equal(data.test.labels, own.test.labels)
        # nothing of another node: every private row in the folder is one of this node's own
        stored = safetensors.numpy.load_file(Path(folder) / "site.safetensors")
        assert {k.split(".")[0] for k in stored} == {"train", "test", "anchors"}
        assert len(stored["train.labels"]) == len(own.train) and len(stored["test.labels"]) == len(own.test)
    with pytest.raises(DataError, match="not 'img-a'"):  # a site handed another site's folder refuses it
        load_site(folders["tab"], "img-a", tiny_config.federation.id)
    plan = prepare_loopback(tiny_config, tmp_path / "deployment", data=str(tmp_path / "data"), insecure=True)
    for node_id, argv in plan.supernodes.items():
        assert f"data='{plan.root / 'site-data' / node_id}'" in argv[argv.index("--node-config") + 1]
