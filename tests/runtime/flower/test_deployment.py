"""Real Flower deployments on 127.0.0.1: a SuperLink, one SuperNode per site and ``flwr run`` as separate processes
(flwr 1.41's deployment engine), started and stopped by ``geofed deploy``'s launcher.

Each run costs about a minute here, most of it Flower's own machinery (a fresh ClientApp process per message,
importing torch; the SuperNodes poll every 3 s). So one deployment runs in the default suite (CI): secure
aggregation by pairwise masking, the product's default; the others are marked ``deployment``
(``python -m pytest -m deployment``). Every test is bounded (the launcher's timeout) and checks that nothing it
started is left running.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections import Counter

import numpy as np
import psutil
import pytest
import safetensors.numpy
from conftest import with_sections

from geofed_secure.config import NodeSpec, needed_modalities
from geofed_secure.errors import DataError
from geofed_secure.runtime import Simulator, Transcript
from geofed_secure.runtime.flower.certs import make_certificates
from geofed_secure.runtime.flower.launch import DeploymentError, prepare_loopback, run_loopback
from geofed_secure.runtime.flower.site import SESSION_FILE, STATE_FILE
from geofed_secure.runtime.flower.sitedata import save_modalities
from geofed_secure.server.checkpoint import CheckpointStore

# The simulator's process runs torch on one thread (tests/conftest.py); the sites' ClientApp processes must too for
# bit-identical floats: a different intra-op thread count sums in another order (differences ~1e-7).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
SITES = (NodeSpec(id="img-a", modality="image"), NodeSpec(id="txt", modality="text"))


def leftovers(flwr_home):
    """Processes still running with this deployment's FLWR_HOME (SuperLink, SuperNodes, SuperExecs, apps)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("FLWR_HOME") == str(flwr_home) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def no_leftovers():
    """Checks after the test that nothing of the deployments registered in it still runs (and ends what does)."""
    homes = []
    yield homes.append
    left = [p for home in homes for p in leftovers(home)]
    for process in left:
        process.kill()
    assert not left, f"processes left running: {[p.pid for p in left]}"


@pytest.mark.deployment
def test_a_loopback_deployment_gives_the_simulators_weights_bit_for_bit(tiny_config, tiny_modalities, tmp_path,
                                                                         no_leftovers):
    config = with_sections(tiny_config, federation={"rounds": 2}, nodes=SITES)
    modalities = {m: tiny_modalities[m] for m in needed_modalities(config)}
    save_modalities(tmp_path / "data", modalities)  # what the sites read: the same synthetic data, on disk
    reference = Simulator(config, modalities, tmp_path / "simulator").run()
    plan = prepare_loopback(config, tmp_path / "deployment", data=str(tmp_path / "data"), insecure=True,
                            message_timeout=120)
    no_leftovers(plan.flwr_home)
    result = run_loopback(plan, timeout=300, env=ONE_THREAD)
    final = safetensors.numpy.load_file(result.final)
    assert final.keys() == reference.global_state.keys()
    for key, value in reference.global_state.items():
        assert np.array_equal(value, final[key]), key
    flower = Transcript.load(result.out_dir / "transcript")  # the ServerApp's transcript, loadable as the audit loads it
    simulator = Transcript.load(tmp_path / "simulator" / "transcript")
    assert Counter(r.sha256 for r in flower.records) == Counter(r.sha256 for r in simulator.records)
    for node in SITES:
        assert (plan.root / "sites" / node.id / STATE_FILE).is_file()
    assert result.status["status"] == "completed" and set(result.status["round_seconds"]) == {"1", "2"}
    assert not leftovers(plan.flwr_home)


@pytest.mark.deployment
def test_a_tls_deployment_with_certificates_made_by_geofed(tiny_config, tiny_modalities, tmp_path, no_leftovers):
    config = with_sections(tiny_config, federation={"rounds": 1}, nodes=SITES)
    save_modalities(tmp_path / "data", {m: tiny_modalities[m] for m in needed_modalities(config)})
    certs = make_certificates(tmp_path / "certs")
    plan = prepare_loopback(config, tmp_path / "deployment", data=str(tmp_path / "data"), certs=certs,
                            message_timeout=120)
    no_leftovers(plan.flwr_home)
    result = run_loopback(plan, timeout=300, env=ONE_THREAD)
    assert result.final.is_file()
    assert f"https://127.0.0.1:{plan.port}" in (plan.logs / "superlink.log").read_text()
    assert all("--root-certificates" in argv for argv in plan.supernodes.values())


