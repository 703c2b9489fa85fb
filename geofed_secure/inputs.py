"""A federation's inputs from its configuration: the built-in demo's data, or every node's OWN records, encoder and anchors.

:func:`load_modalities` is what every driver calls (``geofed run``, the audit, a Flower site, ``geofed deploy
split-data``). It returns one :class:`~geofed_secure.data.ModalityData` per modality name, which the runtime's
:func:`~geofed_secure.runtime.build_federation` turns into the nodes' private datasets.

- Demo nodes (no ``data`` table): :func:`geofed_secure.demo.load_demo_modalities`.
- Own nodes (``[nodes.data]``, ``[nodes.anchors]``, ``[nodes.encoder]``; docs/own-federation.md), for each node:

  1. its records and its copy of the public anchors are read (:func:`geofed_secure.data.readers.read_records`);
  2. its frozen encoder is built from the spec (:func:`geofed_secure.encoders.encoder_from_spec`) and both sets are
     encoded in batches through the feature cache, keyed by the encoder's identity (a local checkpoint's digest) and
     the records' digest: nothing is encoded twice, nothing is downloaded;
  3. task labels are mapped to the node's label set (``labels``, default the concepts), anchor labels to the
     federation's concepts (``[anchors] concepts``); a value outside its set is an error naming record and file;
  4. the anchors are split into training and held-out evaluation anchors (``eval_anchors``, or the last
     ``holdout_per_concept`` anchors of each concept in file order).

  The nodes of one modality share its encoder and the SAME anchors (equal digests; each node reads its own copy).
  Every modality's anchors must follow ONE concept sequence (anchor j is the same concept everywhere): the federation
  refuses anchors whose concept order differs and names the modality, the position and both concepts.
  A modality's pool is the rows of its nodes one after the other, each row owned by exactly one node
  (``ModalityData.owners``): the runtime gives each node its own rows, never another's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from geofed_secure.config import NodeSpec, RunConfig
from geofed_secure.data import ModalityData
from geofed_secure.data.anchors import AnchorManifest, feed_str
from geofed_secure.data.features import TokenFeatures, concat_features
from geofed_secure.data.readers import Records, read_records
from geofed_secure.encoders import FeatureCache, FrozenEncoder, HFEncoder, encoder_from_spec
from geofed_secure.errors import DataError

__all__ = ["OwnNode", "concept_order_digest", "load_modalities", "load_own_node", "own_anchor_manifest", "own_modalities"]

Progress = Callable[[str, int, int], None]
_DOMAIN = b"geofed-secure/own-anchor-digest/v1\x00"


def load_modalities(config: RunConfig, *, progress: Progress | None = None,
                    only: Sequence[str] | None = None) -> dict[str, ModalityData]:
    """Every modality the configured nodes need: the demo's, or the nodes' own (``only``: own nodes to load, e.g. the
    one node a site runs; the others are skipped and their modalities absent unless a loaded node shares them)."""
    if not any(n.own_data for n in config.nodes):
        from geofed_secure.demo import load_demo_modalities

        return load_demo_modalities(config, progress=progress)
    return own_modalities(config, progress=progress, only=only)


@dataclass(frozen=True)
class OwnNode:
    """One own node's encoded inputs: its records (labels = indices into its label set) and its anchors (labels =
    concept indices)."""

    node_id: str
    modality: str
    encoder_name: str
    records: TokenFeatures
    anchors: TokenFeatures
    eval_anchors: TokenFeatures
    anchor_digest: str
    description: str
    paired: TokenFeatures | None = None  # a bridge node's paired samples, row-aligned with ``records``


def concept_order_digest(concepts: Sequence[str], sequence: np.ndarray) -> str:
    """SHA-256 over the concept NAMES of an anchor sequence in order: equal for two modalities iff anchor j is the same
    concept in both."""
    h = hashlib.sha256(b"geofed-secure/concept-order/v1\x00")
    for index in np.asarray(sequence, dtype=np.int64):
        feed_str(h, concepts[int(index)])
    return h.hexdigest()


def _encode(encoder: FrozenEncoder, records: Records, cache: FeatureCache, label: str,
            progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
    if records.kind == "features":
        return encoder.encode((records.samples, records.mask))
    samples: Any = records.samples
    if records.kind == "image" and not isinstance(encoder, HFEncoder):  # an HF processor resizes; others take one array
        shapes = {s.shape for s in samples}
        if len(shapes) != 1:
            raise DataError(f"{label}: {encoder.name} needs images of one size, got {len(shapes)} sizes "
                            f"({sorted(shapes)[:3]}...); resize the files or use a Hugging Face checkpoint (its image "
                            "processor resizes)")
        samples = np.stack(samples)
    report = None if progress is None else (lambda done, total: progress(label, done, total))
    return cache.get_or_encode(encoder, samples, data_digest=records.digest, progress=report)


def _label_indices(values: Sequence[str], allowed: Sequence[str], *, what: str, declared: str, path: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(allowed)}
    out = np.empty(len(values), dtype=np.int64)
    for row, value in enumerate(values):
        if value not in index:
            shown = ", ".join(repr(a) for a in list(allowed)[:12]) + (", ..." if len(allowed) > 12 else "")
            raise DataError(f"{what}: record {row} ({path}) has label {value!r}, which is not in {declared} [{shown}]; "
                            f"fix the file or add {value!r} to {declared}")
        out[row] = index[value]
    return out


def _split_holdout(concept: np.ndarray, holdout: int, names: Sequence[str], *, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the training and held-out anchors: the last ``holdout`` of each concept (file order) are held out."""
    keep = np.ones(len(concept), dtype=bool)
    for c in range(len(names)):
        where = np.flatnonzero(concept == c)
        if len(where) <= holdout:
            raise DataError(f"{what}: concept {names[c]!r} has {len(where)} anchors, need more than anchors.holdout_per_concept = "
                            f"{holdout} (at least one for training); add anchors, lower holdout_per_concept or give "
                            "eval_anchors")
        keep[where[len(where) - holdout:]] = False
    return np.flatnonzero(keep), np.flatnonzero(~keep)


