"""Who serves a channel: its rendezvous owner, or with replication its shard's leader.

The core asks a placement two things, ``owns(name)`` and ``leader(name)``; it is
given one at construction (StaticPlacement, or with replication the
ShardPlacement that nodes/logic/replication.py keeps up to date) and never
computes placement itself.
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


class ShardPlacement:
    """Who serves a channel with replication: its shard's leader.  The core is given this at
    construction; Replication, the only writer, tells it who leads (etcd, via the
    coordinator) and which shards this node serves (led, and its epoch's first record on a
    majority)."""

    def __init__(self, topo):
        self.topo = topo
        self.leaders = {}                     # shard -> (node, epoch), from etcd via the coordinator
        self.serving = {}                     # shard -> epoch: the shards this node serves now

    def owns(self, name: str) -> bool:
        return self.topo.shard_of(name) in self.serving

    def leader(self, name: str):
        leader = self.leaders.get(self.topo.shard_of(name))
        return leader[0] if leader else None

    def leading(self) -> dict:
        """{shard: epoch} of the shards served here (published in ticks to brokers)."""
        return dict(self.serving)
