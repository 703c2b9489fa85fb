"""Turn a run configuration plus per-modality data into the nodes' private datasets.

Nodes of one modality split that modality's private pool with Dirichlet(alpha) label skew (non-IID);
a bridge node gets its own share of its primary pool and of its paired modality's pool, paired row by row
by concept (synthetic pairing of two unpaired sources: documented as such). Each share is then split into
train and held-out test samples.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np

from geofed_secure.config import RunConfig, label_count
from geofed_secure.data.anchors import AnchorManifest
from geofed_secure.data.features import TokenFeatures
from geofed_secure.data.modality import ModalityData
from geofed_secure.data.partition import dirichlet_partition
from geofed_secure.errors import DataError
from geofed_secure.node import NodeData
from geofed_secure.seeding import numpy_rng


@dataclass(frozen=True, slots=True)
class FederationData:
    modalities: Mapping[str, ModalityData]
    nodes: Mapping[str, NodeData]
    manifest: AnchorManifest

    @property
    def anchor_digest(self) -> str:
        return self.manifest.digest


def build_federation(config: RunConfig, modalities: Mapping[str, ModalityData], *, only: Collection[str] | None = None,
                     manifest: AnchorManifest | None = None) -> FederationData:
    """Partition the pools among the configured nodes; validate that every node's data is usable.

    ``only``: build these nodes alone (a deployed site of an own federation loads only its own records:
    :func:`geofed_secure.inputs.load_modalities` with ``only``); ``manifest``: the federation's anchor commitment when
    ``modalities`` does not hold every modality (:func:`geofed_secure.inputs.own_anchor_manifest`)."""
    wanted = [n for n in config.nodes if only is None or n.id in only]
    if only is not None and (len(wanted) != len(set(only)) or manifest is None):
        raise DataError(f"build_federation(only={sorted(only)}): every name must be a node of the federation, and the "
                        "federation's anchor manifest must be given")
    needed = sorted({n.modality for n in wanted} | {n.paired_modality for n in wanted if n.paired_modality and not n.own_data})
    missing = [m for m in needed if m not in modalities]
    if missing:
        raise DataError(f"no data for modality {missing[0]!r}; load it or remove the nodes that need it")
    seed = config.federation.seed
    for name, data in modalities.items():
        if data.pool.dim != data.anchors.dim or data.eval_anchors.dim != data.anchors.dim:
            raise DataError(f"modality {name!r}: pool, anchors and eval anchors have different feature widths")
    anchor_counts = {len(m.anchors) for m in modalities.values()}
    if len(anchor_counts) != 1:
        raise DataError(f"every modality needs the same number of anchors B (one per concept slot), got {sorted(anchor_counts)}")
    # Who draws from which pool: primary users, plus one extra share per bridge node that pairs with it.
    takers: dict[str, list[str]] = {}
    for node in config.nodes:
        takers.setdefault(node.modality, []).append(node.id)
        if node.paired_modality and not node.own_data:  # an own bridge node brings its paired rows itself
            takers.setdefault(node.paired_modality, []).append(f"{node.id}#paired")
    shares: dict[str, np.ndarray] = {}
    for modality, names in sorted(takers.items()):
        taken = modalities.get(modality)
        if taken is None:  # a modality of nodes not built here (only)
            continue
        if taken.pool_owner is not None:  # own nodes: every node has its own records, nothing to cut
            shares.update((name, _owned(taken, name)) for name in names if name.partition("#")[0] in {n.id for n in wanted})
            continue
        parts = dirichlet_partition(taken.pool.labels, len(names), config.data.dirichlet_alpha,
                                    numpy_rng(seed, "partition", modality), min_size=20)
        shares.update(zip(names, parts))
    nodes: dict[str, NodeData] = {}
    for node in wanted:
        pool = modalities[node.modality].pool
        index = numpy_rng(seed, "split", node.id).permutation(shares[node.id])
        n_test = max(1, round(len(index) * config.data.test_fraction))
        train_idx, test_idx = index[n_test:], index[:n_test]
        paired = None
        if node.paired_modality and node.own_data:  # its own paired file, row-aligned with its own records
            own_rows = modalities[node.modality].owned_rows(node.id)
            assert own_rows is not None
            paired = modalities[node.modality].paired_rows[node.id].subset(train_idx - own_rows[0])
        elif node.paired_modality:
            paired = _pair_by_concept(pool.labels[train_idx], modalities[node.paired_modality].pool,
                                      shares[f"{node.id}#paired"], numpy_rng(seed, "pairing", node.id))
        n_classes = label_count(config, node)
        nodes[node.id] = NodeData(train=pool.subset(train_idx), test=pool.subset(test_idx),
                                  anchors=modalities[node.modality].anchors, paired_train=paired, n_classes=n_classes,
                                  labels_are_concepts=not node.own_data or node.labels in ((), config.anchors.concepts))
    manifest = manifest or AnchorManifest(per_modality={m: d.anchor_digest for m, d in sorted(modalities.items())})
    return FederationData(modalities=dict(modalities), nodes=nodes, manifest=manifest)


def _owned(data: ModalityData, node_id: str) -> np.ndarray:
    rows = data.owned_rows(node_id)
    assert rows is not None
    if len(rows) < 2:
        raise DataError(f"node {node_id!r} has {len(rows)} record(s); a node needs at least 2 (one to train on, one held out)")
    return rows


def _pair_by_concept(labels: np.ndarray, other: TokenFeatures, candidates: np.ndarray, rng: np.random.Generator) -> TokenFeatures:
    picks = []
    for label in labels:
        same = candidates[other.labels[candidates] == label]
        if len(same) == 0:
            raise DataError(f"bridge pairing: no sample of concept {label} in the paired modality's share; raise data.dirichlet_alpha")
        picks.append(rng.choice(same))
    return other.subset(np.asarray(picks))