@pytest.mark.deployment
def test_a_failed_run_names_its_logs_and_stops_every_process(tiny_config, tiny_modalities, tmp_path, no_leftovers):
    config = with_sections(tiny_config, federation={"rounds": 1}, nodes=SITES)
    save_modalities(tmp_path / "partial", {"image": tiny_modalities["image"]})  # the text modality is missing
    with pytest.raises(DataError, match="text.safetensors is missing"):  # found while cutting the sites' shares
        prepare_loopback(config, tmp_path / "early", data=str(tmp_path / "partial"), insecure=True)
    save_modalities(tmp_path / "data", {m: tiny_modalities[m] for m in needed_modalities(config)})
    plan = prepare_loopback(config, tmp_path / "deployment", data=str(tmp_path / "data"), insecure=True,
                            message_timeout=60)
    (tmp_path / "data" / "text.safetensors").unlink()  # the ServerApp's copy loses a modality after the plan
    no_leftovers(plan.flwr_home)
    with pytest.raises(DeploymentError, match=r"the run failed: DataError: .*text.safetensors is missing.*run\.log"):
        run_loopback(plan, timeout=240, env=ONE_THREAD)
    assert not leftovers(plan.flwr_home)


def _masked_three_sites(tiny_config, tiny_modalities, tmp_path):
    """Three nodes (secure aggregation needs at least three) under masking for 2 rounds (a key set-up, then a steady
    round), their data written to ``tmp_path/data``, and the clear simulator's final state to compare with."""
    nodes = (*SITES, NodeSpec(id="tab", modality="tabular"))
    config = with_sections(tiny_config, federation={"rounds": 2}, nodes=nodes,
                           secure={"protocol": "masking", "rounds_per_epoch": 2, "ring_bits": 64})
    modalities = {m: tiny_modalities[m] for m in needed_modalities(config)}
    save_modalities(tmp_path / "data", modalities)
    reference = Simulator(with_sections(config, secure={"protocol": "none"}), modalities, tmp_path / "clear").run()
    return nodes, config, reference.global_state


def test_a_masked_loopback_deployment_gives_the_clear_model(tiny_config, tiny_modalities, tmp_path, no_leftovers):
    """Default suite: three SuperNodes run secagg-v1 through the SuperLink (keys made for the deployment, TLS off for
    speed); the ServerApp sees only masked vectors and ends with the simulator's clear model up to quantisation."""
    nodes, config, reference = _masked_three_sites(tiny_config, tiny_modalities, tmp_path)
    plan = prepare_loopback(config, tmp_path / "deployment", data=str(tmp_path / "data"), insecure=True,
                            message_timeout=120)
    no_leftovers(plan.flwr_home)
    result = run_loopback(plan, timeout=400, env=ONE_THREAD)
    final = safetensors.numpy.load_file(result.final)
    for key, value in reference.items():
        np.testing.assert_allclose(final[key], value, rtol=0, atol=1e-6, err_msg=key)
    transcript = Transcript.load(result.out_dir / "transcript")
    from_nodes = {type(m).__name__ for rec, m in transcript.messages() if rec.sender != "server"}
    assert from_nodes == {"KeyAdvertisement", "ShareBundle", "MaskedInput", "UnmaskResponse"}
    for node in nodes:  # each site's protocol session lived on its own disk between messages
        assert (plan.root / "sites" / node.id / SESSION_FILE).is_file()
    assert not leftovers(plan.flwr_home)


