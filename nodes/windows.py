"""Receive-side bookkeeping of a client: per channel, the newest contiguous id it holds.

A pushed or synced message is handed to the application only when it is
the next id of its channel; later ids wait until the gap is filled (by a
sync) or declared unfillable (expired, trimmed, or never assigned).  Ids
at or below the window, or already waiting, are duplicates and dropped.
No I/O: the client library feeds messages in and acts on what comes out.
"""
from __future__ import annotations


class Windows:
    def __init__(self):
        self.last = {}                         # channel -> newest contiguous id held
        self.held = {}                         # channel -> {id: msg} beyond a gap
        self.duplicates = 0

    def watch(self, channel: str, since: int) -> None:
        """Start (or restart) a channel's window at ``since``: ids after it will be delivered."""
        self.last[channel] = since
        self.held.pop(channel, None)

    def accept(self, msg: dict) -> tuple[list, bool]:
        """Take one message; return (messages now deliverable in order, gap open?)."""
        channel, msg_id = msg["channel"], msg["id"]
        last = self.last.get(channel)
        if last is None:                       # first sight of a channel: start here
            self.last[channel] = msg_id
            return [msg], False
        held = self.held.get(channel)
        if msg_id <= last or (held and msg_id in held):
            self.duplicates += 1
            return [], bool(held)
        if msg_id != last + 1:
            self.held.setdefault(channel, {})[msg_id] = msg
            return [], True
        self.last[channel] = msg_id
        ready = [msg]
        ready += self._flush(channel)
        return ready, bool(self.held.get(channel))

    def jump(self, channel: str, first: int) -> list:
        """The server's oldest available id is ``first``: ids before it are gone for good."""
        last = self.last.get(channel)
        if last is None or last >= first - 1:
            return []
        held = self.held.get(channel, {})
        ready = [held.pop(i) for i in sorted(i for i in held if i < first)]   # in hand: still delivered
        self.last[channel] = first - 1
        return ready + self._flush(channel)

    def skip_gap(self, channel: str) -> list:
        """A sync found nothing to fill the gap: move past it to the oldest held id."""
        held = self.held.get(channel)
        if not held:
            return []
        self.last[channel] = min(held) - 1
        return self._flush(channel)

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
            ready.append(nxt)
            self.last[channel] += 1
        if not held:
            self.held.pop(channel, None)
        return ready
