"""The audit's attacks against closed-form cases and independent (plain-loop) reference implementations, the
protection -> view table, the plan file, and `geofed audit --plan` end to end on a tiny federation."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from scipy.stats import norm

from geofed_secure.audit.attacks import membership as mia
from geofed_secure.audit.attacks.extraction import extraction_metrics, fit_extraction, unit_rows
from geofed_secure.audit.attacks.gram_inversion import invert_gram
from geofed_secure.audit.attacks.prototypes import class_prototypes, label_inference_accuracy, prototype_statistic
from geofed_secure.audit.metrics import membership_result
from geofed_secure.audit.plan import AuditPlan, load_plan, plan_from_dict
from geofed_secure.audit.protections import AGGREGATE, HIDDEN, INDIVIDUAL, release_view
from geofed_secure.audit.threat_model import load_threat_model
from geofed_secure.errors import ConfigError, DataError


def _auc(scores, membership):
    return membership_result(*mia.trials(scores, membership), attack="t", threat_model="t", target="t", seed=0,
                             bootstrap=0).metrics["auc"].value


def _gaussian_runs(n_runs=64, n_cand=400, delta=1.0, sigma=1.0, spread=2.0, seed=0):
    """A statistic per (run, candidate): mu_x + delta * member + sigma * noise, mu_x ~ N(0, spread^2)."""
    rng = np.random.default_rng(seed)
    membership = rng.random((n_runs, n_cand)) < 0.5
    mu = rng.normal(0, spread, n_cand)
    return mu + delta * membership + sigma * rng.normal(size=membership.shape), membership


# -- membership: closed forms -----------------------------------------------------------------------------------------
def test_lira_reaches_the_optimal_auc_of_a_gaussian_shift_and_the_threshold_attack_its_own():
    stats, membership = _gaussian_runs()
    # Optimal test between N(mu, 1) and N(mu + 1, 1) with mu known: AUC = Phi(delta / (sigma sqrt 2)) = 0.760.
    assert _auc(mia.lira_scores(stats, membership), membership) == pytest.approx(norm.cdf(1 / math.sqrt(2)), abs=0.02)
    # Uncalibrated threshold: member N(0.5... ) -- the candidate spread adds variance: Phi(1 / sqrt(2 (1 + 4))) = 0.624.
    assert _auc(mia.threshold_scores(stats), membership) == pytest.approx(norm.cdf(1 / math.sqrt(10)), abs=0.02)


def test_lira_on_a_statistic_with_no_membership_signal_is_at_chance():
    stats, membership = _gaussian_runs(delta=0.0)
    result = membership_result(*mia.trials(mia.lira_scores(stats, membership), membership), attack="lira",
                               threat_model="t", target="t", seed=1, bootstrap=100)
    assert result.metrics["auc"].low < 0.5 < result.metrics["auc"].high


def _lira_loop(stats, shadow, membership, fixed_variance):
    n, p = membership.shape
    out = np.zeros((n, p))
    for i in range(n):
        pooled_in, pooled_out, means = [], [], {}
        for x in range(p):
            ins = [shadow[j, x] for j in range(n) if j != i and membership[j, x]]
            outs = [shadow[j, x] for j in range(n) if j != i and not membership[j, x]]
            means[x] = (np.mean(ins) if ins else 0.0, np.mean(outs) if outs else 0.0, ins, outs)
            pooled_in += [v - means[x][0] for v in ins]
            pooled_out += [v - means[x][1] for v in outs]
        for x in range(p):
            mi, mo, ins, outs = means[x]
            if fixed_variance:
                si = math.sqrt(sum(v * v for v in pooled_in) / (len(pooled_in) - 1))
                so = math.sqrt(sum(v * v for v in pooled_out) / (len(pooled_out) - 1))
            elif len(ins) >= 2 and len(outs) >= 2:
                si, so = np.std(ins, ddof=1), np.std(outs, ddof=1)
            else:
                continue  # not compared (see ok below)
            out[i, x] = norm.logpdf(stats[i, x], mi, si) - norm.logpdf(stats[i, x], mo, so)
    return out


@pytest.mark.parametrize("fixed_variance", [True, False])
def test_lira_equals_a_plain_loop_implementation(fixed_variance):
    rng = np.random.default_rng(3)
    membership = np.zeros((8, 12), bool)
    for i in range(8):
        membership[i, rng.permutation(12)[:6]] = True
    membership[:, 0] = [True, True, False, False, True, False, True, False]  # every candidate has in and out shadows
    stats, shadow = rng.normal(size=(8, 12)), rng.normal(size=(8, 12))
    ok = np.array([[membership[np.arange(8) != i, x].sum() >= 2 and (~membership[np.arange(8) != i, x]).sum() >= 2
                    for x in range(12)] for i in range(8)])
    got = mia.lira_scores(stats, membership, shadow_stats=shadow, fixed_variance=fixed_variance)
    want = _lira_loop(stats, shadow, membership, fixed_variance)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-9, atol=1e-9)


def test_lira_vector_equals_a_plain_loop_and_sees_a_sum_release():
    rng = np.random.default_rng(4)
    n, p, d = 10, 30, 5
    membership = rng.random((n, p)) < 0.5
    records = rng.normal(size=(p, d))
    releases = membership.astype(float) @ records + 0.1 * rng.normal(size=(n, d))  # release = sum of member records
    got = mia.lira_vector_scores(releases, membership)
    for i in (0, 7):
        for x in (0, 11, 29):
            ins = [releases[j] for j in range(n) if j != i and membership[j, x]]
            outs = [releases[j] for j in range(n) if j != i and not membership[j, x]]
            want = np.sum((releases[i] - np.mean(outs, axis=0)) ** 2) - np.sum((releases[i] - np.mean(ins, axis=0)) ** 2)
            assert got[i, x] == pytest.approx(want, rel=1e-9, abs=1e-9)
    # Power: the shadows' means carry the other records' imbalance, so more shadow runs give a sharper attack.
    wide = rng.normal(size=(p, 2000))
    many = rng.random((40, p)) < 0.5
    few_auc = _auc(mia.lira_vector_scores(membership.astype(float) @ wide, membership), membership)
    many_auc = _auc(mia.lira_vector_scores(many.astype(float) @ wide, many), many)
    assert 0.65 < few_auc < many_auc
    noisy = many.astype(float) @ wide + 1000 * rng.normal(size=(40, 2000))  # a Gaussian mechanism with huge noise
    assert abs(_auc(mia.lira_vector_scores(noisy, many), many) - 0.5) < 0.06


def test_rmia_equals_a_plain_loop_implementation():
    rng = np.random.default_rng(5)
    px, pz = rng.random((6, 9)), rng.random((6, 7))
    got = mia.rmia_scores(px, pz, gamma=1.5)
    for i in range(6):
        refs = [j for j in range(6) if j != i]
        for x in range(9):
            ratio_x = px[i, x] / np.mean([px[j, x] for j in refs])
            want = np.mean([(ratio_x / (pz[i, z] / np.mean([pz[j, z] for j in refs]))) > 1.5 for z in range(7)])
            assert np.floor(got[i, x] * 7 + 1e-9) / 7 == pytest.approx(want)  # the count; the rest breaks ties


def test_rmia_scores_do_not_tie_where_the_ratios_differ():
    """Issue 17: with a population of 100 the counts take 101 values and non-members tied at the top."""
    rng = np.random.default_rng(8)
    px, pz = rng.random((5, 2000)), rng.random((5, 100))
    got = mia.rmia_scores(px, pz)
    for i in range(5):
        ratio = px[i] / px[np.arange(5) != i].mean(axis=0)
        assert len(np.unique(got[i])) == 2000
        assert (np.argsort(got[i], kind="stable") == np.argsort(ratio, kind="stable")).all()  # the ratio's order


def test_offline_lira_equals_a_plain_loop_with_per_candidate_variance():
    rng = np.random.default_rng(9)
    membership = rng.random((8, 30)) < 0.5
    stats_ = rng.normal(size=(8, 30)) + membership * rng.normal(1, 0.2, size=30)
    got = mia.lira_offline_scores(stats_, membership)
    for i in (0, 5):
        for x in range(30):
            outs = [stats_[j, x] for j in range(8) if j != i and not membership[j, x]]
            if len(outs) < 2:  # no evidence: the score of the OUT median, not the top score
                assert got[i, x] == pytest.approx(np.log(0.5))
                continue
            want = norm.logcdf(stats_[i, x], np.mean(outs), max(np.std(outs, ddof=1), 1e-3))
            assert got[i, x] == pytest.approx(want, rel=1e-9)
    assert _auc(got, membership) > 0.6  # a shift of ~1 sd: 0.76 with known means and variances


def test_logit_confidence_and_probability_match_their_definitions():
    rng = np.random.default_rng(6)
    logits, labels = rng.normal(size=(20, 10)) * 5, rng.integers(0, 10, 20)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    py = p[np.arange(20), labels]
    np.testing.assert_allclose(mia.true_label_probability(logits, labels), py, rtol=1e-12)
    np.testing.assert_allclose(mia.logit_confidence(logits, labels), np.log(py) - np.log(1 - py), rtol=1e-7)


def test_membership_attacks_refuse_bad_input():
    with pytest.raises(DataError, match="at least 3 runs"):
        mia.lira_scores(np.zeros((2, 4)), np.zeros((2, 4), bool))
    with pytest.raises(DataError, match="NaN"):
        mia.lira_scores(np.full((4, 4), np.nan), np.zeros((4, 4), bool))
    with pytest.raises(DataError, match="match"):
        mia.lira_vector_scores(np.zeros((4, 3)), np.zeros((5, 4), bool))
    with pytest.raises(DataError, match="gamma"):
        mia.rmia_scores(np.ones((3, 2)), np.ones((3, 2)), gamma=0)


# -- extraction and prototypes ---------------------------------------------------------------------------------------
def test_extraction_from_a_gram_equals_extraction_from_raw_embeddings_and_beats_the_public_model():
    rng = np.random.default_rng(7)
    public = unit_rows(rng.normal(size=(150, 32)))               # e0 of 150 public inputs
    node = unit_rows(public @ rng.normal(size=(32, 24)))         # the node's (trained) encoder, a different map
    index, held = np.arange(60), np.arange(60, 150)
    labels = np.arange(60) % 10
    raw = node[index]
    from_raw, raw_aligned = fit_extraction(public[index], raw, public[held])
    gram_inverted = invert_gram(raw @ raw.T)                      # the same embeddings up to a rotation
    from_gram, gram_aligned = fit_extraction(public[index], gram_inverted, public[held])
    m_raw = extraction_metrics(from_raw, raw_aligned, node[held], node[index], labels)
    m_gram = extraction_metrics(from_gram, gram_aligned, node[held], node[index], labels)
    base = extraction_metrics(public[held], public[index], node[held], node[index], labels)
    assert m_gram["procrustes_error"] == pytest.approx(m_raw["procrustes_error"], abs=1e-6)  # rotation-equivariant
    assert m_raw["procrustes_error"] < 0.5 * base["procrustes_error"]
    assert m_raw["downstream_agreement"] > base["downstream_agreement"]


def test_extraction_falls_back_to_the_public_model_when_the_node_is_the_public_model():
    rng = np.random.default_rng(9)
    public = unit_rows(rng.normal(size=(150, 32)))
    turned = public @ np.linalg.qr(rng.normal(size=(32, 32)))[0]  # the node = e0 up to a rotation
    extracted, _ = fit_extraction(public[:20], invert_gram(turned[:20] @ turned[:20].T), public[20:])
    assert extraction_metrics(extracted, public[:20], turned[20:], turned[:20], np.arange(20) % 10)["procrustes_error"] < 1e-3
    with pytest.raises(DataError, match="wider"):
        fit_extraction(public[:20, :4], public[:20], public[20:, :4])


def test_prototypes_reveal_labels_and_membership_statistic_is_a_cosine():
    rng = np.random.default_rng(8)
    centres = unit_rows(rng.normal(size=(10, 32)))
    labels = np.repeat(np.arange(10), 20)
    z = centres[labels] + 0.3 * rng.normal(size=(200, 32))
    protos = class_prototypes(z, labels, 10)
    assert label_inference_accuracy(protos, z, labels) > 0.95
    np.testing.assert_allclose(prototype_statistic(protos, z, labels),
                               np.sum(unit_rows(z) * unit_rows(protos)[labels], axis=1), rtol=1e-12)
    protos[3] = 0  # a class the node does not hold is never predicted
    assert not (np.argmax(unit_rows(z) @ unit_rows(protos).T, axis=1) == 3).all()
    with pytest.raises(DataError):
        label_inference_accuracy(np.zeros((10, 32)), z, labels)


# -- views of each protection --------------------------------------------------------------------------------------
EXPECTED_VIEWS = {
    # threat model: {protection: (update, gram)}
    "hbc-server": {"none": (INDIVIDUAL, INDIVIDUAL), "masking": (AGGREGATE, AGGREGATE), "ckks": (AGGREGATE, AGGREGATE)},
    "malicious-server": {"none": (INDIVIDUAL, INDIVIDUAL), "masking": (AGGREGATE, AGGREGATE), "ckks": (AGGREGATE, AGGREGATE)},
    "server-colluding-with-text-node": {"none": (INDIVIDUAL, INDIVIDUAL), "masking": (AGGREGATE, AGGREGATE),
                                        "ckks": (INDIVIDUAL, INDIVIDUAL)},
    "curious-node": {"none": (AGGREGATE, AGGREGATE), "masking": (AGGREGATE, AGGREGATE), "ckks": (AGGREGATE, AGGREGATE)},
    "outside-observer": {"none": (AGGREGATE, HIDDEN), "masking": (AGGREGATE, HIDDEN), "ckks": (AGGREGATE, HIDDEN)},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_VIEWS))
def test_each_threat_model_sees_what_its_protection_allows(name):
    tm = load_threat_model(f"threat_models/{name}.toml")
    for protection, (update, gram) in EXPECTED_VIEWS[name].items():
        assert release_view(tm, protection, "update") == update
        assert release_view(tm, protection, "gram") == gram
        assert release_view(tm, protection, "prototypes") == gram


# -- plans -----------------------------------------------------------------------------------------------------------
def test_shipped_plan_spells_out_the_defaults():
    assert load_plan("audits/plan.toml") == AuditPlan() == load_plan(None)
    memorising = load_plan("audits/plan-memorising.toml")
    assert memorising.local_steps == 4 * AuditPlan().local_steps and memorising.digest() != AuditPlan().digest()
    high_power = load_plan("audits/plan-memorising-high-power.toml")
    assert high_power.runs == 32 and high_power.levels == (None,)


@pytest.mark.parametrize("name, path", [("quick", "audits/plan-quick.toml"), ("standard", "audits/plan.toml"),
                                        ("high-power", "audits/plan-high-power.toml")])
def test_presets_are_spelled_out_in_audits(name, path):
    assert load_plan(name) == load_plan(path)
    assert (load_plan(name) == AuditPlan()) == (name == "standard")


@pytest.mark.parametrize("data, field", [
    ({"runs": 2}, "runs"), ({"schemes": ["gram", "pixels"]}, "schemes"), ({"protections": ["tls"]}, "protections"),
    ({"epsilons": [0.0]}, "epsilons"), ({"epsilons": "8"}, "epsilons"), ({"extraction_anchors": [2]}, "extraction_anchors"),
    ({"lr": -1.0}, "lr"), ({"rounds": 0}, "rounds"), ({"runs": True}, "runs"), ({"target": 3}, "target"),
    ({"typo": 1}, "typo"), ({"protections": [], "epsilons": []}, "protections"), ({"reference_run": "runs/x"}, "reference_run"),
    ({"run": 1}, "run"),
])
def test_bad_plans_name_the_key_and_file(data, field):
    with pytest.raises(ConfigError) as info:
        plan_from_dict(data, source="plan.toml")
    assert info.value.field == field and "plan.toml" in str(info.value)


def test_plan_digest_ignores_where_results_are_cached():
    assert AuditPlan(cache_dir="/a").digest() == AuditPlan(cache_dir="/b").digest() != AuditPlan(runs=5).digest()
    # a recorded run to audit besides changes nothing the experiment trains
    assert AuditPlan(run="runs/a", reference_run="runs/b").digest() == AuditPlan().digest()


# -- end to end on a tiny federation -----------------------------------------------------------------------------------
TINY_PLAN = AuditPlan(target="img-a", runs=4, rounds=2, local_steps=3, batch_size=16, lr=5e-3, epsilons=(4.0,),
                      extraction_anchors=(10, 25), extraction_draws=2, canaries=10, bootstrap=20)


@pytest.fixture(scope="module")
def tiny_audit_experiment(tiny_config, tiny_modalities, tmp_path_factory):
    from geofed_secure.audit.experiment import run_experiment

    # two worker processes: the parallel path users get by default on a multi-core machine
    plan = AuditPlan(**{**TINY_PLAN.to_dict(), "cache_dir": str(tmp_path_factory.mktemp("audit-cache")), "workers": 2})
    return plan, run_experiment(plan, base_config=tiny_config, modalities=tiny_modalities)


def test_parallel_training_is_the_same_experiment_as_training_in_process(tiny_audit_experiment, tiny_config,
                                                                          tiny_modalities, tmp_path):
    from geofed_secure.audit.experiment import run_experiment

    plan, parallel = tiny_audit_experiment
    serial_plan = dataclasses.replace(plan, workers=1, cache_dir=str(tmp_path))
    assert serial_plan.digest() == plan.digest()  # one cache entry, whatever the workers
    lines: list[str] = []
    serial = run_experiment(serial_plan, base_config=tiny_config, modalities=tiny_modalities, progress=lines.append)
    assert "training on 1 worker process" in lines[1]
    assert serial.others.node_ids == parallel.others.node_ids  # the federation's order, not the finishing order
    for name, level in serial.levels.items():
        other = parallel.levels[name]
        np.testing.assert_array_equal(level.membership, other.membership)
        np.testing.assert_array_equal(level.accountant_epsilon, other.accountant_epsilon)
        for key, release in level.releases.items():  # one torch thread per run either way: the same floats
            np.testing.assert_array_equal(release, other.releases[key], err_msg=f"{name} {key}")
        np.testing.assert_array_equal(level.pool_logits, other.pool_logits)
    for node in serial.others.node_ids:
        for key, release in serial.others.truth[node].items():
            np.testing.assert_array_equal(release, parallel.others.truth[node][key])


def test_experiment_records_every_release_and_is_cached(tiny_audit_experiment, tiny_config, tiny_modalities):
    from geofed_secure.audit.experiment import run_experiment

    plan, exp = tiny_audit_experiment
    assert set(exp.levels) == {"no-dp", "dp-eps4"} and exp.others.node_ids == ("img-b", "txt", "tab")
    level = exp.levels["no-dp"]
    assert level.membership.shape == (4, exp.pool_labels.size) and (level.membership.sum(axis=1) == exp.pool_labels.size // 2).all()
    assert level.releases["gram"].shape == (4, 20 * 19 // 2) and level.releases["prototypes"].shape == (4, 10 * 32)
    assert np.isnan(level.accountant_epsilon).all() and (exp.levels["dp-eps4"].accountant_epsilon <= 4.0).all()
    runs_differ = np.abs(level.releases["update"][0] - level.releases["update"][1]).max()
    assert runs_differ > 0  # different halves, different models
    again = run_experiment(plan, base_config=tiny_config, modalities=tiny_modalities)  # from the cache: no training
    np.testing.assert_array_equal(again.levels["dp-eps4"].releases["update"], exp.levels["dp-eps4"].releases["update"])
    assert set(exp.canaries) == {"no-dp", "dp-eps4"}


@pytest.mark.parametrize("name", ["hbc-server", "outside-observer"])
def test_audit_report_holds_every_result_with_intervals_and_plots(tiny_audit_experiment, tmp_path, name):
    from geofed_secure.audit.suite import run_audit

    plan, exp = tiny_audit_experiment
    tm = load_threat_model(f"threat_models/{name}.toml")
    report = run_audit(tm, plan, tmp_path, experiment=exp)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["seed"] == plan.seed and saved["plan"]["runs"] == 4
    attacks = {(r["attack"], r["metadata"]["release"], r["metadata"]["protection"]) for r in saved["results"]}
    for r in saved["results"]:
        assert r["trials"] > 0 and all(m["low"] <= m["value"] <= m["high"] or math.isclose(m["low"], m["high"])
                                       for m in r["metrics"].values())
    if name == "hbc-server":
        assert ("lira_release", "gram", "masking") in attacks and ("prototype_lira", "prototypes", "none") in attacks
        assert ("lira_release_unit", "update", "dp-eps4") in attacks
        assert ("extraction", "gram", "none") in attacks and ("model_rmia", "node model", "dp-eps4") in attacks
        assert {"roc.png", "leakage_vs_epsilon.png", "extraction_vs_anchors.png"} <= set(report["plots"])
    else:  # the observer holds the final model only: no alignment release, no extraction
        assert {a[1] for a in attacks if a[0] == "lira_release"} == {"update"}
        assert not any(a[0] == "extraction" for a in attacks)
    md = (tmp_path / "report.md").read_text()
    assert "## Verdict" in md and "## Membership inference" in md
    for png in report["plots"]:
        assert (tmp_path / png).stat().st_size > 1000


def test_every_result_and_verdict_carries_its_power(tiny_audit_experiment, tmp_path):
    """Issue 17: reports said 'no measurable leakage' without saying what the attack could have detected."""
    from geofed_secure.audit.suite import run_audit

    plan, exp = tiny_audit_experiment
    report = run_audit(load_threat_model("threat_models/hbc-server.toml"), plan, tmp_path, experiment=exp, plots=False)
    for r in report["results"]:
        assert r["power"], r["attack"]
        if "auc" in r["metrics"]:
            pw = r["power"]
            assert 0.5 < pw["min_detectable_auc"] <= 1 and pw["max_certifiable_epsilon"] > 0
            low = r["metadata"]["low_fpr"]
            assert low["0.001"]["negatives"] == r["metadata"]["nonmembers"]
            assert low["0.001"]["resolved"] == (r["metadata"]["nonmembers"] >= 1000)
            assert all(v["achieved_fpr"] <= float(p) for p, v in low.items())
    text = "\n".join(report["verdict"])
    assert "no measurable" not in text and "no leakage" not in text
    for line in report["verdict"]:
        if "not detected (AUC" in line:
            assert "could have detected AUC >=" in line
    canary = [line for line in report["verdict"] if "Canary audit" in line]
    assert canary and all("could certify at most epsilon" in line for line in canary)
    dp = [line for line in report["verdict"] if line.startswith("[dp-eps4] Membership from the GeoDoRA B update")]
    assert dp and "allows membership AUC up to 0.982" in dp[0]  # sigmoid(4): the area under the DP ROC bound
    assert any("NOT covered: prototypes" in line for line in report["verdict"])
    md = (tmp_path / "report.md").read_text()
    assert "detectable AUC >=" in md and "max refutable epsilon" in md and "largest epsilon it could certify" in md


def test_in_clear_gram_gives_exact_inversion_and_masking_does_not(tiny_audit_experiment, tmp_path):
    from geofed_secure.audit.suite import run_audit

    plan, exp = tiny_audit_experiment
    report = run_audit(load_threat_model("threat_models/hbc-server.toml"), plan, tmp_path, experiment=exp, plots=False)
    ext = {(r["metadata"]["protection"], r["metadata"]["anchors"]): r["metrics"] for r in report["results"]
           if r["attack"] == "extraction" and r["metadata"]["release"] == "gram"}
    assert ext[("none", 10)]["anchor_procrustes_error"]["high"] < 1e-6  # a Gram in clear = embeddings up to rotation
    assert ext[("masking", 10)]["anchor_procrustes_error"]["low"] > 1e-3  # the others' residual remains


def test_audit_refuses_a_target_inside_the_coalition_and_too_many_anchors(tiny_audit_experiment, tmp_path):
    import dataclasses

    from geofed_secure.audit.suite import run_audit
    from geofed_secure.audit.threat_model import threat_model_from_dict

    plan, exp = tiny_audit_experiment
    tm = threat_model_from_dict({"name": "c", "adversary": {"role": "colluding", "behaviour": "honest-but-curious",
                                                            "nodes": ["img-a"]}})
    with pytest.raises(ConfigError, match="own nodes"):
        run_audit(tm, plan, tmp_path, experiment=exp)
    with pytest.raises(ConfigError, match="held out"):
        run_audit(load_threat_model("threat_models/hbc-server.toml"), dataclasses.replace(plan, extraction_anchors=(45,)),
                  tmp_path, experiment=exp)


def test_under_ckks_a_colluding_node_key_decrypts_another_nodes_upload_from_the_servers_transcript():
    """Why the view table gives a server + ANY colluding node each individual upload under ckks-v1."""
    from geofed_secure.secagg.ckks import decode_ckks_message, decrypt_chunks, provision_ckks_keys, run_ckks_aggregation

    keys = provision_ckks_keys()
    inputs = {f"node-{i}": np.random.default_rng(i).normal(size=300) for i in range(4)}
    result = run_ckks_aggregation(inputs, keys=keys)
    record = next(r for r in result.transcript if r.kind == "CkksEncryptedInput" and r.sender == "node-1")
    upload = decode_ckks_message(record.data)
    colluder_secret = keys.secret_context  # what node-3 was provisioned with
    recovered = decrypt_chunks(colluder_secret, upload.chunks, upload.length)
    np.testing.assert_allclose(recovered[:300], inputs["node-1"], atol=1e-5)
    tm = load_threat_model("threat_models/server-colluding-with-text-node.toml")
    assert release_view(tm, "ckks", "update") == INDIVIDUAL


def test_geofed_audit_with_a_plan_writes_the_report(tiny_audit_experiment, tiny_config, tmp_path, monkeypatch, capsys):
    from geofed_secure.audit import suite
    from geofed_secure.cli import main

    _, exp = tiny_audit_experiment
    seen = {}
    demo_config = suite.run_config  # the early checks see the tiny federation too
    monkeypatch.setattr(suite, "run_config", lambda plan, epsilon=None, base=None: demo_config(plan, epsilon, base=tiny_config))

    def cached(p, progress):  # the tiny federation's experiment stands in for the demo's
        seen["plan"] = p
        progress("experiment loaded (test)")
        return exp

    monkeypatch.setattr(suite, "run_experiment", cached)
    (tmp_path / "plan.toml").write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in TINY_PLAN.to_dict().items()) + "\n")
    rc = main(["audit", "--threat-model", "threat_models/hbc-server.toml", "--plan", str(tmp_path / "plan.toml"),
               "--out", str(tmp_path / "out"), "--seed", "0", "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0 and (tmp_path / "out" / "report.json").is_file() and (tmp_path / "out" / "roc.png").is_file()
    assert seen["plan"].cache_dir == str(tmp_path / "cache") and seen["plan"].runs == 4
    assert "experiment loaded (test)" in capsys.readouterr().err


@pytest.mark.parametrize("plan, message", [
    (None, "does not exist"),
    ('reference_run = "runs/x"\n', "applies only with run"),
    ('protections = []\nepsilons = []\nrun = "no-such-run"\n', "holds no summary.json"),
])
def test_geofed_audit_refuses_conflicting_or_missing_inputs(tmp_path, capsys, plan, message):
    from geofed_secure.cli import main

    if plan is not None:
        (tmp_path / "plan.toml").write_text(plan)
    assert main(["audit", "--threat-model", "threat_models/hbc-server.toml", "--out", str(tmp_path / "out"),
                 "--plan", str(tmp_path / "plan.toml")]) == 2
    assert message in capsys.readouterr().err


def test_geofed_audit_has_one_front_end(capsys):
    """The first version's ``--run`` / ``--reference-run`` flags are gone: a plan's ``run`` / ``reference_run`` keys
    do the same inside the plan-driven audit."""
    from geofed_secure.cli import main

    with pytest.raises(SystemExit):
        main(["audit", "--threat-model", "threat_models/hbc-server.toml", "--out", ".", "--run", "."])
    assert "unrecognized arguments: --run" in capsys.readouterr().err


def test_a_plan_with_an_experiment_and_a_recorded_run_gives_one_report(tiny_audit_experiment, recorded_runs, tmp_path):
    import dataclasses

    from geofed_secure.audit.suite import run_audit

    plan, exp = tiny_audit_experiment
    tm = load_threat_model("threat_models/hbc-server.toml")
    alone = run_audit(tm, plan, tmp_path / "alone", experiment=exp, plots=False)
    both = run_audit(tm, dataclasses.replace(plan, run=str(recorded_runs["masking"]), reference_run=str(recorded_runs["none"])),
                     tmp_path / "both", experiment=exp, plots=False)
    recorded = [r for r in both["results"] if r["attack"] == "transcript_gram_inversion"]
    assert alone["recorded_run"] is None and both["recorded_run"]["protocol"] == "masking"
    assert len(recorded) == 4 and len(both["results"]) == len(alone["results"]) + 4
    assert both["experiment"] == alone["experiment"] and both["views"] == alone["views"]
    clear = lambda lines: [line for line in lines if not line.startswith("[ckks]")]  # SEAL's own noise: see above
    assert clear(both["verdict"][: len(alone["verdict"])]) == clear(alone["verdict"])
    assert any(line.startswith("[recorded run, masking] Gram inversion, img-a") for line in both["verdict"])
    markdown = (tmp_path / "both" / "report.md").read_text()
    assert "## Membership inference" in markdown and "## Recorded run" in markdown


def test_two_way_bootstrap_keeps_the_point_metrics_and_widens_intervals_for_correlated_trials():
    from geofed_secure.audit.metrics import membership_grid_result

    rng = np.random.default_rng(10)
    membership = rng.random((12, 300)) < 0.5
    # Every run shifts all its scores together (one model), every candidate too (one record): correlated trials.
    scores = rng.normal(0, 1, (12, 1)) + rng.normal(0, 1, (1, 300)) + 0.3 * membership + 0.5 * rng.normal(size=(12, 300))
    grid = membership_grid_result(scores, membership, attack="a", threat_model="t", target="n", seed=0, bootstrap=200)
    flat = membership_result(*mia.trials(scores, membership), attack="a", threat_model="t", target="n", seed=0, bootstrap=200)
    for key in ("auc", "advantage", "tpr_at_0.01_fpr"):
        assert grid.metrics[key].value == flat.metrics[key].value
    width = lambda r: r.metrics["auc"].high - r.metrics["auc"].low
    assert width(grid) > 1.5 * width(flat)
    assert grid.metadata["runs"] == 12 and grid.trials == 3600
    with pytest.raises(DataError):
        membership_grid_result(scores[:, :5], membership, attack="a", threat_model="t", target="n", seed=0)


def test_the_same_experiment_and_seed_give_the_same_report(tiny_audit_experiment, tmp_path):
    from geofed_secure.audit.suite import run_audit

    plan, exp = tiny_audit_experiment
    tm = load_threat_model("threat_models/hbc-server.toml")
    first = run_audit(tm, plan, tmp_path / "a", experiment=exp, plots=False)
    second = run_audit(tm, plan, tmp_path / "b", experiment=exp, plots=False)
    without_ckks = lambda report: [r for r in report["results"] if r["metadata"].get("protection") != "ckks"]
    # CKKS encryption noise (about 1e-6 per coordinate here) comes from SEAL's own CSPRNG, so only the other cells
    # are bit-reproducible; on the tiny model it moves the CKKS cells' AUCs in the third decimal.
    assert without_ckks(first) == without_ckks(second) and len(without_ckks(first)) < len(first["results"])


def test_a_corrupt_or_foreign_experiment_cache_is_refused_and_an_unknown_target_named(tiny_audit_experiment, tmp_path,
                                                                                      tiny_config, tiny_modalities):
    import dataclasses

    from geofed_secure.audit.experiment import load_experiment, run_experiment, save_experiment
    from geofed_secure.errors import CheckpointError

    plan, exp = tiny_audit_experiment
    save_experiment(exp, tmp_path / "ok")
    assert load_experiment(plan, tmp_path / "ok").levels["no-dp"].membership.shape == exp.levels["no-dp"].membership.shape
    (tmp_path / "ok" / "experiment.npz").write_bytes(b"not an npz")
    with pytest.raises(CheckpointError, match="delete the folder"):
        load_experiment(plan, tmp_path / "ok")
    save_experiment(exp, tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "meta.json").read_text())
    (tmp_path / "old" / "meta.json").write_text(json.dumps(meta | {"version": 0}))
    with pytest.raises(CheckpointError, match="cache version"):
        load_experiment(plan, tmp_path / "old")
    with pytest.raises(ConfigError, match="unknown node 'nobody'"):
        run_experiment(dataclasses.replace(plan, target="nobody"), base_config=tiny_config, modalities=tiny_modalities)


def test_the_extraction_verdict_is_the_paired_test_over_runs_whose_power_it_states(tiny_audit_experiment, tmp_path):
    """It compared the spreads of the trials (2.5-97.5%) while stating the power of a paired test of the mean: a
    reduction of 0.07 could then be 'not detected' next to 'could have detected >= 0.009' (found in the standard
    reference report of 2026-12-07). Each verdict line now follows the reduction's t interval over runs."""
    from geofed_secure.audit.power import mean_difference_interval
    from geofed_secure.audit.report import verdict
    from geofed_secure.audit.suite import run_audit

    plan, exp = tiny_audit_experiment
    report = run_audit(load_threat_model("threat_models/hbc-server.toml"), plan, tmp_path, experiment=exp, plots=False)
    rows = [r for r in report["results"] if r["attack"] == "extraction"]
    assert rows
    for r in rows:
        reduction = r["metrics"]["procrustes_error_reduction"]
        assert reduction["low"] <= reduction["value"] <= reduction["high"]
        assert r["metadata"]["runs"] >= 2
    lines = [line for line in verdict(report) if "Extraction from the gram (B" in line]
    assert lines
    for line in lines:
        cell = line[1:line.index("]")]
        best = max((r for r in rows if r["metadata"]["protection"] == cell and r["metadata"]["release"] == "gram"
                    and r["metadata"]["simulated_others"] is not False), key=lambda r: r["metadata"]["anchors"])
        detected = best["metrics"]["procrustes_error_reduction"]["low"] > 0
        assert ("REFUTED" in line) == detected and ("No extraction" in line) == (not detected)
    # from a sum, the adversary that simulates nobody is reported too, at the largest B, with its own test
    plain = [r for r in rows if r["metadata"]["simulated_others"] is False]
    assert {r["metadata"]["protection"] for r in plain} == {"masking", "ckks"}
    assert {r["metadata"]["anchors"] for r in plain} == {max(plan.extraction_anchors)}
    assert all(r["metadata"]["simulated_others"] is None for r in rows if r["metadata"]["protection"] == "none")
    for line in (v for v in verdict(report) if "read as the sum it is" in v):
        cell, release = line[1:line.index("]")], "gram" if "from the gram" in line else "raw_embeddings"
        row = next(r for r in plain if r["metadata"]["protection"] == cell and r["metadata"]["release"] == release)
        assert ("DETECTED" in line) == (row["metrics"]["procrustes_error_reduction"]["low"] > 0)
    # and the interval is the t interval of the per-run means (a known case)
    mean, low, high = mean_difference_interval(np.array([0.05, 0.07, 0.06, 0.08]))
    assert low > 0 and abs(mean - 0.065) < 1e-12 and high < 0.09


