"""Server round logic: broadcast, collect uploads, aggregate. Transport-agnostic.

The server needs only SUMS of the node uploads: sum_k p_k B_k, sum_k p_k m_k (averaged magnitudes),
sum_k G_k and sum_k p_k. :func:`aggregate` works on those sums, so the same code runs unchanged when
secure aggregation reveals only the sums (later protocol layer).

Aggregation follows DESIGN.md section 2: precision-weighted mean of B (and m), THEN one merge. The Gram
consensus is the SUM of the contributors' uploads, each a node's centred anchor Gram at unit norm (issue 16:
normalised on the node, so every modality counts and the server still needs only the sum); CKA does not see the
scale, and a node subtracts its own upload from the sum to train against the others (leave-one-out).
Updates are validated before use: wrong federation
or round (replay), unknown or duplicate sender, anchor digest, payload names and shapes.

A node missing from a round is recorded with a typed :class:`~geofed_secure.errors.FailureCode` only (a
:class:`FailureNotice` from the node, a dropout the driver observed, or the server's own rejection), never with
the text of the node's error, which may depend on its private data and stays in the node's own log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from geofed_secure.data.anchors import verify_anchor_digest
from geofed_secure.errors import FailureCode, GeofedError, MessageError
from geofed_secure.wire.round import (
    GRAM_FIELD,
    WEIGHT_FIELD,
    WEIGHTED_PREFIX,
    FailureNotice,
    NodeUpdate,
    RoundBroadcast,
)


class RoundFailed(GeofedError):
    """Too few valid uploads to aggregate this round; the global state is unchanged."""


def _codes(rejected: Mapping[str, FailureCode]) -> dict[str, str]:
    return {k: v.value for k, v in sorted(rejected.items())}


@dataclass(frozen=True, slots=True)
class RoundResult:
    round: int
    contributors: tuple[str, ...]
    rejected: Mapping[str, FailureCode]  # node id -> typed reason (no free text: see FailureCode)
    weights: Mapping[str, float]  # normalised precision weights (visible here only in plaintext mode)


def aggregate(sums: Mapping[str, np.ndarray], n_contributors: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """From summed payload fields to (new global state, consensus: the summed Gram upper triangle, not divided).

    ``n_contributors`` is checked only (the consensus is a sum: a node needs it to take out its own upload).

    >>> s = {"weighted/x.lora_B": np.array([3.0], np.float32), "precision_weight": np.array([2.0], np.float32),
    ...      "gram_upper": np.array([1.0], np.float32)}
    >>> state, gram = aggregate(s, 2)
    >>> float(state["x.lora_B"][0]), float(gram[0])
    (1.5, 1.0)
    """
    if n_contributors < 1:
        raise RoundFailed("no contributors to aggregate")
    total_weight = float(np.float64(sums[WEIGHT_FIELD][0]))
    if not total_weight > 0:
        raise RoundFailed("sum of precision weights is not positive")
    state = {key[len(WEIGHTED_PREFIX):]: (np.asarray(value, np.float64) / total_weight).astype(np.float32)
             for key, value in sums.items() if key.startswith(WEIGHTED_PREFIX)}
    consensus = sums[GRAM_FIELD].astype(np.float32)
    return state, consensus


@dataclass
class Server:
    federation_id: str
    anchor_digest: str
    node_ids: tuple[str, ...]
    global_state: dict[str, np.ndarray]
    min_contributors: int = 1
    round: int = 0  # last completed round
    consensus: np.ndarray | None = None
    _pending: dict[str, NodeUpdate] = field(default_factory=dict)
    _rejected: dict[str, FailureCode] = field(default_factory=dict)
    _open: bool = False

    def begin_round(self) -> dict[str, RoundBroadcast]:
        """Open round ``self.round + 1`` and return the broadcast for every node."""
        if self._open:
            raise MessageError(f"round {self.round + 1} is already open")
        self._open = True
        self._pending.clear()
        self._rejected.clear()
        msg = RoundBroadcast(federation_id=self.federation_id, round=self.round + 1, anchor_digest=self.anchor_digest,
                             global_state=self.global_state, consensus_gram=self.consensus)
        return {node_id: msg for node_id in self.node_ids}

    def reject(self, node_id: str, code: FailureCode | str) -> None:
        """Record that ``node_id`` delivered nothing usable this round (typically ``dropped``: nothing arrived).

        ``code`` must be a :class:`FailureCode` (or its value); free text is refused with :class:`ValueError`, so
        no driver can pass a node's error message to the server by mistake.
        """
        if node_id not in self.node_ids:
            raise MessageError(f"reject: unknown node {node_id!r}")
        self._rejected[node_id] = FailureCode(code)

    def receive_failure(self, notice: FailureNotice) -> None:
        """Validate a node's :class:`FailureNotice` and record its code; a bad one raises :class:`MessageError`."""
        self._check_sender(notice.node_id, notice.federation_id, notice.round, notice.anchor_digest, what="failure notice")
        self._rejected[notice.node_id] = notice.code

    def receive(self, update: NodeUpdate) -> None:
        """Validate and hold one upload; a bad one raises :class:`MessageError` and is recorded as ``rejected_by_server``.

        The exception's text is the server's own observation of an upload it holds in clear, so it may keep it.
        """
        try:
            self._validate(update)
        except GeofedError:
            if update.node_id in self.node_ids and update.node_id not in self._pending:
                self._rejected[update.node_id] = FailureCode.REJECTED_BY_SERVER
            raise
        self._pending[update.node_id] = update

    def _check_sender(self, node_id: str, federation_id: str, round_: int, anchor_digest: str, *, what: str) -> None:
        if not self._open:
            raise MessageError(f"{what} from {node_id} while no round is open")
        if federation_id != self.federation_id:
            raise MessageError(f"{what} for federation {federation_id!r}")
        if round_ != self.round + 1:
            raise MessageError(f"{what} from {node_id} for round {round_}, the open round is {self.round + 1} "
                               "(replayed or stale)")
        if node_id not in self.node_ids:
            raise MessageError(f"{what} from unknown node {node_id!r}")
        if node_id in self._pending:
            raise MessageError(f"second {what} from {node_id} in round {round_}")
        verify_anchor_digest(self.anchor_digest, anchor_digest, where=f"server, {what} from {node_id}")

    def _validate(self, update: NodeUpdate) -> None:
        self._check_sender(update.node_id, update.federation_id, update.round, update.anchor_digest, what="upload")
        expected = {WEIGHTED_PREFIX + k: v.shape for k, v in self.global_state.items()}
        got = {k: v.shape for k, v in update.payload.items() if k not in (GRAM_FIELD, WEIGHT_FIELD)}
        if got != expected:
            missing = sorted(set(expected) - set(got))[:2]
            extra = sorted(set(got) - set(expected))[:2]
            wrong = [k for k in set(got) & set(expected) if got[k] != expected[k]][:2]
            raise MessageError(f"upload from {update.node_id} does not match the global state layout "
                               f"(missing {missing}, unexpected {extra}, wrong shape {wrong})")
        if self.consensus is not None and update.payload[GRAM_FIELD].shape != self.consensus.shape:
            raise MessageError(f"upload from {update.node_id}: Gram has {update.payload[GRAM_FIELD].shape[0]} entries, expected {self.consensus.shape[0]}")

    def finish_round(self) -> RoundResult:
        """Aggregate the valid uploads. Fewer than ``min_contributors`` -> :class:`RoundFailed`, state unchanged."""
        if not self._open:
            raise MessageError("no round is open")
        self._open = False
        contributors = tuple(sorted(self._pending))
        round_ = self.round + 1
        if len(contributors) < max(1, self.min_contributors):
            raise RoundFailed(f"round {round_}: {len(contributors)} valid upload(s), need {max(1, self.min_contributors)}; "
                              f"rejected: {_codes(self._rejected)}")
        grams = {self._pending[c].payload[GRAM_FIELD].shape for c in contributors}
        if len(grams) != 1:
            raise RoundFailed(f"round {round_}: uploads disagree on the anchor count B")
        sums = {key: np.sum([self._pending[c].payload[key].astype(np.float64) for c in contributors], axis=0)
                for key in self._pending[contributors[0]].payload}
        self.global_state, self.consensus = aggregate(sums, len(contributors))
        weights = {c: float(self._pending[c].payload[WEIGHT_FIELD][0]) for c in contributors}
        total = sum(weights.values())
        self.round = round_
        self._pending.clear()
        return RoundResult(round=round_, contributors=contributors, rejected=dict(self._rejected),
                           weights={c: w / total for c, w in weights.items()})

    def finish_round_from_sums(self, sums: Mapping[str, np.ndarray], contributors: tuple[str, ...],
                               left_out: Mapping[str, FailureCode]) -> RoundResult:
        """Aggregate from the SUMS that secure aggregation revealed; the server never saw an individual upload.

        ``left_out``: nodes the secure-aggregation round left out (typed, e.g. ``dropped`` at some stage), added to
        the failures already recorded. Individual precision weights are unknown to the server here, so
        ``RoundResult.weights`` is empty.
        """
        if not self._open:
            raise MessageError("no round is open")
        self._open = False
        round_ = self.round + 1
        rejected = {**self._rejected, **{k: FailureCode(v) for k, v in left_out.items()}}
        if len(contributors) < max(1, self.min_contributors):
            raise RoundFailed(f"round {round_}: {len(contributors)} contributor(s), need {max(1, self.min_contributors)}; "
                              f"left out: {_codes(rejected)}")
        self.global_state, self.consensus = aggregate(sums, len(contributors))
        self.round = round_
        return RoundResult(round=round_, contributors=tuple(contributors), rejected=rejected, weights={})

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {f"global/{k}": v for k, v in self.global_state.items()}
        if self.consensus is not None:
            state["consensus_gram"] = self.consensus
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray], *, round_: int) -> None:
        self.global_state = {k[len("global/"):]: np.array(v) for k, v in state.items() if k.startswith("global/")}
        self.consensus = np.array(state["consensus_gram"]) if "consensus_gram" in state else None
        self.round = round_
