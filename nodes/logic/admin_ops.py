"""Admin requests of the server HTTP API (nodes/broker/httpapi.py) on the logic node owning a channel.

Membership changes (create/add/remove/show) stay in nodes/logic/members.py;
these are the operations the app backend needs beyond them:

- ``channel_delete``: stop serving the channel and delete its rows (its ``c``
  row, its messages, its id lease).  Sends still queued for it are answered
  UNAVAILABLE; a client that retries gets NO_CHANNEL.  The ``i`` row (newest id
  assigned) stays: ids never go back, also for a channel created again later.
- ``channel_list``: the channels this node serves (the broker merges the lists of
  every logic node).
- ``channel_online``: which members have a live session, on which device and broker,
  as this node's presence replica (nodes/logic/presence.py) sees them.
- ``channel_role``: give a member of a ``group`` a role (owner, admin or member) by the
  rules users' role changes follow (nodes/logic/rooms.py ``give_role``: ``owner`` hands
  ownership over, the old owner becoming admin; the owner's own role changes only that
  way).  Rooms have no roles (the operator manages them) and a dm has none: FORBIDDEN.
  Setting a role twice is the same as once, so a retry needs no dedup.
- ``system_send``: a message from uin 0, device 0 -- the system -- through the
  members' send path (nodes/logic/sends.py ``accept``): dedup by ctime makes a
  retried HTTP call store once, the members get it pushed and by sync like any other.

Every one carries an admin token (scope ``admin``) minted from the cluster secret.
"""
from __future__ import annotations

from collections.abc import Callable

from nodes.logic.core import LogicCore
from nodes.logic.presence import PresenceReplica
from nodes.logic.rooms import give_role
from nodes.protocol import auth, wire
from nodes.runtime.logs import events
from nodes.runtime.ports import Msg
from nodes.storage import store as keys

SYSTEM_UIN = 0                  # the sender of system messages (the HTTP API mints no token for uin 0)
SYSTEM_DEVICE = 0

Handler = Callable[[bytes, Msg, float], "Msg | None"]


class AdminOps:
    """No state of its own: the core's channels, store and send path, the node's presence replica."""

    def __init__(self, core: LogicCore, replica: PresenceReplica) -> None:
        self.core, self.replica = core, replica

    def _verify(self, msg: Msg) -> None:
        auth.verify(self.core.secret, msg["auth"], scope="admin")

    def channel_delete(self, msg: Msg, _now: float | None = None) -> Msg:
        self._verify(msg)
        name = msg["channel"]
        ch = self.core.serving.owned(name)
        store = self.core.store
        store.delete(keys.channel_key(name))
        store.delete(keys.lease_key(name))
        for key, _value in list(store.scan(keys.channel_prefix(name))):
            store.delete(key)
        self.core.forget([name])
        events.admin("delete", name, members=len(ch.members))
        return wire.reply("deleted", msg["rid"], channel=name)

    def channel_list(self, msg: Msg, _now: float | None = None) -> Msg:
        self._verify(msg)
        return wire.reply("channels", msg["rid"], channels=sorted(self.core.channels))

    def channel_online(self, msg: Msg, _now: float | None = None) -> Msg:
        self._verify(msg)
        ch = self.core.serving.owned(msg["channel"])
        online = {}
        for uin in sorted(ch.members):
            devices = self.replica.devices(uin)
            if devices:
                online[str(uin)] = {str(d): b for d, b in devices.items()}
        return wire.reply("online", msg["rid"], channel=ch.name, online=online)

    def channel_role(self, msg: Msg, _now: float | None = None) -> Msg:
        self._verify(msg)
        ch = self.core.serving.owned(msg["channel"])
        members = self.core.members
        kind = members.kind(ch.name)
        if kind != "group":
            raise wire.ProtocolError(wire.Err.FORBIDDEN, f"{ch.name!r} is a {kind}: only groups have roles ("
                                     + ("the operator manages a room's members)" if kind == "room"
                                        else "a dm's two users are equals)"))
        give_role(ch, members.meta.setdefault(ch.name, {}), msg["uin"], msg["role"])
        members.save(ch)
        events.admin("role", ch.name, uin=msg["uin"], role=msg["role"])
        return wire.reply("channel_role", msg["rid"], channel=ch.name, uin=msg["uin"], role=msg["role"])

    def system_send(self, ident: bytes, msg: Msg, _now: float | None = None) -> Msg | None:
        self._verify(msg)
        ch = self.core.serving.owned(msg["channel"])
        send = {"rid": msg["rid"], "uin": SYSTEM_UIN, "device": SYSTEM_DEVICE, "channel": ch.name,
                "ctime": msg["ctime"], "text": msg["text"]}
        return self.core.sends.accept(ident, send, ch)

    def handlers(self, change: Callable[[Callable[[Msg, float], Msg]], Handler]) -> dict[str, Handler]:
        """The node's request handlers; ``change`` wraps one that changes a channel's rows (with
        replication: answered once a majority holds them)."""
        def by_msg(fn: Callable[[Msg, float], Msg]) -> Handler:
            return lambda _ident, msg, now: fn(msg, now)
        return {"channel_delete": change(self.channel_delete), "channel_role": change(self.channel_role),
                "channel_list": by_msg(self.channel_list),
                "channel_online": by_msg(self.channel_online), "system_send": self.system_send}
