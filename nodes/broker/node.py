"""Broker node: the interface layer clients connect to.

Holds client sessions (nodes/runtime/sessions.py), checks login tokens, applies the
length, fragment and rate limits, forwards sends and syncs to the logic
node owning the channel and presence to the router owning the uin, and
pushes the deliveries it receives on its SUB socket to the right sessions.
Stateless beyond its sessions: a client may reconnect to any broker.

The broker is the authority on a session's liveness: any request keeps it
alive, silence for ``session_timeout_factor`` intervals ends it (the
router hears of activity through batched ``touch`` requests and only
expires sessions itself, later, when a broker died).  It knows which logic
nodes are alive from their ticks, so a heartbeat or send for a channel
whose owner is down is answered at once instead of after a timeout.
"""
from __future__ import annotations

import collections
import logging
import math

import zmq

from nodes.protocol import auth
from nodes.protocol import wire
from nodes.protocol.heartbeat import initial_interval
from nodes.broker.limits import FragmentGroups, TokenBuckets
from nodes.cluster import idcfanout
from nodes.cluster.placement import Placement
from nodes.runtime.links import Liveness, on_link_down
from nodes.runtime.logs import events
from nodes.runtime.node import Node
from nodes.runtime.rpc import Requests
from nodes.runtime.sessions import SessionTable
from nodes.broker.webgate import WebGate

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 0.1
TOUCH_INTERVAL = 0.5            # how often activity is reported to routers
MAX_PIPELINED = 64              # requests one client frame may carry
OWNER_DOWN_AFTER = 1.5          # seconds without a tick from a logic node: it is down
START_GRACE = 3.0               # a logic node never heard yet counts as up this long after start
FAST_TIMEOUT = 1.0              # heartbeat parts (router, heads) answer within this


