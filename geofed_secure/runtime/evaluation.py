"""The simulator's evaluator: alignment and accuracy metrics on held-out data, next to their nulls.

This is an omniscient harness of the in-process simulator (it reads every node's held-out samples and
embeddings); it is NOT part of the protocol, nothing it computes crosses a trust boundary and nothing of it is
in the transcript. Every consensus here is LEAVE-ONE-OUT: a node is scored against the mean of the OTHER nodes'
centred Grams, each normalised to unit norm (issue 16), never against a consensus that contains itself.

Headline alignment metrics (issue 16; each must beat lambda = 0 and the shuffled-anchor null to mean anything):

- ``heldout_cka``: debiased CKA (Song 2012) of the node's Gram on the held-out EVALUATION anchors (public,
  concept-aligned, never used in training) to the leave-one-out consensus. ``train_anchor_cka`` is the same on the
  training anchors, in the node's own anchor order: it is what the geometric loss optimises, and the shuffled null
  reaches it too, so it is reported only beside ``heldout_cka``.
- ``centroid_cka``: centred CKA between the class-centroid Grams of two nodes' held-out PRIVATE samples (classes
  both hold), averaged over the other nodes of a different modality.
- ``centred_top1``: cross-modal top-1 class agreement in relative-representation space built from embeddings
  centred by the node's evaluation-anchor mean; ``own_anchor_top1`` is the baseline that needs no cross-modal
  information (each held-out sample classified by its own node's evaluation-anchor class blocks). The uncentred
  ``cross_modal_top1`` of earlier versions is kept for comparison; it mostly measures anisotropy.
- Collapse diagnostics on the training anchors: ``gram_scale`` (``||H G H||_F / B``) and ``effective_rank``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from geofed_secure.alignment.cka import center_gram, centered_cka, debiased_cka
from geofed_secure.alignment.evaluation import cross_modal_top1, mutual_knn, relative_representation
from geofed_secure.alignment.geometry import ZERO_NORM, effective_rank, gram_scale
from geofed_secure.alignment.gram import cosine_gram
from geofed_secure.data.features import TokenFeatures
from geofed_secure.node.node import Node


@dataclass(frozen=True, slots=True)
class NodeMetrics:
    task_accuracy: float
    cka_to_consensus: float  # centred CKA, held-out anchors, leave-one-out consensus
    debiased_cka: float  # = heldout_cka
    train_anchor_cka: float
    centroid_cka: float | None
    gram_scale: float
    effective_rank: float

    @property
    def heldout_cka(self) -> float:
        return self.debiased_cka


@dataclass(frozen=True, slots=True)
class Evaluation:
    nodes: Mapping[str, NodeMetrics]
    cross_modal_top1: float | None
    mutual_knn: float | None
    centred_top1: float | None = None
    own_anchor_top1: float | None = None

    def summary(self) -> dict[str, float | None]:
        centroid = [m.centroid_cka for m in self.nodes.values() if m.centroid_cka is not None]
        return {
            "heldout_cka": _mean(m.debiased_cka for m in self.nodes.values()),
            "train_anchor_cka": _mean(m.train_anchor_cka for m in self.nodes.values()),
            "centroid_cka": _mean(centroid) if centroid else None,
            "centred_top1": self.centred_top1,
            "own_anchor_top1": self.own_anchor_top1,
            "cross_modal_top1": self.cross_modal_top1,
            "mutual_knn": self.mutual_knn,
            "cka_to_consensus": _mean(m.cka_to_consensus for m in self.nodes.values()),
            "debiased_cka": _mean(m.debiased_cka for m in self.nodes.values()),
            "task_accuracy": _mean(m.task_accuracy for m in self.nodes.values()),
            "min_gram_scale": min(m.gram_scale for m in self.nodes.values()),
        }


def _mean(values) -> float:
    return float(np.mean(list(values)))


def leave_one_out_consensus(grams: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """For every node, the sum of the OTHER nodes' cosine Grams, each divided by the norm of its centred Gram.

    Centred, this is the sum of the others' unit-norm centred Grams (what the nodes upload); kept uncentred so that
    the debiased estimator, which works on the raw kernel, gets a kernel. A node whose centred Gram is zero
    (total collapse) adds nothing.
    """
    norms = {k: float(np.linalg.norm(center_gram(g.numpy()))) for k, g in grams.items()}
    scaled = {k: g / norms[k] if norms[k] >= ZERO_NORM else torch.zeros_like(g) for k, g in grams.items()}
    total = torch.stack(list(scaled.values())).sum(0)
    return {k: total - g for k, g in scaled.items()}


def _centroid_gram(z: np.ndarray, labels: np.ndarray, classes: list[int]) -> torch.Tensor:
    centroids = np.stack([z[labels == c].mean(0) for c in classes])
    return cosine_gram(torch.from_numpy(centroids))


def _own_anchor_top1(rel: np.ndarray, labels: np.ndarray, anchor_labels: np.ndarray) -> float:
    """Classify each sample by the class block of its own node's anchors it is closest to on average."""
    classes = np.unique(anchor_labels)
    scores = np.stack([rel[:, anchor_labels == c].mean(1) for c in classes], axis=1)
    return float((classes[scores.argmax(1)] == labels).mean())


