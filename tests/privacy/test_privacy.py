"""Differential privacy on the node: per-sample gradients of GeoDoRA, clipping, the public anchor gradient,
accounting, the privatised precision weight, budgets, checkpoints, and the runtime around them."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import with_sections
from opacus import GradSampleModule

from geofed_secure.alignment.lap import precision_weight
from geofed_secure.cli import _apply_overrides, _build_parser, _resolve_config
from geofed_secure.config import PrivacySection, RunConfig, config_from_dict
from geofed_secure.errors import CheckpointError, ConfigError, PrivacyBudgetExceeded
from geofed_secure.model import geodora
from geofed_secure.model.node_model import NodeModel
from geofed_secure.node.node import Node
from geofed_secure.privacy import (
    PrivacyLedger,
    PrivacyPlan,
    calibrate_noise_multiplier,
    canonical_history,
    epsilon_of,
    prepare_geodora_for_opacus,
    private_precision_weight,
    replace_one_rdp,
)
from geofed_secure.privacy.accounting import RDP_ORDERS
from geofed_secure.privacy.dpsgd import DPSGDRound
from geofed_secure.privacy.noise import DPRandomness, derived_node_secret
from geofed_secure.runtime.federation import build_federation
from geofed_secure.runtime.simulator import Simulator
from geofed_secure.server.checkpoint import CheckpointStore
from geofed_secure.server.server import RoundFailed

MODES = ("ghost", "hooks")


# -- a tiny GeoDoRA node model without dropout (so a batch and a per-sample loop see the same function) ------------
def tiny_model(seed: int = 0) -> NodeModel:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    backbone = BertModel(BertConfig(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                    attention_probs_dropout_prob=0.0))
    model = NodeModel(geodora.apply_geodora(backbone, geodora.GeoDoRAConfig(rank=2), federation_seed=1), in_dim=12, n_classes=10)
    with torch.no_grad():  # move B and m away from their initial values so every term of the DoRA gradient is non-zero
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return model.train()


def batch(n: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 12, generator=gen)
    mask = torch.ones(n, 4, dtype=torch.bool)
    mask[1, 3:] = False  # one padded sample
    return x, mask, torch.randint(0, 10, (n,), generator=gen)


def per_sample_loss(model: NodeModel, x, mask, y) -> torch.Tensor:
    return F.cross_entropy(model.head(model.embed(x, mask)), y, reduction="none")


def trainable(model: NodeModel) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def loop_gradients(model: NodeModel, x, mask, y) -> list[dict[str, torch.Tensor]]:
    """Reference: one plain autograd backward per sample."""
    out = []
    for i in range(len(x)):
        model.zero_grad()
        per_sample_loss(model, x[i:i + 1], mask[i:i + 1], y[i:i + 1]).sum().backward()
        out.append({n: p.grad.detach().clone() for n, p in trainable(model)})
    return out


def test_geodora_per_sample_gradients_equal_an_explicit_loop():
    # Prepare: Opacus hooks on the Opacus-ready GeoDoRA model, and an untouched copy for the loop.
    model = tiny_model()
    reference = copy.deepcopy(model)
    assert prepare_geodora_for_opacus(model) == 4  # query + value in 2 layers
    x, mask, y = batch()
    # Execute
    GradSampleModule(model, batch_first=True, loss_reduction="mean")
    per_sample_loss(model, x, mask, y).mean().backward()
    expected = loop_gradients(reference, x, mask, y)
    # Assert: every trainable tensor (adapter, head, B, DoRA magnitude) matches the loop
    names = [n for n, _ in trainable(model)]
    assert any("lora_magnitude_vector" in n for n in names) and any("lora_B" in n for n in names)
    assert any(n.startswith("adapter.") for n in names) and any(n.startswith("head.") for n in names)
    for name, param in trainable(model):
        for i in range(len(x)):
            assert torch.allclose(param.grad_sample[i], expected[i][name], atol=1e-6, rtol=1e-5), name


def test_stock_peft_dora_is_not_opacus_ready():
    """Why dora_opacus exists: without it Opacus cannot compute DoRA's per-sample gradients (DESIGN.md 7)."""
    model = tiny_model()
    x, mask, y = batch()
    GradSampleModule(model, batch_first=True, loss_reduction="mean")
    with pytest.raises(TypeError):
        per_sample_loss(model, x, mask, y).mean().backward()


def test_prepared_model_computes_the_same_function():
    model, reference = tiny_model(), tiny_model()
    prepare_geodora_for_opacus(model)
    prepare_geodora_for_opacus(model)  # idempotent
    x, mask, _ = batch()
    assert torch.allclose(model.embed(x, mask), reference.embed(x, mask), atol=1e-6)
    assert model.state_dict().keys() == reference.state_dict().keys()


