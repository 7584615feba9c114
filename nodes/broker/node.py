"""Broker node: the interface layer clients connect to -- its sockets and loop.

The protocol is in nodes/broker/core.py (sessions, requests), which logic node
serves a channel and whether it is up in nodes/broker/owners.py, what the logic
nodes publish and their links in nodes/broker/feed.py, WebSocket/HTTP clients
in nodes/runtime/webgate.py.  This module binds the client and rpc sockets,
connects to logic nodes, routers and the other brokers of its IDC, carries the
core's effects out (``reply``, ``push``, ``push_many``, ``to_logic``,
``to_router``) and runs the timers: session expiry and activity reports to
routers.
"""
from __future__ import annotations

import collections
from collections.abc import Iterable

import zmq

from fastpath import Fanout
from nodes.broker import memtrim
from nodes.broker.core import BrokerCore
from nodes.broker.feed import LogicFeed
from nodes.broker.prelogin import PreLoginBudget
from nodes.broker.webroutes import Routes
from nodes.protocol import schema, wire
from nodes.runtime import outbox
from nodes.runtime.node import Node
from nodes.runtime.ports import Callback, Msg
from nodes.runtime.rpc import Requests
from nodes.runtime.webgate import WEB_IDENT, WebGate

SWEEP_INTERVAL = 0.1
TOUCH_INTERVAL = 0.5            # how often activity is reported to routers
MAX_PIPELINED = 64              # requests one client frame may carry
CLIENT_RCVHWM = 32              # frames read ahead from one client connection (x max_frame bytes)
TRIM_INTERVAL = 5.0             # seconds between looks at the heap's free memory (memtrim)


