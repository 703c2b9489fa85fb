"""Tests of geofed_secure.alignment against independent references (loops, explicit H, paper formulas)."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import geofed_secure.alignment.cka as cka_mod
import geofed_secure.alignment.evaluation as eval_mod
import geofed_secure.alignment.gram as gram_mod
import geofed_secure.alignment.lap as lap_mod
from geofed_secure.alignment import (
    center_gram,
    centered_cka,
    cka_loss,
    cosine_gram,
    cross_modal_top1,
    debiased_cka,
    gram_from_upper,
    gram_upper,
    kernel_alignment,
    lap_uncertainty,
    mutual_knn,
    normalise_weights,
    precision_weight,
    relative_representation,
)
from geofed_secure.errors import ConfigError, DataError

# ---------------------------------------------------------------------------------------------
# independent references (written differently from the library on purpose)
# ---------------------------------------------------------------------------------------------


def ref_cosine(u, v) -> float:
    nu = math.sqrt(sum(x * x for x in u))
    nv = math.sqrt(sum(x * x for x in v))
    return sum(x * y for x, y in zip(u, v)) / (nu * nv)


def ref_cosine_gram(z: np.ndarray) -> np.ndarray:
    b = z.shape[0]
    out = np.zeros((b, b))
    for i in range(b):
        for j in range(b):
            out[i, j] = ref_cosine(z[i].tolist(), z[j].tolist())
    return out


def ref_centered_cka(k: np.ndarray, l: np.ndarray) -> float:
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    kc = h @ k @ h
    lc = h @ l @ h
    return float(np.trace(kc @ lc.T) / (np.linalg.norm(kc, "fro") * np.linalg.norm(lc, "fro")))


def ref_unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. 2012 HSIC_1 with explicit loops."""
    n = k.shape[0]
    kt = [[0.0 if i == j else float(k[i, j]) for j in range(n)] for i in range(n)]
    lt = [[0.0 if i == j else float(l[i, j]) for j in range(n)] for i in range(n)]
    tr_kl = sum(kt[i][j] * lt[j][i] for i in range(n) for j in range(n))
    sum_k = sum(kt[i][j] for i in range(n) for j in range(n))
    sum_l = sum(lt[i][j] for i in range(n) for j in range(n))
    # 1^T K~ L~ 1 = sum_i sum_j sum_m K~[i, m] L~[m, j]
    kl_one = sum(
        sum(kt[i][m] for i in range(n)) * sum(lt[m][j] for j in range(n)) for m in range(n)
    )
    return (tr_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kl_one) / (n * (n - 3))


def ref_debiased_cka(k, l) -> float:
    return ref_unbiased_hsic(k, l) / math.sqrt(ref_unbiased_hsic(k, k) * ref_unbiased_hsic(l, l))


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def class_data(rng, n_per_class=30, n_classes=10, d=16, noise=0.3):
    centres = rng.normal(size=(n_classes, d))
    labels = np.repeat(np.arange(n_classes), n_per_class)
    x = centres[labels] + noise * rng.normal(size=(labels.size, d))
    return x, labels, centres


# ---------------------------------------------------------------------------------------------
# doctests of the modules
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [gram_mod, cka_mod, lap_mod, eval_mod])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.failed == 0
    assert result.attempted > 0


# ---------------------------------------------------------------------------------------------
# gram.py
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cosine_gram_matches_loop(dtype):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(7, 5))
    got = cosine_gram(torch.tensor(z, dtype=dtype))
    assert got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(got.numpy(), ref_cosine_gram(z), atol=tol)


def test_cosine_gram_zero_row_is_safe():
    z = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]], requires_grad=True)
    g = cosine_gram(z)
    assert torch.isfinite(g).all()
    assert torch.all(g[1] == 0) and torch.all(g[:, 1] == 0)
    g.sum().backward()
    assert torch.isfinite(z.grad).all()


def test_cosine_gram_rejects_bad_input():
    with pytest.raises(DataError, match="shape"):
        cosine_gram(torch.ones(3))
    with pytest.raises(DataError, match="NaN"):
        cosine_gram(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))


