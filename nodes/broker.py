"""Broker node: the interface layer clients connect to.

Holds client sessions (ROUTER identities), checks login tokens, applies
the length limit, forwards sends and syncs to the logic node owning the
channel and presence changes to the router owning the uin, and pushes the
deliveries it receives on its SUB socket (topic = its own id) to the right
sessions.  Stateless beyond its sessions: a client may reconnect to any
broker.  Sessions that stay silent for ``session_timeout_factor``
heartbeat intervals are dropped and reported offline.
"""
from __future__ import annotations

import collections
import logging
import math
import time

import zmq

from . import auth
from . import wire
from .heartbeat import initial_interval
from .limits import FragmentGroups, TokenBuckets
from .node import INTERNAL_MAX_FRAME, Node
from .rpc import Requests
from .webgate import WebGate

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 0.5
MAX_PIPELINED = 64                       # requests one client frame may carry


class Session:
    __slots__ = ("ident", "uin", "device", "net", "interval", "last_seen", "groups")

    def __init__(self, ident, uin, device, net, interval):
        self.ident, self.uin, self.device, self.net = ident, uin, device, net
        self.interval = interval
        self.last_seen = time.monotonic()
        self.groups = FragmentGroups()


class BrokerCore:
    """Sessions and client request handling; ``out`` does the I/O.

    ``out`` provides ``reply(ident, msg)``, ``push(ident, frame)``,
    ``to_logic(channel, msg, callback)`` and ``to_router(uin, msg, callback)``.
    """

    def __init__(self, broker_id, topo, secret, out):
        self.id = broker_id
        self.topo = topo
        self.secret = secret
        self.out = out
        self.max_text = int(topo.limits["max_text"])
        self.max_fragments = int(topo.limits["max_fragments"])
        self.buckets = TokenBuckets(topo.limits["rate"], topo.limits["burst"])
        self.stats = collections.Counter()      # refused sends by code
        self.client_limits = {k: topo.limits[k] for k in ("max_text", "max_fragments", "rate", "burst",
                                                           "message_lifetime")}
        self.max_pending = int(topo.limits["max_pending"])
        self.pending = 0
        self.sessions = {}                     # ident -> Session
        self.by_key = {}                       # (uin, device) -> ident
        self.by_uin = {}                       # uin -> {ident, ...}
        self.handlers = {"login": self.login, "send": self.send, "sync": self.sync,
                         "hb": self.heartbeat, "logout": self.logout}

    # --- entry point ---------------------------------------------------------
    def on_client(self, ident: bytes, frame: bytes) -> None:
        """One frame from a client: a request map, or an array of them (pipelined)."""
        try:
            msgs = wire.unpack_many(frame, int(self.topo.limits["max_frame"]), MAX_PIPELINED)
        except wire.ProtocolError as exc:
            self.out.reply(ident, wire.error_from(None, exc))
            return
        for msg in msgs:
            self.on_request(ident, msg)

    def on_request(self, ident: bytes, msg: dict) -> None:
        rid = wire.request_rid(msg)
        try:
            t = wire.validate(msg, wire.CLIENT_REQUESTS)
            session = self.sessions.get(ident)
            if session is None and t != "login":
                raise wire.ProtocolError(wire.Err.NOT_LOGGED_IN, "log in first")
            if session is not None:
                session.last_seen = time.monotonic()
            result = self.handlers[t](ident, session, msg)
        except wire.ProtocolError as exc:
            result = wire.error_from(rid, exc)
            if msg.get("t") == "send":
                self.stats["refused"] += 1
                self.stats[exc.code] += 1
        if result is not None:
            self.out.reply(ident, result)

    # --- requests ------------------------------------------------------------
    def login(self, ident, session, msg):
        uin = auth.check_login(self.secret, msg)
        net = msg.get("net", "wired")
        if type(net) is not str:
            raise wire.ProtocolError(wire.Err.BAD_FIELD, "field 'net' must be a string")
        if session is not None:
            self._drop(session, notify_router=(session.uin, session.device) != (uin, msg["device"]))
        old = self.by_key.get((uin, msg["device"]))
        if old is not None and old != ident:
            self.out.reply(old, {"t": "kicked", "msg": "logged in again from another connection"})
            self._drop(self.sessions[old], notify_router=False)
        interval = initial_interval(self.topo.heartbeat, net)
        new = Session(ident, uin, msg["device"], net, interval)
        self.sessions[ident] = new
        self.by_key[(uin, msg["device"])] = ident
        self.by_uin.setdefault(uin, set()).add(ident)
        rid = msg["rid"]

        def done(reply):
            if reply.get("t") == "ok":
                self.out.reply(ident, wire.reply("login_ok", rid, uin=uin, device=new.device,
                                                 broker=self.id, hb=reply.get("interval", interval),
                                                 limits=self.client_limits))
            else:
                if self.sessions.get(ident) is new:
                    self._drop(new, notify_router=False)
                self.out.reply(ident, wire.error(rid, reply.get("code", wire.Err.UNAVAILABLE),
                                                 reply.get("msg", "router unavailable")))
        self.out.to_router(uin, {"t": "online", "uin": uin, "device": new.device,
                                 "broker": self.id, "net": net}, done)
        return None

    def send(self, ident, session, msg):
        """Length, fragment and rate checks; then forward to the channel's logic node."""
        text = msg["text"]
        size = len(text.encode("utf-8"))
        if size == 0:
            raise wire.ProtocolError(wire.Err.EMPTY_TEXT, "text is empty")
        if size > self.max_text:
            raise wire.ProtocolError(wire.Err.TOO_LONG, f"text of {size} bytes exceeds the limit "
                                     f"of {self.max_text}; split it into fragments", limit=self.max_text)
        request = {"t": "send", "uin": session.uin, "device": session.device, "channel": msg["channel"],
                   "ctime": msg["ctime"], "text": text}
        charge, frag = True, None
        if "frag" in msg:
            frag = FragmentGroups.parse(msg["frag"], self.max_fragments)
            charge, _retry = session.groups.check(*frag, msg["ctime"])
            request["frag"] = list(frag)
        if charge:
            wait = self.buckets.take(session.uin, time.monotonic())
            if wait:
                raise wire.ProtocolError(wire.Err.RATE_LIMITED, f"over {self.buckets.rate:g} messages/s; "
                                         f"retry in {wait:.3f} s", retry_after=math.ceil(wait * 1000) / 1000)
        if frag is not None:
            session.groups.accept(*frag, msg["ctime"])
        return self._forward(ident, msg, request)

    def sync(self, ident, session, msg):
        return self._forward(ident, msg, {"t": "sync", "uin": session.uin,
                                          "channel": msg["channel"], "after": msg["after"]})

    def _forward(self, ident, msg, request):
        """Send to the owning logic node; the reply goes back with the client's rid."""
        if self.pending >= self.max_pending:
            raise wire.ProtocolError(wire.Err.BUSY, "system busy; retry later")
        self.pending += 1
        rid = msg["rid"]

        def done(reply):
            self.pending -= 1
            reply["rid"] = rid
            self.out.reply(ident, reply)
        self.out.to_logic(msg["channel"], request, done)
        return None

    def heartbeat(self, ident, session, msg):
        """Router: mark alive, get the next interval.  Owning logic nodes: newest id of
        each listed channel plus what the client is missing, pushed before the ack."""
        channels = msg.get("channels", {})
        wire.KINDS["windows"](channels, "channels")
        limit = int(self.topo.heartbeat["max_channels"])
        if len(channels) > limit:
            raise wire.ProtocolError(wire.Err.TOO_MANY, f"a heartbeat may list at most {limit} "
                                     "channels", limit=limit)
        net = msg.get("net", session.net)
        if type(net) is not str:
            raise wire.ProtocolError(wire.Err.BAD_FIELD, "field 'net' must be a string")
        session.net = net
        groups = {}
        for name, have in channels.items():
            groups.setdefault(self.topo.logic_for(name), {})[name] = have
        ack = wire.reply("hb_ack", msg["rid"], interval=session.interval, heads={}, first={},
                         more=[], not_member=[], unavailable=[])
        msgs = []
        waiting = [1 + len(groups)]

        def part_done():
            waiting[0] -= 1
            if waiting[0] == 0 and self.sessions.get(ident) is session:
                for m in msgs:
                    self.out.push(ident, wire.pack(m))
                self.out.reply(ident, ack)

        def on_router(reply):
            if reply.get("t") == "hb":
                session.interval = ack["interval"] = reply["interval"]
            part_done()

        def on_logic(wanted):
            def done(reply):
                if reply.get("t") == "heads":
                    for key in ("heads", "first"):
                        ack[key].update(reply[key])
                    ack["more"] += reply["more"]
                    ack["not_member"] += reply["not_member"]
                    msgs.extend(reply["msgs"])
                else:
                    ack["unavailable"] += list(wanted)
                part_done()
            return done

        self.out.to_router(session.uin, {"t": "hb", "uin": session.uin, "device": session.device,
                                         "broker": self.id, "net": net}, on_router)
        for wanted in groups.values():
            self.out.to_logic(next(iter(wanted)), {"t": "heads", "uin": session.uin, "channels": wanted},
                              on_logic(wanted))
        return None

    def logout(self, ident, session, msg):
        self._drop(session, notify_router=True)
        return wire.reply("bye", msg["rid"])

    # --- sessions ------------------------------------------------------------
    def _drop(self, session, notify_router: bool) -> None:
        self.sessions.pop(session.ident, None)
        key = (session.uin, session.device)
        if self.by_key.get(key) == session.ident:
            del self.by_key[key]
        idents = self.by_uin.get(session.uin)
        if idents is not None:
            idents.discard(session.ident)
            if not idents:
                del self.by_uin[session.uin]
        if notify_router:
            self.out.to_router(session.uin, {"t": "offline", "uin": session.uin,
                                             "device": session.device, "broker": self.id},
                               lambda _reply: None)

    def disconnected(self, ident: bytes) -> None:
        """The transport saw this client's connection close (WebSocket, HTTP channel):
        end its session now rather than after the heartbeat timeout."""
        session = self.sessions.get(ident)
        if session is not None:
            self._drop(session, notify_router=True)

    def sweep(self) -> int:
        """Drop sessions silent for too long; return how many."""
        now = time.monotonic()
        # one interval more than the router allows: the router (the authority on presence)
        # declares the session offline first; this only frees the broker's own state
        factor = self.topo.heartbeat["session_timeout_factor"] + 1
        stale = [s for s in self.sessions.values() if now - s.last_seen > factor * s.interval]
        for session in stale:
            self._drop(session, notify_router=True)
        self.buckets.prune(now)
        return len(stale)

    # --- deliveries ----------------------------------------------------------
    def deliver(self, packed: bytes, to, sender_uin: int, sender_device: int) -> int:
        """Push one message (packed once by logic) to its recipients' sessions here,
        except the device that sent it; return how many pushes."""
        pushed = 0
        for uin in to:
            idents = self.by_uin.get(uin)
            if not idents:
                continue
            for ident in idents:
                if uin != sender_uin or self.sessions[ident].device != sender_device:
                    self.out.push(ident, packed)
                    pushed += 1
        return pushed


