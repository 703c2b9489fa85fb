"""The audit foundation: threat models, views of a recorded transcript, attack metrics, Gram inversion."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import with_sections
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from geofed_secure.audit import (
    ThreatModel,
    invert_gram,
    invert_gram_upper,
    load_run_view,
    load_threat_model,
    membership_result,
    procrustes_error,
    select_view,
    threat_model_from_dict,
)
from geofed_secure.audit.metrics import roc_curve, tpr_at_fpr
from geofed_secure.errors import ConfigError, DataError

SHIPPED = ("hbc-server", "malicious-server", "server-colluding-with-text-node", "curious-node", "outside-observer")


# -- threat models --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_threat_models_load(name):
    model = load_threat_model(f"threat_models/{name}.toml")
    assert model.name == name and model.description


@pytest.mark.parametrize("data, field", [
    ({"name": "x"}, "adversary"),
    ({"name": "x", "adversary": {"role": "admin", "behaviour": "malicious"}}, "adversary.role"),
    ({"name": "x", "adversary": {"role": "server", "behaviour": "evil"}}, "adversary.behaviour"),
    ({"name": "x", "adversary": {"role": "node", "behaviour": "malicious"}}, "adversary.nodes"),
    ({"name": "x", "adversary": {"role": "node", "behaviour": "malicious", "nodes": ["a", "b"]}}, "adversary.nodes"),
    ({"name": "x", "adversary": {"role": "colluding", "behaviour": "malicious"}}, "adversary.nodes"),
    ({"name": "x", "adversary": {"role": "server", "behaviour": "malicious", "nodes": ["a"]}}, "adversary.nodes"),
    ({"name": "x", "adversary": {"role": "observer", "behaviour": "malicious"}, "observes": ["transcript"]}, "observes"),
    ({"name": "x", "adversary": {"role": "server", "behaviour": "malicious"}, "observes": ["memory"]}, "observes"),
    ({"name": "x", "adversary": {"role": "server", "behaviour": "malicious", "sees": 1}}, "adversary.sees"),
    ({"name": "x y", "adversary": {"role": "server", "behaviour": "malicious"}}, "name"),
    ({"name": "x", "adversary": {"role": "server", "behaviour": "malicious"}, "extra": 1}, "extra"),
])
def test_bad_threat_models_name_the_field(data, field):
    with pytest.raises(ConfigError) as info:
        threat_model_from_dict(data, source="t.toml")
    assert info.value.field == field and "t.toml" in str(info.value)


def test_missing_or_broken_threat_model_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_threat_model(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("name = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_threat_model(tmp_path / "bad.toml")


# -- views (recorded_runs: tests/conftest.py) --------------------------------------------------------------------------
def model(role, nodes=(), observes=("transcript", "final_model")):
    return ThreatModel(name=f"t-{role}", description="", role=role, behaviour="honest-but-curious", nodes=tuple(nodes),
                       observes=tuple(observes))


def test_server_view_is_every_message_the_server_sends_or_receives(recorded_runs):
    from geofed_secure.runtime.transcript import Transcript

    transcript = Transcript.load(recorded_runs["none"] / "transcript")
    view = load_run_view(model("server"), recorded_runs["none"])
    assert len(view.records) == len(transcript) > 0  # in the simulator every message has the server at one end
    uploads = [m for _, m in view.messages(type_="NodeUpdate")]
    assert {u.node_id for u in uploads} == {"img-a", "img-b", "txt", "tab"} and view.rounds == (1, 2)
    assert view.final_state is not None and all(k.endswith(".lora_B") for k in view.final_state)


@pytest.mark.parametrize("protocol", ["none", "masking"])
def test_a_curious_node_sees_only_its_own_messages(recorded_runs, protocol):
    view = load_run_view(model("node", ["tab"]), recorded_runs[protocol])
    assert view.records and all("tab" in (r.sender, r.receiver) for r in view.records)
    if protocol == "none":
        assert [m.node_id for _, m in view.messages(type_="NodeUpdate")] == ["tab", "tab"]  # its own uploads only
    else:
        assert "NodeUpdate" not in view.types and "MaskedInput" in view.types
        assert all(r.sender == "tab" for r in view.records if r.type == "MaskedInput")


def test_colluding_view_is_the_union_and_the_observer_sees_no_transcript(recorded_runs):
    run = recorded_runs["masking"]
    server = load_run_view(model("server"), run)
    node = load_run_view(model("node", ["txt"]), run)
    coalition = load_run_view(model("colluding", ["txt"]), run)
    assert set(coalition.records) == set(server.records) | set(node.records)
    observer = load_run_view(model("observer", observes=("final_model",)), run)
    assert observer.records == () and list(observer.messages()) == [] and observer.final_state is not None
    blind = select_view(model("server", observes=("transcript",)), None, final_state={"x": np.zeros(1)})
    assert blind.final_state is None


def test_masked_uploads_in_a_coalition_view_are_uncorrelated_with_the_plaintext(recorded_runs):
    """Under masking the strongest transcript view (server + a colluding node) carries no individual update: another
    node's masked words show no correlation with its plaintext upload (taken from the same-seed plaintext run)."""
    from geofed_secure.runtime.secure import PayloadLayout

    view = load_run_view(model("colluding", ["txt"]), recorded_runs["masking"])
    assert "NodeUpdate" not in view.types
    plain = load_run_view(model("server"), recorded_runs["none"])
    update = next(m for _, m in plain.messages(type_="NodeUpdate", round_=1) if m.node_id == "img-a")
    n_anchors = round((1 + np.sqrt(1 + 8 * update.payload["gram_upper"].size)) / 2)
    layout = PayloadLayout.for_round({k[len("weighted/"):]: v for k, v in update.payload.items() if k.startswith("weighted/")}, n_anchors)
    vector = layout.flatten(update.payload)
    masked = next(m for _, m in view.messages(type_="MaskedInput", round_=1) if m.node_id == "img-a")
    signed = {np.dtype(np.uint32): np.int32, np.dtype(np.uint64): np.int64}[masked.words.dtype]  # the run's ring
    words = masked.words.view(signed).astype(np.float64)[:vector.size]
    assert words.size == vector.size
    assert abs(np.corrcoef(words, vector)[0, 1]) < 5 / np.sqrt(vector.size)


