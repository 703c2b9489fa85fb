"""Tests of geofed_secure.data.readers: every source kind reads back what was written; digests; error messages."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import safetensors.numpy
from PIL import Image

from geofed_secure.config import SourceSpec
from geofed_secure.data.readers import Records, read_records
from geofed_secure.errors import DataError


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _read(kind: str, path: Path | str, **fields) -> Records:
    return read_records(SourceSpec(kind=kind, path=str(path), **fields), what="nodes[2].data")


def _png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _rgb(seed: int, h: int = 3, w: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


TABLE = "a,b,y\n1,2.5,1\n-3,4e2,0\n0.25,7,1\n"
VALUES = np.array([[1, 2.5], [-3, 400], [0.25, 7]], dtype=np.float32)


# ============================================================================================
# every kind reads back what was written
# ============================================================================================


def test_csv_table_reads_values_labels_columns_and_limit(tmp_path):
    path = _write(tmp_path / "x.csv", TABLE)
    records = _read("table", path, label_column="y")
    assert records.kind == "table" and len(records) == 3
    assert records.samples.dtype == np.float32 and np.array_equal(records.samples, VALUES)
    assert records.labels == ("1", "0", "1") and records.columns == ("a", "b") and records.mask is None
    assert records.description == f"table {path} (3 rows, 2 feature columns: a, b; label column 'y')"
    assert not records.samples.flags.writeable
    first = _read("table", path, label_column="y", limit=2)
    assert np.array_equal(first.samples, VALUES[:2]) and first.labels == ("1", "0") and "limit 2" in first.description
    only_b = _read("table", path, label_column="y", columns=("b",))
    assert only_b.columns == ("b",) and np.array_equal(only_b.samples, VALUES[:, 1:])


def test_tsv_and_parquet_tables_read_the_same_records(tmp_path):
    csv = _read("table", _write(tmp_path / "x.csv", TABLE), label_column="y")
    tsv = _read("table", _write(tmp_path / "x.tsv", TABLE.replace(",", "\t")), label_column="y")
    frame = pd.DataFrame({"a": [1.0, -3.0, 0.25], "b": [2.5, 400.0, 7.0], "y": [1, 0, 1]})
    frame.to_parquet(tmp_path / "x.parquet")
    frame.to_parquet(tmp_path / "x.pq")
    for other in (tsv, _read("table", tmp_path / "x.parquet", label_column="y"), _read("table", tmp_path / "x.pq", label_column="y")):
        assert np.array_equal(other.samples, csv.samples) and other.labels == csv.labels == ("1", "0", "1")
        assert other.digest == csv.digest  # equal content, equal digest, whatever the file format
    assert _read("table", tmp_path / "x.parquet", label_column="y", limit=1).labels == ("1",)


def test_table_with_a_text_column_reads_text_records(tmp_path):
    path = _write(tmp_path / "notes.csv", 'note,label,score\n"fever, cough",flu,3\nrash,measles,1\n')
    records = _read("table", path, text_column="note")
    assert records.kind == "text" and records.samples == ["fever, cough", "rash"] and records.labels == ("flu", "measles")


def test_relative_paths_resolve_against_base_dir(tmp_path):
    _write(tmp_path / "cfg" / "data" / "x.csv", TABLE)
    records = read_records(SourceSpec(kind="table", path="data/x.csv", label_column="y"), base_dir=tmp_path / "cfg")
    assert len(records) == 3 and str((tmp_path / "cfg" / "data" / "x.csv").resolve()) in records.description


def test_jsonl_reads_text_and_labels_in_order(tmp_path):
    lines = [{"body": "first", "tag": 3}, {"body": "second", "tag": "b"}, {"body": "third", "tag": "c"}]
    path = _write(tmp_path / "t.jsonl", "\n".join(json.dumps(obj) for obj in lines[:2]) + "\n\n" + json.dumps(lines[2]) + "\n")
    records = _read("jsonl", path, text_column="body", label_column="tag")
    assert records.kind == "text" and records.samples == ["first", "second", "third"] and records.labels == ("3", "b", "c")
    assert _read("jsonl", path, text_column="body", label_column="tag", limit=2).samples == ["first", "second"]
    default = _read("jsonl", _write(tmp_path / "d.jsonl", '{"text": "hi", "label": "x"}\n'))
    assert default.samples == ["hi"] and default.labels == ("x",)


def test_sequences_read_upper_cased_skipping_blank_lines(tmp_path):
    path = _write(tmp_path / "s.tsv", "acgt\tpromoter\n\nNNAC\tother\r\nGGG\tpromoter\n")
    records = _read("sequences", path)
    assert records.kind == "sequence" and records.samples == ["ACGT", "NNAC", "GGG"]
    assert records.labels == ("promoter", "other", "promoter")
    assert _read("sequences", path, limit=2).samples == ["ACGT", "NNAC"]


def test_fasta_concatenates_lines_and_reads_header_labels(tmp_path):
    path = _write(tmp_path / "s.fa", ">r1 label=a extra\nacg\nTT\n\n>r2 label=b\nNNN\n>r3 x label=a\nC\n")
    records = _read("fasta", path)
    assert records.samples == ["ACGTT", "NNN", "C"] and records.labels == ("a", "b", "a")
    assert _read("fasta", path, limit=2).samples == ["ACGTT", "NNN"]
    # equal content, equal digest: the same records as a "sequences" file
    assert records.digest == _read("sequences", _write(tmp_path / "s.tsv", "ACGTT\ta\nNNN\tb\nC\ta\n")).digest


def test_fasta_labels_file(tmp_path):
    path = _write(tmp_path / "s.fa", ">r1 some description\nACG\n>r2\nTTA\n")
    _write(tmp_path / "labels.csv", "id,kind\nr2,y\nr1,x\n")
    records = _read("fasta", path, labels_file=str(tmp_path / "labels.csv"), label_column="kind")
    assert records.samples == ["ACG", "TTA"] and records.labels == ("x", "y")


def test_features_safetensors_npz_and_npy(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(4, 3, 2)).astype(np.float32)
    mask = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
    safetensors.numpy.save_file({"tokens": tokens, "mask": mask, "labels": np.array([0, 1, 2, 1])}, tmp_path / "f.safetensors")
    st = _read("features", tmp_path / "f.safetensors")
    assert st.kind == "features" and st.samples.dtype == np.float32 and np.array_equal(st.samples, tokens)
    assert np.array_equal(st.mask, mask) and st.labels == ("0", "1", "2", "1") and "4 records x 3 tokens x 2" in st.description
    np.savez(tmp_path / "f.npz", tokens=tokens, mask=mask.astype(np.uint8), labels=np.array(["a", "b", "c", "b"]))
    npz = _read("features", tmp_path / "f.npz", limit=3)
    assert np.array_equal(npz.samples, tokens[:3]) and np.array_equal(npz.mask, mask[:3]) and npz.labels == ("a", "b", "c")
    np.save(tmp_path / "f.npy", tokens)
    _write(tmp_path / "y.csv", "label\n0\n1\n2\n1\n")
    npy = _read("features", tmp_path / "f.npy", labels_file=str(tmp_path / "y.csv"))
    assert np.array_equal(npy.samples, tokens) and npy.mask.all() and npy.mask.shape == (4, 3) and npy.labels == st.labels
    assert npy.digest != st.digest  # same tokens and labels, different mask


def test_image_folder_class_subfolders_sorted_and_converted_to_rgb(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "dog" / "b.png", _rgb(1))
    _png(root / "dog" / "a.png", _rgb(2, 5, 2))
    _png(root / "cat" / "z.png", _rgb(3))
    Image.fromarray(np.full((2, 2), 7, dtype=np.uint8), mode="L").save(root / "cat" / "gray.bmp")
    _write(root / "cat" / "notes.txt", "not an image")
    records = _read("image-folder", root)
    assert records.kind == "image" and records.labels == ("cat", "cat", "dog", "dog")
    assert [a.shape for a in records.samples] == [(2, 2, 3), (3, 4, 3), (5, 2, 3), (3, 4, 3)]
    assert all(a.dtype == np.uint8 for a in records.samples) and (records.samples[0] == 7).all()
    assert np.array_equal(records.samples[1], _rgb(3)) and np.array_equal(records.samples[2], _rgb(2, 5, 2))
    assert _read("image-folder", root, limit=3).labels == ("cat", "cat", "dog")


def test_image_folder_with_labels_file(tmp_path):
    _png(tmp_path / "imgs" / "p1.png", _rgb(1))
    _png(tmp_path / "imgs" / "sub" / "p2.png", _rgb(2))
    _write(tmp_path / "labels.csv", "file,finding\nsub/p2.png,tumour\np1.png,normal\n")
    records = _read("image-folder", tmp_path / "imgs", labels_file=str(tmp_path / "labels.csv"), label_column="finding")
    assert records.labels == ("tumour", "normal") and np.array_equal(records.samples[0], _rgb(2))
    assert _read("image-folder", tmp_path / "imgs", labels_file=str(tmp_path / "labels.csv"), label_column="finding",
                 limit=1).labels == ("tumour",)


# ============================================================================================
# digests
# ============================================================================================


@pytest.mark.parametrize("kind, name, base, changed", [
    ("table", "x.csv", TABLE, ["a,b,y\n1,2.5,1\n-3,4e2,0\n0.5,7,1\n",  # one value
                               "a,b,y\n1,2.5,1\n-3,4e2,2\n0.25,7,1\n",  # one label
                               "a,b,y\n-3,4e2,0\n1,2.5,1\n0.25,7,1\n"]),  # order
    ("sequences", "s.tsv", "ACGT\ta\nGG\tb\n", ["ACGA\ta\nGG\tb\n", "ACGT\ta\nGG\ta\n", "GG\tb\nACGT\ta\n"]),
    ("jsonl", "t.jsonl", '{"text": "x", "label": 1}\n{"text": "y", "label": 2}\n',
     ['{"text": "x!", "label": 1}\n{"text": "y", "label": 2}\n', '{"text": "x", "label": 1}\n{"text": "y", "label": 1}\n',
      '{"text": "y", "label": 2}\n{"text": "x", "label": 1}\n']),
])
def test_digest_is_stable_and_changes_with_any_sample_label_or_order(tmp_path, kind, name, base, changed):
    fields = {"label_column": "y"} if kind == "table" else {}
    path = _write(tmp_path / name, base)
    digest = _read(kind, path, **fields).digest
    assert len(digest) == 64 and _read(kind, path, **fields).digest == digest
    variants = [_read(kind, _write(tmp_path / f"v{i}" / name, text), **fields).digest for i, text in enumerate(changed)]
    assert len({digest, *variants}) == 4


def test_image_digest_changes_with_one_pixel_or_label(tmp_path):
    pixels = _rgb(5)
    _png(tmp_path / "a" / "c0" / "x.png", pixels)
    pixels[0, 0, 0] ^= 1
    _png(tmp_path / "b" / "c0" / "x.png", pixels)
    _png(tmp_path / "c" / "c1" / "x.png", pixels)
    digests = {_read("image-folder", tmp_path / name).digest for name in "abc"}
    assert len(digests) == 3 and _read("image-folder", tmp_path / "a").digest == _read("image-folder", tmp_path / "a").digest


# ============================================================================================
# errors: each names what, the file, the problem and the fix
# ============================================================================================

Case = Callable[[Path], SourceSpec]


def _missing_path(tmp: Path) -> SourceSpec:
    return SourceSpec(kind="table", path=str(tmp / "nope.csv"))


def _file_not_folder(tmp: Path) -> SourceSpec:
    return SourceSpec(kind="image-folder", path=str(_write(tmp / "x.csv", TABLE)))


def _folder_not_file(tmp: Path) -> SourceSpec:
    return SourceSpec(kind="table", path=str(tmp))


def _unknown_table_suffix(tmp: Path) -> SourceSpec:
    return SourceSpec(kind="table", path=str(_write(tmp / "x.xlsx", TABLE)))


def _unknown_features_suffix(tmp: Path) -> SourceSpec:
    return SourceSpec(kind="features", path=str(_write(tmp / "x.pt", "")))


def _corrupt_png(tmp: Path) -> SourceSpec:
    _png(tmp / "imgs" / "a" / "ok.png", _rgb(0))
    (tmp / "imgs" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return SourceSpec(kind="image-folder", path=str(tmp / "imgs"))


def _corrupt_parquet(tmp: Path) -> SourceSpec:
    return SourceSpec(kind="table", path=str(_write(tmp / "x.parquet", "PAR1 garbage")))


def _corrupt_safetensors(tmp: Path) -> SourceSpec:
    return SourceSpec(kind="features", path=str(_write(tmp / "x.safetensors", "garbage")))


def _no_label_column(tmp: Path) -> SourceSpec:
    return SourceSpec(kind="table", path=str(_write(tmp / "x.csv", TABLE)), label_column="target")


def _no_feature_column(tmp: Path) -> SourceSpec:
    return SourceSpec(kind="table", path=str(_write(tmp / "x.csv", TABLE)), label_column="y", columns=("a", "c"))


def _non_numeric(tmp: Path) -> SourceSpec:
    return SourceSpec(kind="table", path=str(_write(tmp / "x.csv", "a,b,y\n1,2,0\n3,high,1\n")), label_column="y")


def _empty_label(tmp: Path) -> SourceSpec:
    return SourceSpec(kind="table", path=str(_write(tmp / "x.csv", "a,y\n1,0\n2,1\n3, \n")), label_column="y")


def _nan_in_table(tmp: Path) -> SourceSpec:
    return SourceSpec(kind="table", path=str(_write(tmp / "x.csv", "a,b,y\n1,2,0\n3,inf,1\n")), label_column="y")


def _empty_cell_in_table(tmp: Path) -> SourceSpec:
    return SourceSpec(kind="table", path=str(_write(tmp / "x.csv", "a,b,y\n1,,0\n")), label_column="y")


def _null_in_parquet(tmp: Path) -> SourceSpec:
    pd.DataFrame({"a": [1.0, None], "y": ["x", "z"]}).to_parquet(tmp / "x.parquet")
    return SourceSpec(kind="table", path=str(tmp / "x.parquet"), label_column="y")


def _zero_rows(tmp: Path) -> SourceSpec:
    return SourceSpec(kind="table", path=str(_write(tmp / "x.csv", "a,b,y\n")), label_column="y")


def _features(tmp: Path, **arrays: np.ndarray) -> SourceSpec:
    np.savez(tmp / "f.npz", **arrays)
    return SourceSpec(kind="features", path=str(tmp / "f.npz"))


def _tokens(n: int = 3) -> np.ndarray:
    return np.zeros((n, 2, 4), dtype=np.float32)


CASES: dict[str, tuple[Case, str]] = {
    "path does not exist": (_missing_path, "nope.csv: does not exist; check the path"),
    "not a folder": (_file_not_folder, "x.csv: is not a folder"),
    "not a file": (_folder_not_file, "is not a file"),
    "unknown table suffix": (_unknown_table_suffix, "unknown table suffix '.xlsx'; use one of: .csv, .tsv, .parquet, .pq"),
    "unknown features suffix": (_unknown_features_suffix, "use one of: .safetensors, .npz, .npy"),
    "corrupt image": (_corrupt_png, "broken.png: cannot read this image"),
    "corrupt parquet": (_corrupt_parquet, "cannot read this file as Parquet"),
    "corrupt safetensors": (_corrupt_safetensors, "cannot read this .safetensors file"),
    "missing label column": (_no_label_column, "no label column 'target' (columns: a, b, y); set label_column"),
    "missing feature column": (_no_feature_column, "no feature column 'c' (columns: a, b, y)"),
    "non-numeric feature": (_non_numeric, "non-numeric value 'high' in feature column 'b' at data row 2"),
    "empty label": (_empty_label, "empty label in column 'y' at data row 3"),
    "empty label in sequences": (lambda t: SourceSpec(kind="sequences", path=str(_write(t / "s.tsv", "AC\ta\nGG\t \n"))),
                                 "empty label at line 2"),
    "null label in jsonl": (lambda t: SourceSpec(kind="jsonl", path=str(_write(t / "t.jsonl", '{"text": "a", "label": null}\n'))),
                            "empty label in field 'label' at line 1"),
    "inf in table": (_nan_in_table, "value 'inf' in column 'b' at data row 2 is not a finite float32 number"),
    "empty feature cell": (_empty_cell_in_table, "non-numeric value '' in feature column 'b' at data row 1"),
    "null in parquet": (_null_in_parquet, "a missing or NaN value in column 'a' at data row 2 is not a finite float32"),
    "zero records": (_zero_rows, "holds no records"),
    "tokens of wrong rank": (lambda t: _features(t, tokens=np.zeros((3, 4), np.float32), labels=np.arange(3)),
                             "'tokens' must be a float array [N, L, d], got float32 (3, 4)"),
    "tokens of wrong dtype": (lambda t: _features(t, tokens=np.zeros((3, 2, 4), np.int64), labels=np.arange(3)),
                              "got int64 (3, 2, 4)"),
    "labels of wrong length": (lambda t: _features(t, tokens=_tokens(), labels=np.arange(2)),
                               "'labels' has 2 entries but 'tokens' has 3 records"),
    "float labels": (lambda t: _features(t, tokens=_tokens(), labels=np.zeros(3)), "1-D integer or string array"),
    "mask of wrong shape": (lambda t: _features(t, tokens=_tokens(), mask=np.ones((3, 3), bool), labels=np.arange(3)),
                            "'mask' must be bool or 0/1 of shape (3, 2)"),
    "mask not 0/1": (lambda t: _features(t, tokens=_tokens(), mask=np.full((3, 2), 2), labels=np.arange(3)), "bool or 0/1"),
    "no labels": (lambda t: _features(t, tokens=_tokens()), "has no 'labels' array"),
    "nan in features": (lambda t: _features(t, tokens=np.where(np.arange(3)[:, None, None] == 1, np.nan, _tokens()),
                                            labels=np.arange(3)), "record 1 (counted from 0) holds NaN or inf"),
    "record fully masked": (lambda t: _features(t, tokens=_tokens(), mask=np.array([[1, 0], [0, 0], [1, 1]], bool),
                                                labels=np.arange(3)), "record 1 (counted from 0) has no unmasked token"),
    "npy without labels file": (lambda t: (np.save(t / "f.npy", _tokens()), SourceSpec(kind="features", path=str(t / "f.npy")))[1],
                                "set labels_file"),
    "jsonl line not JSON": (lambda t: SourceSpec(kind="jsonl", path=str(_write(t / "t.jsonl", '{"text": "a", "label": 1}\n\n{oops\n'))),
                            "line 3 is not JSON"),
    "jsonl line lacks the field": (lambda t: SourceSpec(kind="jsonl", path=str(_write(t / "t.jsonl", '{"body": "a", "label": 1}\n'))),
                                   "line 1 has no field 'text' (fields: body, label); add it, or set text_column"),
    "sequence with invalid character": (lambda t: SourceSpec(kind="sequences", path=str(_write(t / "s.tsv", "ACGT\ta\nACXT\tb\n"))),
                                        "invalid character 'X' at line 2, position 3"),
    "sequence line without tab": (lambda t: SourceSpec(kind="sequences", path=str(_write(t / "s.tsv", "ACGT a\n"))),
                                  "line 1 is not SEQUENCE<TAB>LABEL"),
    "fasta without label": (lambda t: SourceSpec(kind="fasta", path=str(_write(t / "s.fa", ">r1 label=a\nAC\n>r2\nGG\n"))),
                            "header of record 'r2' (line 3) has no label=VALUE token"),
    "fasta sequence before header": (lambda t: SourceSpec(kind="fasta", path=str(_write(t / "s.fa", "ACGT\n>r1 label=a\nAC\n"))),
                                     "line 1 holds sequence data before the first '>' header"),
    "fasta invalid character": (lambda t: SourceSpec(kind="fasta", path=str(_write(t / "s.fa", ">r1 label=a\nAC\nAU\n"))),
                                "invalid character 'U' at line 3, position 2"),
    "fasta id not in labels file": (lambda t: SourceSpec(kind="fasta", path=str(_write(t / "s.fa", ">r1\nAC\n>r2\nGG\n")),
                                                         labels_file=str(_write(t / "l.csv", "id,label\nr1,a\n"))),
                                    "id 'r2' (line 3) is not in the labels file"),
    "labels file without the label column": (
        lambda t: SourceSpec(kind="fasta", path=str(_write(t / "s.fa", ">r1\nAC\n")),
                             labels_file=str(_write(t / "l.csv", "id,class\nr1,a\n"))),
        "labels file has no column 'label' (columns: id, class)"),
    "image folder without images": (lambda t: (_write(t / "imgs" / "a" / "x.txt", ""), SourceSpec(kind="image-folder", path=str(t / "imgs")))[1],
                                    "no images in class subfolders"),
    "label file names a missing image": (
        lambda t: (_png(t / "imgs" / "p1.png", _rgb(0)), SourceSpec(kind="image-folder", path=str(t / "imgs"),
                                                                    labels_file=str(_write(t / "l.csv", "file,label\np1.png,a\np2.png,b\n"))))[1],
        "data row 2 names 'p2.png', which is not a file in"),
    "unknown kind": (lambda t: SourceSpec(kind="excel", path=str(t)), "unknown source kind 'excel'; use one of: image-folder, table"),
    "negative limit": (lambda t: SourceSpec(kind="table", path=str(t), limit=-1), "limit must be a whole number >= 0"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_problem_raises_a_data_error_that_says_what_and_how_to_fix(tmp_path, case):
    make, phrase = CASES[case]
    with pytest.raises(DataError) as info:
        read_records(make(tmp_path), base_dir=tmp_path, what="nodes[2].anchors")
    message = str(info.value)
    assert message.startswith("nodes[2].anchors: ") and phrase in message
    assert ";" in message  # problem; fix


def test_errors_name_the_offending_file(tmp_path):
    spec = _corrupt_png(tmp_path)
    with pytest.raises(DataError, match="broken.png"):
        read_records(spec)
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match=r"other/l\.csv: data row 2"):
        read_records(CASES["label file names a missing image"][0](tmp_path / "other"))


def test_limit_stops_before_a_bad_record(tmp_path):
    path = _write(tmp_path / "s.tsv", "ACGT\ta\nBAD!\tb\n")
    assert _read("sequences", path, limit=1).samples == ["ACGT"]
    with pytest.raises(DataError, match="line 2"):
        _read("sequences", path)
