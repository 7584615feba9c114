"""A lazy deadline heap: which of many records' deadlines have passed, without a heap entry
per refresh.

A broker's sessions and a router's presence entries each have a deadline that
moves later on every request or heartbeat, and a sweep must find the ones
whose deadline passed without scanning them all.  Removing or updating a heap
entry is O(n), so entries are left in place and checked when they come due:
each record carries the ``due`` of its one live entry, an entry whose due is
not its record's (superseded) or whose record is gone is skipped, and one that
comes due for a record active since is pushed again at the record's current
deadline.  A new entry is pushed only when a deadline moves earlier, so a
heartbeat does not add an entry per session each time.  No clock: callers
pass ``now``.
"""
from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any


class DeadlineHeap:
    """Keys whose record's deadline passed.  ``record(key)`` is the key's record (an object
    with a writable ``due``, None at first) or None when it is gone; ``deadline(record)`` its
    current deadline."""

    def __init__(self, record: Callable[[Any], Any], deadline: Callable[[Any], float]) -> None:
        self._record, self._deadline = record, deadline
        self._heap: list[tuple[float, int, Any]] = []   # (due, seq, key): one live entry per record
        self._seq = itertools.count()           # ties: keys need not be comparable

    def __len__(self) -> int:
        return len(self._heap)

    def track(self, key: Any, record: Any) -> None:
        """Make sure the heap looks at ``key`` by its record's deadline: a new entry only when
        there is none or the deadline moved earlier (a later one is found when the live entry
        comes due)."""
        deadline = self._deadline(record)
        if record.due is None or deadline < record.due:
            self._push(key, record, deadline)

    def _push(self, key: Any, record: Any, deadline: float) -> None:
        record.due = deadline
        heapq.heappush(self._heap, (deadline, next(self._seq), key))

    def expired(self, now: float, budget: int) -> list[Any]:
        """Keys whose deadline is ``now`` or earlier, looking at ``budget`` heap entries at
        most (a sweep never stalls the loop)."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now and budget > 0:
            due, _seq, key = heapq.heappop(heap)
            budget -= 1
            record = self._record(key)
            if record is None or record.due != due:
                continue                        # gone, or superseded by an earlier entry
            deadline = self._deadline(record)
            if deadline <= now:
                out.append(key)
            else:                               # active since: look again at its new deadline
                self._push(key, record, deadline)
        return out