class BrokerCore:
    """Sessions and client request handling: no sockets, no clock (``now`` is passed in).

    Effects go through ``out``: ``reply(ident, msg)``, ``push(ident, packed)``,
    ``push_many(idents, packed)``,
    ``to_logic(channel, msg, callback, timeout=None)``, ``to_router(uin, msg,
    callback, timeout=None)``.
    """

    def __init__(self, broker_id, topo, secret, out, now: float, idc: str = ""):
        self.id = broker_id
        self.idc = idc
        self.topo = topo
        self.secret = secret
        self.out = out
        self.started = now
        limits = topo.limits
        self.max_text = int(limits["max_text"])
        self.max_fragments = int(limits["max_fragments"])
        self.max_frame = int(limits["max_frame"])
        self.send_timeout = float(limits["request_timeout"])
        self.buckets = TokenBuckets(limits["rate"], limits["burst"])
        self.stats = collections.Counter()      # refused sends by code
        self.counts = collections.Counter()     # logins, acks, deliveries (metrics)
        self.client_limits = {k: limits[k] for k in ("max_text", "max_fragments", "rate", "burst",
                                                    "message_lifetime")}
        self.max_pending = int(limits["max_pending"])
        self.max_session_inflight = int(limits["session_inflight"])
        self.max_channels = int(topo.heartbeat["max_channels"])
        self.pending = 0
        self.sessions = SessionTable(float(topo.heartbeat["session_timeout_factor"]))
        self.active = set()                     # sessions with requests since the last touch round
        self.links = Liveness(OWNER_DOWN_AFTER, START_GRACE, now)       # which logic nodes are up
        self.placement = Placement(topo)        # which logic node serves a channel (leaders from ticks)
        self.handlers = {"login": self.login, "ping": self.ping, "send": self.send, "sync": self.sync,
                         "hb": self.heartbeat, "logout": self.logout}

    # --- the guard: every request but login/ping needs its session ------------
    def guard(self, ident, t, msg, now):
        if t in wire.SESSIONLESS:
            return ident
        session = self.sessions.check(ident, msg.get("sid"), now)
        self.active.add(session)
        return session

    # --- requests ------------------------------------------------------------
    def ping(self, ident, msg, now):
        return wire.reply("pong", msg["rid"], broker=self.id, idc=self.idc)

    def login(self, ident, msg, now):
        uin = auth.check_login(self.secret, msg)
        net = msg.get("net", "wired")
        if type(net) is not str:
            raise wire.ProtocolError(wire.Err.BAD_FIELD, "field 'net' must be a string")
        device = msg["device"]
        current = self.sessions.by_ident.get(ident)
        if current is not None:                 # a new login on the same connection replaces it
            self.end(current, None, notify_router=(current.uin, current.device) != (uin, device))
        old = self.sessions.by_key.get((uin, device))
        if old is not None:
            self.kick(old, "replaced", "logged in again from another connection", notify_router=False)
        interval = initial_interval(self.topo.heartbeat, net)
        new = self.sessions.open(ident, uin, device, net, interval, now)
        rid = msg["rid"]

        def done(reply):
            if reply.get("t") == "ok":
                new.interval = reply.get("interval", interval)
                self.sessions.reschedule(new)
                self.counts["logins"] += 1
                events.login(uin, device, broker=self.id)
                self.out.reply(ident, wire.reply("login_ok", rid, uin=uin, device=device, sid=new.sid,
                                                 broker=self.id, idc=self.idc, hb=new.interval,
                                                 limits=self.client_limits))
            else:
                self.end(new, None, notify_router=False)
                self.out.reply(ident, wire.error(rid, reply.get("code", wire.Err.UNAVAILABLE),
                                                 reply.get("msg", "router unavailable")))
        self.out.to_router(uin, {"t": "online", "uin": uin, "device": device,
                                 "broker": self.id, "net": net}, done)
        return None

    def send(self, session, msg, now):
        """Length, fragment and rate checks; then forward to the channel's logic node."""
        try:
            return self._send(session, msg, now)
        except wire.ProtocolError as exc:
            self.stats["refused"] += 1
            self.stats[exc.code] += 1
            raise

    def _send(self, session, msg, now):
        text = msg["text"]
        size = len(text.encode("utf-8"))
        if size == 0:
            raise wire.ProtocolError(wire.Err.EMPTY_TEXT, "text is empty")
        if size > self.max_text:
            raise wire.ProtocolError(wire.Err.TOO_LONG, f"text of {size} bytes exceeds the limit "
                                     f"of {self.max_text}; split it into fragments", limit=self.max_text)
        owner = self._owner_up(msg["channel"], now)
        request = {"t": "send", "uin": session.uin, "device": session.device, "channel": msg["channel"],
                   "ctime": msg["ctime"], "text": text}
        charge, frag = True, None
        if "frag" in msg:
            frag = FragmentGroups.parse(msg["frag"], self.max_fragments)
            if session.groups is None:
                session.groups = FragmentGroups()
            charge, _retry = session.groups.check(*frag, msg["ctime"])
            request["frag"] = list(frag)
        if charge:
            wait = self.buckets.take(session.uin, now)
            if wait:
                raise wire.ProtocolError(wire.Err.RATE_LIMITED, f"over {self.buckets.rate:g} messages/s; "
                                         f"retry in {wait:.3f} s", retry_after=math.ceil(wait * 1000) / 1000)
        if frag is not None:
            session.groups.accept(*frag, msg["ctime"])
        return self._forward(session, msg, request, owner)

    def sync(self, session, msg, now):
        owner = self._owner_up(msg["channel"], now)
        return self._forward(session, msg, {"t": "sync", "uin": session.uin,
                                            "channel": msg["channel"], "after": msg["after"]}, owner)

    def _admit(self, session) -> None:
        """One more request of ``session`` waits for other nodes: bounded per broker and per
        session, so no client can take every slot (BUSY: nothing was forwarded)."""
        if self.pending >= self.max_pending:
            raise wire.ProtocolError(wire.Err.BUSY, "system busy; retry later")
        if session.inflight >= self.max_session_inflight:
            raise wire.ProtocolError(wire.Err.BUSY, f"more than {self.max_session_inflight} requests in "
                                     "flight on this session; wait for replies", limit=self.max_session_inflight)
        self.pending += 1
        session.inflight += 1

    def _release(self, session) -> None:
        self.pending -= 1
        session.inflight -= 1

    def _forward(self, session, msg, request, owner):
        """Send to the owning logic node; the reply goes back with the client's rid."""
        self._admit(session)
        rid, ident = msg["rid"], session.ident

        def done(reply):
            self._release(session)
            if reply.get("t") == "ack":
                self.counts["acks"] += 1
            reply["rid"] = rid
            if reply.get("code") == wire.Err.WRONG_OWNER:
                reply = self._moved(request["channel"], reply)
            self.out.reply(ident, reply)
        self.out.to_logic(owner, request, done, self.send_timeout)
        return None

    def heartbeat(self, session, msg, now):
        """Router: mark alive, get the next interval.  Owning logic nodes: newest id of
        each listed channel plus what the client is missing, pushed before the ack.
        Answered within FAST_TIMEOUT: channels of owners that are down or slow are
        listed in ``unavailable``."""
        channels = msg.get("channels", {})
        wire.KINDS["windows"](channels, "channels")
        if len(channels) > self.max_channels:
            raise wire.ProtocolError(wire.Err.TOO_MANY, f"a heartbeat may list at most "
                                     f"{self.max_channels} channels", limit=self.max_channels)
        net = msg.get("net", session.net)
        if type(net) is not str:
            raise wire.ProtocolError(wire.Err.BAD_FIELD, "field 'net' must be a string")
        session.net = net
        self._admit(session)
        ack = wire.reply("hb_ack", msg["rid"], interval=session.interval, heads={}, first={}, upto={},
                         more=[], not_member=[], unavailable=[])
        groups = {}
        for name, have in channels.items():
            owner = self.owner_of(name)
            if self.logic_up(owner, now):
                groups.setdefault(owner, {})[name] = have
            else:
                ack["unavailable"].append(name)
        msgs = []
        waiting = [1 + len(groups)]
        ident = session.ident

        def part_done():
            waiting[0] -= 1
            if waiting[0] == 0:
                self._release(session)
            if waiting[0] == 0 and session.ended is None:
                for m in msgs:
                    self.out.push(ident, wire.pack(m))
                self.out.reply(ident, ack)

        def on_router(reply):
            if reply.get("t") == "hb":
                if reply.get("moved"):
                    waiting[0] = -1                     # no ack will be sent for this heartbeat
                    self._release(session)
                    self.kick(session, "replaced", "logged in again on another broker", notify_router=False)
                    self.out.reply(ident, wire.error(msg["rid"], wire.Err.NOT_LOGGED_IN, "session "
                                                     "replaced by a login on another broker",
                                                     reason="replaced"))
                    return
                session.interval = ack["interval"] = reply["interval"]
                session.touched = now
                self.sessions.reschedule(session)
            part_done()

        def on_logic(wanted):
            def done(reply):
                if reply.get("t") == "heads":
                    for key in ("heads", "first", "upto"):
                        ack[key].update(reply.get(key, {}))
                    ack["more"] += reply["more"]
                    ack["not_member"] += reply["not_member"]
                    ack["unavailable"] += reply.get("unavailable", ())
                    msgs.extend(reply["msgs"])
                else:
                    ack["unavailable"] += list(wanted)
                part_done()
            return done

        self.out.to_router(session.uin, {"t": "hb", "uin": session.uin, "device": session.device,
                                         "broker": self.id, "net": net}, on_router, FAST_TIMEOUT)
        for owner, wanted in groups.items():
            self.out.to_logic(owner, {"t": "heads", "uin": session.uin, "channels": wanted},
                              on_logic(wanted), FAST_TIMEOUT)
        return None

    def logout(self, session, msg, now):
        self.end(session, None, notify_router=True)
        return wire.reply("bye", msg["rid"])

    # --- owners --------------------------------------------------------------
    def alive(self, logic_id, now) -> None:
        """A frame from the logic node (not a tick: says nothing of the shards it leads)."""
        self.links.heard(logic_id, now)

    def on_tick(self, logic_id, now, leads=(), stopping=False) -> None:
        self.links.tick(logic_id, now, stopping)                       # stopping: down at once
        if self.topo.replicated:
            self.placement.on_leads(logic_id, leads)

    # --- placement (nodes/cluster/placement.py; replication: docs/ha.md) -------------
    def owner_of(self, channel: str) -> str:
        return self.placement.server(channel)

    def _moved(self, channel, reply) -> dict:
        """WRONG_OWNER from a replica (remember the leader it names) or from a logic node that
        handed the channel over in a live reshard: the client retries (same ctime)."""
        if not self.topo.replicated:
            return wire.error(reply.get("rid"), wire.Err.UNAVAILABLE, f"channel {channel!r} is moving to "
                              "another logic node; retry with the same ctime")
        leader = reply.get("leader")
        self.placement.moved(channel, leader)
        return wire.error(reply.get("rid"), wire.Err.UNAVAILABLE, f"the leader of {channel!r} moved; "
                          "retry with the same ctime", leader=leader)

    def logic_up(self, logic_id, now) -> bool:
        return self.links.up(logic_id, now)

    def _owner_up(self, channel, now) -> str:
        owner = self.owner_of(channel)
        if not self.logic_up(owner, now):
            raise wire.ProtocolError(wire.Err.UNAVAILABLE, f"the owner of {channel!r} ({owner}) is down; "
                                     "retry later with the same ctime")
        return owner

    # --- sessions ------------------------------------------------------------
    def end(self, session, reason, notify_router: bool) -> None:
        if not self.sessions.end(session, reason):
            return
        self.active.discard(session)
        if reason is None:
            events.logout(session.uin, session.device, broker=self.id)
        else:
            events.kicked(session.uin, session.device, reason, broker=self.id)
        if notify_router:
            self.out.to_router(session.uin, {"t": "offline", "uin": session.uin,
                                             "device": session.device, "broker": self.id},
                               lambda _reply: None)

    def kick(self, session, reason, text, notify_router: bool) -> None:
        """End a session and tell its client why (best effort: a full queue cannot take it)."""
        if session.ended is None:
            self.out.reply(session.ident, {"t": "kicked", "reason": reason, "msg": text})
        self.end(session, reason, notify_router)

    def on_kick(self, msg) -> None:
        """The router says (uin, device) logged in on another broker."""
        session = self.sessions.by_key.get((msg.get("uin"), msg.get("device")))
        if session is not None:
            self.kick(session, "replaced", "logged in again on another broker", notify_router=False)

    def too_slow(self, ident) -> None:
        session = self.sessions.by_ident.get(ident)
        if session is not None:
            self.end(session, "too_slow", notify_router=True)

    def gone(self, ident) -> None:
        """The connection vanished (the transport said so): end its session now."""
        session = self.sessions.by_ident.get(ident)
        if session is not None:
            self.end(session, "disconnected", notify_router=True)

    def sweep(self, now) -> int:
        """End sessions silent for too long; return how many."""
        stale = self.sessions.expired(now)
        for session in stale:
            self.kick(session, "expired", "no request for too long; log in again", notify_router=True)
        self.buckets.prune(now)
        return len(stale)

    def touches(self, now) -> dict:
        """{router id: [[uin, device], ...]} of sessions active since the router last heard of them."""
        out = {}
        keep = set()
        for session in self.active:
            if session.ended is not None:
                continue
            if now - session.touched < session.interval / 2:
                keep.add(session)               # told recently enough; look again next round
                continue
            session.touched = now
            for router in self.topo.routers_for(session.uin, self.idc):
                out.setdefault(router, []).append([session.uin, session.device])
        self.active = keep
        return out

    def on_touched(self, reply) -> None:
        for uin, device in reply.get("moved", []):
            session = self.sessions.by_key.get((uin, device))
            if session is not None:
                self.kick(session, "replaced", "logged in again on another broker", notify_router=False)

    # --- deliveries ----------------------------------------------------------
    def deliver(self, packed: bytes, to, sender_uin: int, sender_device: int) -> int:
        """Push one message (packed once by logic) to its recipients' sessions here,
        except the device that sent it; return how many pushes."""
        idents = []
        by_uin = self.sessions.by_uin
        for uin in to:
            sessions = by_uin.get(uin)
            if not sessions:
                continue
            if uin != sender_uin:
                idents.extend(sessions)
            else:
                idents.extend(ident for ident, session in sessions.items() if session.device != sender_device)
        if idents:
            self.out.push_many(idents, packed)
        self.counts["deliveries"] += len(idents)
        return len(idents)