# -- metrics --------------------------------------------------------------------------------------------------------
def test_membership_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    members, others = rng.normal(1.0, 1.0, 400), rng.normal(0.0, 1.0, 600)
    result = membership_result(members, others, attack="threshold", threat_model="t", target="n", seed=1, bootstrap=100)
    labels, scores = np.r_[np.ones(400), np.zeros(600)], np.r_[members, others]
    assert result.metrics["auc"].value == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    sk_fpr, sk_tpr, _ = sk_roc_curve(labels, scores, drop_intermediate=False)
    for target in (0.01, 0.001, 0.1):
        expected = sk_tpr[sk_fpr <= target + 1e-12].max()
        assert tpr_at_fpr(*roc_curve(scores, labels), target) == pytest.approx(expected)
    assert result.metrics["advantage"].value == pytest.approx(np.max(sk_tpr - sk_fpr))
    auc = result.metrics["auc"]
    assert auc.low < auc.value < auc.high and auc.high - auc.low < 0.1
    assert result.trials == 1000 and result.to_dict()["metrics"]["auc"]["value"] == auc.value


def test_identical_scores_give_chance_and_bad_scores_are_refused():
    result = membership_result(np.zeros(50), np.zeros(50), attack="t", threat_model="t", target="n", seed=0, bootstrap=0)
    assert result.metrics["auc"].value == 0.5 and result.metrics["advantage"].value == 0.0
    with pytest.raises(DataError):
        membership_result([], [1.0], attack="t", threat_model="t", target="n", seed=0)
    with pytest.raises(DataError):
        membership_result([np.nan], [1.0], attack="t", threat_model="t", target="n", seed=0)


