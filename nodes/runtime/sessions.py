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
import secrets
from typing import Any

from nodes.protocol import wire
from nodes.runtime.deadlines import DeadlineHeap

REMEMBER_GONE = 10_000          # ended sessions whose reason a late request can still learn


class Session:
    __slots__ = ("ident", "uin", "device", "net", "interval", "sid", "last_seen", "touched",
                 "groups", "retries", "ended", "inflight", "due")

    def __init__(self, ident: bytes, uin: int, device: int, net: str | None, interval: float, now: float) -> None:
        self.ident, self.uin, self.device, self.net = ident, uin, device, net
        self.interval = interval
        self.sid = secrets.randbits(63) + 1
        self.last_seen = self.touched = now
        # the broker's own per-session state (nodes/broker/limits.py): Any, since the runtime may
        # not import the broker (tests/test_layering.py) and the relay leaves both None
        self.groups: Any = None                 # the broker's FragmentGroups, made on first use
        self.retries: Any = None                # the broker's RetryWindow, made on first send
        self.ended: str | None = None           # why the session ended, once it has
        self.inflight = 0                       # its requests waiting for other nodes (bounded)
        self.due: float | None = None           # the deadline of its live heap entry (SessionTable)


class SessionTable:
    def __init__(self, factor: float) -> None:
        self.factor = factor
        self.by_ident: dict[bytes, Session] = {}                 # ident -> Session
        self.by_key: dict[tuple[int, int], Session] = {}         # (uin, device) -> Session
        self.by_uin: dict[int, dict[bytes, Session]] = {}        # uin -> {ident: Session}
        self.gone: collections.OrderedDict[bytes, str] = collections.OrderedDict()   # ident -> reason, newest last
        self.ended: collections.Counter[str] = collections.Counter()   # reason -> sessions ended for it
        self._deadlines = DeadlineHeap(self._live, self.deadline)     # one live entry per session

    def __len__(self) -> int:
        return len(self.by_ident)

    def open(self, ident: bytes, uin: int, device: int, net: str | None, interval: float, now: float) -> Session:
        """A new session on ``ident`` (the caller has ended what it replaces)."""
        session = Session(ident, uin, device, net, interval, now)
        self.by_ident[ident] = session
        self.by_key[(uin, device)] = session
        self.by_uin.setdefault(uin, {})[ident] = session
        self.gone.pop(ident, None)
        self._deadlines.track(session, session)
        return session

    def check(self, ident: bytes, sid: object, now: float) -> Session:
        """The live session of a request, refreshed; NOT_LOGGED_IN otherwise (``sid``: whatever
        the request carried, compared as is)."""
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

    def _live(self, session: Session) -> Session | None:
        return session if self.by_ident.get(session.ident) is session else None

    def expired(self, now: float, budget: int = 5000) -> list[Session]:
        """Sessions silent past their deadline (looked at from the heap, at most ``budget``)."""
        return self._deadlines.expired(now, budget)

    def reschedule(self, session: Session) -> None:
        """The interval changed: make sure the heap looks at the session in time (a deadline
        that moved earlier gets a new entry, nodes/runtime/deadlines.py)."""
        self._deadlines.track(session, session)
