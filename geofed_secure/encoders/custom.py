"""Encoders an operator brings as code or as data: a user factory, numeric columns, precomputed tokens.

``CallableEncoder("package.module:function")``
    imports ``function`` from ``package.module`` at construction (a malformed string, a missing module or attribute
    is a :class:`DataError`) and calls it with no arguments on first use (reading ``name`` / ``dim`` or encoding), so
    building the encoder stays cheap. The factory returns an object with ``name`` (str), ``dim`` (int) and
    ``encode(samples)`` giving tokens float32 ``[N, L, d]`` or ``(tokens, mask)``; the wrapper always returns
    ``(tokens, mask)`` (mask all True when absent) after validating shape, dtype and finiteness. Its name is
    ``callable/<factory>/<object name>``: the object's name must change whenever its output may change.
``NumericColumnsEncoder(n_columns=F)``
    the built-in frozen encoder for numeric tables of any width (a SYNTHETIC fixed random feature map, not a
    pretrained model): one token per column. Value ``x`` of column ``c`` becomes ``sin / cos(2 pi f x / scale)`` for
    ``n_freq`` seeded frequencies of that column (log-uniform in [0.25, 4] cycles per unit), a seeded fixed random
    projection maps those ``2 n_freq`` features to ``dim``, and a seeded column-position embedding is added. Operators
    should standardise their columns (zero mean, unit variance) or pass a ``scale`` of about one column std.
``PrecomputedEncoder(dim, seq_len)``
    the identity for records that already are tokens: validates ``tokens`` or ``(tokens, mask)`` and returns them.
"""

from __future__ import annotations

import importlib
import re
import threading
from typing import Any

import numpy as np

from geofed_secure.encoders.base import BatchedEncoder, validate_encoded
from geofed_secure.errors import DataError

__all__ = ["CallableEncoder", "NumericColumnsEncoder", "PrecomputedEncoder", "as_tokens_and_mask", "resolve_factory"]

_FACTORY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_TAG = 0xC01A5


def _n_samples(samples: Any) -> int | None:
    if isinstance(samples, np.ndarray):
        return int(samples.shape[0]) if samples.ndim else None
    try:
        return len(samples)
    except TypeError:
        return None


