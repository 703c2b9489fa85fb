"""Round checkpoints that a crash cannot corrupt.

Layout under ``<run>/checkpoints/``: one folder per completed round (``round-0003/``) holding
``server.safetensors`` (global B/m and consensus), ``nodes/<id>.safetensors`` (each node's local state, as
each site would persist its own), and ``state.json`` (round, config digest, metric history, transcript length,
and the SHA-256 of every tensor file). A checkpoint is written into a temporary folder, fsynced, renamed into
place, and only then does ``LATEST`` (replaced atomically) point at it. A crash at any moment leaves the
previous ``LATEST`` and its folder untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import safetensors.torch
import torch

from geofed_secure.errors import CheckpointError


@dataclass(frozen=True, slots=True)
class Checkpoint:
    round: int
    server: dict[str, np.ndarray]
    nodes: dict[str, dict[str, torch.Tensor]]
    meta: dict[str, Any]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStore:
    def __init__(self, run_dir: str | os.PathLike, *, keep: int = 2) -> None:
        self.root = Path(run_dir) / "checkpoints"
        self.keep = keep

    def save(self, round_: int, server: Mapping[str, np.ndarray], nodes: Mapping[str, Mapping[str, torch.Tensor]],
             meta: Mapping[str, Any]) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"round-{round_:04d}"
        tmp = self.root / f".round-{round_:04d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "nodes").mkdir(parents=True)
        safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in server.items()}, tmp / "server.safetensors")
        for node_id, node_state in nodes.items():
            safetensors.torch.save_file({k: v.contiguous() for k, v in node_state.items()}, tmp / "nodes" / f"{node_id}.safetensors")
        files = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*.safetensors"))}
        state = {"round": round_, "files": files, **meta}
        (tmp / "state.json").write_text(json.dumps(state, indent=1, sort_keys=True))
        for path in [*tmp.rglob("*"), tmp / "nodes", tmp]:
            if path.is_file():
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
            else:
                _fsync_dir(path)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        latest_tmp = self.root / "LATEST.tmp"
        latest_tmp.write_text(final.name + "\n")
        os.replace(latest_tmp, self.root / "LATEST")
        _fsync_dir(self.root)
        self._prune(round_)
        return final

    def _prune(self, current: int) -> None:
        rounds = sorted(p for p in self.root.glob("round-*") if p.is_dir())
        for old in rounds[:-self.keep] if self.keep > 0 else []:
            if old.name != f"round-{current:04d}":
                shutil.rmtree(old, ignore_errors=True)

    def latest_round(self) -> int | None:
        latest = self.root / "LATEST"
        if not latest.is_file():
            return None
        name = latest.read_text().strip()
        try:
            return int(name.removeprefix("round-"))
        except ValueError:
            raise CheckpointError(f"{latest} names {name!r}, not a round folder") from None

    def load_latest(self) -> Checkpoint:
        round_ = self.latest_round()
        if round_ is None:
            raise CheckpointError(f"no checkpoint under {self.root} (missing LATEST); nothing to resume")
        folder = self.root / f"round-{round_:04d}"
        try:
            state = json.loads((folder / "state.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"checkpoint {folder} has no readable state.json: {exc}") from None
        for rel, digest in state["files"].items():
            path = folder / rel
            if not path.is_file() or _sha256(path) != digest:
                raise CheckpointError(f"checkpoint file {path} is missing or does not match its SHA-256")
        server = safetensors.numpy.load_file(folder / "server.safetensors")
        nodes = {p.stem: safetensors.torch.load_file(p) for p in sorted((folder / "nodes").glob("*.safetensors"))}
        meta = {k: v for k, v in state.items() if k not in ("round", "files")}
        return Checkpoint(round=round_, server=server, nodes=nodes, meta=meta)
