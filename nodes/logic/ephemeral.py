"""Typing and watched presence: pushes that are never stored, get no ids and are not in sync.

``typing {uin, device, channel}``: the channel's owner pushes ``typing {channel,
uin}`` at once to the other members' online sessions (the broker rate-limits
typing per user before it gets here).  ``watch {uin, device, channel}`` answers
the members online now (the presence replica knows every online uin) and, while
the watch lives (limits.watch_ttl, renewed by another ``watch``; ``unwatch``
ends it), a member coming online or going offline is pushed as ``presence
{channel, uin, online}`` to the channel's watchers.  Channels over
limits.presence_max_members take neither (TOO_MANY).  Watches are kept in
memory only: after a restart or a move of the channel the client library
watches again (it renews before the TTL anyway).  A router resync (a presence
snapshot instead of deltas) tells no watcher: its next ``watch`` says who is on.
"""
from __future__ import annotations

from array import array
from collections.abc import Mapping

from nodes.logic.channels import ChannelState
from nodes.logic.fanout import FanOut
from nodes.logic.presence import PresenceReplica
from nodes.logic.serving import Serving
from nodes.protocol import wire
from nodes.runtime.ports import Msg


class Ephemeral:
    """State: ``watches`` (channel -> {(uin, device): expiry s}) -- who watches which channel,
    until when."""

    def __init__(self, serving: Serving, replica: PresenceReplica, fanout: FanOut,
                 limits: Mapping[str, float]) -> None:
        self.serving, self.replica, self.fanout = serving, replica, fanout
        self.max_members = int(limits["presence_max_members"])
        self.ttl = float(limits["watch_ttl"])
        self.watches: dict[str, dict[tuple[int, int], float]] = {}
        fanout.on_online = self.online_changed

    def _channel(self, msg: Msg) -> ChannelState:
        ch = self.serving.member_channel(msg["channel"], msg["uin"])
        if len(ch.members) > self.max_members:
            raise wire.ProtocolError(wire.Err.TOO_MANY, f"typing and presence are for channels of at most "
                                     f"{self.max_members} members", limit=self.max_members)
        return ch

    def _plan(self, uins: set[int]) -> dict[str, list[int]]:
        """{broker: [uin]} of the online ones among ``uins``."""
        plan: dict[str, list[int]] = self.replica.brokers_for(array("I", sorted(uins)))
        return plan

    def typing(self, msg: Msg, _now: float | None = None) -> Msg:
        ch = self._channel(msg)
        uin = msg["uin"]
        plan = self._plan(ch.members - {uin})
        if plan:
            self.fanout.push_now({"t": "typing", "channel": ch.name, "uin": uin}, plan, uin, msg["device"])
        return wire.reply("typing", msg["rid"], channel=ch.name)

    def watch(self, msg: Msg, now: float) -> Msg:
        ch = self._channel(msg)
        self.watches.setdefault(ch.name, {})[(msg["uin"], msg["device"])] = now + self.ttl
        online = [u for u in sorted(ch.members) if u in self.replica.online]
        return wire.reply("watch", msg["rid"], channel=ch.name, online=online, ttl=self.ttl)

    def unwatch(self, msg: Msg, _now: float | None = None) -> Msg:
        ch = self.serving.member_channel(msg["channel"], msg["uin"])
        watchers = self.watches.get(ch.name)
        if watchers is not None:
            watchers.pop((msg["uin"], msg["device"]), None)
            if not watchers:
                del self.watches[ch.name]
        return wire.reply("unwatch", msg["rid"], channel=ch.name)

    def expire(self, now: float) -> int:
        """Forget the watches whose TTL ran out (and those of channels no longer served here)."""
        gone = 0
        for name in list(self.watches):
            watchers = self.watches[name]
            for key in [k for k, until in watchers.items() if until <= now]:
                del watchers[key]
                gone += 1
            if not watchers or name not in self.serving.channels:
                gone += len(watchers)
                del self.watches[name]
        return gone

    def online_changed(self, uin: int, online: bool) -> None:
        """``uin`` came online or went offline: tell the watchers of its channels served here."""
        if not self.watches:
            return
        for ch in self.fanout.member_of.get(uin, ()):
            watchers = self.watches.get(ch.name)
            if not watchers:
                continue
            plan = self._plan({u for u, _d in watchers if u in ch.members and u != uin})
            if plan:
                self.fanout.push_now({"t": "presence", "channel": ch.name, "uin": uin, "online": online},
                                     plan, 0, 0)
