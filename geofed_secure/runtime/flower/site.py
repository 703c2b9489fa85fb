"""One site of a Flower deployment: its node, kept in a state directory the site's operator chooses.

A Flower SuperNode runs the ClientApp in a fresh process for every message, so nothing survives in memory between
two rounds: :class:`Site` rebuilds the site's :class:`~geofed_secure.node.Node` from the run configuration, its own
data and ``<state_dir>/node.safetensors`` (adapters, head, privacy ledger, DP node secret, last round), answers the
broadcast through the same :class:`~geofed_secure.runtime.round.NodeSide` the simulator uses, and writes the state
back atomically (a temporary file, fsync, then ``os.replace``): a process killed mid-write leaves the previous
state. The node's own log (the error text the server never sees) is ``<state_dir>/log.jsonl``.

Under secure aggregation the site also keeps its protocol session (identity or CKKS secret, the epoch's keys, the
open round) in ``<state_dir>/secure-session.pkl``, written the same way with mode 0600; it starts from the site's
key folder (:mod:`geofed_secure.runtime.secure.keys`). It is a pickle because it is the site's own file, read only
by the site: whoever can write the state directory can already replace the node. A file from another federation,
node, protocol or package version is refused, not used. The session's keys are secrets: the directory must be
readable by the site's operator only.

This module does not import Flower; :mod:`geofed_secure.runtime.flower.app` carries its bytes in Flower messages.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors

import geofed_secure
from geofed_secure.config import RunConfig
from geofed_secure.errors import CheckpointError, ConfigError
from geofed_secure.runtime.nodelog import NodeLog
from geofed_secure.runtime.round import Answer, NodeAnswer, NodeSide, secure_answer
from geofed_secure.runtime.secure import NodeSession, SecureInputLayout
from geofed_secure.runtime.secure.keys import node_session
from geofed_secure.wire.round import RoundBroadcast

if TYPE_CHECKING:  # the node's training stack is imported only by a message that trains
    import torch

    from geofed_secure.node import Node, NodeData

STATE_FILE = "node.safetensors"
LOG_FILE = "log.jsonl"
SESSION_FILE = "secure-session.pkl"
LAST_ROUND = "meta/last_round"  # the node state's round counter (Node.state_dict)
ANCHOR_FILE = "anchor-digest.txt"  # the federation's anchor commitment, as the site computed it from its own data
# v2: secagg-v1 wire version 0x02 (a pickled key roster holds advertisement bytes; the epoch secrets gained fields)
SESSION_FORMAT = "geofed-secure-session-v2"


def _atomic_write(folder: Path, name: str, write: Callable[[str], object]) -> None:
    """``write(tmp)`` then fsync and ``os.replace``: the previous file survives a crash at any point (mode 0600)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, folder / name)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def recorded_anchor_digest(state_dir: str | Path) -> str | None:
    """The anchor commitment a site recorded when it last trained (None before), so that a secure-aggregation step
    need not load any data to know it."""
    path = Path(state_dir) / ANCHOR_FILE
    return path.read_text().strip() if path.is_file() else None