def test_gram_upper_order_matches_loop():
    rng = np.random.default_rng(1)
    g = rng.normal(size=(6, 6))
    expected = [g[i, j] for i in range(6) for j in range(6) if i < j]
    np.testing.assert_array_equal(gram_upper(g), expected)
    got_t = gram_upper(torch.tensor(g))
    assert isinstance(got_t, torch.Tensor)
    np.testing.assert_array_equal(got_t.numpy(), expected)


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=12),
    data=st.data(),
    use_torch=st.booleans(),
)
def test_upper_round_trip(size, data, use_torch):
    m = size * (size - 1) // 2
    upper = data.draw(arrays(np.float64, m, elements=st.floats(-1, 1, allow_nan=False)))
    # upper -> matrix -> upper
    src = torch.tensor(upper) if use_torch else upper
    g = gram_from_upper(src, size)
    assert isinstance(g, torch.Tensor) == use_torch
    g_np = g.numpy() if use_torch else g
    assert g_np.shape == (size, size)
    np.testing.assert_array_equal(g_np, g_np.T)
    np.testing.assert_array_equal(np.diag(g_np), np.ones(size))
    back = gram_upper(g)
    np.testing.assert_array_equal(back.numpy() if use_torch else back, upper)
    # matrix -> upper -> matrix, for a cosine Gram built independently
    z = data.draw(arrays(np.float64, (size, 3), elements=st.floats(0.1, 2)))
    cg = ref_cosine_gram(z)
    np.fill_diagonal(cg, 1.0)
    np.testing.assert_allclose(gram_from_upper(gram_upper(cg), size), cg, atol=0, rtol=0)


def test_gram_from_upper_errors_and_grad():
    with pytest.raises(DataError, match="has 3 entries, got 4"):
        gram_from_upper(np.zeros(4), 3)
    with pytest.raises(DataError, match="1-D"):
        gram_from_upper(np.zeros((3, 1)), 3)
    with pytest.raises(DataError):
        gram_from_upper(np.zeros(0), 0)
    with pytest.raises(DataError, match="square"):
        gram_upper(np.zeros((2, 3)))
    u = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64, requires_grad=True)
    (gram_from_upper(u, 3) * torch.arange(9.0, dtype=torch.float64).reshape(3, 3)).sum().backward()
    # d/du_{ij} of sum W * G = W[i, j] + W[j, i]
    np.testing.assert_allclose(u.grad.numpy(), [1 + 3, 2 + 6, 5 + 7])


# ---------------------------------------------------------------------------------------------
# cka.py
# ---------------------------------------------------------------------------------------------


def test_center_gram_matches_explicit_h():
    rng = np.random.default_rng(2)
    g = rng.normal(size=(8, 8))
    h = np.eye(8) - np.ones((8, 8)) / 8
    np.testing.assert_allclose(center_gram(g), h @ g @ h, atol=1e-12)
    np.testing.assert_allclose(center_gram(torch.tensor(g)).numpy(), h @ g @ h, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_centered_cka_matches_explicit_reference(dtype):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(12, 6))
    y = x @ rng.normal(size=(6, 4)) + 0.5 * rng.normal(size=(12, 4))
    k, l = ref_cosine_gram(x), ref_cosine_gram(y)
    got = centered_cka(torch.tensor(k, dtype=dtype), torch.tensor(l, dtype=dtype))
    assert got.dtype == dtype and got.ndim == 0
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert float(got) == pytest.approx(ref_centered_cka(k, l), abs=tol)
    assert 0.0 < float(got) < 1.0


def test_centered_cka_identical_is_one():
    rng = np.random.default_rng(4)
    g = cosine_gram(torch.tensor(rng.normal(size=(10, 5))))
    assert float(centered_cka(g, g)) == pytest.approx(1.0, abs=1e-12)
    assert float(cka_loss(g, g)) == pytest.approx(0.0, abs=1e-12)


def test_centered_cka_invariant_to_rotation_and_isotropic_scaling():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(15, 6))
    y = np.tanh(x @ rng.normal(size=(6, 8))) + 0.3 * rng.normal(size=(15, 8))
    base = ref_centered_cka(x @ x.T, y @ y.T)
    assert 0.1 < base < 0.99  # non-trivial value, so invariance is informative
    xt = 3.7 * x @ random_rotation(6, rng)
    got_lin = float(centered_cka(torch.tensor(xt @ xt.T), torch.tensor(y @ y.T)))
    assert got_lin == pytest.approx(base, abs=1e-10)
    # cosine Grams: rotating / scaling the features leaves the Gram and hence CKA unchanged
    cos_base = float(centered_cka(cosine_gram(torch.tensor(x)), cosine_gram(torch.tensor(y))))
    cos_rot = float(centered_cka(cosine_gram(torch.tensor(xt)), cosine_gram(torch.tensor(y))))
    assert cos_rot == pytest.approx(cos_base, abs=1e-10)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(3, 16), d=st.integers(1, 8))