def _dp_round(model, optimizer, *, sigma, clip, mode, ledger=None, expected=5.0, seed=3):
    hook = ledger.optimizer_hook() if ledger else (lambda opt: None)
    return DPSGDRound(model, optimizer, noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=expected,
                      step_hook=hook, randomness=DPRandomness("node-secret", secret=derived_node_secret(seed, "test")),
                      purpose=("test",), grad_sample_mode=mode)


@pytest.mark.parametrize("mode", MODES)
def test_clipped_sum_equals_explicit_loop(mode):
    # Prepare: no noise, a clip bound below most per-sample norms, SGD with lr 1 so the update IS the gradient.
    model = tiny_model()
    reference = copy.deepcopy(model)
    x, mask, y = batch()
    clip = 0.05
    grads = loop_gradients(reference, x, mask, y)
    norms = [torch.sqrt(sum((g ** 2).sum() for g in sample.values())) for sample in grads]
    assert sum(float(n) > clip for n in norms) >= 3  # clipping is active
    expected = {n: sum(min(1.0, clip / (float(norm) + 1e-6)) * g[n] for g, norm in zip(grads, norms)) / 5.0
                for n in grads[0]}
    before = {n: p.detach().clone() for n, p in trainable(model)}
    optimizer = torch.optim.SGD([p for _, p in trainable(model)], lr=1.0)
    # Execute
    with _dp_round(model, optimizer, sigma=0.0, clip=clip, mode=mode) as dp:
        dp.private_backward(per_sample_loss(model, x, mask, y))
        dp.step({})
    # Assert
    for name, param in trainable(model):
        assert torch.allclose(before[name] - param.detach(), expected[name], atol=1e-6), name
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for _, p in trainable(model))  # hooks gone


@pytest.mark.parametrize("mode", MODES)
def test_public_gradient_is_neither_clipped_nor_noised_and_one_accountant_step_per_step(mode):
    # Prepare: two identical models and noise streams; a public gradient far above the clip bound.
    model_a = tiny_model()
    model_b = copy.deepcopy(model_a)
    x, mask, y = batch()
    anchors = torch.randn(6, 4, 12, generator=torch.Generator().manual_seed(9))
    anchor_mask = torch.ones(6, 4, dtype=torch.bool)
    plain = copy.deepcopy(model_a)
    params = [p for _, p in trainable(plain)]
    public_loss = plain.embed(anchors, anchor_mask).pow(2).mean() * 100.0
    grads = torch.autograd.grad(public_loss, params, allow_unused=True)  # the head is not in the anchor pass
    public = {n: g for (n, _), g in zip(trainable(plain), grads) if g is not None}
    assert torch.sqrt(sum((g ** 2).sum() for g in public.values())) > 100 * 1e-3
    plan = PrivacyPlan(epsilon=10.0, delta=1e-5, accountant="rdp", max_grad_norm=1e-3, sample_rate=0.1,
                       steps_per_round=3, lap_sample_rate=0.5, rounds=1)
    ledgers = [PrivacyLedger(plan, 1.0, 5.0), PrivacyLedger(plan, 1.0, 5.0)]
    updates = []
    # Execute: 3 steps each; model_b also gets the public gradient (computed with hooks off, as the node does)
    for model, ledger, with_public in ((model_a, ledgers[0], False), (model_b, ledgers[1], True)):
        before = {n: p.detach().clone() for n, p in trainable(model)}
        optimizer = torch.optim.SGD([p for _, p in trainable(model)], lr=1.0)
        with _dp_round(model, optimizer, sigma=1.0, clip=1e-3, mode=mode, ledger=ledger) as dp:
            dp.zero_grad()
            dp.private_backward(per_sample_loss(model, x, mask, y))
            extra = {}
            if with_public:
                with dp.hooks_off():
                    live = dict(trainable(model))
                    extra = {id(live[n]): g for n, g in public.items()}
            dp.step(extra)
        updates.append({n: before[n] - p.detach() for n, p in trainable(model)})
    # Assert: the difference of the two updates is exactly the public gradient (same noise, same private part)
    for name, gradient in public.items():
        assert torch.allclose(updates[1][name] - updates[0][name], gradient, atol=1e-5), name
    for ledger in ledgers:
        assert ledger.steps == 1 and ledger.history == [(1.0, 0.1, 1)]


@pytest.mark.parametrize("mode", MODES)
def test_empty_poisson_batch_still_adds_noise_and_is_accounted(mode):
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in trainable(model)}
    plan = PrivacyPlan(epsilon=10.0, delta=1e-5, accountant="rdp", max_grad_norm=1.0, sample_rate=0.1,
                       steps_per_round=1, lap_sample_rate=0.5, rounds=1)
    ledger = PrivacyLedger(plan, 2.0, 5.0)
    optimizer = torch.optim.SGD([p for _, p in trainable(model)], lr=1.0)
    with _dp_round(model, optimizer, sigma=2.0, clip=1.0, mode=mode, ledger=ledger, expected=4.0) as dp:
        dp.empty_batch()
        dp.step({})
    moved = torch.cat([(before[n] - p.detach()).flatten() for n, p in trainable(model)])
    assert ledger.steps == 1
    assert abs(float(moved.std()) - 2.0 * 1.0 / 4.0) < 0.05  # pure noise of std sigma C / E|B|


