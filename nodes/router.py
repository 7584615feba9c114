"""Router node: who is online, on which device, through which broker.

Brokers report logins, logouts and disconnects for the uins this router owns,
and (``touch``) which sessions were active: brokers are the authority on a
session's liveness; this router expires a session by itself only after a
longer backstop deadline, for the case of a broker that died.  A login of
a (uin, device) on another broker publishes a ``kick`` for the old broker
(topic = its id), so one device has one session in the whole cluster; an
operator's ``kick_user`` (the HTTP API, with an admin token) sends one for every
session of a uin, with reason ``kicked``.
Every change is published on PUB (topic ``presence``) as a delta with a
sequence number; logic nodes keep a replica (snapshot + deltas, the zguide
Clone pattern) so fan-out never asks the router per recipient.  A periodic
``tick`` carries the current sequence so a replica notices a lost delta
even when no further change follows.  ``epoch`` changes when the router
restarts, so replicas know to re-snapshot.
"""
from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import zmq

from fastpath import OnlineBitmap
from nodes.cluster.topology import DEFAULT_HEARTBEAT, Topology
from nodes.protocol import auth, schema, wire
from nodes.protocol.heartbeat import Beat, HeartbeatConfig
from nodes.protocol.wire import PRESENCE_TOPIC
from nodes.runtime.deadlines import DeadlineHeap
from nodes.runtime.node import Node
from nodes.runtime.ports import Msg

TICK_INTERVAL = 0.5
SWEEP_INTERVAL = 0.2


class Publish(Protocol):
    """Emit a presence delta or tick; with ``broker``, a notice to that broker (RouterNode.publish)."""

    def __call__(self, msg: Msg, broker: str | None = None, /) -> None: ...


