"""Who gets a stored message: per channel, the brokers of its online members.

A channel's fan-out plan ({broker: [uin]}) is computed from the presence replica
(nodes/logic/presence.py) when its version changed, and patched in place when one
uin's brokers change (``presence_changed``): a login in a big channel does not
recompute the plan over all members.  Messages of a loop turn are gathered per
broker and leave as one PUB frame per broker at the turn's end (``publish_turn``,
one per remote IDC through nodes/cluster/idcfanout.py).  Kept apart from the
send path: it is the only part that reads presence.  Ephemeral pushes (typing,
presence of watched channels: nodes/logic/ephemeral.py) leave through the same
frames (``push_now``), and a uin coming online or going offline is told to
``on_online`` (watchers are told).
"""
from __future__ import annotations

import collections
from collections.abc import Callable, Iterable

from nodes.cluster import idcfanout
from nodes.logic.channels import ChannelState, Pending, push_of
from nodes.logic.presence import PresenceReplica
from nodes.logic.serving import Serving
from nodes.protocol import wire
from nodes.runtime.ports import LogicOut


class FanOut:
    """State: ``member_of`` (uin -> {ChannelState}: whose plans a presence change patches)
    and ``outbox`` (broker -> [[packed push, to, uin, device], ...] of this turn).  The
    plans themselves live on each ChannelState (``fanout``, ``fanout_version``)."""

    def __init__(self, serving: Serving, replica: PresenceReplica, out: LogicOut,
                 stats: collections.Counter[str]) -> None:
        self.serving = serving                # topo and node id of the current topology
        self.replica = replica
        self.out = out
        self.stats = stats
        self.member_of: dict[int, set[ChannelState]] = {}
        self.outbox: dict[str, list[list[object]]] = {}    # [packed, uins, uin, device]: idcfanout.plan's items
        self.on_online: Callable[[int, bool], None] | None = None    # (uin, online now) on a flip
        replica.on_change = self.presence_changed

    def index(self, ch: ChannelState, old: Iterable[int]) -> None:
        """Keep ``member_of`` in step with a channel's members (``old``: before the change)."""
        for uin in set(old) - ch.members:
            chans = self.member_of.get(uin)
            if chans is not None:
                chans.discard(ch)
                if not chans:
                    del self.member_of[uin]
        for uin in ch.members.difference(old):
            self.member_of.setdefault(uin, set()).add(ch)

    def presence_changed(self, uin: int, before: set[str], after: set[str]) -> None:
        """A uin's brokers changed: patch the plans of its channels (a plan is not
        recomputed over all members because one of them logged in or out).  Edited in
        place: fan-out items referring to a plan's lists are packed and published within
        ``commit``, which no presence change interrupts."""
        for ch in self.member_of.get(uin, ()):
            plan = ch.fanout
            if plan is None:
                continue
            for broker in before - after:
                uins = plan.get(broker)
                if uins is None:
                    continue
                try:
                    uins.remove(uin)
                except ValueError:
                    continue
                if not uins:
                    del plan[broker]
            for broker in after - before:
                plan.setdefault(broker, []).append(uin)
        if self.on_online is not None and bool(before) != bool(after):
            self.on_online(uin, bool(after))

    def fan_out(self, ch: ChannelState, rec: Pending) -> None:
        """Queue the message for every broker with an online member (sent once per turn)."""
        if ch.fanout_version != self.replica.version:
            ch.fanout = self.replica.brokers_for(ch.member_array)
            ch.fanout_version = self.replica.version
        if not ch.fanout:
            return
        packed = wire.pack(push_of(rec.channel, rec.id, rec.record()))  # type: ignore[arg-type]  # committed: has an id
        self.stats["deliveries"] += len(ch.fanout)
        for broker, uins in ch.fanout.items():
            self.outbox.setdefault(broker, []).append([packed, uins, rec.uin, rec.device])

    def push_now(self, push: dict[str, object], plan: dict[str, list[int]], uin: int, device: int) -> None:
        """An ephemeral push (never stored, no id) to the uins of ``plan`` ({broker: [uin]}),
        published at once; ``uin``/``device``: the device it must not go back to (0, 0: none)."""
        packed = wire.pack(push)
        for broker, uins in plan.items():
            self.outbox.setdefault(broker, []).append([packed, uins, uin, device])
        self.publish_turn()

    def publish_turn(self) -> None:
        """One PUB frame per broker of this IDC for all the messages of this turn, in id order;
        one per remote IDC (nodes/cluster/idcfanout.py)."""
        outbox, self.outbox = self.outbox, {}
        if outbox:
            # "logic" in each frame: a broker counts it as a sign of life, like a tick
            # (deliveries queued behind each other must not make it think this node is down)
            topo, node_id = self.serving.topo, self.serving.id
            spec = topo.nodes.get(node_id)
            for broker, msg in idcfanout.plan(outbox, topo, spec.idc if spec else None, node_id):
                self.out.publish(broker, msg)
