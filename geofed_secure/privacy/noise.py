"""Noise generators for DP on the node, and what ``privacy.secure_mode`` changes.

- ``secure_mode = false`` (default, experiments): the Gaussian noise and the Poisson batch sampling come from PRNGs
  seeded from (federation seed, node, round), so runs are reproducible and a resumed run is bit-identical. Anyone who
  knows the federation seed (it is in the run configuration, which the server holds) can regenerate the noise and
  the batches and remove them: the guarantee then holds only against parties that do not know the seed. The
  Gaussian sampler is the plain one, open to floating-point attacks (Mironov 2012; Haney et al. 2022).
- ``secure_mode = true`` (production): every DP-SGD step and every weight release draws a fresh 63-bit generator seed
  from the OS CSPRNG (``secrets``), batches are sampled from a generator seeded with 128 OS bits, and the noise uses
  Opacus's floating-point-robust sampler (sum of 4 Gaussians, arXiv 2107.10138 section 5.1). torch's CPU generator is
  a Mersenne Twister, not a CSPRNG: an attacker must search 2^63 seeds per step. ``torchcsprng`` (which Opacus's
  PrivacyEngine wants for secure mode) has no build for current torch. Runs are not reproducible in this mode.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch
# Opacus's noise sampler (with the floating-point-robust secure variant); private name, stable in opacus 1.6.x.
from opacus.optimizers.optimizer import _generate_noise

from geofed_secure.seeding import derive_seed, numpy_rng

SECURE_MODE_OFF_NOTICE = (
    "DP secure_mode is OFF: DP noise and Poisson batch sampling come from PRNGs seeded from the federation seed, "
    "so this run is reproducible, but anyone holding the configuration (the server does) can regenerate and "
    "subtract the noise, and the Gaussian sampler is not hardened against floating-point attacks. For production "
    "use --dp-secure-mode (privacy.secure_mode = true): OS-entropy noise, Opacus's robust sampler, not reproducible.")


def gaussian_noise(std: float, reference: torch.Tensor, generator: torch.Generator, secure_mode: bool) -> torch.Tensor:
    """N(0, std^2) noise shaped like ``reference`` (Opacus's sampler; secure variant in ``secure_mode``)."""
    return _generate_noise(std=std, reference=reference, generator=generator, secure_mode=secure_mode)


def noise_generator(secure_mode: bool, seed: int, *purpose: object) -> torch.Generator:
    """A generator for one mechanism invocation: OS-seeded in secure mode, else derived from the run seed."""
    value = secrets.randbits(63) if secure_mode else derive_seed(seed, "dp-noise", *purpose)
    return torch.Generator().manual_seed(value)


def sampling_rng(secure_mode: bool, seed: int, *purpose: object) -> np.random.Generator:
    """The Poisson-sampling stream: 128 OS bits in secure mode (the server must not know who was sampled)."""
    if secure_mode:
        return np.random.default_rng(secrets.randbits(128))
    return numpy_rng(seed, "dp-batches", *purpose)
