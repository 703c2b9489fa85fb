"""Node logic: local training with task + geometric loss, and the upload it builds.

Public API: :class:`Node` (one site: ``handle_broadcast`` for a federated round, ``local_round`` for node-local
training, ``embed``, ``state_dict``), :class:`NodeData` (what a node holds locally), :class:`LocalRoundStats` and
``N_CLASSES`` (the number of task classes every node's head predicts).
"""

from geofed_secure.node.node import N_CLASSES, LocalRoundStats, Node, NodeData

__all__ = ["N_CLASSES", "LocalRoundStats", "Node", "NodeData"]
