"""Where a deployed site and the ServerApp get their data: the demo's, or a folder of encoded modalities.

A data source is a string (run config ``data``, or a site's own node config ``data``):

- ``"demo"``: :func:`geofed_secure.demo.load_demo_modalities` (the demo's sources through the frozen encoders,
  read from the feature cache ``data.cache_dir`` once encoded);
- a folder path: one ``<modality>.safetensors`` per modality, as :func:`save_modalities` writes it (tokens, masks
  and labels of the private pool, the public anchors and evaluation anchors; the anchor digest in its metadata).
  Tests use it to hand real Flower processes the synthetic data they built in memory.

Limitation (issue 15): the node's share is cut by :func:`~geofed_secure.runtime.federation.build_federation`, which
partitions every needed modality's pool among all the configured nodes. So a site still loads the whole
federation's encoded pools and keeps only its own share; the ServerApp reads only the public anchor digests when the
source is a folder (:func:`anchor_digests`), and loads the demo's data to compute them when it is ``"demo"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

from geofed_secure.config import RunConfig, needed_modalities
from geofed_secure.data import ModalityData
from geofed_secure.data.features import TokenFeatures
from geofed_secure.errors import DataError

DEMO = "demo"
FORMAT = "geofed-modality-v1"
PARTS = ("pool", "anchors", "eval_anchors")


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


def load_modalities(source: str, config: RunConfig) -> dict[str, ModalityData]:
    """Every modality ``config``'s nodes need, from ``source`` (``"demo"`` or a folder)."""
    if source == DEMO:
        from geofed_secure.demo import load_demo_modalities

        return load_demo_modalities(config)
    folder = Path(source)
    if not folder.is_dir():
        raise DataError(f"data source {source!r} is neither 'demo' nor a folder")
    return {m: _load_folder(folder, m) for m in needed_modalities(config)}


def anchor_digests(source: str, config: RunConfig) -> dict[str, str]:
    """The public anchor digest of every needed modality (what the server commits to), reading no private pool
    when ``source`` is a folder."""
    if source == DEMO:
        return {m: d.anchor_digest for m, d in load_modalities(source, config).items()}
    folder = Path(source)
    if not folder.is_dir():
        raise DataError(f"data source {source!r} is neither 'demo' nor a folder")
    return {m: _metadata(_file(folder, m))["anchor_digest"] for m in needed_modalities(config)}


def anchor_count(source: str, config: RunConfig) -> int:
    """The number B of public anchors (the same in every modality), reading no private pool when ``source`` is a folder."""
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