def test_centered_cka_in_unit_interval(seed, b, d):
    rng = np.random.default_rng(seed)
    ga = cosine_gram(torch.tensor(rng.normal(size=(b, d))))
    gb = cosine_gram(torch.tensor(rng.normal(size=(b, d))))
    value = float(centered_cka(ga, gb))
    assert -1e-9 <= value <= 1.0 + 1e-9
    assert math.isfinite(value)


def test_centered_cka_constant_gram_is_finite():
    g = torch.ones(5, 5, dtype=torch.float64, requires_grad=True)
    other = cosine_gram(torch.tensor(np.random.default_rng(6).normal(size=(5, 3))))
    value = centered_cka(g, other)
    assert float(value.detach()) == 0.0
    value.backward()
    assert torch.isfinite(g.grad).all()


def test_uncentred_alignment_not_invariant_to_mean_shift_but_centred_is():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(20, 5))
    shifted = x + 4.0 * rng.normal(size=(1, 5))  # same points, different mean
    k, ks = x @ x.T, shifted @ shifted.T
    # centred CKA sees the same geometry
    assert float(centered_cka(torch.tensor(k), torch.tensor(ks))) == pytest.approx(1.0, abs=1e-10)
    # the paper's eq. 2 (uncentred) does not; check it against the formula written out
    ka = kernel_alignment(k, ks)
    expected = np.trace(k @ ks.T) / (np.linalg.norm(k) * np.linalg.norm(ks))
    assert ka == pytest.approx(expected, rel=1e-12)
    assert ka < 0.9
    # a shared constant offset of the Gram entries (a high mean similarity, as in cosine Grams of
    # frozen features): unrelated geometries look aligned to eq. 2, centred CKA is unchanged
    other = rng.normal(size=(20, 5))
    ko = other @ other.T
    c_before = float(centered_cka(torch.tensor(k), torch.tensor(ko)))
    c_after = float(centered_cka(torch.tensor(k + 10.0), torch.tensor(ko + 10.0)))
    assert c_after == pytest.approx(c_before, abs=1e-10)
    assert kernel_alignment(k, ko) < 0.3
    assert kernel_alignment(k + 10.0, ko + 10.0) > 0.8


def test_debiased_cka_matches_loop_reference():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(9, 4))
    y = x @ rng.normal(size=(4, 3)) + rng.normal(size=(9, 3))
    k, l = ref_cosine_gram(x), ref_cosine_gram(y)
    assert debiased_cka(k, l) == pytest.approx(ref_debiased_cka(k, l), rel=1e-10)
    # non-symmetric inputs too (tr(K~ L~) != sum(K~ * L~) there)
    a, c = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    a_psd, c_psd = a @ a.T, c @ c.T
    assert debiased_cka(a_psd + 0.1 * a, c_psd) == pytest.approx(
        ref_debiased_cka(a_psd + 0.1 * a, c_psd), rel=1e-10
    )
    assert debiased_cka(torch.tensor(k), torch.tensor(l)) == pytest.approx(ref_debiased_cka(k, l), rel=1e-10)
    assert debiased_cka(k, k) == pytest.approx(1.0, abs=1e-12)


def test_debiased_cka_near_zero_for_independent_features_while_biased_is_positive():
    rng = np.random.default_rng(9)
    n, d = 100, 500
    debiased, biased = [], []
    for _ in range(3):
        x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d))
        k, l = x @ x.T, y @ y.T
        debiased.append(debiased_cka(k, l))
        biased.append(float(centered_cka(torch.tensor(k), torch.tensor(l))))
    assert abs(np.mean(debiased)) < 0.05
    assert min(biased) > 0.5


def test_debiased_cka_errors():
    with pytest.raises(DataError, match="at least 4"):
        debiased_cka(np.eye(3), np.eye(3))
    with pytest.raises(DataError, match="equal shape"):
        debiased_cka(np.eye(4), np.eye(5))
    with pytest.raises(DataError, match="NaN"):
        debiased_cka(np.full((4, 4), np.nan), np.eye(4))
    with pytest.raises(DataError, match="same anchors"):
        centered_cka(torch.eye(4), torch.eye(5))


