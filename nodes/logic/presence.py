"""A logic node's replica of the routers' online state (zguide Clone pattern).

Each router publishes deltas numbered 1, 2, 3 ... within an epoch (one
router run).  The replica applies a delta only when it is the next number;
on a gap, a new epoch or a tick that shows it is behind, it asks for a
snapshot and buffers deltas until the snapshot arrives.  No sockets here:
the caller passes decoded messages in and sends snapshot requests out.

Each router's view is kept apart and a uin's devices are the union over
the views: with replication a uin's presence lives on two routers, and a
restarted (empty) one must not take away what the other still holds.
"""
from __future__ import annotations

from fastpath import OnlineBitmap


class _RouterView:
    __slots__ = ("epoch", "seq", "synced", "requested", "buffer", "online")

    def __init__(self):
        self.epoch = None
        self.seq = 0
        self.synced = False
        self.requested = False
        self.buffer = []
        self.online = {}                        # uin -> {device: broker}, as this router says


class PresenceReplica:
    def __init__(self, router_ids, request_snapshot):
        self.views = {r: _RouterView() for r in router_ids}
        self.online = {}                        # uin -> {device: broker}
        self.version = 0                        # bumped when caches cannot be patched: fan-out plans key on it
        self.on_change = None                   # (uin, brokers before, brokers after) for one delta
        self.bitmap = OnlineBitmap()            # uins in self.online, for batch filtering
        self.request_snapshot = request_snapshot
        self.snapshots = 0

    # --- incoming ------------------------------------------------------------
    def start(self) -> None:
        for router_id in self.views:
            self._resync(router_id)

    def handlers(self) -> dict:
        """The routers' PUB frames this replica follows, by kind (Node.subscribe)."""
        return {"delta": self.on_delta, "tick": self.on_tick}

    def on_delta(self, msg: dict) -> None:
        view = self.views.get(msg.get("router"))
        if view is not None:
            if not view.synced:
                view.buffer.append(msg)
                self._resync(msg["router"])
            elif msg["epoch"] != view.epoch or msg["seq"] != view.seq + 1:
                if msg["epoch"] == view.epoch and msg["seq"] <= view.seq:
                    return                      # already applied
                view.buffer.append(msg)
                self._resync(msg["router"])
            else:
                self._apply(view, msg)

    def on_tick(self, msg: dict) -> None:
        view = self.views.get(msg.get("router"))
        if view is not None and view.synced and (msg["epoch"] != view.epoch or msg["seq"] > view.seq):
            self._resync(msg["router"])

    def on_snapshot(self, msg: dict) -> None:
        view = self.views.get(msg.get("router"))
        if view is None:
            return
        old, view.online = view.online, {}
        for uin, device, broker in msg["entries"]:
            view.online.setdefault(uin, {})[device] = broker
        for uin in old.keys() | view.online.keys():
            self._merge(uin)
        view.epoch, view.seq = msg["epoch"], msg["seq"]
        self.version += 1
        view.synced, view.requested = True, False
        self.snapshots += 1
        buffered, view.buffer = view.buffer, []
        for delta in sorted((d for d in buffered if d["epoch"] == view.epoch and d["seq"] > view.seq),
                            key=lambda d: d["seq"]):
            if delta["seq"] != view.seq + 1:
                self._resync(msg["router"])
                view.buffer = [d for d in buffered if d["seq"] > view.seq]
                return
            self._apply(view, delta)

    def on_snapshot_failed(self, router_id: str) -> None:
        """The snapshot request timed out: ask again on the next tick or delta."""
        view = self.views.get(router_id)
        if view is not None:
            view.requested = False
            view.synced = False

    def retry(self) -> None:
        """Ask again for every snapshot that failed (called on a timer)."""
        for router_id, view in self.views.items():
            if not view.synced and not view.requested:
                self._resync(router_id)

    # --- internals -----------------------------------------------------------
    def _resync(self, router_id: str) -> None:
        view = self.views[router_id]
        view.synced = False
        if not view.requested:
            view.requested = True
            self.request_snapshot(router_id)

    def _apply(self, view, delta) -> None:
        """One delta.  The brokers a uin is reachable on before and after it go to
        ``on_change`` (fan-out plans are patched for that uin alone); without a listener
        the version is bumped and every cache keyed on it starts over."""
        uin, device, broker = delta["uin"], delta["device"], delta["broker"]
        devices = self.online.get(uin)
        before = set(devices.values()) if devices else set()
        if broker is None:
            devices = view.online.get(uin)
            if devices is not None:
                devices.pop(device, None)
                if not devices:
                    del view.online[uin]
        else:
            view.online.setdefault(uin, {})[device] = broker
        self._merge(uin)
        view.seq = delta["seq"]
        if self.on_change is None:
            self.version += 1
            return
        devices = self.online.get(uin)
        after = set(devices.values()) if devices else set()
        if after != before:
            self.on_change(uin, before, after)

    def _merge(self, uin) -> None:
        """A uin's devices: the union of what the routers holding it say."""
        merged = None
        for view in self.views.values():
            devices = view.online.get(uin)
            if devices:
                if merged is None:
                    merged = dict(devices)
                else:
                    merged.update(devices)
        if merged:
            self.online[uin] = merged
            self.bitmap.set(uin)
        elif self.online.pop(uin, None) is not None:
            self.bitmap.clear(uin)

    # --- queries -------------------------------------------------------------
    def devices(self, uin: int) -> dict:
        return self.online.get(uin, {})

    def brokers_for(self, members) -> dict:
        """Group the online uins among ``members`` (array('I')) by broker: {broker: [uin, ...]}."""
        groups: dict = {}
        online = self.online
        for uin in self.bitmap.filter_online(members):
            devices = online[uin]
            if len(devices) == 1:
                for broker in devices.values():
                    groups.setdefault(broker, []).append(uin)
            else:
                for broker in set(devices.values()):
                    groups.setdefault(broker, []).append(uin)
        return groups

    def synced(self) -> bool:
        return all(v.synced for v in self.views.values())
