"""Where a deployed site and the ServerApp get their data: the demo's, or a folder of encoded modalities.

A data source is a string (run config ``data``, or a site's own node config ``data``):

- ``"demo"``: :func:`geofed_secure.demo.load_demo_modalities` (the demo's sources through the frozen encoders,
  read from the feature cache ``data.cache_dir`` once encoded);
- a folder path: one ``<modality>.safetensors`` per modality, as :func:`save_modalities` writes it (tokens, masks
  and labels of the private pool, the public anchors and evaluation anchors; the anchor digest in its metadata).
  Tests use it to hand real Flower processes the synthetic data they built in memory.

- a site folder: ``site.safetensors``, ONE node's own share as :func:`save_site` writes it (its train and held-out
  samples, its modality's public anchors, a bridge node's paired samples; the federation's anchor commitment in its
  metadata). A site given such a folder reads nothing of any other node: ``geofed deploy`` cuts the shares once, on
  the operator's side, and hands each site only its own (``geofed deploy split-data`` does it for separate machines).

With the demo or a modalities folder, the node's share is cut by
:func:`~geofed_secure.runtime.federation.build_federation`, which partitions every needed modality's pool among all
the configured nodes: the site loads the whole federation's encoded pools and keeps only its own share (development
on one machine). The ServerApp reads only the public anchor digests and count from a folder (:func:`anchor_digests`,
:func:`anchor_count`), and loads the demo's data to compute them when the source is ``"demo"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import safetensors
import safetensors.numpy

from geofed_secure.config import RunConfig, needed_modalities
from geofed_secure.data import ModalityData
from geofed_secure.data.features import TokenFeatures
from geofed_secure.errors import DataError

if TYPE_CHECKING:
    from geofed_secure.node import NodeData

DEMO = "demo"
FORMAT = "geofed-modality-v1"
PARTS = ("pool", "anchors", "eval_anchors")
SITE_FILE = "site.safetensors"
SITE_FORMAT = "geofed-site-v1"
SITE_PARTS = ("train", "test", "anchors", "paired_train")


def _file(folder: Path, modality: str) -> Path:
    return folder / f"{modality}.safetensors"


def save_modalities(folder: str | Path, modalities: Mapping[str, ModalityData]) -> list[Path]:
    """Write each modality to ``folder/<modality>.safetensors``; returns the files written."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in sorted(modalities.items()):
        tensors: dict[str, np.ndarray] = {}
        for part in PARTS:
            features: TokenFeatures = getattr(data, part)
            tensors |= {f"{part}.tokens": features.tokens, f"{part}.mask": features.mask,
                        f"{part}.labels": features.labels.astype(np.int64)}
        metadata = {"format": FORMAT, "modality": data.modality, "encoder_name": data.encoder_name,
                    "synthetic": "true" if data.synthetic else "false", "anchor_digest": data.anchor_digest,
                    "description": data.description}
        path = _file(out, name)
        safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path, metadata=metadata)
        written.append(path)
    return written


def _metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise DataError(f"{path} is missing: the data folder holds no file for this modality (geofed writes it with "
                        "runtime.flower.sitedata.save_modalities)")
    try:
        with safetensors.safe_open(str(path), framework="numpy") as fh:
            metadata = fh.metadata() or {}
    except (OSError, ValueError, RuntimeError) as exc:  # SafetensorError is an Exception
        raise DataError(f"{path} is unreadable ({type(exc).__name__}: {exc})") from exc
    if metadata.get("format") != FORMAT:
        raise DataError(f"{path} is not a {FORMAT} file (format {metadata.get('format')!r})")
    return dict(metadata)


def _load_folder(folder: Path, modality: str) -> ModalityData:
    path = _file(folder, modality)
    metadata = _metadata(path)
    if metadata["modality"] != modality:
        raise DataError(f"{path} holds modality {metadata['modality']!r}, not {modality!r}")
    tensors = safetensors.numpy.load_file(path)
    try:
        parts = {part: TokenFeatures(tensors[f"{part}.tokens"], tensors[f"{part}.mask"], tensors[f"{part}.labels"])
                 for part in PARTS}
    except KeyError as exc:
        raise DataError(f"{path} lacks the array {exc.args[0]!r}") from None
    return ModalityData(modality=modality, encoder_name=metadata["encoder_name"], synthetic=metadata["synthetic"] == "true",
                        pool=parts["pool"], anchors=parts["anchors"], eval_anchors=parts["eval_anchors"],
                        anchor_digest=metadata["anchor_digest"], description=metadata.get("description", ""))


def _own(config: RunConfig) -> bool:
    return any(n.own_data for n in config.nodes)


def load_modalities(source: str, config: RunConfig, *, only: list[str] | None = None) -> dict[str, ModalityData]:
    """Every modality ``config``'s nodes need, from ``source`` (``"demo"``: as configured, the demo's data or the own
    nodes' files, of the ``only`` nodes alone when given; or a folder)."""
    if source == DEMO:
        from geofed_secure.inputs import load_modalities as load_configured

        return load_configured(config, only=only)
    folder = Path(source)
    if not folder.is_dir():
        raise DataError(f"data source {source!r} is neither 'demo' nor a folder")
    return {m: _load_folder(folder, m) for m in needed_modalities(config)}


