"""The broker's protocol core: client sessions and requests, without sockets or a clock.

Checks login tokens, applies the length, fragment and rate limits, forwards
sends and syncs to the logic node serving the channel (nodes/broker/owners.py)
and presence to the router owning the uin, answers heartbeats from the parts
that answered in time, and pushes the deliveries the node hands it to the
right sessions.  The conversation requests (docs/protocol.md "Conversations")
go to their channel's owner with the user added; ``channels`` asks every
logic node and merges the answers into one page; typing has its own rate.
Stateless beyond its sessions: a client may reconnect to any broker.

The broker is the authority on a session's liveness: any request keeps it
alive, silence for ``session_timeout_factor`` intervals ends it (the router
hears of activity through batched ``touch`` requests and only expires
sessions itself, later, when a broker died).
"""
from __future__ import annotations

import collections
import math
from typing import Any

from nodes.broker.conversations import Conversations
from nodes.broker.limits import FragmentGroups, RetryWindow, TokenBuckets
from nodes.broker.owners import FAST_TIMEOUT, Owners
from nodes.cluster.topology import Topology
from nodes.protocol import auth, wire
from nodes.protocol.heartbeat import initial_interval
from nodes.runtime.logs import events
from nodes.runtime.ports import BrokerOut
from nodes.runtime.sessions import Session, SessionTable

CHARGED = frozenset(("send", "edit", "delete"))     # stored events: each costs a send token