def test_an_attack_below_chance_beyond_its_interval_is_flagged_not_credited_with_power():
    """The quick reference reports held many LiRA results at AUC 0.47 [0.44, 0.50] (3 shadows per run): 'not
    detected, could have detected >= 0.54' credited a miscalibrated statistic with a calibrated one's power."""
    from geofed_secure.audit.report import detection

    def row(low, value, high):
        return {"metrics": {"auc": {"value": value, "low": low, "high": high},
                            "tpr_at_0.01_fpr": {"value": 0.01, "low": 0.0, "high": 0.02}},
                "power": {"min_detectable_auc": 0.54}, "metadata": {}, "trials": 5164}

    assert detection(row(0.44, 0.47, 0.498)).startswith("not detected, and BELOW CHANCE")
    assert "could have detected AUC >= 0.540 (80% power)" in detection(row(0.47, 0.50, 0.53))
    assert detection(row(0.51, 0.53, 0.55)).startswith("DETECTED")


def test_vector_lira_with_three_shadows_is_not_below_chance_on_releases_independent_of_membership():
    """What docs/audit.md's BELOW CHANCE paragraph rests on: with the quick plan's design (4 runs, each on a random
    half of 1,291 records) and releases that carry no membership, the isotropic LiRA averages AUC 0.5, so the
    quick reports' 0.47 [0.44, 0.50] is not the estimator's own bias."""
    from scipy.stats import mannwhitneyu

    from geofed_secure.audit.attacks.membership import lira_vector_scores

    rng, runs, pool = np.random.default_rng(0), 4, 1291
    aucs = []
    for _ in range(30):
        m = np.zeros((runs, pool), bool)
        for i in range(runs):
            m[i, rng.permutation(pool)[:pool // 2]] = True
        scores = lira_vector_scores(rng.normal(size=(runs, 64)), m)
        aucs.append(mannwhitneyu(scores[m], scores[~m]).statistic / (m.sum() * (~m).sum()))
    assert abs(np.mean(aucs) - 0.5) < 0.01
    assert np.std(aucs) < 0.02  # one membership draw moves every attack of a report together by about this much
