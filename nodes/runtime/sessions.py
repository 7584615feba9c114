"""Client sessions of a broker or relay: who is logged in on which connection, and for how long.

One session per (uin, device) per node.  A login returns a random ``sid``
that every later request must carry: a ZeroMQ routing id can be chosen by
whoever connects, so a new connection presenting the routing id of a
disconnected session would otherwise inherit it.  A session lives while
requests come (any request, not only heartbeats) and ends after
``factor`` x its heartbeat interval of silence; a request for a session
that ended gets NOT_LOGGED_IN, with the reason when the node still
remembers it (``kicked``: replaced, too_slow, expired).  No I/O and no
clock reads here: callers pass ``now`` (monotonic seconds).
"""
from __future__ import annotations

import collections
import heapq
import secrets

from nodes.protocol import wire

REMEMBER_GONE = 10_000          # ended sessions whose reason a late request can still learn


class Session:
    __slots__ = ("ident", "uin", "device", "net", "interval", "sid", "last_seen", "touched",
                 "groups", "ended", "inflight", "due")

    def __init__(self, ident, uin, device, net, interval, now):
        self.ident, self.uin, self.device, self.net = ident, uin, device, net
        self.interval = interval
        self.sid = secrets.randbits(63) + 1
        self.last_seen = self.touched = now
        self.groups = None                      # the broker's fragment groups, made on first use
        self.ended = None                       # why the session ended, once it has
        self.inflight = 0                       # its requests waiting for other nodes (bounded)
        self.due = None                         # the deadline of its live heap entry (SessionTable)


class SessionTable:
    def __init__(self, factor: float):
        self.factor = factor
        self.by_ident = {}                      # ident -> Session
        self.by_key = {}                        # (uin, device) -> Session
        self.by_uin = {}                        # uin -> {ident: Session}
        self.gone = collections.OrderedDict()   # ident -> reason, newest last
        self.ended = collections.Counter()      # reason -> sessions ended for it
        self._deadlines = []                    # heap of (deadline, seq, session): one live entry per
        #                                         session (its ``due``); superseded ones are skipped
        self._seq = 0

    def __len__(self) -> int:
        return len(self.by_ident)

    def open(self, ident, uin, device, net, interval, now) -> Session:
        """A new session on ``ident`` (the caller has ended what it replaces)."""
        session = Session(ident, uin, device, net, interval, now)
        self.by_ident[ident] = session
        self.by_key[(uin, device)] = session
        self.by_uin.setdefault(uin, {})[ident] = session
        self.gone.pop(ident, None)
        self._schedule(session)
        return session

    def check(self, ident, sid, now) -> Session:
        """The live session of a request, refreshed; NOT_LOGGED_IN otherwise."""
        session = self.by_ident.get(ident)
        if session is None or sid != session.sid:
            reason = self.gone.get(ident) if session is None else None
            extra = {"reason": reason} if reason else {}
            why = f" (session ended: {reason})" if reason else ""
            raise wire.ProtocolError(wire.Err.NOT_LOGGED_IN, f"log in first{why}", **extra)
        session.last_seen = now
        return session

    def end(self, session: Session, reason: str | None = None) -> bool:
        """Forget a session; False if it had already ended."""
        if self.by_ident.get(session.ident) is not session:
            return False
        del self.by_ident[session.ident]
        key = (session.uin, session.device)
        if self.by_key.get(key) is session:
            del self.by_key[key]
        idents = self.by_uin.get(session.uin)
        if idents is not None:
            idents.pop(session.ident, None)
            if not idents:
                del self.by_uin[session.uin]
        session.ended = reason or "logout"
        if reason:
            self.ended[reason] += 1
            self.gone[session.ident] = reason
            while len(self.gone) > REMEMBER_GONE:
                self.gone.popitem(last=False)
        return True

    def deadline(self, session: Session) -> float:
        return session.last_seen + self.factor * session.interval

    def _schedule(self, session: Session) -> None:
        self._seq += 1
        session.due = self.deadline(session)
        heapq.heappush(self._deadlines, (session.due, self._seq, session))

    def expired(self, now: float, budget: int = 5000) -> list:
        """Sessions silent past their deadline (looked at from the heap, at most ``budget``)."""
        out = []
        heap = self._deadlines
        while heap and heap[0][0] <= now and budget > 0:
            due, _seq, session = heapq.heappop(heap)
            budget -= 1
            if self.by_ident.get(session.ident) is not session or due != session.due:
                continue                                # ended, or superseded by an earlier entry
            if self.deadline(session) <= now:
                out.append(session)
            else:
                self._schedule(session)                 # it was active since: look again later
        return out

    def reschedule(self, session: Session) -> None:
        """The interval changed: make sure the heap looks at the session in time.  Only a
        deadline that moved earlier needs a new entry (a later one is found when the live entry
        comes due), so a heartbeat does not add an entry per session each time."""
        if self.deadline(session) < session.due:
            self._schedule(session)
