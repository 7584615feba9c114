"""Which logic node serves channel X: the one place that answers it.

Without replication a channel has one owner, its rendezvous owner in the
topology (``Topology.logic_for``).  With replication a channel lives on the
replicas of its shard and one of them, the shard's leader, serves it; who
leads is learned (a logic node's ticks list the shards it leads with their
epochs, a replica that is not the leader answers WRONG_OWNER naming it), and
until something is learned the shard's preferred replica is asked (it
redirects).  During a live reshard (nodes/cluster/topochange.py) the answer
follows the topology the node runs by: a node sets ``topo`` when it adopts a
new one, and a logic node that handed a channel over answers WRONG_OWNER
without a leader (the caller says "retry").

``Placement`` is the view of a node that sends to logic nodes (broker,
relay); ``servers`` the list an operator tool tries in turn; ``StaticPlacement``
the logic node's own view without replication, ``ShardPlacement`` its view with
replication (nodes/logic/replication.py, its only writer, keeps it up to date).
A logic core asks either one two things: ``owns(name)`` and ``leader(name)``.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from nodes.cluster.topology import Topology


def servers(topo: Topology, channel: str) -> list[str]:
    """Where to ask about a channel, in order: its owner, or its shard's replicas (preferred
    first) -- for a caller that learns no leaders (bin/mesh channel ...)."""
    if topo.replicated:
        return topo.replicas_of(topo.shard_of(channel))
    return [topo.logic_for(channel)]


class Placement:
    """The logic node serving each channel, as seen from outside the logic tier."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo                    # the topology the node runs by (replaced on adopt)
        self.leaders: dict[int, tuple[int, str]] = {}   # shard -> (epoch, logic id): replication only

    def server(self, channel: str) -> str:
        """The channel's owner, or its shard's known leader, else the shard's preferred replica."""
        topo = self.topo
        if not topo.replicated:
            return topo.logic_for(channel)
        shard = topo.shard_of(channel)
        known = self.leaders.get(shard)
        return known[1] if known else topo.replicas_of(shard)[0]

    def on_leads(self, logic_id: str, leads: Iterable[tuple[int, int]]) -> None:
        """A logic node's tick lists the shards it leads as (shard, epoch): the newest epoch
        wins; a shard it led and no longer lists is forgotten."""
        listed = set()
        for shard, epoch in leads:
            listed.add(shard)
            known = self.leaders.get(shard)
            if known is None or epoch >= known[0]:
                self.leaders[shard] = (epoch, logic_id)
        for shard, (_epoch, leader) in list(self.leaders.items()):
            if leader == logic_id and shard not in listed:
                del self.leaders[shard]

    def moved(self, channel: str, leader: str | None) -> None:
        """A replica answered WRONG_OWNER for ``channel`` naming ``leader`` (None or a node not
        in the topology: forget the shard's leader, ask the preferred replica next)."""
        shard = self.topo.shard_of(channel)
        if leader is not None and leader in self.topo.nodes:
            known = self.leaders.get(shard)
            self.leaders[shard] = (known[0] if known else 0, leader)
        else:
            self.leaders.pop(shard, None)


class LogicPlacement(Protocol):
    """What a logic core asks of its placement (StaticPlacement or ShardPlacement)."""

    def owns(self, name: str) -> bool:
        """Does this node serve channel ``name`` now?"""

    def leader(self, name: str) -> str | None:
        """The logic node serving ``name`` (None: not known yet)."""


class StaticPlacement:
    """Who serves a channel without replication, as a logic node sees it: its rendezvous owner,
    always."""

    def __init__(self, topo: Topology, node_id: str) -> None:
        self.topo, self.id = topo, node_id

    def owns(self, name: str) -> bool:
        return self.topo.logic_for(name) == self.id

    def leader(self, name: str) -> str:
        return self.topo.logic_for(name)


class ShardPlacement:
    """Who serves a channel with replication: its shard's leader.  The core is given this at
    construction; Replication, the only writer, tells it who leads (etcd, via the
    coordinator) and which shards this node serves (led, and its epoch's first record on a
    majority)."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.leaders: dict[int, tuple[str, int]] = {}   # shard -> (node, epoch), from etcd via the coordinator
        self.serving: dict[int, int] = {}               # shard -> epoch: the shards this node serves now

    def owns(self, name: str) -> bool:
        return self.topo.shard_of(name) in self.serving

    def leader(self, name: str) -> str | None:
        leader = self.leaders.get(self.topo.shard_of(name))
        return leader[0] if leader else None

    def leading(self) -> dict[int, int]:
        """{shard: epoch} of the shards served here (published in ticks to brokers)."""
        return dict(self.serving)
