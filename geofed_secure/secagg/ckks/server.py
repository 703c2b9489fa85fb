"""The server's side of ckks-v1 (SPEC section 5): :class:`CkksServer`."""

from __future__ import annotations

import functools
from collections.abc import Iterable

import tenseal as ts

from geofed_secure.errors import (
    ConfigError,
    LocalProtocolError,
    MessageError,
    RemoteProtocolError,
)
from geofed_secure.secagg.ckks.keys import (
    Keyring,
    load_chunks,
)
from geofed_secure.secagg.ckks.messages import (
    CkksAggregate,
    CkksEncryptedInput,
    CkksRoundStart,
    check_id,
    check_ids,
)
from geofed_secure.secagg.ckks.spec import (
    MIN_COHORT,
    checked_floor,
    checked_setting,
)
from geofed_secure.secagg.ckks.tables import (
    SERVER_TRANSITIONS,
    ServerEvent,
    ServerState,
    refusal,
)
from geofed_secure.secagg.common import SERVER
from geofed_secure.secagg.machine import StateMachine


class CkksServer(StateMachine[ServerState, ServerEvent]):
    """The server's side of ckks-v1: it opens a round, adds the uploads it accepts, and sends the encrypted sum.

    ``public_context`` must not hold the secret key. An upload that is malformed, out of order, from outside
    the cohort, a duplicate, or under other keys raises :class:`~geofed_secure.errors.RemoteProtocolError` (a
    :class:`MessageError`) and is dropped, the state kept (the availability rule: that node simply does not
    contribute). :meth:`finish` with fewer than ``max(3, floor)`` contributors raises
    :class:`~geofed_secure.errors.ProtocolAborted`, the driver's out-of-order call :class:`LocalProtocolError`;
    after either the session stays aborted. The server draws nothing random (the encryption noise is the nodes').
    """

    TRANSITIONS = SERVER_TRANSITIONS
    ABORTED = ServerState.ABORTED
    REFUSAL = functools.partial(refusal, "server")
    party = SERVER

    def __init__(self, *, federation_id: str, public_context: bytes, cohort: Iterable[str],
                 floor: int = MIN_COHORT) -> None:
        self.federation_id = checked_setting(check_id, federation_id, "federation_id")
        self.floor = max(MIN_COHORT, checked_floor(floor))
        try:
            self.cohort = check_ids(sorted(cohort), what="cohort")
        except (MessageError, TypeError) as exc:
            raise ConfigError("ckks.cohort", str(exc)) from exc
        if len(self.cohort) < self.floor:
            raise ConfigError("ckks.cohort", f"{len(self.cohort)} nodes are below the floor of {self.floor}")
        self._keyring = Keyring.load(public_context, what="server: public context")
        if self._keyring.has_secret_key:
            raise LocalProtocolError("server: the context holds the secret key; the server must get the public context")
        super().__init__(ServerState.IDLE)
        self.round = 0
        self.length = 0
        self.anchor_digest = ""
        self._sum: list[ts.CKKSVector] = []
        self._contributors: list[str] = []

    @property
    def context_digest(self) -> str:
        return self._keyring.digest

    @property
    def contributors(self) -> tuple[str, ...]:
        return tuple(sorted(self._contributors))

    def _forget(self) -> None:
        self._sum = []

    def start_round(self, round_: int, *, anchor_digest: str, length: int) -> dict[str, CkksRoundStart]:
        """Open ``round_`` for vectors of ``length`` values; returns the round start for each cohort node."""
        target = self._target(ServerEvent.START_ROUND)
        if not isinstance(round_, int) or isinstance(round_, bool) or round_ <= self.round:
            raise self._misuse(f"round {round_!r} does not follow round {self.round}")
        try:
            start = CkksRoundStart(federation_id=self.federation_id, round=round_, anchor_digest=anchor_digest,
                                   context_digest=self.context_digest, cohort=self.cohort, length=length)
        except MessageError as exc:
            raise self._misuse(f"cannot open round {round_}: {exc}") from exc
        self.state, self.round, self.length, self.anchor_digest = target, round_, length, anchor_digest
        self._sum, self._contributors = [], []
        return {node_id: start for node_id in self.cohort}

    def receive(self, message: CkksEncryptedInput) -> None:
        """Check one upload and add it to the running encrypted sum, or raise
        :class:`~geofed_secure.errors.RemoteProtocolError` and drop it (state kept: the availability rule)."""
        self._alive()
        if not isinstance(message, CkksEncryptedInput):
            raise RemoteProtocolError(f"server: expected a CkksEncryptedInput, got {type(message).__name__}")
        event = ServerEvent.ENCRYPTED_INPUT
        target = self._target(event)
        who = f"upload from {message.node_id!r}"
        if message.federation_id != self.federation_id:
            raise self._refuse(event, f"{who} is for federation {message.federation_id!r}")
        if message.round != self.round:
            raise self._refuse(event, f"{who} is for round {message.round} during round {self.round} (replayed or stale)")
        if message.node_id not in self.cohort:
            raise self._refuse(event, f"{who}: not in the cohort")
        if message.node_id in self._contributors:
            raise self._refuse(event, f"{who}: duplicate (the first upload stands)")
        if message.context_digest != self.context_digest:
            raise self._refuse(event, f"{who} is encrypted under other keys (context digest differs)")
        if message.length != self.length:
            raise self._refuse(event, f"{who} has length {message.length}; the round's length is {self.length}")
        try:
            vectors = load_chunks(self._keyring, message.chunks, message.length, what=f"server: {who}")
        except MessageError as exc:
            raise RemoteProtocolError(str(exc)) from exc
        try:  # ``a + b`` makes a new ciphertext; ``a += b`` would change the held sum (and its sources) in place
            added = [a + b for a, b in zip(self._sum, vectors, strict=True)] if self._sum else vectors
        except Exception as exc:
            raise self._refuse(event, f"{who}: ciphertexts cannot be added to the sum: {exc}") from exc
        self._sum = added
        self._contributors.append(message.node_id)
        self.state = target

    def finish(self) -> CkksAggregate:
        """Close the round: the encrypted sum over the accepted uploads, or ``ProtocolAborted`` below the floor."""
        target = self._target(ServerEvent.FINISH)
        if len(self._contributors) < self.floor:
            raise self._abort(f"{len(self._contributors)} contributors are below the floor of {self.floor}; "
                              "nothing is released", "aggregate")
        aggregate = CkksAggregate(federation_id=self.federation_id, round=self.round, contributors=self.contributors,
                                  length=self.length, chunks=tuple(v.serialize() for v in self._sum))
        self.state, self._sum = target, []
        return aggregate
