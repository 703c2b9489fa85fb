"""The Flower driver runs the simulator's round: same global weights bit for bit, same transcript records.

The apps are the real Flower ServerApp/ClientApp objects; messages go through Flower's own serialisation and the
ClientApp is called afresh for every message (as a SuperNode runs it), so the node survives only in its site's
state directory.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import with_sections

from geofed_secure.errors import CheckpointError, ConfigError, GeofedError, OutputFolderError, ProtocolAborted
from geofed_secure.runtime import Simulator, Transcript, backbone_factory, build_federation
from geofed_secure.runtime.flower.app import QUERY, SECAGG, make_client_app, run_federation
from geofed_secure.runtime.flower.local import InProcessGrid, server_identity
from geofed_secure.runtime.flower.site import SESSION_FILE, STATE_FILE, Site, recorded_anchor_digest
from geofed_secure.runtime.round import SilentReporter
from geofed_secure.runtime.secure.keys import write_keys
from geofed_secure.runtime.simulator import server_model_and_initial_state
from geofed_secure.server.checkpoint import CheckpointStore

FLOWER_IDS = {"img-a": 101, "img-b": 202, "txt": 303, "tab": 404}


class CountingGrid(InProcessGrid):
    """Counts message round trips (calls of send_and_receive) per round (group id)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.trips = Counter()
        self.sent = Counter()  # (message type, destination Flower id) -> messages

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.trips[messages[0].metadata.group_id] += 1
        self.sent.update((m.metadata.message_type, m.metadata.dst_node_id) for m in messages)
        return super().send_and_receive(messages, timeout=timeout)


def flower_run(config, modalities, tmp_path, *, drop=None, node_configs=None, grid_out=None, resume=False, reporter=None,
               grid_class=None):
    federation = build_federation(config, modalities)
    make_backbone = backbone_factory(config)
    secure = config.secure.protocol != "none"
    if secure and not (tmp_path / "keys").is_dir():
        write_keys(config, tmp_path / "keys")

    def site_for(context):
        node_id = context.node_config["node-id"]
        return Site(config, node_id, federation.nodes.get(node_id), anchor_digest=federation.anchor_digest,
                    state_dir=tmp_path / "sites" / node_id, make_backbone=make_backbone,
                    keys_dir=tmp_path / "keys" / "sites" / node_id if secure else None)

    app = make_client_app(site_for)
    configs = node_configs or {n.id: {"node-id": n.id} for n in config.nodes}
    grid = (grid_class or CountingGrid)({FLOWER_IDS[k]: (app, c) for k, c in configs.items()}, drop=drop)
    if grid_out is not None:
        grid_out.append(grid)
    _, initial = server_model_and_initial_state(config, make_backbone)
    n_anchors = len(next(iter(federation.nodes.values())).anchors)
    with server_identity():
        return run_federation(grid, config, anchor_digest=federation.anchor_digest, initial_state=initial,
                              out_dir=tmp_path / "server", n_anchors=n_anchors,
                              keys_dir=tmp_path / "keys" / "server" if secure else None, resume=resume, reporter=reporter)


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


@pytest.fixture(scope="module")
def clear_reference(tiny_config, tiny_modalities, tmp_path_factory):
    config = with_sections(tiny_config, federation={"rounds": 3})
    return Simulator(config, tiny_modalities, tmp_path_factory.mktemp("clear")).run().global_state


def test_masking_over_flower_gives_the_clear_model_in_two_round_trips_per_steady_round(tiny_config, tiny_modalities,
                                                                                      tmp_path, clear_reference):
    config = with_sections(tiny_config, federation={"rounds": 3}, secure={"protocol": "masking", "rounds_per_epoch": 2,
                                                                          "ring_bits": 64})
    grids = []
    final = flower_run(config, tiny_modalities, tmp_path, grid_out=grids)
    for key, value in clear_reference.items():  # the same model up to the 64-bit ring's quantisation
        np.testing.assert_allclose(final[key], value, rtol=0, atol=1e-6, err_msg=key)
    # round 1 sets keys up (broadcast+RoundStart -> KeyAdvertisement, roster -> shares, deliveries -> masked input,
    # unmask); round 2 reuses them: broadcast+RoundStart -> MaskedInput, unmask; round 3 starts the next epoch
    assert grids[0].trips == {"discovery": 1, "1": 4, "2": 2, "3": 4}
    transcript = Transcript.load(tmp_path / "server" / "transcript")
    node_kinds = {type(m).__name__ for rec, m in transcript.messages() if rec.sender != "server"}
    assert node_kinds == {"KeyAdvertisement", "ShareBundle", "MaskedInput", "UnmaskResponse"}  # never a NodeUpdate
    digest = build_federation(config, tiny_modalities).anchor_digest
    for node_id in FLOWER_IDS:  # each site kept its keys between messages on its own disk, readable by it only
        session = tmp_path / "sites" / node_id / SESSION_FILE
        assert session.is_file() and session.stat().st_mode & 0o077 == 0
        assert recorded_anchor_digest(tmp_path / "sites" / node_id) == digest  # protocol steps load no data for it
    # the ServerApp's folder is a recorded run geofed audit reads: the honest-but-curious server holds masked vectors
    from geofed_secure.audit.recorded_run import audit_recorded_run
    from geofed_secure.audit.threat_model import load_threat_model

    threat_model = load_threat_model(Path(__file__).resolve().parents[3] / "threat_models" / "hbc-server.toml")
    audited = audit_recorded_run(threat_model, tmp_path / "server")
    assert audited.protocol == "masking" and "MaskedInput" in audited.inventory["types"]
    assert "NodeUpdate" not in audited.inventory["types"]


