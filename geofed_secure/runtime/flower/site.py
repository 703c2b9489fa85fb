"""One site of a Flower deployment: its node, kept in a state directory the site's operator chooses.

A Flower SuperNode runs the ClientApp in a fresh process for every message, so nothing survives in memory between
two rounds: :class:`Site` rebuilds the site's :class:`~geofed_secure.node.Node` from the run configuration, its own
data and ``<state_dir>/node.safetensors`` (adapters, head, privacy ledger, DP node secret, last round), answers the
broadcast through the same :class:`~geofed_secure.runtime.round.NodeSide` the simulator uses, and writes the state
back atomically (a temporary file, fsync, then ``os.replace``): a process killed mid-write leaves the previous
state. The node's own log (the error text the server never sees) is ``<state_dir>/log.jsonl``.

This module does not import Flower; :mod:`geofed_secure.runtime.flower.app` carries its bytes in Flower messages.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import safetensors.torch
import torch

from geofed_secure.config import RunConfig
from geofed_secure.errors import CheckpointError, ConfigError
from geofed_secure.node import Node, NodeData
from geofed_secure.runtime.nodelog import NodeLog
from geofed_secure.runtime.round import Answer, NodeSide

STATE_FILE = "node.safetensors"
LOG_FILE = "log.jsonl"


class Site:
    """The site ``node_id`` of ``config``, with its private ``data`` and its ``state_dir``.

    ``data`` must be this node's own share only (a site never holds another site's private data); ``anchor_digest``
    is the federation's anchor commitment the site was provisioned with.
    """

    def __init__(self, config: RunConfig, node_id: str, data: NodeData, *, anchor_digest: str, state_dir: str | Path,
                 make_backbone: Callable[[], torch.nn.Module]) -> None:
        specs = {n.id: n for n in config.nodes}
        if node_id not in specs:
            raise ConfigError("node-id", f"{node_id!r} is not a node of federation {config.federation.id!r} "
                                         f"(its nodes: {', '.join(specs)}); set the SuperNode's --node-config node-id")
        self.config = config
        self.spec = specs[node_id]
        self.data = data
        self.anchor_digest = anchor_digest
        self.state_dir = Path(state_dir)
        self.make_backbone = make_backbone

    @property
    def node_id(self) -> str:
        return self.spec.id

    def load_node(self) -> Node:
        """The node as it was after its last answered message (a fresh node before the first)."""
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
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in node.state_dict().items()}
        fd, tmp = tempfile.mkstemp(prefix=".node-", suffix=".tmp", dir=self.state_dir)
        os.close(fd)
        try:
            safetensors.torch.save_file(state, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.state_dir / STATE_FILE)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def answer(self, round_: int, broadcast_blob: bytes) -> tuple[Answer, bytes]:
        """Handle one round's broadcast (clear uploads): an encoded NodeUpdate, or a FailureNotice (code only)."""
        node = self.load_node()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.state_dir / LOG_FILE
        log = NodeLog.resume(log_path, last_round=node.last_round) if log_path.is_file() else NodeLog.start(log_path)
        side = NodeSide(node, log, federation_id=self.config.federation.id)
        result = side.train(round_, broadcast_blob)
        self.save_node(node)
        if isinstance(result, bytes):
            return Answer.FAILURE, result
        return side.upload(round_, result, secure_layout=None)
