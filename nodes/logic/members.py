"""Channel membership: who may send to and read a channel, changed by the operator.

``channel_create``/``add``/``remove``/``show`` carry an admin token minted from the
cluster secret (nodes/ops/admin.py); ``member`` answers a relay before it serves
media.  A change is stored with the turn's batch and keeps the fan-out index
(nodes/logic/fanout.py) in step.  Kept apart from the send path: it is the only
part that writes a channel's ``c`` row and the only one that checks admin tokens
for channels.

The ``c`` row also carries what users' channels add (``meta``, issue 24): the
channel's ``kind`` (``room`` when absent: operator channels), ``title``,
``roles`` ([[uin, "owner"|"admin"], ...] in the order given: everyone else is a
member), ``made`` ([uin, device, ctime] of the create) and ``done`` (the last
answers of member changes by (uin, device, ctime): a retry's original result).
Kept in the one row so that replication, snapshots, hand-overs and reshards
carry it with the members (nodes/storage/shards.py).  The rules that change it
are nodes/logic/rooms.py's.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any, Literal, overload

from nodes.logic.channels import ChannelState
from nodes.logic.fanout import FanOut
from nodes.logic.serving import Serving
from nodes.protocol import auth, wire
from nodes.runtime.logs import events
from nodes.runtime.ports import Msg
from nodes.storage import store as keys
from nodes.storage.store import Store

META_FIELDS = ("kind", "title", "roles", "made", "done")    # what a ``c`` row holds beyond members


def role_of(meta: dict[str, Any], uin: int) -> str:
    """A member's role in a channel's ``meta``: ``member`` unless its ``roles`` say otherwise."""
    for who, role in meta.get("roles", ()):
        if who == uin:
            return str(role)
    return "member"


class Membership:
    """State beyond the channels' members (on each ChannelState): ``meta`` (name -> the
    ``c`` row's META_FIELDS present; absent or empty for an operator room)."""

    def __init__(self, serving: Serving, store: Store, fanout: FanOut, secret: bytes, queue: int) -> None:
        self.serving, self.store, self.fanout = serving, store, fanout
        self.secret = secret
        self.queue = queue                    # a new channel's queue length (channel_queue)
        self.meta: dict[str, dict[str, Any]] = {}

    def create(self, name: str, members: Iterable[int], lifetime: float | None = None,
               meta: dict[str, Any] | None = None) -> ChannelState:
        """A new channel, held and served here from now on (its ``c`` row is staged)."""
        ch = self.serving.channels[name] = ChannelState(name, members, self.queue, lifetime)
        self.fanout.index(ch, ())
        ch.next_id = 1
        self.meta[name] = dict(meta or {})
        self.save(ch)
        return ch

    def restore(self, name: str, row: dict[str, Any]) -> None:
        """A loaded channel's ``c`` row: keep what it holds beyond the members."""
        self.meta[name] = {k: row[k] for k in META_FIELDS if k in row}

    def kind(self, name: str) -> str:
        kind: str = self.meta.get(name, {}).get("kind", "room")
        return kind

    def save(self, ch: ChannelState) -> None:
        row = {"members": sorted(ch.members), "lifetime": ch.lifetime, **self.meta.get(ch.name, {})}
        self.store.put(keys.channel_key(ch.name), keys.encode(row))

    # --- membership ----------------------------------------------------------
    def member(self, msg: Msg, _now: float | None = None) -> Msg:
        """Is the uin a member of the channel?  (Asked by relays before serving media.)"""
        ch = self.serving.owned(msg["channel"])
        return wire.reply("member", msg["rid"], channel=ch.name, uin=msg["uin"],
                          member=msg["uin"] in ch.members)

    @overload
    def _admin(self, msg: Msg, must_exist: Literal[True] = ...) -> ChannelState: ...
    @overload
    def _admin(self, msg: Msg, must_exist: Literal[False]) -> None: ...
    def _admin(self, msg: Msg, must_exist: bool = True) -> ChannelState | None:
        auth.verify(self.secret, msg["auth"], scope="admin")
        name = msg["channel"]
        if must_exist:
            return self.serving.owned(name)
        self.serving.check(name)
        return None

    def _check_members(self, members: Collection[int]) -> None:
        if len(members) > self.serving.topo.limits["max_members"]:
            raise wire.ProtocolError(wire.Err.BAD_FIELD, "too many members")

    def channel_create(self, msg: Msg, _now: float | None = None) -> Msg:
        self._admin(msg, must_exist=False)
        self._check_members(msg["members"])
        if msg["channel"] in self.serving.channels:
            raise wire.ProtocolError(wire.Err.CHANNEL_EXISTS, f"channel {msg['channel']!r} exists")
        ch = self.create(msg["channel"], msg["members"], msg.get("lifetime"))   # lifetime: the schema's check
        events.admin("create", ch.name, members=len(ch.members))
        return self._members_reply(msg, ch)

    def channel_add(self, msg: Msg, _now: float | None = None) -> Msg:
        ch = self._admin(msg)
        members = set(msg["members"]) | ch.members
        self._check_members(members)
        self._set_members(ch, members)
        self.save(ch)
        events.admin("add", ch.name, members=len(msg["members"]))
        return self._members_reply(msg, ch)

    def channel_remove(self, msg: Msg, _now: float | None = None) -> Msg:
        ch = self._admin(msg)
        self._set_members(ch, ch.members - set(msg["members"]))
        self.save(ch)
        events.admin("remove", ch.name, members=len(msg["members"]))
        return self._members_reply(msg, ch)

    def channel_show(self, msg: Msg, _now: float | None = None) -> Msg:
        return self._members_reply(msg, self._admin(msg))

    def _members_reply(self, msg: Msg, ch: ChannelState) -> Msg:
        """The channel as the operator sees it: its kind and each member's role too
        ({uin as str: role}, JSON's keys; a room's members are all ``member``)."""
        given = dict(self.meta.get(ch.name, {}).get("roles", ()))
        return wire.reply("channel", msg["rid"], channel=ch.name, members=sorted(ch.members),
                          last=ch.visible, lifetime=ch.lifetime, kind=self.kind(ch.name),
                          roles={str(uin): given.get(uin, "member") for uin in sorted(ch.members)})

    def _set_members(self, ch: ChannelState, members: Iterable[int]) -> None:
        old = ch.members
        ch.set_members(members)
        self.fanout.index(ch, old)
