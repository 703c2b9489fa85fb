"""The frozen-encoder ("tokenizer") interface: raw samples -> padded token features."""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from geofed_secure.errors import DataError

__all__ = ["BatchedEncoder", "FrozenEncoder", "validate_encoded"]


@runtime_checkable
class FrozenEncoder(Protocol):
    """What every frozen encoder offers (structural: any object with these members qualifies).

    name:     stable id including model/version/parameters (part of the feature-cache key);
    modality: the modality it encodes;
    dim:      token width d_m;
    encode(samples) -> (tokens float32 [N, L, d_m], mask bool [N, L]); deterministic (same input,
              same output bit for bit), batched, in eval mode under ``torch.no_grad``.
    """

    name: str
    modality: str
    dim: int

    def encode(self, samples: Any) -> tuple[np.ndarray, np.ndarray]: ...


def validate_encoded(tokens: np.ndarray, mask: np.ndarray, n: int, dim: int, *, where: str) -> None:
    """Raise :class:`DataError` unless (tokens, mask) is well formed for ``n`` samples of width ``dim``."""
    if not isinstance(tokens, np.ndarray) or tokens.dtype != np.float32 or tokens.ndim != 3:
        raise DataError(f"{where}: tokens must be float32 [N, L, d], got {getattr(tokens, 'dtype', None)} {getattr(tokens, 'shape', None)}")
    if tokens.shape[0] != n or tokens.shape[2] != dim:
        raise DataError(f"{where}: expected tokens of shape [{n}, L, {dim}], got {tokens.shape}")
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != tokens.shape[:2]:
        raise DataError(f"{where}: mask must be bool {tokens.shape[:2]}, got {getattr(mask, 'dtype', None)} {getattr(mask, 'shape', None)}")
    if not np.isfinite(tokens).all():
        raise DataError(f"{where}: encoder produced NaN/inf features")


class BatchedEncoder(abc.ABC):
    """Base class of the built-in encoders: fixed token count ``seq_len``, batching, lazy state.

    Subclasses set ``name``, ``modality``, ``dim``, ``seq_len``, ``batch_size`` and implement
    :meth:`_prepare` (validate + convert all samples; cheap) and :meth:`_encode_batch`.
    Heavy state (model weights) is built on first use by :meth:`_load`, so constructing an encoder
    (e.g. to compute a cache key) costs nothing.
    """

    name: str
    modality: str
    dim: int
    seq_len: int
    batch_size: int = 64

    def __init__(self) -> None:
        self._state: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # picklable: heavy state and lock are rebuilt lazily
        d = dict(self.__dict__)
        d["_state"] = None
        d.pop("_lock", None)
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, seq_len={self.seq_len})"

    # -- to implement -------------------------------------------------------------------------
    def _load(self) -> Any:
        """Build the heavy frozen state (called once, lazily)."""
        return None

    @abc.abstractmethod
    def _prepare(self, samples: Any) -> Any:
        """Validate ``samples`` and return an indexable batch container (len() = N)."""

    @abc.abstractmethod
    def _encode_batch(self, state: Any, batch: Any) -> tuple[np.ndarray, np.ndarray]:
        """Encode one batch -> (float32 [b, seq_len, dim], bool [b, seq_len])."""

    # -- public -------------------------------------------------------------------------------
    @property
    def state(self) -> Any:
        if self._state is None:
            with self._lock:
                if self._state is None:
                    self._state = self._load()
                    if self._state is None:
                        self._state = True
        return self._state

    def encode(
        self, samples: Any, *, progress: Callable[[int, int], None] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encode ``samples`` in batches of ``batch_size``; see :class:`FrozenEncoder`."""
        prepared = self._prepare(samples)
        n = len(prepared)
        if n == 0:
            raise DataError(f"{self.name}: nothing to encode (0 samples)")
        tokens = np.empty((n, self.seq_len, self.dim), dtype=np.float32)
        mask = np.empty((n, self.seq_len), dtype=np.bool_)
        state = self.state
        for start in range(0, n, self.batch_size):
            stop = min(n, start + self.batch_size)
            t, m = self._encode_batch(state, prepared[start:stop])
            tokens[start:stop] = t
            mask[start:stop] = m
            if progress is not None:
                progress(stop, n)
        validate_encoded(tokens, mask, n, self.dim, where=self.name)
        if not mask.any(axis=1).all():
            raise DataError(f"{self.name}: some sample produced no tokens")
        return tokens, mask