# -- accounting -----------------------------------------------------------------------------------------------------
def _gaussian_mechanism_epsilon(sigma: float, sensitivity: float, delta: float) -> float:
    """Exact epsilon of the (unsampled) Gaussian mechanism (Balle and Wang 2018, Theorem 8), solved for epsilon."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    def excess(eps):
        a, b = sensitivity / (2 * sigma), eps * sigma / sensitivity
        return norm.cdf(a - b) - np.exp(eps) * norm.cdf(-a - b) - delta

    return brentq(excess, 0.0, 100.0)


def _subsampled_replace_one_epsilon(sigma: float, q: float, delta: float) -> float:
    """Exact epsilon of ONE Poisson-subsampled Gaussian step under replace-one, from the hockey-stick divergence of
    the pair (1-q) N(0, s^2) + q N(-1, s^2) vs (1-q) N(0, s^2) + q N(1, s^2), integrated on a fine grid."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    x = np.linspace(-1 - 40 * sigma, 1 + 40 * sigma, 400_001)
    p = (1 - q) * norm.pdf(x, 0, sigma) + q * norm.pdf(x, -1, sigma)
    r = (1 - q) * norm.pdf(x, 0, sigma) + q * norm.pdf(x, 1, sigma)
    return brentq(lambda eps: np.maximum(p - np.exp(eps) * r, 0).sum() * (x[1] - x[0]) - delta, 0.0, 50.0)


def test_pld_accountant_is_dp_accounting_under_replace_one():
    from dp_accounting import dp_event, pld
    from dp_accounting.privacy_accountant import NeighboringRelation

    history = [(1.1, 0.05, 32), (6.0, 0.3, 4)]
    direct = pld.PLDAccountant(NeighboringRelation.REPLACE_ONE, value_discretization_interval=1e-4)
    for sigma, q, steps in history:
        direct.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
    ours = epsilon_of(history, 1e-5, "pld")
    assert direct.get_epsilon(1e-5) <= ours <= direct.get_epsilon(1e-5) + 0.01  # coarser grid, still pessimistic
    add_remove = pld.PLDAccountant(NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=1e-4)
    for sigma, q, steps in history:
        add_remove.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
    assert ours > 1.2 * add_remove.get_epsilon(1e-5)  # replace-one is the costlier relation (here 2.54 vs 1.89)


@pytest.mark.parametrize("kind", ["pld", "rdp"])
def test_replace_one_accountants_agree_with_exact_computations(kind):
    # Without subsampling, replace-one is the Gaussian mechanism with sensitivity 2 (twice the clip radius).
    for sigma in (1.0, 3.0):
        exact = _gaussian_mechanism_epsilon(sigma, 2.0, 1e-5)
        ours = epsilon_of([(sigma, 1.0, 1)], 1e-5, kind)
        assert exact - 1e-6 <= ours <= exact * (1.002 if kind == "pld" else 1.35), (sigma, exact, ours)
    # One subsampled step, against the hockey-stick divergence of the replace-one pair integrated numerically.
    for sigma, q in ((1.0, 0.2), (2.0, 0.4)):
        exact = _subsampled_replace_one_epsilon(sigma, q, 1e-5)
        ours = epsilon_of([(sigma, q, 1)], 1e-5, kind)
        assert exact - 1e-4 <= ours <= exact * (1.01 if kind == "pld" else 1.5) + 0.01, (sigma, q, exact, ours)


def test_replace_one_rdp_matches_a_high_precision_integral_and_bounds_the_pld():
    import mpmath

    mpmath.mp.dps = 20
    for sigma, q in ((1.0, 0.05), (5.0, 0.39)):
        rdp = replace_one_rdp(sigma, q)
        for index in (0, 8, 24):
            a, s_, q_ = mpmath.mpf(RDP_ORDERS[index]), mpmath.mpf(sigma), mpmath.mpf(q)

            def density(x, shift, s_=s_, q_=q_):
                return ((1 - q_) * mpmath.npdf(x, 0, s_) + q_ * mpmath.npdf(x, shift, s_))

            integral = mpmath.quad(lambda x, a=a: density(x, -1) ** a * density(x, 1) ** (1 - a),
                                   [-mpmath.inf, -2 * a, -a, -1, 0, 1, mpmath.inf])
            reference = float(mpmath.log(integral) / (a - 1))
            assert reference <= rdp[index] <= reference * (1 + 1e-5) + 1e-12, (sigma, q, RDP_ORDERS[index])
    for history in ([(1.0, 0.05, 48), (5.0, 0.3, 6)], [(0.72, 0.02, 48), (5.1, 0.16, 6)]):
        pld_eps, rdp_eps = epsilon_of(history, 1e-5, "pld"), epsilon_of(history, 1e-5, "rdp")
        assert pld_eps < rdp_eps < 1.3 * pld_eps  # both bound the same pair; RDP is the looser


