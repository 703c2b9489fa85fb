"""The Flower driver runs the simulator's round: same global weights bit for bit, same transcript records.

The apps are the real Flower ServerApp/ClientApp objects; messages go through Flower's own serialisation and the
ClientApp is called afresh for every message (as a SuperNode runs it), so the node survives only in its site's
state directory.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from conftest import with_sections

from geofed_secure.errors import ConfigError, GeofedError
from geofed_secure.runtime import Simulator, Transcript, backbone_factory, build_federation
from geofed_secure.runtime.flower.app import QUERY, make_client_app, run_federation
from geofed_secure.runtime.flower.local import InProcessGrid, server_identity
from geofed_secure.runtime.flower.site import STATE_FILE, Site
from geofed_secure.runtime.simulator import server_model_and_initial_state

FLOWER_IDS = {"img-a": 101, "img-b": 202, "txt": 303, "tab": 404}


def flower_run(config, modalities, tmp_path, *, drop=None, node_configs=None):
    federation = build_federation(config, modalities)
    make_backbone = backbone_factory(config)

    def site_for(context):
        node_id = context.node_config["node-id"]
        return Site(config, node_id, federation.nodes[node_id], anchor_digest=federation.anchor_digest,
                    state_dir=tmp_path / "sites" / node_id, make_backbone=make_backbone)

    app = make_client_app(site_for)
    configs = node_configs or {n.id: {"node-id": n.id} for n in config.nodes}
    grid = InProcessGrid({FLOWER_IDS[k]: (app, c) for k, c in configs.items()}, drop=drop)
    _, initial = server_model_and_initial_state(config, make_backbone)
    with server_identity():
        return run_federation(grid, config, anchor_digest=federation.anchor_digest, initial_state=initial,
                              out_dir=tmp_path / "server")


def test_flower_driver_gives_the_simulators_weights_bit_for_bit(tiny_config, tiny_modalities, tmp_path):
    config = with_sections(tiny_config, federation={"rounds": 2})
    reference = Simulator(config, tiny_modalities, tmp_path / "simulator").run()
    final = flower_run(config, tiny_modalities, tmp_path)
    assert final.keys() == reference.global_state.keys()
    for key, value in reference.global_state.items():
        assert np.array_equal(value, final[key]), key
    # the same messages crossed the wire (the simulator interleaves broadcast and answer per node, Flower sends the
    # cohort's broadcasts first): equal as a multiset of record digests
    flower = Transcript.load(tmp_path / "server" / "transcript")
    simulator = Transcript.load(tmp_path / "simulator" / "transcript")
    assert Counter(r.sha256 for r in flower.records) == Counter(r.sha256 for r in simulator.records)
    for node_id in FLOWER_IDS:  # each site kept its node on its own disk
        assert (tmp_path / "sites" / node_id / STATE_FILE).is_file()


def test_a_lost_message_is_a_dropout_as_in_the_simulator(tiny_config, tiny_modalities, tmp_path):
    config = with_sections(tiny_config, federation={"rounds": 2})

    def lose_txt_round_2(stage, round_, node_id):
        if stage == "broadcast" and round_ == 2 and node_id == "txt":
            raise GeofedError("offline")

    reference = Simulator(config, tiny_modalities, tmp_path / "simulator", fault_hook=lose_txt_round_2).run()
    lost = lambda m: m.metadata.message_type != QUERY and m.metadata.group_id == "2" and m.metadata.dst_node_id == 303
    final = flower_run(config, tiny_modalities, tmp_path, drop=lost)
    for key, value in reference.global_state.items():
        assert np.array_equal(value, final[key]), key


def test_discovery_refuses_a_supernode_that_claims_an_unknown_or_taken_node(tiny_config, tiny_modalities, tmp_path):
    config = with_sections(tiny_config, federation={"rounds": 1})
    wrong = {"img-a": {"node-id": "img-a"}, "img-b": {"node-id": "intruder"}, "txt": {"node-id": "txt"},
             "tab": {"node-id": "tab"}}
    with pytest.raises(ConfigError, match="intruder"):
        flower_run(config, tiny_modalities, tmp_path / "a", node_configs=wrong)
    twice = dict(wrong, **{"img-b": {"node-id": "img-a"}})
    with pytest.raises(ConfigError, match="both say they are node 'img-a'"):
        flower_run(config, tiny_modalities, tmp_path / "b", node_configs=twice)


def test_secure_aggregation_is_refused_on_the_flower_driver_until_it_is_built(tiny_config, tiny_modalities, tmp_path):
    config = with_sections(tiny_config, federation={"rounds": 1}, secure={"protocol": "masking"})
    with pytest.raises(ConfigError, match="does not run on the Flower driver yet"):
        flower_run(config, tiny_modalities, tmp_path)


def test_a_site_refuses_a_node_id_its_federation_does_not_have(tiny_config, tiny_modalities, tmp_path):
    federation = build_federation(tiny_config, tiny_modalities)
    with pytest.raises(ConfigError, match="not a node of federation"):
        Site(tiny_config, "nobody", federation.nodes["txt"], anchor_digest=federation.anchor_digest,
             state_dir=tmp_path, make_backbone=backbone_factory(tiny_config))


def test_the_server_app_never_writes_over_a_run_already_in_its_folder(tiny_config, tiny_modalities, tmp_path):
    from geofed_secure.errors import OutputFolderError

    config = with_sections(tiny_config, federation={"rounds": 1})
    flower_run(config, tiny_modalities, tmp_path)
    before = (tmp_path / "server" / "transcript" / "messages.bin").read_bytes()
    with pytest.raises(OutputFolderError, match="already holds a run"):
        flower_run(config, tiny_modalities, tmp_path)
    assert (tmp_path / "server" / "transcript" / "messages.bin").read_bytes() == before