class RouterCore:
    """Online state, heartbeats and the change log; ``publish(msg)`` emits a delta.

    Times are passed in (monotonic seconds) so the interval logic and the
    offline sweep can be tested without waiting.
    """

    BACKSTOP_SLACK = 2.0      # seconds beyond (factor + 1) intervals before a silent session goes

    def __init__(self, router_id: str, publish: Publish, hb_cfg: HeartbeatConfig | None = None) -> None:
        self.router_id = router_id
        self.epoch = secrets.randbits(63)
        self.seq = 0
        self.online: dict[int, dict[int, str]] = {}   # uin -> {device: broker}
        self.bitmap = OnlineBitmap()          # uins with at least one device online
        self.beats: dict[tuple[int, int], Beat] = {}   # (uin, device) -> Beat
        self._deadlines = DeadlineHeap(self.beats.get, lambda beat: beat.deadline)   # by (uin, device)
        self.hb_cfg = hb_cfg or DEFAULT_HEARTBEAT
        self.publish = publish
        self.expired = 0

    def _emit(self, uin: int, device: int, broker: str | None) -> None:
        self.seq += 1
        self.publish({"t": "delta", "router": self.router_id, "epoch": self.epoch,
                      "seq": self.seq, "uin": uin, "device": device, "broker": broker})

    def _track(self, uin: int, device: int, beat: Beat) -> None:
        """Make sure the sweep looks at the session by its deadline (nodes/runtime/deadlines.py)."""
        self._deadlines.track((uin, device), beat)

    def _backstop(self, beat: Beat, now: float) -> None:
        beat.deadline = now + (self.hb_cfg["session_timeout_factor"] + 1) * beat.interval + self.BACKSTOP_SLACK

    def set_online(self, uin: int, device: int, broker: str, net: Any = "wired", now: float = 0.0) -> float:
        """Login (or a heartbeat from an unknown session): online on ``broker``; the interval.
        A session of the device on another broker is kicked there."""
        devices = self.online.setdefault(uin, {})
        self.bitmap.set(uin)
        old = devices.get(device)
        if old != broker:
            devices[device] = broker
            self._emit(uin, device, broker)
            if old is not None:
                self.publish({"t": "kick", "uin": uin, "device": device, "broker": old, "by": broker},
                             old)
        beat = self.beats[(uin, device)] = Beat(broker, net, now, self.hb_cfg)
        self._backstop(beat, now)
        self._track(uin, device, beat)
        return beat.interval

    def heartbeat(self, uin: int, device: int, broker: str, net: Any, now: float) -> float | None:
        """Record a heartbeat; the next interval to ask of the client, or None when the
        device has moved to another broker since (the asking session is stale)."""
        beat = self.beats.get((uin, device))
        if beat is None:                        # unknown (this router restarted): relearn it
            return self.set_online(uin, device, broker, net, now)
        if beat.broker != broker:
            return None
        interval = beat.beat(now, net, self.hb_cfg)
        self._backstop(beat, now)
        self._track(uin, device, beat)
        return interval

    def touch(self, broker: str, sessions: Iterable[Sequence[int]], now: float) -> list[list[int]]:
        """Sessions of ``broker`` that were active: push their deadlines out.  Returns the
        ones that have moved to another broker (the broker ends them)."""
        moved: list[list[int]] = []
        for uin, device in sessions:
            beat = self.beats.get((uin, device))
            if beat is None:
                self.set_online(uin, device, broker, "wired", now)
            elif beat.broker != broker:
                moved.append([uin, device])
            else:
                self._backstop(beat, now)
                self._track(uin, device, beat)
        return moved

    def set_offline(self, uin: int, device: int, broker: str) -> bool:
        """Remove the session only if it is still on ``broker`` (a late
        disconnect from a broker the device already left changes nothing)."""
        devices = self.online.get(uin)
        if not devices or devices.get(device) != broker:
            return False
        del devices[device]
        self.beats.pop((uin, device), None)
        if not devices:
            del self.online[uin]
            self.bitmap.clear(uin)
        self._emit(uin, device, None)
        return True

    def kick_user(self, uin: int, text: str) -> list[list[Any]]:
        """An operator ends every session of ``uin`` (the HTTP API's kick, docs/api.md): each broker
        holding one gets a ``kick`` with reason ``kicked`` and ``text`` for the client.  Returns the
        [device, broker] pairs told.  The table keeps them until each broker reports the session
        offline, as for any session end (a notice lost on PUB leaves the table true)."""
        told: list[list[Any]] = []
        for device, broker in sorted(self.online.get(uin, {}).items()):
            self.publish({"t": "kick", "uin": uin, "device": device, "broker": broker, "by": "api",
                          "reason": "kicked", "msg": text}, broker)
            told.append([device, broker])
        return told

    def sweep(self, now: float, budget: int = 2000) -> int:
        """Take offline the sessions whose deadline passed; at most ``budget`` heap
        entries per call, so one sweep never stalls the loop.  Returns how many went offline."""
        gone = 0
        for uin, device in self._deadlines.expired(now, budget):
            gone += self.set_offline(uin, device, self.beats[(uin, device)].broker)
        self.expired += gone
        return gone

    def reset_broker(self, broker: str) -> int:
        gone = [(uin, dev) for uin, devices in self.online.items()
                for dev, b in devices.items() if b == broker]
        for uin, dev in gone:
            self.set_offline(uin, dev, broker)
        return len(gone)

    def snapshot(self) -> Msg:
        entries = [[uin, dev, b] for uin, devices in self.online.items() for dev, b in devices.items()]
        return {"router": self.router_id, "epoch": self.epoch, "seq": self.seq, "entries": entries}

    def tick(self) -> Msg:
        return {"t": "tick", "router": self.router_id, "epoch": self.epoch, "seq": self.seq}

    def sessions(self) -> int:
        return len(self.beats)

    def users_online(self) -> int:
        count: int = self.bitmap.count()      # the Cython bitmap: untyped
        return count


