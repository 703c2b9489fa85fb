"""Readers of an operator's own records: image folders, CSV/Parquet tables, JSONL, FASTA, sequences, features.

:func:`read_records` turns a :class:`~geofed_secure.config.SourceSpec` (a node's private records, or its copy of the
public anchors) into :class:`Records`: the raw samples in file order, each record's label as a string, and a digest
of both. Nothing is downloaded. Every problem raises :class:`~geofed_secure.errors.DataError` naming the record set
(``what``), the file, what is wrong and how to fix it. Labels are stripped of surrounding whitespace; rows of a table
or label file are counted from 1 after the header, lines of a text file from 1.

Digest encoding (version 1); integers are unsigned 64-bit little-endian (``u64``), a string ``s`` is
``u64 len(utf8(s)) || utf8(s)``::

    b"geofed-secure/records-digest/v1\\0"
    str kind                         ("image", "table", "text", "sequence" or "features")
    u64 N
    each sample, in order:
      array  -> b"A" || str dtype.str (little-endian form: "|u1", "<f4") || u64 ndim || u64 shape[i]...
                     || C-order little-endian bytes          (image [H, W, 3], table row [F], features [L, d])
      string -> b"S" || str sample                            (text, sequence)
    each label, in order: str label
    features only: b"M" || u64 N || u64 L || the mask, N * L bytes (1 = real token)

Equal content gives an equal digest; changing one sample, one label (or mask) or the order changes it.
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from PIL import Image
from safetensors import SafetensorError

from geofed_secure.config import SOURCE_KINDS, SourceSpec
from geofed_secure.data.anchors import feed_array, feed_str, u64
from geofed_secure.errors import DataError

__all__ = ["FEATURE_SUFFIXES", "IMAGE_SUFFIXES", "TABLE_SUFFIXES", "Records", "read_records"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
FEATURE_SUFFIXES = (".safetensors", ".npz", ".npy")
DNA_LETTERS = frozenset("ACGTN")
DIGEST_DOMAIN = b"geofed-secure/records-digest/v1\x00"


@dataclass(frozen=True)
class Records:
    """Records read from one source, in file order.

    kind: "image" | "table" | "text" | "sequence" | "features".
    samples: image: list of uint8 RGB arrays [H, W, 3] (sizes may differ); table: float32 [N, F] (``columns`` names
             F); text, sequence: list[str]; features: float32 [N, L, d] with ``mask`` bool [N, L]. Arrays are read-only.
    labels: each record's raw label value as a string ("1", not "1.0" for a CSV column of integers).
    digest: hex SHA-256 over (kind, samples, labels); the encoding is in the module docstring.
    """

    kind: str
    samples: Any
    labels: tuple[str, ...]
    digest: str
    description: str
    columns: tuple[str, ...] = ()
    mask: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


def read_records(spec: SourceSpec, *, base_dir: str | Path | None = None, what: str = "data") -> Records:
    """Read the records ``spec`` describes; a relative path is resolved against ``base_dir`` (else the working folder).

    ``what`` names the record set in error messages (e.g. ``"nodes[2].anchors"``).
    """
    if spec.kind not in SOURCE_KINDS:
        raise DataError(f"{what}: unknown source kind {spec.kind!r}; use one of: {', '.join(SOURCE_KINDS)}")
    if isinstance(spec.limit, bool) or not isinstance(spec.limit, int) or spec.limit < 0:
        raise DataError(f"{what}: limit must be a whole number >= 0, got {spec.limit!r}; "
                        "set it to 0 (every record) or the number of records to read")
    if not spec.path:
        raise DataError(f"{what}: no path given; set path to the {spec.kind} source")
    base = Path(base_dir).expanduser() if base_dir is not None else None
    job = _Job(what, spec, _resolve(spec.path, base), base)
    if spec.kind == "image-folder":
        job.check_exists(job.path, folder=True)
        return _read_image_folder(job)
    job.check_exists(job.path, folder=False)
    return _READERS[spec.kind](job)


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------


def _pandas() -> Any:
    import pandas  # type: ignore[import-untyped, unused-ignore]

    return pandas


def _resolve(raw: str, base: Path | None) -> Path:
    path = Path(raw).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return path.resolve()


def _names(names: Sequence[str], most: int = 12) -> str:
    shown = ", ".join(names[:most])
    return shown + (f", ... ({len(names)} in all)" if len(names) > most else "") if names else "(none)"


@dataclass(frozen=True)
class _Job:
    what: str
    spec: SourceSpec
    path: Path
    base: Path | None

    def error(self, problem: str, fix: str, *, file: Path | None = None) -> DataError:
        return DataError(f"{self.what}: {file or self.path}: {problem}; {fix}")

    def full(self, count: int) -> bool:
        """Whether ``count`` records already reach ``limit``."""
        return 0 < self.spec.limit <= count

    def check_exists(self, path: Path, *, folder: bool) -> None:
        if not path.exists():
            against = f"against {self.base}" if self.base is not None else "against the working folder"
            raise self.error("does not exist", f"check the path (a relative path is resolved {against})", file=path)
        if folder and not path.is_dir():
            raise self.error("is not a folder", "point path at the folder of class subfolders (or of the files in "
                             "labels_file)", file=path)
        if not folder and not path.is_file():
            raise self.error("is not a file", f"point path at the {self.spec.kind} file itself", file=path)

    def labels_path(self) -> Path:
        path = _resolve(self.spec.labels_file, self.base)
        self.check_exists(path, folder=False)
        return path

    def finish(self, kind: str, samples: Any, labels: Sequence[str], details: str, *,
               columns: tuple[str, ...] = (), mask: np.ndarray | None = None) -> Records:
        if not labels:
            raise self.error("holds no records", "add records, or point path at the right file")
        if self.spec.limit:
            details += f"; limit {self.spec.limit}"
        labels = tuple(labels)
        return Records(kind=kind, samples=samples, labels=labels, digest=_digest(kind, samples, labels, mask),
                       description=f"{self.spec.kind} {self.path} ({details})", columns=columns, mask=mask)


def _digest(kind: str, samples: Any, labels: Sequence[str], mask: np.ndarray | None) -> str:
    h = hashlib.sha256(DIGEST_DOMAIN)
    feed_str(h, kind)
    h.update(u64(len(labels)))
    for sample in samples:
        if isinstance(sample, str):
            h.update(b"S")
            feed_str(h, sample)
            continue
        feed_array(h, sample)
    for label in labels:
        feed_str(h, label)
    if mask is not None:
        h.update(b"M" + u64(mask.shape[0]) + u64(mask.shape[1]))
        h.update(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    return h.hexdigest()


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is _pandas().NA


def _label(job: _Job, value: Any, where: str, file: Path) -> str:
    """A label as a stripped string; an empty or missing one -> DataError saying ``where`` it is."""
    text = "" if _missing(value) else (value.decode("utf-8") if isinstance(value, bytes) else str(value)).strip()
    if not text:
        raise job.error(f"empty label {where}", "give every record a label, or remove that record", file=file)
    return text


def _label_values(job: _Job, values: Any, file: Path) -> list[str]:
    """The label column of a table or label file; an empty label -> DataError naming its row."""
    column = job.spec.label_column
    return [_label(job, value, f"in column {column!r} at data row {row}", file) for row, value in enumerate(values, start=1)]


def _read_csv(job: _Job, file: Path, *, nrows: int | None = None) -> Any:
    """A CSV/TSV file, every cell as a string (nothing turned into NaN)."""
    pd = _pandas()
    try:
        frame = pd.read_csv(file, sep="\t" if file.suffix.lower() == ".tsv" else ",", dtype=str,
                            keep_default_na=False, nrows=nrows, encoding="utf-8-sig")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise job.error(f"cannot read this file as CSV ({exc})", "check that it is a UTF-8 CSV file with a header row "
                        "(tab-separated for .tsv)", file=file) from exc
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _label_file(job: _Job, key: str) -> tuple[list[str], list[str]]:
    """(``key`` column, labels) of the CSV ``labels_file``; ``key`` "" reads the labels only."""
    file = job.labels_path()
    frame = _read_csv(job, file)
    columns = list(frame.columns)
    missing = [c for c in (key, job.spec.label_column) if c and c not in columns]
    if missing:
        needed = " and ".join(repr(c) for c in (key, job.spec.label_column) if c)
        raise job.error(f"labels file has no column {', '.join(map(repr, missing))} (columns: {_names(columns)})",
                        f"give it a header row naming the columns {needed} (or set label_column)", file=file)
    keys = [str(k).strip() for k in frame[key]] if key else []
    return keys, _label_values(job, frame[job.spec.label_column], file)


def _lines(job: _Job, file: Path) -> Iterator[tuple[int, str]]:
    try:
        with file.open(encoding="utf-8-sig") as handle:
            yield from enumerate(handle, start=1)
    except (OSError, UnicodeDecodeError) as exc:
        raise job.error(f"cannot read this file as UTF-8 text ({exc})", "save it as UTF-8 text", file=file) from exc


def _dna(job: _Job, text: str, lineno: int) -> str:
    seq = text.strip().upper()
    for position, letter in enumerate(seq, start=1):
        if letter not in DNA_LETTERS:
            raise job.error(f"invalid character {letter!r} at line {lineno}, position {position}",
                            "sequences may hold only A, C, G, T and N (any case); fix or remove that record")
    return seq


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------


def _read_table(job: _Job) -> Records:
    pd = _pandas()
    spec, suffix = job.spec, job.path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise job.error(f"unknown table suffix {suffix!r}", f"use one of: {', '.join(TABLE_SUFFIXES)} (CSV, TSV, Parquet)")
    if suffix in (".csv", ".tsv"):
        frame = _read_csv(job, job.path, nrows=spec.limit or None)
    else:
        try:
            frame = pd.read_parquet(job.path, engine="pyarrow")
        except (OSError, ValueError, ImportError) as exc:
            raise job.error(f"cannot read this file as Parquet ({exc})", "check that it is a valid Parquet file") from exc
        frame = frame.iloc[: spec.limit or None]
        frame.columns = [str(c) for c in frame.columns]
    names = list(frame.columns)
    for role, column in (("label column", spec.label_column), ("text column", spec.text_column)):
        if column and column not in names:
            raise job.error(f"no {role} {column!r} (columns: {_names(names)})",
                            f"set {role.replace(' ', '_')} to one of the columns")
    labels = _label_values(job, frame[spec.label_column], job.path)
    if spec.text_column:
        texts = []
        for row, value in enumerate(frame[spec.text_column], start=1):
            if _missing(value):
                raise job.error(f"missing text in column {spec.text_column!r} at data row {row}", "fill it or remove the row")
            texts.append(str(value))
        return job.finish("text", texts, labels, f"{len(texts)} rows, text column {spec.text_column!r}; "
                          f"label column {spec.label_column!r}")
    features = list(spec.columns) or [c for c in names if c != spec.label_column]
    absent = [c for c in features if c not in names]
    if absent:
        raise job.error(f"no feature column {', '.join(map(repr, absent))} (columns: {_names(names)})",
                        "fix columns, or leave it empty to use every column but the label")
    if not features:
        raise job.error("has no feature columns besides the label column", "add numeric feature columns")
    matrix = np.column_stack([_numeric(job, frame[c], c) for c in features]).astype(np.float32)
    bad = np.argwhere(~np.isfinite(matrix))
    if bad.size:
        row, col = (int(i) for i in bad[0])
        raw = frame[features[col]].iloc[row]
        shown = "a missing or NaN value" if _missing(raw) else f"value {str(raw)!r}"
        raise job.error(f"{shown} in column {features[col]!r} at data row {row + 1} is not a finite float32 number",
                        "fill in a finite number or remove that row")
    return job.finish("table", _readonly(matrix), labels,
                      f"{len(labels)} rows, {len(features)} feature columns: {_names(features)}; "
                      f"label column {spec.label_column!r}", columns=tuple(features))


def _numeric(job: _Job, series: Any, name: str) -> np.ndarray:
    """One feature column as float64; a value that is not a number -> DataError naming the column and row."""
    pd = _pandas()
    if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_numeric_dtype(series.dtype):
        return np.asarray(series.to_numpy(dtype=np.float64, na_value=np.nan))
    values = np.asarray(pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan))
    for row in np.flatnonzero(np.isnan(values)):
        raw = series.iloc[row]
        if _missing(raw):
            continue  # reported by the finiteness check
        try:
            float(str(raw).strip())  # "nan" spelled out: reported by the finiteness check
        except ValueError:
            raise job.error(f"non-numeric value {raw!r} in feature column {name!r} at data row {row + 1}",
                            "feature columns must hold numbers; fix the value, or leave the column out of columns "
                            "(a text column belongs in text_column)") from None
    return values


# --------------------------------------------------------------------------------------------
# text and sequences
# --------------------------------------------------------------------------------------------


def _read_jsonl(job: _Job) -> Records:
    field, label_field = job.spec.text_column or "text", job.spec.label_column
    texts: list[str] = []
    labels: list[str] = []
    for lineno, line in _lines(job, job.path):
        if not line.strip():
            continue
        if job.full(len(texts)):
            break
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise job.error(f"line {lineno} is not JSON ({exc})", "write one JSON object per line") from None
        if not isinstance(obj, dict):
            raise job.error(f"line {lineno} is not a JSON object", f'write one object per line, e.g. {{"{field}": "...", '
                            f'"{label_field}": "..."}}')
        for name, setting in ((field, "text_column"), (label_field, "label_column")):
            if name not in obj:
                raise job.error(f"line {lineno} has no field {name!r} (fields: {_names(list(obj))})",
                                f"add it, or set {setting} to the field that holds it")
        if not isinstance(obj[field], str):
            raise job.error(f"field {field!r} at line {lineno} is {type(obj[field]).__name__}, not a string",
                            "store the text as a JSON string")
        if isinstance(obj[label_field], dict | list | bool):
            raise job.error(f"label {obj[label_field]!r} at line {lineno} is not a string or number",
                            "store each label as a JSON string or integer")
        labels.append(_label(job, obj[label_field], f"in field {label_field!r} at line {lineno}", job.path))
        texts.append(obj[field])
    return job.finish("text", texts, labels, f"{len(texts)} records, text field {field!r}, label field {label_field!r}")


def _read_sequences(job: _Job) -> Records:
    seqs: list[str] = []
    labels: list[str] = []
    for lineno, line in _lines(job, job.path):
        if not line.strip():
            continue
        if job.full(len(seqs)):
            break
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) != 2:
            raise job.error(f"line {lineno} is not SEQUENCE<TAB>LABEL ({len(fields)} tab-separated fields)",
                            "write one sequence and its label per line, separated by a single tab")
        seq = _dna(job, fields[0], lineno)
        if not seq:
            raise job.error(f"empty sequence at line {lineno}", "remove that line or fill in its sequence")
        labels.append(_label(job, fields[1], f"at line {lineno}", job.path))
        seqs.append(seq)
    lengths = [len(s) for s in seqs] or [0]
    return job.finish("sequence", seqs, labels, f"{len(seqs)} sequences, length {min(lengths)}..{max(lengths)}")


def _read_fasta(job: _Job) -> Records:
    records: list[tuple[str, int, list[str]]] = []  # (header, its line, sequence lines)
    for lineno, line in _lines(job, job.path):
        text = line.strip()
        if not text:
            continue
        if text.startswith(">"):
            if job.full(len(records)):
                break
            if not text[1:].split():
                raise job.error(f"header at line {lineno} has no id", "write headers as '>id label=VALUE'")
            records.append((text[1:].strip(), lineno, []))
        elif not records:
            raise job.error(f"line {lineno} holds sequence data before the first '>' header",
                            "start every record with a '>id' header line")
        else:
            records[-1][2].append(_dna(job, text, lineno))
    from_file: dict[str, str] = {}
    if job.spec.labels_file:
        ids, values = _label_file(job, "id")
        for record_id, label in zip(ids, values, strict=True):
            if from_file.setdefault(record_id, label) != label:
                raise job.error(f"id {record_id!r} has two labels in the labels file", "keep one row per id",
                                file=job.labels_path())
    seqs: list[str] = []
    labels: list[str] = []
    for header, lineno, parts in records:
        record_id = header.split()[0]
        if not parts:
            raise job.error(f"record {record_id!r} (line {lineno}) has no sequence", "add its sequence lines or remove it")
        seqs.append("".join(parts))
        if job.spec.labels_file:
            if record_id not in from_file:
                raise job.error(f"id {record_id!r} (line {lineno}) is not in the labels file {job.labels_path()}",
                                "add a row with its id and label")
            labels.append(from_file[record_id])
            continue
        tokens = [t for t in header.split()[1:] if t.startswith("label=")]
        if not tokens:
            raise job.error(f"header of record {record_id!r} (line {lineno}) has no label=VALUE token",
                            "add one (e.g. '>seq1 label=promoter') or set labels_file")
        labels.append(_label(job, tokens[0].removeprefix("label="), f"in the header at line {lineno}", job.path))
    source = f"labels from {job.labels_path()}" if job.spec.labels_file else "labels from header label= tokens"
    return job.finish("sequence", seqs, labels, f"{len(seqs)} sequences, {source}")


# --------------------------------------------------------------------------------------------
# precomputed features
# --------------------------------------------------------------------------------------------


def _load_arrays(job: _Job, suffix: str) -> dict[str, np.ndarray]:
    try:
        if suffix == ".safetensors":
            return dict(safetensors.numpy.load_file(str(job.path)))
        if suffix == ".npy":
            return {"tokens": np.load(job.path, allow_pickle=False)}
        with np.load(job.path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, SafetensorError, zipfile.BadZipFile) as exc:
        fix = "check that it is a valid, complete file"
        if suffix == ".npz":
            fix += "; store labels as an integer or string array (np.array(labels, dtype=str)), not an object array"
        raise job.error(f"cannot read this {suffix} file ({exc})", fix) from None


def _read_features(job: _Job) -> Records:
    suffix = job.path.suffix.lower()
    if suffix not in FEATURE_SUFFIXES:
        raise job.error(f"unknown features suffix {suffix!r}", f"use one of: {', '.join(FEATURE_SUFFIXES)}")
    arrays = _load_arrays(job, suffix)
    if "tokens" not in arrays:
        raise job.error(f"has no 'tokens' array (arrays: {_names(sorted(arrays))})", "store the features as 'tokens'")
    tokens = arrays["tokens"]
    if tokens.ndim != 3 or not np.issubdtype(tokens.dtype, np.floating):
        raise job.error(f"'tokens' must be a float array [N, L, d], got {tokens.dtype} {tokens.shape}",
                        "store float32 tokens with 3 axes (records, tokens, dimensions)")
    n, length = tokens.shape[:2]
    mask = arrays.get("mask")
    if mask is None:
        mask = np.ones((n, length), dtype=bool)
    elif mask.shape != (n, length) or not (mask.dtype == np.bool_ or (np.issubdtype(mask.dtype, np.integer)
                                                                       and np.isin(mask, (0, 1)).all())):
        raise job.error(f"'mask' must be bool or 0/1 of shape {(n, length)}, got {mask.dtype} {mask.shape}",
                        "store one True/False per token (True = a real token)")
    if job.spec.labels_file:
        if "labels" in arrays:
            raise job.error("has a 'labels' array and labels_file is set", "keep one source of labels")
        _, labels = _label_file(job, "")
        count = f"labels file {job.labels_path()} has {len(labels)} rows"
    elif "labels" in arrays:
        raw = arrays["labels"]
        if raw.ndim != 1 or raw.dtype.kind not in "iuUS":
            raise job.error(f"'labels' must be a 1-D integer or string array, got {raw.dtype} {raw.shape}",
                            "store one integer or string label per record")
        labels = [_label(job, str(v) if raw.dtype.kind in "iu" else v, f"of record {i} (counted from 0)", job.path)
                  for i, v in enumerate(raw.tolist())]
        count = f"'labels' has {len(labels)} entries"
    else:
        raise job.error("has no 'labels' array", "store the labels as 'labels' [N], or set labels_file"
                        if suffix != ".npy" else "set labels_file to a CSV with the label column, one row per record")
    if len(labels) != n:
        raise job.error(f"{count} but 'tokens' has {n} records", "give exactly one label per record")
    cut = job.spec.limit or None
    tokens, mask, labels = tokens[:cut].astype(np.float32), mask[:cut].astype(bool), labels[:cut]
    finite = np.isfinite(tokens).all(axis=(1, 2))
    if not finite.all():
        raise job.error(f"record {int(np.flatnonzero(~finite)[0])} (counted from 0) holds NaN or inf "
                        f"({int((~finite).sum())} of {len(finite)} records do)", "re-encode those records or remove them")
    if not mask.any(axis=1).all():
        raise job.error(f"record {int(np.flatnonzero(~mask.any(axis=1))[0])} (counted from 0) has no unmasked token",
                        "every record needs at least one True in 'mask'")
    return job.finish("features", _readonly(tokens), labels, f"{len(labels)} records x {length} tokens x "
                      f"{tokens.shape[2]} dimensions", mask=_readonly(mask))


# --------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------


def _read_image_folder(job: _Job) -> Records:
    cut = job.spec.limit or None
    if job.spec.labels_file:
        names, values = _label_file(job, "file")
        entries = [(job.path / name, label) for name, label in zip(names, values, strict=True)][:cut]
        for row, (file, _) in enumerate(entries, start=1):
            if not file.is_file():
                raise job.error(f"data row {row} names {names[row - 1]!r}, which is not a file in {job.path}",
                                "fix the name (relative to path) or remove the row", file=job.labels_path())
        source = f"labels from {job.labels_path()}"
    else:
        classes = sorted((d for d in job.path.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)
        entries = [(file, folder.name) for folder in classes
                   for file in sorted(folder.iterdir(), key=lambda f: f.name)
                   if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES][:cut]
        if not entries:
            raise job.error(f"no images in class subfolders (path/<label>/<image>, suffixes {', '.join(IMAGE_SUFFIXES)})",
                            "put each class's images in a subfolder named after its label, or set labels_file")
        source = "labels from subfolder names"
    images = [_load_image(job, file) for file, _ in entries]
    labels = [label for _, label in entries]
    distinct = sorted(set(labels))
    return job.finish("image", images, labels, f"{len(images)} images, {len(distinct)} labels: {_names(distinct)}; {source}")


def _load_image(job: _Job, file: Path) -> np.ndarray:
    try:
        with Image.open(file) as image:
            return _readonly(np.array(image.convert("RGB"), dtype=np.uint8))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise job.error(f"cannot read this image ({exc})", "replace it with a valid image or remove it", file=file) from None


_READERS = {"table": _read_table, "jsonl": _read_jsonl, "fasta": _read_fasta, "sequences": _read_sequences,
            "features": _read_features}