def test_ckks_over_flower_gives_the_clear_model_in_two_round_trips(tiny_config, tiny_modalities, tmp_path,
                                                                   clear_reference):
    config = with_sections(tiny_config, federation={"rounds": 3}, secure={"protocol": "ckks", "clip": 100.0})
    grids = []
    final = flower_run(config, tiny_modalities, tmp_path, grid_out=grids)
    for key, value in clear_reference.items():
        np.testing.assert_allclose(final[key], value, rtol=0, atol=1e-5, err_msg=key)
    assert grids[0].trips == {"discovery": 1, "1": 2, "2": 2, "3": 2}
    transcript = Transcript.load(tmp_path / "server" / "transcript")
    node_kinds = {type(m).__name__ for rec, m in transcript.messages() if rec.sender != "server"}
    assert node_kinds == {"CkksEncryptedInput", "AggregateRelease"}
    secret = (tmp_path / "keys" / "sites" / "tab" / "secret.context").read_bytes()
    assert secret not in (tmp_path / "sites" / "tab" / SESSION_FILE).read_bytes()  # the secret key is on disk once


@pytest.mark.parametrize("lost_type, contributes", [("train", False), (SECAGG, True)])
def test_a_node_lost_mid_round_over_flower(tiny_config, tiny_modalities, tmp_path, lost_type, contributes):
    """Round 2 (steady state): tab's broadcast is lost (it never sends its masked input: the others sign the view
    without it and the round completes), or its unmask request is lost (its masked input is in; the others' shares
    remove its self-mask, so it still contributes)."""
    config = with_sections(tiny_config, federation={"rounds": 2}, secure={"protocol": "masking"})
    lost = lambda m: m.metadata.message_type == lost_type and m.metadata.group_id == "2" and m.metadata.dst_node_id == 404
    flower_run(config, tiny_modalities, tmp_path, drop=lost)
    last = CheckpointStore(tmp_path / "server").load_latest()
    assert last.round == 2
    assert last.meta["history"][-1]["failures"] == ({} if contributes else {"tab": "dropped"})
    transcript = Transcript.load(tmp_path / "server" / "transcript")
    signed = any(type(m).__name__ == "ConsistencySignature" for _, m in transcript.messages(round_=2))
    assert signed == (not contributes)


def test_a_site_refuses_keys_of_another_federation_or_node(tiny_config, tiny_modalities, tmp_path):
    config = with_sections(tiny_config, federation={"rounds": 1}, secure={"protocol": "masking"})
    write_keys(config, tmp_path / "keys")
    federation = build_federation(config, tiny_modalities)
    # tab's folder handed to the site img-a: its identity is not img-a's
    site = Site(config, "img-a", federation.nodes["img-a"], anchor_digest=federation.anchor_digest,
                state_dir=tmp_path / "a", make_backbone=backbone_factory(config), keys_dir=tmp_path / "keys" / "sites" / "tab")
    with pytest.raises(ConfigError, match="not the identity of node 'img-a'"):
        site.load_session()
    other = with_sections(config, federation={"id": "other-fed"})
    with pytest.raises(ConfigError, match="federation_id 'test-fed'"):
        Site(other, "img-a", federation.nodes["img-a"], anchor_digest=federation.anchor_digest, state_dir=tmp_path / "b",
             make_backbone=backbone_factory(config), keys_dir=tmp_path / "keys" / "sites" / "img-a").load_session()
    with pytest.raises(ConfigError, match="key folder"):
        Site(config, "img-a", federation.nodes["img-a"], anchor_digest=federation.anchor_digest, state_dir=tmp_path / "c",
             make_backbone=backbone_factory(config))