def as_tokens_and_mask(result: Any, *, dim: int, where: str, n: int | None = None,
                       seq_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``tokens`` or ``(tokens, mask)`` -> validated ``(float32 [N, L, dim], bool [N, L])``; mask all True if absent."""
    if isinstance(result, tuple) and len(result) == 2:
        tokens, mask = result
    else:
        tokens, mask = result, None
    if not isinstance(tokens, np.ndarray):
        raise DataError(f"{where}: tokens must be a numpy float32 [N, L, d] array, got {type(tokens).__name__}")
    if tokens.dtype != np.float32:
        raise DataError(f"{where}: tokens must be float32, got {tokens.dtype} (convert with .astype(np.float32))")
    if tokens.ndim != 3:
        raise DataError(f"{where}: tokens must be [N, L, d], got shape {tokens.shape}")
    if mask is None:
        mask = np.ones(tokens.shape[:2], dtype=np.bool_)
    if n is not None and tokens.shape[0] != n:
        raise DataError(f"{where}: {n} samples in but {tokens.shape[0]} token rows out")
    if seq_len is not None and tokens.shape[1] != seq_len:
        raise DataError(f"{where}: expected {seq_len} tokens per sample, got {tokens.shape[1]}")
    validate_encoded(tokens, mask, tokens.shape[0], dim, where=where)
    if not mask.any(axis=1).all():
        raise DataError(f"{where}: some sample has no token (its mask is all False)")
    return tokens, mask


def resolve_factory(spec: str) -> Any:
    """The callable named by ``"package.module:function"`` (``function`` may be a dotted attribute path)."""
    if not isinstance(spec, str) or not _FACTORY.match(spec.strip()):
        raise DataError(f"encoder factory {spec!r} must look like \"package.module:function\"")
    module_name, _, attr = spec.strip().partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise DataError(f"encoder factory {spec!r}: cannot import module {module_name!r} ({exc}); is it installed "
                        "or on PYTHONPATH?") from exc
    except Exception as exc:  # the user's module failed while importing
        raise DataError(f"encoder factory {spec!r}: importing {module_name!r} failed ({type(exc).__name__}: {exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise DataError(f"encoder factory {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise DataError(f"encoder factory {spec!r}: {attr!r} is not callable")
    return obj


class CallableEncoder:
    """A user factory's encoder, wrapped so its output is always validated ``(tokens, mask)``."""

    def __init__(self, factory: str, *, modality: str = "custom") -> None:
        self.factory = factory.strip() if isinstance(factory, str) else factory
        self._function = resolve_factory(factory)
        self.modality = str(modality)
        self._obj: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # picklable: the function is re-imported, the object rebuilt
        return {"factory": self.factory, "modality": self.modality}

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__init__(d["factory"], modality=d["modality"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"CallableEncoder(factory={self.factory!r}, modality={self.modality!r})"

    @property
    def encoder(self) -> Any:
        """The factory's object (the factory runs once, on first use)."""
        if self._obj is None:
            with self._lock:
                if self._obj is None:
                    self._obj = self._build()
        return self._obj

    def _build(self) -> Any:
        where = f"encoder factory {self.factory!r}"
        try:
            obj = self._function()
        except DataError:
            raise
        except Exception as exc:  # the user's code failed
            raise DataError(f"{where} raised {type(exc).__name__}: {exc}") from exc
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise DataError(f"{where} returned an object without a non-empty str 'name'")
        dim = getattr(obj, "dim", None)
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
            raise DataError(f"{where} returned an object whose 'dim' is not a positive int: {dim!r}")
        if not callable(getattr(obj, "encode", None)):
            raise DataError(f"{where} returned an object without an encode(samples) method")
        seq_len = getattr(obj, "seq_len", None)
        if seq_len is not None and (not isinstance(seq_len, (int, np.integer)) or isinstance(seq_len, bool) or seq_len < 1):
            raise DataError(f"{where} returned an object whose 'seq_len' is not a positive int: {seq_len!r}")
        return obj

    @property
    def name(self) -> str:
        return f"callable/{self.factory}/{self.encoder.name}"

    @property
    def dim(self) -> int:
        return int(self.encoder.dim)

    @property
    def seq_len(self) -> int | None:
        s = getattr(self.encoder, "seq_len", None)
        return None if s is None else int(s)

    def encode(self, samples: Any) -> tuple[np.ndarray, np.ndarray]:
        obj = self.encoder
        where = f"encoder factory {self.factory!r} ({obj.name})"
        try:
            result = obj.encode(samples)
        except DataError:
            raise
        except Exception as exc:  # the user's code failed
            raise DataError(f"{where}: encode raised {type(exc).__name__}: {exc}") from exc
        return as_tokens_and_mask(result, dim=self.dim, where=where, n=_n_samples(samples), seq_len=self.seq_len)


class NumericColumnsEncoder(BatchedEncoder):
    """Numeric tables ``[N, n_columns]`` -> one token per column (see the module docstring)."""

    batch_size = 512

    def __init__(self, n_columns: int, *, seed: int = 0, n_freq: int = 8, dim: int = 64, scale: float = 1.0,
                 modality: str = "tabular") -> None:
        super().__init__()
        if int(n_columns) < 1 or int(n_freq) < 1 or int(dim) < 1:
            raise DataError(f"numeric-columns encoder: n_columns, n_freq and dim must be >= 1, got "
                            f"{n_columns}, {n_freq}, {dim}")
        if not np.isfinite(scale) or scale <= 0:
            raise DataError(f"numeric-columns encoder: scale must be a positive number, got {scale}")
        self.seed, self.n_columns, self.n_freq, self.dim = int(seed), int(n_columns), int(n_freq), int(dim)
        self.scale = float(scale)
        self.modality = str(modality)
        self.seq_len = self.n_columns
        self.name = (f"numeric-columns-synthetic/seed{self.seed}/F{self.n_columns}/f{self.n_freq}/"
                     f"scale{self.scale:g}/d{self.dim}/v1")
        rng = np.random.default_rng([self.seed, _TAG])
        self.freqs = np.exp(rng.uniform(np.log(0.25), np.log(4.0), size=(self.n_columns, self.n_freq)))
        fan_in = 2 * self.n_freq
        self.projection = rng.standard_normal((fan_in, self.dim)) * np.sqrt(2.0 / fan_in)
        self.position = rng.standard_normal((self.n_columns, self.dim)) * 0.5
        for a in (self.freqs, self.projection, self.position):
            a.setflags(write=False)

    def _prepare(self, samples: Any) -> np.ndarray:
        x = np.asarray(samples)
        if x.ndim != 2 or x.shape[1] != self.n_columns:
            raise DataError(f"{self.name}: tables must be [N, {self.n_columns}], got shape {x.shape}")
        if x.dtype.kind not in "biuf" or not np.isfinite(x).all():
            raise DataError(f"{self.name}: values must be finite numbers (impute missing values first)")
        return x

    def _encode_batch(self, state: Any, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = batch.astype(np.float64) / self.scale                            # [b, F]
        angle = 2.0 * np.pi * x[..., None] * self.freqs[None]                # [b, F, n_freq]
        feats = np.concatenate([np.sin(angle), np.cos(angle)], axis=-1)      # [b, F, 2 n_freq]
        tokens = np.einsum("bfk,kd->bfd", feats, self.projection) + self.position[None]
        return tokens.astype(np.float32), np.ones((batch.shape[0], self.n_columns), dtype=np.bool_)


class PrecomputedEncoder:
    """Identity for precomputed tokens ``[N, seq_len, dim]`` (optionally with a bool mask ``[N, seq_len]``)."""

    def __init__(self, dim: int, seq_len: int, modality: str = "features") -> None:
        if int(dim) < 1 or int(seq_len) < 1:
            raise DataError(f"precomputed encoder: dim and seq_len must be >= 1, got {dim}, {seq_len}")
        self.dim, self.seq_len, self.modality = int(dim), int(seq_len), str(modality)
        self.name = f"precomputed/d{self.dim}/L{self.seq_len}/v1"

    def __repr__(self) -> str:
        return f"PrecomputedEncoder(dim={self.dim}, seq_len={self.seq_len}, modality={self.modality!r})"

    def encode(self, samples: Any) -> tuple[np.ndarray, np.ndarray]:
        return as_tokens_and_mask(samples, dim=self.dim, where=self.name, seq_len=self.seq_len)
