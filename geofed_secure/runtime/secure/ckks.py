"""CKKS (ckks-v1) inside the federation runtime: the server's :class:`CkksAggregator` and each node's
:class:`CkksNodeSession`, moved by any driver (:mod:`.session`).

Keys are provisioned once per federation: every node gets the secret context, the server only the public one. Per
round each node encrypts its clipped secure input (answering the round start that came with the broadcast), the
server adds the ciphertexts it cannot decrypt and sends the encrypted sum to ONE contributor, the first in id order
that has not yet failed to answer; that node checks and decrypts it and releases the decrypted SUM to the server
(:class:`~geofed_secure.wire.round.AggregateRelease`) so it can checkpoint and broadcast the next global state. Two
round trips per round when the first contributor answers; one more per contributor that does not.

The server learns the same as under pairwise masking (the sum and the contributors), never an individual upload;
but any one node colluding with the server can decrypt every upload (protocols/ckks-v1/SPEC.md says so plainly).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from geofed_secure.config import RunConfig
from geofed_secure.errors import FailureCode, GeofedError, MessageError, ProtocolAborted
from geofed_secure.runtime.secure.layout import SecureInputLayout, SecureRound
from geofed_secure.runtime.secure.session import SecureReply
from geofed_secure.runtime.transcript import SERVER, Transcript
from geofed_secure.secagg import ckks
from geofed_secure.secagg.ckks.tables import ServerState as CkksServerState
from geofed_secure.wire.round import AggregateRelease, decode_message, encode_message

MASKED_INPUT, UNMASK = "masked_input", "unmask"  # the stage names the masking protocol uses for the same two steps


class CkksNodeSession:
    """ON THE NODE: its ckks-v1 session (the secret context, the last round it uploaded in, the open round).

    It pickles without TenSEAL objects: the node's state is kept and the TenSEAL context is loaded again when the
    session is. A site's session keeps only the PATH of its secret context (``secret_path``, the site's key folder),
    so the secret key is on the site's disk once; an in-process session keeps the bytes."""

    protocol = "ckks"

    def __init__(self, *, node_id: str, federation_id: str, secret_context: bytes, anchor_digest: str, clip: float,
                 secret_path: str | None = None) -> None:
        self._args: dict[str, Any] = {"node_id": node_id, "federation_id": federation_id, "secret_context": secret_context,
                                      "anchor_digest": anchor_digest, "clip": clip}
        self._secret_path = secret_path
        self.node = ckks.CkksNode(**self._args)
        self.layout: SecureInputLayout | None = None  # the open round's layout, to name the decrypted sums

    @classmethod
    def for_site(cls, config: RunConfig, node_id: str, secret_context: bytes, anchor_digest: str,
                 secret_path: str | None = None) -> CkksNodeSession:
        return cls(node_id=node_id, federation_id=config.federation.id, secret_context=secret_context,
                   anchor_digest=anchor_digest, clip=config.secure.clip, secret_path=secret_path)

    _KEPT = ("state", "last_round", "clipped", "_pending")

    def __getstate__(self) -> dict[str, Any]:
        args = dict(self._args)
        if self._secret_path is not None:
            del args["secret_context"]  # read again from the key folder: the secret is not copied into the session
        return {"args": args, "secret_path": self._secret_path, "layout": self.layout,
                "node": {k: getattr(self.node, k) for k in self._KEPT}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._args, self.layout, self._secret_path = dict(state["args"]), state["layout"], state["secret_path"]
        if "secret_context" not in self._args:
            self._args["secret_context"] = Path(str(self._secret_path)).read_bytes()  # OSError: the site reports it
        self.node = ckks.CkksNode(**self._args)
        for key, value in state["node"].items():
            setattr(self.node, key, value)

    def open(self, blob: bytes, vector: np.ndarray, layout: SecureInputLayout) -> SecureReply:
        start = ckks.decode_ckks_message(blob)
        if not isinstance(start, ckks.CkksRoundStart):
            raise MessageError(f"the round's first ckks-v1 message must be a CkksRoundStart, got {type(start).__name__}")
        upload = self.node.begin_round(start, vector)  # already clipped by the layout: nothing left to clip here
        self.layout = layout  # to name the decrypted sums
        return SecureReply(MASKED_INPUT, upload.encode())

    def step(self, blob: bytes) -> SecureReply:
        aggregate = ckks.decode_ckks_message(blob)
        if not isinstance(aggregate, ckks.CkksAggregate):
            raise MessageError(f"expected a CkksAggregate, got {type(aggregate).__name__}")
        if self.layout is None:
            raise MessageError("an aggregate arrived for a round this node did not open")
        total = self.node.receive_aggregate(aggregate)
        release = AggregateRelease(federation_id=aggregate.federation_id, round=aggregate.round, node_id=self.node.node_id,
                                   anchor_digest=self._args["anchor_digest"], contributors=tuple(aggregate.contributors),
                                   sums={k: v.astype(np.float32) for k, v in self.layout.unflatten(total).items()})
        return SecureReply(UNMASK, encode_message(release))

    def abandon(self) -> None:
        """Nothing to forget: a CKKS node may start a new round while an aggregate is still awaited."""


class CkksAggregator:
    """THE SERVER's side of ckks-v1: the public context only, it can add ciphertexts but never decrypt one."""

    protocol = "ckks"

    def __init__(self, config: RunConfig, anchor_digest: str, public_context: bytes) -> None:
        self.config = config
        self.anchor_digest = anchor_digest
        self.public_context = public_context
        self.server = self._new_server()
        self._reset()

    def _new_server(self) -> ckks.CkksServer:
        return ckks.CkksServer(federation_id=self.config.federation.id, public_context=self.public_context,
                               cohort=[n.id for n in self.config.nodes])

    def _reset(self) -> None:
        self._stage = MASKED_INPUT
        self._sent: dict[str, int] = {}
        self._aggregate: ckks.CkksAggregate | None = None
        self._decryptors: list[str] = []  # contributors not yet asked to decrypt, in id order
        self._asked: str | None = None
        self._release: AggregateRelease | None = None
        self._shapes: dict[str, tuple[int, ...]] = {}  # the released sums' public layout

    @classmethod
    def in_process(cls, config: RunConfig, anchor_digest: str) -> tuple[CkksAggregator, dict[str, CkksNodeSession]]:
        """The server and every node's session in one process (the simulator), with fresh keys."""
        keys = ckks.provision_ckks_keys()
        sessions = {n.id: CkksNodeSession.for_site(config, n.id, keys.secret_context, anchor_digest) for n in config.nodes}
        return cls(config, anchor_digest, keys.public_context), sessions

    def _record(self, round_: int, sender: str, receiver: str, blob: bytes, message: Any, transcript: Transcript) -> None:
        transcript.record(round_, sender, receiver, blob, message)
        if sender != SERVER:
            self._sent[sender] = self._sent.get(sender, 0) + len(blob)

    def open(self, round_: int, layout: SecureInputLayout, cohort: tuple[str, ...], transcript: Transcript) -> dict[str, bytes]:
        if self.server.aborted:
            self.server = self._new_server()
        self._reset()
        self._shapes = {k: tuple(v.shape) for k, v in layout.unflatten(np.zeros(layout.length)).items()}
        starts = self.server.start_round(round_, anchor_digest=self.anchor_digest, length=layout.length)
        blob = next(iter(starts.values())).encode()  # one message for the whole cohort
        out = {}
        for node_id in cohort:
            self._record(round_, SERVER, node_id, blob, starts[node_id], transcript)
            out[node_id] = blob
        return out

    def receive(self, round_: int, node_id: str, blob: bytes, transcript: Transcript) -> None:
        try:
            if self._stage == MASKED_INPUT:
                upload = ckks.decode_ckks_message(blob)
                self._record(round_, node_id, SERVER, blob, upload, transcript)
                if isinstance(upload, ckks.CkksEncryptedInput) and upload.node_id == node_id:  # not in another's name
                    self.server.receive(upload)
                return
            release = decode_message(blob)
            self._record(round_, node_id, SERVER, blob, release, transcript)
        except GeofedError:
            return  # the availability rule: unusable, ignored
        if (node_id == self._asked and isinstance(release, AggregateRelease) and release.node_id == node_id
                and release.round == round_ and self._aggregate is not None
                and tuple(release.contributors) == tuple(self._aggregate.contributors)
                and release.federation_id == self.config.federation.id
                and {k: tuple(v.shape) for k, v in release.sums.items()} == self._shapes
                and all(np.isfinite(v).all() for v in release.sums.values())):
            self._release = release  # anything else is ignored: the next contributor is asked

    def next_stage(self, round_: int, transcript: Transcript) -> dict[str, bytes]:
        if self._stage == MASKED_INPUT:
            self._aggregate = self.server.finish()  # ProtocolAborted below the floor: nothing is released
            self._decryptors = list(self._aggregate.contributors)
            self._stage = UNMASK
        elif self._release is not None:
            return {}
        if not self._decryptors:
            raise ProtocolAborted("no contributor was online to decrypt the aggregate", party=SERVER, stage=UNMASK)
        self._asked = self._decryptors.pop(0)
        assert self._aggregate is not None
        blob = self._aggregate.encode()
        self._record(round_, SERVER, self._asked, blob, self._aggregate, transcript)
        return {self._asked: blob}

    def result(self, round_: int, layout: SecureInputLayout, ready: tuple[str, ...]) -> SecureRound:
        release = self._release
        assert release is not None and self._aggregate is not None
        contributors = tuple(release.contributors)
        left_out = {v: FailureCode.DROPPED for v in ready if v not in contributors}
        sums = {k: np.asarray(v, np.float64) for k, v in release.sums.items()}  # on the layout: checked on arrival
        bound = ckks.ckks_error_bound(len(contributors), clip=self.config.secure.clip)
        return SecureRound(sums=sums, contributors=contributors, left_out=left_out,
                           dropped_at={v: MASKED_INPUT for v in left_out},
                           bytes_sent={v: n for v, n in self._sent.items() if v in ready}, max_abs_error=bound)

    def abandon(self) -> None:
        if self.server.state is CkksServerState.COLLECTING:
            self.server = self._new_server()
