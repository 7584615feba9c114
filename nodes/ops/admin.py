"""Operator requests to the nodes' internal ``rpc`` endpoints: status and channel membership.

Used by ``bin/mesh`` and by the tests.  Membership changes carry an admin
token minted from the cluster secret, so only someone holding the secret
file can change who is in a channel.  The internal endpoints admit only the
topology's CURVE keys: these requests go out with the ``admin`` keypair
(nodes/runtime/curve.py), made on first use for a local topology.
"""
from __future__ import annotations

import itertools

import zmq

from nodes.client.nearest import SLACK, STICKY
from nodes.cluster import placement, rendezvous
from nodes.cluster.topology import Topology
from nodes.protocol import auth, wire
from nodes.runtime import curve, statusprobe
from nodes.runtime.logs import events

CHANNEL_OPS = ("create", "add", "remove", "show")


class AdminError(Exception):
    def __init__(self, code, msg):
        super().__init__(f"{code}: {msg}")
        self.code, self.msg = code, msg


class Admin:
    def __init__(self, topo: Topology, timeout: float = 3.0, ctx: zmq.Context | None = None,
                 identity: curve.Identity | None = None):
        """``identity``: whose keys to ask with (a node asking its peers passes its own);
        default the operator's ``admin`` keypair."""
        self.topo = topo
        self.timeout = timeout
        self.ctx = ctx or zmq.Context.instance()
        self._rids = itertools.count(1)
        self._identity = identity

    @property
    def identity(self) -> curve.Identity:
        """The admin keypair, read when first needed (CurveError names a missing or open file)."""
        if self._identity is None:
            self._identity = curve.Identity.admin(self.topo)
        return self._identity

    @property
    def _max_frame(self) -> int:
        """A reply is a frame between nodes: the topology's one internal limit."""
        return int(self.topo.limits["max_internal_frame"])

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
            return wire.unpack(sock.recv(), self._max_frame)
        finally:
            sock.close(0)

    def status(self, node_id: str, timeout: float | None = None) -> dict | None:
        reply = self.call(node_id, {"t": "status"}, timeout)
        return reply if reply and reply.get("t") == "status" else None

    def status_all(self, node_ids, timeout: float | None = None) -> dict:
        """Ask many nodes for their status at once: {id: status map or None}
        (nodes/runtime/statusprobe.py: a refused port is down at once, the rest share
        ``timeout``)."""
        return {n: reply for n, (reply, _rtts) in self._status_rounds(node_ids, 1, timeout).items()}

    def round_trips(self, node_ids, rounds: int = 3, timeout: float | None = None) -> dict:
        """{id: best round trip of ``rounds`` status requests in seconds, or None if no answer}.

        Every node is measured at the same time (one socket each, its next
        request sent when the last is answered), so measuring a far IDC does
        not delay the near one; the best of the rounds drops the first
        round's connection set-up and a busy loop turn."""
        return {n: min(rtts) if rtts else None
                for n, (_reply, rtts) in self._status_rounds(node_ids, rounds, timeout).items()}

    def _status_rounds(self, node_ids, rounds: int, timeout: float | None) -> dict:
        """{id: (last status map or None, [round trip of each answered request])}, in parallel."""
        identity = self.identity              # a missing admin key is an error even if all are down
        return statusprobe.status_rounds(self.ctx, identity, {n: self.topo.node(n).endpoint("rpc") for n in node_ids},
                                         rounds, self.timeout if timeout is None else timeout, self._max_frame,
                                         self._rids)

    def channel(self, op: str, name: str, members=(), lifetime: float | None = None) -> dict:
        """create/add/remove/show on the logic node owning the channel (``lifetime``: create only)."""
        if op not in CHANNEL_OPS:
            raise ValueError(f"op must be one of {CHANNEL_OPS}")
        wire.check_channel_name(name)
        token = auth.mint(self.topo.read_secret(), 0, lifetime=300, scope="admin")
        msg: dict = {"t": f"channel_{op}", "auth": token, "channel": name}
        if op != "show":
            msg["members"] = sorted(set(members))
        if lifetime is not None:
            msg["lifetime"] = lifetime
        reply, owner = None, None
        for owner in placement.servers(self.topo, name):
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

    def presence(self, uin: int) -> dict:
        """{logic id: {device: broker}} as each logic node's replica sees the uin."""
        out = {}
        for node_id in self.topo.ids("logic"):
            reply = self.call(node_id, {"t": "presence", "uin": uin})
            out[node_id] = None if reply is None else {int(d): b for d, b in reply["devices"].items()}
        return out


def nearest_home(topo: Topology, name: str, rtts: dict) -> dict:
    """The home IDC of a new channel: the IDC of the nearest logic node (``rtts``: {logic id:
    best status round trip in seconds, None if it did not answer}).

    Logic nodes about as near as the best (rtt <= STICKY x best + SLACK, the broker choice's
    noise bound, nodes/client/nearest.py) tie: on one LAN, or a mesh on loopback, the differences are
    noise, so among their IDCs the name's rendezvous hash decides and the same name gets the
    same home on every try.  Returns {"idc", "logic", "by", "why", "rtt_ms"};
    raises AdminError(UNAVAILABLE) when no logic node answered."""
    answered = {n: rtt for n, rtt in rtts.items() if rtt is not None}
    rtt_ms = {n: None if rtt is None else round(rtt * 1000, 3) for n, rtt in sorted(rtts.items())}
    if not answered:
        raise AdminError(wire.Err.UNAVAILABLE, f"no logic node answered a status request "
                         f"({', '.join(sorted(rtts)) or 'none in the topology'}): give --idc IDC")
    best = min(answered.values())
    near = sorted((n for n, rtt in answered.items() if rtt <= STICKY * best + SLACK),
                  key=lambda n: (answered[n], n))
    idcs = list(dict.fromkeys(topo.node(n).idc for n in near))
    idc = idcs[0] if len(idcs) == 1 else rendezvous.owner(idcs, name)
    logic = next(n for n in near if topo.node(n).idc == idc)
    others = "; ".join(f"{n} {_ms(rtt)}" for n, rtt in sorted(rtts.items()) if n != logic)
    if len(idcs) == 1:
        by, why = "nearest", f"nearest logic node {logic} ({_ms(answered[logic])}; {others})"
    else:
        by, why = "nearest_tie", (f"logic nodes of {', '.join(idcs)} about as near ({logic} "
                                  f"{_ms(answered[logic])}; {others}): {idc} by hashing the name")
    return {"idc": idc, "logic": logic, "by": by, "why": why, "rtt_ms": rtt_ms}


def _ms(rtt: float | None) -> str:
    return "no answer" if rtt is None else f"{rtt * 1000:.1f} ms"
