"""The one request dispatcher every node uses: decode, validate, route by table, contain failures.

A frame holds one request map or an array of them.  Each request's type
is looked up, it passes the optional ``guard`` (the broker's and relay's
session check), its fields are validated against the schema table
(nodes/protocol/wire.py), and it is handed
to ``handlers[t](ctx, msg, now)``; the handler returns a reply map, or
None when the reply comes later.  *Any* exception a handler raises becomes
an error reply for that request alone -- ``ProtocolError`` its own code,
anything else ``INTERNAL`` -- and the rest of the frame is still served.
Tracebacks are logged at most once a minute per (type, exception class),
so a client repeating a request that trips a bug cannot flood the log.
A frame that cannot be decoded (wire: malformed, nested too deep, too many
arrays and maps) gets one BAD_FRAME reply and a sampled ``refused`` event.

A Dispatcher may take a ``fast`` decoder (the broker's client socket takes
fastpath.HotRequests, see ``hot_requests``): a frame it returns maps for is
served from them -- guard, count, handler, in the same order -- without the
Python decode and validation, since it only returns maps that decode and
validate exactly so here; for anything else it returns None and the frame
takes the path above, which words and counts every refusal.

PUB frames go through the same kind of table (``PubDispatcher``): decoded,
each map validated against its publisher's schema (nodes/protocol/schema.py
``PUB_FRAMES``) and routed by ``t`` to ``handlers[t](msg)``; a frame that
breaks its schema, or cannot be decoded, is dropped (there is no one to answer;
logged sampled), and a handler's failure costs that map alone.
"""
from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from fastpath import HotRequests
from nodes.protocol import schema, wire
from nodes.protocol.wire import Msg
from nodes.runtime.logs import events

log = logging.getLogger(__name__)

TRACE_EVERY = 60.0             # seconds between two tracebacks of the same failure

# (ctx, request, now) -> reply or None; ctx is the routing id (bytes), or whatever the node's guard
# returns (the broker's Session, ...): each node's handlers take their own, hence Any
Handler = Callable[[Any, Msg, float], "Msg | None"]
Guard = Callable[[bytes, str, Msg, float], Any]          # (ident, t, msg, now) -> ctx, or ProtocolError
Decode = Callable[[bytes, int, int], list[Msg]]         # (frame, max_len, max_items) -> maps
FastDecode = Callable[[bytes, int, int], "list[Msg] | None"]  # frame's valid maps, or None: the Python path
FailureKey = tuple[str, str]                            # (request type, exception class)


def hot_requests(schemas: wire.Schemas, limits: Mapping[str, int] | None) -> FastDecode | None:
    """fastpath.HotRequests for a table whose ``send``/``hb``/``sync`` are the client ones it
    was written for (schema.CLIENT_REQUESTS), with the same bound limits; else None."""
    if any(schemas.get(t) != schema.CLIENT_REQUESTS[t] for t in ("send", "hb", "sync")):
        return None
    bound = limits or {}
    fast: FastDecode = HotRequests(bound.get("max_text", -1), bound.get("max_fragments", -1),
                                   bound.get("max_channels", -1))
    return fast


class FailureLog:
    """Log the first traceback of each failure kind per window; count the rest."""

    def __init__(self, every: float = TRACE_EVERY) -> None:
        self.every = every
        self.last: dict[FailureKey, tuple[float, int]] = {}   # key -> (time logged, suppressed since)
        self.total = 0

    def failed(self, key: FailureKey, now: float) -> None:
        self.total += 1
        logged, suppressed = self.last.get(key, (None, 0))
        if logged is None or now - logged >= self.every:
            more = f" ({suppressed} more since the last report)" if suppressed else ""
            log.exception("request %s failed%s", key[0], more)
            self.last[key] = (now, 0)
        else:
            self.last[key] = (logged, suppressed + 1)