class SiteState:
    """What site ``node_id`` of ``config`` keeps between messages without its node: its ``state_dir`` (log, secure
    session) and its key folder. Answering a secure-aggregation step needs only this, so that message's process
    never loads the node's data, backbone or training stack. ``anchor_digest`` is the federation's anchor commitment
    the site was provisioned with."""

    def __init__(self, config: RunConfig, node_id: str, *, anchor_digest: str, state_dir: str | Path,
                 keys_dir: str | Path | None = None) -> None:
        specs = {n.id: n for n in config.nodes}
        if node_id not in specs:
            raise ConfigError("node-id", f"{node_id!r} is not a node of federation {config.federation.id!r} "
                                         f"(its nodes: {', '.join(specs)}); set the SuperNode's --node-config node-id")
        self.config = config
        self.spec = specs[node_id]
        self.anchor_digest = anchor_digest
        self.state_dir = Path(state_dir)
        self.keys_dir = Path(keys_dir) if keys_dir is not None else None
        self.secure = config.secure.protocol != "none"
        if self.secure and self.keys_dir is None:
            raise ConfigError("keys", f"secure.protocol = {config.secure.protocol!r}: the site needs its key folder "
                                      "(node config keys='<folder made by geofed deploy keys>/sites/<node id>')")

    @property
    def node_id(self) -> str:
        return self.spec.id

    def last_round(self) -> int:
        """The last round this site's node trained in, read from its state file without loading the node (0: none)."""
        path = self.state_dir / STATE_FILE
        if not path.is_file():
            return 0
        try:
            with safetensors.safe_open(str(path), framework="numpy") as fh:
                return int(fh.get_tensor(LAST_ROUND)[0])
        except Exception as exc:  # SafetensorError is an Exception; a missing key a KeyError or similar
            raise CheckpointError(f"{path} is unreadable ({type(exc).__name__}); the site cannot resume its node") from exc

    def _session_header(self) -> dict[str, Any]:
        return {"format": SESSION_FORMAT, "version": geofed_secure.__version__, "node_id": self.node_id,
                "federation_id": self.config.federation.id, "protocol": self.config.secure.protocol,
                "anchor_digest": self.anchor_digest}

    def load_session(self) -> NodeSession:
        """The node's secure-aggregation session as the last message left it (a new one from the keys before the first)."""
        path = self.state_dir / SESSION_FILE
        if not path.is_file():
            assert self.keys_dir is not None
            return node_session(self.config, self.node_id, self.anchor_digest, self.keys_dir)
        try:
            with open(path, "rb") as fh:
                saved = pickle.load(fh)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
            raise CheckpointError(f"{path} is unreadable ({type(exc).__name__}); delete it to start a new session "
                                  "(the server then starts a new key epoch)") from exc
        header = self._session_header()
        got = saved.get("header") if isinstance(saved, dict) else None
        if got != header:
            differs = sorted(k for k in header if not isinstance(got, dict) or got.get(k) != header[k])
            raise CheckpointError(f"{path} belongs to another {', '.join(differs) or 'format'}; delete it to start a new "
                                  "session (the server then starts a new key epoch)")
        session: NodeSession = saved["session"]
        return session

    def save_session(self, session: NodeSession) -> None:
        blob = pickle.dumps({"header": self._session_header(), "session": session}, protocol=pickle.HIGHEST_PROTOCOL)
        _atomic_write(self.state_dir, SESSION_FILE, lambda tmp: Path(tmp).write_bytes(blob))

    def _log(self, last_round: int) -> NodeLog:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / LOG_FILE
        return NodeLog.resume(path, last_round=last_round) if path.is_file() else NodeLog.start(path)

    def secure_step(self, round_: int, blob: bytes) -> NodeAnswer:
        """Answer a later secure-aggregation message of the round (the node itself is not needed, nor rebuilt)."""
        if not self.secure:
            return NodeAnswer(Answer.NOTHING)
        session = self.load_session()
        log = self._log(round_)
        answer = secure_answer(log, round_, lambda: session.step(blob))
        self.save_session(session)
        return answer


class Site(SiteState):
    """The site with its node: its private ``data`` (this node's own share only: a site never holds another site's
    private data) and the backbone factory its node is built with, for the round's broadcast."""

    def __init__(self, config: RunConfig, node_id: str, data: NodeData, *, anchor_digest: str, state_dir: str | Path,
                 make_backbone: Callable[[], torch.nn.Module], keys_dir: str | Path | None = None) -> None:
        super().__init__(config, node_id, anchor_digest=anchor_digest, state_dir=state_dir, keys_dir=keys_dir)
        self.data = data
        self.make_backbone = make_backbone

    def load_node(self) -> Node:
        """The node as it was after its last answered message (a fresh node before the first)."""
        import safetensors.torch

        from geofed_secure.node import Node

        node = Node(self.spec, self.data, self.config, anchor_digest=self.anchor_digest,
                    backbone_factory=self.make_backbone)
        path = self.state_dir / STATE_FILE
        if path.is_file():
            try:
                state = safetensors.torch.load_file(path)
            except (OSError, ValueError, RuntimeError) as exc:  # safetensors raises SafetensorError (an Exception)
                raise CheckpointError(f"{path} is unreadable ({type(exc).__name__}); the site cannot resume its node") from exc
            node.load_state_dict(state)
        return node

    def save_node(self, node: Node) -> None:
        """Write the node's state atomically: the previous state survives a crash at any point of the write."""
        import safetensors.torch

        state = {k: v.contiguous() for k, v in node.state_dict().items()}
        _atomic_write(self.state_dir, STATE_FILE, lambda tmp: safetensors.torch.save_file(state, tmp))

    def answer(self, round_: int, broadcast_blob: bytes, secure_open: bytes | None = None) -> NodeAnswer:
        """Handle one round's broadcast: an encoded NodeUpdate (clear uploads), the answer to the round's first
        secure-aggregation message ``secure_open`` (secure uploads), or a FailureNotice (code only)."""
        node = self.load_node()
        if recorded_anchor_digest(self.state_dir) != self.anchor_digest:
            _atomic_write(self.state_dir, ANCHOR_FILE, lambda tmp: Path(tmp).write_text(self.anchor_digest))
        session = self.load_session() if self.secure else None
        side = NodeSide(node, self._log(node.last_round), federation_id=self.config.federation.id, secure=session)
        result = side.train(round_, broadcast_blob)
        self.save_node(node)
        if isinstance(result, bytes):
            return NodeAnswer(Answer.FAILURE, result)
        layout = None
        if self.secure:  # the node derives the public layout from the broadcast it trained on, not from the server
            broadcast = side.broadcast  # decoded once, by train()
            assert isinstance(broadcast, RoundBroadcast)
            layout = SecureInputLayout.for_round(broadcast.global_state, len(self.data.anchors), clip=self.config.secure.clip)
        answer = side.upload(round_, result, secure_layout=layout, secure_open=secure_open)
        if session is not None:
            self.save_session(session)
        return answer