# -- Gram inversion -------------------------------------------------------------------------------------------------
def test_gram_inversion_recovers_embeddings_up_to_rotation():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 384))
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    rotation, _ = np.linalg.qr(rng.normal(size=(384, 384)))
    assert procrustes_error(zn @ rotation, zn) < 1e-12  # the metric ignores rotations ...
    assert procrustes_error(zn + 0.1 * rng.normal(size=zn.shape), zn) > 0.05  # ... but not noise
    gram = zn @ zn.T
    assert procrustes_error(invert_gram(gram), zn) < 1e-10  # B <= d: the Gram determines Z up to rotation
    errors = [procrustes_error(invert_gram(gram, rank), zn) for rank in (40, 20, 5)]
    assert errors == sorted(errors) and errors[0] > 0.1  # truncated ranks lose information, monotonically
    # the wire format (issue 16): the centred Gram H G H at unit norm, strict upper triangle; it reveals the centred
    # embeddings H Z up to rotation (rescaled to trace B, the trace of a cosine Gram)
    h = np.eye(50) - np.ones((50, 50)) / 50
    centred = h @ gram @ h
    upper = (centred / np.linalg.norm(centred))[np.triu_indices(50, 1)]
    assert procrustes_error(invert_gram_upper(upper, 50), h @ zn * np.sqrt(50 / np.trace(centred))) < 1e-6


def test_gram_inversion_of_low_dimensional_embeddings_and_bad_input():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(30, 8))  # d < B: rank 8
    gram = z @ z.T
    assert invert_gram(gram).shape == (30, 8) and procrustes_error(invert_gram(gram), z) < 1e-10
    with pytest.raises(DataError):
        invert_gram(np.ones((3, 4)))
    with pytest.raises(DataError):
        invert_gram(np.full((3, 3), np.nan))


# -- one-run canary audit statistic ---------------------------------------------------------------------------------
def _reference_p_value(m, r, v, eps, delta):
    """The paper's statement, term by term (an explicit loop over i)."""
    from scipy import stats

    q = np.exp(eps) / (1 + np.exp(eps))
    tail = sum(stats.binom.pmf(k, r, q) for k in range(v, r + 1))
    alpha = max(sum(stats.binom.pmf(v - j, r, q) for j in range(1, i + 1)) / i for i in range(1, v + 1))
    return min(1.0, tail + 2 * m * delta * alpha)


@pytest.mark.parametrize("m, r, v, eps, delta", [(200, 100, 70, 0.5, 1e-5), (1000, 300, 240, 1.0, 1e-3), (50, 50, 20, 0.0, 0.0)])
def test_canary_p_value_matches_the_papers_formula(m, r, v, eps, delta):
    from geofed_secure.audit.canary import p_value

    assert p_value(m, r, v, eps, delta) == pytest.approx(_reference_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-12)


def test_canary_bound_recovers_randomised_response_epsilon_from_below():
    """epsilon-DP randomised response guesses right with probability e^eps / (1 + e^eps): the bound sits just below."""
    from geofed_secure.audit.canary import epsilon_lower_bound

    rng = np.random.default_rng(0)
    for eps in (0.5, 2.0):
        m = 20000
        correct = int((rng.random(m) < np.exp(eps) / (1 + np.exp(eps))).sum())
        bound = epsilon_lower_bound(m, m, correct, delta=0.0)
        assert 0.9 * eps < bound <= eps * 1.02, (eps, bound)
    assert epsilon_lower_bound(1000, 1000, 1000, delta=1e-5) > 5  # every guess right: far from private
    assert epsilon_lower_bound(1000, 0, 0, delta=1e-5) == 0.0  # abstaining proves nothing
    with pytest.raises(DataError):
        epsilon_lower_bound(10, 20, 5, delta=1e-5)


