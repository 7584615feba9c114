"""A logic node's side of a live reshard: hand channels over with their whole state.

``bin/mesh reshard`` on a running mesh (nodes/cli/reshard_cli.py) first makes
every logic node adopt the new topology (nodes/topochange.py): a channel it
places elsewhere stops being served here at once (LogicCore.leaving).  Then,
for each old owner and new owner, the operator's tool pages the channels'
rows out of the old owner (``handoff``), into the new owner (``take``; the
first page clears whatever the new owner held of them, the last one loads
them and they are served from then on), and tells the old owner to delete
them (``handoff_done``).  Brokers adopt the new topology last, so no request
reaches a new owner before it holds the channel; until then requests for a
moving channel are answered UNAVAILABLE (WRONG_OWNER at the logic node), an
outcome a client retries with the same ctime.

What moves is what the offline move (nodes/reshard.py) moves: members,
newest id and leased id blocks (ids continue, never backwards), messages,
the ``e``/``x`` rows of their sends (a retry gets its original id), and
every ``d`` row that is newer than the new owner's (the dedup fast path).
Re-running the tool after an interruption continues: a channel is deleted
from its old owner only after its new owner loaded it.
"""
from __future__ import annotations

from . import auth, shards, wire

PAGE_BYTES = 1 << 20


def _names(value, field="channels") -> list:
    if type(value) is not list or len(value) > 1_000_000:
        raise wire.ProtocolError(wire.Err.BAD_FIELD, f"field {field!r} must be a list of channel names")
    for name in value:
        if type(name) is not str:
            raise wire.ProtocolError(wire.Err.BAD_FIELD, f"field {field!r} must be a list of channel names")
        wire.check_channel_name(name)
    return value


def _rows(value) -> list:
    if type(value) is not list or not all(type(r) is list and len(r) == 2 and type(r[0]) is bytes
                                          and type(r[1]) is bytes and r[0] for r in value):
        raise wire.ProtocolError(wire.Err.BAD_FIELD, "field 'rows' must be a list of [key, value] byte pairs")
    for key, _value in value:
        if key[:1] not in b"mcilexd":
            raise wire.ProtocolError(wire.Err.BAD_FIELD, f"row key kind {key[:1]!r} is not channel state")
    return value


class Handoff:
    """Pages out the channels this node no longer serves; takes in those it now serves."""

    def __init__(self, core, store):
        self.core, self.store = core, store
        self.outgoing = {}                    # new owner -> (channel names, rows), built on page 0

    def handlers(self) -> dict:
        return {"handoff": self.handle_handoff, "take": self.handle_take, "handoff_done": self.handle_done}

    def _verify(self, msg) -> None:
        auth.verify(self.core.secret, msg["auth"], scope="admin")

    def handle_handoff(self, _ident, msg, _now=None) -> dict:
        """A page of the rows going to ``to``: {channels, rows, next (0: the last page)}."""
        self._verify(msg)
        to, after = msg["to"], msg["after"]
        if after == 0 or to not in self.outgoing:
            names = sorted(n for n, owner in self.core.leaving().items() if owner == to)
            wanted = set(names).__contains__
            rows = [[k, v] for k, v in shards.channel_rows(self.store, wanted)] if names else []
            self.outgoing[to] = (names, rows + (shards.dedup_rows(self.store) if names else []))
        names, rows = self.outgoing[to]
        page, size, end = [], 0, after
        while end < len(rows) and size < PAGE_BYTES:
            page.append(rows[end])
            size += len(rows[end][0]) + len(rows[end][1])
            end += 1
        return wire.reply("handoff", msg["rid"], channels=names, rows=page, next=end if end < len(rows) else 0)

    def handle_take(self, _ident, msg, _now=None) -> dict:
        """Rows of channels this node serves now.  ``first``: what it held of them is cleared;
        ``last``: they are loaded and served."""
        self._verify(msg)
        names, rows = _names(msg.get("channels")), _rows(msg.get("rows", []))
        not_mine = [n for n in names if not self.core.placement.owns(n)]
        if not_mine:
            raise wire.ProtocolError(wire.Err.WRONG_OWNER, f"this node does not serve {not_mine[0]!r} under "
                                     f"topology version {self.core.topo.version}: adopt the new one first")
        if msg.get("first") is True:
            self.core.forget(names)
            for key, _value in list(shards.channel_rows(self.store, set(names).__contains__)):
                self.store.delete(key)
        shards.put_rows(self.store, rows)
        for key, value in rows:
            if key[:1] == b"d":
                self.core.note_dedup_row(key, value)
        if msg.get("last") is True:
            self.store.flush()                 # load reads the store, not the staged batch
            self.core.forget(names)
            self.core.load(set(names).__contains__)
            self.core.sent_cursor = None       # moved ``x`` rows may sort before where pruning was
        return wire.reply("take", msg["rid"], n=len(rows), loaded=len(names) if msg.get("last") is True else 0)

    def handle_done(self, _ident, msg, _now=None) -> dict:
        """The new owner loaded them: delete them here."""
        self._verify(msg)
        names = _names(msg.get("channels"))
        leaving = self.core.leaving()
        kept = [n for n in names if leaving.get(n) != msg["to"]]
        if kept:
            raise wire.ProtocolError(wire.Err.BAD_FIELD, f"channel {kept[0]!r} is not moving to {msg['to']}")
        rows = list(shards.channel_rows(self.store, set(names).__contains__))
        for key, _value in rows:
            self.store.delete(key)
        self.core.forget(names)
        self.outgoing.pop(msg["to"], None)
        return wire.reply("handoff_done", msg["rid"], channels=len(names), rows=len(rows))

