"""Fuzz (hypothesis): mutated configuration, threat-model, checkpoint and transcript files give typed errors only
(issue 18). Nothing an operator can put in these files may end in a traceback: the library raises a GeofedError
subclass, the command line exits 2 (or goes on, when the mutation left the file valid), and a checkpoint either
loads exactly as one of the rounds was written or is refused.

Mutations are byte-level (flip, insert, delete, truncate, splice of another seed file) and structural (a key renamed
or added, a value replaced by one of any TOML/JSON type, a table replaced by a scalar), from the shipped files.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from geofed_secure.audit.threat_model import load_threat_model
from geofed_secure.cli import main
from geofed_secure.config import load_config
from geofed_secure.errors import CheckpointError, ConfigError, GeofedError
from geofed_secure.runtime.transcript import Transcript
from geofed_secure.server.checkpoint import CheckpointStore

REPO = Path(__file__).resolve().parent.parent
CONFIGS = [p.read_bytes() for p in sorted((REPO / "examples").glob("*.toml"))]
THREAT_MODELS = [p.read_bytes() for p in sorted((REPO / "threat_models").glob("*.toml"))]
FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Accepted(BaseException):
    """Raised where the command would load data or train: every check passed."""


# -- mutations -------------------------------------------------------------------------------------------------------
def _byte_ops() -> st.SearchStrategy[list[tuple[str, float, bytes]]]:
    op = st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate", "splice"]), st.floats(0, 1),
                   st.binary(min_size=1, max_size=8))
    return st.lists(op, min_size=1, max_size=4)


def apply_bytes(data: bytes, ops: list[tuple[str, float, bytes]], other: bytes = b"") -> bytes:
    out = bytearray(data)
    for kind, where, payload in ops:
        at = int(where * len(out))
        if kind == "flip" and out:
            out[min(at, len(out) - 1)] ^= payload[0] or 1
        elif kind == "insert":
            out[at:at] = payload
        elif kind == "delete":
            del out[at:at + len(payload)]
        elif kind == "truncate":
            del out[at:]
        elif kind == "splice" and other:
            start = int(where * len(other))
            out[at:at] = other[start:start + 40 * len(payload)]
    return bytes(out)


SCALARS = st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
                    st.sampled_from(["", "..", "../../escape", "minilm-l6", "masking", "ckks", "none", "server", "node",
                                     "colluding", "observer", "malicious", "transcript", "final_model", "image", "text"]))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.sampled_from(["a", "id", "role"]), SCALARS,
                                                                             max_size=2))


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value in a parsed TOML document (tables, arrays of tables, leaves)."""
    out = [prefix] if prefix else []
    if isinstance(tree, dict):
        for key, value in tree.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        for i, value in enumerate(tree):
            out += _paths(value, (*prefix, i))
    return out


@st.composite
def structural(draw: st.DrawFn, seeds: list[bytes]) -> dict[str, Any]:
    tree = tomllib.loads(draw(st.sampled_from(seeds)).decode())
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(tree)
        path = draw(st.sampled_from(paths))
        parent: Any = tree
        for key in path[:-1]:
            parent = parent[key]
        kind = draw(st.sampled_from(["value", "rename", "add", "delete"]))
        last = path[-1]
        if kind == "value":
            parent[last] = draw(VALUES)
        elif kind == "rename" and isinstance(parent, dict):
            parent[draw(st.sampled_from([f"{last}s", str(last)[:-1] or "x", f"_{last}", str(last).upper()]))] = parent.pop(last)
        elif kind == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["extra", "seed", "threshold", "nodes", "role", "rank"]))] = draw(VALUES)
        elif kind == "delete" and isinstance(parent, dict):
            del parent[last]
    return tree


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value, ensure_ascii=False)


