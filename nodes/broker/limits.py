"""The broker's send limits, without I/O: per-user token buckets and fragment-group checks.

Rate: a human sends about one message a second; each uin has a bucket of
``burst`` tokens refilled at ``rate`` per second, one token per message.
A long text split into fragments costs one token (for its first fragment):
the broker tracks each session's open groups and accepts their fragments
only in order, with the count they started with.
"""
from __future__ import annotations

import collections

from nodes.protocol import wire


class TokenBuckets:
    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = float(rate), float(burst)
        self.buckets: dict[int, list[float]] = {}   # uin -> [tokens, last refill time]

    def _level(self, bucket, now) -> float:
        return min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)

    def take(self, uin: int, now: float) -> float:
        """Take a token: 0.0 on success, else the seconds until one is available."""
        bucket = self.buckets.get(uin)
        tokens = self.burst if bucket is None else self._level(bucket, now)
        if tokens >= 1.0:
            self.buckets[uin] = [tokens - 1.0, now]
            return 0.0
        self.buckets[uin] = [tokens, now]
        return (1.0 - tokens) / self.rate

    def prune(self, now: float) -> int:
        """Forget full buckets (a full bucket and no bucket are the same); return how many."""
        full = [uin for uin, b in self.buckets.items() if self._level(b, now) >= self.burst]
        for uin in full:
            del self.buckets[uin]
        return len(full)


class _Group:
    __slots__ = ("count", "ctimes")

    def __init__(self, count, ctime):
        self.count, self.ctimes = count, [ctime]        # client time of each piece accepted, by index


class FragmentGroups:
    """Open fragment groups of one session (a few at most)."""

    MAX_OPEN = 8

    def __init__(self):
        self.open = collections.OrderedDict()  # group id -> _Group

    def check(self, group: int, index: int, count: int, ctime: int) -> tuple[bool, bool]:
        """Is this fragment acceptable next? Returns (charge a token, is a retry).

        A piece already accepted, sent again with its client time, is a retry (the
        owner answers it with its original id): a client that resends a whole group
        from index 0 after an unknown outcome is never refused for it.
        """
        state = self.open.get(group)
        if state is None:
            if index == 0:
                return True, False
            raise wire.ProtocolError(wire.Err.BAD_FRAGMENT, f"fragment {index} of unknown group {group}: "
                                     "send index 0 first, on the same connection")
        if state.count != count:
            raise wire.ProtocolError(wire.Err.BAD_FRAGMENT, f"count {count} differs from the group's "
                                     f"{state.count}")
        if index < len(state.ctimes):
            if state.ctimes[index] == ctime:
                return False, True
            raise wire.ProtocolError(wire.Err.BAD_FRAGMENT, f"fragment {index} of group {group} was sent "
                                     "with another client time")
        if index == len(state.ctimes):
            return False, False
        raise wire.ProtocolError(wire.Err.BAD_FRAGMENT, f"fragment {index} out of order (expected "
                                 f"{len(state.ctimes)})")

    def accept(self, group: int, index: int, count: int, ctime: int) -> None:
        """Record a fragment that passed ``check`` (and the rate limit)."""
        if index == 0:
            self.open[group] = _Group(count, ctime)
            while len(self.open) > self.MAX_OPEN:
                self.open.popitem(last=False)
            return
        state = self.open[group]
        if index == len(state.ctimes):
            state.ctimes.append(ctime)
        self.open.move_to_end(group)
