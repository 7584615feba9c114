"""Receive-side bookkeeping of a client: per channel, the newest contiguous id it holds.

A pushed or synced message is handed to the application only when it is
the next id of its channel; later ids wait (held) until the gap is filled.
The one rule that keeps the client from skipping a stored message:

    the window moves past an id only when the client holds that message,
    or a server reply said the id is gone (``first`` beyond it, or a sync
    page / heartbeat ``upto`` covering it).

A push never moves the window past a gap, however many newer ids arrive,
and a sync reply says only what it covered when it was made: ids newer
than its ``upto`` stay open even if they were pushed before the reply was
read (observation 1 of issue 11).  Ids at or below the window, or already
held, are duplicates and dropped.  Ids this client sent itself (``own``)
fill their place in the window without being handed to the application.
No I/O: the client library feeds messages and server facts in and acts on
what comes out.
"""
from __future__ import annotations

OWN = object()                                 # placeholder of an id this client sent: fills, not delivered


class Windows:
    def __init__(self):
        self.last = {}                         # channel -> newest contiguous id held
        self.held = {}                         # channel -> {id: msg or OWN} beyond a gap
        self.duplicates = 0

    def watch(self, channel: str, since: int) -> None:
        """Start (or restart) a channel's window at ``since``: ids after it will be delivered."""
        self.last[channel] = since
        self.held.pop(channel, None)

    def accept(self, msg: dict) -> tuple[list, bool]:
        """Take one message; return (messages now deliverable in order, gap open?)."""
        return self._put(msg["channel"], msg["id"], msg)

    def own(self, channel: str, msg_id: int) -> list:
        """This client's send was acked as ``msg_id``: its place is filled (not delivered)."""
        if channel not in self.last:
            return []                          # not followed yet: the window starts with what comes in
        return self._put(channel, msg_id, OWN)[0]

    def _put(self, channel: str, msg_id: int, item) -> tuple[list, bool]:
        last = self.last.get(channel)
        if last is None:                       # first sight of a channel: start here
            self.last[channel] = msg_id
            return ([] if item is OWN else [item]), False
        held = self.held.get(channel)
        if msg_id <= last or (held and msg_id in held):
            if item is not OWN:
                self.duplicates += 1
            return [], bool(held)
        if msg_id != last + 1:
            self.held.setdefault(channel, {})[msg_id] = item
            return [], True
        self.last[channel] = msg_id
        ready = [] if item is OWN else [item]
        ready += self._flush(channel)
        return ready, bool(self.held.get(channel))

    def cover(self, channel: str, upto: int) -> list:
        """The server says every id <= ``upto`` it did not give us is gone for good:
        hand over what is held up to there, in order, and move the window past it."""
        last = self.last.get(channel)
        if last is None or upto <= last:
            return []
        held = self.held.get(channel, {})
        ready = [held.pop(i) for i in sorted(i for i in held if i <= upto)]   # in hand: still delivered
        self.last[channel] = upto
        ready = [m for m in ready if m is not OWN]
        return ready + self._flush(channel)

    def page(self, channel: str, msgs, first: int | None, upto: int | None) -> list:
        """A server page (sync reply, or a heartbeat's pushes with its ack) for one channel:
        ids before ``first`` are gone, ``msgs`` are what it holds, and ids up to ``upto``
        not among them are gone.  Returns what is now deliverable, in order."""
        ready = self.jump(channel, first) if first is not None else []
        for msg in msgs:
            ready += self.accept(msg)[0]
        if upto is not None:
            ready += self.cover(channel, upto)
        return ready

    def jump(self, channel: str, first: int) -> list:
        """The server's oldest available id is ``first``: ids before it are gone for good."""
        return self.cover(channel, first - 1)

    def gap(self, channel: str) -> bool:
        """Are ids held beyond a hole (a sync is needed)?"""
        return bool(self.held.get(channel))

    def behind(self, channel: str, head: int) -> bool:
        last = self.last.get(channel)
        return last is not None and last < head

    def snapshot(self) -> dict:
        return dict(self.last)

    def _flush(self, channel: str) -> list:
        held = self.held.get(channel)
        ready = []
        while held:
            nxt = held.pop(self.last[channel] + 1, None)
            if nxt is None:
                break
            if nxt is not OWN:
                ready.append(nxt)
            self.last[channel] += 1
        if not held:
            self.held.pop(channel, None)
        return ready
