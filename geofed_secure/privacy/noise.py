"""Where a node's DP noise and Poisson batch sampling come from, and against whom its epsilon therefore holds.

DP holds against a party only if that party cannot regenerate (and subtract) the noise or learn who was sampled.
Three sources, chosen by ``[privacy]`` (:func:`randomness_source`):

- ``"node-secret"`` (default): every generator is seeded by HMAC-SHA256 of a 32-byte secret the node draws from the OS
  CSPRNG when it is created (``os.urandom``) and keeps in its OWN checkpoint (``Node.state_dict``), never in the run
  configuration, the transcript or the summary. The server, the other nodes and anyone holding the configuration
  cannot regenerate the noise; a resumed node reloads its secret, so ``--resume`` stays bit-identical. The Gaussian
  sampler is the plain one (not hardened against floating-point attacks, Mironov 2012).
- ``"os-entropy"`` (``secure_mode = true``, production): every DP-SGD step and every weight release draws a fresh
  63-bit generator seed from the OS CSPRNG (``secrets``), batches are sampled from a generator seeded with 128 OS bits,
  and the noise uses Opacus's floating-point-robust sampler (sum of 4 Gaussians, arXiv 2107.10138 section 5.1).
  Runs are not reproducible. torch's CPU generator is a Mersenne Twister, not a CSPRNG: an attacker must search 2^63
  seeds per step. ``torchcsprng`` (which Opacus's PrivacyEngine wants for secure mode) has no build for current torch.
- ``"shared-seed"`` (``shared_seed_noise = true``, reproducible experiments only): generators derive from
  (federation seed, node, round). Everyone holding the run configuration (the server and every node do; ``summary.json``
  publishes the seed) can regenerate the noise and the batches and remove them: the epsilon then holds only against
  outside observers of the final model who hold neither.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

import numpy as np
import torch

# Opacus's noise sampler (with the floating-point-robust secure variant); private name, stable in opacus 1.6.x.
from opacus.optimizers.optimizer import _generate_noise

from geofed_secure.config import PrivacySection
from geofed_secure.errors import ConfigError
from geofed_secure.seeding import derive_seed, numpy_rng

NODE_SECRET_BYTES = 32
RANDOMNESS_SOURCES = ("node-secret", "os-entropy", "shared-seed")

# Who can regenerate the noise decides whom the epsilon holds against (summary.json ``privacy.holds_against``).
HOLDS_AGAINST = {
    "node-secret": ("the server", "other nodes", "outside observers of the final model"),
    "os-entropy": ("the server", "other nodes", "outside observers of the final model"),
    "shared-seed": ("outside observers of the final model who hold neither the run configuration nor summary.json",),
}
DOES_NOT_HOLD_AGAINST = {
    "node-secret": ("whoever reads the node's own checkpoint (it holds the node secret, next to the node's model state)",),
    "os-entropy": (),
    "shared-seed": ("the server", "other nodes", "anyone holding the run configuration or summary.json (the federation seed)"),
}
NOTICES = {
    "node-secret": (
        "DP noise and Poisson sampling come from a secret each node drew from os.urandom and keeps in its own checkpoint "
        "(resume is bit-identical; the server cannot regenerate the noise). The Gaussian sampler is not hardened against "
        "floating-point attacks; production: --dp-secure-mode (privacy.secure_mode = true)."),
    "os-entropy": (
        "DP secure_mode: fresh OS entropy for every noise draw and Poisson sample, floating-point-robust Gaussian sampler "
        "(runs are not reproducible)."),
    "shared-seed": (
        "WARNING: DP noise and Poisson sampling derive from the federation seed (privacy.shared_seed_noise = true, "
        "reproducible experiments only). Every epsilon of this run does NOT hold against the server or the other nodes: "
        "anyone holding the configuration can regenerate and subtract the noise."),
}


def randomness_source(privacy: PrivacySection) -> str:
    """The configured source: ``"os-entropy"`` (secure_mode), ``"shared-seed"`` (shared_seed_noise) or ``"node-secret"``."""
    if privacy.secure_mode and privacy.shared_seed_noise:
        raise ConfigError("privacy.shared_seed_noise", "cannot be combined with secure_mode; choose one")
    if privacy.secure_mode:
        return "os-entropy"
    return "shared-seed" if privacy.shared_seed_noise else "node-secret"


def new_node_secret() -> bytes:
    """32 bytes from the OS CSPRNG: the seed of a node's DP randomness in the default ``"node-secret"`` mode."""
    return os.urandom(NODE_SECRET_BYTES)


def derived_node_secret(seed: int, *parts: object) -> bytes:
    """A node secret fixed by (seed, parts), for audits and tests that play the node themselves and need repeatable
    training (the auditor trains the node; the adversaries it simulates never read the secret). Never in deployments.
    """
    text = "\x1f".join(["geofed-secure/dp-node-secret", str(int(seed)), *map(str, parts)])
    return hashlib.sha256(text.encode()).digest()


@dataclass(frozen=True, slots=True)
class DPRandomness:
    """A node's DP random streams. ``secret`` is used in ``"node-secret"`` mode, ``federation_seed`` in ``"shared-seed"``."""

    source: str
    secret: bytes = b""
    federation_seed: int = 0

    def __post_init__(self) -> None:
        if self.source not in RANDOMNESS_SOURCES:
            raise ConfigError("privacy", f"unknown DP randomness source {self.source!r}; one of {RANDOMNESS_SOURCES}")
        if self.source == "node-secret" and len(self.secret) != NODE_SECRET_BYTES:
            raise ConfigError("privacy", f"a node's DP secret must be {NODE_SECRET_BYTES} bytes, got {len(self.secret)}")

    def __repr__(self) -> str:  # never print the secret
        return f"DPRandomness(source={self.source!r})"

    @property
    def robust_sampler(self) -> bool:
        """Opacus's floating-point-robust Gaussian sampler (secure_mode only)."""
        return self.source == "os-entropy"

    def _digest(self, stream: str, purpose: tuple[object, ...]) -> bytes:
        message = "\x1f".join(["geofed-secure/dp", stream, *map(str, purpose)]).encode()
        return hmac.new(self.secret, message, hashlib.sha256).digest()

    def noise_generator(self, *purpose: object) -> torch.Generator:
        """A torch generator for one mechanism invocation (one DP-SGD step, one weight release)."""
        if self.source == "os-entropy":
            value = secrets.randbits(63)
        elif self.source == "shared-seed":
            value = derive_seed(self.federation_seed, "dp-noise", *purpose)
        else:
            value = int.from_bytes(self._digest("noise", purpose)[:8], "big") >> 1
        return torch.Generator().manual_seed(value)

    def sampling_rng(self, *purpose: object) -> np.random.Generator:
        """The Poisson-sampling stream (who is in each batch must stay as secret as the noise)."""
        if self.source == "os-entropy":
            return np.random.default_rng(secrets.randbits(128))
        if self.source == "shared-seed":
            return numpy_rng(self.federation_seed, "dp-batches", *purpose)
        return np.random.default_rng(int.from_bytes(self._digest("batches", purpose)[:16], "big"))


def gaussian_noise(std: float, reference: torch.Tensor, generator: torch.Generator, secure_mode: bool) -> torch.Tensor:
    """N(0, std^2) noise shaped like ``reference`` (Opacus's sampler; the robust variant when ``secure_mode``)."""
    return _generate_noise(std=std, reference=reference, generator=generator, secure_mode=secure_mode)