def test_cka_loss_gradcheck_float64():
    rng = np.random.default_rng(10)
    consensus = cosine_gram(torch.tensor(rng.normal(size=(5, 3))))
    z = torch.tensor(rng.normal(size=(5, 3)), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: cka_loss(cosine_gram(t), consensus), (z,))
    # gradient w.r.t. the upper-triangle upload path too
    u = gram_upper(cosine_gram(z.detach())).clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: cka_loss(gram_from_upper(t, 5), consensus), (u,))
    # float32 gradient flows and moves the loss down
    z32 = torch.tensor(rng.normal(size=(6, 4)), dtype=torch.float32, requires_grad=True)
    cons32 = cosine_gram(torch.tensor(rng.normal(size=(6, 4)), dtype=torch.float32))
    loss = cka_loss(cosine_gram(z32), cons32)
    loss.backward()
    assert z32.grad is not None and torch.isfinite(z32.grad).all() and z32.grad.abs().sum() > 0
    with torch.no_grad():
        stepped = cka_loss(cosine_gram(z32 - 0.05 * z32.grad), cons32)
    assert float(stepped) < float(loss.detach())


# ---------------------------------------------------------------------------------------------
# lap.py
# ---------------------------------------------------------------------------------------------


def test_lap_uncertainty_matches_loop():
    rng = np.random.default_rng(11)
    z, a = rng.normal(size=(9, 4)), rng.normal(size=(5, 4))
    expected = [(1 - max(ref_cosine(z[i], a[j]) for j in range(5))) / 2 for i in range(9)]
    got = lap_uncertainty(torch.tensor(z), torch.tensor(a))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)
    got32 = lap_uncertainty(torch.tensor(z, dtype=torch.float32), torch.tensor(a, dtype=torch.float32))
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), expected, atol=1e-6)
    assert torch.all((got >= 0) & (got <= 1))