@pytest.mark.parametrize("module", ["geofed_secure.audit.metrics", "geofed_secure.audit.canary"])
def test_audit_doctests(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


# -- geofed audit: the recorded-run part of a plan ----------------------------------------------------------------------
def _recorded(tm, runs, out, run="masking", reference="none"):
    from geofed_secure.audit.plan import AuditPlan
    from geofed_secure.audit.suite import run_audit

    plan = AuditPlan(protections=(), epsilons=(), run=str(runs[run]), reference_run=str(runs[reference]) if reference else "")
    return run_audit(tm, plan, out, progress=lambda line: None)


@pytest.mark.parametrize("shape", [(50, 4), (200, 16), (30, 30)])
def test_gram_inversion_power_is_a_same_scale_random_guess(shape):
    from geofed_secure.audit.recorded_run import null_power

    # Prepare: a target and the same target 1,000 times larger (a Gram's scale is public: its trace)
    target = np.random.default_rng(1).standard_normal(shape) * 0.05
    # Execute
    small, large = null_power(target, seed=3), null_power(target * 1000, seed=3)
    # Assert: the same threshold, and a random guess of the right norm is never further than sqrt(2)
    assert small["detection_threshold"] == pytest.approx(large["detection_threshold"], rel=1e-9)
    assert 0.3 < small["detection_threshold"] <= small["null_median"] <= np.sqrt(2) + 1e-9


def test_audit_of_a_plaintext_run_recovers_every_nodes_anchor_geometry(recorded_runs, tmp_path):
    report = _recorded(model("server"), recorded_runs, tmp_path, run="none")
    assert report["experiment"] is None and report["views"] == {} and report["plots"] == []
    assert report["recorded_run"]["protocol"] == "none"
    assert set(report["recorded_run"]["view"]["uploads"]["in_clear"]) == {"img-a", "img-b", "txt", "tab"}
    results = {r["target"]: r for r in report["results"]}
    assert set(results) == {"img-a", "img-b", "txt", "tab"}
    for r in results.values():
        assert r["attack"] == "transcript_gram_inversion" and r["metadata"]["source"] == "own upload in clear"
        assert r["metrics"]["procrustes_error"]["value"] < 1e-6 and r["metrics"]["procrustes_error_no_knowledge"]["value"] > 0.3
        # its power: random guesses of the same shape stay far from the truth, so an exact inversion is detected
        assert 0.3 < r["power"]["detection_threshold"] < r["power"]["null_median"] and r["power"]["null_draws"] == 200
    assert (tmp_path / "report.md").read_text().count("| own upload in clear |") == 4  # one table row per node
    assert all("beats a random guess" in line and "this one does." in line
               for line in report["verdict"] if "Gram inversion" in line)
    assert json.loads(json.dumps(report)) == json.loads((tmp_path / "report.json").read_text())


def test_audit_under_masking_leaves_only_the_consensus(recorded_runs, tmp_path):
    for role, nodes in (("server", ()), ("node", ("tab",)), ("colluding", ("txt",))):
        report = _recorded(model(role, nodes), recorded_runs, tmp_path / role)
        inventory = report["recorded_run"]["view"]
        assert inventory["uploads"]["in_clear"] == {}
        assert not set(nodes) & set(inventory["uploads"]["masked"])  # its own upload is not counted as learned
        assert report["results"]
        for r in report["results"]:
            assert r["metadata"]["source"] == "consensus" and r["metrics"]["procrustes_error"]["value"] > 0.01
            assert 0 < r["metrics"]["procrustes_error_without_node"]["value"] < 2


def test_recorded_run_audit_scores_the_broadcast_consensus_against_the_plaintext_twin(recorded_runs):
    """Every message of the server's view is inventoried, and each node's score is the Procrustes error between the
    round-1 consensus it was broadcast and its true round-1 Gram from the plaintext twin."""
    from geofed_secure.audit import audit_recorded_run, invert_gram_upper, procrustes_error
    from geofed_secure.runtime import Transcript

    audit = audit_recorded_run(model("server"), recorded_runs["masking"], reference_run=recorded_runs["none"])
    transcript = Transcript.load(recorded_runs["masking"] / "transcript")
    assert audit.inventory["messages"] == len(transcript) and audit.inventory["bytes"] == sum(r.nbytes for r in transcript.records)
    plain = load_run_view(model("server"), recorded_runs["none"])
    truth = {m.node_id: np.asarray(m.payload["gram_upper"]) for _, m in plain.messages(type_="NodeUpdate", round_=1)}
    view = load_run_view(model("server"), recorded_runs["masking"])
    consensus = next(np.asarray(m.consensus_gram) for _, m in view.messages(type_="RoundBroadcast", round_=2))
    for r in audit.results:
        n = r.metadata["anchors"]
        expected = procrustes_error(invert_gram_upper(consensus, n), invert_gram_upper(truth[r.target], n))
        assert r.metrics["procrustes_error"].value == expected


def test_audit_of_an_outside_observer_and_bad_inputs(recorded_runs, tmp_path):
    from geofed_secure.audit.plan import AuditPlan
    from geofed_secure.audit.suite import run_audit

    report = _recorded(model("observer", observes=("final_model",)), recorded_runs, tmp_path / "obs")
    assert report["results"] == [] and report["recorded_run"]["view"]["final_model"]
    assert "only the released final model" in report["verdict"][0]
    with pytest.raises(ConfigError, match="reference_run"):
        _recorded(model("server"), recorded_runs, tmp_path / "x", reference="masking")
    with pytest.raises(ConfigError, match="summary.json"):
        run_audit(model("server"), AuditPlan(protections=(), epsilons=(), run=str(tmp_path)), tmp_path / "y")


def test_geofed_audit_command_with_a_recorded_run_plan(recorded_runs, tmp_path):
    from geofed_secure.cli import main

    (tmp_path / "plan.toml").write_text(f"protections = []\nepsilons = []\nrun = {json.dumps(str(recorded_runs['masking']))}\n"
                                        f"reference_run = {json.dumps(str(recorded_runs['none']))}\n")
    rc = main(["audit", "--threat-model", "threat_models/hbc-server.toml", "--plan", str(tmp_path / "plan.toml"),
               "--out", str(tmp_path / "out")])
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert rc == 0 and "## Recorded run" in markdown and "### Gram inversion (round 1)" in markdown
    assert main(["audit", "--threat-model", str(tmp_path / "missing.toml"), "--out", str(tmp_path)]) == 2


# -- the canary audit on a real (tiny) node -------------------------------------------------------------------------
def _canary_audit(tiny_config, tiny_modalities, tiny_backbone_dir, **privacy):
    from conftest import synthetic_modality

    from geofed_secure.audit.canary_run import run_canary_audit
    from geofed_secure.model.backbone import load_backbone
    from geofed_secure.runtime import build_federation

    config = with_sections(tiny_config, federation={"rounds": 5, "mode": "local-only"},
                           training={"local_steps": 20, "lr": 0.01, "lambda_geo": 0.0},
                           privacy={"accountant": "rdp"} | privacy)
    fed = build_federation(config, tiny_modalities)
    # Records 240.. of a larger draw from the same class means are held out from every node's data.
    held_out = synthetic_modality("image", dim=12, tokens=4, seed=1, n_pool=400).pool.subset(np.arange(240, 400))
    spec = config.nodes[0]
    return run_canary_audit(config, spec, fed.nodes[spec.id], held_out, anchor_digest=fed.anchor_digest,
                            backbone_factory=lambda: load_backbone(str(tiny_backbone_dir)), canaries=100, seed=0)


def test_canary_audit_detects_memorisation_without_dp(tiny_config, tiny_modalities, tiny_backbone_dir):
    audit = _canary_audit(tiny_config, tiny_modalities, tiny_backbone_dir, epsilon=0.0)
    assert audit.accountant_epsilon is None and not audit.failed
    assert audit.epsilon_lower_bound > 0.5 and audit.correct > audit.guesses * 0.75


def test_canary_audit_bound_stays_below_the_accountant_under_dp(tiny_config, tiny_modalities, tiny_backbone_dir):
    audit = _canary_audit(tiny_config, tiny_modalities, tiny_backbone_dir, epsilon=2.0)
    assert 0 < audit.accountant_epsilon <= 2.0
    assert audit.epsilon_lower_bound <= audit.accountant_epsilon and not audit.failed


def test_canary_audit_refutes_a_dp_implementation_that_lies(tiny_config, tiny_modalities, tiny_backbone_dir, monkeypatch):
    """A broken DP-SGD (no noise, no effective clipping) whose accountant still records the calibrated noise, and so
    claims epsilon 0.5, is caught by the canary audit."""
    import opacus.optimizers.optimizer_fast_gradient_clipping as ghost_optimizer
    import torch

    from geofed_secure.privacy import dpsgd

    honest_init = dpsgd.DPSGDRound.__init__

    def no_clipping(self, model, optimizer, **kwargs):
        honest_init(self, model, optimizer, **(kwargs | {"max_grad_norm": 1e6}))

    monkeypatch.setattr(dpsgd.DPSGDRound, "__init__", no_clipping)
    monkeypatch.setattr(ghost_optimizer, "_generate_noise", lambda std, reference, **kw: torch.zeros_like(reference))
    audit = _canary_audit(tiny_config, tiny_modalities, tiny_backbone_dir, epsilon=0.5, accountant="pld")
    assert audit.accountant_epsilon <= 0.5 and audit.epsilon_lower_bound > 0.5
    assert audit.failed and audit.to_dict()["failed"] is True


# -- the gradient-canary audit (Dirac canaries, white box) ----------------------------------------------------------
def _gradient_canary_audit(tiny_config, tiny_modalities, tiny_backbone_dir, canaries=1000, **privacy):
    from geofed_secure.audit.gradient_canaries import run_gradient_canary_audit
    from geofed_secure.model.backbone import load_backbone
    from geofed_secure.runtime import build_federation

    config = with_sections(tiny_config, federation={"rounds": 2, "mode": "local-only"},
                           training={"local_steps": 10, "lr": 0.01, "lambda_geo": 0.0}, privacy=privacy)
    fed = build_federation(config, tiny_modalities)
    spec = config.nodes[0]
    return run_gradient_canary_audit(config, spec, fed.nodes[spec.id], anchor_digest=fed.anchor_digest,
                                     backbone_factory=lambda: load_backbone(str(tiny_backbone_dir)), canaries=canaries,
                                     seed=0)


def test_gradient_canary_audit_stays_below_the_accountant_and_has_more_power_than_input_canaries(
        tiny_config, tiny_modalities, tiny_backbone_dir):
    from geofed_secure.audit.power import canary_max_certifiable_epsilon

    audit = _gradient_canary_audit(tiny_config, tiny_modalities, tiny_backbone_dir, epsilon=4.0)
    assert 0 < audit.accountant_epsilon <= 4.0 and not audit.failed
    assert audit.epsilon_lower_bound <= audit.accountant_epsilon
    # the worst-case canary does move its coordinate: clearly better than chance (half of the 400 guesses right)
    assert audit.correct > 0.6 * audit.guesses
    assert canary_max_certifiable_epsilon(audit.canaries, audit.guesses, delta=audit.delta) > 1.0


def test_gradient_canary_audit_refutes_a_dp_sgd_without_noise(tiny_config, tiny_modalities, tiny_backbone_dir, monkeypatch):
    """The noise switched off while the accountant still claims epsilon 1: every canary's coordinate carries its
    signal alone, and the audit refutes the claim."""
    import opacus.optimizers.optimizer_fast_gradient_clipping as ghost_optimizer
    import torch

    monkeypatch.setattr(ghost_optimizer, "_generate_noise", lambda std, reference, **kw: torch.zeros_like(reference))
    audit = _gradient_canary_audit(tiny_config, tiny_modalities, tiny_backbone_dir, epsilon=1.0)
    assert audit.accountant_epsilon <= 1.0 and audit.epsilon_lower_bound > 1.0 and audit.failed


def test_gradient_canaries_need_dp_and_room(tiny_config, tiny_modalities, tiny_backbone_dir):
    with pytest.raises(ConfigError, match="privacy.epsilon"):
        _gradient_canary_audit(tiny_config, tiny_modalities, tiny_backbone_dir, epsilon=0.0)
    with pytest.raises(ConfigError, match="trainable coordinates"):
        _gradient_canary_audit(tiny_config, tiny_modalities, tiny_backbone_dir, canaries=10**7, epsilon=1.0)