def _check_concepts(concept: np.ndarray, concepts: Sequence[str], *, what: str) -> None:
    missing = [concepts[c] for c in range(len(concepts)) if not (concept == c).any()]
    if missing:
        raise DataError(f"{what}: no anchor of concept(s) {missing}; every concept of [anchors] concepts needs anchors "
                        "in every modality (anchor j is the same concept everywhere)")


def load_own_node(config: RunConfig, index: int, cache: FeatureCache, *, progress: Progress | None = None) -> OwnNode:
    """Read, encode (cached) and label one own node's records and anchors; see the module doc."""
    node: NodeSpec = config.nodes[index]
    where = f"nodes[{index}] ({node.id})"
    assert node.data is not None and node.anchors is not None and node.encoder is not None  # validate() checked
    concepts = config.anchors.concepts
    labels = node.labels or concepts
    records = read_records(node.data, what=f"{where}.data")
    anchors = read_records(node.anchors, what=f"{where}.anchors")
    held = read_records(node.eval_anchors, what=f"{where}.eval_anchors") if node.eval_anchors is not None else None
    for other, name in ((anchors, "anchors"), (held, "eval_anchors")):
        if other is None:
            continue
        if other.kind != records.kind:
            raise DataError(f"{where}.{name}: the anchors are {other.kind} records but the node's data is {records.kind}; "
                            "a node's anchors go through the node's encoder, so they must be the same kind of record")
        if records.kind == "table" and tuple(other.columns) != tuple(records.columns):
            raise DataError(f"{where}.{name}: feature columns {list(other.columns)} differ from the data's "
                            f"{list(records.columns)}; use the same columns in the same order (set 'columns')")
    # labels first: a wrong file fails before anything is encoded
    task = _label_indices(records.labels, labels, what=f"{where}.data", declared=f"nodes[{index}].labels"
                          if node.labels else "[anchors] concepts", path=node.data.path)
    concept = _label_indices(anchors.labels, concepts, what=f"{where}.anchors", declared="[anchors] concepts",
                             path=node.anchors.path)
    _check_concepts(concept, concepts, what=f"{where}.anchors")
    feature_shape = records.samples.shape if records.kind == "features" else (0, 0, 0)
    encoder = encoder_from_spec(node.encoder, modality=node.modality, record_kind=records.kind,
                                n_columns=len(records.columns), columns=records.columns, seq_len=int(feature_shape[1]),
                                dim=int(feature_shape[2]))
    encoded = {}
    for part, rec in (("data", records), ("anchors", anchors), ("eval_anchors", held)):
        if rec is not None:
            encoded[part] = _encode(encoder, rec, cache, f"{node.id} {part}", progress)
    a_tokens, a_mask = encoded["anchors"]
    if float(np.ptp(a_tokens, axis=0).max()) < 1e-6:
        raise DataError(f"{where}.anchors: the encoder {encoder.name} gives all {len(a_tokens)} anchors the same features, "
                        "so the node has no geometry to align (a tokenizer that maps every word to [UNK], a constant "
                        "image, an encoder that ignores its input?); check the encoder on two different records")
    if held is None:
        train_pos, eval_pos = _split_holdout(concept, config.anchors.holdout_per_concept, concepts, what=f"{where}.anchors")
        train_a = TokenFeatures(a_tokens[train_pos], a_mask[train_pos], concept[train_pos])
        eval_a = TokenFeatures(a_tokens[eval_pos], a_mask[eval_pos], concept[eval_pos])
    else:
        assert node.eval_anchors is not None
        held_concept = _label_indices(held.labels, concepts, what=f"{where}.eval_anchors", declared="[anchors] concepts",
                                      path=node.eval_anchors.path)
        train_a = TokenFeatures(a_tokens, a_mask, concept)
        eval_a = TokenFeatures(*encoded["eval_anchors"], held_concept)
    return OwnNode(node_id=node.id, modality=node.modality, encoder_name=encoder.name,
                   records=TokenFeatures(*encoded["data"], task), anchors=train_a, eval_anchors=eval_a,
                   anchor_digest=_commitment(config, node, anchors, held), description=records.description,
                   paired=_paired(node, where, records, task, cache, progress))


