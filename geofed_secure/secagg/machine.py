"""The one base class of the four secure-aggregation state machines, and the refusal rule they share.

:class:`~.masking.node.MaskingNode`, :class:`~.masking.server.MaskingServer`, :class:`~.ckks.node.CkksNode` and
:class:`~.ckks.server.CkksServer` each hold a ``state`` (a :class:`~enum.StrEnum`) and move only through
:meth:`StateMachine._target` / :meth:`StateMachine._move`, which look the move up in the protocol's transition
table (``tables.py``: ``{State: {Event: State}}``, plain data, from which SPEC.md's tables are generated) and refuse
anything else (h11's ``_state.py`` habit).

Guards are table rows, not event strings. Where one (state, event) can lead to two states, the table holds one row
per guard value, keyed ``(event, guard)``: ``(KeyRoster, complete graph) -> shared`` and ``(KeyRoster, SecAgg+
graph) -> revealed``. The guard is a small pure function in ``tables.py`` next to the table (``graph_guard``,
``unmask_guard``, ...), listed in SPEC.md with the condition it tests; the machine computes it and passes it to the
gate. We chose rows over guard-named events ("KeyRoster(SecAgg+ graph)") because then every event is one public call
or one message type: a test can send EVERY event in EVERY state through the public API, and a guard value without a
row (an unchecked UnmaskRequest after the consistency check) is refused exactly like an event without one.

Errors say who broke the rules (h11's ``LocalProtocolError`` / ``RemoteProtocolError``), and after any protocol
error the machine sits in its error state ``aborted`` for good: every later call raises
:class:`~geofed_secure.errors.LocalProtocolError` ("start a new session"). :func:`refusal` is the rule for a
refused event, the same for both protocols; its one deliberate exception keeps a server available: a node's
out-of-order or invalid message raises :class:`~geofed_secure.errors.RemoteProtocolError` and the server keeps its
state (that node counts as dropped), so one node can never end a round for everyone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, ClassVar, Generic, TypeVar

from geofed_secure.errors import (
    GeofedError,
    LocalProtocolError,
    ProtocolAborted,
    RemoteProtocolError,
)

S = TypeVar("S", bound=StrEnum)
E = TypeVar("E", bound=StrEnum)

# A transition table: state -> (event, or (event, guard)) -> next state.
Table = Mapping[Any, Mapping[Any, Any]]
RefusalRule = Callable[[Any, Any], tuple[type[GeofedError], Any]]


class Role(StrEnum):
    """Which side a machine plays: a node's peer is the server, the server's peers are the nodes."""

    NODE = "node"
    SERVER = "server"


def refusal(role: Role | str, state: S, event: E, *, local: bool, aborted: S) -> tuple[type[GeofedError], S]:
    """What a refused ``event`` raises in ``state``, and the state the machine is left in.

    - On an aborted session every call is our own misuse: :class:`LocalProtocolError`, still ``aborted``.
    - Our own call out of order (``local``): :class:`LocalProtocolError`, then ``aborted`` (h11's rule).
    - A node refusing its server's message: :class:`ProtocolAborted`, then ``aborted``. The server is a node's only
      peer, and an out-of-order message is how a dishonest server asks for what it must not get: a security stop.
    - A server refusing a node's message: :class:`RemoteProtocolError`, state KEPT (the availability rule: one
      node's bad message never ends the round for everyone; that node counts as dropped at this stage).
    """
    if state == aborted:
        return LocalProtocolError, aborted
    if local:
        return LocalProtocolError, aborted
    if Role(role) is Role.NODE:
        return ProtocolAborted, aborted
    return RemoteProtocolError, state


def rows(table: Table, state: Any) -> list[tuple[Any, Any, Any]]:
    """The rows of ``state`` as (event, guard or None, next state), in table order."""
    return [(key[0], key[1], target) if isinstance(key, tuple) else (key, None, target)
            for key, target in table[state].items()]


class StateMachine(Generic[S, E]):
    """Holds ``state`` and moves it only along :attr:`TRANSITIONS`; illegal moves raise per :attr:`REFUSAL`.

    A subclass sets the class attributes :attr:`TRANSITIONS` (its protocol's table), :attr:`REFUSAL` (``(state,
    event) -> (error class, state after)``, its protocol's refusal rule), :attr:`ABORTED` (the error state) and
    names itself in ``party`` (a node id or ``"server"``: it goes into every error message). :meth:`_forget` drops
    what an aborted session must not keep.
    """

    TRANSITIONS: ClassVar[Table]
    REFUSAL: ClassVar[RefusalRule]
    ABORTED: ClassVar[Any]
    party: str

    def __init__(self, initial: S) -> None:
        self.state: S = initial

    @property
    def aborted(self) -> bool:
        """Whether the session is in its permanent error state (start a new one)."""
        return self.state == self.ABORTED

    # -- the gate -----------------------------------------------------------------------------------
    def _alive(self) -> None:
        """Refuse any call on an aborted session."""
        if self.aborted:
            raise LocalProtocolError(f"{self.party}: the session is aborted; start a new session")

    def _legal(self, event: E) -> bool:
        """Whether ``event`` has a row in the current state (for any guard value)."""
        return any(e == event for e, _, _ in rows(self.TRANSITIONS, self.state))

    def _check(self, event: E, *, stage: str = "") -> None:
        """Refuse ``event`` now if no row of the current state takes it (its guard is computed later)."""
        self._alive()
        if not self._legal(event):
            raise self._refuse(event, f"{event} is not legal in state '{self.state}'", stage=stage)

    def _target(self, event: E, guard: StrEnum | None = None, *, stage: str = "") -> S:
        """The state ``event`` (under ``guard``) leads to; refused per :attr:`REFUSAL` if the table has no row."""
        self._alive()
        row = self.TRANSITIONS[self.state]
        target = row.get(event)
        if target is None and guard is not None:
            target = row.get((event, guard))
        if target is None:
            shown = f"{event}({guard})" if guard is not None else str(event)
            raise self._refuse(event, f"{shown} is not legal in state '{self.state}'", stage=stage)
        return target

    def _move(self, event: E, guard: StrEnum | None = None, *, stage: str = "") -> S:
        """Take ``event`` (under ``guard``) now: the new state, or the refusal."""
        self.state = self._target(event, guard, stage=stage)
        return self.state

    # -- errors -------------------------------------------------------------------------------------
    def _refuse(self, event: E, reason: str, *, stage: str = "") -> GeofedError:
        """The error a refused ``event`` raises (``raise self._refuse(...)``), after moving to the state it leaves."""
        error, after = type(self).REFUSAL(self.state, event)
        if after == self.ABORTED:
            self._enter_aborted()
        if issubclass(error, ProtocolAborted):
            return error(reason, party=self.party, stage=stage)
        return error(f"{self.party}: {reason}")

    def _abort(self, reason: str, stage: str = "") -> ProtocolAborted:
        """A security stop: enter the error state and return the :class:`ProtocolAborted` to raise."""
        self._enter_aborted()
        return ProtocolAborted(reason, party=self.party, stage=stage)

    def _misuse(self, reason: str) -> LocalProtocolError:
        """Our own misuse (a call with the wrong kind of argument): enter the error state, return the error."""
        self._enter_aborted()
        return LocalProtocolError(f"{self.party}: {reason}")

    def _enter_aborted(self) -> None:
        self.state = self.ABORTED
        self._forget()

    def _forget(self) -> None:
        """Drop what an aborted session must not keep (an input, a sum, epoch keys); subclasses extend this."""
