"""Ask many nodes for their ``status`` at once, over their internal rpc endpoints.

Used by the operator's tools (nodes/ops/admin.py: status, round trips) and by a
node asking its peers (a logic node starting checks whether it joins a running
mesh): kept on the runtime floor so that a node does not import the operator's
client for it.  A node whose rpc port refuses TCP connections is down at once
(a stopped mesh answers in milliseconds); the others share the whole timeout, so
one busy node is not reported down because those asked before it were slow.
"""
from __future__ import annotations

import errno
import itertools
import select
import socket
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import zmq

from nodes.protocol import wire
from nodes.runtime.ports import Msg

if TYPE_CHECKING:
    from nodes.runtime.curve import Identity

Rounds = dict[str, tuple["Msg | None", list[float]]]   # id -> (last status map or None, round trips)


def status_rounds(ctx: zmq.Context[zmq.Socket[bytes]], identity: Identity, endpoints: Mapping[str, str], rounds: int,
                  timeout: float, max_frame: int, rids: Iterator[int] | None = None) -> Rounds:
    """{id: (last status map or None, [round trip of each answered request])}, in parallel.

    ``endpoints``: {id: rpc endpoint}; ``identity``: whose CURVE keys connect
    (nodes/runtime/curve.py); each node gets its next request when the last is
    answered, up to ``rounds``; ``max_frame``: the topology's internal frame limit; ``rids``: the
    request ids to use (an iterator)."""
    rids = itertools.count(1) if rids is None else rids
    ids = list(endpoints)
    out: Rounds = {n: (None, []) for n in ids}
    listening = probe_tcp(endpoints, min(timeout, 2.0))
    socks: dict[str, zmq.Socket[bytes]] = {}
    poller = zmq.Poller()
    sent: dict[str, tuple[int, float]] = {}
    try:
        for node_id in ids:
            if not listening.get(node_id):
                continue
            sock = socks[node_id] = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            identity.connect(sock, endpoints[node_id])
            sent[node_id] = _send_status(sock, rids)
            poller.register(sock, zmq.POLLIN)
        by_sock = {s: n for n, s in socks.items()}
        deadline = time.monotonic() + timeout
        pending = set(socks)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for sock, _ in poller.poll(int(left * 1000) + 1):
                node_id = by_sock[sock]
                try:
                    reply = wire.unpack(sock.recv(zmq.NOBLOCK), max_frame)
                except (zmq.Again, wire.ProtocolError):
                    continue
                rid, t0 = sent[node_id]
                if reply.get("rid") not in (None, rid):      # a late answer to an earlier round
                    continue
                last, rtts = out[node_id]
                if reply.get("t") == "status":
                    out[node_id] = (reply, rtts + [time.monotonic() - t0])
                if reply.get("t") != "status" or len(out[node_id][1]) >= rounds:
                    pending.discard(node_id)
                else:
                    sent[node_id] = _send_status(sock, rids)
    finally:
        for sock in socks.values():
            sock.close(0)
    return out


def status_all(ctx: zmq.Context[zmq.Socket[bytes]], identity: Identity, endpoints: Mapping[str, str], timeout: float,
               max_frame: int, rids: Iterator[int] | None = None) -> dict[str, Msg | None]:
    """{id: status map, or None if it did not answer within ``timeout``}."""
    return {n: reply for n, (reply, _rtts) in
            status_rounds(ctx, identity, endpoints, 1, timeout, max_frame, rids).items()}


def _send_status(sock: zmq.Socket[bytes], rids: Iterator[int]) -> tuple[int, float]:
    rid = next(rids)
    t0 = time.monotonic()
    sock.send(wire.pack({"t": "status", "rid": rid}))
    return rid, t0


def probe_tcp(endpoints: Mapping[str, str], timeout: float) -> dict[str, bool]:
    """{key: True if something accepts TCP connections at the tcp:// endpoint}, all in parallel."""
    out: dict[str, bool] = {}
    pending: dict[socket.socket, str] = {}
    for key, ep in endpoints.items():
        host, _, port = ep[len("tcp://"):].rpartition(":")
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(host.strip("[]"), int(port),
                                                              type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, proto)
        except (OSError, ValueError):
            out[key] = False
            continue
        sock.setblocking(False)
        err = sock.connect_ex(addr)
        if err in (0, errno.EINPROGRESS):
            pending[sock] = key
        else:
            out[key] = False
            sock.close()
    deadline = time.monotonic() + timeout
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        _, writable, _ = select.select([], list(pending), [], left)
        for sock in writable:
            out[pending.pop(sock)] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            sock.close()
    for sock, key in pending.items():         # no answer in time: leave it to the rpc timeout
        out[key] = True
        sock.close()
    return out