def _paired(node: NodeSpec, where: str, records: Records, task: np.ndarray, cache: FeatureCache,
            progress: Progress | None) -> TokenFeatures | None:
    """A bridge node's paired records (row i = the same sample as row i of its data), encoded by its paired encoder."""
    if node.paired_data is None or node.paired_encoder is None:
        return None
    paired = read_records(node.paired_data, what=f"{where}.paired_data")
    if len(paired) != len(records) or tuple(paired.labels) != tuple(records.labels):
        row = next((i for i, (a, b) in enumerate(zip(paired.labels, records.labels, strict=False)) if a != b), None)
        detail = f"row {row} is labelled {paired.labels[row]!r} there but {records.labels[row]!r} in data" \
            if row is not None else f"{len(paired)} rows against {len(records)}"
        raise DataError(f"{where}.paired_data: row i must be the same sample as row i of the node's data ({detail}); "
                        "write both files in one order")
    shape = paired.samples.shape if paired.kind == "features" else (0, 0, 0)
    encoder = encoder_from_spec(node.paired_encoder, modality=node.paired_modality, record_kind=paired.kind,
                                n_columns=len(paired.columns), columns=paired.columns, seq_len=int(shape[1]),
                                dim=int(shape[2]))
    return TokenFeatures(*_encode(encoder, paired, cache, f"{node.id} paired_data", progress), task)


def _commitment(config: RunConfig, node: NodeSpec, anchors: Records, held: Records | None) -> str:
    """The anchor commitment of ``node``'s modality: SHA-256 over the modality name, the raw anchor records' digest,
    the held-out set (its digest, or the holdout rule) and the concept names. Public files only: no encoder runs."""
    eval_digest = held.digest if held is not None else f"holdout:{config.anchors.holdout_per_concept}"
    h = hashlib.sha256(_DOMAIN)
    for part in (node.modality, anchors.digest, eval_digest, "\x00".join(config.anchors.concepts)):
        feed_str(h, part)
    return h.hexdigest()


