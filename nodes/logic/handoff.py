"""A logic node's side of a live reshard: hand channels over with their whole state.

``bin/mesh reshard`` on a running mesh (nodes/cli/reshard_cli.py) first makes
every logic node adopt the new topology (nodes/cluster/topochange.py): a channel it
places elsewhere stops being served here at once (nodes/logic/core.py, LogicCore.leaving).  Then,
for each old owner and new owner, the operator's tool pages the channels'
rows out of the old owner (``handoff``), into the new owner (``take``; the
first page clears whatever the new owner held of them, the last one loads
them and they are served from then on), and tells the old owner to delete
them (``handoff_done``).  Brokers adopt the new topology last, so no request
reaches a new owner before it holds the channel; until then requests for a
moving channel are answered UNAVAILABLE (WRONG_OWNER at the logic node), an
outcome a client retries with the same ctime.

What moves is what the offline move (nodes/ops/reshard.py) moves: members,
newest id and leased id blocks (ids continue, never backwards), messages,
the ``e``/``x`` rows of their sends (a retry gets its original id), and
every ``d`` row that is newer than the new owner's (the dedup fast path).
Re-running the tool after an interruption continues: a channel is deleted
from its old owner only after its new owner loaded it.
"""
from __future__ import annotations

import itertools

from nodes.protocol import auth, wire
from nodes.storage import shards, store as keys

PAGE_BYTES = 1 << 20
PAGE_SECONDS = 0.02            # reading a page stops after this (scans of other channels' send rows)
PAUSE_EVERY = shards.PAUSE_EVERY   # send rows scanned between looks at the clock


def _names(value, field="channels") -> list:
    if type(value) is not list or len(value) > 1_000_000:
        raise wire.ProtocolError(wire.Err.BAD_FIELD, f"field {field!r} must be a list of channel names")
    for name in value:
        if type(name) is not str:
            raise wire.ProtocolError(wire.Err.BAD_FIELD, f"field {field!r} must be a list of channel names")
        wire.check_channel_name(name)
    return value


def _rows(value, names, store) -> list:
    """The rows of a ``take`` as (key, value, channel or None): each one readable, and of a
    channel it names (a ``d`` row is a device's, not a channel's), so a bad page cannot
    overwrite a channel served here or leave a row that stops the node at its next load."""
    if type(value) is not list or not all(type(r) is list and len(r) == 2 and type(r[0]) is bytes
                                          and type(r[1]) is bytes and r[0] for r in value):
        raise wire.ProtocolError(wire.Err.BAD_FIELD, "field 'rows' must be a list of [key, value] byte pairs")
    named, out = set(names), []
    sent: dict = {}
    for key, raw in value:
        if key[:1] not in b"mcilexdupq":
            raise wire.ProtocolError(wire.Err.BAD_FIELD, f"row key kind {key[:1]!r} is not channel state")
        try:
            channel = _channel_of_row(key, raw, store, sent)
        except Exception:                      # noqa: BLE001 -- any malformed key or value
            raise wire.ProtocolError(wire.Err.BAD_FIELD, f"row {key[:40]!r} cannot be read") from None
        if channel is not None and channel not in named:
            raise wire.ProtocolError(wire.Err.BAD_FIELD, f"row {key[:40]!r} belongs to channel {channel!r}, "
                                     "which this take does not name")
        out.append((key, raw, channel))
    return out


def _channel_of_row(key: bytes, raw: bytes, store, sent: dict):
    """The channel a row belongs to (None: a device's ``d`` row, or an ``x`` row whose send
    is not stored here); raises when the key or value cannot be read."""
    kind = key[:1]
    if kind == b"d":
        ctime, channel, msg_id = keys.decode(raw)[:3]
        if type(ctime) is not int or type(channel) is not str or type(msg_id) is not int:
            raise ValueError("not a dedup row")
        return None
    if kind == b"e":
        if len(raw) < 12:
            raise ValueError("short send-index row")
        channel = sent[key] = keys.sent_of_value(raw)[0]
        return channel
    if kind == b"x":
        _expiry, send = keys.sent_of_expiry_key(key)
        if send in sent:
            return sent[send]
        known = store.get(send)
        return None if known is None else keys.sent_of_value(known)[0]
    channel = shards.channel_of_key(key)
    if kind == b"i":
        keys.unpack_u64(raw)
    elif kind == b"c":
        if type(keys.decode(raw)["members"]) is not list:
            raise ValueError("no member list")
    else:
        keys.decode(raw)
    return channel


def _boundaries(value) -> dict | None:
    if value is None:
        return None
    if type(value) is not dict or not all(type(k) is str and type(v) is int for k, v in value.items()):
        raise wire.ProtocolError(wire.Err.BAD_FIELD, "field 'boundaries' must map channel names to ids")
    return value


