"""Logic node: the single writer of the channels it owns -- the loop around the core.

The core (nodes/logic/core.py, and the parts it composes) decides; this module
only wires it to sockets: requests from the brokers' rpc, id blocks from the
counters, presence from the routers (nodes/logic/presence.py), deliveries and
ticks to the brokers over PUB.  Each loop turn ends with the one commit path:
``before_flush`` gives queued sends their ids and stages their rows in the
store's batch (with replication: a record per shard); ``after_flush``, once the
batch is written, acks what is stored -- at once, or with replication what a
majority holds (nodes/logic/replication.py) -- and fans it out.  A batch the disk
refuses acks nothing: the node stays up and refuses writes until there is room
again (nodes/logic/diskfull.py).
"""
from __future__ import annotations

import logging
import time

import zmq

from nodes.cluster.placement import ShardPlacement
from nodes.counter import counter_to_ask
from nodes.logic import diskfull, pushes
from nodes.logic.admin_ops import AdminOps
from nodes.logic.core import LogicCore
from nodes.logic.handoff import Handoff
from nodes.logic.presence import PresenceReplica
from nodes.logic.replication import Replication
from nodes.protocol import schema, wire
from nodes.runtime import clock as expiry_clock, statusprobe
from nodes.runtime.node import Node
from nodes.runtime.ports import Msg
from nodes.runtime.rpc import Requests
from nodes.storage import store as keys
from nodes.storage.store import Store, StoreError

log = logging.getLogger(__name__)

TICK_INTERVAL = 0.5
SWEEP_INTERVAL = 0.05                 # expired messages are deleted in slices of at most 5 ms
DEDUP_PRUNE_INTERVAL = 1.0            # 500 dedup rows looked at per second
REPLICATION_PROBE = 0.1               # followers left behind are caught up this often
JOIN_PROBE = 1.0                      # seconds a starting logic node asks the others their topology version