def to_toml(tree: dict[str, Any]) -> bytes:
    """A minimal TOML writer for the shapes the mutations produce (top keys, tables, arrays of tables)."""
    head, tail = [], []
    for key, value in tree.items():
        name = json.dumps(str(key))
        if isinstance(value, dict):
            tail += [f"[{name}]"] + [f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for table in value:
                tail += [f"[[{name}]]"] + [f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in table.items()]
        else:
            head.append(f"{name} = {_toml_value(value)}")
    return ("\n".join(head + tail) + "\n").encode()


def mutated_file(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    by_bytes = st.builds(apply_bytes, st.sampled_from(seeds), _byte_ops(), st.sampled_from(seeds))
    return st.one_of(by_bytes, structural(seeds).map(to_toml))


# -- configuration and threat models ----------------------------------------------------------------------------------
@pytest.fixture
def sandbox(monkeypatch, tmp_path):
    """The command line's side effects stay in tmp_path; loading data or training means every check passed."""
    def accepted(*args, **kwargs):
        raise Accepted()

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("geofed_secure.demo.load_demo_modalities", accepted)
    monkeypatch.setattr("geofed_secure.audit.suite.run_audit", accepted)
    return tmp_path


def run_cli(argv: list[str]) -> int | None:
    """The exit code, or None when the command got past every check."""
    try:
        code = main(argv)
    except Accepted:
        code = None
    event(f"exit code {code}" if code is not None else "accepted")
    return code


@FUZZ
@given(content=mutated_file(CONFIGS))
def test_mutated_configs_give_config_errors_and_exit_2(content, sandbox):
    with tempfile.TemporaryDirectory(dir=sandbox) as folder:
        path = Path(folder) / "run.toml"
        path.write_bytes(content)
        try:
            load_config(path)
        except ConfigError:
            pass
        code = run_cli(["-qq", "run", "--config", str(path), "--out", str(Path(folder) / "out"),
                        "--cache-dir", str(sandbox / "cache")])
        assert code in (2, None)


@FUZZ
@given(content=mutated_file(THREAT_MODELS))
def test_mutated_threat_models_give_config_errors_and_exit_2(content, sandbox):
    with tempfile.TemporaryDirectory(dir=sandbox) as folder:
        path = Path(folder) / "tm.toml"
        path.write_bytes(content)
        try:
            load_threat_model(path)
        except ConfigError:
            pass
        assert run_cli(["-qq", "audit", "--threat-model", str(path), "--out", str(Path(folder) / "out")]) in (2, None)


# -- checkpoints, transcripts and a run's config.json --------------------------------------------------------------------
def _checkpoint_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@st.composite
def damage(draw: st.DrawFn, files: list[str]) -> list[tuple[str, str, Any]]:
    out = []
    for _ in range(draw(st.integers(1, 3))):
        rel = draw(st.sampled_from(files))
        kind = draw(st.sampled_from(["bytes", "json", "delete", "folder", "empty"]))
        out.append((rel, kind, draw(_byte_ops()) if kind == "bytes" else draw(VALUES) if kind == "json" else None))
    return out


def _apply_damage(root: Path, rel: str, kind: str, arg: Any) -> None:
    path = root / rel
    if not path.is_file():
        return
    if kind == "bytes":
        path.write_bytes(apply_bytes(path.read_bytes(), arg))
    elif kind == "json":  # an edit that keeps the file valid JSON: only the digests can catch it
        try:
            data = json.loads(path.read_bytes())
        except ValueError:
            return
        leaves = _paths(data) if isinstance(data, dict) else []
        if leaves:
            parent = data
            for key in leaves[len(rel) % len(leaves)][:-1]:
                parent = parent[key]
            parent[leaves[len(rel) % len(leaves)][-1]] = arg
            path.write_text(json.dumps(data, indent=1, sort_keys=True))
    elif kind == "delete":
        path.unlink()
    elif kind == "folder":
        path.unlink()
        path.mkdir()
    else:
        path.write_bytes(b"")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


@pytest.fixture(scope="module")
def finished_run(recorded_runs, tmp_path_factory):
    """A finished 2-round tiny run (checkpoints of rounds 1 and 2) and each round's checkpoint as it was written."""
    run = tmp_path_factory.mktemp("fuzz-run") / "run"
    shutil.copytree(recorded_runs["none"], run)
    store = CheckpointStore(run)
    return run, {r: store.load_round(r) for r in store.rounds_on_disk()}


@FUZZ
@given(data=st.data())
def test_a_damaged_checkpoint_loads_exactly_as_written_or_is_refused(finished_run, data):
    run, originals = finished_run
    files = _checkpoint_files(run / "checkpoints")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        shutil.copytree(run / "checkpoints", root / "checkpoints")
        for rel, kind, arg in data.draw(damage(files)):
            _apply_damage(root / "checkpoints", rel, kind, arg)
        try:
            loaded = CheckpointStore(root).load_latest()
        except CheckpointError:
            event("refused")
            return
        event(f"loaded round {loaded.round}")
        original = originals[loaded.round]
        assert _same(loaded.meta, original.meta) and _same(loaded.server, original.server)
        assert _same(loaded.nodes, original.nodes)


@FUZZ
@given(data=st.data())
def test_a_damaged_transcript_loads_a_verified_prefix_or_is_refused(finished_run, data):
    run, _ = finished_run
    reference = Transcript.load(run / "transcript")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "transcript"
        shutil.copytree(run / "transcript", root)
        for rel, kind, arg in data.draw(damage(["index.jsonl", "messages.bin"])):
            _apply_damage(root, rel, kind, arg)
        try:
            loaded = Transcript.load(root)
        except CheckpointError:
            event("refused")
            return
        event("a verified prefix" if len(loaded) < len(reference) else "loaded whole")
        assert [r.sha256 for r in loaded.records] == [r.sha256 for r in reference.records[:len(loaded)]]
        assert all(loaded.blob(r) == reference.blob(reference.records[r.index]) for r in loaded.records)


@FUZZ
@given(data=st.data())
def test_a_damaged_run_config_on_resume_gives_exit_2(finished_run, sandbox, data):
    run, _ = finished_run
    with tempfile.TemporaryDirectory(dir=sandbox) as folder:
        root = Path(folder) / "run"
        (root / "checkpoints").mkdir(parents=True)
        shutil.copy(run / "checkpoints" / "LATEST", root / "checkpoints" / "LATEST")
        original = (run / "config.json").read_bytes()
        if data.draw(st.booleans()):
            content = apply_bytes(original, data.draw(_byte_ops()))
        else:
            tree = json.loads(original)
            leaf = data.draw(st.sampled_from(_paths(tree)))
            parent = tree
            for key in leaf[:-1]:
                parent = parent[key]
            parent[leaf[-1]] = data.draw(VALUES)
            content = json.dumps(tree).encode()
        (root / "config.json").write_bytes(content)
        assert run_cli(["-qq", "run", "--resume", str(root)]) in (2, None)


def test_the_fuzzers_only_accept_typed_errors():
    """The properties above hold only if a GeofedError is all they tolerate: the exceptions they catch are typed."""
    assert issubclass(ConfigError, GeofedError) and issubclass(CheckpointError, GeofedError)