def test_lap_uncertainty_gradcheck_and_errors():
    rng = np.random.default_rng(12)
    z = torch.tensor(rng.normal(size=(4, 3)), requires_grad=True)
    a = torch.tensor(rng.normal(size=(3, 3)))
    assert torch.autograd.gradcheck(lambda t: lap_uncertainty(t, a), (z,))
    with pytest.raises(DataError, match="dimension"):
        lap_uncertainty(torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(DataError, match="NaN"):
        lap_uncertainty(torch.tensor([[float("inf"), 1.0]]), torch.ones(1, 2))


def test_precision_weight_zero_uncertainty_is_clipped():
    u = lap_uncertainty(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
    assert torch.all(u == 0)
    assert precision_weight(u, max_inverse=50.0) == 50.0
    # independent formula: mean of clip(1/u, 1, U)
    vals = [0.0, 0.5, 0.25, 1.0, 0.001]
    expected = sum(50.0 if v == 0 else min(max(1 / v, 1.0), 50.0) for v in vals) / len(vals)
    assert precision_weight(np.array(vals), max_inverse=50.0) == pytest.approx(expected)
    assert precision_weight(torch.tensor(vals)) == pytest.approx(
        sum(100.0 if v == 0 else min(1 / v, 100.0) for v in vals) / len(vals), rel=1e-6
    )


def test_precision_weight_lower_for_samples_far_from_anchors():
    rng = np.random.default_rng(13)
    anchors = rng.normal(size=(6, 8))
    near = np.repeat(anchors, 5, axis=0) + 0.05 * rng.normal(size=(30, 8))
    far = rng.normal(size=(30, 8))
    a = torch.tensor(anchors)
    w_near = precision_weight(lap_uncertainty(torch.tensor(near), a))
    w_far = precision_weight(lap_uncertainty(torch.tensor(far), a))
    assert w_near > 2 * w_far
    weights = normalise_weights({"near": w_near, "far": w_far})
    assert weights["near"] > weights["far"]


def test_precision_weight_errors():
    with pytest.raises(ConfigError) as info:
        precision_weight([0.5], max_inverse=0.5)
    assert info.value.field == "max_inverse"
    with pytest.raises(ConfigError):
        precision_weight([0.5], max_inverse=float("inf"))
    with pytest.raises(DataError, match="\\[0, 1\\]"):
        precision_weight([0.5, 1.5])
    with pytest.raises(DataError, match="NaN"):
        precision_weight([0.5, float("nan")])
    with pytest.raises(DataError, match="none"):
        precision_weight([])


def test_normalise_weights():
    got = normalise_weights({"n1": 2.0, "n2": 6.0, "n3": 2.0})
    assert list(got) == ["n1", "n2", "n3"]
    assert got == pytest.approx({"n1": 0.2, "n2": 0.6, "n3": 0.2})
    huge = normalise_weights({"a": 1e308, "b": 1e308})
    assert huge == pytest.approx({"a": 0.5, "b": 0.5})
    for bad in (0.0, -1.0, float("nan"), float("inf"), "x"):
        with pytest.raises(DataError, match="node 'bad'"):
            normalise_weights({"ok": 1.0, "bad": bad})
    with pytest.raises(DataError):
        normalise_weights({})


# ---------------------------------------------------------------------------------------------
# evaluation.py
# ---------------------------------------------------------------------------------------------


def test_relative_representation_matches_loop():
    rng = np.random.default_rng(14)
    z, a = rng.normal(size=(7, 5)), rng.normal(size=(4, 5))
    expected = [[ref_cosine(z[i], a[j]) for j in range(4)] for i in range(7)]
    np.testing.assert_allclose(relative_representation(z, a), expected, atol=1e-12)
    zero = relative_representation(np.zeros((1, 5)), a)
    assert np.all(zero == 0)
    with pytest.raises(DataError, match="dimension"):
        relative_representation(z, a[:, :3])
    with pytest.raises(DataError, match="NaN"):
        relative_representation(np.full((2, 5), np.nan), a)


def ref_top1(rel_a, la, rel_b, lb) -> float:
    hits = 0
    for i in range(len(rel_a)):
        sims = [ref_cosine(rel_a[i], rel_b[j]) for j in range(len(rel_b))]
        best = max(range(len(rel_b)), key=lambda j: sims[j])
        hits += int(lb[best] == la[i])
    return hits / len(rel_a)


def test_cross_modal_top1():
    rng = np.random.default_rng(15)
    x, labels, centres = class_data(rng, n_per_class=40, noise=0.6)
    anchors = centres + 0.1 * rng.normal(size=centres.shape)
    rel = relative_representation(x, anchors)
    assert cross_modal_top1(rel, labels, rel, labels) == 1.0
    # a second "modality": same concepts, different samples, rotated coordinates and other anchors
    q = random_rotation(x.shape[1], rng)
    y = (centres[labels] + 0.6 * rng.normal(size=x.shape)) @ q
    rel_b = relative_representation(y, anchors @ q)
    got = cross_modal_top1(rel, labels, rel_b, labels)
    assert got == pytest.approx(ref_top1(rel, labels, rel_b, labels))
    assert got > 0.8
    shuffled = rng.permutation(labels)
    chance = cross_modal_top1(rel, labels, rel_b, shuffled)
    assert chance == pytest.approx(ref_top1(rel, labels, rel_b, shuffled))
    assert abs(chance - 0.1) < 0.06
    with pytest.raises(DataError, match="labels_a"):
        cross_modal_top1(rel, labels[:-1], rel_b, labels)
    with pytest.raises(DataError, match="anchor coordinates"):
        cross_modal_top1(rel, labels, rel_b[:, :5], labels)


def ref_mutual_knn(a: np.ndarray, b: np.ndarray, k: int) -> float:
    n = len(a)

    def neighbours(x, i):
        sims = [(ref_cosine(x[i], x[j]), j) for j in range(n) if j != i]
        sims.sort(key=lambda t: -t[0])
        return {j for _, j in sims[:k]}

    return sum(len(neighbours(a, i) & neighbours(b, i)) / k for i in range(n)) / n


def test_mutual_knn():
    rng = np.random.default_rng(16)
    a = rng.normal(size=(60, 8))
    assert mutual_knn(a, a, k=5) == 1.0
    rotated = 2.5 * a @ random_rotation(8, rng)
    assert mutual_knn(a, rotated, k=5) == 1.0
    related = np.tanh(a @ rng.normal(size=(8, 6))) + 0.3 * rng.normal(size=(60, 6))
    assert mutual_knn(a, related, k=5) == pytest.approx(ref_mutual_knn(a, related, 5))
    n, k = 400, 10
    x, y = rng.normal(size=(n, 16)), rng.normal(size=(n, 16))
    assert mutual_knn(x, y, k=k) == pytest.approx(k / (n - 1), abs=0.015)


def test_mutual_knn_errors():
    a = np.random.default_rng(17).normal(size=(5, 3))
    with pytest.raises(ConfigError) as info:
        mutual_knn(a, a, k=0)
    assert info.value.field == "k"
    with pytest.raises(DataError, match="more than 5"):
        mutual_knn(a, a, k=5)
    with pytest.raises(DataError, match="corresponding rows"):
        mutual_knn(a, a[:4], k=2)
