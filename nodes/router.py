"""Router node: who is online, on which device, through which broker.

Brokers report logins, logouts and disconnects for the uins this router owns.
Every change is published on PUB (topic ``presence``) as a delta with a
sequence number; logic nodes keep a replica (snapshot + deltas, the zguide
Clone pattern) so fan-out never asks the router per recipient.  A periodic
``tick`` carries the current sequence so a replica notices a lost delta
even when no further change follows.  ``epoch`` changes when the router
restarts, so replicas know to re-snapshot.
"""
from __future__ import annotations

import secrets

import zmq

from fastpath import OnlineBitmap

from . import wire
from .node import Node

PRESENCE_TOPIC = b"presence"
TICK_INTERVAL = 0.5


class RouterCore:
    """Online state and its change log; ``publish(msg)`` emits a delta."""

    def __init__(self, router_id: str, publish):
        self.router_id = router_id
        self.epoch = secrets.randbits(63)
        self.seq = 0
        self.online = {}                      # uin -> {device: broker}
        self.bitmap = OnlineBitmap()          # uins with at least one device online
        self.publish = publish

    def _emit(self, uin, device, broker):
        self.seq += 1
        self.publish({"t": "delta", "router": self.router_id, "epoch": self.epoch,
                      "seq": self.seq, "uin": uin, "device": device, "broker": broker})

    def set_online(self, uin: int, device: int, broker: str) -> None:
        devices = self.online.setdefault(uin, {})
        self.bitmap.set(uin)
        if devices.get(device) != broker:
            devices[device] = broker
            self._emit(uin, device, broker)

    def set_offline(self, uin: int, device: int, broker: str) -> bool:
        """Remove the session only if it is still on ``broker`` (a late
        disconnect from a broker the device already left changes nothing)."""
        devices = self.online.get(uin)
        if not devices or devices.get(device) != broker:
            return False
        del devices[device]
        if not devices:
            del self.online[uin]
            self.bitmap.clear(uin)
        self._emit(uin, device, None)
        return True

    def reset_broker(self, broker: str) -> int:
        gone = [(uin, dev) for uin, devices in self.online.items()
                for dev, b in devices.items() if b == broker]
        for uin, dev in gone:
            self.set_offline(uin, dev, broker)
        return len(gone)

    def snapshot(self) -> dict:
        entries = [[uin, dev, b] for uin, devices in self.online.items() for dev, b in devices.items()]
        return {"router": self.router_id, "epoch": self.epoch, "seq": self.seq, "entries": entries}

    def tick(self) -> dict:
        return {"t": "tick", "router": self.router_id, "epoch": self.epoch, "seq": self.seq}

    def sessions(self) -> int:
        return sum(len(d) for d in self.online.values())

    def users_online(self) -> int:
        return self.bitmap.count()


class RouterNode(Node):
    type = "router"
    needs_store = False

    def __init__(self, topo, node_id):
        super().__init__(topo, node_id)
        self.pub = self.bind(zmq.PUB, self.spec.endpoint("pub"))
        self.core = RouterCore(node_id, self.publish)
        rpc = self.bind(zmq.ROUTER, self.spec.endpoint("rpc"))
        self.serve(rpc, wire.ROUTER_REQUESTS, {
            "online": self.handle_online, "offline": self.handle_offline,
            "broker_reset": self.handle_broker_reset, "snapshot": self.handle_snapshot,
            "status": self.handle_status})
        self.loop.every(TICK_INTERVAL, lambda: self.publish(self.core.tick()), first=0)

    def publish(self, msg: dict) -> None:
        self.queue_frames(self.pub, [PRESENCE_TOPIC, wire.pack(msg)])

    def _check_owner(self, uin):
        if self.topo.router_for(uin) != self.id:
            raise wire.ProtocolError(wire.Err.WRONG_OWNER, f"router {self.id} does not own uin {uin}")

    def handle_online(self, _ident, msg):
        self._check_owner(msg["uin"])
        self.core.set_online(msg["uin"], msg["device"], msg["broker"])
        return wire.reply("ok", msg["rid"], seq=self.core.seq)

    def handle_offline(self, _ident, msg):
        self._check_owner(msg["uin"])
        changed = self.core.set_offline(msg["uin"], msg["device"], msg["broker"])
        return wire.reply("ok", msg["rid"], seq=self.core.seq, changed=changed)

    def handle_broker_reset(self, _ident, msg):
        n = self.core.reset_broker(msg["broker"])
        return wire.reply("ok", msg["rid"], seq=self.core.seq, removed=n)

    def handle_snapshot(self, _ident, msg):
        return wire.reply("snapshot", msg["rid"], **self.core.snapshot())

    def status(self):
        return dict(super().status(), sessions=self.core.sessions(), users=self.core.users_online(),
                    seq=self.core.seq)