# The demo at batch 32 (n and sampling rates from the demo partition), calibrated for epsilon 3 by the add/remove
# accounting that geofed used before (Opacus PRV; README: noise multipliers 0.72-0.94, sigma_w 11.63 on images-a).
DEMO_EPS3_ADD_REMOVE = {"clinic-images-a": (653, 0.941, 11.63), "lab-notes-text": (1600, 0.718, 5.13)}


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")  # inside Opacus's PRV domain estimate
@pytest.mark.parametrize("node", sorted(DEMO_EPS3_ADD_REMOVE))
def test_the_old_calibration_overspends_under_replace_one_and_the_new_one_does_not(node):
    from opacus.accountants import PRVAccountant

    n, old_sigma, old_weight_sigma = DEMO_EPS3_ADD_REMOVE[node]
    plan = PrivacyPlan(epsilon=3.0, delta=1e-5, accountant="pld", max_grad_norm=1.0, sample_rate=32 / n, steps_per_round=8,
                       lap_sample_rate=256 / n, rounds=6)
    old = [(old_sigma, plan.sample_rate, 48), (old_weight_sigma, plan.lap_sample_rate, 6)]
    opacus = PRVAccountant()
    opacus.history = old
    assert abs(opacus.get_epsilon(delta=1e-5) - 3.0) < 0.05  # what the add/remove accounting claimed
    assert epsilon_of(old, 1e-5, "pld") > 3.2  # what it spent under replace-one (issue 12: 3.2-3.7)
    sigma, weight_sigma = plan.calibrate()
    spent = epsilon_of(plan.round_history(sigma, weight_sigma) * 6, 1e-5, "pld")
    assert 0.97 * 3.0 <= spent <= 3.0 and sigma > old_sigma and weight_sigma > 0


@pytest.mark.parametrize("share", [0.1, 0.5])
def test_calibration_splits_the_budget_and_covers_every_mechanism(share):
    plan = PrivacyPlan(epsilon=2.0, delta=1e-5, accountant="rdp", max_grad_norm=1.0, sample_rate=0.05, steps_per_round=8,
                       lap_sample_rate=0.3, rounds=6, weight_budget_share=share)
    sigma, weight_sigma = plan.calibrate()
    weights_alone = epsilon_of([(weight_sigma, 0.3, 6)], 1e-5, "rdp")
    total = epsilon_of([(sigma, 0.05, 48), (weight_sigma, 0.3, 6)], 1e-5, "rdp")
    sgd_alone = epsilon_of([(sigma, 0.05, 48)], 1e-5, "rdp")
    assert 0.98 * share * 2.0 <= weights_alone <= share * 2.0
    assert 0.98 * 2.0 <= total <= 2.0 and sgd_alone < total  # the weight releases are part of the budget


def test_interleaving_does_not_change_epsilon_and_impossible_budgets_are_refused():
    interleaved = [(1.1, 0.05, 8), (1.1, 0.3, 1)] * 4
    assert epsilon_of(interleaved, 1e-5, "pld") == epsilon_of([(1.1, 0.05, 32), (1.1, 0.3, 4)], 1e-5, "pld")
    with pytest.raises(ConfigError, match="cannot be met"):
        calibrate_noise_multiplier(1e-4, 1e-12, "rdp", ((1.0, 100000),))


# -- the privatised precision weight --------------------------------------------------------------------------------
def test_private_weight_without_noise_is_the_clipped_mean_and_noise_has_the_stated_scale():
    u = np.random.default_rng(0).uniform(0.0, 0.2, 200)
    exact = private_precision_weight(u, expected_count=200, max_inverse=20.0, noise_multiplier=0.0,
                                     generator=torch.Generator().manual_seed(0), secure_mode=False)
    assert exact == pytest.approx(precision_weight(u, max_inverse=20.0), rel=1e-12)
    draws = [private_precision_weight(np.full(100, 0.1), expected_count=100, max_inverse=20.0, noise_multiplier=0.5,
                                      generator=torch.Generator().manual_seed(s), secure_mode=False) for s in range(2000)]
    assert np.std(draws) == pytest.approx(0.5 * 19.0 / 2 / 100, rel=0.08)  # sigma (U - 1) / 2 / E|S|
    assert min(draws) >= 1.0 and max(draws) <= 20.0


