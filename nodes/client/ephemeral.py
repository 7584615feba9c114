"""Typing and presence on the client side: pure timing rules, no I/O.

- **Typing**: the broker allows about one ``typing`` per 2 s per user (more is
  RATE_LIMITED and goes nowhere), and a chat shows "typing…" for a few seconds
  after each notice. So a client sends at most one per channel per ``every``
  seconds however often the user presses keys (``TypingThrottle``).
- **Presence of watched channels**: the server forgets a watcher after its TTL
  (limits.watch_ttl, default 300 s) and a broker change loses nothing on the
  server but may lose pushes in between. So the client renews each watch before
  the TTL and at once after every re-login, and compares the new ``online`` list
  with what it had to tell the application what changed meanwhile (``Watches``).
"""
from __future__ import annotations

DEFAULT_TTL = 300.0          # seconds a server keeps a watcher (limits.watch_ttl)
RENEW_AT = 0.5               # ... renewed after this share of it
TYPING_EVERY = 2.0           # seconds between two typing notices of one channel


class TypingThrottle:
    """At most one typing notice per channel per ``every`` seconds."""

    def __init__(self, every: float = TYPING_EVERY):
        self.every = every
        self._last: dict[str, float] = {}

    def ready(self, channel: str, now: float) -> bool:
        """True (and counted as sent) when a notice for ``channel`` may go out at ``now``."""
        last = self._last.get(channel)
        if last is not None and now - last < self.every:
            return False
        self._last[channel] = now
        return True


class Watches:
    """The channels a client watches: who is online in each, and when to renew the watch."""

    def __init__(self, ttl: float = DEFAULT_TTL):
        self.ttl = ttl
        self.online: dict[str, set[int]] = {}
        self._due: dict[str, float] = {}

    def watched(self) -> list[str]:
        return sorted(self._due)

    def started(self, channel: str, online: list[int], now: float) -> list[dict]:
        """A ``watch`` reply came at ``now``: the online set is its list; returns the presence
        events of what changed since the last one (none on a first watch)."""
        before = self.online.get(channel)
        after = set(online)
        self.online[channel] = after
        self._due[channel] = now + self.ttl * RENEW_AT
        if before is None:
            return []
        return ([presence(channel, uin, True) for uin in sorted(after - before)]
                + [presence(channel, uin, False) for uin in sorted(before - after)])

    def stopped(self, channel: str) -> None:
        self.online.pop(channel, None)
        self._due.pop(channel, None)

    def pushed(self, channel: str, uin: int, online: bool) -> None:
        """A ``presence`` push: update the set of a watched channel (others are not kept)."""
        members = self.online.get(channel)
        if members is None:
            return
        if online:
            members.add(uin)
        else:
            members.discard(uin)

    def renew_all(self) -> None:
        """After a re-login: every watch is due now."""
        for channel in self._due:
            self._due[channel] = 0.0

    def due(self, now: float) -> list[str]:
        """Channels whose watch must be renewed at ``now``."""
        return sorted(ch for ch, at in self._due.items() if at <= now)

    def wait(self, now: float, idle: float = 60.0) -> float:
        """Seconds until the next renewal (``idle`` when nothing is watched)."""
        return max(0.0, min(self._due.values(), default=now + idle) - now)


def presence(channel: str, uin: int, online: bool) -> dict:
    return {"t": "presence", "channel": channel, "uin": uin, "online": online}
