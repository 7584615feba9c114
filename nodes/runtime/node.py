"""What every node process shares: sockets, the loop, request serving, status.

A node type subclasses ``Node``, declares its request schemas and handlers
(a dispatch table, not an if/elif chain), and keeps its protocol logic in a
core object that never touches a socket.  Replies are queued during a loop
turn and sent in ``turn_end`` after the store's batch is written, so a reply
never promises something that is not on disk yet.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import zmq

from nodes.cluster import topochange
from nodes.cluster.topology import Topology, TopologyError
from nodes.protocol import auth, schema, wire
from nodes.protocol.dispatch import Dispatcher, Guard, Handler, PubDispatcher, hot_requests
from nodes.protocol.wire import Msg
from nodes.runtime import colocate, curve
from nodes.runtime.links import Relinker
from nodes.runtime.logs import events
from nodes.runtime.loop import Loop
from nodes.runtime.outbox import Outbox, Sock
from nodes.runtime.rpc import Requests
from nodes.storage.store import Store

log = logging.getLogger(__name__)

# ZMTP heartbeats on every node-to-node connection, both ends (docs/ha.md "Partitions heal
# fast"): a PING every HEARTBEAT_IVL; no traffic for HEARTBEAT_TIMEOUT drops the connection, so a
# cut link or a frozen peer is noticed in under a second (not after TCP's retransmission timeouts,
# and by the bound ROUTER/PUB too, which drops the dead peer's pipe) and the connecting side
# reconnects every RECONNECT_IVL_MAX at most, so a healed link carries traffic again within about
# a second.  A dropped DEALER keeps its queue (ZMQ_IMMEDIATE off): a reconnect flap loses at most
# the frame on the wire.  A reconnect that reaches something that is not a node ends libzmq's
# session for good; nodes/runtime/links.py's Relinker connects again (that was why heartbeats inside
# an IDC once left a healed follower unreachable: tests/test_ha_partition.py).
HEARTBEAT_IVL_MS = 200
HEARTBEAT_TIMEOUT_MS = 600
HEARTBEAT_TTL_MS = 1000       # what we ask the peer to wait for our traffic (sent in our PINGs)
CONNECT_TIMEOUT_MS = 1000     # a connect attempt that gets no answer is given up and tried again
# Connections a client-facing port lets the kernel queue before the loop accepts them (the
# kernel caps it at net.core.somaxconn).  libzmq's default is 100: in a login storm (every
# client of a restarted broker at once) the kernel dropped the SYNs beyond it and those clients
# retried after TCP's SYN backoff -- 1, 3, 7, 15, 31 s -- while the broker sat idle (issue 23:
# 10,000 logins, p99 31.2 s; docs/benchmarks.md "Login storm").
CLIENT_BACKLOG = 8192
# A node with a client port gives its clients' connections libzmq I/O threads of their own: a
# storm of TCP accepts and CURVE handshakes (~0.5 ms of an I/O thread each) must not queue the
# node's own traffic behind it.  With one shared I/O thread, 5,000 logins at once with
# client_curve held the broker's ``online`` requests to the router past their timeout: 5% of the
# logins were answered UNAVAILABLE (docs/benchmarks.md "Login storm").
CLIENT_IO_THREADS = 2
INTERNAL_AFFINITY = 1                                    # I/O thread 0: node-to-node sockets
CLIENT_AFFINITY = ((1 << CLIENT_IO_THREADS) - 1) << 1    # threads 1..N: client connections


def node_heartbeats(sock: Sock) -> None:
    """Turn on ZMTP heartbeats on a node-to-node socket, connecting or bound (client-facing
    sockets keep their own session heartbeats: a mobile client must not pay for 5 PINGs a
    second)."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TTL_MS)
    # a connect tried while a link is cut gets no SYN-ACK: without a bound it waits for TCP's SYN
    # retries (1, 3, 7 s ...), so a healed link was used again only ~7 s later; with it, ~2 s
    sock.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)


