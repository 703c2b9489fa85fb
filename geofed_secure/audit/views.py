"""Views: exactly the messages (and released files) one adversary sees. Attacks consume views only.

A view is selected from a recorded transcript (``<run>/transcript/``, every message that crossed a trust boundary,
with sender and receiver) by the threat model's parties: a message is in the view when one of the adversary's
parties sent or received it. The released final model (``<run>/final/global_adapters.safetensors``) is in the view
when the threat model observes ``final_model``. Nothing else of a run (checkpoints, node-local state, summary
metrics) is ever handed to an attack.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
import safetensors.numpy

from geofed_secure.audit.threat_model import ThreatModel
from geofed_secure.errors import CheckpointError
from geofed_secure.runtime import Transcript, TranscriptRecord, decode_record

FINAL_MODEL = Path("final") / "global_adapters.safetensors"


@dataclass(frozen=True, slots=True)
class View:
    threat_model: ThreatModel
    records: tuple[TranscriptRecord, ...]
    final_state: Mapping[str, np.ndarray] | None = None
    _transcript: Transcript | None = field(default=None, repr=False, compare=False)

    def messages(self, *, type_: str | None = None, round_: int | None = None) -> Iterator[tuple[TranscriptRecord, object]]:
        """Decoded messages of the view (decoding re-validates each), optionally of one type and/or round."""
        if self._transcript is None:
            return
        for rec in self.records:
            if (type_ is None or rec.type == type_) and (round_ is None or rec.round == round_):
                yield rec, decode_record(self._transcript.blob(rec), rec)

    @property
    def types(self) -> frozenset[str]:
        return frozenset(r.type for r in self.records)

    @property
    def rounds(self) -> tuple[int, ...]:
        return tuple(sorted({r.round for r in self.records}))


def select_view(threat_model: ThreatModel, transcript: Transcript | None,
                final_state: Mapping[str, np.ndarray] | None = None) -> View:
    """The part of ``transcript`` (and the final model) that ``threat_model``'s adversary observes."""
    parties = threat_model.parties
    records = tuple(r for r in (transcript.records if transcript is not None else ())
                    if r.sender in parties or r.receiver in parties)
    final = None
    if "final_model" in threat_model.observes and final_state is not None:
        final = MappingProxyType({k: np.array(v, copy=True) for k, v in final_state.items()})
    return View(threat_model, records, final, transcript if records else None)


def load_run_view(threat_model: ThreatModel, run_dir: str | Path) -> View:
    """Select the view of ``threat_model`` from a run folder written by ``geofed run``."""
    run_dir = Path(run_dir)
    transcript = Transcript.load(run_dir / "transcript") if threat_model.parties else None
    final_state = None
    if "final_model" in threat_model.observes:
        path = run_dir / FINAL_MODEL
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: the run did not finish (or was local-only), so no final model was released")
        final_state = safetensors.numpy.load_file(path)
    return select_view(threat_model, transcript, final_state)