def evaluate(nodes: Mapping[str, Node], eval_anchors: Mapping[str, TokenFeatures],
             global_state: Mapping[str, np.ndarray] | None, *, eval_samples: int) -> Evaluation:
    """Evaluate every node with ``global_state`` loaded (None: each node's own state, e.g. local-only)."""
    rel, rel_centred, labels, anchor_z, train_z, acc, test_z, own = {}, {}, {}, {}, {}, {}, {}, {}
    for node_id, node in nodes.items():
        test = node.data.test.subset(np.arange(min(eval_samples, len(node.data.test))))
        evaluation_anchors = eval_anchors[node.spec.modality]
        with node.using_shared_state(global_state):
            z_test = node.embed(test).double()
            z_eval = node.embed(evaluation_anchors).double()
            train_z[node_id] = node.embed(node.anchors).double()
            acc[node_id] = float((node.model.head(z_test.float()).argmax(1).numpy() == test.labels).mean())
        anchor_z[node_id], test_z[node_id], labels[node_id] = z_eval, z_test.numpy(), test.labels
        rel[node_id] = relative_representation(z_test.numpy(), z_eval.numpy())
        centre = z_eval.mean(0, keepdim=True)
        rel_centred[node_id] = relative_representation((z_test - centre).numpy(), (z_eval - centre).numpy())
        if node.data.labels_are_concepts:  # a node with its own label set has no concept labels to score against
            own[node_id] = _own_anchor_top1(rel_centred[node_id], test.labels, evaluation_anchors.labels)
    grams = {k: cosine_gram(z) for k, z in anchor_z.items()}
    train_grams = {k: cosine_gram(z) for k, z in train_z.items()}
    held_out = leave_one_out_consensus(grams) if len(nodes) > 1 else grams
    trained = leave_one_out_consensus(train_grams) if len(nodes) > 1 else train_grams
    modality = {k: n.spec.modality for k, n in nodes.items()}
    pairs = [(a, b) for a, b in itertools.permutations(nodes, 2) if modality[a] != modality[b]]
    labelled = [(a, b) for a, b in pairs if nodes[a].data.labels_are_concepts and nodes[b].data.labels_are_concepts]
    centroid: dict[str, list[float]] = {k: [] for k in nodes}
    n_concepts = 1 + max(int(e.labels.max()) for e in eval_anchors.values())
    for a, b in labelled:
        both = [c for c in range(n_concepts) if (labels[a] == c).sum() >= 2 and (labels[b] == c).sum() >= 2]
        if len(both) >= 4:
            centroid[a].append(float(centered_cka(_centroid_gram(test_z[a], labels[a], both),
                                                  _centroid_gram(test_z[b], labels[b], both))))
    per_node = {
        k: NodeMetrics(task_accuracy=acc[k], cka_to_consensus=float(centered_cka(g, held_out[k])),
                       debiased_cka=debiased_cka(g.numpy(), held_out[k].numpy()),
                       train_anchor_cka=debiased_cka(train_grams[k].numpy(), trained[k].numpy()),
                       centroid_cka=float(np.mean(centroid[k])) if centroid[k] else None,
                       gram_scale=gram_scale(train_grams[k]), effective_rank=effective_rank(train_grams[k]))
        for k, g in grams.items()
    }
    top1 = [cross_modal_top1(rel[a], labels[a], rel[b], labels[b]) for a, b in labelled]
    centred = [cross_modal_top1(rel_centred[a], labels[a], rel_centred[b], labels[b]) for a, b in labelled]
    knn = [mutual_knn(anchor_z[a].numpy(), anchor_z[b].numpy(), k=min(10, len(anchor_z[a]) - 1)) for a, b in pairs if a < b]
    return Evaluation(nodes=per_node, cross_modal_top1=float(np.mean(top1)) if top1 else None,
                      mutual_knn=float(np.mean(knn)) if knn else None,
                      centred_top1=float(np.mean(centred)) if centred else None,
                      own_anchor_top1=float(np.mean(list(own.values()))) if own else None)
