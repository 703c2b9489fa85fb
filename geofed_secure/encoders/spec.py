"""Build a node's frozen encoder from its :class:`~geofed_secure.config.EncoderSpec` (the ``[nodes.encoder]`` table).

======================== ============================== =========================================================
spec                     encoder                        record kinds it accepts
======================== ============================== =========================================================
builtin "image"          EfficientNetLite0Encoder       image
builtin "text"           MiniLMTextEncoder              text, sequence
builtin "tabular"        PeriodicTabularEncoder (8x8)   table (64 columns, the demo's digit tables)
builtin "dna"            KmerDNAEncoder                 sequence, text (ACGT strings)
builtin "numeric-columns" NumericColumnsEncoder         table (any number of columns: ``n_columns``)
hf, input image          HFEncoder                      image
hf, input text           HFEncoder                      text, sequence; table via ``serialize_rows`` (``columns``)
callable                 CallableEncoder                any (the factory's responsibility)
precomputed              PrecomputedEncoder             features (``dim``, ``seq_len`` of the records)
======================== ============================== =========================================================

Record kinds are the shapes a reader hands over: "image" (list of uint8 RGB ``[H, W, 3]``), "table" (float
``[N, F]`` with column names), "text" / "sequence" (list of str), "features" (float32 ``[N, L, d]``). An
incompatible pair is a :class:`DataError` naming both.

A builtin encoder keeps its own ``modality`` attribute ("image", "text", "tabular", "dna") even when the node's
modality has another name (e.g. builtin "text" on a node called "clinical-notes"): the node's modality name is the
operator's label, the encoder's says what it was built for. The other encoders take the node's modality.
``kind = "builtin"`` with an empty ``name`` uses the node's modality as the name. ``batch_size`` applies to HF
encoders. A table through an HF text checkpoint needs the table's ``columns``: the encoder then accepts the float
``[N, F]`` array itself and serialises each row as ``"col1: v1; col2: v2"`` before tokenising.

Nothing here loads weights: every encoder loads lazily on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

from geofed_secure.config import EncoderSpec
from geofed_secure.encoders.base import FrozenEncoder
from geofed_secure.encoders.custom import CallableEncoder, NumericColumnsEncoder, PrecomputedEncoder
from geofed_secure.encoders.hf import HFEncoder, detect_input, not_a_checkpoint
from geofed_secure.errors import DataError

__all__ = ["BUILTIN_ENCODERS", "RECORD_KINDS", "encoder_from_spec"]

RECORD_KINDS = ("image", "table", "text", "sequence", "features")
BUILTIN_ENCODERS: dict[str, tuple[str, ...]] = {
    "image": ("image",),
    "text": ("text", "sequence"),
    "tabular": ("table",),
    "dna": ("sequence", "text"),
    "numeric-columns": ("table",),
}


def _incompatible(what: str, record_kind: str, accepted: Sequence[str], hint: str = "") -> DataError:
    return DataError(f"encoder {what} cannot encode {record_kind!r} records (it takes: {', '.join(accepted)}){hint}")


def encoder_from_spec(spec: EncoderSpec, *, modality: str, record_kind: str, n_columns: int = 0, dim: int = 0,
                      seq_len: int = 0, base_dir: Path | None = None, columns: Sequence[str] = (),
                      seed: int = 0) -> FrozenEncoder:
    """The frozen encoder ``spec`` describes, for ``record_kind`` records of a node of ``modality``.

    n_columns: the table's width (numeric-columns); dim, seq_len: the records' token shape (precomputed);
    base_dir: folder relative HF paths are resolved against (the config file's folder); columns: the table's
    column names (a table through an HF text checkpoint); seed: seed of the synthetic builtins.
    """
    if record_kind not in RECORD_KINDS:
        raise DataError(f"unknown record kind {record_kind!r}; known: {', '.join(RECORD_KINDS)}")
    kind = spec.kind
    if kind == "numeric-columns":  # tolerated alias of builtin "numeric-columns"
        kind, name = "builtin", "numeric-columns"
    else:
        name = spec.name or (modality if kind == "builtin" else "")

    if kind == "builtin":
        if name not in BUILTIN_ENCODERS:
            raise DataError(f"unknown builtin encoder {name!r}; known: {', '.join(BUILTIN_ENCODERS)}")
        accepted = BUILTIN_ENCODERS[name]
        if record_kind not in accepted:
            hint = "; use kind = \"precomputed\" for token files" if record_kind == "features" else ""
            raise _incompatible(f"builtin {name!r}", record_kind, accepted, hint)
        if name == "numeric-columns":
            if n_columns < 1:
                raise DataError("builtin encoder 'numeric-columns' needs the table's number of columns (n_columns >= 1)")
            return NumericColumnsEncoder(n_columns, seed=seed, modality=modality)
        from geofed_secure.encoders import get_encoder

        return get_encoder(name, seed=seed)

    if kind == "hf":
        if not spec.path:
            raise DataError("encoder kind 'hf' needs a path (a local Hugging Face checkpoint directory)")
        path = Path(spec.path).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        if not path.exists():
            looked = f" (looked at {path})" if str(path) != spec.path else ""
            raise not_a_checkpoint(spec.path, f"does not exist{looked}")
        given = str(path)
        # Validate the directory before detecting the input (HFEncoder raises the "local checkpoint" error).
        input_ = spec.input
        if input_ == "auto" and path.is_dir() and (path / "config.json").is_file():
            input_ = detect_input(path)
        if input_ == "image" and record_kind != "image":
            raise _incompatible(f"hf {spec.path!r} (an image checkpoint)", record_kind, ("image",))
        if input_ == "text":
            accepted = ("text", "sequence", "table")
            if record_kind not in accepted:
                raise _incompatible(f"hf {spec.path!r} (a text checkpoint)", record_kind, accepted)
            if record_kind == "table" and not columns:
                raise DataError(f"encoder hf {spec.path!r} (a text checkpoint) on table records needs the table's "
                                "column names (columns=...) to serialise each row as \"col: value; ...\"")
        return HFEncoder(given, modality=modality, input=input_, layout=spec.layout, max_length=spec.max_length,
                         batch_size=spec.batch_size, columns=tuple(columns) if record_kind == "table" else ())

    if kind == "callable":
        if not spec.factory:
            raise DataError("encoder kind 'callable' needs factory = \"package.module:function\"")
        # name / dim are read-only properties (the factory runs on first use); structurally a FrozenEncoder
        return cast(FrozenEncoder, CallableEncoder(spec.factory, modality=modality))

    if kind == "precomputed":
        if record_kind != "features":
            raise _incompatible("precomputed", record_kind, ("features",),
                                "; precomputed means the records already are tokens (a features source)")
        if dim < 1 or seq_len < 1:
            raise DataError(f"encoder 'precomputed' needs the records' token shape (dim, seq_len >= 1), got {dim}, {seq_len}")
        return PrecomputedEncoder(dim, seq_len, modality=modality)

    raise DataError(f"unknown encoder kind {spec.kind!r}; known: builtin, hf, callable, precomputed")
