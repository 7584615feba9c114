"""Operator requests to the nodes' internal ``rpc`` endpoints: status and channel membership.

Used by ``bin/mesh`` and by the tests.  Membership changes carry an admin
token minted from the cluster secret, so only someone holding the secret
file can change who is in a channel.  The internal endpoints admit only the
topology's CURVE keys: these requests go out with the ``admin`` keypair
(nodes/curve.py), made on first use for a local topology.
"""
from __future__ import annotations

import errno
import itertools
import select
import socket
import time

import zmq

from . import auth, curve, wire
from .logs import events
from .node import INTERNAL_MAX_FRAME
from .topology import Topology

CHANNEL_OPS = ("create", "add", "remove", "show")


class AdminError(Exception):
    def __init__(self, code, msg):
        super().__init__(f"{code}: {msg}")
        self.code, self.msg = code, msg


class Admin:
    def __init__(self, topo: Topology, timeout: float = 3.0, ctx: zmq.Context | None = None):
        self.topo = topo
        self.timeout = timeout
        self.ctx = ctx or zmq.Context.instance()
        self._rids = itertools.count(1)
        self._identity = None

    @property
    def identity(self) -> curve.Identity:
        """The admin keypair, read when first needed (CurveError names a missing or open file)."""
        if self._identity is None:
            self._identity = curve.Identity.admin(self.topo)
        return self._identity

    def call(self, node_id: str, msg: dict, timeout: float | None = None) -> dict | None:
        """One request to a node's rpc endpoint; the reply map, or None if no answer in time."""
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            self.identity.connect(sock, self.topo.node(node_id).endpoint("rpc"))
            msg = dict(msg, rid=next(self._rids))
            sock.send(wire.pack(msg))
            if not sock.poll(int((timeout or self.timeout) * 1000)):
                return None
            return wire.unpack(sock.recv(), INTERNAL_MAX_FRAME)
        finally:
            sock.close(0)

    def status(self, node_id: str, timeout: float | None = None) -> dict | None:
        reply = self.call(node_id, {"t": "status"}, timeout)
        return reply if reply and reply.get("t") == "status" else None

    def status_all(self, node_ids, timeout: float | None = None) -> dict:
        """Ask many nodes for their status at once: {id: status map or None}.

        A node whose rpc port refuses the TCP connection is down at once (a
        stopped mesh answers in milliseconds); the others get the whole
        ``timeout`` together, so one busy node is not reported down because
        the nodes asked before it were slow.
        """
        timeout = self.timeout if timeout is None else timeout
        identity = self.identity              # a missing admin key is an error even if all are down
        ids = list(node_ids)
        out = dict.fromkeys(ids)
        listening = probe_tcp({n: self.topo.node(n).endpoint("rpc") for n in ids}, min(timeout, 2.0))
        socks, poller = {}, zmq.Poller()
        try:
            for node_id in ids:
                if not listening.get(node_id):
                    continue
                sock = socks[node_id] = self.ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                identity.connect(sock, self.topo.node(node_id).endpoint("rpc"))
                sock.send(wire.pack({"t": "status", "rid": next(self._rids)}))
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
                        reply = wire.unpack(sock.recv(zmq.NOBLOCK), INTERNAL_MAX_FRAME)
                    except (zmq.Again, wire.ProtocolError):
                        continue
                    if reply.get("t") == "status":
                        out[node_id] = reply
                    pending.discard(node_id)
        finally:
            for sock in socks.values():
                sock.close(0)
        return out

    def channel(self, op: str, name: str, members=(), lifetime: float | None = None) -> dict:
        """create/add/remove/show on the logic node owning the channel (``lifetime``: create only)."""
        if op not in CHANNEL_OPS:
            raise ValueError(f"op must be one of {CHANNEL_OPS}")
        wire.check_channel_name(name)
        token = auth.mint(self.topo.read_secret(), 0, lifetime=300, scope="admin")
        msg = {"t": f"channel_{op}", "auth": token, "channel": name}
        if op != "show":
            msg["members"] = sorted(set(members))
        if lifetime is not None:
            msg["lifetime"] = lifetime
        reply, owner = None, None
        for owner in self._servers(name):
            reply = self.call(owner, msg)
            if reply is not None and reply.get("code") == wire.Err.WRONG_OWNER and reply.get("leader"):
                owner = reply["leader"]                  # a replica names its shard's leader
                reply = self.call(owner, msg)
            if reply is not None and reply.get("code") != wire.Err.WRONG_OWNER:
                break
        if reply is None:
            raise AdminError(wire.Err.UNAVAILABLE, f"logic node {owner} did not answer")
        if reply.get("t") == "err":
            events.refused(reply["code"], op=op, channel=name)
            raise AdminError(reply["code"], reply["msg"])
        events.admin(op, name, members=len(msg.get("members", ())), owner=owner)
        return reply

    def _servers(self, name: str) -> list[str]:
        """Where to ask about a channel: its owner, or its shard's replicas (preferred first)."""
        if self.topo.replicated:
            return self.topo.replicas_of(self.topo.shard_of(name))
        return [self.topo.logic_for(name)]

    def presence(self, uin: int) -> dict:
        """{logic id: {device: broker}} as each logic node's replica sees the uin."""
        out = {}
        for node_id in self.topo.ids("logic"):
            reply = self.call(node_id, {"t": "presence", "uin": uin})
            out[node_id] = None if reply is None else {int(d): b for d, b in reply["devices"].items()}
        return out


def probe_tcp(endpoints: dict, timeout: float) -> dict:
    """{key: True if something accepts TCP connections at the tcp:// endpoint}, all in parallel."""
    out, pending = {}, {}
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