class BrokerNode(Node):
    type = "broker"
    needs_store = False

    def __init__(self, topo, node_id):
        super().__init__(topo, node_id)
        self.requests = Requests(topo.limits["request_timeout"], self.max_internal_frame, self.outbox)
        self.logics = self.peers("logic")
        self._watch_logic_links(self.logics)
        self.routers = self.peers("router")
        self.core = BrokerCore(node_id, topo, topo.read_secret(), self, self.clock(), self.spec.idc)
        self.sub = self.subscribe("logic", wire.topic(node_id), self.on_delivery)
        self.kicks = self.subscribe("router", wire.topic(node_id), self.on_router_notice)
        self.client = self.bind(zmq.ROUTER, self.spec.endpoint("client"),
                                maxmsgsize=int(topo.limits["max_frame"]),
                                sndhwm=int(topo.limits["session_queue"]), mandatory=True)
        # a ZeroMQ peer may choose its routing id -- even one that names a web connection
        # (WebGate.owns): those are refused, or replies meant for it would reach the browser
        self.clients = self.serve(self.client, wire.CLIENT_REQUESTS, self.core.handlers,
                                  max_len=int(topo.limits["max_frame"]), guard=self.core.guard,
                                  max_items=MAX_PIPELINED, refuse_ident=WebGate.owns)
        ws = self.spec.endpoints.get("ws")
        self.web = WebGate(self, ws) if ws else None     # WebSocket + HTTP clients, same dispatcher
        rpc = self.bind(zmq.ROUTER, self.spec.endpoint("rpc"))
        self.serve(rpc, wire.BROKER_RPC, {"status": self.handle_status, "fwd": self.handle_fwd})
        self.idc_peers = {b.id: self.connect(zmq.DEALER, b.endpoint("rpc")) for b in topo.of_type("broker")
                          if b.idc == self.spec.idc and b.id != node_id}     # to pass on msgs_idc
        for sock in self.idc_peers.values():
            self.loop.add(sock, self.requests.on_reply)
        self.loop.every(SWEEP_INTERVAL, self.housekeeping)
        self.loop.every(TOUCH_INTERVAL, self.touch_routers)
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

    def web_frame(self, ident, frame):
        """A frame from a WebSocket or HTTP client (nodes/broker/webgate.py): the ZeroMQ clients' dispatcher."""
        self.clients.frame(ident, frame, self.clock(), self.reply, self.core.max_frame, MAX_PIPELINED)

    def push_many(self, idents, packed):
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

    def to_logic(self, owner, msg, callback, timeout=None):
        self.requests.send(self.logics[owner], msg, callback, timeout)

    def to_router(self, uin, msg, callback, timeout=None):
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

    def on_send_failed(self, sock, key, exc):
        if sock is not self.client:
            return super().on_send_failed(sock, key, exc)
        if isinstance(exc, zmq.Again):
            self.core.too_slow(key)            # its queue is full: it falls behind, drop it
        elif exc.errno == zmq.EHOSTUNREACH:
            self.core.gone(key)

    # --- sockets -------------------------------------------------------------
    def on_delivery(self, msg):
        if msg.get("t") == "msgs":
            deliver = self.core.deliver
            for packed, to, uin, device in msg["items"]:
                deliver(packed, to, uin, device)
            if "logic" in msg:             # proof of life: under a backlog ticks come late
                self.core.alive(msg["logic"], self.clock())
        elif msg.get("t") == "msgs_idc":
            self.on_idc_delivery(msg)
            if "logic" in msg:
                self.core.alive(msg["logic"], self.clock())
        elif msg.get("t") == "tick":
            stopping = msg.get("stopping") is True
            self.core.on_tick(msg.get("logic"), self.clock(), msg.get("leads") or (), stopping)
            if stopping and msg.get("logic") in self.logics:      # its answers will not come
                self.requests.fail_peer(self.logics[msg["logic"]], f"logic {msg['logic']} is stopping; retry")

    def on_idc_delivery(self, msg):
        """This broker is its IDC's gateway for a remote logic node's turn: deliver its own part,
        pass the rest on to the other brokers of this IDC (the WAN was crossed once)."""
        try:
            parts = idcfanout.split(msg)
        except wire.ProtocolError as exc:
            log.warning("bad msgs_idc frame: %s", exc.msg)
            return
        for broker, items in parts.items():
            if broker == self.id:
                self.on_delivery({"t": "msgs", "items": items})
            elif broker in self.idc_peers:
                self.requests.send(self.idc_peers[broker], {"t": "fwd", "items": items}, lambda _reply: None)

    def handle_fwd(self, _ident, msg, _now=None):
        items = idcfanout.check_items(msg.get("items"))
        self.on_delivery({"t": "msgs", "items": items})
        return wire.reply("ok", msg["rid"], n=len(items))

    def _watch_logic_links(self, socks: dict) -> None:
        """Fail requests at once when the link to one of these logic nodes drops."""
        on_link_down(self, {n: sock for n, sock in socks.items()        # the WAN ones: heartbeats
                            if self.topo.node(n).idc != self.spec.idc}, self.on_logic_link_down,
                     self.on_logic_link_up)

    def on_topology(self, old, new):
        """A live reshard (nodes/cluster/topochange.py): route by the new topology, talk to its logic nodes."""
        self.core.topo = self.core.placement.topo = new
        before = dict(self.logics)
        self.refresh_peers(self.logics, "logic")
        self._watch_logic_links({n: s for n, s in self.logics.items() if n not in before})
        self.resubscribe(self.sub, new, "logic")
        return None

    def on_admit(self, new):
        """Hear the ticks of logic nodes a live reshard adds before routing to them, so a
        moved channel is served as soon as the brokers adopt (not a tick interval later)."""
        self.resubscribe(self.sub, new, "logic", keep=True)
        return None

    def on_logic_link_down(self, logic_id):
        """A heartbeat timed out on the link to a logic node of another IDC (cut WAN, frozen
        peer): it is down until the link is back and its next tick arrives (a tick read late
        from the SUB does not count); what waits on it is answered UNAVAILABLE now.  (Inside an IDC a link drops when the node dies: its ticks stop, or it said it
        stops; a reconnect flap there must not fail requests.)"""
        if logic_id not in self.logics:
            return                             # left the topology (a live reshard)
        self.core.links.link_down(logic_id)
        self.requests.fail_peer(self.logics[logic_id], f"lost the link to logic {logic_id}; retry")

    def on_logic_link_up(self, logic_id):
        self.core.links.link_up(logic_id)       # its ticks count again

    def on_router_notice(self, msg):
        if msg.get("t") == "kick":
            self.core.on_kick(msg)

    def housekeeping(self):
        self.requests.expire()
        self.core.sweep(self.clock())

    def touch_routers(self):
        for router, sessions in self.core.touches(self.clock()).items():
            self.requests.send(self.routers[router], {"t": "touch", "broker": self.id, "sessions": sessions},
                               self.core.on_touched)

    def status(self):
        now = self.clock()
        linked = sorted(k for k in self.logics if self.core.links.known(k) and self.core.logic_up(k, now))
        return dict(super().status(), sessions=len(self.core.sessions), logic_links=linked,
                    ready=len(linked) == len(self.logics), refused=dict(self.core.stats),
                    kicked=dict(self.core.sessions.ended), pending=self.core.pending,
                    requests=dict(self.dispatchers[0].requests), **self.core.counts,
                    **({"web": self.web.status()} if self.web is not None else {}))
