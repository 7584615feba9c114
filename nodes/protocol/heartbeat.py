"""Adaptive heartbeat intervals and the offline deadline of a session (no I/O).

Initial interval by network type; after that, from the last two observed
intervals iv1, iv2 (oldest first): iv3 = k * (iv1 + iv2) / 2 with k = 0.8 if
iv1 > iv2 else 1.2, clamped to the configured bounds.  A session with no
heartbeat for ``session_timeout_factor`` intervals is offline.
"""
from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

NETWORKS = ("wired", "wifi", "4g", "3g", "2g")

# the topology's heartbeat section (nodes/cluster/topology.py DEFAULT_HEARTBEAT): seconds by name
HeartbeatConfig = Mapping[str, float]


def initial_interval(cfg: HeartbeatConfig, net: Any) -> float:
    """Interval for a network type; an unknown type gets the ``default`` interval.  ``net`` is
    whatever the frame carried (any msgpack value: the router's schema says "any")."""
    return float(cfg[net] if net in NETWORKS else cfg["default"])


def next_interval(cfg: HeartbeatConfig, net: Any, times: Sequence[float]) -> float:
    """The interval to answer after heartbeats at ``times`` (ascending, last 4 kept)."""
    if len(times) < 3:
        return initial_interval(cfg, net)
    iv1 = times[-2] - times[-3]
    iv2 = times[-1] - times[-2]
    k = 0.8 if iv1 > iv2 else 1.2
    return min(float(cfg["max"]), max(float(cfg["min"]), k * (iv1 + iv2) / 2))


class Beat:
    """Heartbeat state of one (uin, device) session at the router."""

    __slots__ = ("broker", "net", "times", "interval", "deadline", "due")

    def __init__(self, broker: str, net: Any, now: float, cfg: HeartbeatConfig) -> None:
        self.broker = broker
        self.net = net
        self.times: collections.deque[float] = collections.deque([now], maxlen=4)
        self.interval = initial_interval(cfg, net)
        self.deadline = now + cfg["session_timeout_factor"] * self.interval
        self.due: float | None = None           # the router's live heap entry for it (RouterCore)

    def beat(self, now: float, net: Any, cfg: HeartbeatConfig) -> float:
        if net != self.net:                     # a new network starts the adaptation over
            self.net = net
            self.times.clear()
        self.times.append(now)
        self.interval = next_interval(cfg, self.net, self.times)
        self.deadline = now + cfg["session_timeout_factor"] * self.interval
        return self.interval
