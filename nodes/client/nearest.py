"""Which broker a client logs in to: the nearest one, measured, remembered, same IDC first.

The client knows a list of brokers, each with its IDC (from the topology,
or given as ``(endpoint, idc)`` pairs).  It measures each with the
broker-local ``ping`` request (answered by the broker process alone, so
the round trip is the network plus that broker's own load), logs in to the
fastest, and remembers the last broker that worked in a small state file
so a restarted client starts there when it is still about as fast as the
best.  When it must fail over it measures again and tries the brokers of
its own IDC (the IDC of the broker it was using) before the others,
fastest first; brokers that did not answer the measurement come last, in
list order, so a partition that also drops pings still finds a way out.

A broker that predates ``ping`` answers ``err BAD_TYPE``: that reply
comes from the broker process too and measures the same round trip.

Ranking is plain data in, order out (``Brokers.rank`` / ``failover``);
``measure`` does the I/O.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import statistics
import time

import zmq

from nodes.protocol import wire
from nodes.runtime import curve

log = logging.getLogger(__name__)

STICKY = 1.5                 # the remembered broker is kept while its rtt <= STICKY x best + SLACK
SLACK = 0.002                # seconds: on loopback every rtt is tiny; noise must not flap the choice


class Brokers:
    """The broker list with each broker's IDC, its measured round trip and the last good one."""

    def __init__(self, brokers, state_file: str | None = None):
        self.endpoints: list = []
        self.idc: dict = {}
        for entry in self._entries(brokers):
            endpoint, idc = (entry, None) if isinstance(entry, str) else tuple(entry)
            if endpoint not in self.idc:
                self.endpoints.append(endpoint)
            self.idc[endpoint] = idc
        if not self.endpoints:
            raise ValueError("at least one broker endpoint is needed")
        self.rtt: dict = {}                          # endpoint -> seconds (measured), absent: no answer
        self.pong: set = set()                      # endpoints that answered with a real pong
        self.state_file = state_file
        self.last_good = self._load()

    @staticmethod
    def _entries(brokers):
        if isinstance(brokers, str):
            return [brokers]
        if hasattr(brokers, "of_type"):                       # a Topology
            return [(curve.client_endpoint(brokers, b.id), b.idc) for b in brokers.of_type("broker")]
        return list(brokers)

    # --- ranking (no I/O) ----------------------------------------------------
    def rank(self) -> list[str]:
        """Login order: the brokers about as fast as the best (rtt <= STICKY x best + SLACK: on a
        LAN the differences are noise) come first -- the remembered one, then list order --, then
        the other measured ones by rtt, then the silent ones (the remembered one first)."""
        measured = [ep for ep in self.endpoints if ep in self.rtt]
        silent = [ep for ep in self.endpoints if ep not in self.rtt]
        if measured:
            bound = STICKY * min(self.rtt[ep] for ep in measured) + SLACK
            near = [ep for ep in measured if self.rtt[ep] <= bound]
            far = sorted((ep for ep in measured if ep not in near), key=self.rtt.__getitem__)
            measured = self._remembered_first(near) + far
        return measured + self._remembered_first(silent)

    def _remembered_first(self, endpoints: list) -> list:
        if self.last_good in endpoints:
            return [self.last_good] + [ep for ep in endpoints if ep != self.last_good]
        return endpoints

    def failover(self, failed: str | None) -> list[str]:
        """Order after losing ``failed``: the brokers that answered the measurement, those of its
        IDC first, fastest first; then the silent ones (its IDC first); ``failed`` itself last."""
        home = self.idc.get(failed)
        ranked = [ep for ep in self.rank() if ep != failed]
        order = []
        for answered in (True, False):
            part = [ep for ep in ranked if (ep in self.rtt) == answered]
            order += [ep for ep in part if self.idc[ep] == home] + [ep for ep in part if self.idc[ep] != home]
        return order + ([failed] if failed is not None and failed in self.idc else [])

    # --- memory ----------------------------------------------------------------
    def good(self, endpoint: str) -> None:
        """A login worked here: remember it (also across restarts when there is a state file)."""
        if endpoint == self.last_good:
            return
        self.last_good = endpoint
        if self.state_file:
            tmp = f"{self.state_file}.tmp"
            try:
                os.makedirs(os.path.dirname(os.path.abspath(self.state_file)), exist_ok=True)
                with open(tmp, "w") as f:
                    json.dump({"last_good": endpoint, "saved": time.time(),
                               "rtt_ms": {ep: round(s * 1000, 3) for ep, s in self.rtt.items()}}, f)
                os.replace(tmp, self.state_file)
            except OSError as exc:
                log.warning("cannot save broker state %s: %s", self.state_file, exc)

    def _load(self) -> str | None:
        if not self.state_file:
            return None
        try:
            with open(self.state_file) as f:
                last = json.load(f).get("last_good")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("ignoring unreadable broker state %s: %s", self.state_file, exc)
            return None
        # our own endpoint object: it may carry the broker's CURVE key, the file only its address
        return next((ep for ep in self.endpoints if ep == last), None)

    # --- measuring (I/O) -------------------------------------------------------
    async def measure(self, ctx, timeout: float = 0.5, rounds: int = 3, skip=()) -> dict:
        """Ping every broker (but ``skip``: one just lost, not worth waiting for) at once,
        ``rounds`` times each; keep the median round trip of those that answered within
        ``timeout``.  Returns {endpoint: seconds}."""
        targets = [ep for ep in self.endpoints if ep not in skip]
        results = await asyncio.gather(*(ping(ctx, ep, timeout, rounds) for ep in targets))
        self.rtt = {}
        for ep, (rtts, pong) in zip(targets, results):
            if rtts:
                self.rtt[ep] = statistics.median(rtts)
            if pong:
                self.pong.add(ep)
        return dict(self.rtt)


async def ping(ctx, endpoint: str, timeout: float, rounds: int) -> tuple[list, bool]:
    """Round trips of ``rounds`` pings on a fresh DEALER (stops at the first unanswered one)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    rtts, pong = [], False
    try:
        curve.connect_client(sock, endpoint)
        for rid in range(1, rounds + 1):
            t0 = time.monotonic()
            await sock.send(wire.pack({"t": "ping", "rid": rid}))
            reply = await _reply_to(sock, rid, t0 + timeout)
            if reply is None:
                break
            rtts.append(time.monotonic() - t0)
            pong = pong or reply.get("t") == "pong"
    finally:
        sock.close(0)
    return rtts, pong


async def _reply_to(sock, rid: int, deadline: float) -> dict | None:
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not await sock.poll(left * 1000):
            return None
        try:
            maps = wire.unpack_many(await sock.recv(), 1 << 20, 64)
        except wire.ProtocolError:
            continue
        for msg in maps:
            if msg.get("rid") == rid:
                return msg
