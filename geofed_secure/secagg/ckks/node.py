"""The node's side of ckks-v1 (SPEC section 5): :class:`CkksNode`."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from geofed_secure.errors import (
    AnchorDigestMismatch,
    DataError,
    LocalProtocolError,
    MessageError,
    RemoteProtocolError,
)
from geofed_secure.secagg.ckks.keys import (
    Keyring,
    decrypt_vectors,
    encrypt_chunks,
    load_chunks,
)
from geofed_secure.secagg.ckks.messages import (
    CkksAggregate,
    CkksEncryptedInput,
    CkksRoundStart,
    check_digest,
    check_id,
)
from geofed_secure.secagg.ckks.spec import (
    DEFAULT_CLIP,
    MAX_WEIGHT,
    MIN_COHORT,
    checked_clip,
    checked_floor,
    checked_setting,
)
from geofed_secure.secagg.ckks.tables import (
    NODE_TRANSITIONS,
    NodeEvent,
    NodeState,
    refusal,
)
from geofed_secure.secagg.machine import StateMachine


@dataclass(frozen=True, slots=True)
class _PendingRound:
    round: int
    cohort: tuple[str, ...]
    length: int


class CkksNode(StateMachine[NodeState, NodeEvent]):
    """One node's side of ckks-v1. ``begin_round`` answers a round start with the encrypted upload;
    ``receive_aggregate`` checks and decrypts the sum.

    ``secret_context``: the serialised context with the secret key (provisioning); ``anchor_digest``: the
    anchor set this node was provisioned with; ``clip`` bounds every weighted coordinate; ``floor``: the
    smallest cohort and contributor set this node accepts (never below 3). After any protocol error
    (:class:`~geofed_secure.errors.ProtocolAborted`, :class:`~geofed_secure.errors.RemoteProtocolError`,
    :class:`LocalProtocolError`) the session is aborted for good.
    """

    TRANSITIONS = NODE_TRANSITIONS
    ABORTED = NodeState.ABORTED
    REFUSAL = functools.partial(refusal, "node")

    def __init__(self, *, node_id: str, federation_id: str, secret_context: bytes, anchor_digest: str,
                 clip: float = DEFAULT_CLIP, floor: int = MIN_COHORT) -> None:
        self.node_id = checked_setting(check_id, node_id, "node_id")
        self.federation_id = checked_setting(check_id, federation_id, "federation_id")
        self.anchor_digest = checked_setting(check_digest, anchor_digest, "anchor_digest")
        self.clip = checked_clip(clip)
        self.floor = max(MIN_COHORT, checked_floor(floor))
        self._keyring = Keyring.load(secret_context, what=f"{node_id}: secret context")
        if not self._keyring.has_secret_key:
            raise LocalProtocolError(f"{node_id}: the context holds no secret key; a node needs the secret context")
        super().__init__(NodeState.READY)
        self.party = self.node_id
        self.last_round = 0  # the last round this node uploaded in; older or equal rounds are replays
        self.clipped = 0  # coordinates clipped in the last upload
        self._pending: _PendingRound | None = None

    @property
    def context_digest(self) -> str:
        return self._keyring.digest

    def _forget(self) -> None:
        self._pending = None

    def begin_round(self, start: CkksRoundStart, vector: np.ndarray, weight: float | None = None) -> CkksEncryptedInput:
        """Check the round start, clip and encrypt concat(weight * vector, [weight]) (weight 1 when None).

        Refuses (:class:`~geofed_secure.errors.ProtocolAborted`, session aborted) another federation, a replayed round, a changed
        anchor digest, other keys, a cohort without this node or below the floor. Bad ``vector``/``weight``
        raise :class:`DataError` and leave the session as it was; anything but a round start is our own misuse
        (:class:`LocalProtocolError`, session aborted).
        """
        self._alive()
        if not isinstance(start, CkksRoundStart):
            raise self._misuse(f"begin_round takes a CkksRoundStart, got {type(start).__name__}")
        stage = "round_start"
        target = self._target(NodeEvent.ROUND_START, stage=stage)
        if start.federation_id != self.federation_id:
            raise self._abort(f"round start for federation {start.federation_id!r}", stage)
        if start.round <= self.last_round:
            raise self._abort(f"round {start.round} is not after round {self.last_round} (replayed or stale)", stage)
        if start.anchor_digest != self.anchor_digest:
            mismatch = AnchorDigestMismatch(self.anchor_digest, start.anchor_digest, where=f"{self.node_id} round start")
            raise self._abort(str(mismatch), stage) from mismatch
        if start.context_digest != self.context_digest:
            raise self._abort("the round names other CKKS keys (context digest differs from provisioning)", stage)
        if self.node_id not in start.cohort:
            raise self._abort("this node is not in the round's cohort", stage)
        if len(start.cohort) < self.floor:
            raise self._abort(f"cohort of {len(start.cohort)} is below the floor of {self.floor}", stage)
        values, clipped = self._pack(vector, weight, start.length)
        chunks = encrypt_chunks(self._keyring, values)
        self.state, self.last_round, self.clipped = target, start.round, clipped
        self._pending = _PendingRound(start.round, start.cohort, start.length)
        return CkksEncryptedInput(federation_id=self.federation_id, round=start.round, node_id=self.node_id,
                                  context_digest=self.context_digest, length=start.length, chunks=chunks)

    def _pack(self, vector: np.ndarray, weight: float | None, length: int) -> tuple[np.ndarray, int]:
        x = np.asarray(vector)
        if x.dtype.kind not in "fiu" or x.ndim != 1 or x.shape[0] != length:
            raise DataError(f"{self.node_id}: input must be a real 1-D vector of {length} values, "
                            f"got {x.dtype} {x.shape}")
        x = x.astype(np.float64)
        if not np.isfinite(x).all():
            raise DataError(f"{self.node_id}: input has NaN/inf values; a node refuses to encrypt them")
        w = 1.0 if weight is None else weight
        if (not isinstance(w, int | float | np.floating | np.integer) or isinstance(w, bool)
                or not (math.isfinite(w) and 0 < w <= MAX_WEIGHT)):
            raise DataError(f"{self.node_id}: weight must be a finite number in (0, {MAX_WEIGHT:g}], got {weight!r}")
        weighted = float(w) * x
        bounded = np.clip(weighted, -self.clip, self.clip)
        return np.concatenate([bounded, [float(w)]]), int(np.count_nonzero(bounded != weighted))

    def receive_aggregate(self, message: CkksAggregate) -> np.ndarray:
        """Check and decrypt the sum: returns float64 concat(sum_k w_k x_k, [sum_k w_k]) (``length + 1`` values).

        Refuses (:class:`~geofed_secure.errors.ProtocolAborted`) an aggregate for another federation or round, contributors outside
        the cohort, below the floor or without this node, or a different length; ciphertexts that do not load
        raise :class:`~geofed_secure.errors.RemoteProtocolError` (a :class:`MessageError`). Either way the session
        is aborted.
        """
        self._alive()
        if not isinstance(message, CkksAggregate):
            raise self._misuse(f"receive_aggregate takes a CkksAggregate, got {type(message).__name__}")
        stage = "aggregate"
        target = self._target(NodeEvent.AGGREGATE, stage=stage)
        pending = self._pending
        assert pending is not None  # "uploaded" always has a pending round
        if message.federation_id != self.federation_id:
            raise self._abort(f"aggregate for federation {message.federation_id!r}", stage)
        if message.round != pending.round:
            raise self._abort(f"aggregate for round {message.round} while round {pending.round} is open", stage)
        outsiders = sorted(set(message.contributors) - set(pending.cohort))
        if outsiders:
            raise self._abort(f"contributors {outsiders[:3]} are not in the round's cohort", stage)
        if len(message.contributors) < self.floor:
            raise self._abort(f"{len(message.contributors)} contributors are below the floor of {self.floor}", stage)
        if self.node_id not in message.contributors:
            raise self._abort("this node uploaded but is not listed as a contributor", stage)
        if message.length != pending.length:
            raise self._abort(f"aggregate of length {message.length}; the round's length is {pending.length}", stage)
        try:
            vectors = load_chunks(self._keyring, message.chunks, message.length, what=f"{self.node_id}: aggregate")
            plain = decrypt_vectors(self._keyring, vectors, what=f"{self.node_id}: aggregate")
        except MessageError as exc:  # the server's invalid message: ours to refuse, for good
            self._enter_aborted()
            raise RemoteProtocolError(str(exc)) from exc
        if not np.isfinite(plain).all():
            raise self._abort("the aggregate does not decrypt to finite values", stage)
        self.state, self._pending = target, None
        return plain
