"""Operator requests to the nodes' internal ``rpc`` endpoints: status and channel membership.

Used by ``bin/mesh`` and by the tests.  Membership changes carry an admin
token minted from the cluster secret, so only someone holding the secret
file can change who is in a channel.
"""
from __future__ import annotations

import itertools

import zmq

from . import auth, wire
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

    def call(self, node_id: str, msg: dict, timeout: float | None = None) -> dict | None:
        """One request to a node's rpc endpoint; the reply map, or None if no answer in time."""
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(self.topo.node(node_id).endpoint("rpc"))
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
            raise AdminError(reply["code"], reply["msg"])
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
