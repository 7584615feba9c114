"""The broker's send limits, without I/O: per-user token buckets and fragment-group checks.

Rate: a human sends about one message a second; each uin has a bucket of
``burst`` tokens refilled at ``rate`` per second, one token per message the
owner stores: a send takes a token when it is forwarded and gets it back
(``refund``) when the owner refuses it or answers it as a retry of a message
already stored.  A long text split into fragments costs one token (for its
first fragment): the broker tracks each session's open groups and accepts
their fragments only in order, with the count they started with.

A retry must never be refused for the rate (a refusal says "not stored", and
a client that then sends the text as a new message stores it twice), but a
flood over the rate must not reach the logic nodes.  ``RetryWindow`` tells
them apart without knowing what is stored: a retry repeats a client time the
device used before, so once the owner has said which client time of the
device is its newest (stored or being stored), a send over the rate with a
newer one is a new message, refused at once; an older one is forwarded as a
dedup-only lookup (answered with the original ack, or refused unstored).
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

    def refund(self, uin: int) -> None:
        """Give back a token taken for a send the owner did not store as a new message."""
        bucket = self.buckets.get(uin)
        if bucket is not None:                 # no bucket: already full (pruned)
            bucket[0] = min(self.burst, bucket[0] + 1.0)

    def prune(self, now: float) -> int:
        """Forget full buckets (a full bucket and no bucket are the same); return how many."""
        full = [uin for uin, b in self.buckets.items() if self._level(b, now) >= self.burst]
        for uin in full:
            del self.buckets[uin]
        return len(full)


class RetryWindow:
    """Per session: which client times sent over the rate may be retries, by owning node.

    ``said[owner]``: the device's newest client time that owner stores or is storing, as
    it last said (absent: not said yet, so every send may be a retry); ``sent[owner]``:
    the newest this session forwarded to it (it may not have arrived when the owner
    answered).  One session per (uin, device) in the cluster: once the owner has
    answered, every later send of the device goes through this session, so a client time
    newer than both cannot be stored anywhere.
    """

    __slots__ = ("said", "sent")

    def __init__(self):
        self.said, self.sent = {}, {}

    def may_be_retry(self, owner: str, ctime: int) -> bool:
        said = self.said.get(owner)
        return said is None or ctime <= max(said, self.sent.get(owner, said))

    def forwarded(self, owner: str, ctime: int) -> None:
        if ctime > self.sent.get(owner, -1):
            self.sent[owner] = ctime

    def learn(self, owner: str, newest) -> None:
        """The owner answered with the device's newest client time (None: it did not say)."""
        if newest is not None and newest > self.said.get(owner, -1):
            self.said[owner] = newest


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