def test_a_record_contributes_within_the_radius_the_accountant_assumes():
    # Replace-one accounting assumes each sampled record moves the noiseless sum by at most h = (U - 1) / 2 from
    # where an unsampled record leaves it, so a substituted record moves it by at most 2 h = U - 1.
    rng = np.random.default_rng(1)
    base = rng.uniform(0.01, 1.0, 50)
    kw = {"expected_count": 50, "max_inverse": 100.0, "noise_multiplier": 0.0, "secure_mode": False}
    h = 99.0 / 2

    def released_sum(u):  # undo the post-processing (clipping inactive in this range)
        return (private_precision_weight(u, generator=torch.Generator(), **kw) - 1 - h) * 50

    without = released_sum(base[1:])
    for extra in (0.0, 1.0, 0.5, 0.02):  # u = 0 and u = 1 are the most influential records
        assert abs(released_sum(np.append(base[1:], extra)) - without) <= h + 1e-9
    shift = abs(released_sum(np.append(base[1:], 0.0)) - released_sum(np.append(base[1:], 1.0)))
    assert shift == pytest.approx(2 * h)  # substitution: the bound is attained


# -- the node -------------------------------------------------------------------------------------------------------
def dp_config(tiny_config, **privacy):
    return tiny_config.replace(privacy=PrivacySection(**({"epsilon": 4.0, "accountant": "rdp"} | privacy)))


def make_node(config, tiny_modalities, tiny_backbone_dir, node_id="img-a") -> Node:
    fed = build_federation(config, tiny_modalities)
    spec = next(n for n in config.nodes if n.id == node_id)
    from geofed_secure.model.backbone import load_backbone
    return Node(spec, fed.nodes[node_id], config, anchor_digest=fed.anchor_digest,
                backbone_factory=lambda: load_backbone(str(tiny_backbone_dir)))


def test_node_refuses_a_round_past_its_budget_and_stays_unchanged(tiny_config, tiny_modalities, tiny_backbone_dir):
    config = dp_config(with_sections(tiny_config, federation={"rounds": 2}))
    node = make_node(config, tiny_modalities, tiny_backbone_dir)
    plan = node.privacy.plan
    assert plan.sample_rate == 16 / len(node.data.train) and plan.lap_sample_rate == 64 / len(node.data.train)
    node.local_round(1, consensus=None)
    node.local_round(2, consensus=None)
    assert node.privacy.steps == 2 * config.training.local_steps and node.privacy.releases == 2
    ledger = node.privacy
    assert canonical_history(ledger.history) == [(ledger.noise_multiplier, plan.sample_rate, 6),
                                                 (ledger.weight_noise_multiplier, plan.lap_sample_rate, 2)]
    spent = node.privacy.spent()
    assert spent <= 4.0
    state = {k: v.clone() for k, v in node.state_dict().items()}
    with pytest.raises(PrivacyBudgetExceeded, match="refuses round 3") as info:
        node.local_round(3, consensus=None)
    assert info.value.budget == 4.0 and info.value.after > 4.0
    after = node.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state) and node.privacy.spent() == spent


def test_dp_upload_weight_is_noised(tiny_config, tiny_modalities, tiny_backbone_dir):
    plain = make_node(tiny_config, tiny_modalities, tiny_backbone_dir)
    private = make_node(dp_config(tiny_config), tiny_modalities, tiny_backbone_dir)
    w_plain = float(plain.local_round(1, consensus=None)["precision_weight"][0])
    w_private = float(private.local_round(1, consensus=None)["precision_weight"][0])
    assert w_plain != w_private and 1.0 <= w_private <= tiny_config.training.max_inverse_uncertainty


def _upload(tiny_config, tiny_modalities, tiny_backbone_dir, *, secret=None, **privacy):
    config = dp_config(tiny_config, **privacy)
    fed = build_federation(config, tiny_modalities)
    spec = config.nodes[0]
    from geofed_secure.model.backbone import load_backbone
    node = Node(spec, fed.nodes[spec.id], config, anchor_digest=fed.anchor_digest, dp_secret=secret,
                backbone_factory=lambda: load_backbone(str(tiny_backbone_dir)))
    payload = node.local_round(1, consensus=None)
    return np.concatenate([payload[k].ravel() for k in sorted(payload) if k.startswith("weighted/")])


