"""The conversation events a client hands to the application, kept per kind and bounded.

Messages have their own queue (``AsyncClient.messages()``): every one matters and
the window logic decides when it is due.  The events here are different -- read
cursors of the user's other devices, receipts, typing, presence, edits and
deletes -- and an application often listens to only some of them.  So each kind
has its own buffer with a cap (the oldest event of a kind is dropped and counted
when nobody reads that kind): a chat that never asks for ``typing`` does not grow
by a typing storm, and one that asks for several kinds gets them in the order
they came.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import AsyncIterator, Callable, Iterable

KINDS = ("read", "receipt", "typing", "presence", "edit", "delete")
DEFAULT_CAP = 1000          # events kept per kind while the application does not read them


class EventQueues:
    """Per kind, a bounded buffer of events ``{"t": kind, ...}``; readers wait on any set of kinds."""

    def __init__(self, cap: int = DEFAULT_CAP, on_event: Callable[[dict], None] | None = None):
        self.cap = cap
        self.on_event = on_event
        self.dropped: collections.Counter[str] = collections.Counter()   # per kind, lost to the cap
        self._buffers: dict[str, collections.deque[tuple[int, dict]]] = {k: collections.deque() for k in KINDS}
        self._order = itertools.count()
        self._changed = asyncio.Event()

    def put(self, event: dict) -> None:
        """Keep ``event`` (its ``t`` is one of ``KINDS``) and wake whoever waits for its kind."""
        buffer = self._buffers[event["t"]]
        if len(buffer) >= self.cap:
            buffer.popleft()
            self.dropped[event["t"]] += 1
        buffer.append((next(self._order), event))
        self._changed.set()
        if self.on_event is not None:
            self.on_event(event)

    def take(self, kinds: Iterable[str]) -> dict | None:
        """The oldest buffered event of any of ``kinds``, or None."""
        best = None
        for kind in kinds:
            buffer = self._buffers[kind]
            if buffer and (best is None or buffer[0][0] < self._buffers[best][0][0]):
                best = kind
        return None if best is None else self._buffers[best].popleft()[1]

    async def get(self, kinds: Iterable[str], timeout: float | None = None) -> dict | None:
        """The next event of any of ``kinds``; None after ``timeout`` seconds."""
        kinds = check_kinds(kinds)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            event = self.take(kinds)
            if event is not None:
                return event
            self._changed.clear()
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return None
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                return None

    async def stream(self, kinds: Iterable[str]) -> AsyncIterator[dict]:
        kinds = check_kinds(kinds)
        while True:
            event = await self.get(kinds)
            if event is not None:
                yield event


def check_kinds(kinds: Iterable[str]) -> tuple[str, ...]:
    """The kinds asked for (all when none); ValueError names an unknown one."""
    chosen = tuple(kinds) or KINDS
    unknown = [k for k in chosen if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown event kind(s) {unknown}; known: {', '.join(KINDS)}")
    return chosen
