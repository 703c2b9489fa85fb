"""Collapse diagnostics, the collapse guard, normalised centred Grams and centred LAP (issue 16), against explicit
references (H as a matrix, eigenvalues by numpy, row sums by loops)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

import geofed_secure.alignment.geometry as geometry_mod
from geofed_secure.alignment.geometry import (
    centred_gram_from_upper,
    effective_rank,
    gram_scale,
    normalised_centred_gram,
    scale_floor_penalty,
)
from geofed_secure.alignment.gram import cosine_gram, gram_upper
from geofed_secure.alignment.lap import centred_lap_uncertainty, lap_uncertainty, precision_weight
from geofed_secure.errors import ConfigError


def explicit_centred(g: np.ndarray) -> np.ndarray:
    b = g.shape[0]
    h = np.eye(b) - np.ones((b, b)) / b
    return h @ g @ h


def test_doctests():
    assert doctest.testmod(geometry_mod).failed == 0


def test_gram_scale_and_effective_rank_match_explicit_formulas():
    rng = np.random.default_rng(0)
    g = cosine_gram(torch.from_numpy(rng.normal(size=(12, 5)))).numpy()
    c = explicit_centred(g)
    assert gram_scale(g) == pytest.approx(np.sqrt((c * c).sum()) / 12, rel=1e-10)
    eig = np.linalg.eigvalsh(c)
    p = np.clip(eig, 0, None) / np.clip(eig, 0, None).sum()
    p = p[p > 0]
    assert effective_rank(g) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-8)
    assert 1.0 < effective_rank(g) <= 5.0 + 1e-9  # 12 points in 5 dimensions


def test_collapse_shows_in_scale_and_rank():
    rng = np.random.default_rng(1)
    healthy = torch.from_numpy(rng.normal(size=(20, 8)))
    collapsed = torch.ones(20, 8, dtype=torch.float64) * 5 + 1e-4 * healthy  # every embedding points one way
    assert gram_scale(cosine_gram(healthy)) > 0.1
    assert gram_scale(cosine_gram(collapsed)) < 1e-6
    assert effective_rank(np.ones((6, 6))) == 0.0  # no direction left at all
    line = torch.tensor([[1.0, t] for t in np.linspace(-1, 1, 9)], dtype=torch.float64)
    assert effective_rank(cosine_gram(line)) < effective_rank(cosine_gram(healthy))


def test_normalised_centred_gram_round_trips_through_its_upper_triangle_and_sums():
    rng = np.random.default_rng(2)
    grams = [cosine_gram(torch.from_numpy(rng.normal(size=(7, 4)) + 3 * k)) for k in range(3)]
    uploads = [normalised_centred_gram(g) for g in grams]
    for g, u in zip(grams, uploads):
        c = explicit_centred(g.numpy())
        assert np.allclose(u.numpy(), c / np.linalg.norm(c), atol=1e-12)
        assert np.allclose(u.numpy().sum(axis=1), 0.0, atol=1e-12)
        assert np.allclose(centred_gram_from_upper(gram_upper(u), 7).numpy(), u.numpy(), atol=1e-12)
    summed = sum(gram_upper(u) for u in uploads)  # what the server holds: the sum of the uploaded triangles
    assert np.allclose(centred_gram_from_upper(summed, 7).numpy(), sum(u.numpy() for u in uploads), atol=1e-12)
    assert torch.equal(normalised_centred_gram(torch.ones(4, 4)), torch.zeros(4, 4))


def test_scale_floor_penalty_is_zero_above_the_floor_and_pushes_a_collapsing_node_apart():
    rng = np.random.default_rng(3)
    healthy = torch.from_numpy(rng.normal(size=(10, 6)))
    assert float(scale_floor_penalty(cosine_gram(healthy), 0.05)) == 0.0
    z = (torch.ones(10, 6, dtype=torch.float64) * 3 + 0.01 * healthy).requires_grad_(True)
    penalty = scale_floor_penalty(cosine_gram(z), 0.05)
    assert float(penalty.detach()) > 0.5
    (grad,) = torch.autograd.grad(penalty, z)
    assert float(grad.norm()) > 0
    step = z - 1e-3 * grad / grad.norm()  # a small step down the penalty spreads the embeddings
    assert gram_scale(cosine_gram(step.detach())) > gram_scale(cosine_gram(z.detach()))
    assert float(scale_floor_penalty(cosine_gram(z), 0.0)) == 0.0
    with pytest.raises(ConfigError):
        scale_floor_penalty(cosine_gram(z), -0.1)


def test_centred_lap_down_weights_a_collapsed_node_that_raw_lap_up_weights():
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(10, 16)) * 3
    labels = rng.integers(0, 10, size=200)
    healthy_z = torch.from_numpy(centres[labels] + rng.normal(size=(200, 16)))
    healthy_a = torch.from_numpy(centres[np.repeat(np.arange(10), 3)] + rng.normal(size=(30, 16)))
    offset = np.ones(16) * 50  # collapsed: one common direction plus structureless residuals
    collapsed_z = torch.from_numpy(offset + rng.normal(size=(200, 16)))
    collapsed_a = torch.from_numpy(offset + rng.normal(size=(30, 16)))
    raw = {name: precision_weight(lap_uncertainty(z, a)) for name, (z, a) in
           {"healthy": (healthy_z, healthy_a), "collapsed": (collapsed_z, collapsed_a)}.items()}
    centred = {name: precision_weight(centred_lap_uncertainty(z, a)) for name, (z, a) in
               {"healthy": (healthy_z, healthy_a), "collapsed": (collapsed_z, collapsed_a)}.items()}
    assert raw["collapsed"] > raw["healthy"]  # the defect of eq. 6 on raw cosines
    assert centred["collapsed"] < 0.5 * centred["healthy"]