@pytest.mark.deployment
def test_flowers_simulation_engine_runs_the_same_federation(tiny_config, tiny_modalities, tmp_path, no_leftovers):
    """flwr's simulation engine: one SuperLink in simulation mode, one virtual SuperNode per node (Ray); masking."""
    nodes, config, reference = _masked_three_sites(tiny_config, tiny_modalities, tmp_path)
    plan = prepare_loopback(config, tmp_path / "simulation", data=str(tmp_path / "data"), simulation=True,
                            message_timeout=120)
    assert plan.supernodes == {} and "--simulation" in plan.superlink
    no_leftovers(plan.flwr_home)
    result = run_loopback(plan, timeout=400, env=ONE_THREAD)
    final = safetensors.numpy.load_file(result.final)
    for key, value in reference.items():
        np.testing.assert_allclose(final[key], value, rtol=0, atol=1e-6, err_msg=key)
    for node in nodes:  # the virtual SuperNodes kept each node's state in its own folder
        assert (plan.root / "sites" / node.id / SESSION_FILE).is_file()
    assert not leftovers(plan.flwr_home)


def _site_processes(plan, node_id):
    """The SuperNode of ``node_id`` and the processes serving it (its SuperExec and apps, on its Runtime API port)."""
    argv = plan.supernodes[node_id]
    port = argv[argv.index("--port") + 1]
    found = []
    for process in leftovers(plan.flwr_home):
        try:
            cmdline = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if ("flower-supernode" in cmdline and f"node-id='{node_id}'" in cmdline) or f":{port}" in cmdline:
            found.append(process)
    return found


def _kill_tree(process):
    for p in [*process.children(recursive=True), process]:
        try:
            p.kill()
        except psutil.Error:
            pass


@pytest.mark.deployment
def test_a_supernode_killed_mid_round_then_restarted(tiny_config, tiny_modalities, tmp_path, no_leftovers):
    """Real processes: tab's SuperNode and everything serving it are killed (SIGKILL) once round 2 has begun; round 2
    completes without it after the message timeout (the others sign the view without it); the SuperNode is then
    started again with the same node configuration and state directory, and tab is back in the sum by the last round
    (round 3 may start before the new SuperNode has registered)."""
    nodes = (*SITES, NodeSpec(id="img-b", modality="image"), NodeSpec(id="tab", modality="tabular"))
    config = with_sections(tiny_config, federation={"rounds": 4}, nodes=nodes, secure={"protocol": "masking"})
    save_modalities(tmp_path / "data", {m: tiny_modalities[m] for m in needed_modalities(config)})
    # the message timeout bounds each round trip, training included (four ClientApp processes on two cores)
    plan = prepare_loopback(config, tmp_path / "deployment", data=str(tmp_path / "data"), insecure=True,
                            message_timeout=90)
    no_leftovers(plan.flwr_home)
    results, errors = [], []

    def run():
        try:
            results.append(run_loopback(plan, timeout=600, env=ONE_THREAD))
        except Exception as exc:  # noqa: BLE001 (any failure is reported below, in the test's own thread)
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    index = plan.out_dir / "transcript" / "index.jsonl"
    restarted = None
    try:
        deadline = time.monotonic() + 500
        while not (index.is_file() and any(json.loads(line)["round"] == 2 for line in index.read_text().splitlines())):
            assert time.monotonic() < deadline and thread.is_alive(), f"round 2 never began: {errors}"
            time.sleep(0.2)
        victims = _site_processes(plan, "tab")
        assert victims
        for victim in victims:
            _kill_tree(victim)
        while CheckpointStore(plan.out_dir).latest_round() != 2:
            assert time.monotonic() < deadline and thread.is_alive(), f"round 2 did not complete without tab: {errors}"
            time.sleep(0.2)
        log = open(plan.logs / "supernode-tab-restarted.log", "wb")  # noqa: SIM115 (closed below)
        restarted = psutil.Popen(plan.supernodes["tab"], env={**os.environ, **plan.env, **ONE_THREAD}, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        thread.join(timeout=400)
    finally:
        if restarted is not None:
            _kill_tree(restarted)
            restarted.wait(timeout=30)  # reaped: no zombie left behind
            log.close()
        thread.join(timeout=60)
    assert not errors, errors
    history = CheckpointStore(plan.out_dir).load_latest().meta["history"]
    failures = [h["failures"] for h in history]
    assert failures[:2] == [{}, {"tab": "dropped"}] and failures[3] == {}, failures
    assert not leftovers(plan.flwr_home)