def client_hwm(limits) -> int:
    """Frames queued to one client connection: ``session_queue`` frames, and no more than
    ``session_queue_bytes`` when each joined frame is at most ``max_frame`` bytes."""
    return max(1, min(int(limits["session_queue"]),
                      int(limits["session_queue_bytes"]) // int(limits["max_frame"])))


class BrokerNode(Node):
    type = "broker"
    needs_store = False
    gathers = True                             # busy turns gather (nodes/runtime/loop.py)

    def __init__(self, topo, node_id, colocated=()):
        super().__init__(topo, node_id, colocated=colocated)      # co-located logic: over inproc
        self.requests: Requests = Requests(topo.limits["request_timeout"], self.max_internal_frame, self.outbox)
        self.logics = self.peers("logic")
        self.feed = LogicFeed(self)                      # their PUB frames and link drops
        self.feed.watch(self.logics)
        self.routers = self.peers("router")
        self.core = BrokerCore(node_id, topo, topo.read_secret(), self, self.clock(), self.spec.idc)
        self.sub = self.subscribe("logic", wire.topic(node_id), self.feed.handlers)
        self.kicks = self.subscribe("router", wire.topic(node_id), {"kick": self.core.on_kick})
        limits = topo.limits
        self.prelogin = PreLoginBudget(limits["prelogin_rate"], limits["prelogin_burst"],
                                       limits["prelogin_bytes"], limits["login_window"])
        self.client = self.bind(zmq.ROUTER, self.spec.endpoint("client"),
                                maxmsgsize=int(limits["max_frame"]), sndhwm=client_hwm(limits),
                                rcvhwm=CLIENT_RCVHWM, mandatory=True)
        self.outbox.frame_limits[self.client] = int(limits["max_frame"])
        # a ZeroMQ peer may choose its routing id -- even one that names a web connection
        # (WebGate.owns): those are refused, or replies meant for it would reach the browser
        self.clients = self.serve(self.client, schema.CLIENT_REQUESTS, self.core.handlers,
                                  max_len=int(topo.limits["max_frame"]), guard=self.core.guard,
                                  max_items=MAX_PIPELINED, refuse_ident=self.refused,
                                  limits=self.core.schema_limits)
        ws = self.spec.endpoints.get("ws")
        hb = topo.heartbeat                                # WebSocket + HTTP clients, same dispatcher
        self.web = WebGate(self, ws, lambda gate: Routes(gate, self), int(limits["max_frame"]),
                           hb["max"] * (hb["session_timeout_factor"] + 1)) if ws else None
        # the client socket's batches and the deliveries' fan-out in C, on pyzmq's own libzmq
        self.fanout = Fanout(self.client, int(limits["max_frame"]), outbox.MAX_BATCH, outbox.ARRAY_HEADER,
                             WEB_IDENT if self.web else None, self.web.put if self.web else None)
        self.outbox.attach(self.client, self.fanout)
        self.core.fanout = self.fanout
        rpc = self.bind(zmq.ROUTER, self.spec.endpoint("rpc"))
        self.serve(rpc, schema.BROKER_RPC, {"status": self.handle_status, "fwd": self.feed.handle_fwd})
        self.idc_peers = {b.id: self.connect(zmq.DEALER, b.endpoint("rpc")) for b in topo.of_type("broker")
                          if b.idc == self.spec.idc and b.id != node_id}     # to pass on msgs_idc
        for sock in self.idc_peers.values():
            self.loop.add(sock, self.requests.on_reply)
        self.loop.every(SWEEP_INTERVAL, self.housekeeping)
        self.loop.every(TOUCH_INTERVAL, self.touch_routers)
        self.loop.every(TRIM_INTERVAL, memtrim.trim)
        for sock in self.routers.values():
            # a restarted broker has no sessions: clear what routers remember of it
            self.requests.send(sock, {"t": "broker_reset", "broker": node_id}, lambda _r: None)

    # --- the pre-login budget (nodes/broker/prelogin.py) ----------------------
    def refused(self, ident) -> bool:
        """Drop this client frame unread?  A ZeroMQ peer posing as a web connection, or a
        connection with no session that is over its pre-login budget."""
        return WebGate.owns(ident) or not self.admitted(ident)

    def admitted(self, ident) -> bool:
        if ident in self.core.sessions.by_ident:
            self.prelogin.forget(ident)         # logged in: its session's bounds apply
            return True
        return self.prelogin.admit(ident, self.clock())

    def _within_budget(self, ident, packed: bytes) -> bool:
        """A reply to a connection with no session costs its pre-login budget (else dropped)."""
        if ident in self.core.sessions.by_ident:
            return True
        return self.prelogin.charge(ident, len(packed), self.clock())

    # --- out -----------------------------------------------------------------
    def reply(self, ident: bytes, msg: Msg) -> None:
        """A client's reply, packed once: for the pre-login budget and for whichever way it goes."""
        packed = wire.pack(msg)
        if not self._within_budget(ident, packed):
            return
        if self.web is not None and WebGate.owns(ident):
            self.web.reply(ident, msg, packed)
        else:
            self.outbox.put(self.client, ident, packed)

    def queue_reply(self, sock, ident, msg):
        packed = wire.pack(msg)
        if sock is self.client and not self._within_budget(ident, packed):
            return
        self.outbox.put(sock, ident, packed)

    def push(self, ident: bytes, packed: bytes) -> None:
        if self.web is not None and WebGate.owns(ident):
            self.web.put(ident, packed)
        else:
            self.queue_packed(self.client, ident, packed)

    def web_frame(self, ident, frame):
        """A frame from a WebSocket or HTTP client (nodes/runtime/webgate.py): the ZeroMQ clients'
        dispatcher, and their pre-login budget."""
        if not self.admitted(ident):
            return
        self.clients.frame(ident, frame, self.clock(), self.reply, self.core.max_frame, MAX_PIPELINED)

    def web_gone(self, ident: bytes, slow: bool) -> None:
        """A web connection closed (or fell too far behind): its session ends now."""
        (self.core.too_slow if slow else self.core.gone)(ident)

    def push_many(self, idents: Iterable[bytes], packed: bytes) -> None:
        """One message to many sessions: ZeroMQ ones through the outbox in one call, web ones
        (WebSocket / HTTP) through their gate."""
        if self.web is not None:
            zmq_idents = []
            for ident in idents:                # one pass: each ident is looked at once
                if WebGate.owns(ident):
                    self.web.put(ident, packed)
                else:
                    zmq_idents.append(ident)
            idents = zmq_idents
        self.outbox.put_many(self.client, idents, packed)

    def to_logic(self, owner: str, msg: Msg, callback: Callback, timeout: float | None = None) -> None:
        self.requests.send(self.logics[owner], msg, callback, timeout)

    def to_router(self, uin: int, msg: Msg, callback: Callback, timeout: float | None = None) -> None:
        routers = self.topo.routers_for(uin, self.spec.idc)
        if len(routers) == 1:
            self.requests.send(self.routers[routers[0]], msg, callback, timeout)
            return
        # replicated presence: both routers of the uin; the first good answer counts, an error
        # only when both fail (a dead router costs nothing but its timeout in the background)
        left = [len(routers)]

        def one(reply):
            left[0] -= 1
            if left[0] < 0:
                return
            if reply.get("t") != "err" or left[0] == 0:
                left[0] = -1
                callback(reply)
        for router in routers:
            self.requests.send(self.routers[router], dict(msg), one, timeout)

    def ask_router(self, router: str, msg: Msg, callback: Callback, timeout: float | None = None) -> None:
        """One request to one router by id (the HTTP API's kick asks the user's routers of every IDC)."""
        self.requests.send(self.routers[router], msg, callback, timeout)

    def on_send_failed(self, sock, key, exc):
        if sock is not self.client:
            return super().on_send_failed(sock, key, exc)
        if isinstance(exc, zmq.Again):
            self.core.too_slow(key)            # its queue is full: it falls behind, drop it
        elif exc.errno == zmq.EHOSTUNREACH:
            self.core.gone(key)

    def on_topology(self, old, new):
        """A live reshard (nodes/cluster/topochange.py): route by the new topology, talk to its logic nodes."""
        self.core.adopt(new)
        before = dict(self.logics)
        self.refresh_peers(self.logics, "logic")
        self.feed.watch({n: s for n, s in self.logics.items() if n not in before})
        self.resubscribe(self.sub, new, "logic")
        return None

    def on_admit(self, new):
        """Hear the ticks of logic nodes a live reshard adds before routing to them, so a
        moved channel is served as soon as the brokers adopt (not a tick interval later)."""
        self.resubscribe(self.sub, new, "logic", keep=True)
        return None

    def refused_sends(self) -> dict:
        """Refused sends by code, and their total: the handler's (rate, membership...) and the
        schema's (text length, fragments), counted where each refuses."""
        refused = collections.Counter(self.core.stats)
        for (t, code), n in self.clients.invalid.items():
            if t == "send":
                refused[code] += n
                refused["refused"] += n
        return dict(refused)

    def housekeeping(self):
        self.requests.expire()
        now = self.clock()
        self.core.sweep(now)
        self.prelogin.prune(now)

    def touch_routers(self):
        for router, sessions in self.core.touches(self.clock()).items():
            self.requests.send(self.routers[router], {"t": "touch", "broker": self.id, "sessions": sessions},
                               self.core.on_touched)

    def status(self):
        now = self.clock()
        links = self.core.owners.links
        linked = sorted(k for k in self.logics if links.known(k) and links.up(k, now))
        return dict(super().status(), sessions=len(self.core.sessions), logic_links=linked,
                    ready=len(linked) == len(self.logics), refused=self.refused_sends(),
                    kicked=dict(self.core.sessions.ended), pending=self.core.pending,
                    requests=dict(self.dispatchers[0].requests), **self.core.counts,
                    prelogin={"idents": len(self.prelogin), "dropped": dict(self.prelogin.dropped)},
                    **({"web": self.web.status()} if self.web is not None else {}))
