"""Writes or checks the published files of both protocols: ``protocols/*/vectors.json`` and SPEC.md's state tables.

``python -m geofed_secure.secagg.vectors`` rewrites the files (the vectors come from
:mod:`geofed_secure.secagg.masking.vectors` and :mod:`geofed_secure.secagg.ckks.vectors`, the tables from each
protocol's ``tables`` module); ``--check`` exits 1 if they differ from what the code generates (CI runs the
equivalent test).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from geofed_secure.errors import GeofedError
from geofed_secure.secagg.masking import vectors as masking_vectors
from geofed_secure.secagg.masking.tables import transition_tables_markdown

PROTOCOLS_DIR = Path(__file__).resolve().parents[2] / "protocols"


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True) + "\n"


BEGIN, END = "<!-- BEGIN GENERATED TABLES -->\n", "<!-- END GENERATED TABLES -->"


def spec_with_tables(spec: str, tables: str | None = None) -> str:
    """SPEC.md text with ``tables`` (default: secagg-v1's) between the BEGIN/END markers."""
    if BEGIN not in spec or END not in spec:
        raise GeofedError("SPEC.md lost its generated-table markers; restore the BEGIN/END lines around the state tables")
    head, _, rest = spec.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return head + BEGIN + (transition_tables_markdown() if tables is None else tables) + END + tail


def expected_files() -> dict[Path, str]:
    """Every published file of both protocols, as the code generates it: vectors and SPEC.md's state tables."""
    from geofed_secure.secagg.ckks import tables as ckks_tables
    from geofed_secure.secagg.ckks import vectors as ckks_vectors

    masking_spec = PROTOCOLS_DIR / "secagg-v1" / "SPEC.md"
    ckks_spec = PROTOCOLS_DIR / "ckks-v1" / "SPEC.md"
    return {PROTOCOLS_DIR / "secagg-v1" / "vectors.json": _dump(masking_vectors.build_vectors()),
            masking_spec: spec_with_tables(masking_spec.read_text()),
            PROTOCOLS_DIR / "ckks-v1" / "vectors.json": _dump(ckks_vectors.build_vectors()),
            ckks_spec: spec_with_tables(ckks_spec.read_text(), ckks_tables.transition_table_markdown())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or --check) the protocol test vectors.")
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed vectors differ")
    args = parser.parse_args(argv)
    stale = []
    for path, text in expected_files().items():
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("stale vectors (run python -m geofed_secure.secagg.vectors):", *stale, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except GeofedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