def test_default_dp_noise_is_not_a_function_of_the_run_config(tiny_config, tiny_modalities, tiny_backbone_dir):
    """The server holds the whole run configuration (federation seed included). In the default mode two nodes built
    from that same configuration and data, differing only in their secret, release different noisy uploads; the
    same secret gives the same upload (so the node can resume); and what the configuration alone determines (the
    shared-seed stream a server could regenerate) is not what the default node released."""
    args = (tiny_config, tiny_modalities, tiny_backbone_dir)
    first, second = derived_node_secret(0, "a"), derived_node_secret(0, "b")
    default_a, default_b = _upload(*args, secret=first), _upload(*args, secret=second)
    assert not np.array_equal(default_a, default_b)
    assert np.array_equal(default_a, _upload(*args, secret=first))
    assert not np.array_equal(_upload(*args), _upload(*args))  # no secret given: os.urandom, never the same twice
    server_regenerated = _upload(*args, shared_seed_noise=True)
    assert np.array_equal(server_regenerated, _upload(*args, shared_seed_noise=True))  # the opt-in IS a function of it
    assert not np.array_equal(default_a, server_regenerated) and not np.array_equal(default_b, server_regenerated)
    # The streams themselves: same purpose, keyed by the secret, unrelated to the federation-seed stream.
    noise = [DPRandomness("node-secret", secret=k).noise_generator("sgd", "img-a", 1, 1) for k in (first, second)]
    seeded = DPRandomness("shared-seed", federation_seed=tiny_config.federation.seed).noise_generator("sgd", "img-a", 1, 1)
    draws = [torch.randn(4, generator=g) for g in (*noise, seeded)]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert repr(DPRandomness("node-secret", secret=first)) == "DPRandomness(source='node-secret')"  # never printed


def test_secure_mode_noise_is_never_reproducible(tiny_config, tiny_modalities, tiny_backbone_dir):
    args = (tiny_config, tiny_modalities, tiny_backbone_dir)
    same = derived_node_secret(0, "a")
    assert not np.array_equal(_upload(*args, secret=same, secure_mode=True), _upload(*args, secret=same, secure_mode=True))


# -- the runtime ----------------------------------------------------------------------------------------------------
def _recorded_run(config, tiny_modalities, out, **kwargs):
    from geofed_secure.runtime.simulator import SilentReporter

    class Recorder(SilentReporter):
        def __init__(self) -> None:
            self.lines: list[str] = []

        def log(self, message: str) -> None:
            self.lines.append(message)

    reporter = Recorder()
    summary = Simulator(config, tiny_modalities, out, reporter=reporter, **kwargs).run().summary
    return summary, " ".join(reporter.lines)


def test_summary_names_the_adjacency_and_whom_the_epsilon_holds_against(tiny_config, tiny_modalities, tmp_path):
    config = dp_config(with_sections(tiny_config, federation={"rounds": 2}), accountant="pld")
    summary, notice = _recorded_run(config, tiny_modalities, tmp_path)
    # the run log states the calibrated noise, the adjacency and against whom the budget holds
    assert "replace-one adjacency" in notice and "noise multipliers img-a" in notice
    assert "DP epsilon holds against: the server; other nodes; outside observers of the final model" in notice
    assert "keeps in its own checkpoint" in notice
    privacy = json.loads((tmp_path / "summary.json").read_text())["privacy"]
    assert privacy == json.loads(json.dumps(summary["privacy"]))
    assert privacy["enabled"] and set(privacy["nodes"]) == {n.id for n in config.nodes}
    assert privacy["adjacency"] == "replace-one" and "same size n and differ in one record" in privacy["unit"]
    assert privacy["noise_source"] == "node-secret" and privacy["accountant"].startswith("pld (dp_accounting")
    assert privacy["holds_against"] == ["the server", "other nodes", "outside observers of the final model"]
    for node in privacy["nodes"].values():
        assert {"epsilon", "delta", "accountant", "noise_multiplier", "sample_rate", "steps", "max_grad_norm"} <= set(node)
        assert 0 < node["epsilon"] <= 4.0 and node["accountant"] == "pld" and node["adjacency"] == "replace-one"
        assert node["steps"] == 2 * 3
    assert "precision weight p_k" in privacy["covers"]
    assert Simulator(tiny_config, tiny_modalities, tmp_path / "plain").privacy_notice() == []


def test_the_reproducible_opt_in_says_its_epsilon_does_not_hold_against_the_server(tiny_config, tiny_modalities, tmp_path):
    config = dp_config(with_sections(tiny_config, federation={"rounds": 1}), shared_seed_noise=True)
    summary, notice = _recorded_run(config, tiny_modalities, tmp_path)
    privacy = summary["privacy"]
    assert privacy["noise_source"] == "shared-seed" and privacy["shared_seed_noise"] is True
    assert "the server" not in privacy["holds_against"] and "other nodes" not in privacy["holds_against"]
    assert {"the server", "other nodes"} <= set(privacy["does_not_hold_against"])
    assert "does NOT hold against the server" in notice and "It does NOT hold against: the server; other nodes" in notice
    secure = dp_config(with_sections(tiny_config, federation={"rounds": 1}), secure_mode=True)
    secure_privacy = _recorded_run(secure, tiny_modalities, tmp_path / "secure")[0]["privacy"]
    assert secure_privacy["noise_source"] == "os-entropy" and "the server" in secure_privacy["holds_against"]


