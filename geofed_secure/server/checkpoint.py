"""Round checkpoints that a crash cannot corrupt, verified as a whole before they are used.

Layout under ``<run>/checkpoints/``: one folder per completed round (``round-0003/``) holding
``server.safetensors`` (global B/m and consensus), ``nodes/<id>.safetensors`` (each node's local state, as
each site would persist its own), ``state.json`` (round, metric history, transcript length, anchor digest) and
``MANIFEST.json`` (the round and the SHA-256 of every other file of the folder). ``LATEST`` names the newest round
and the SHA-256 of that round's manifest (``round-0003 <hex>``).

A checkpoint is written into a temporary folder, fsynced, renamed into place, and only then is ``LATEST`` replaced
atomically; a crash at any moment leaves the previous ``LATEST`` and its folder untouched.

Loading verifies the round as a whole: the manifest parses and names its own round, the folder holds exactly the
files it lists (nothing missing, nothing added) with their digests, ``state.json`` has the expected shape, and the
manifest is the one ``LATEST`` was bound to. A damaged newest round (or a damaged ``LATEST``) does not stop a resume:
the store logs a warning naming the problem and uses the newest round that verifies (the last two are kept). These
are integrity checks against damage and hand edits, not authenticity: whoever can write the folder can rewrite a
manifest too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import safetensors.torch
import torch
from safetensors import SafetensorError

from geofed_secure.errors import CheckpointError

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
STATE = "state.json"
FORMAT = "geofed-checkpoint-2"
_ROUND_DIR = re.compile(r"round-(\d{4,})")
_POINTER = re.compile(r"(round-\d{4,}) ([0-9a-f]{64})")


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


def _folder_name(round_: int) -> str:
    return f"round-{round_:04d}"


class CheckpointStore:
    def __init__(self, run_dir: str | os.PathLike, *, keep: int = 2) -> None:
        self.root = Path(run_dir) / "checkpoints"
        self.keep = keep

    def save(self, round_: int, server: Mapping[str, np.ndarray], nodes: Mapping[str, Mapping[str, torch.Tensor]],
             meta: Mapping[str, Any]) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / _folder_name(round_)
        tmp = self.root / f".{final.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "nodes").mkdir(parents=True)
        safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in server.items()}, tmp / "server.safetensors")
        for node_id, node_state in nodes.items():
            safetensors.torch.save_file({k: v.contiguous() for k, v in node_state.items()}, tmp / "nodes" / f"{node_id}.safetensors")
        (tmp / STATE).write_text(json.dumps({"round": round_, **meta}, indent=1, sort_keys=True))
        files = {rel: _sha256(tmp / rel) for rel in _files_in(tmp)}
        manifest = json.dumps({"format": FORMAT, "round": round_, "files": files}, indent=1, sort_keys=True)
        (tmp / MANIFEST).write_text(manifest)
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
        latest_tmp.write_text(f"{final.name} {hashlib.sha256(manifest.encode()).hexdigest()}\n")
        os.replace(latest_tmp, self.root / "LATEST")
        _fsync_dir(self.root)
        self._prune(round_)
        return final

    def _prune(self, current: int) -> None:
        rounds = sorted(p for p in self.root.glob("round-*") if p.is_dir())
        for old in rounds[:-self.keep] if self.keep > 0 else []:
            if old.name != _folder_name(current):
                shutil.rmtree(old, ignore_errors=True)

    def _pointer(self) -> tuple[int, str] | None:
        """(round, manifest digest) that ``LATEST`` names; None without a LATEST; CheckpointError when it is damaged."""
        latest = self.root / "LATEST"
        if not latest.exists():
            return None
        try:
            text = latest.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{latest} is unreadable ({type(exc).__name__})") from None
        match = _POINTER.fullmatch(text.strip())
        if match is None:
            raise CheckpointError(f"{latest} does not hold 'round-NNNN <manifest SHA-256>' (got {text.strip()[:80]!r})")
        return int(match.group(1).removeprefix("round-")), match.group(2)

    def latest_round(self) -> int | None:
        """The round ``LATEST`` names (not verified; :meth:`load_latest` verifies), None when there is no LATEST."""
        pointer = self._pointer()
        return None if pointer is None else pointer[0]

    def rounds_on_disk(self) -> list[int]:
        """Round numbers of the checkpoint folders present, newest first (verified or not)."""
        if not self.root.is_dir():
            return []
        found = (_ROUND_DIR.fullmatch(p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted((int(m.group(1)) for m in found if m), reverse=True)

    def load_latest(self) -> Checkpoint:
        """The checkpoint ``LATEST`` names, verified; if it (or LATEST) is damaged, the newest round that verifies,
        with a logged warning. :class:`CheckpointError` when there is no checkpoint or none verifies."""
        problems: list[str] = []
        try:
            pointer = self._pointer()
        except CheckpointError as exc:
            pointer = None
            problems.append(str(exc))
        on_disk = self.rounds_on_disk()
        if pointer is None and not on_disk:
            if problems:
                raise CheckpointError(f"no valid checkpoint under {self.root}: {problems[0]}; and no round folder")
            raise CheckpointError(f"no checkpoint under {self.root} (no LATEST and no round folder); nothing to resume")
        if pointer is not None:
            try:
                return self.load_round(pointer[0], manifest_digest=pointer[1])
            except CheckpointError as exc:
                problems.append(f"{self.root / 'LATEST'} names {_folder_name(pointer[0])}, which fails verification ({exc})")
        elif not problems:
            problems.append(f"{self.root / 'LATEST'} is missing")
        for round_ in on_disk:
            if pointer is not None and round_ == pointer[0]:
                continue
            try:
                checkpoint = self.load_round(round_)
            except CheckpointError as exc:
                problems.append(str(exc))
                continue
            log.warning("%s; using the newest valid checkpoint instead, %s", "; ".join(problems),
                        self.root / _folder_name(round_))
            return checkpoint
        raise CheckpointError(f"no valid checkpoint under {self.root}: " + "; ".join(problems))

    def load_round(self, round_: int, *, manifest_digest: str | None = None) -> Checkpoint:
        """Round ``round_``'s checkpoint after verifying every file of it (and, given, its manifest's digest)."""
        folder = self.root / _folder_name(round_)
        try:
            files = _verified_files(folder, round_, manifest_digest)
            state = json.loads((folder / STATE).read_bytes())
            meta = _checked_meta(state, round_)
            server = safetensors.numpy.load_file(folder / "server.safetensors")
            nodes = {rel.removeprefix("nodes/").removesuffix(".safetensors"): safetensors.torch.load_file(folder / rel)
                     for rel in sorted(files) if rel.startswith("nodes/")}
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {folder}: {exc}") from None
        except (OSError, ValueError, SafetensorError) as exc:  # JSON and tensor files that verified but do not load
            raise CheckpointError(f"checkpoint {folder}: unreadable ({type(exc).__name__}: {exc})") from None
        return Checkpoint(round=round_, server=server, nodes=nodes, meta=meta)


def _files_in(folder: Path) -> list[str]:
    """Every file under ``folder`` but the manifest, as sorted relative POSIX paths."""
    return sorted(rel for rel in (p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())
                  if rel != MANIFEST)


def _verified_files(folder: Path, round_: int, manifest_digest: str | None) -> dict[str, str]:
    if not folder.is_dir():
        raise CheckpointError("the folder is missing")
    path = folder / MANIFEST
    try:
        raw = path.read_bytes()
    except OSError:
        raise CheckpointError(f"{MANIFEST} is missing or unreadable (a checkpoint of an older geofed has none)") from None
    if manifest_digest is not None and hashlib.sha256(raw).hexdigest() != manifest_digest:
        raise CheckpointError(f"{MANIFEST} is not the one LATEST was written with (changed since)")
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{MANIFEST} is not valid JSON") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if (not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("round") != round_
            or not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values())):
        raise CheckpointError(f"{MANIFEST} is not a round-{round_} manifest of format {FORMAT}")
    for rel in (STATE, "server.safetensors"):
        if rel not in files:
            raise CheckpointError(f"{MANIFEST} does not list {rel}")
    present = _files_in(folder)
    extra = sorted(set(present) - set(files))
    if extra:
        raise CheckpointError(f"{extra[0]} is not listed in {MANIFEST} (added after the checkpoint was written)")
    for rel, digest in sorted(files.items()):
        target = folder / rel
        if not target.is_file():
            raise CheckpointError(f"{rel} is missing")
        if _sha256(target) != digest:
            raise CheckpointError(f"{rel} does not match its SHA-256 in {MANIFEST} (damaged or edited)")
    return files


def _checked_meta(state: Any, round_: int) -> dict[str, Any]:
    """``state.json`` without its round, after checking the fields a resume reads (its digest matched already; this
    catches a manifest rewritten together with the state)."""
    if not isinstance(state, dict) or state.get("round") != round_:
        raise CheckpointError(f"{STATE} is not the state of round {round_}")
    history, records = state.get("history"), state.get("transcript_records")
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise CheckpointError(f"{STATE}: history must be a list of round records")
    if isinstance(records, bool) or not isinstance(records, int) or records < 0:
        raise CheckpointError(f"{STATE}: transcript_records must be an integer >= 0")
    if not isinstance(state.get("anchor_digest"), str) or not isinstance(state.get("weights", {}), dict):
        raise CheckpointError(f"{STATE}: anchor_digest must be a string and weights a table")
    return {k: v for k, v in state.items() if k != "round"}
