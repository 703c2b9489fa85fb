"""The two halves of a secure-aggregation round, as every driver moves them.

A secure round is a short conversation between the server's :class:`SecureAggregator` and one
:class:`NodeSession` per node. The driver (the in-process simulator, or Flower) only carries bytes:

1. ``SecureAggregator.open`` gives each node of the cohort its first protocol message. It travels WITH the round's
   broadcast, so the node trains, turns its update into its clipped secure input (on the node), and answers the
   first protocol message in the same round trip (``NodeSession.open``): a steady-state masking round and every
   CKKS round then cost two round trips in all (protocols/secagg-v1/SPEC.md section 5).
2. ``SecureAggregator.receive`` takes each node's answer; ``SecureAggregator.next_stage`` closes the stage and
   gives the next messages, which the driver delivers to ``NodeSession.step``; until ``next_stage`` returns none.
3. ``SecureAggregator.result`` gives what the server learns: the sums and the contributors (a
   :class:`~geofed_secure.runtime.secure.layout.SecureRound`).

A node that refuses a server message raises :class:`~geofed_secure.errors.ProtocolAborted` from its session; the
driver tells the server (:class:`Refusal`), which abandons the round: one refusal by an honest node ends the run with
the last checkpoint kept, as before. Bytes a node cannot decode raise :class:`~geofed_secure.errors.MessageError` and
change nothing in its session: it answers nothing and counts as dropped. The server side never raises for a
node's message: what it cannot use is ignored and that node counts as dropped at that stage (the availability rule).

A node session must survive between messages. In process it simply stays in memory; on a Flower site, where every
message runs in a fresh process, the site pickles it into its state directory (:mod:`geofed_secure.runtime.flower.site`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from geofed_secure.runtime.secure.layout import SecureInputLayout, SecureRound
from geofed_secure.runtime.transcript import Transcript


@dataclass(frozen=True, slots=True)
class SecureReply:
    """A node's answer to one protocol message: the bytes for the server and the protocol stage they belong to
    (the stage names of ``geofed_secure.secagg.common.STAGES``; fault injection and the server's bookkeeping use it)."""

    stage: str
    blob: bytes


@dataclass(frozen=True, slots=True)
class Refusal:
    """An honest node refused a server message (it raised ProtocolAborted): the round cannot complete."""

    node_id: str
    stage: str
    reason: str


class NodeSession(Protocol):
    """ON THE NODE: its side of the secure-aggregation protocol, across rounds (keys of an epoch, the CKKS secret)."""

    protocol: str

    def open(self, blob: bytes, vector: np.ndarray, layout: SecureInputLayout) -> SecureReply:
        """Answer the round's first protocol message (sent with the broadcast) with this round's secure input
        (``vector``, laid out by ``layout``, which the node derived from the broadcast itself)."""
        ...

    def step(self, blob: bytes) -> SecureReply:
        """Answer a later protocol message of the round."""
        ...

    def abandon(self) -> None:
        """This node's round ended without it (it dropped): forget the round, keep what later rounds may use."""
        ...


class SecureAggregator(Protocol):
    """THE SERVER's side of the secure-aggregation protocol; it records every protocol message in the transcript."""

    protocol: str

    def open(self, round_: int, layout: SecureInputLayout, cohort: tuple[str, ...], transcript: Transcript) -> dict[str, bytes]:
        """Start ``round_`` for ``cohort``: each node's first protocol message (travels with the broadcast)."""
        ...

    def receive(self, round_: int, node_id: str, blob: bytes, transcript: Transcript) -> None:
        """A node's answer; what the server cannot use is ignored (that node counts as dropped at this stage)."""
        ...

    def next_stage(self, round_: int, transcript: Transcript) -> dict[str, bytes]:
        """Close the current stage: the next messages per node, or {} when the round is complete. Raises
        ProtocolAborted when the stage cannot complete (too few nodes left)."""
        ...

    def result(self, round_: int, layout: SecureInputLayout, ready: tuple[str, ...]) -> SecureRound:
        """The sums and contributors of the completed round; ``ready``: nodes that answered the first message."""
        ...

    def abandon(self) -> None:
        """The round did not complete (a refusal, an abort): leave the server able to start the next round."""
        ...