def test_node_secrets_stay_in_each_nodes_own_checkpoint(tiny_config, tiny_modalities, tmp_path):
    config = dp_config(with_sections(tiny_config, federation={"rounds": 1}, secure={"protocol": "masking"}))
    secrets_ = {n.id: derived_node_secret(3, n.id) for n in config.nodes}
    Simulator(config, tiny_modalities, tmp_path, secure_seed=1, node_secrets=secrets_).run()
    found: dict[str, list[str]] = {k: [] for k in secrets_}
    for path in sorted(p for p in tmp_path.rglob("*") if p.is_file()):
        blob = path.read_bytes()
        for node_id, secret in secrets_.items():
            if secret in blob or secret.hex().encode() in blob or bytes(str(list(secret)), "ascii") in blob:
                found[node_id].append(str(path.relative_to(tmp_path)))
    # the node's own state file and nothing else: not config.json, summary.json, transcript, server state, logs
    assert found == {k: [f"checkpoints/round-0001/nodes/{k}.safetensors"] for k in secrets_}


def test_a_node_out_of_budget_is_left_out_and_the_others_continue(tiny_config, tiny_modalities, tmp_path):
    config = dp_config(with_sections(tiny_config, federation={"rounds": 1}))
    sim = Simulator(config, tiny_modalities, tmp_path)
    spent = sim.nodes["txt"].privacy
    spent.history = [(spent.noise_multiplier, 1.0, 10_000)]  # e.g. its budget went to another study
    record = sim.run().summary["rounds"][0]
    assert record["nodes"]["txt"]["failure"] == "privacy_budget_exhausted"  # the typed code the server records
    assert all(record["nodes"][k]["failure"] is None and record["nodes"][k]["bytes_uploaded"] > 0 for k in ("img-a", "img-b", "tab"))


def test_resume_keeps_the_spent_budget_and_refuses_extra_rounds(tiny_config, tiny_modalities, tmp_path):
    config = dp_config(with_sections(tiny_config, federation={"rounds": 2}))
    secrets_ = {n.id: derived_node_secret(5, n.id) for n in config.nodes}  # what each node drew when the run started
    reference = Simulator(config, tiny_modalities, tmp_path / "ref", node_secrets=secrets_).run()

    def crash_in_round_2(stage, round_, node_id):
        if stage == "local_training" and round_ == 2 and node_id == "txt":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Simulator(config, tiny_modalities, tmp_path / "run", fault_hook=crash_in_round_2, node_secrets=secrets_).run()
    # The resumed nodes draw fresh secrets and must replace them by the ones in their checkpoints: bit-identical.
    resumed = Simulator(config, tiny_modalities, tmp_path / "run").run(resume=True)
    for key, value in reference.global_state.items():
        assert np.array_equal(value, resumed.global_state[key]), key
    assert resumed.summary["privacy"] == reference.summary["privacy"]
    # One more round than planned: every node refuses, the round fails, the last good checkpoint stays.
    longer = with_sections(config, federation={"rounds": 3})
    with pytest.raises(RoundFailed, match="privacy_budget_exhausted"):
        Simulator(longer, tiny_modalities, tmp_path / "run").run(resume=True)
    assert CheckpointStore(tmp_path / "run").latest_round() == 2


def test_checkpoint_without_privacy_state_is_refused_for_a_dp_node(tiny_config, tiny_modalities, tiny_backbone_dir):
    plain = make_node(tiny_config, tiny_modalities, tiny_backbone_dir)
    private = make_node(dp_config(tiny_config), tiny_modalities, tiny_backbone_dir)
    with pytest.raises(CheckpointError, match="without DP"):
        private.load_state_dict(plain.state_dict())
    seeded = make_node(dp_config(tiny_config, shared_seed_noise=True), tiny_modalities, tiny_backbone_dir)
    assert not any(k == "privacy/node_secret" for k in seeded.state_dict())  # nothing secret to keep in that mode
    with pytest.raises(CheckpointError, match="no DP node secret"):
        private.load_state_dict(seeded.state_dict())


def test_dp_composes_with_masking(tiny_config, tiny_modalities, tmp_path):
    config = dp_config(with_sections(tiny_config, federation={"rounds": 1}, secure={"protocol": "masking"}))
    summary = Simulator(config, tiny_modalities, tmp_path, secure_seed=1).run().summary
    assert summary["secure_aggregation"]["protocol"] == "masking"
    assert all(0 < v["epsilon"] <= 4.0 and v["weight_releases"] == 1 for v in summary["privacy"]["nodes"].values())