def test_a_site_refuses_a_session_file_of_another_format(tiny_config, tiny_modalities, tmp_path):
    """A session pickled before secagg-v1 wire version 0x02 holds a roster of the old layout: refused, not unpickled
    into the new classes (the site is told to delete it; the server then starts a new key epoch)."""
    import pickle

    # Prepare: a site's saved session, relabelled as the earlier format
    config = with_sections(tiny_config, federation={"rounds": 1}, secure={"protocol": "masking"})
    write_keys(config, tmp_path / "keys")
    federation = build_federation(config, tiny_modalities)
    site = Site(config, "img-a", federation.nodes["img-a"], anchor_digest=federation.anchor_digest,
                state_dir=tmp_path / "a", make_backbone=backbone_factory(config), keys_dir=tmp_path / "keys" / "sites" / "img-a")
    site.save_session(site.load_session())
    path = tmp_path / "a" / SESSION_FILE
    saved = pickle.loads(path.read_bytes())
    assert saved["header"]["format"] == "geofed-secure-session-v2"
    path.write_bytes(pickle.dumps({**saved, "header": {**saved["header"], "format": "geofed-secure-session-v1"}}))
    # Execute / Assert
    with pytest.raises(CheckpointError, match="belongs to another format; delete it to start a new session"):
        site.load_session()


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


class ServerCrash(Exception):
    """The ServerApp's process dies (a BaseException would escape pytest too; any exception ends run_federation)."""


class CrashAfterAnswers(SilentReporter):
    """Kills the ServerApp in round ``round_`` once every node answered (they trained), before the checkpoint."""

    def __init__(self, round_):
        self.round_, self.answered = round_, 0

    def node_done(self, round_, node_id, info):
        self.answered += round_ == self.round_
        if self.answered == len(FLOWER_IDS):
            raise ServerCrash(f"ServerApp killed in round {round_}")


def test_a_restarted_server_app_resumes_from_its_checkpoint_and_never_reuses_a_trained_round(tiny_config,
                                                                                             tiny_modalities, tmp_path):
    config = with_sections(tiny_config, federation={"rounds": 3}, secure={"protocol": "masking"})
    with pytest.raises(ServerCrash):
        flower_run(config, tiny_modalities, tmp_path, reporter=CrashAfterAnswers(2))
    assert CheckpointStore(tmp_path / "server").latest_round() == 1  # round 2 died before its checkpoint
    with pytest.raises(OutputFolderError, match="already holds a run"):  # never silently over the crashed run
        flower_run(config, tiny_modalities, tmp_path)
    final = flower_run(config, tiny_modalities, tmp_path, resume=True)
    history = CheckpointStore(tmp_path / "server").load_latest().meta["history"]
    # the sites trained in round 2 (their DP noise and keys for it are spent): round 2 is not run again
    assert [(h["round"], "abandoned" in h) for h in history] == [(1, False), (2, True), (3, False)]
    assert history[-1]["failures"] == {}  # every site's session survived the crash (a new key epoch in round 3)
    transcript = Transcript.load(tmp_path / "server" / "transcript")
    assert {r.round for r in transcript.records} == {1, 2, 3}  # the crashed round's records before the crash stay
    assert np.isfinite(np.concatenate([v.ravel() for v in final.values()])).all()
    with pytest.raises(CheckpointError, match="different configuration"):
        flower_run(with_sections(config, training={"lr": 1e-2}), tiny_modalities, tmp_path, resume=True)


class RestartingGrid(CountingGrid):
    """tab's SuperNode (Flower id 404) dies in round 2 and comes back for round 3 as a new SuperNode (id 405), with
    the same site (node config, state directory): what a restarted flower-supernode process looks like."""

    def __init__(self, sites, **kwargs):
        super().__init__({**sites, 405: sites[404]}, **kwargs)
        self.restarted = False

    def get_node_ids(self):
        ids = [i for i in self.sites if i != 405]
        return [405 if i == 404 else i for i in ids] if self.restarted else ids

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.group_id == "2":
            self.restarted = True  # from now on 404 is gone: its messages are lost, 405 is connected
            messages = [m for m in messages if m.metadata.dst_node_id != 404]
        return super().send_and_receive(messages, timeout=timeout)


def test_a_supernode_that_comes_back_rejoins_the_masked_sum(tiny_config, tiny_modalities, tmp_path):
    config = with_sections(tiny_config, federation={"rounds": 3}, secure={"protocol": "masking"})
    grids = []
    flower_run(config, tiny_modalities, tmp_path, grid_out=grids, grid_class=RestartingGrid)
    history = CheckpointStore(tmp_path / "server").load_latest().meta["history"]
    assert [h["failures"] for h in history] == [{}, {"tab": "dropped"}, {}]  # back in round 3, same keys and node
    assert grids[0].restarted


class Impostor(CountingGrid):
    """From round 2 on a second SuperNode (405) also claims tab while tab's own (404) keeps answering."""

    def __init__(self, sites, **kwargs):
        super().__init__({**sites, 405: sites[404]}, **kwargs)
        self.later = False

    def get_node_ids(self):
        return list(self.sites) if self.later else [i for i in self.sites if i != 405]

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.later = self.later or messages[0].metadata.group_id == "1"
        return super().send_and_receive(messages, timeout=timeout)