class LogicNode(Node):
    type = "logic"
    gathers = True                             # busy turns gather (nodes/runtime/loop.py)
    clock = staticmethod(time.time)            # replaced per node by its expiry clock's ``now``
    store: Store                               # opened by Node.__init__ (needs_store)

    def __init__(self, topo, node_id, host=None):
        super().__init__(topo, node_id, host=host)     # host: the broker whose process it runs in
        # expiries, stored times and the ``now`` of requests: wall-clock time that a step of this
        # node's wall clock does not move (nodes/runtime/clock.py, issue 23)
        self.expiry = expiry_clock.attach(self)
        self.clock = self.expiry.now
        self.requests: Requests = Requests(topo.limits["request_timeout"], self.max_internal_frame, self.outbox,
                                           on_late=self.on_late_reply)
        self.pub = self.bind(zmq.PUB, self.spec.endpoint("pub"))
        self.counters = self.peers("counter")
        self.routers = self.peers("router")
        self.replica = PresenceReplica(self.routers, self.request_snapshot)
        self.presence_sub = self.subscribe("router", wire.PRESENCE_TOPIC, self.replica.handlers())
        self.repl = self.coordinator = None
        self.alloc_failures = 0                # rotates id requests over a channel's counters
        if topo.replicated:                    # channels load per shard, when this node leads it
            placement = ShardPlacement(topo)
            self.core = LogicCore(node_id, topo, self.store, self.replica, self, topo.read_secret(), placement)
            self._start_replication(placement)
        else:
            self.core = LogicCore(node_id, topo, self.store, self.replica, self, topo.read_secret(),
                                  joining=self._joins_running_mesh())
            self._load()
        self._start_pushes()
        self.storage = diskfull.StorageState(self.store, self.core.stats)
        self.core.sends.refusal = self.storage.refuse()      # started on a full disk: refusing
        rpc = self.bind(zmq.ROUTER, self.spec.endpoint("rpc"))
        self.rpc = rpc
        c = self.core

        def by_msg(fn):
            return lambda _ident, msg, now: fn(msg, now)
        handlers = {
            "send": c.sends.send,
            "sync": by_msg(c.reads.sync),
            "heads": by_msg(c.reads.heads),
            "channel_create": self._admin_change(c.members.channel_create),
            "channel_add": self._admin_change(c.members.channel_add),
            "channel_remove": self._admin_change(c.members.channel_remove),
            "channel_show": self.handle_channel_show,
            "presence": self.handle_presence,
            "member": by_msg(c.members.member),
            "status": self.handle_status,
            # conversations (issue 24): edit/delete events, history, typing and watched presence
            "edit": c.sends.edit,
            "delete": c.sends.delete,
            "history": by_msg(c.history.history),
            "typing": by_msg(c.ephemeral.typing),
            "watch": by_msg(c.ephemeral.watch),
            "unwatch": by_msg(c.ephemeral.unwatch),
            # the conversation layer (issue 24): rooms and roles, read state
            "create": self._admin_change(c.rooms.create),
            "invite": self._admin_change(c.rooms.invite),
            "remove": self._admin_change(c.rooms.remove),
            "leave": self._admin_change(c.rooms.leave),
            "role": self._admin_change(c.rooms.role),
            "read": self._admin_change(c.readstate.read),
            "receipts": by_msg(c.readstate.receipts),
            "my_channels": by_msg(c.readstate.my_channels),
            "mute": self._admin_change(lambda msg, now: pushes.mute(c.serving, self.store, msg, now)),
            **AdminOps(c, self.replica).handlers(self._admin_change)}

        schemas = schema.LOGIC_REQUESTS
        if self.repl is not None:
            handlers.update(self.repl.handlers())
            schemas = dict(schemas, **schema.REPLICATION_REQUESTS)
        else:                                  # live reshard (replicated shards move by leadership)
            self.handoff = Handoff(self.core, self.store)
            handlers.update(self.handoff.handlers())
            schemas = dict(schemas, **schema.HANDOFF_REQUESTS)
        handlers = {t: fn if t in diskfull.READS else self.storage.written(fn) for t, fn in handlers.items()}
        self.serve(rpc, schemas, handlers)
        self.broker_topics = [wire.topic(b.id) for b in topo.of_type("broker")]
        self.loop.every(TICK_INTERVAL, self.tick, first=0)
        self.loop.every(SWEEP_INTERVAL, self.sweep)
        self.loop.every(DEDUP_PRUNE_INTERVAL, self.prune_dedup)
        self.loop.every(diskfull.PROBE, self.resume_writes)
        self.replica.start()
        if self.coordinator is not None:
            self.coordinator.start()

    def _start_pushes(self):
        """Offline pushes (nodes/logic/pushes.py) when the topology has a ``push`` section: the
        core decides and stores in this thread, a Sender thread POSTs."""
        self.pushes = self.push_sender = None
        settings = self.topo.push
        if settings is None:
            return
        core = pushes.Pushes(settings, self.topo.read_push_secret(), self.core.serving, self.replica,
                             self.store, self.core.stats, self.clock)
        sender = pushes.Sender(settings.webhook, settings.timeout)
        self.pushes, self.push_sender = core, sender
        self.core.sends.on_stored = core.on_stored
        self.loop.every(pushes.PUSH_TICK, lambda: pushes.pump(core, sender))
        self.loop.every(pushes.RESCAN_EVERY, core.rescan, first=0)

    # --- replication hooks (nodes/logic/replication.py, nodes/cluster/coordinator.py) -------
    def _start_replication(self, placement):
        from nodes.cluster.coordinator import Coordinator
        self.logic_peers = {n: sock for n, sock in self.peers("logic").items() if n != self.id}
        self.repl = Replication(self.id, self.topo, self, placement)
        ranks = {s: self.topo.replicas_of(s).index(self.id) for s in self.repl.shards}
        self.coordinator = Coordinator(self.ctx, self.topo.etcd_endpoints(), self.topo.cluster, self.id, ranks)
        # self.repl is set above (None until replication starts, which mypy cannot see in a lambda)
        self.loop.add(self.coordinator.pipe,
                      lambda frames: self.repl.on_coordinator(keys.decode(frames[-1])))  # type: ignore[union-attr]
        self.loop.every(REPLICATION_PROBE, self.repl.probe)

    def to_logic(self, peer, msg, callback, timeout):
        self.requests.send(self.logic_peers[peer], msg, callback, timeout)

    def announce(self, stopping: bool = False):
        """Tell every broker now which shards this node leads (also said in every tick);
        ``stopping``: take this node for down at once."""
        tick: dict[str, object] = {"t": "tick", "logic": self.id,
                "leads": [[s, e] for s, e in self.repl.placement.leading().items()] if self.repl else []}
        if stopping:
            tick["stopping"] = True
        frame = wire.pack(tick)
        for topic in self.broker_topics:
            self.queue_packed(self.pub, topic, frame)

    def _admin_change(self, fn):
        """A membership change (the operator's, or a user's: nodes/logic/rooms.py, a read cursor)
        is answered once the record carrying it is on a majority (the reply names the channel:
        a ``create`` computes it)."""
        def handler(ident, msg, now):
            reply = fn(msg, now)
            if self.repl is None:
                return reply
            self.repl.hold_reply(reply["channel"], ident, reply)
            return None
        return handler

    def handle_channel_show(self, _ident, msg, now=None):
        reply = self.core.members.channel_show(msg, now)
        if self.repl is not None:
            reply.update(self.repl.describe(msg["channel"]))
        return reply

    def _joins_running_mesh(self, timeout: float = JOIN_PROBE) -> bool:
        """Does another logic node run an older topology version?  Then this node was added
        by a live change still under way (docs/deploy.md): the channels it will serve are held
        elsewhere and come by hand-over, so it seeds none and serves only what it holds until
        ``settle``.  Nobody answering (a mesh starting up) or all on this version: not joining."""
        others = {n: self.topo.node(n).endpoint("rpc") for n in self.topo.ids("logic") if n != self.id}
        answers = statusprobe.status_all(self.ctx, self.security, others, timeout, self.max_internal_frame)   # own keys
        for peer, status in answers.items():
            if status is not None and status.get("topology_version", self.topo.version) < self.topo.version:
                log.warning("%s joins a running mesh (%s runs topology version %s): it serves the "
                            "channels it is handed until bin/mesh reshard ends", self.id, peer,
                            status.get("topology_version"))
                return True
        return False

    def on_settle(self):
        seeded = self.core.settle() if self.repl is None else []
        return {"seeded": seeded}

    def on_admit(self, new):
        """What a live reshard to ``new`` would move away from here (its dry run)."""
        if self.repl is not None:
            return None
        return {"would_leave": {n: new.logic_for(n) for n in self.core.channels if new.logic_for(n) != self.id}}

    def on_topology(self, old, new):
        """A live reshard: stop serving what moves away; the broker topics stay (brokers don't
        change in a live change)."""
        if new is not old:
            self.core.adopt(new)
        return {"leaving": self.core.leaving()}

    # --- out (what the core asks for) ----------------------------------------
    def reply(self, ident: bytes, msg: Msg) -> None:
        self.queue_reply(self.rpc, ident, msg)

    def publish(self, broker: str, msg: Msg) -> None:
        self.queue_packed(self.pub, wire.topic(broker), wire.pack(msg))

    def request_ids(self, channel: str, n: int, have: int) -> None:
        counter, timeout = counter_to_ask(self.topo, channel, self.alloc_failures)   # the next after a failure

        def done(reply):
            if reply.get("t") == "alloc":
                self.on_late_reply(reply)
            else:
                log.warning("id alloc for %s at %s failed: %s", channel, counter, reply.get("msg"))
                self.alloc_failures += 1
                self.core.ids.on_ids_failed(channel)
        self.requests.send(self.counters[counter], {"t": "alloc", "channel": channel, "n": n, "have": have},
                           done, timeout)

    def on_late_reply(self, reply):
        """Id blocks are persisted by the counter: use them even if they come late."""
        if reply.get("t") == "alloc":
            self.core.ids.on_ids(reply["channel"], reply["start"], reply["end"])

    def request_snapshot(self, router_id):
        def done(reply):
            if reply.get("t") == "snapshot":
                self.replica.on_snapshot(reply)
            else:
                self.replica.on_snapshot_failed(router_id)
        self.requests.send(self.routers[router_id], {"t": "snapshot"}, done)

    # --- sockets -------------------------------------------------------------
    def tick(self):
        """Tell every broker this logic node is alive (and keep its SUB link proven)."""
        self.requests.expire()
        self.core.ids.retry_leases()
        self.announce()
        self.core.ephemeral.expire(self.clock())
        self.replica.retry()
        if self.repl is not None:
            self.repl.reconcile()              # a lease that ran out ends leadership even when idle

    def sweep(self):
        now = self.expiry.check()              # the only place the wall clock is read
        if self.store.failed is None:          # deletes need room too: they wait for it
            self.core.retention.sweep(now)
            self.core.retention.prune_sent(now)

    def prune_dedup(self):
        if self.store.failed is None:
            self.core.retention.prune_dedup(self.clock())

    # --- the disk refuses writes (nodes/logic/diskfull.py) ------------------------------
    def _load(self):
        """Load the channels held here; on a full disk what loading would seed is not stored
        (loaded again once writes resume)."""
        try:
            self.core.load()
        except StoreError as exc:
            log.error("%s: channels loaded, but what was to be seeded is not stored: %s", self.id, exc)

    def resume_writes(self):
        """Once the disk has room: write again, and load the channels again from the store
        (as a restart would: what the failed batches held is gone)."""
        if not self.storage.resume():
            return
        self.core.sends.refusal = None
        if self.repl is None:
            self.core.forget(list(self.core.channels))
            self._load()
            self.core.retention.rewind_sent()

    def _end_turn(self):
        """The turn's one commit path (runtime Node._end_turn), and what happens when the
        disk refuses its batch: nothing of it is acked, and writes are refused from now on."""
        self.before_flush()
        try:
            self.store.flush()
        except StoreError:
            pass                               # the store is failed now: refuse() says so
        held = self.storage.take_held()
        refusal = self.storage.refuse()
        self.core.sends.refusal = refusal
        if refusal is None:
            for ident, reply in held:
                self.reply(ident, reply)
            self.after_flush()
        else:
            unstored = self.core.take_committed()          # not stored: refused, never acked
            self.core.sends.abandon(unstored, refusal[1], refusal[0])
            for ident, reply in held:
                self.reply(ident, wire.error(reply.get("rid"), *refusal))
            self.core.stats["storage_refused"] += len(unstored) + len(held)
            if self.repl is not None and self.repl.lead:
                self.repl.resign(refusal[1])    # a leader that cannot write leads nothing
        self.outbox.flush()

    def before_flush(self):
        self.core.assign(self.clock())
        if self.repl is not None:
            self.repl.stage()

    def after_flush(self):
        """The batch is written: ack what is stored -- this turn's sends, or with replication
        those of every record a majority holds now (one commit: one PUB frame per broker)."""
        self.core.commit(self.repl.release() if self.repl is not None else self.core.take_committed())

    def handle_presence(self, _ident, msg, _now=None):
        return wire.reply("presence", msg["rid"], uin=msg["uin"],
                          devices={str(d): b for d, b in self.replica.devices(msg["uin"]).items()})

    def status(self):
        c = self.core
        return dict(super().status(), channels=len(c.channels), presence_synced=self.replica.synced(),
                    joining=c.joining,
                    online=len(self.replica.online), stored=c.stats["stored"],
                    expired=c.stats["expired"], trimmed=c.stats["trimmed"], waiting=c.ids.waiting_total,
                    acks=c.stats["acks"], deliveries=c.stats["deliveries"], id_blocks=c.stats["id_blocks"],
                    requests=dict(self.dispatchers[0].requests),
                    sweep_s=round(c.retention.sweep_seconds, 3),
                    sweep_max_ms=round(c.retention.sweep_max * 1000, 3), clock=self.expiry.status(),
                    **self.storage.status(), **(self.pushes.status() if self.pushes else {}),
                    **({"shards": self.repl.status(), "replication": self.repl.stats} if self.repl else {}))

    def close(self):
        """A clean stop hands its shards over: what waits is answered UNAVAILABLE (the clients
        retry with the same ctime), brokers hear it leads nothing, and the lease is revoked."""
        if self.repl is not None:
            self.repl.resign("logic node stopping")
            self.announce(stopping=True)
            self.outbox.flush()
            for sock in (self.rpc, self.pub):       # let those last frames leave (ctx.destroy drops them)
                sock.close(linger=500)
        if self.coordinator is not None:
            self.coordinator.stop()
        if self.push_sender is not None:
            self.push_sender.stop()            # what it had not delivered stays stored
        super().close()
