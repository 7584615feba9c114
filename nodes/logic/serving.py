"""Which channels this logic node serves now, and the error for a request it may not serve.

One rule for every request and heartbeat (sends, reads, membership): WRONG_OWNER
(naming the leader) if the placement puts the channel elsewhere, UNAVAILABLE while
it is being handed here or while the node joins a running mesh, NO_CHANNEL /
NOT_MEMBER after that.  Kept apart from the parts that use it so that they all
ask the same question the same way, and so that the registry of channels held
here (``channels``) has one owner that the lifecycle (nodes/logic/core.py) edits.
"""
from __future__ import annotations

from nodes.cluster.placement import LogicPlacement
from nodes.cluster.topology import Topology
from nodes.logic.channels import ChannelState
from nodes.protocol import wire


class Serving:
    """State: ``channels`` (name -> ChannelState held here), ``incoming`` (names being
    taken in by a hand-over: held in part, not served), ``joining`` (added to a running
    mesh: serves only what it holds until settled), ``topo`` and ``placement`` (replaced
    together when a live reshard is adopted)."""

    def __init__(self, node_id: str, topo: Topology, placement: LogicPlacement, joining: bool = False) -> None:
        self.id = node_id
        self.topo = topo
        self.placement = placement
        self.channels: dict[str, ChannelState] = {}
        self.incoming: set[str] = set()
        self.joining = joining

    def unserved(self, name: str) -> wire.ProtocolError | None:
        """Why this node does not serve the channel now, or None: WRONG_OWNER if another node
        serves it; UNAVAILABLE while it is moving here (one rule for requests and heartbeats)."""
        if not self.placement.owns(name):
            return self.wrong_owner(name)
        if name in self.incoming:
            return wire.ProtocolError(wire.Err.UNAVAILABLE, f"channel {name!r} is moving to this node; retry")
        if self.joining and name not in self.channels:
            return wire.ProtocolError(wire.Err.UNAVAILABLE, f"logic {self.id} joins a running mesh: channel "
                                      f"{name!r} may arrive by bin/mesh reshard; retry after it")
        return None

    def check(self, name: str) -> None:
        why = self.unserved(name)
        if why is not None:
            raise why

    def wrong_owner(self, name: str) -> wire.ProtocolError:
        return wire.ProtocolError(wire.Err.WRONG_OWNER, f"logic {self.id} does not serve channel {name!r}",
                                  leader=self.placement.leader(name))

    def owned(self, name: str) -> ChannelState:
        """The channel, served here (else the error that says why not)."""
        self.check(name)
        ch = self.channels.get(name)
        if ch is None:
            raise wire.ProtocolError(wire.Err.NO_CHANNEL, f"no channel {name!r}")
        return ch

    def member_channel(self, name: str, uin: int) -> ChannelState:
        """The channel, served here and with ``uin`` a member."""
        ch = self.owned(name)
        if uin not in ch.members:
            raise wire.ProtocolError(wire.Err.NOT_MEMBER, f"uin {uin} is not a member of {name!r}")
        return ch