def anchor_digests(source: str, config: RunConfig) -> dict[str, str]:
    """The public anchor digest of every needed modality (what the server commits to), reading no private pool
    when ``source`` is a folder."""
    if source == DEMO and _own(config):  # the nodes' public anchor files only: no private record is read
        from geofed_secure.inputs import own_anchor_manifest

        return dict(own_anchor_manifest(config)[0].per_modality)
    if source == DEMO:
        return {m: d.anchor_digest for m, d in load_modalities(source, config).items()}
    folder = Path(source)
    if not folder.is_dir():
        raise DataError(f"data source {source!r} is neither 'demo' nor a folder")
    return {m: _metadata(_file(folder, m))["anchor_digest"] for m in needed_modalities(config)}


def anchor_count(source: str, config: RunConfig) -> int:
    """The number B of public anchors (the same in every modality), reading no private pool when ``source`` is a folder."""
    if source == DEMO and _own(config):
        from geofed_secure.inputs import own_anchor_manifest

        return own_anchor_manifest(config)[1]
    if source == DEMO:
        counts = {len(d.anchors) for d in load_modalities(source, config).values()}
    else:
        counts = set()
        for modality in needed_modalities(config):
            path = _file(Path(source), modality)
            _metadata(path)
            with safetensors.safe_open(str(path), framework="numpy") as fh:
                counts.add(int(fh.get_slice("anchors.labels").get_shape()[0]))
    if len(counts) != 1:
        raise DataError(f"every modality needs the same number of public anchors, got {sorted(counts)}")
    return counts.pop()


def is_site_folder(source: str) -> bool:
    return source != DEMO and (Path(source) / SITE_FILE).is_file()


def save_site(folder: str | Path, node_id: str, data: NodeData, *, federation_id: str, anchor_digest: str) -> Path:
    """Write ``node_id``'s own share (and nothing of any other node) to ``folder/site.safetensors``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    for part in SITE_PARTS:
        features: TokenFeatures | None = getattr(data, part)
        if features is not None:
            tensors |= {f"{part}.tokens": features.tokens, f"{part}.mask": features.mask,
                        f"{part}.labels": features.labels.astype(np.int64)}
    metadata = {"format": SITE_FORMAT, "node_id": node_id, "federation_id": federation_id, "anchor_digest": anchor_digest,
                "n_classes": str(data.n_classes), "labels_are_concepts": str(data.labels_are_concepts).lower()}
    path = out / SITE_FILE
    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path, metadata=metadata)
    return path


def _site_metadata(folder: str | Path, node_id: str, federation_id: str) -> dict[str, str]:
    path = Path(folder) / SITE_FILE
    try:
        with safetensors.safe_open(str(path), framework="numpy") as fh:
            metadata = dict(fh.metadata() or {})
    except (OSError, ValueError, RuntimeError) as exc:  # SafetensorError is an Exception
        raise DataError(f"{path} is unreadable ({type(exc).__name__}: {exc})") from exc
    if metadata.get("format") != SITE_FORMAT:
        raise DataError(f"{path} is not a {SITE_FORMAT} file (format {metadata.get('format')!r})")
    for key, want in (("node_id", node_id), ("federation_id", federation_id)):
        if metadata.get(key) != want:
            raise DataError(f"{path} holds the data of {key} {metadata.get(key)!r}, not {want!r}: a site reads only its "
                            "own share (check the node config's data folder)")
    return metadata


def site_anchor_digest(folder: str | Path, node_id: str, federation_id: str) -> str:
    """The federation's anchor commitment recorded with ``node_id``'s share (reads no sample)."""
    return _site_metadata(folder, node_id, federation_id)["anchor_digest"]


def load_site(folder: str | Path, node_id: str, federation_id: str) -> tuple[NodeData, str]:
    """``node_id``'s own share and the federation's anchor commitment, from its site folder."""
    from geofed_secure.node import NodeData

    metadata = _site_metadata(folder, node_id, federation_id)
    tensors = safetensors.numpy.load_file(Path(folder) / SITE_FILE)
    parts: dict[str, TokenFeatures | None] = {}
    for part in SITE_PARTS:
        if f"{part}.tokens" not in tensors:
            if part != "paired_train":
                raise DataError(f"{Path(folder) / SITE_FILE} lacks the {part} samples")
            parts[part] = None
            continue
        parts[part] = TokenFeatures(tensors[f"{part}.tokens"], tensors[f"{part}.mask"], tensors[f"{part}.labels"])
    train, test, anchors = parts["train"], parts["test"], parts["anchors"]
    assert train is not None and test is not None and anchors is not None
    classes = metadata.get("n_classes", "10")  # files written before own label sets: the demo's ten digits
    if not classes.isdigit():
        raise DataError(f"{Path(folder) / SITE_FILE}: n_classes {classes!r} in its metadata is not a number")
    return (NodeData(train=train, test=test, anchors=anchors, paired_train=parts["paired_train"], n_classes=int(classes),
                     labels_are_concepts=metadata.get("labels_are_concepts", "true") == "true"), metadata["anchor_digest"])


def split_sites(config: RunConfig, source: str, folder: str | Path) -> dict[str, Path]:
    """Cut every node's share from ``source`` (the operator's side) and write each to ``folder/<node id>/``: the
    folder to hand that site, and only that site. Returns node id -> its site folder."""
    from geofed_secure.runtime.federation import build_federation

    federation = build_federation(config, load_modalities(source, config))
    out = Path(folder)
    return {node_id: save_site(out / node_id, node_id, data, federation_id=config.federation.id,
                               anchor_digest=federation.anchor_digest).parent
            for node_id, data in federation.nodes.items()}
