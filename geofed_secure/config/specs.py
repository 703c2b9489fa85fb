"""What an operator's own node is made of: where its records come from, its frozen encoder, the federation's concepts.

The ``[nodes.data]`` / ``[nodes.anchors]`` / ``[nodes.eval_anchors]`` tables (:class:`SourceSpec`), ``[nodes.encoder]``
(:class:`EncoderSpec`) and ``[anchors]`` (:class:`AnchorsSection`) of a run configuration; validated with the rest of
it in :func:`geofed_secure.config.validate` (docs/own-federation.md).
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE_KINDS = ("image-folder", "table", "jsonl", "fasta", "sequences", "features")
ENCODER_KINDS = ("builtin", "hf", "callable", "precomputed")
ENCODER_INPUTS = ("auto", "image", "text")
TOKEN_LAYOUTS = ("hidden", "pooled", "patch")


@dataclass(frozen=True, kw_only=True)
class SourceSpec:
    """Where a node's records (or its copy of the public anchors) come from; read by :mod:`geofed_secure.data.readers`.

    kind: "image-folder" (class subfolders, or ``labels_file`` = CSV with ``file`` and ``label_column``), "table"
    (CSV or Parquet; ``label_column``; ``columns`` = the feature columns, () = every other column; ``text_column``
    set = the records are that column's strings), "jsonl" (``text_column`` and ``label_column`` fields), "fasta"
    (``>id label=<value>`` headers, or ``labels_file`` = CSV with ``id`` and ``label_column``), "sequences" (one
    ``SEQUENCE<TAB>LABEL`` per line), "features" (precomputed tokens: ``.safetensors`` / ``.npz`` with ``tokens``
    [N, L, d] float32, optional ``mask`` [N, L] bool, and ``labels`` [N] (integers or strings), or ``.npy`` tokens with
    ``labels_file``). Relative paths are resolved against the config file's folder. ``limit`` > 0 reads at most that
    many records (in file order).
    """

    kind: str
    path: str
    label_column: str = "label"
    text_column: str = ""
    columns: tuple[str, ...] = ()
    labels_file: str = ""
    limit: int = 0


@dataclass(frozen=True, kw_only=True)
class EncoderSpec:
    """A node's frozen encoder ("tokenizer"); built by :func:`geofed_secure.encoders.encoder_from_spec`.

    kind: "builtin" (``name``: one of the demo's encoders "image", "text", "tabular", "dna", or "numeric-columns"),
    "hf" (``path``: a local Hugging Face checkpoint directory; ``input`` "image" uses AutoImageProcessor, "text"
    AutoTokenizer, "auto" decides from the files; ``layout``: "hidden" = last hidden states, "pooled" = one token,
    "patch" = hidden states without the first ([CLS]) token; ``max_length`` tokens for text), "callable"
    (``factory`` = "package.module:function" returning an encoder), "precomputed" (the records already are tokens).
    """

    kind: str = "builtin"
    name: str = ""
    path: str = ""
    input: str = "auto"
    layout: str = "hidden"
    max_length: int = 64
    factory: str = ""
    batch_size: int = 32


@dataclass(frozen=True, kw_only=True)
class AnchorsSection:
    """The public anchor set of a federation of own nodes (the demo's concepts are the digits 0..9).

    concepts: the concept names; every anchor file's concept column takes values from them, and every modality's
    anchors follow the same concept sequence (anchor j is the same concept everywhere).
    holdout_per_concept: for a node without ``eval_anchors``, the last this-many anchors of each concept (in file
    order) are held out for evaluation instead of training.
    """

    concepts: tuple[str, ...] = ()
    holdout_per_concept: int = 2
