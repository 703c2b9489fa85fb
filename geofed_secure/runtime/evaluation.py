"""The simulator's evaluator: alignment and accuracy metrics on held-out data.

This is an omniscient harness of the in-process simulator (it reads every node's held-out samples and
embeddings); it is NOT part of the protocol, nothing it computes crosses a trust boundary and nothing of it is
in the transcript. Metrics (DESIGN.md section 6):

- ``task_accuracy``: each node's head on its held-out private samples;
- ``cross_modal_top1``: held-out samples of node k matched to their nearest held-out sample of node l (another
  modality) in relative-representation space (cosines to the public EVALUATION anchors, which are concept-aligned
  and never used in training); the fraction whose class agrees, averaged over ordered pairs (chance = 0.1);
- ``mutual_knn``: k = 10 mutual nearest neighbours between two nodes' embeddings of the evaluation anchors (row j is
  the same concept slot in both), averaged over pairs of different modality;
- ``cka_to_consensus``: centred CKA (and debiased CKA) of each node's evaluation-anchor Gram to the mean
  evaluation-anchor Gram of all nodes. Measured on held-out anchors so that every baseline (local-only,
  lambda = 0, shuffled anchors) is scored the same way.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from geofed_secure.alignment.cka import centered_cka, debiased_cka
from geofed_secure.alignment.evaluation import cross_modal_top1, mutual_knn, relative_representation
from geofed_secure.alignment.gram import cosine_gram
from geofed_secure.data.features import TokenFeatures
from geofed_secure.node.node import Node


@dataclass(frozen=True, slots=True)
class NodeMetrics:
    task_accuracy: float
    cka_to_consensus: float
    debiased_cka: float


@dataclass(frozen=True, slots=True)
class Evaluation:
    nodes: Mapping[str, NodeMetrics]
    cross_modal_top1: float | None
    mutual_knn: float | None

    def summary(self) -> dict[str, float | None]:
        return {
            "cross_modal_top1": self.cross_modal_top1,
            "mutual_knn": self.mutual_knn,
            "cka_to_consensus": float(np.mean([m.cka_to_consensus for m in self.nodes.values()])),
            "debiased_cka": float(np.mean([m.debiased_cka for m in self.nodes.values()])),
            "task_accuracy": float(np.mean([m.task_accuracy for m in self.nodes.values()])),
        }


def evaluate(nodes: Mapping[str, Node], eval_anchors: Mapping[str, TokenFeatures],
             global_state: Mapping[str, np.ndarray] | None, *, eval_samples: int) -> Evaluation:
    """Evaluate every node with ``global_state`` loaded (None: each node's own state, e.g. local-only)."""
    rel, labels, anchor_z, acc = {}, {}, {}, {}
    for node_id, node in nodes.items():
        test = node.data.test.subset(np.arange(min(eval_samples, len(node.data.test))))
        with node.using_shared_state(global_state):
            z_test = node.embed(test)
            z_eval = node.embed(eval_anchors[node.spec.modality])
            acc[node_id] = float((node.model.head(z_test).argmax(1).numpy() == test.labels).mean())
        anchor_z[node_id] = z_eval
        rel[node_id] = relative_representation(z_test.numpy(), z_eval.numpy())
        labels[node_id] = test.labels
    grams = {k: cosine_gram(z.double()) for k, z in anchor_z.items()}
    mean_gram = torch.stack(list(grams.values())).mean(0)
    per_node = {
        k: NodeMetrics(task_accuracy=acc[k], cka_to_consensus=float(centered_cka(g, mean_gram)),
                       debiased_cka=float(debiased_cka(g.numpy(), mean_gram.numpy())))
        for k, g in grams.items()
    }
    modality = {k: n.spec.modality for k, n in nodes.items()}
    pairs = [(a, b) for a, b in itertools.permutations(nodes, 2) if modality[a] != modality[b]]
    top1 = [cross_modal_top1(rel[a], labels[a], rel[b], labels[b]) for a, b in pairs]
    knn = [mutual_knn(anchor_z[a].numpy(), anchor_z[b].numpy(), k=10) for a, b in pairs if a < b]
    return Evaluation(nodes=per_node, cross_modal_top1=float(np.mean(top1)) if top1 else None,
                      mutual_knn=float(np.mean(knn)) if knn else None)