class Dispatcher:
    def __init__(self, schemas: wire.Schemas, handlers: Mapping[str, Handler], guard: Guard | None = None,
                 decode: Decode = wire.unpack_many, limits: Mapping[str, int] | None = None,
                 fast: FastDecode | None = None) -> None:
        missing = set(schemas) - set(handlers)
        if missing:
            raise ValueError(f"no handler for {sorted(missing)}")
        self.schemas = schemas
        self.validate = wire.Validator(schemas, limits).validate    # ``limits``: the named ones bound
        self.handlers = handlers
        self.guard = guard                      # (ident, t, msg, now) -> ctx, or raises ProtocolError
        self.decode = decode                    # (frame, max_len, max_items) -> [map], or ProtocolError
        self.fast = fast                        # (frame, max_len, max_items) -> [valid map], or None
        self.failures = FailureLog()
        self.requests: collections.Counter[str] = collections.Counter()   # served, by type (a metric)
        self.invalid: collections.Counter[tuple[str, str]] = collections.Counter()  # (type, code) -> refused

    def frame(self, ident: bytes, frame: bytes, now: float, reply: Callable[[bytes, Msg], None], max_len: int,
              max_items: int = 1024) -> None:
        """Serve every request of one frame; ``reply(ident, map)`` gets each answer."""
        if self.fast is not None:
            valid = self.fast(frame, max_len, max_items)
            if valid is not None:
                for msg in valid:
                    result = self.one(ident, msg, now, True)
                    if result is not None:
                        reply(ident, result)
                return
        try:
            msgs = self.decode(frame, max_len, max_items)
        except wire.ProtocolError as exc:
            events.refused(exc.code, t="frame", why=exc.msg)      # sampled: one line per window
            reply(ident, wire.error_from(None, exc))
            return
        for msg in msgs:
            result = self.one(ident, msg, now)
            if result is not None:
                reply(ident, result)

    def one(self, ident: bytes, msg: Msg, now: float, valid: bool = False) -> Msg | None:
        """Serve one decoded request: its reply map, or None (answered later).  ``valid``: the
        fast decoder has validated it already (the guard still runs first)."""
        rid = wire.request_rid(msg)
        t = msg.get("t")
        try:
            if type(t) is not str or t not in self.schemas:
                raise wire.ProtocolError(wire.Err.BAD_TYPE, f"unknown message type {t!r}")
            # the session first: a request without a valid sid is NOT_LOGGED_IN, whatever else it lacks
            ctx = ident if self.guard is None else self.guard(ident, t, msg, now)
            if not valid:
                try:
                    self.validate(msg)
                except wire.ProtocolError as exc:
                    self.invalid[(t, exc.code)] += 1
                    raise
            self.requests[t] += 1
            return self.handlers[t](ctx, msg, now)
        except wire.ProtocolError as exc:
            events.refused(exc.code, t=t if type(t) is str else "?")
            return wire.error_from(rid, exc)
        except Exception as exc:                                   # a bug: contain it
            self.failures.failed((t if type(t) is str else "?", type(exc).__name__), now)
            return wire.error(rid, wire.Err.INTERNAL, "internal error; the outcome is unknown, "
                              "retry with the same ctime")


class PubDispatcher:
    """PUB frames of one publisher type: decode, validate each map by its kind, route by table.

    ``handlers`` maps a kind to ``handler(msg)``; kinds without one are counted in ``ignored``
    and skipped (a subscriber takes what it needs of a publisher's frames).  ``fallback``, when
    given, gets every map of a kind without a handler instead -- a subscriber still written as
    one callable; the maps of kinds in the schema are validated before it sees them too.
    """

    def __init__(self, schemas: wire.Schemas, handlers: Mapping[str, Callable[[Msg], None]],
                 fallback: Callable[[Msg], None] | None = None, source: str = "publisher",
                 clock: Callable[[], float] = time.monotonic) -> None:
        unknown = set(handlers) - set(schemas)
        if unknown:
            raise ValueError(f"no schema for PUB frames {sorted(unknown)} of a {source}")
        self.handlers = handlers
        self.fallback = fallback
        self.source = source
        self.clock = clock                      # read only when a handler fails (the log's window)
        self.validator = wire.Validator(schemas)
        self.known = frozenset(schemas)
        self.failures = FailureLog()
        self.received: collections.Counter[str | None] = collections.Counter()   # routed, by kind (a metric)
        self.ignored: collections.Counter[str] = collections.Counter()    # no handler, by kind
        self.refused: collections.Counter[str | None] = collections.Counter()    # broke the schema, by kind

    def frame(self, frame: bytes, max_len: int, max_items: int = 1 << 20) -> None:
        try:
            msgs = wire.unpack_internal(frame, max_len, max_items)
        except wire.ProtocolError as exc:                     # no one to answer; sampled
            events.emit("bad_frame", self.source, logging.WARNING, why=exc.msg)
            return
        for msg in msgs:
            self.one(msg)

    def one(self, msg: Msg) -> None:
        t = msg.get("t")
        handler = self.handlers.get(t) if type(t) is str else None
        if handler is None:
            if self.fallback is None:
                self.ignored[t if type(t) is str else "?"] += 1
                return
            handler = self.fallback
        try:
            if t in self.known:
                self.validator.validate(msg)
        except wire.ProtocolError as exc:
            self.refused[t] += 1
            if self.refused[t] == 1 or self.refused[t] % 1000 == 0:
                log.warning("PUB frame %r from a %s dropped (%d so far): %s", t, self.source,
                            self.refused[t], exc)
            return
        self.received[t] += 1
        try:
            handler(msg)
        except Exception as exc:                                   # a bug: contain it
            self.failures.failed((f"PUB {t}", type(exc).__name__), self.clock())
