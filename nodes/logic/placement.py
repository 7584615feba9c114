"""Who serves a channel when the logic nodes do not replicate: its rendezvous owner.

The core asks a placement two things, ``owns(name)`` and ``leader(name)``; it is
given one at construction (this one, or the replication's view of shard
leadership, nodes/logic/replication.py) and never computes placement itself.
"""
from __future__ import annotations


class StaticPlacement:
    """Who serves a channel without replication: its rendezvous owner, always."""

    def __init__(self, topo, node_id):
        self.topo, self.id = topo, node_id

    def owns(self, name: str) -> bool:
        return self.topo.logic_for(name) == self.id

    def leader(self, name: str):
        return self.topo.logic_for(name)