class Outgoing(shards.Pager):
    """The rows of the channels going to one new owner, read page by page."""

    def __init__(self, store, names):
        self.names = names
        wanted = set(names).__contains__
        super().__init__(itertools.chain(shards.channel_rows(store, wanted, pause_every=PAUSE_EVERY),
                                         store.scan(b"d")) if names else ())


class Handoff:
    """Pages out the channels this node no longer serves; takes in those it now serves."""

    def __init__(self, core, store):
        self.core, self.store = core, store
        self.outgoing = {}                    # new owner -> Outgoing
        self.kept = set()                     # channels of the take going on that stay as held here

    def handlers(self) -> dict:
        return {"handoff": self.handle_handoff, "take": self.handle_take, "handoff_done": self.handle_done}

    def _verify(self, msg) -> None:
        auth.verify(self.core.secret, msg["auth"], scope="admin")

    def handle_handoff(self, _ident, msg, _now=None) -> dict:
        """A page of the rows going to ``to``: {channels, rows, next (0: the last page)}.  The
        rows are read by one iterator kept between pages (memory: one page, not the move)."""
        self._verify(msg)
        to, after = msg["to"], msg["after"]
        out = self.outgoing.get(to)
        if out is None or after == 0 or out.position != after:
            out = self.outgoing[to] = Outgoing(self.store, sorted(
                n for n, owner in self.core.leaving().items() if owner == to))
            out.skip(after)                    # a page asked again: start over and skip to it
        page = out.page(PAGE_BYTES, PAGE_SECONDS)
        extra = {}
        if after == 0:                         # where each channel's ids end here (take keeps a newer copy)
            extra["boundaries"] = {n: self.core.channels[n].boundary() for n in out.names
                                   if n in self.core.channels}
        return wire.reply("handoff", msg["rid"], channels=out.names, rows=page,
                          next=0 if out.done else out.position, **extra)

    def handle_take(self, _ident, msg, _now=None) -> dict:
        """Rows of channels this node serves now.  ``first``: what it held of them is cleared;
        ``last``: they are loaded and served.  A channel held here whose ids go beyond the
        copy's (``boundaries``, from the old owner's first page) stays as it is: the copy is
        stale (an added node's seeded YAML channel handed back, say) and would move ids back."""
        self._verify(msg)
        names = _names(msg.get("channels"))
        checked = _rows(msg.get("rows", []), names, self.store)
        boundaries = _boundaries(msg.get("boundaries"))
        not_mine = [n for n in names if not self.core.placement.owns(n)]
        if not_mine:
            raise wire.ProtocolError(wire.Err.WRONG_OWNER, f"this node does not serve {not_mine[0]!r} under "
                                     f"topology version {self.core.topo.version}: adopt the new one first")
        if msg.get("first") is True:
            held = self.core.channels
            self.kept = {n for n in names if n in held and n in (boundaries or ())   # not said: replaced
                         and held[n].boundary() > (boundaries or {})[n]}
            fresh = [n for n in names if n not in self.kept]
            self.core.begin_take(fresh)        # until the last page: not served, nor loaded by a restart
            for key, _value in list(shards.channel_rows(self.store, set(fresh).__contains__, sends=False)):
                self.store.delete(key)             # send rows: see handle_done
        rows = [[key, value] for key, value, channel in checked if channel not in self.kept]
        shards.put_rows(self.store, rows)
        for key, value in rows:
            if key[:1] == b"d":
                self.core.note_dedup_row(key, value)
        kept, loaded = sorted(self.kept), []
        if msg.get("last") is True:
            loaded = [n for n in names if n not in self.kept]
            self.core.end_take(loaded)
            self.kept = set()
        return wire.reply("take", msg["rid"], n=len(rows), loaded=len(loaded), kept=kept)

    def handle_done(self, _ident, msg, _now=None) -> dict:
        """The new owner loaded them: delete them here."""
        self._verify(msg)
        names = _names(msg.get("channels"))
        leaving = self.core.leaving()
        kept = [n for n in names if leaving.get(n) != msg["to"]]
        if kept:
            raise wire.ProtocolError(wire.Err.BAD_FIELD, f"channel {kept[0]!r} is not moving to {msg['to']}")
        # a channel's ``e``/``x`` send rows stay: finding them scans every send row of the store
        # (a long stall of this node's loop), and they are facts that never change -- (uin,
        # device, ctime) was stored as this id -- pruned by time like every send row; while
        # another node serves the channel they are never read here (WRONG_OWNER comes first)
        rows = list(shards.channel_rows(self.store, set(names).__contains__, sends=False))
        for key, _value in rows:
            self.store.delete(key)
        self.core.forget(names)
        self.outgoing.pop(msg["to"], None)
        return wire.reply("handoff_done", msg["rid"], channels=len(names), rows=len(rows))

