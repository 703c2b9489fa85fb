"""The one-run canary audit of a node's DP training (Steinke, Nasr, Jagielski 2023), held against its accountant.

The auditor takes ``m`` held-out records of the node's modality, gives each a wrong label (mislabelled canaries:
the hardest records to learn without memorising them), includes each in the node's training set independently with
probability 1/2, and trains the node as configured (DP or not) for the planned rounds. The adversary is the
strongest one DP must hold against: it sees the node's whole trained model (adapter, shared transformer with the
node's GeoDoRA state, head). It scores every canary by its negative loss, guesses "in" for the ``k`` highest and
"out" for the ``k`` lowest (``k`` fixed before looking at the scores), and :func:`epsilon_lower_bound` turns its
number of correct guesses into an empirical epsilon lower bound at 95% confidence. A bound above the accountant's
epsilon for the same run means the DP implementation (or its accounting) is broken.

Training runs node-locally (no aggregation): the DP guarantee is the node's own, whatever the server sends it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from geofed_secure.audit.canary import epsilon_lower_bound
from geofed_secure.config import NodeSpec, RunConfig
from geofed_secure.data.features import TokenFeatures, concat_features
from geofed_secure.errors import ConfigError
from geofed_secure.node import N_CLASSES, Node, NodeData
from geofed_secure.privacy.noise import derived_node_secret
from geofed_secure.seeding import numpy_rng


@dataclass(frozen=True, slots=True, kw_only=True)
class CanaryAudit:
    node_id: str
    canaries: int
    included: int
    guesses: int
    correct: int
    epsilon_lower_bound: float
    accountant_epsilon: float | None  # None: trained without DP (epsilon infinite)
    delta: float
    confidence: float
    seed: int

    @property
    def failed(self) -> bool:
        """True when the empirical lower bound exceeds the accountant's epsilon: the DP claim is refuted."""
        return self.accountant_epsilon is not None and self.epsilon_lower_bound > self.accountant_epsilon

    def to_dict(self) -> dict[str, object]:
        return {"node": self.node_id, "canaries": self.canaries, "included": self.included, "guesses": self.guesses,
                "correct": self.correct, "epsilon_lower_bound": self.epsilon_lower_bound,
                "accountant_epsilon": self.accountant_epsilon, "delta": self.delta, "confidence": self.confidence,
                "seed": self.seed, "failed": self.failed}


def make_canaries(pool: TokenFeatures, m: int, seed: int, n_classes: int = N_CLASSES) -> tuple[TokenFeatures, np.ndarray]:
    """``m`` records of ``pool`` with a random WRONG label each, and their inclusion mask (Bernoulli(1/2))."""
    if not 2 <= m <= len(pool):
        raise ConfigError("canaries", f"need 2 <= m <= {len(pool)} held-out records, got {m}")
    rng = numpy_rng(seed, "canaries")
    index = rng.choice(len(pool), size=m, replace=False)
    records = pool.subset(index)
    wrong = (records.labels + rng.integers(1, n_classes, size=m)) % n_classes
    return TokenFeatures(records.tokens, records.mask, wrong.astype(np.int64)), rng.random(m) < 0.5


@torch.no_grad()
def canary_scores(node: Node, canaries: TokenFeatures) -> np.ndarray:
    """Negative cross-entropy of each canary under the node's trained model (higher = more likely trained on)."""
    node.model.eval()
    z = node.embed(canaries)
    return -F.cross_entropy(node.model.head(z), torch.from_numpy(canaries.labels), reduction="none").numpy()


def run_canary_audit(config: RunConfig, spec: NodeSpec, data: NodeData, canary_pool: TokenFeatures, *, anchor_digest: str,
                     backbone_factory: Callable[[], torch.nn.Module], canaries: int = 200, guess_fraction: float = 0.2,
                     confidence: float = 0.95, seed: int = 0,
                     progress: Callable[[str], None] = lambda line: None) -> CanaryAudit:
    """Train ``spec``'s node with canaries mixed into ``data.train`` and audit it (see the module docstring)."""
    if not 0 < guess_fraction <= 0.5:
        raise ConfigError("guess_fraction", f"must be in (0, 0.5], got {guess_fraction}")
    records, included = make_canaries(canary_pool, canaries, seed, data.n_classes)
    train = concat_features(data.train, records.subset(np.flatnonzero(included)))
    # The auditor plays the node; its DP secret is fixed by ``seed`` so that the audit repeats.
    node = Node(spec, replace(data, train=train), config, anchor_digest=anchor_digest, backbone_factory=backbone_factory,
                dp_secret=derived_node_secret(seed, "canary-audit", spec.id))
    for round_ in range(1, config.federation.rounds + 1):
        node.local_round(round_, consensus=None)
        stats = node.last_stats
        assert stats is not None  # local_round records its statistics
        progress(f"  round {round_}/{config.federation.rounds}: task loss {stats.task_loss:.3f}")
    scores = canary_scores(node, records)
    k = max(1, int(guess_fraction * canaries))
    order = np.argsort(-scores, kind="mergesort")
    guessed_in, guessed_out = order[:k], order[-k:]
    correct = int(included[guessed_in].sum() + (~included[guessed_out]).sum())
    delta = config.privacy.delta
    bound = epsilon_lower_bound(canaries, 2 * k, correct, delta=delta, confidence=confidence)
    return CanaryAudit(node_id=spec.id, canaries=canaries, included=int(included.sum()), guesses=2 * k, correct=correct,
                       epsilon_lower_bound=bound, accountant_epsilon=node.privacy.spent() if node.privacy else None,
                       delta=delta, confidence=confidence, seed=seed)
