"""Which logic node a broker sends a channel's requests to, and whether it is up to take them.

The answer combines where the channel is served (nodes/cluster/placement.py:
the rendezvous owner, or the shard leader learned from ticks and WRONG_OWNER
replies) with the owner's liveness (nodes/runtime/links.py ``Liveness``: its
ticks and other frames, its link dropping).  A request for a channel whose
owner is down is refused UNAVAILABLE at once -- the client retries with the
same ctime -- instead of waiting for the request timeout.  No sockets, no
clock: ``now`` is passed in.
"""
from __future__ import annotations

from nodes.cluster.placement import Placement
from nodes.protocol import wire
from nodes.runtime.links import Liveness

FAST_TIMEOUT = 1.0              # seconds: heartbeat parts and `channels` pages wait this long for owners
OWNER_DOWN_AFTER = 1.5          # seconds without a tick from a logic node: it is down
START_GRACE = 3.0               # a logic node never heard yet counts as up this long after start


class Owners:
    def __init__(self, topo, now: float):
        self.placement = Placement(topo)
        self.links = Liveness(OWNER_DOWN_AFTER, START_GRACE, now)     # which logic nodes are up

    def adopt(self, topo) -> None:
        """A live reshard: place channels by the new topology."""
        self.placement.topo = topo

    # --- what the logic nodes say -----------------------------------------------------
    def alive(self, logic_id, now) -> None:
        """A frame from the logic node (not a tick: says nothing of the shards it leads)."""
        self.links.heard(logic_id, now)

    def on_tick(self, logic_id, now, leads=(), stopping=False) -> None:
        self.links.tick(logic_id, now, stopping)                       # stopping: down at once
        if self.placement.topo.replicated:
            self.placement.on_leads(logic_id, leads)

    def moved(self, channel, reply) -> dict:
        """WRONG_OWNER from a replica (remember the leader it names) or from a logic node that
        handed the channel over in a live reshard: what the client gets (it retries, same ctime)."""
        if not self.placement.topo.replicated:
            return wire.error(reply.get("rid"), wire.Err.UNAVAILABLE, f"channel {channel!r} is moving to "
                              "another logic node; retry with the same ctime")
        leader = reply.get("leader")
        self.placement.moved(channel, leader)
        return wire.error(reply.get("rid"), wire.Err.UNAVAILABLE, f"the leader of {channel!r} moved; "
                          "retry with the same ctime", leader=leader)

    # --- asked by the request handlers --------------------------------------------------
    def owner_of(self, channel: str) -> str:
        return self.placement.server(channel)

    def up(self, logic_id, now) -> bool:
        return self.links.up(logic_id, now)

    def serving(self, channel, now) -> str:
        """The logic node to send the channel's request to; UNAVAILABLE if it is down."""
        owner = self.owner_of(channel)
        if not self.up(owner, now):
            raise wire.ProtocolError(wire.Err.UNAVAILABLE, f"the owner of {channel!r} ({owner}) is down; "
                                     "retry later with the same ctime")
        return owner