def own_anchor_manifest(config: RunConfig) -> tuple[AnchorManifest, int]:
    """The federation's anchor commitment and its number B of training anchors, from every node's PUBLIC anchor files
    (no private record is read, no encoder runs): what the server and each deployed site verify rounds against."""
    digests: dict[str, tuple[str, str]] = {}
    counts = set()
    for i, node in enumerate(config.nodes):
        assert node.anchors is not None
        where = f"nodes[{i}] ({node.id})"
        anchors = read_records(node.anchors, what=f"{where}.anchors")
        held = read_records(node.eval_anchors, what=f"{where}.eval_anchors") if node.eval_anchors is not None else None
        digest = _commitment(config, node, anchors, held)
        first = digests.setdefault(node.modality, (node.id, digest))
        if first[1] != digest:
            raise DataError(f"nodes {first[0]} and {node.id} share modality {node.modality!r} but hold different copies "
                            "of its public anchors (the anchor digests differ); give both the same anchor files")
        concept = _label_indices(anchors.labels, config.anchors.concepts, what=f"{where}.anchors",
                                 declared="[anchors] concepts", path=node.anchors.path)
        held_out = 0 if held is not None else config.anchors.holdout_per_concept * len(config.anchors.concepts)
        counts.add(len(concept) - held_out)
    if len(counts) != 1:
        raise DataError(f"every modality needs the same number of training anchors B, got {sorted(counts)}")
    return AnchorManifest(per_modality={m: d for m, (_, d) in digests.items()}), counts.pop()


def _same_order(reference: tuple[str, TokenFeatures], other: tuple[str, TokenFeatures], concepts: Sequence[str],
                part: str) -> None:
    (ref_name, ref), (name, got) = reference, other
    if concept_order_digest(concepts, ref.labels) == concept_order_digest(concepts, got.labels):
        return
    if len(ref) != len(got):
        detail = f"{len(got)} {part} against {len(ref)}"
    else:
        j = int(np.flatnonzero(ref.labels != got.labels)[0])
        detail = f"position {j} is concept {concepts[int(got.labels[j])]!r} there but {concepts[int(ref.labels[j])]!r} in {ref_name}"
    raise DataError(f"the {part} of {name} follow another concept order than those of {ref_name} ({detail}); every "
                    f"modality's {part} must list the same concepts in the same order (anchor j is the same concept "
                    "everywhere): reorder the anchor file or fix its concept column")


def own_modalities(config: RunConfig, *, progress: Progress | None = None,
                   only: Sequence[str] | None = None) -> dict[str, ModalityData]:
    """The own nodes' inputs grouped by modality (see the module doc); ``only``: node ids to load."""
    cache = FeatureCache(config.data.cache_dir or None)
    wanted = set(only) if only is not None else None
    loaded: list[OwnNode] = [load_own_node(config, i, cache, progress=progress) for i, n in enumerate(config.nodes)
                             if wanted is None or n.id in wanted]
    if not loaded:
        raise DataError(f"none of the nodes {sorted(wanted or ())} is a node of this federation")
    concepts = config.anchors.concepts
    reference = loaded[0]
    by_modality: dict[str, list[OwnNode]] = {}
    for node in loaded:
        by_modality.setdefault(node.modality, []).append(node)
        for part in ("anchors", "eval_anchors"):
            _same_order((f"node {reference.node_id} ({reference.modality})", getattr(reference, part)),
                        (f"node {node.node_id} ({node.modality})", getattr(node, part)), concepts, part)
    out: dict[str, ModalityData] = {}
    for modality, nodes in by_modality.items():
        first = nodes[0]
        for node in nodes[1:]:
            if node.encoder_name != first.encoder_name:
                raise DataError(f"nodes {first.node_id} and {node.node_id} share modality {modality!r} but not their "
                                f"encoder ({first.encoder_name} vs {node.encoder_name}); give one of them its own modality name")
            if node.anchor_digest != first.anchor_digest:
                raise DataError(f"nodes {first.node_id} and {node.node_id} share modality {modality!r} but hold different "
                                "copies of its public anchors (the anchor digests differ); give both the same anchor files")
        owners = tuple(n.node_id for n in nodes)
        pool = concat_features(*(n.records for n in nodes))
        owner_of = np.concatenate([np.full(len(n.records), k, dtype=np.int64) for k, n in enumerate(nodes)])
        out[modality] = ModalityData(modality=modality, encoder_name=first.encoder_name, synthetic=False, pool=pool,
                                     anchors=first.anchors, eval_anchors=first.eval_anchors,
                                     anchor_digest=first.anchor_digest, owners=owners, pool_owner=owner_of,
                                     paired_rows={n.node_id: n.paired for n in nodes if n.paired is not None},
                                     description="; ".join(f"{n.node_id}: {n.description}" for n in nodes))
    return out