class Node:
    type = "node"
    needs_store = True      # brokers and routers keep only in-memory state
    gathers = False         # busy turns wait limits.gather_ms first (the message path: brokers, logic)
    clock = staticmethod(time.monotonic)      # the ``now`` handlers get; stores use wall time
    security: curve.NodeSecurity

    def __init__(self, topo: Topology, node_id: str, store_sync: bool | None = None,
                 host: Node | None = None, colocated: Iterable[str] = ()) -> None:
        self.topo = topo
        self.spec = topo.node(node_id)
        if self.spec.type != self.type:
            raise ValueError(f"node {node_id!r} is a {self.spec.type} in {topo.path}, not a {self.type}")
        self.id = node_id
        self.started = time.time()
        self.serves_clients = "client" in self.spec.endpoints
        # co-located (nodes/runtime/colocate.py): a guest runs in its host's process, on the host's
        # context, reached by the host over inproc:// twins of its rpc and pub endpoints
        self.host = host
        self.colocated = set(colocated)           # guests in this process: reached over inproc
        if host is None:
            self.ctx = zmq.Context(io_threads=1 + CLIENT_IO_THREADS if self.serves_clients else 1)
            self.ctx.setsockopt(zmq.LINGER, 0)
        else:
            self.ctx = host.ctx
        self.security = curve.NodeSecurity(topo, node_id, self.ctx,   # reads every key, or refuses
                                           host.security if host is not None else None)
        limits = topo.limits
        self.loop = Loop(gather=float(limits["gather_ms"]) / 1000, gather_frames=int(limits["gather_frames"])) \
            if self.gathers else Loop()
        self.store: Store | None = None
        if self.needs_store:
            self.store = Store(topo.node_dir(node_id),
                               sync=topo.storage["sync"] if store_sync is None else store_sync)
        self.outbox = Outbox(self.on_send_failed, self.max_internal_frame)   # sent after the batch
        self.loop.on_turn_end(self._end_turn)
        self.dispatchers: list[Dispatcher] = []
        self.pub_dispatchers: list[PubDispatcher] = []   # one per subscribe(): PUB frames by kind
        self.client_facing: set[Sock] = set()      # sockets clients connect to: strict msgpack decoding
        self.linked: set[Sock] = set()  # sockets watched by links.on_link_down (links.watch_peers skips them)
        self.relinker = Relinker(self.security)   # connects node sockets, and again when libzmq gives up
        self.requests: Requests | None = None   # the node's rpc.Requests, if it sends requests
        from nodes.runtime import metrics  # Prometheus /metrics if the topology gives this node one
        self.metrics = metrics.serve(self)

    @property
    def max_internal_frame(self) -> int:
        """Bytes of one frame between our own nodes, both ways (ZMQ_MAXMSGSIZE on bound internal
        sockets, requests, replies, PUB frames): the topology's ``limits.max_internal_frame``."""
        return int(self.topo.limits["max_internal_frame"])

    # --- sockets -------------------------------------------------------------
    def bind(self, kind: int, endpoint: str, maxmsgsize: int | None = None,
             sndhwm: int = 100000, mandatory: bool = False, rcvhwm: int = 100000) -> Sock:
        """A bound socket; anyone may connect, so frames are capped (internal limit by default)."""
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, sndhwm)
        sock.setsockopt(zmq.RCVHWM, rcvhwm)      # per connection: frames read ahead of the loop
        if kind == zmq.ROUTER:
            sock.setsockopt(zmq.ROUTER_MANDATORY, int(mandatory))
        if kind != zmq.PUB:
            sock.setsockopt(zmq.MAXMSGSIZE, maxmsgsize or self.max_internal_frame)
        client_facing = endpoint == self.spec.endpoints.get("client")
        if client_facing:
            self.client_facing.add(sock)
            sock.setsockopt(zmq.BACKLOG, CLIENT_BACKLOG)
        else:
            node_heartbeats(sock)          # a dead peer's pipe (and what is queued to it) is dropped
        self._io_thread(sock, client_facing)
        self.security.as_server(sock, client_facing=client_facing)
        sock.bind(endpoint)
        if self.host is not None and not client_facing:     # its host's way in: no TCP, no CURVE
            name = next((n for n, ep in self.spec.endpoints.items() if ep == endpoint), None)
            if name is not None:
                sock.bind(colocate.inproc_endpoint(self.id, name))
        return sock

    def endpoint_of(self, node_id: str, name: str, topo: Topology | None = None) -> str:
        """Where this node reaches ``name`` of a node: its inproc twin when that node runs in
        this process (co-located), else the endpoint in ``topo`` (the running topology)."""
        if node_id in self.colocated:
            return colocate.inproc_endpoint(node_id, name)
        return (topo or self.topo).node(node_id).endpoint(name)

    def _io_thread(self, sock: Sock, client_facing: bool = False) -> None:
        """Which libzmq I/O threads carry the socket's connections (set before bind/connect):
        on a node with a client port, clients' and nodes' never share one."""
        if self.serves_clients or self.host is not None:     # a guest's: its host's internal thread
            sock.setsockopt(zmq.AFFINITY, CLIENT_AFFINITY if client_facing else INTERNAL_AFFINITY)

    def connect(self, kind: int, endpoint: str, identity: bytes | None = None) -> Sock:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100000)
        sock.setsockopt(zmq.RCVHWM, 100000)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)      # peers on a LAN: come back quickly
        node_heartbeats(sock)
        self._io_thread(sock)
        if identity:
            sock.setsockopt(zmq.IDENTITY, identity)
        self.relinker.connect(sock, endpoint)           # a CURVE client of the node bound there
        return sock

    def peers(self, node_type: str) -> dict[str, Sock]:
        """A DEALER to the rpc endpoint of every node of a type; replies go to self.requests."""
        assert self.requests is not None, "peers() is for nodes that send requests"
        socks = {n.id: self.connect(zmq.DEALER, self.endpoint_of(n.id, "rpc")) for n in self.topo.of_type(node_type)}
        for sock in socks.values():
            self.loop.add(sock, self.requests.on_reply)
        return socks

    def subscribe(self, node_type: str, topic: bytes,
                  on_message: Mapping[str, Callable[[Msg], None]] | Callable[[Msg], None]) -> Sock:
        """A SUB connected to the pub endpoint of every node of a type, filtered on ``topic``.
        Frames are decoded, validated against that type's PUB schema (wire.PUB_FRAMES) and
        routed by a PubDispatcher (nodes/protocol/dispatch.py): ``on_message`` is a table
        {kind: handler(map)}, or one callable that gets every map."""
        table: Mapping[str, Callable[[Msg], None]] = on_message if isinstance(on_message, Mapping) else {}
        fallback = None if isinstance(on_message, Mapping) else on_message
        pubs = PubDispatcher(wire.PUB_FRAMES[node_type], table, fallback, node_type, self.clock)
        self.pub_dispatchers.append(pubs)

        def on_frames(frames: list[bytes]) -> None:
            pubs.frame(frames[-1], self.max_internal_frame)
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 100000)
        sub.setsockopt(zmq.SUBSCRIBE, topic)
        sub.setsockopt(zmq.RECONNECT_IVL, 100)
        sub.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        node_heartbeats(sub)
        self._io_thread(sub)
        for n in self.topo.of_type(node_type):
            self.relinker.connect(sub, self.endpoint_of(n.id, "pub"))
        self.loop.add(sub, on_frames)
        return sub

    def serve(self, sock: Sock, schemas: wire.Schemas, handlers: Mapping[str, Handler], max_len: int | None = None,
              guard: Guard | None = None, max_items: int = 1024, refuse_ident: Callable[[bytes], bool] | None = None,
              limits: Mapping[str, int] | None = None) -> Dispatcher:
        """Serve requests on a ROUTER through one Dispatcher (nodes/protocol/dispatch.py).

        A handler gets (identity or the guard's context, message, now) and
        returns a reply map, or None when the reply is sent later.  Client-facing
        sockets decode with wire.unpack_many's hardening, the others with the faster
        wire.unpack_internal; a client-facing socket's ``send``/``hb``/``sync`` go through
        fastpath.HotRequests first (Dispatcher's ``fast``).  Frames from a routing id ``refuse_ident`` says yes to are
        dropped unanswered.  ``limits`` binds the schema's named limits (max_text, ...).
        """
        if sock not in self.client_facing:      # every internal endpoint takes a live topology change
            schemas = dict(schemas, **schema.TOPOLOGY_REQUESTS)
            handlers = dict(handlers, topology=self.handle_topology)
        client = sock in self.client_facing     # ... and its hot requests (send, hb, sync) decoded in C
        dispatcher = Dispatcher(schemas, handlers, guard, wire.unpack_many if client else wire.unpack_internal,
                                limits, hot_requests(schemas, limits) if client else None)
        self.dispatchers.append(dispatcher)
        limit = max_len or self.max_internal_frame

        def reply(ident: bytes, msg: Msg) -> None:
            self.queue_reply(sock, ident, msg)

        def on_request(frames: list[bytes]) -> None:
            if refuse_ident is not None and refuse_ident(frames[0]):
                return                         # a routing id this socket must not serve: drop, no reply
            if len(frames) != 2:
                reply(frames[0], wire.error(None, wire.Err.BAD_FRAME, "send exactly one frame per message"))
                return
            dispatcher.frame(frames[0], frames[1], self.clock(), reply, limit, max_items)
        self.loop.add(sock, on_request)
        return dispatcher

    def queue_reply(self, sock: Sock, ident: bytes, msg: Msg) -> None:
        self.outbox.put(sock, ident, wire.pack(msg))

    def queue_packed(self, sock: Sock, key: bytes, packed: bytes) -> None:
        """Queue an already packed message for a ROUTER identity or a PUB topic."""
        self.outbox.put(sock, key, packed)

    def on_send_failed(self, sock: Sock, key: bytes | None, exc: zmq.ZMQError) -> None:
        """Hook: a peer's queue was full (zmq.Again) or the peer is gone (EHOSTUNREACH).  On a
        DEALER (key None) that means no connection takes the frame -- libzmq gave it up, or
        its queue is full -- so every request waiting on that peer fails now (UNAVAILABLE:
        the caller retries) instead of at its timeout."""
        failed = 0
        if key is None and self.requests is not None:
            failed = self.requests.fail_peer(sock, "could not send to the owning node (no connection); retry")
        events.emit("send_failed", exc.errno, logging.WARNING, error=str(exc), requests_failed=failed)

    def _end_turn(self) -> None:
        self.before_flush()
        if self.store is not None:
            self.store.flush()
        self.after_flush()
        self.outbox.flush()

    def before_flush(self) -> None:
        """Hook: stage this turn's writes."""

    def after_flush(self) -> None:
        """Hook: queue what may only leave after the durable write (acks, fan-out)."""

    # --- live topology changes (nodes/cluster/topochange.py) ----------------------------
    def handle_topology(self, _ident: object, msg: Msg, _now: float | None = None) -> Msg:
        """``admit``: take the keys of a newer topology too; ``adopt``: run by it from now on.
        Sending the running version again is answered as done (the operator may re-run)."""
        auth.verify(self.topo.read_secret(), msg["auth"], scope="admin")
        if msg["phase"] not in topochange.PHASES:
            raise wire.ProtocolError(wire.Err.BAD_FIELD, f"phase must be one of {', '.join(topochange.PHASES)}")
        try:
            new = topochange.parse_sent(msg["yaml"], self.topo)
            if new.version != self.topo.version:
                topochange.check_change(self.topo, new)
        except TopologyError as exc:
            raise wire.ProtocolError(wire.Err.BAD_FIELD, str(exc)) from None
        if new.version == self.topo.version and new.text != self.topo.text:
            raise wire.ProtocolError(wire.Err.BAD_FIELD, f"this node runs another topology with version "
                                     f"{new.version}; bump the version of {msg.get('path', 'the new file')}")
        extra: Msg = {}
        if msg["phase"] == "settle":
            if new.version != self.topo.version:
                raise wire.ProtocolError(wire.Err.BAD_FIELD, f"settle needs the running version "
                                         f"({self.topo.version}), not {new.version}: adopt it first")
            extra = self.on_settle() or {}
        elif msg["phase"] == "admit":
            self.security.admit(new)
            extra = self.on_admit(new) or {}
        elif new.version > self.topo.version:
            old = self.topo
            # kept first: a node that cannot keep it stays on the old one (a run again adopts it
            # whole), never on the new one with its hooks not run; a missing key file fails
            # before that (admit), so nothing is kept that the node could not start from
            self.security.admit(new)
            topochange.keep(new, self.id)      # a restart with the old file starts from this
            self.security.adopt(new)
            self.topo = new
            log.info("%s %s runs topology version %d now (was %d)", self.type, self.id, new.version, old.version)
            extra = self.on_topology(old, new) or {}
        else:
            extra = self.on_topology(self.topo, self.topo) or {}      # again: say where things stand
        return wire.reply("topology", msg["rid"], version=self.topo.version, **extra)

    def on_settle(self) -> Msg | None:
        """Hook: the live change to the running version is over (every node adopted it)."""
        return None

    def on_admit(self, new: Topology) -> Msg | None:
        """Hook: extra reply fields for ``admit`` (what would change under ``new``)."""
        return None

    def on_topology(self, old: Topology, new: Topology) -> Msg | None:
        """Hook: the node runs by ``new`` now (``old`` is ``new`` when asked again); extra
        reply fields."""
        return None

    def refresh_peers(self, socks: dict[str, Sock], node_type: str) -> None:
        """After a topology change: a DEALER to each new node of a type; those gone leave
        ``socks`` (what waits on them is answered UNAVAILABLE) and are disconnected, not closed:
        the socket may be in the poll results being served right now."""
        assert self.requests is not None, "refresh_peers() is for nodes that send requests"
        wanted = {n.id: n for n in self.topo.of_type(node_type)}
        for node_id in [n for n in socks if n not in wanted]:
            sock = socks.pop(node_id)
            self.requests.fail_peer(sock, f"{node_type} {node_id} left the topology")
            self.relinker.disconnect(sock)
        for node_id in wanted:
            if node_id not in socks:
                sock = socks[node_id] = self.connect(zmq.DEALER, self.endpoint_of(node_id, "rpc"))
                self.loop.add(sock, self.requests.on_reply)

    def resubscribe(self, sub: Sock, topo: Topology, node_type: str, keep: bool = False) -> None:
        """``sub`` (from ``subscribe``) follows the publishers of a type in ``topo``; ``keep``:
        connect to its new ones but leave no old one yet (at ``admit``)."""
        before = set(self.relinker.endpoints.get(sub, ()))
        after = {self.endpoint_of(n.id, "pub", topo) for n in topo.of_type(node_type)}
        for endpoint in () if keep else before - after:
            self.relinker.disconnect(sub, endpoint)
        for endpoint in sorted(after - before):
            self.relinker.connect(sub, endpoint)

    # --- status --------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "pid": os.getpid(),
                "uptime": round(time.time() - self.started, 3),
                "max_turn_ms": round(self.loop.max_turn * 1000, 3), "turns": self.loop.turns,
                "gathered": self.loop.gathered,
                "topology_version": self.topo.version,
                "refused_keys": self.security.refused}

    def handle_status(self, _ident: object, msg: Msg, _now: float | None = None) -> Msg:
        reply = wire.reply("status", msg["rid"], **self.status())
        if msg.get("reset_max") is True:           # start a new measurement window
            self.loop.max_turn = 0.0
        return reply

    # --- lifetime ------------------------------------------------------------
    def run(self, signals: bool = True) -> None:
        """Run the loop until stopped; ``signals``: SIGTERM/SIGINT stop it (main thread only)."""
        if signals:
            self.loop.install_signal_handlers()
        log.info("%s %s up (pid %d)", self.type, self.id, os.getpid())
        try:
            self.loop.run()
        finally:
            self.close()

    def close(self) -> None:
        try:
            if self.store is not None:
                self.store.close()
        finally:
            self.security.stop()
            if self.host is None:              # a guest's sockets go with its host's context
                self.ctx.destroy(linger=0)
        log.info("%s %s stopped", self.type, self.id)
