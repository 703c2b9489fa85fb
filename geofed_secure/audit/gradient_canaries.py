"""The one-run canary audit in GRADIENT space: Dirac canaries against a white-box adversary (issue 17 item 3).

Input canaries (:mod:`.canary_run`) go through the model: how much a mislabelled record moves the loss is far below
the worst case DP bounds, so at the budgets audited no input-canary audit can refute the accountant. Gradient canaries
are the worst case (Nasr et al. 2023, "Tight auditing of differentially private machine learning"; the one-run test of
Steinke, Nasr, Jagielski 2023):

- canary k is a record whose clipped gradient is ``C`` (the DP-SGD clip bound) on ONE coordinate ``j_k`` of the
  node's trainable parameters and 0 elsewhere (``m`` canaries on ``m`` distinct coordinates: they never interfere);
- each canary is in the node's dataset with probability 1/2, independently; an included canary is sampled into each
  step's Poisson batch with the node's sampling rate q, exactly like a record, and then adds ``C`` to the clipped sum
  on its coordinate. (It is added after Opacus has clipped, summed and noised the real records, scaled like them: the
  Gaussian noise is independent of the sum, so the step's distribution is the same as adding it before the noise.);
- the adversary sees EVERY noisy gradient of every step (white box: stronger than anyone who sees only the uploads or
  the final model) and scores canary k by the sum over steps of the noisy gradient on ``j_k``;
- it guesses "in" for the ``k`` highest scores and "out" for the ``k`` lowest; :func:`.canary.epsilon_lower_bound`
  turns the number of correct guesses into an epsilon lower bound at 95% confidence.

The real records' gradients on those coordinates are part of the noise the adversary faces (it does not subtract an
estimate of them): the audit is conservative. It needs DP (``privacy.epsilon > 0``): without clipping and noise
there is no C and no mechanism to audit. A bound above the accountant's epsilon refutes the DP implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from geofed_secure.audit.canary import epsilon_lower_bound
from geofed_secure.audit.canary_run import CanaryAudit
from geofed_secure.config import NodeSpec, RunConfig
from geofed_secure.errors import ConfigError
from geofed_secure.node import Node, NodeData
from geofed_secure.privacy.noise import derived_node_secret
from geofed_secure.seeding import numpy_rng


def run_gradient_canary_audit(config: RunConfig, spec: NodeSpec, data: NodeData, *, anchor_digest: str,
                              backbone_factory: Callable[[], torch.nn.Module], canaries: int = 1000,
                              guess_fraction: float = 0.2, confidence: float = 0.95, seed: int = 0,
                              progress: Callable[[str], None] = lambda line: None) -> CanaryAudit:
    """Train ``spec``'s node with DP-SGD and ``canaries`` Dirac gradient canaries, and audit it (module docstring)."""
    if not config.privacy.enabled:
        raise ConfigError("privacy.epsilon", "the gradient-canary audit audits DP-SGD: give a budget epsilon > 0")
    if not 0 < guess_fraction <= 0.5:
        raise ConfigError("guess_fraction", f"must be in (0, 0.5], got {guess_fraction}")
    node = Node(spec, data, config, anchor_digest=anchor_digest, backbone_factory=backbone_factory,
                dp_secret=derived_node_secret(seed, "gradient-canary-audit", spec.id))
    trainable = [p for p in node.model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in trainable)
    if not 2 <= canaries <= total:
        raise ConfigError("gradient_canaries", f"need 2 <= m <= {total} (the node's trainable coordinates), got {canaries}")
    assert node.privacy is not None
    rng = numpy_rng(seed, "gradient-canaries", spec.id)
    coordinates = np.sort(rng.choice(total, size=canaries, replace=False))
    included = rng.random(canaries) < 0.5
    clip, rate = config.privacy.max_grad_norm, node.privacy.plan.sample_rate
    scores = torch.zeros(canaries, dtype=torch.float64)
    # canary k lives in trainable tensor owner[k] at flat position local[k]
    starts = np.cumsum([0] + [p.numel() for p in trainable])
    owner = np.searchsorted(starts, coordinates, side="right") - 1
    local = coordinates - starts[owner]
    where = {id(p): (torch.from_numpy(np.flatnonzero(owner == i)), torch.from_numpy(local[owner == i]))
             for i, p in enumerate(trainable)}

    def audit(params: Sequence[torch.nn.Parameter], scale: float) -> None:
        sampled = torch.from_numpy(included & (rng.random(canaries) < rate))
        for p in params:
            if id(p) not in where or p.grad is None:
                continue
            ks, positions = where[id(p)]
            flat = p.grad.view(-1)
            flat[positions[sampled[ks]]] += clip * scale  # a canary in this step's batch: +C on its coordinate, scaled
            scores[ks] += flat[positions].double()          # what the white-box adversary reads

    node.dp_audit = audit
    for round_ in range(1, config.federation.rounds + 1):
        node.local_round(round_, consensus=None)
        progress(f"  gradient canaries, round {round_}/{config.federation.rounds}")
    k = max(1, int(guess_fraction * canaries))
    order = np.argsort(-scores.numpy(), kind="mergesort")
    correct = int(included[order[:k]].sum() + (~included[order[-k:]]).sum())
    delta = config.privacy.delta
    return CanaryAudit(node_id=spec.id, canaries=canaries, included=int(included.sum()), guesses=2 * k, correct=correct,
                       epsilon_lower_bound=epsilon_lower_bound(canaries, 2 * k, correct, delta=delta, confidence=confidence),
                       accountant_epsilon=node.privacy.spent(), delta=delta, confidence=confidence, seed=seed)
