"""One exception hierarchy for geofed-secure.

Every error the library raises on purpose derives from :class:`GeofedError`, so a caller
(an operator's script, a privacy-attack test suite) can catch the whole family at once.
Each message says what was wrong and how to fix it.
"""

from __future__ import annotations


class GeofedError(Exception):
    """Base class of every error raised on purpose by geofed-secure."""


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

    def __init__(self, reason: str, *, party: str = "", stage: str = "") -> None:
        self.reason = reason
        self.party = party
        self.stage = stage
        where = f"{party} at stage {stage}: " if party or stage else ""
        super().__init__(f"protocol aborted by {where}{reason}" if where else f"protocol aborted: {reason}")


class LocalProtocolError(GeofedError):
    """The caller used a protocol session out of order (our own misuse, not the peer's misbehaviour)."""


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