class RouterNode(Node):
    type = "router"
    needs_store = False

    def __init__(self, topo: Topology, node_id: str) -> None:
        super().__init__(topo, node_id)
        self.pub = self.bind(zmq.PUB, self.spec.endpoint("pub"))
        self.core = RouterCore(node_id, self.publish, topo.heartbeat)
        rpc = self.bind(zmq.ROUTER, self.spec.endpoint("rpc"))
        self.serve(rpc, schema.ROUTER_REQUESTS, {
            "online": self.handle_online, "offline": self.handle_offline, "hb": self.handle_hb,
            "touch": self.handle_touch, "kick_user": self.handle_kick_user,
            "broker_reset": self.handle_broker_reset, "snapshot": self.handle_snapshot,
            "status": self.handle_status})
        self.loop.every(TICK_INTERVAL, lambda: self.publish(self.core.tick()), first=0)
        self.loop.every(SWEEP_INTERVAL, lambda: self.core.sweep(time.monotonic()))

    def publish(self, msg: Msg, broker: str | None = None) -> None:
        """Presence deltas and ticks to logic nodes; with ``broker``, a notice to that broker."""
        self.queue_packed(self.pub, PRESENCE_TOPIC if broker is None else wire.topic(broker), wire.pack(msg))

    def _broker_idc(self, broker: str | None) -> str | None:
        """Presence lives in the IDC of the user's broker (docs/ha.md "Home IDC")."""
        spec = self.topo.nodes.get(broker)
        return spec.idc if spec is not None else None

    def _check_owner(self, uin: int, broker: str | None = None) -> None:
        if self.id not in self.topo.routers_for(uin, self._broker_idc(broker)):
            raise wire.ProtocolError(wire.Err.WRONG_OWNER, f"router {self.id} does not own uin {uin}")

    def handle_online(self, _ident: bytes, msg: Msg, now: float) -> Msg:
        self._check_owner(msg["uin"], msg["broker"])
        interval = self.core.set_online(msg["uin"], msg["device"], msg["broker"], msg.get("net"), now)
        return wire.reply("ok", msg["rid"], seq=self.core.seq, interval=interval)

    def handle_hb(self, _ident: bytes, msg: Msg, now: float) -> Msg:
        self._check_owner(msg["uin"], msg["broker"])
        interval = self.core.heartbeat(msg["uin"], msg["device"], msg["broker"], msg.get("net"), now)
        if interval is None:
            return wire.reply("hb", msg["rid"], moved=True)
        return wire.reply("hb", msg["rid"], interval=interval)

    def handle_touch(self, _ident: bytes, msg: Msg, now: float) -> Msg:
        idc = self._broker_idc(msg["broker"])
        mine = [s for s in msg["sessions"] if self.id in self.topo.routers_for(s[0], idc)]
        return wire.reply("touched", msg["rid"], moved=self.core.touch(msg["broker"], mine, now))

    def handle_offline(self, _ident: bytes, msg: Msg, _now: float) -> Msg:
        self._check_owner(msg["uin"], msg["broker"])
        changed = self.core.set_offline(msg["uin"], msg["device"], msg["broker"])
        return wire.reply("ok", msg["rid"], seq=self.core.seq, changed=changed)

    def handle_kick_user(self, _ident: bytes, msg: Msg, _now: float) -> Msg:
        """The HTTP API's kick (nodes/broker/httpapi.py): no owner check -- a uin's routers of
        every IDC are asked, and a router that holds none of its sessions answers an empty list."""
        auth.verify(self.topo.read_secret(), msg["auth"], scope="admin")
        return wire.reply("kicks", msg["rid"], sessions=self.core.kick_user(msg["uin"], msg.get("msg", "")))

    def handle_broker_reset(self, _ident: bytes, msg: Msg, _now: float) -> Msg:
        n = self.core.reset_broker(msg["broker"])
        return wire.reply("ok", msg["rid"], seq=self.core.seq, removed=n)

    def handle_snapshot(self, _ident: bytes, msg: Msg, _now: float) -> Msg:
        return wire.reply("snapshot", msg["rid"], **self.core.snapshot())

    def status(self) -> dict[str, Any]:
        return dict(super().status(), sessions=self.core.sessions(), users=self.core.users_online(),
                    seq=self.core.seq, expired=self.core.expired)
