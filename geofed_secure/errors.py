"""One exception hierarchy for geofed-secure.

Every error the library raises on purpose derives from :class:`GeofedError`, so a caller
(an operator's script, a privacy-attack test suite) can catch the whole family at once.
Each message says what was wrong and how to fix it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class GeofedError(Exception):
    """Base class of every error raised on purpose by geofed-secure.

    Every subclass pickles with its message and attributes (``__reduce__``), whatever its constructor takes, so an
    error raised in a worker process (the audit's parallel training) reaches the caller with its own type.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_error, (type(self), self.args, dict(self.__dict__))


def _rebuild_error(cls: type[GeofedError], args: tuple[Any, ...], state: dict[str, Any]) -> GeofedError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class ConfigError(GeofedError, ValueError):
    """A configuration value is missing, of the wrong type or out of range.

    ``field`` names the offending key (dotted path, e.g. ``nodes[2].modality``).
    """

    def __init__(self, field: str, problem: str, *, source: str | None = None) -> None:
        self.field = field
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"config field '{field}'{where}: {problem}")


class DataError(GeofedError, ValueError):
    """Input data is unusable: wrong shape, NaN/inf, unknown modality, corrupt file."""


class AnchorDigestMismatch(GeofedError):
    """The anchor set of a round is not the one this node was provisioned with.

    A node refuses such a round: a dishonest server could otherwise slip candidate private
    records into the "public" anchors and read how nodes embed them (DESIGN.md section 2).
    """

    def __init__(self, expected: str, got: str, *, where: str) -> None:
        self.expected = expected
        self.got = got
        super().__init__(
            f"anchor digest mismatch at {where}: provisioned {expected[:16]}..., got {got[:16]}...; "
            "the node refuses to use an anchor set it was not provisioned with"
        )


class MessageError(GeofedError, ValueError):
    """A wire message could not be decoded or failed validation (malformed, wrong round, wrong sender)."""


class CheckpointError(GeofedError):
    """A checkpoint is missing, incomplete, corrupt, or belongs to a different run configuration."""


class OutputFolderError(GeofedError):
    """An output folder cannot be used: it is a file, cannot be created or written, or already holds a run (a run
    is never overwritten without ``--resume`` or ``--overwrite``)."""


class OutputFolderLocked(OutputFolderError):
    """Another live process is writing the output folder (it holds the folder's lock file)."""


class TrainingError(GeofedError):
    """Local training produced an unusable result (e.g. non-finite loss or parameters)."""


class ProtocolAborted(GeofedError):
    """A secure-aggregation party stopped the protocol for a security reason; nothing more is revealed.

    Raised by an honest party when a peer (typically a dishonest server) breaks the protocol: a node
    listed both alive and dropped, survivor sets that differ between nodes, an injected or replaced
    key, a replayed message, a cohort below the floor, a changed anchor digest, too few survivors.
    ``party`` is who refused (a node id or ``"server"``), ``stage`` the protocol stage, ``reason`` why.
    After this the party's session is permanently aborted (h11's ERROR state): start a new one.
    """

    transcript: tuple[Any, ...]  # set by simulate_aggregation: every WireRecord of the refused run
    refusals: dict[str, str]  # set by simulate_aggregation: refusing node id -> its reason

    def __init__(self, reason: str, *, party: str = "", stage: str = "") -> None:
        self.reason = reason
        self.party = party
        self.stage = stage
        self.transcript = ()
        self.refusals = {}
        where = f"{party} at stage {stage}: " if party or stage else ""
        super().__init__(f"protocol aborted by {where}{reason}" if where else f"protocol aborted: {reason}")


class LocalProtocolError(GeofedError):
    """The caller used a protocol session out of order (our own misuse, not the peer's misbehaviour)."""


class RemoteProtocolError(MessageError):
    """A peer's message arrived out of order or failed a check (the peer's misbehaviour, not our own misuse).

    h11's distinction: :class:`LocalProtocolError` is ours, this one is the peer's. A subclass of
    :class:`MessageError`, so ``except MessageError`` still catches it. A secure-aggregation server raises it for a
    node's bad message and keeps its state: one node never ends a round for everyone (that node counts as dropped).
    """