class BrokerCore:
    """Sessions and client request handling: no sockets, no clock (``now`` is passed in).

    Effects go through ``out``: ``reply(ident, msg)``, ``push(ident, packed)``,
    ``push_many(idents, packed)``,
    ``to_logic(channel, msg, callback, timeout=None)``, ``to_router(uin, msg,
    callback, timeout=None)``.
    """

    def __init__(self, broker_id: str, topo: Topology, secret: bytes, out: BrokerOut, now: float, idc: str = ""):
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
        # sends the handler refused, by code (the schema's: Dispatcher.invalid)
        self.stats: collections.Counter[int | str] = collections.Counter()
        self.counts: collections.Counter[str] = collections.Counter()  # logins, acks, deliveries (metrics)
        self.client_limits = {k: limits[k] for k in ("max_text", "max_fragments", "rate", "burst",
                                                    "message_lifetime", "edit_window", "typing_rate",
                                                    "typing_burst", "watch_ttl", "group_max_members",
                                                    "receipts_max_members", "presence_max_members")}
        self.typing_buckets = TokenBuckets(limits["typing_rate"], limits["typing_burst"])
        self.max_pending = int(limits["max_pending"])
        self.max_session_inflight = int(limits["session_inflight"])
        # the client schema's named limits (nodes/protocol/schema.py), bound by the dispatcher
        self.schema_limits = {"max_text": self.max_text, "max_fragments": self.max_fragments,
                              "max_channels": int(topo.heartbeat["max_channels"]),
                              "group_max_members": int(limits["group_max_members"])}
        self.pending = 0
        self.sessions = SessionTable(float(topo.heartbeat["session_timeout_factor"]))
        self.active: set[Session] = set()       # sessions with requests since the last touch round
        self.owners = Owners(topo, now)         # which logic node serves a channel, and is it up
        self.handlers = {"login": self.login, "ping": self.ping, "send": self.send, "sync": self.sync,
                         "hb": self.heartbeat, "logout": self.logout}
        self.conversations = Conversations(self)    # channels, read, history, edit, typing, create, ...
        self.handlers.update(self.conversations.handlers())

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
        uin = auth.check_login(self.secret, msg, self.topo.jwt)
        net = msg.get("net", "wired")
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
            self.refused(exc.code)
            raise

    def refused(self, code) -> None:
        self.stats["refused"] += 1
        self.stats[code] += 1

    def _send(self, session, msg, now):
        """Forward a send, its fragment header checked against the session's open groups
        (only a group's first fragment costs a token); tokens as ``_charged``."""
        text = msg["text"]                     # length and ``frag`` checked by the schema at dispatch
        owner = self.owners.serving(msg["channel"], now)
        ctime = msg["ctime"]
        request = {"t": "send", "uin": session.uin, "device": session.device, "channel": msg["channel"],
                   "ctime": ctime, "text": text}
        charge, frag = True, None
        if "frag" in msg:
            frag = tuple(msg["frag"])
            if session.groups is None:
                session.groups = FragmentGroups()
            charge, _retry = session.groups.check(*frag, ctime)
            request["frag"] = list(frag)
        return self._charged(session, msg, request, owner, now, charge, frag)

    def _charged(self, session, msg, request, owner, now, charge=True, frag=None):
        """A stored event (send, edit, delete) costs a token only if the owner stores it
        new: the token is taken when it is forwarded and given back when the owner refuses
        it or answers it as a retry (``_forward``).  Over the rate, a request that may be a
        retry (RetryWindow: the device's client times, shared by its sends, edits and
        deletes) goes to the owner as a dedup-only ``lookup`` -- the original ack, or
        RATE_LIMITED with nothing stored; a newer client time is refused here at once."""
        ctime = request["ctime"]
        if session.retries is None:
            session.retries = RetryWindow()
        wait = self.buckets.take(session.uin, now) if charge else 0.0
        if wait:
            limited = wire.ProtocolError(wire.Err.RATE_LIMITED, f"over {self.buckets.rate:g} messages/s; "
                                         f"retry in {wait:.3f} s", retry_after=math.ceil(wait * 1000) / 1000)
            if not session.retries.may_be_retry(owner, ctime):
                raise limited                   # newer than anything the owner holds: a new message
            request["lookup"] = True
            return self._forward(session, msg, request, owner, limited=limited)
        if frag is not None:
            session.groups.accept(*frag, ctime)
        try:
            return self._forward(session, msg, request, owner, charged=charge)
        except wire.ProtocolError:
            if charge:
                self.buckets.refund(session.uin)    # BUSY: nothing forwarded
            raise

    def sync(self, session, msg, now):
        owner = self.owners.serving(msg["channel"], now)
        return self._forward(session, msg, {"t": "sync", "uin": session.uin,
                                            "channel": msg["channel"], "after": msg["after"]}, owner)

    # --- conversations: each request goes to its channel's owner (docs/protocol.md "Conversations")
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

    def _forward(self, session, msg, request, owner, charged=False, limited=None):
        """Send to the owning logic node; the reply goes back with the client's rid.

        A send's reply settles its token (``charged``: one was taken): given back when the
        owner refused it or answered it as a retry (``retry``), kept when it was stored
        new or its outcome is unknown.  A ``lookup`` the owner found nothing for becomes
        the ``limited`` error (RATE_LIMITED with the broker's ``retry_after``); a fragment
        index 0 found stored opens its group.  The owner's word on the device's newest
        client time (``newest``) feeds the session's RetryWindow; ``newest`` and ``retry``
        are the broker's, not the client's."""
        self._admit(session)
        rid, ident = msg["rid"], session.ident
        is_send = request["t"] in CHARGED
        if is_send:
            session.retries.forwarded(owner, request["ctime"])

        def done(reply):
            self._release(session)
            if is_send:
                self._settle(session, request, owner, reply, charged)
            if reply.get("t") == "ack":
                self.counts["acks"] += 1
            elif limited is not None and reply.get("code") == wire.Err.RATE_LIMITED:
                self.refused(limited.code)
                reply = wire.error_from(rid, limited)
            reply["rid"] = rid
            if reply.get("code") == wire.Err.WRONG_OWNER:
                reply = self.owners.moved(request["channel"], reply)
            self.out.reply(ident, reply)
        self.out.to_logic(owner, request, done, self.send_timeout)
        return None

    def _settle(self, session, request, owner, reply, charged) -> None:
        newest = reply.pop("newest", None)
        if newest is not None:
            session.retries.learn(owner, newest)
        retry = reply.pop("retry", False)
        if charged:
            code = reply.get("code")
            if retry or (code is not None and (code in wire.REFUSED_OUTCOME or code == wire.Err.WRONG_OWNER)):
                self.buckets.refund(session.uin)
        if "lookup" in request and "frag" in request and request["frag"][1] == 0 \
                and reply.get("t") == "ack" and session.groups is not None:
            session.groups.accept(*request["frag"], request["ctime"])

    def heartbeat(self, session, msg, now):
        """Router: mark alive, get the next interval.  Owning logic nodes: newest id of
        each listed channel plus what the client is missing, pushed before the ack.
        Answered within FAST_TIMEOUT: channels of owners that are down or slow are
        listed in ``unavailable``."""
        channels = msg.get("channels", {})    # shape and count checked by the schema at dispatch
        session.net = msg.get("net", session.net)
        self._admit(session)
        ack = wire.reply("hb_ack", msg["rid"], interval=session.interval, heads={}, first={}, upto={},
                         more=[], not_member=[], unavailable=[])
        groups = {}
        for name, have in channels.items():
            owner = self.owners.owner_of(name)
            if self.owners.up(owner, now):
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
                                         "broker": self.id, "net": session.net}, on_router, FAST_TIMEOUT)
        for owner, wanted in groups.items():
            self.out.to_logic(owner, {"t": "heads", "uin": session.uin, "channels": wanted},
                              on_logic(wanted), FAST_TIMEOUT)
        return None

    def logout(self, session, msg, now):
        self.end(session, None, notify_router=True)
        return wire.reply("bye", msg["rid"])

    def adopt(self, topo) -> None:
        """A live reshard (nodes/cluster/topochange.py): route by the new topology."""
        self.topo = topo
        self.owners.adopt(topo)

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
        """The router says (uin, device) logged in on another broker, or (reason ``kicked``) the
        HTTP API ends the user's sessions: then the routers are told it is offline, as for a logout."""
        session = self.sessions.by_key.get((msg.get("uin"), msg.get("device")))
        if session is None:
            return
        if msg.get("reason") == "kicked":
            self.kick(session, "kicked", msg.get("msg") or "ended by the server", notify_router=True)
        else:
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
        self.typing_buckets.prune(now)
        return len(stale)

    def touches(self, now) -> dict:
        """{router id: [[uin, device], ...]} of sessions active since the router last heard of them."""
        out: dict[str, list] = {}
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
    # the node's compiled fan-out (fastpath.Fanout: finds the sessions and queues in C), or None:
    # ``recipients`` + ``out.push_many``, its pure-Python twin (tests/test_fanout.py compares them)
    fanout: Any = None

    def deliver(self, packed: bytes, to, sender_uin: int, sender_device: int) -> int:
        """Push one message (packed once by logic) to its recipients' sessions here,
        except the device that sent it; return how many pushes."""
        if self.fanout is not None:
            n: int = self.fanout.deliver(self.sessions.by_uin, to, sender_uin, sender_device, packed)
        else:
            idents = recipients(self.sessions.by_uin, to, sender_uin, sender_device)
            if idents:
                self.out.push_many(idents, packed)
            n = len(idents)
        self.counts["deliveries"] += n
        return n


def recipients(by_uin: dict[int, dict[bytes, Session]], to, sender_uin: int, sender_device: int) -> list[bytes]:
    """The routing ids of the sessions of the uins in ``to``, except the sender's own device."""
    idents: list[bytes] = []
    for uin in to:
        sessions = by_uin.get(uin)
        if not sessions:
            continue
        if uin != sender_uin:
            idents.extend(sessions)
        else:
            idents.extend(ident for ident, session in sessions.items() if session.device != sender_device)
    return idents