class BrokerNode(Node):
    type = "broker"
    needs_store = False

    def __init__(self, topo, node_id):
        super().__init__(topo, node_id)
        self.requests = Requests(topo.limits["request_timeout"], INTERNAL_MAX_FRAME, self.outbox)
        self.logics = self.peers("logic")
        self.routers = self.peers("router")
        self.sub = self.subscribe("logic", node_id.encode(), self.on_delivery)
        self.heard = {}                         # logic id -> monotonic time of last frame
        self.core = BrokerCore(node_id, topo, topo.read_secret(), self)
        self.client = self.bind(zmq.ROUTER, self.spec.endpoint("client"),
                                maxmsgsize=int(topo.limits["max_frame"]))
        self.loop.add(self.client, self.on_client)
        ws = self.spec.endpoints.get("ws")
        self.web = WebGate(self, ws) if ws else None     # WebSocket + HTTP clients, same core
        rpc = self.bind(zmq.ROUTER, self.spec.endpoint("rpc"))
        self.serve(rpc, wire.BROKER_REQUESTS, {"status": self.handle_status})
        self.loop.every(SWEEP_INTERVAL, self.housekeeping)
        for sock in self.routers.values():
            # a restarted broker has no sessions: clear what routers remember of it
            self.requests.send(sock, {"t": "broker_reset", "broker": node_id}, lambda _r: None)

    # --- out -----------------------------------------------------------------
    def reply(self, ident, msg):
        if self.web is not None and WebGate.owns(ident):
            self.web.reply(ident, msg)
        else:
            self.queue_reply(self.client, ident, msg)

    def push(self, ident, packed):
        if self.web is not None and WebGate.owns(ident):
            self.web.put(ident, packed)
        else:
            self.queue_packed(self.client, ident, packed)

    def to_logic(self, channel, msg, callback):
        self.requests.send(self.logics[self.topo.logic_for(channel)], msg, callback)

    def to_router(self, uin, msg, callback):
        self.requests.send(self.routers[self.topo.router_for(uin)], msg, callback)

    # --- sockets -------------------------------------------------------------
    def on_client(self, frames):
        if len(frames) != 2:
            self.reply(frames[0], wire.error(None, wire.Err.BAD_FRAME, "send exactly one frame per message"))
            return
        self.core.on_client(frames[0], frames[1])

    def on_delivery(self, msg):
        if msg.get("t") == "msgs":
            deliver = self.core.deliver
            for packed, to, uin, device in msg["items"]:
                deliver(packed, to, uin, device)
        elif msg.get("t") == "tick":
            self.heard[msg.get("logic")] = time.monotonic()

    def housekeeping(self):
        self.requests.expire()
        self.core.sweep()

    def status(self):
        now = time.monotonic()
        linked = sorted(k for k, t in self.heard.items() if now - t < 3.0)
        return dict(super().status(), sessions=len(self.core.sessions), logic_links=linked,
                    ready=len(linked) == len(self.logics), refused=dict(self.core.stats),
                    **({"web": self.web.status()} if self.web is not None else {}))
