"""Drivers: the in-process simulator (transcript, fault injection); Flower later.

Public API, what the CLI, the audit and scripts use (everything else in the sub-modules is the drivers' own):

- :func:`build_federation` -> :class:`FederationData`: per-modality data (:class:`~geofed_secure.data.ModalityData`,
  e.g. :func:`geofed_secure.demo.load_demo_modalities`) partitioned among the configured nodes, with the
  federation's anchor commitment (``anchor_digest``) every node is provisioned with;
- :func:`backbone_factory`: the pretrained shared transformer, loaded once; each call returns a fresh copy (one per
  :class:`~geofed_secure.node.Node`);
- :class:`Simulator` and its :class:`RunResult`: a whole simulated run (``geofed run``);
- :class:`Transcript`, :class:`TranscriptRecord`, :func:`decode_any` and ``SERVER``: the recorded transcript of a run
  (every message that crossed a trust boundary), which the audit selects views from.
"""

from geofed_secure.runtime.federation import FederationData, build_federation
from geofed_secure.runtime.simulator import RunResult, Simulator, backbone_factory
from geofed_secure.runtime.transcript import SERVER, Transcript, TranscriptRecord, decode_any

__all__ = [
    "SERVER", "FederationData", "RunResult", "Simulator", "Transcript", "TranscriptRecord", "backbone_factory",
    "build_federation", "decode_any",
]