def test_a_supernode_claiming_an_active_node_is_ignored(tiny_config, tiny_modalities, tmp_path):
    config = with_sections(tiny_config, federation={"rounds": 3})
    grids = []
    flower_run(config, tiny_modalities, tmp_path, grid_out=grids, grid_class=Impostor)
    history = CheckpointStore(tmp_path / "server").load_latest().meta["history"]
    assert [h["failures"] for h in history] == [{}, {}, {}] and all("tab" in h["uploaded"] for h in history)
    sent = grids[0].sent  # the impostor was asked who it is, and never sent a round's broadcast
    assert sent[(QUERY, 405)] >= 1 and sent[("train", 405)] == 0 and sent[("train", 404)] == 3


class LoseNth:
    """Loses the ``nth`` (1-based) secure-aggregation message of round ``round_`` to each of ``nodes`` (Flower ids)."""

    def __init__(self, nth, nodes, round_="1"):
        self.nth, self.nodes, self.round_, self.seen = nth, set(nodes), round_, Counter()

    def __call__(self, message):
        node = message.metadata.dst_node_id
        if message.metadata.message_type != SECAGG or message.metadata.group_id != self.round_ or node not in self.nodes:
            return False
        self.seen[node] += 1
        return self.seen[node] == self.nth


@pytest.mark.parametrize("nth, stage, contributes", [(1, "share_keys", False), (2, "masked_input", False),
                                                     (3, "unmask", True)])
def test_a_site_lost_at_each_key_setup_stage(tiny_config, tiny_modalities, tmp_path, nth, stage, contributes):
    """Round 1 sets keys up: tab's roster (it never shares keys), its share delivery (its shares went out, its
    masked input never comes: the others sign the view without it) or its unmask request is lost; the round
    completes with the three others, tab in the sum only when its masked input arrived."""
    config = with_sections(tiny_config, federation={"rounds": 1}, secure={"protocol": "masking"})
    flower_run(config, tiny_modalities, tmp_path, drop=LoseNth(nth, {404}))
    history = CheckpointStore(tmp_path / "server").load_latest().meta["history"]
    assert history[0]["failures"] == ({} if contributes else {"tab": "dropped"}), stage


def test_too_many_sites_lost_abandon_the_round_and_keep_the_last_checkpoint(tiny_config, tiny_modalities, tmp_path):
    config = with_sections(tiny_config, federation={"rounds": 2}, secure={"protocol": "masking"})
    two_gone = lambda m: m.metadata.message_type == "train" and m.metadata.group_id == "2" and m.metadata.dst_node_id in (303, 404)
    with pytest.raises(ProtocolAborted, match="floor|threshold|survivors"):
        flower_run(config, tiny_modalities, tmp_path, drop=two_gone)
    assert CheckpointStore(tmp_path / "server").latest_round() == 1


def test_a_clear_upload_in_a_secure_round_is_rejected(tiny_config, tiny_modalities, tmp_path):
    """A site configured without secure aggregation answers a masked round with its update in clear: the server does
    not aggregate it, and the three others' masked sum goes on. Its bytes did cross the wire: the transcript keeps
    them, so an audit sees what the misconfigured site leaked."""
    config = with_sections(tiny_config, federation={"rounds": 1}, secure={"protocol": "masking"})
    clear = with_sections(config, secure={"protocol": "none"})
    federation = build_federation(config, tiny_modalities)
    make_backbone = backbone_factory(config)
    write_keys(config, tmp_path / "keys")

    def site_for(context):
        node_id = context.node_config["node-id"]
        site_config = clear if node_id == "tab" else config
        return Site(site_config, node_id, federation.nodes[node_id], anchor_digest=federation.anchor_digest,
                    state_dir=tmp_path / "sites" / node_id, make_backbone=make_backbone,
                    keys_dir=None if node_id == "tab" else tmp_path / "keys" / "sites" / node_id)

    app = make_client_app(site_for)
    grid = CountingGrid({FLOWER_IDS[k]: (app, {"node-id": k}) for k in FLOWER_IDS})
    _, initial = server_model_and_initial_state(config, make_backbone)
    with server_identity():
        run_federation(grid, config, anchor_digest=federation.anchor_digest, initial_state=initial,
                       out_dir=tmp_path / "server", n_anchors=len(federation.nodes["tab"].anchors),
                       keys_dir=tmp_path / "keys" / "server")
    history = CheckpointStore(tmp_path / "server").load_latest().meta["history"]
    assert history[0]["failures"] == {"tab": "rejected_by_server"}
    transcript = Transcript.load(tmp_path / "server" / "transcript")
    assert any(rec.sender == "tab" and rec.type == "NodeUpdate" for rec in transcript.records)
