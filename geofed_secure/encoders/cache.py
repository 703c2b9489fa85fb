"""On-disk cache of frozen-encoder features (they never change, DESIGN.md section 2 step 1).

One safetensors file per (encoder, data) pair, named by
``key = sha256(u64 len(name) || name || data_digest)`` (hex; the length prefix keeps the
concatenation of encoder name and data digest unambiguous). Each file holds ``tokens`` (float32)
and ``mask`` (bool) plus metadata: format, key, encoder name, data digest, N, and the SHA-256 of
the tensor bytes. Writes are atomic (temporary file in the same folder, fsync, ``os.replace``).
A file that cannot be parsed, is truncated, belongs to another key, has the wrong shape or whose
content hash does not match is counted in ``corrupt``, discarded and re-encoded -- never used.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from geofed_secure.encoders.base import validate_encoded
from geofed_secure.errors import DataError

__all__ = ["FeatureCache", "cache_key", "default_cache_root"]

log = logging.getLogger(__name__)

_FORMAT = "geofed-secure/features/v1"


def default_cache_root() -> Path:
    env = os.environ.get("GEOFED_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "geofed-secure" / "features"


def cache_key(encoder_name: str, data_digest: str) -> str:
    """Hex SHA-256 identifying the features of ``data_digest`` under encoder ``encoder_name``."""
    name = encoder_name.encode("utf-8")
    h = hashlib.sha256(struct.pack("<Q", len(name)) + name)
    h.update(data_digest.encode("utf-8"))
    return h.hexdigest()


def _content_sha256(tokens: np.ndarray, mask: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(repr((tokens.shape, mask.shape)).encode())
    h.update(np.ascontiguousarray(tokens, dtype="<f4").tobytes())
    h.update(np.ascontiguousarray(mask, dtype=np.bool_).tobytes())
    return h.hexdigest()


def _n_samples(samples: Any) -> int | None:
    if isinstance(samples, np.ndarray):
        return int(samples.shape[0])
    try:
        return len(samples)
    except TypeError:
        return None


class FeatureCache:
    """Feature cache rooted at ``root`` (None -> ``$GEOFED_CACHE`` or ``~/.cache/geofed-secure/features``).

    Counters: ``hits`` (served from disk), ``misses`` (encoded; includes re-encodes of corrupt
    files), ``corrupt`` (files rejected).
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_root()
        self.hits = 0
        self.misses = 0
        self.corrupt = 0

    def __repr__(self) -> str:
        return f"FeatureCache(root={str(self.root)!r}, hits={self.hits}, misses={self.misses}, corrupt={self.corrupt})"

    def path_for(self, encoder_name: str, data_digest: str) -> Path:
        return self.root / f"{cache_key(encoder_name, data_digest)}.safetensors"

    # ------------------------------------------------------------------------------------------
    def get_or_encode(
        self,
        encoder: Any,
        samples: Any,
        *,
        data_digest: str,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Features of ``samples`` under ``encoder``: from disk if a valid entry exists, else encode + store.

        ``data_digest`` must identify ``samples`` exactly (e.g. :func:`geofed_secure.data.anchors.anchor_digest`);
        the caller vouches for it -- the cache cannot tell two different sample sets with one digest apart.
        """
        if not isinstance(data_digest, str) or not data_digest:
            raise DataError("FeatureCache: data_digest must be a non-empty string")
        name = str(encoder.name)
        key = cache_key(name, data_digest)
        path = self.root / f"{key}.safetensors"
        n = _n_samples(samples)

        if path.exists():
            loaded = self._load(path, key=key, name=name, data_digest=data_digest, n=n, dim=int(encoder.dim))
            if loaded is not None:
                self.hits += 1
                if progress is not None:
                    progress(loaded[0].shape[0], loaded[0].shape[0])
                return loaded

        self.misses += 1
        tokens, mask = self._encode(encoder, samples, progress)
        validate_encoded(tokens, mask, n if n is not None else tokens.shape[0], int(encoder.dim), where=name)
        self._store(path, tokens, mask, key=key, name=name, data_digest=data_digest)
        return tokens, mask

    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _encode(encoder: Any, samples: Any, progress: Callable[[int, int], None] | None) -> tuple[np.ndarray, np.ndarray]:
        takes_progress = False
        try:
            takes_progress = "progress" in inspect.signature(encoder.encode).parameters
        except (TypeError, ValueError):  # pragma: no cover - builtins without signature
            pass
        if takes_progress:
            tokens, mask = encoder.encode(samples, progress=progress)
        else:
            tokens, mask = encoder.encode(samples)
            if progress is not None:
                progress(int(tokens.shape[0]), int(tokens.shape[0]))
        return tokens, mask

    def _load(self, path: Path, *, key: str, name: str, data_digest: str, n: int | None, dim: int):
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
                problems = []
                expect = {"format": _FORMAT, "key": key, "encoder": name, "data_digest": data_digest}
                for k, v in expect.items():
                    if meta.get(k) != v:
                        problems.append(f"metadata {k} mismatch")
                if set(fh.keys()) != {"tokens", "mask"}:
                    problems.append(f"unexpected tensors {sorted(fh.keys())}")
                if problems:
                    raise DataError("; ".join(problems))
                tokens = fh.get_tensor("tokens")
                mask = fh.get_tensor("mask")
            if tokens.dtype != np.float32 or tokens.ndim != 3 or tokens.shape[2] != dim:
                raise DataError(f"tokens {tokens.dtype} {tokens.shape}, expected float32 [N, L, {dim}]")
            if mask.dtype != np.bool_ or mask.shape != tokens.shape[:2]:
                raise DataError(f"mask {mask.dtype} {mask.shape} does not match tokens {tokens.shape}")
            if str(tokens.shape[0]) != meta.get("n") or (n is not None and tokens.shape[0] != n):
                raise DataError(f"{tokens.shape[0]} stored samples, expected {n if n is not None else meta.get('n')}")
            if _content_sha256(tokens, mask) != meta.get("content_sha256"):
                raise DataError("content hash mismatch")
            validate_encoded(tokens, mask, tokens.shape[0], dim, where=str(path))
            return np.array(tokens, dtype=np.float32, copy=True), np.array(mask, dtype=np.bool_, copy=True)
        except Exception as exc:  # noqa: BLE001 - any failure means: do not trust this file
            self.corrupt += 1
            log.warning("feature cache: discarding unusable entry %s (%s); re-encoding", path, exc)
            try:
                path.unlink()
            except OSError:
                pass
            return None

    def _store(self, path: Path, tokens: np.ndarray, mask: np.ndarray, *, key: str, name: str, data_digest: str) -> None:
        from safetensors.numpy import save

        tokens = np.ascontiguousarray(tokens, dtype=np.float32)
        mask = np.ascontiguousarray(mask, dtype=np.bool_)
        meta = {
            "format": _FORMAT,
            "key": key,
            "encoder": name,
            "data_digest": data_digest,
            "n": str(tokens.shape[0]),
            "content_sha256": _content_sha256(tokens, mask),
        }
        blob = save({"tokens": tokens, "mask": mask}, metadata=meta)
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
