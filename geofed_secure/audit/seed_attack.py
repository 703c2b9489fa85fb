"""White-box cell: what a server holding the DP noise seed can do when the unsafe ``shared_seed_noise`` is chosen.

DP holds against a party only if that party cannot regenerate the noise (:mod:`geofed_secure.privacy.noise`). With
``privacy.shared_seed_noise = true`` the node's DP noise and Poisson batches derive from the federation seed, which
the server holds. This attack plays the adversary of the DP definition (it knows every record of the node but one
candidate, and the configuration) with that extra knowledge: for each candidate it trains the node itself in both
worlds (with and without the candidate), regenerating the noise and batches, and says "member" when the node's
released update is closer to the with-candidate world. With the shared seed the release equals one world exactly,
so every guess is right; in the deployed ``node-secret`` mode the adversary's regenerated noise is not the node's
and the same attack is a coin flip at small epsilon.

The auditor plays the node: it includes each candidate with probability 1/2 (as in the one-run canary audit) and
counts correct guesses; :func:`~geofed_secure.audit.canary.epsilon_lower_bound` turns them into an empirical epsilon
lower bound, held against the accountant. Costs three trainings per candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from geofed_secure.audit.canary import epsilon_lower_bound
from geofed_secure.audit.power import canary_max_certifiable_epsilon
from geofed_secure.config import NodeSpec, RunConfig
from geofed_secure.data.features import TokenFeatures, concat_features
from geofed_secure.errors import ConfigError
from geofed_secure.node import Node, NodeData
from geofed_secure.privacy.noise import derived_node_secret, randomness_source
from geofed_secure.seeding import numpy_rng
from geofed_secure.wire.round import WEIGHTED_PREFIX


@dataclass(frozen=True, slots=True, kw_only=True)
class SeedAttack:
    node_id: str
    randomness: str  # the node's DP randomness source: "shared-seed" (unsafe) or "node-secret" (deployed)
    candidates: int
    correct: int
    exact_matches: int  # releases equal to one of the adversary's two worlds, bit for bit
    epsilon_lower_bound: float
    max_certifiable_epsilon: float
    accountant_epsilon: float
    delta: float
    confidence: float

    def to_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__slots__}


def _release(config: RunConfig, spec: NodeSpec, data: NodeData, *, anchor_digest: str,
             backbone_factory: Callable[[], torch.nn.Module], dp_secret: bytes) -> tuple[np.ndarray, float]:
    node = Node(spec, data, config, anchor_digest=anchor_digest, backbone_factory=backbone_factory, dp_secret=dp_secret)
    payload: dict[str, np.ndarray] = {}
    for round_ in range(1, config.federation.rounds + 1):
        payload = node.local_round(round_, consensus=None)
    update = np.concatenate([payload[k].ravel() for k in sorted(payload) if k.startswith(WEIGHTED_PREFIX)])
    return update.astype(np.float64), node.privacy.spent() if node.privacy else float("nan")


def run_seed_attack(config: RunConfig, spec: NodeSpec, data: NodeData, candidate_pool: TokenFeatures, *,
                    anchor_digest: str, backbone_factory: Callable[[], torch.nn.Module], candidates: int = 20,
                    confidence: float = 0.95, seed: int = 0,
                    progress: Callable[[str], None] = lambda line: None) -> SeedAttack:
    """Audit ``spec``'s DP training against an adversary that regenerates the noise from the seed it holds (see the
    module docstring). ``config`` must enable DP; its ``privacy.shared_seed_noise`` decides which world is audited."""
    if not config.privacy.enabled:
        raise ConfigError("privacy.epsilon", "the seed attack audits DP training: give an epsilon")
    if not 2 <= candidates <= len(candidate_pool):
        raise ConfigError("seed_attack_candidates", f"need 2 <= candidates <= {len(candidate_pool)}, got {candidates}")
    rng = numpy_rng(seed, "seed-attack", spec.id)
    index = rng.choice(len(candidate_pool), size=candidates, replace=False)
    included = rng.random(candidates) < 0.5
    node_secret = derived_node_secret(seed, "seed-attack-node", spec.id)
    guess_secret = derived_node_secret(seed, "seed-attack-adversary", spec.id)  # the server's guess: not the node's
    correct = exact = 0
    spent = float("nan")
    for k, (i, member) in enumerate(zip(index, included)):
        with_x = replace(data, train=concat_features(data.train, candidate_pool.subset(np.array([i]))))
        worlds = {True: with_x, False: data}
        observed, spent = _release(config, spec, worlds[bool(member)], anchor_digest=anchor_digest,
                                   backbone_factory=backbone_factory, dp_secret=node_secret)
        distance = {}
        for world, world_data in worlds.items():
            regenerated, _ = _release(config, spec, world_data, anchor_digest=anchor_digest,
                                      backbone_factory=backbone_factory, dp_secret=guess_secret)
            distance[world] = float(np.linalg.norm(observed - regenerated))
        exact += min(distance.values()) == 0.0
        correct += (distance[True] < distance[False]) == bool(member)
        progress(f"  seed attack ({randomness_source(config.privacy)}): candidate {k + 1}/{candidates}, "
                 f"{correct} correct so far")
    delta = config.privacy.delta
    return SeedAttack(node_id=spec.id, randomness=randomness_source(config.privacy), candidates=candidates,
                      correct=correct, exact_matches=exact,
                      epsilon_lower_bound=epsilon_lower_bound(candidates, candidates, correct, delta=delta,
                                                              confidence=confidence),
                      max_certifiable_epsilon=canary_max_certifiable_epsilon(candidates, candidates, delta=delta,
                                                                             confidence=confidence),
                      accountant_epsilon=spent, delta=delta, confidence=confidence)
