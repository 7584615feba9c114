"""The budget of connections that have not logged in: requests, reply bytes, time to log in.

Why: anyone who can reach a broker's client endpoint may connect and send
requests without a token.  Each is answered (``NOT_LOGGED_IN``, ``BAD_TYPE``
echoing the type it got, ...) and a peer that never reads lets those
answers pile up in the broker's memory (issue 23.2: 20 such connections
took a broker from 44 MB to 936 MB).  A logged-in session has its rate,
in-flight and output bounds; a routing id with no session gets this one:

- ``rate``/``burst``: a token bucket per routing id; every reply to it costs
  a token and a frame that arrives with no token left is dropped unread;
- ``reply_bytes``: bytes of replies it may get before it logs in, in all;
- ``window``: seconds from its first frame to log in; later frames are
  dropped unread until it has been silent that long and is forgotten.

Dropped frames and replies are counted, never answered.  ZeroMQ tells a
ROUTER nothing when a peer goes (no disconnect event without draft APIs),
so the state of routing ids is bounded by time (forgotten after ``window``
seconds of silence) and by count (``max_idents``, least recently heard
first).  No I/O and no clock: callers pass ``now``.
"""
from __future__ import annotations

import collections

MAX_IDENTS = 65536             # routing ids with no session remembered at once


class _Peer:
    __slots__ = ("tokens", "refilled", "first", "last", "bytes_left")

    def __init__(self, burst, reply_bytes, now):
        self.tokens, self.refilled = float(burst), now
        self.first = self.last = now
        self.bytes_left = reply_bytes


class PreLoginBudget:
    def __init__(self, rate: float, burst: float, reply_bytes: int, window: float,
                 max_idents: int = MAX_IDENTS):
        self.rate, self.burst = float(rate), float(burst)
        self.reply_bytes = int(reply_bytes)
        self.window = float(window)
        self.max_idents = max_idents
        # ident -> _Peer, least recently heard first
        self.peers: collections.OrderedDict[bytes, _Peer] = collections.OrderedDict()
        self.dropped: collections.Counter[str] = collections.Counter()   # what was dropped unanswered, by why

    def __len__(self) -> int:
        return len(self.peers)

    def _peer(self, ident, now) -> _Peer:
        peer = self.peers.get(ident)
        if peer is not None and now - peer.last >= self.window:
            del self.peers[ident]                   # silent long enough: a new start
            peer = None
        if peer is None:
            peer = self.peers[ident] = _Peer(self.burst, self.reply_bytes, now)
            while len(self.peers) > self.max_idents:
                self.peers.popitem(last=False)
                self.dropped["forgotten"] += 1
        else:
            self.peers.move_to_end(ident)
        peer.last = now
        peer.tokens = min(self.burst, peer.tokens + (now - peer.refilled) * self.rate)
        peer.refilled = now
        return peer

    def admit(self, ident, now: float) -> bool:
        """A frame from a routing id with no session: serve it (True) or drop it unread."""
        peer = self._peer(ident, now)
        if now - peer.first >= self.window:
            why = "late"                            # did not log in in time
        elif peer.bytes_left <= 0:
            why = "bytes"
        elif peer.tokens < 1.0:
            why = "rate"
        else:
            return True
        self.dropped[why] += 1
        return False

    def charge(self, ident, nbytes: int, now: float) -> bool:
        """A reply of ``nbytes`` to a routing id with no session: send it (True) or drop it."""
        peer = self._peer(ident, now)
        if peer.tokens < 1.0 or nbytes > peer.bytes_left:
            self.dropped["reply"] += 1
            return False
        peer.tokens -= 1.0
        peer.bytes_left -= nbytes
        return True

    def forget(self, ident) -> None:
        """It has a session now: its session's bounds apply."""
        self.peers.pop(ident, None)

    def prune(self, now: float) -> int:
        """Forget routing ids silent for ``window`` seconds; return how many."""
        n = 0
        while self.peers:
            ident, peer = next(iter(self.peers.items()))
            if now - peer.last < self.window:
                break
            del self.peers[ident]
            n += 1
        return n