# -- configuration and command line ---------------------------------------------------------------------------------
@pytest.mark.parametrize("privacy, field", [
    ({"epsilon": -1.0}, "privacy.epsilon"), ({"epsilon": float("nan")}, "privacy.epsilon"), ({"delta": 0.0}, "privacy.delta"),
    ({"delta": 1.0}, "privacy.delta"), ({"accountant": "gdp"}, "privacy.accountant"), ({"max_grad_norm": 0.0}, "privacy.max_grad_norm"),
    ({"grad_sample_mode": "functorch"}, "privacy.grad_sample_mode"), ({"weight_budget_share": 1.0}, "privacy.weight_budget_share"), ({"secure_mode": "yes"}, "privacy.secure_mode"),
    ({"accountant": "prv"}, "privacy.accountant"), ({"secure_mode": True, "shared_seed_noise": True}, "privacy.shared_seed_noise"),
    ({"shared_seed_noise": 1}, "privacy.shared_seed_noise"),
    ({"epsilon": 1.0, "sigma": 2.0}, "privacy.sigma"),
])
def test_bad_privacy_config_names_the_field(privacy, field):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"privacy": privacy})
    assert info.value.field == field


def test_dp_refuses_bridge_nodes():
    nodes = [{"id": "bridge", "modality": "image", "paired_modality": "text"}, {"id": "t", "modality": "text"},
             {"id": "b", "modality": "tabular"}]
    with pytest.raises(ConfigError, match="InfoNCE"):
        config_from_dict({"privacy": {"epsilon": 3.0}, "nodes": nodes})
    config_from_dict({"nodes": nodes})  # fine without DP


def test_cli_flags_set_the_privacy_section(tmp_path):
    args = _build_parser().parse_args(["run", "--dp-epsilon", "3", "--dp-delta", "1e-6", "--dp-accountant", "rdp",
                                       "--dp-max-grad-norm", "0.5", "--dp-secure-mode"])
    privacy = _apply_overrides(RunConfig(), args).privacy
    assert privacy == PrivacySection(epsilon=3.0, delta=1e-6, accountant="rdp", max_grad_norm=0.5, secure_mode=True)
    opt_in = _apply_overrides(RunConfig(), _build_parser().parse_args(["run", "--dp-epsilon", "3", "--dp-shared-seed-noise"]))
    assert opt_in.privacy == PrivacySection(epsilon=3.0, shared_seed_noise=True)
    with pytest.raises(SystemExit):  # the add/remove-only Opacus accountant is gone from the command line
        _build_parser().parse_args(["run", "--dp-accountant", "prv"])
    assert _apply_overrides(RunConfig(), _build_parser().parse_args(["run"])).privacy == PrivacySection()
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(RunConfig())))
    with pytest.raises(ConfigError, match="--dp-epsilon"):
        _resolve_config(_build_parser().parse_args(["run", "--resume", str(tmp_path), "--dp-epsilon", "8"]))
    with pytest.raises(ConfigError, match="--dp-shared-seed-noise"):
        _resolve_config(_build_parser().parse_args(["run", "--resume", str(tmp_path), "--dp-shared-seed-noise"]))


def test_demo_toml_spells_out_the_privacy_defaults():
    from geofed_secure.config import load_config

    assert load_config("examples/demo.toml").privacy == PrivacySection()
    assert not PrivacySection().enabled and PrivacySection(epsilon=1.0).enabled


def test_a_failed_round_rolls_back_the_model_but_not_the_spent_budget(tiny_config, tiny_modalities, tiny_backbone_dir,
                                                                      monkeypatch):
    from geofed_secure.errors import TrainingError
    from geofed_secure.wire.round import RoundBroadcast

    node = make_node(dp_config(tiny_config), tiny_modalities, tiny_backbone_dir)
    state = {k: v.clone() for k, v in node.state_dict().items() if not k.startswith("privacy/")}
    broadcast = RoundBroadcast(federation_id=tiny_config.federation.id, round=1, anchor_digest=node.anchor_digest,
                               global_state={k: v.numpy() for k, v in geodora.get_lora_b(node.model.backbone).items()})

    def fail(*args, **kwargs):
        raise TrainingError("injected failure after the DP steps")

    monkeypatch.setattr(node, "_precision_weight", fail)
    with pytest.raises(TrainingError, match="injected"):
        node.handle_broadcast(broadcast)
    after = node.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)  # model as before the round
    assert node.privacy.steps == tiny_config.training.local_steps  # ... but the steps taken stay spent


def test_privacy_doctests():
    import doctest

    from geofed_secure.privacy import accounting

    result = doctest.testmod(accounting)
    assert result.attempted > 0 and result.failed == 0


def test_dp_recipe_example_differs_from_the_demo_only_in_the_recipe():
    from geofed_secure.config import load_config

    recipe, demo = load_config("examples/dp-recipe.toml"), RunConfig()
    assert recipe.privacy == dataclasses.replace(demo.privacy, epsilon=8.0)
    assert recipe.training == dataclasses.replace(demo.training, batch_size=256, lr=0.005)
    assert recipe.replace(privacy=demo.privacy, training=demo.training) == demo
