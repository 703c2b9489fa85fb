"""A node's own log: what a node knows about its rounds and must not send to the server.

In a deployment every site keeps this on its own disk. The in-process simulator writes it to
``<run>/nodes/<node_id>/log.jsonl``, one JSON object per line, and that folder stands for the node's disk: the
server's outputs (``summary.json``, the console, the transcript) never read it. What goes here: the node's
training statistics (task and geometric loss, its precision weight), the number of coordinates it clipped before
secure aggregation, and the full text of its own errors (the server gets only a
:class:`~geofed_secure.errors.FailureCode`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from geofed_secure.errors import CheckpointError


class NodeLog:
    """Append-only JSON-lines log of one node. Every record has ``round`` and ``event``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @classmethod
    def start(cls, path: str | os.PathLike) -> NodeLog:
        """A new, empty log at ``path`` (a stale one from a run that crashed before its first checkpoint is cleared)."""
        log = cls(path)
        log.path.parent.mkdir(parents=True, exist_ok=True)
        log.path.write_text("")
        return log

    @classmethod
    def resume(cls, path: str | os.PathLike, *, last_round: int) -> NodeLog:
        """The log at ``path`` without the records of rounds after ``last_round`` (they are run again)."""
        log = cls(path)
        log.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in log.records() if r["round"] <= last_round] if log.path.is_file() else []
        tmp = log.path.with_name(log.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, log.path)
        return log

    def write(self, round_: int, event: str, **fields: Any) -> None:
        record = {"round": round_, "event": event} | {k: _plain(v) for k, v in fields.items()}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """Every record; a torn last line (crash while appending) is ignored, any other damage is a CheckpointError."""
        try:
            lines = self.path.read_bytes().decode().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{self.path} is unreadable ({type(exc).__name__})") from None
        out = []
        for number, line in enumerate(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines) - 1:
                    break
                raise CheckpointError(f"{self.path} line {number + 1} is corrupt") from None
            if not (isinstance(record, dict) and isinstance(record.get("round"), int) and isinstance(record.get("event"), str)):
                raise CheckpointError(f"{self.path} line {number + 1} is not a node log record (round, event)")
            out.append(record)
        return out


def _plain(value: Any) -> Any:
    """JSON-safe: non-finite floats become None (a NaN loss is logged, not written as invalid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
