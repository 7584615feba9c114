"""What a G1k generator counts, shared by the lean (bench/leangen.py) and asyncio (bench/agen.py) ones.

Every message text is ``sender:seq:sent_ns:padding``, so a receiver can tell
a duplicate from a new delivery and both latencies come from the texts and
the send times; nothing is assumed.
"""
from __future__ import annotations

import collections

from .procstat import self_cpu_seconds


class Tally:
    """Counts and latencies of one generator process (``sent_at``: (user, seq) -> ns)."""

    def __init__(self):
        self.sent_at, self.ack_ms, self.deliver_ms = {}, [], []
        self.acked = self.errors = self.dups = self.deliveries = 0
        self.error_codes: collections.Counter = collections.Counter()   # why sends were refused

    def delivered(self, got: set, msg: dict, now: int) -> bool:
        """A pushed message reached the receiver whose ``got`` set this is: True if new."""
        sender, seq, sent, _ = msg["text"].split(":", 3)
        key = (int(sender), int(seq))
        if key in got:
            self.dups += 1
            return False
        got.add(key)
        self.deliveries += 1
        self.deliver_ms.append((now - int(sent)) / 1e6)
        return True

    def answered(self, user: int, msg: dict, now: int) -> None:
        """An ack or an error for one of ``user``'s sends (its rid is the seq)."""
        sent = self.sent_at.pop((user, msg.get("rid")), None)
        if msg["t"] == "ack":
            self.acked += 1
            if sent is not None:
                self.ack_ms.append((now - sent) / 1e6)
        else:
            self.errors += 1
            self.error_codes[str(msg.get("code"))] += 1

    def result(self, expected_deliveries: int, cpu0: float, wall: float) -> dict:
        """What the process reports: counts, latencies, its own CPU."""
        return {"acked": self.acked, "errors": self.errors, "deliveries": self.deliveries,
                "duplicates": self.dups, "error_codes": dict(self.error_codes),
                "expected_deliveries": expected_deliveries,
                "ack_ms": self.ack_ms, "deliver_ms": self.deliver_ms,
                "cpu_s": self_cpu_seconds() - cpu0, "wall_s": wall}
