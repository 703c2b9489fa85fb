"""Frozen encoder from ANY local Hugging Face checkpoint directory (an operator's own model).

``HFEncoder(path, modality=..., input=..., layout=..., max_length=..., batch_size=...)``:

input
    "image": ``AutoImageProcessor`` + ``AutoModel`` (samples: uint8 RGB ``[H, W, 3]`` arrays of any sizes, or grey
    ``[H, W]``; the processor resizes them); "text": ``AutoTokenizer`` + ``AutoModel`` (samples: strings, padded /
    truncated to ``max_length`` so the token count is fixed); "auto": "image" when the directory has a
    ``preprocessor_config.json`` and no tokenizer files, "text" when it has tokenizer files and no
    ``preprocessor_config.json``, otherwise a :class:`DataError` asking for ``input``.
layout
    "hidden": ``last_hidden_state`` (every token; text: the attention mask is the token mask and padding positions
    are zero; a CNN's ``[b, C, h, w]`` map becomes ``h*w`` tokens of width C); "pooled": ONE token -- the model's
    ``pooler_output`` when the checkpoint holds pooler weights (name segment ``pooled-pooler``), else the masked mean
    of the last hidden states (``pooled-mean``; a pooler the checkpoint lacks would be randomly initialised, so it is
    never used); "patch": the hidden states without the first token (a ViT's / BERT's ``[CLS]``).

Nothing is ever downloaded: ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` are set (``setdefault``) before
transformers is imported and every ``from_pretrained`` call passes ``local_files_only=True``. A path that is not a
local checkpoint directory (missing, a file, no ``config.json``, no weights, a Hub id such as
``bert-base-uncased``) is a :class:`DataError`. A checkpoint whose weights do not cover the model (weights other
than an unused pooler would be randomly initialised) is refused as well.

Identity: ``name = hf/<dir name>/<checkpoint digest[:16]>/<input>/<layout>/len<max_length>[/rows-<h>]/v1`` where the
checkpoint digest is the SHA-256 over the sorted relative names and contents of every (non-hidden) file of the
directory, computed once at construction: changing one weight changes the feature-cache key.

Tables through a text checkpoint (TabLLM-style): with ``columns`` set, a float ``[N, F]`` array of samples is
serialised row by row with :func:`serialize_rows` (``"col1: v1; col2: v2"``, values ``%g``) before tokenisation;
the column names enter the name (``rows-<h>``). Lists of strings are still accepted.

Construction reads only small files (``config.json``, file listing, safetensors headers) and hashes the directory;
weights load on first use (``encode``, or reading ``seq_len`` / ``dim`` when the config does not tell them). Model
in eval mode, float32, parameters frozen, forward under ``torch.no_grad``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geofed_secure.encoders.base import BatchedEncoder
from geofed_secure.errors import DataError

__all__ = ["HF_INPUTS", "HF_LAYOUTS", "HFEncoder", "checkpoint_digest", "detect_input", "serialize_rows"]

HF_INPUTS = ("auto", "image", "text")
HF_LAYOUTS = ("hidden", "pooled", "patch")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                   "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
_CHUNK = 1 << 20
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------
def serialize_rows(values: np.ndarray, columns: Sequence[str]) -> list[str]:
    """Rows of a numeric table as text, TabLLM-style: ``"col1: v1; col2: v2"`` with values formatted ``%g``."""
    x = np.asarray(values)
    cols = [str(c) for c in columns]
    if x.ndim != 2 or x.dtype.kind not in "biuf":
        raise DataError(f"serialize_rows: values must be a numeric [N, F] array, got {x.dtype} {x.shape}")
    if x.shape[1] != len(cols):
        raise DataError(f"serialize_rows: {x.shape[1]} values per row but {len(cols)} column names")
    return ["; ".join(f"{c}: {float(v):g}" for c, v in zip(cols, row, strict=True)) for row in x.tolist()]


def not_a_checkpoint(given: str, problem: str) -> DataError:
    hint = ""
    if not os.path.isabs(given) and _HUB_ID.match(given) and not os.path.exists(given):
        hint = (f" {given!r} looks like a Hugging Face Hub id: download it yourself (e.g. `hf download {given} "
                "--local-dir DIR`) and give that directory.")
    return DataError(f"HF encoder path {given!r}: {problem}; it must be a local Hugging Face checkpoint directory "
                     f"(config.json + weights); nothing is downloaded.{hint}")


def _visible_files(root: Path) -> list[str]:
    found: list[str] = []
    for here, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_dir = Path(here).relative_to(root)
        found.extend((rel_dir / n).as_posix() for n in names if not n.startswith("."))
    return sorted(found)


def checkpoint_digest(path: str | os.PathLike) -> str:
    """Hex SHA-256 over the sorted relative names and the contents of every non-hidden file under ``path``."""
    root = Path(path)
    h = hashlib.sha256(b"geofed-secure/hf-checkpoint/v1\0")
    for rel in _visible_files(root):
        name = rel.encode("utf-8")
        h.update(struct.pack("<Q", len(name)) + name)
        file = root / rel
        h.update(struct.pack("<Q", file.stat().st_size))
        with open(file, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def _weight_files(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_file() and (
        p.suffix == ".safetensors" or (p.suffix == ".bin" and p.name.startswith(("pytorch_model", "model")))
        or p.name.endswith((".safetensors.index.json", ".bin.index.json"))))


def detect_input(path: str | os.PathLike) -> str:
    """"image" or "text" from the files of checkpoint ``path`` (see the module docstring), else :class:`DataError`."""
    root = Path(path)
    has_tokenizer = any((root / f).is_file() for f in TOKENIZER_FILES)
    has_processor = (root / IMAGE_PROCESSOR_FILE).is_file()
    if has_processor and not has_tokenizer:
        return "image"
    if has_tokenizer and not has_processor:
        return "text"
    found = "both tokenizer files and a preprocessor_config.json" if has_tokenizer else \
        f"neither tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...) nor a {IMAGE_PROCESSOR_FILE}"
    raise DataError(f"HF checkpoint {str(root)!r} has {found}: cannot tell whether it encodes images or text; "
                    "set the encoder's input = \"image\" or \"text\"")


def _weight_keys(files: list[Path]) -> list[str] | None:
    """Parameter names stored in the checkpoint (safetensors headers, shard index or a lazily mapped .bin)."""
    keys: list[str] = []
    try:
        for f in files:
            if f.name.endswith(".index.json"):
                keys.extend(json.loads(f.read_text()).get("weight_map", {}))
            elif f.suffix == ".safetensors":
                with open(f, "rb") as fh:
                    (n,) = struct.unpack("<Q", fh.read(8))
                    if n > 100_000_000:
                        return None
                    keys.extend(k for k in json.loads(fh.read(n)) if k != "__metadata__")
            elif f.suffix == ".bin":
                import torch

                keys.extend(torch.load(str(f), map_location="cpu", mmap=True, weights_only=True))
    except Exception:  # noqa: BLE001 - unreadable here; the real load reports it
        return None
    return keys


def _is_pooler_key(key: str) -> bool:
    return key.startswith("pooler.") or ".pooler." in key


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar_was_on:
            hf_logging.enable_progress_bar()


# ---------------------------------------------------------------------------------------------------------------------
# the encoder
# ---------------------------------------------------------------------------------------------------------------------
class HFEncoder(BatchedEncoder):
    """A local Hugging Face checkpoint as a frozen encoder (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, *, modality: str, input: str = "auto", layout: str = "hidden",
                 max_length: int = 64, batch_size: int = 32, columns: Sequence[str] = ()) -> None:
        super().__init__()
        given = os.fspath(path)
        root = Path(given).expanduser()
        if not root.exists():
            raise not_a_checkpoint(given, "does not exist")
        if not root.is_dir():
            raise not_a_checkpoint(given, "is not a directory")
        if not (root / "config.json").is_file():
            raise not_a_checkpoint(given, "has no config.json")
        weights = _weight_files(root)
        if not weights:
            raise not_a_checkpoint(given, "has no weights (*.safetensors or pytorch_model*.bin)")
        if input not in HF_INPUTS:
            raise DataError(f"HF encoder input must be one of {', '.join(HF_INPUTS)}, got {input!r}")
        if layout not in HF_LAYOUTS:
            raise DataError(f"HF encoder layout must be one of {', '.join(HF_LAYOUTS)}, got {layout!r}")
        if int(batch_size) < 1:
            raise DataError(f"HF encoder batch_size must be >= 1, got {batch_size}")
        self.path = root.resolve()
        self.modality = str(modality)
        self.input = detect_input(root) if input == "auto" else input
        self.layout = layout
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.columns = tuple(str(c) for c in columns)
        if self.columns and self.input != "text":
            raise DataError(f"HF encoder {given!r}: table columns can only be serialised for a text checkpoint")
        try:
            config = json.loads((root / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise not_a_checkpoint(given, f"has an unreadable config.json ({exc})") from exc
        if not isinstance(config, dict):
            raise not_a_checkpoint(given, "has a config.json that is not a JSON object")
        if self.input == "text":
            needed = 1 if layout == "pooled" else 2  # patch drops the first token and must keep one
            if self.max_length < needed:
                raise DataError(f"HF encoder max_length must be >= {needed} for layout {layout!r}, got {max_length}")
            limit = config.get("max_position_embeddings")
            if isinstance(limit, int) and not isinstance(limit, bool) and self.max_length > limit:
                raise DataError(f"HF encoder max_length {self.max_length} exceeds the model's "
                                f"max_position_embeddings {limit}")
        self._pool = ""
        if layout == "pooled":
            keys = _weight_keys(weights)
            self._pool = "pooler" if keys is not None and any(_is_pooler_key(k) for k in keys) else "mean"
        hidden = config.get("hidden_size")
        self._dim: int | None = hidden if isinstance(hidden, int) and not isinstance(hidden, bool) and hidden > 0 else None
        self._seq_len: int | None = None
        if layout == "pooled":
            self._seq_len = 1
        elif self.input == "text":
            self._seq_len = self.max_length - (1 if layout == "patch" else 0)
        self.digest = checkpoint_digest(root)
        shown_layout = f"pooled-{self._pool}" if layout == "pooled" else layout
        rows = ""
        if self.columns:
            rows = "/rows-" + hashlib.sha256("\0".join(self.columns).encode("utf-8")).hexdigest()[:12]
        self.name = (f"hf/{self.path.name}/{self.digest[:16]}/{self.input}/{shown_layout}/"
                     f"len{self.max_length}{rows}/v1")

    # dim / seq_len: known from config.json / the layout where possible, else from one dummy forward at load
    @property
    def dim(self) -> int:
        if self._dim is None:
            _ = self.state
        assert self._dim is not None
        return self._dim

    @dim.setter
    def dim(self, value: int) -> None:
        self._dim = int(value)

    @property
    def seq_len(self) -> int:
        if self._seq_len is None:
            _ = self.state
        assert self._seq_len is not None
        return self._seq_len

    @seq_len.setter
    def seq_len(self, value: int) -> None:
        self._seq_len = int(value)

    def __repr__(self) -> str:
        return f"HFEncoder(name={self.name!r}, path={str(self.path)!r}, modality={self.modality!r})"

    # -- loading ------------------------------------------------------------------------------
    def _load(self) -> Any:
        # NB: runs under the state lock -- set self._dim / self._seq_len, never read self.dim / self.seq_len here.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        path = str(self.path)
        try:
            with _quiet_transformers():
                if self.input == "text":
                    pre = AutoTokenizer.from_pretrained(path, local_files_only=True)
                else:
                    pre = AutoImageProcessor.from_pretrained(path, local_files_only=True)
                model, info = AutoModel.from_pretrained(path, local_files_only=True, output_loading_info=True)
        except Exception as exc:  # whatever transformers raises, say which checkpoint failed
            raise DataError(f"{self.name}: could not load the local checkpoint {path} ({type(exc).__name__}: {exc}); "
                            "nothing is downloaded") from exc
        missing = sorted(k for k in info.get("missing_keys", ()) if not (self._pool != "pooler" and _is_pooler_key(k)))
        if missing:
            raise DataError(f"{self.name}: the checkpoint lacks weights for {missing[:5]}"
                            f"{' ...' if len(missing) > 5 else ''}; they would be randomly initialised, which a "
                            "frozen encoder must not be")
        model = model.float().eval()
        for p in model.parameters():
            p.requires_grad_(False)
        if self.input == "text" and getattr(pre, "pad_token", None) is None:
            if getattr(pre, "eos_token", None) is None:
                raise DataError(f"{self.name}: the tokenizer has neither a pad nor an eos token to pad with")
            pre.pad_token = pre.eos_token
        state = (pre, model)
        dummy: list[Any] = ["a"] if self.input == "text" else [np.full((64, 64, 3), 128, dtype=np.uint8)]
        tokens, _ = self._forward(state, dummy, torch)
        if self._dim is not None and tokens.shape[2] != self._dim:
            raise DataError(f"{self.name}: config.json says hidden_size {self._dim} but the model's tokens have "
                            f"width {tokens.shape[2]}")
        self._dim = int(tokens.shape[2])
        if self._seq_len is None:
            self._seq_len = int(tokens.shape[1])
        return state

    # -- encoding -----------------------------------------------------------------------------
    def _prepare(self, samples: Any) -> list[Any]:
        if self.input == "text":
            return self._prepare_text(samples)
        return self._prepare_images(samples)

    def _prepare_text(self, samples: Any) -> list[str]:
        if self.columns and isinstance(samples, np.ndarray) and samples.ndim == 2 and samples.dtype.kind in "biuf":
            return serialize_rows(samples, self.columns)
        if isinstance(samples, str) or not isinstance(samples, (list, tuple, np.ndarray)):
            hint = " (or a numeric [N, F] table: give the encoder its columns)" if not self.columns else \
                f" or a numeric [N, {len(self.columns)}] table"
            raise DataError(f"{self.name}: samples must be a list of strings{hint}, got {type(samples).__name__}")
        out = list(samples)
        for s in out:
            if not isinstance(s, str):
                raise DataError(f"{self.name}: every sample must be a str, got {type(s).__name__}")
        return out

    def _prepare_images(self, samples: Any) -> list[np.ndarray]:
        if isinstance(samples, np.ndarray) and samples.ndim in (3, 4):
            items: list[Any] = list(samples)
        elif isinstance(samples, (list, tuple)):
            items = list(samples)
        else:
            raise DataError(f"{self.name}: images must be a list of uint8 [H, W, 3] arrays, got {type(samples).__name__}")
        out = []
        for i, img in enumerate(items):
            x = np.asarray(img)
            if x.ndim == 3 and x.shape[-1] == 1:
                x = x[..., 0]
            if x.ndim == 2:
                x = np.repeat(x[..., None], 3, axis=-1)
            if x.ndim != 3 or x.shape[-1] != 3 or x.shape[0] == 0 or x.shape[1] == 0:
                raise DataError(f"{self.name}: image {i} must be [H, W, 3] (RGB) or [H, W] (grey), got shape {x.shape}")
            if x.dtype.kind not in "uif" or (x.dtype.kind == "f" and not np.isfinite(x).all()) or x.min() < 0 \
                    or x.max() > 255:
                raise DataError(f"{self.name}: image {i} must hold pixel values 0..255, got {x.dtype}")
            out.append(np.ascontiguousarray(np.rint(x) if x.dtype.kind == "f" else x, dtype=np.uint8))
        return out

    def _encode_batch(self, state: Any, batch: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        tokens, mask = self._forward(state, batch, torch)
        if tokens.shape[1] != self._seq_len:
            raise DataError(f"{self.name}: the model gave {tokens.shape[1]} tokens per sample, expected "
                            f"{self._seq_len}; the image processor must resize every image to one fixed size")
        return tokens, mask

    def _forward(self, state: Any, batch: list[Any], torch: Any) -> tuple[np.ndarray, np.ndarray]:
        pre, model = state
        with torch.no_grad():
            if self.input == "text":
                enc = pre(batch, padding="max_length", truncation=True, max_length=self.max_length,
                          return_tensors="pt")
                mask_t = enc["attention_mask"].to(torch.bool)
            else:
                enc = pre(images=batch, return_tensors="pt", input_data_format="channels_last")
                mask_t = None
            out = model(**enc)
            hidden = out.last_hidden_state
            if hidden.ndim == 4:  # CNN feature map [b, C, h, w] -> h*w tokens of width C
                if self.layout == "patch":
                    raise DataError(f"{self.name}: layout 'patch' needs a model with a leading [CLS] token; this "
                                    "model gives a feature map -- use layout 'hidden' or 'pooled'")
                hidden = hidden.flatten(2).transpose(1, 2)
            if hidden.ndim != 3:
                raise DataError(f"{self.name}: unexpected last_hidden_state shape {tuple(hidden.shape)}")
            if mask_t is None:
                mask_t = torch.ones(hidden.shape[:2], dtype=torch.bool)
            hidden = hidden.float() * mask_t[..., None]  # zero at padding
            if self.layout == "patch":
                hidden, mask_t = hidden[:, 1:], mask_t[:, 1:]
            elif self.layout == "pooled":
                if self._pool == "pooler":
                    pooled = getattr(out, "pooler_output", None)
                    if pooled is None:
                        raise DataError(f"{self.name}: the checkpoint has pooler weights but the model gives no "
                                        "pooler_output")
                    pooled = pooled.float().flatten(1)
                else:
                    pooled = hidden.sum(dim=1) / mask_t.sum(dim=1, keepdim=True).clamp(min=1)
                hidden, mask_t = pooled[:, None, :], torch.ones((pooled.shape[0], 1), dtype=torch.bool)
            tokens = hidden.contiguous().numpy().astype(np.float32, copy=True)
        return tokens, mask_t.numpy().astype(np.bool_, copy=True)