class PrivacyBudgetExceeded(GeofedError):
    """A node refused to train: one more round would spend more than its differential-privacy budget.

    The node stays as it was (nothing trained, nothing released); the server continues with the other nodes.
    Raise the budget (``privacy.epsilon``) only with the data owner's consent, or stop the run.
    """

    def __init__(self, *, node_id: str, round_: int, spent: float, after: float, budget: float, delta: float) -> None:
        self.node_id = node_id
        self.round = round_
        self.spent = spent
        self.after = after
        self.budget = budget
        super().__init__(f"node {node_id} refuses round {round_}: it has spent epsilon {spent:.3f} of its budget "
                         f"{budget:g} (delta {delta:g}) and the round would bring it to {after:.3f}")


class FailureCode(StrEnum):
    """Why a node is missing from a round, as the server records it: a closed set, never free text.

    The exception that made a node fail (its message may depend on private data: which parameter went non-finite,
    how much budget is left) stays in that node's own log; the server, ``summary.json`` and the transcript carry
    only this code. What each code tells the server:

    - ``dropped``: nothing arrived in time (crash, lost connection, offline at a secure-aggregation stage). The
      server observes the absence itself; the code adds nothing.
    - ``invalid_update``: the node's own checks refused its update (non-finite loss, gradient or parameter, a
      NaN or misshaped upload, a precision weight above ``secure.clip``). One bit per round that CAN depend on the
      node's private data, and no DP accountant covers it; it says nothing about which value or why.
    - ``privacy_budget_exhausted``: one more round would exceed the node's DP budget. A function of the node's DP
      plan (budget, noise multipliers, sample rates, steps) and the round number, which the server knows when the
      plan is public; it does not depend on the records.
    - ``refused_round``: the node refused what the server sent (anchor digest, stale or replayed round, wrong
      global-state layout): a function of the server's own message and the node's provisioning.
    - ``protocol_aborted``: the node stopped a secure-aggregation session for a security reason (the server's or
      a peer's behaviour, see :class:`ProtocolAborted`).
    - ``rejected_by_server``: the server's own validation refused a plaintext upload; the server already holds
      the upload and may keep its own reason.
    - ``node_error``: any other error on the node; says only that something failed.
    """

    DROPPED = "dropped"
    INVALID_UPDATE = "invalid_update"
    PRIVACY_BUDGET_EXHAUSTED = "privacy_budget_exhausted"
    REFUSED_ROUND = "refused_round"
    PROTOCOL_ABORTED = "protocol_aborted"
    REJECTED_BY_SERVER = "rejected_by_server"
    NODE_ERROR = "node_error"

    @classmethod
    def for_node_error(cls, exc: BaseException) -> FailureCode:
        """The code a node reports for an error raised while it handled a round (its own failure, not a dropout).

        A :class:`MessageError` here means the node refused the server's message; a driver that sees one after the
        node finished training (its own upload failed validation) reports ``invalid_update`` instead.

        >>> FailureCode.for_node_error(TrainingError("tab: parameter x became non-finite"))
        <FailureCode.INVALID_UPDATE: 'invalid_update'>
        """
        if isinstance(exc, PrivacyBudgetExceeded):
            return cls.PRIVACY_BUDGET_EXHAUSTED
        if isinstance(exc, ProtocolAborted):
            return cls.PROTOCOL_ABORTED
        if isinstance(exc, AnchorDigestMismatch | MessageError):
            return cls.REFUSED_ROUND
        if isinstance(exc, TrainingError | DataError):
            return cls.INVALID_UPDATE
        return cls.NODE_ERROR

    @property
    def sent_by_node(self) -> bool:
        """Whether a node reports this code itself (a dropped node sends nothing; a rejection is the server's)."""
        return self not in (FailureCode.DROPPED, FailureCode.REJECTED_BY_SERVER)
