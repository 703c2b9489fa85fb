"""Drivers: the in-process simulator (transcript, fault injection) and Flower (:mod:`geofed_secure.runtime.flower`).

Public API, what the CLI, the audit and scripts use (everything else in the sub-modules is the drivers' own):

- :func:`build_federation` -> :class:`FederationData`: per-modality data (:class:`~geofed_secure.data.ModalityData`,
  e.g. :func:`geofed_secure.demo.load_demo_modalities`) partitioned among the configured nodes, with the
  federation's anchor commitment (``anchor_digest``) every node is provisioned with;
- :func:`backbone_factory`: the pretrained shared transformer, loaded once; each call returns a fresh copy (one per
  :class:`~geofed_secure.node.Node`);
- :class:`Simulator` and its :class:`RunResult`: a whole simulated run (``geofed run``);
- :class:`Transcript`, :class:`TranscriptRecord`, :func:`decode_any`, :func:`decode_record` and ``SERVER``: the recorded transcript of a run
  (every message that crossed a trust boundary), which the audit selects views from.

The names are imported on first use (PEP 562), so a process that needs only one driver module (a Flower ClientApp
answering a secure-aggregation step, in a fresh process per message) does not import the node's training stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geofed_secure.runtime.federation import FederationData, build_federation
    from geofed_secure.runtime.simulator import RunResult, Simulator, backbone_factory
    from geofed_secure.runtime.transcript import SERVER, Transcript, TranscriptRecord, decode_any, decode_record

_HOMES = {"FederationData": "federation", "build_federation": "federation", "RunResult": "simulator",
          "Simulator": "simulator", "backbone_factory": "simulator", "SERVER": "transcript", "Transcript": "transcript",
          "TranscriptRecord": "transcript", "decode_any": "transcript", "decode_record": "transcript"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)

__all__ = [
    "SERVER", "FederationData", "RunResult", "Simulator", "Transcript", "TranscriptRecord", "backbone_factory",
    "build_federation", "decode_any", "decode_record",
]
