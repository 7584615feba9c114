"""Node-to-node connections: log their changes, and connect again where libzmq gave one up.

A node's DEALER and SUB sockets connect to other nodes; libzmq reports on a
monitor socket when such a connection comes up or goes down.  The monitor
is put on before the first connect (``Relinker.connect``: events of a
connection made before it would be lost); ``watch_peers`` drains them with a
loop timer (twice a second), not on the message path, and every change is
logged through the sampled ``events.peer`` with the peer's node id from the
topology.

libzmq reconnects a dropped connection by itself: EVENT_CONNECT_RETRIED
follows EVENT_DISCONNECTED at once.  Not after a protocol error in the
handshake: a CURVE client whose peer answered something that is not ZMTP 3
has its session ended for good -- no retry, no pipe to that endpoint any more,
every NOBLOCK send on a DEALER with no other peer raises EAGAIN, forever, and
a SUB hears nothing from that publisher again.  Measured (tests/test_ha_partition.py
with ZMTP heartbeats inside the IDC): the heartbeat dropped the connection
during the cut, the reconnect went out by the default route (the cut link's
subnet route was gone) to a proxy that answered "HTTP/1.1 400", and after
the heal the new leader could never reach the old one.  Anything on a node's
port that is not a node (a port reused while it was down, a middlebox) does
the same.  ``Relinker`` sees a disconnect that no retry followed and
connects that endpoint again, as long as it takes.

Some links are watched in the poll loop instead (``on_link_down``): with
ZMTP heartbeats on (nodes/runtime/node.py ``node_heartbeats``) libzmq closes a
connection whose peer stays silent for HEARTBEAT_TIMEOUT -- a cut WAN link or
a frozen peer -- and ``down(peer_id)`` is called on that disconnect, so a
broker fails the requests waiting on that peer and answers new ones
UNAVAILABLE without waiting for its request timeout or for the peer's ticks
to go stale.  ``Liveness`` is the rule that combines both signals -- what a
node heard from a peer lately, and whether its link is up -- into "is this
peer up" (the broker's view of its logic nodes).
"""
from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

import zmq
from zmq.utils.monitor import parse_monitor_message

from nodes.runtime.logs import events

if TYPE_CHECKING:
    from nodes.cluster.topology import Topology
    from nodes.runtime.curve import Identity
    from nodes.runtime.loop import Loop

Socket = zmq.Socket[bytes]

EVENTS: dict[int, str] = {zmq.EVENT_CONNECTED: "up", zmq.EVENT_DISCONNECTED: "down"}
MONITORED = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED
DRAIN_EVERY = 0.5          # seconds
GIVEN_UP = 1.0             # seconds after a disconnect that no retry followed: libzmq gave up


class LinkedNode(Protocol):
    """What the watchers need of a node (nodes/runtime/node.py)."""

    id: str
    topo: Topology
    loop: Loop
    relinker: Relinker
    linked: set[Socket]


class Relinker:
    """Connect again every (socket, endpoint) libzmq stopped reconnecting (see the module doc)."""

    def __init__(self, security: Identity) -> None:
        self.security = security            # connects as a CURVE client of the node bound there
        self.endpoints: dict[Socket, list[str]] = {}        # socket -> endpoints it was connected to
        self.monitors: dict[Socket, Socket] = {}            # socket -> its monitor socket (a socket has one)
        self.dropped: dict[tuple[Socket, str], float] = {}  # (socket, endpoint) -> when it dropped, until retried
        self.relinked = 0                   # connections made again
        self._addresses: dict[str, str] = {}   # endpoint -> the same with its host resolved (once)

    def connect(self, sock: Socket, endpoint: str) -> None:
        """Connect ``sock`` to a node's endpoint, and remember it for connecting again."""
        if sock not in self.monitors:
            self.monitors[sock] = sock.get_monitor_socket(MONITORED)
        self.security.connect(sock, endpoint)
        self.endpoints.setdefault(sock, []).append(endpoint)

    def disconnect(self, sock: Socket, endpoint: str | None = None) -> None:
        """Stop connecting ``sock`` to ``endpoint`` (every endpoint when None): its node left
        the topology (a live reshard)."""
        for ep in [e for e in self.endpoints.get(sock, ()) if endpoint in (None, e)]:
            self.endpoints[sock].remove(ep)
            self.dropped.pop((sock, ep), None)
            try:
                sock.disconnect(ep)
            except zmq.ZMQError:
                pass

    def event(self, sock: Socket, event: int, reported: str, now: float) -> None:
        """A monitor event of ``sock`` about the endpoint libzmq reports as ``reported``."""
        endpoint = self._connected_as(sock, reported)
        if endpoint is None:
            return
        if event == zmq.EVENT_DISCONNECTED:
            self.dropped[(sock, endpoint)] = now
        elif event in (zmq.EVENT_CONNECT_RETRIED, zmq.EVENT_CONNECTED):
            self.dropped.pop((sock, endpoint), None)

    def check(self, now: float) -> int:
        """Connect again what dropped ``GIVEN_UP`` ago with no retry since; how many."""
        given_up = [key for key, when in self.dropped.items() if now - when >= GIVEN_UP]
        for sock, endpoint in given_up:
            del self.dropped[(sock, endpoint)]
            if sock.closed:
                continue
            events.emit("relink", endpoint, logging.WARNING, endpoint=endpoint,     # sampled: may repeat
                        why="no reconnect after a disconnect (a handshake failed for good: not a node there?)")
            try:
                sock.disconnect(endpoint)       # forget the ended session, or connect would add a second
            except zmq.ZMQError:
                pass
            self.security.connect(sock, endpoint)
            self.relinked += 1
        return len(given_up)

    def _connected_as(self, sock: Socket, reported: str) -> str | None:
        """The endpoint ``sock`` was connected with that libzmq reports as ``reported`` (it
        reports host names resolved); None if it is not one of them."""
        endpoints = self.endpoints.get(sock, ())
        if reported in endpoints:
            return reported
        for endpoint in endpoints:
            if endpoint not in self._addresses:
                self._addresses[endpoint] = _resolved(endpoint)
            if self._addresses[endpoint] == reported:
                return endpoint
        return None


def _resolved(endpoint: str) -> str:
    """``tcp://name:port`` as ``tcp://address:port`` (as monitor events report it)."""
    scheme, _, rest = endpoint.partition("://")
    name, _, port = rest.rpartition(":")
    try:
        return f"{scheme}://{socket.gethostbyname(name)}:{port}"
    except OSError:
        return endpoint


def endpoint_owners(topo: Topology) -> dict[str, str]:
    """{endpoint: node id} over every endpoint of the topology."""
    return {ep: spec.id for spec in topo.nodes.values() for ep in spec.endpoints.values()}


def on_event(node: LinkedNode, sock: Socket, frames: list[bytes], owners: Mapping[str, str]) -> str | None:
    """One monitor message of ``sock``: logged and told to the node's Relinker; the state it
    reports ("up", "down") or None."""
    event = parse_monitor_message(frames)
    endpoint = event["endpoint"].decode(errors="replace")
    node.relinker.event(sock, event["event"], endpoint, time.monotonic())
    state = EVENTS.get(event["event"])
    if state is not None:
        events.peer(owners.get(endpoint, endpoint), state, node=node.id, endpoint=endpoint)
    return state


def watch_peers(node: LinkedNode) -> list[Socket]:
    """Drain the monitors of the node's connecting sockets; the monitor sockets.  The same timer
    connects again what libzmq gave up, on these sockets and on those ``on_link_down`` watches."""
    def drain() -> None:
        owners = endpoint_owners(node.topo)                 # a live reshard may change them
        for sock, mon in list(node.relinker.monitors.items()):
            if sock in node.linked:
                continue                                    # on_link_down drains its own
            while True:
                try:
                    frames = mon.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                on_event(node, sock, frames, owners)
        node.relinker.check(time.monotonic())
    node.loop.every(DRAIN_EVERY, drain)
    return [mon for sock, mon in node.relinker.monitors.items() if sock not in node.linked]


def on_link_down(node: LinkedNode, socks: Mapping[str, Socket], down: Callable[[str], None],
                 up: Callable[[str], None] | None = None) -> list[Socket]:
    """Watch ``socks`` ({peer id: socket connected by the node's Relinker}); ``down(peer id)`` on
    each disconnect, ``up(peer id)`` when connected again.  These sockets' monitors are drained
    in the poll loop (``watch_peers`` skips them), their changes logged and told to the
    Relinker."""
    owners = endpoint_owners(node.topo)
    monitors: list[Socket] = []
    for peer, sock in socks.items():
        mon = node.relinker.monitors[sock]
        node.linked.add(sock)

        def on_frames(frames: list[bytes], peer: str = peer, sock: Socket = sock) -> None:
            state = on_event(node, sock, frames, owners)
            if state == "down":
                down(peer)
            elif state == "up" and up is not None:
                up(peer)
        node.loop.add(mon, on_frames)
        monitors.append(mon)
    return monitors


class Liveness:
    """Is a peer up: heard from within ``down_after`` seconds and its link not dropped.  No
    clock: callers pass ``now``.

    A peer never heard from counts as up for ``grace`` seconds after ``started`` (the mesh is
    starting).  A dropped link (``link_down``) makes it down at once, and nothing heard undoes
    that until the link is back (``link_up``): a tick read late from a queue filled before the
    drop must not.  A peer that says it stops (``tick(..., stopping=True)``) is down at once and
    only a tick makes it up again (other frames do not)."""

    def __init__(self, down_after: float, grace: float, started: float) -> None:
        self.down_after, self.grace, self.started = down_after, grace, started
        self.last: dict[str, float] = {}                        # peer -> when last heard (-inf: down until a tick)
        self.unlinked: set[str] = set()                 # peers whose link dropped, until it is back

    def tick(self, peer: str, now: float, stopping: bool = False) -> None:
        """A tick from ``peer`` (``stopping``: it said it stops)."""
        self.last[peer] = float("-inf") if stopping else now

    def heard(self, peer: str, now: float) -> None:
        """Some other frame from ``peer``: proof of life, but one that said it stops stays down."""
        if self.last.get(peer) != float("-inf"):
            self.last[peer] = now

    def link_down(self, peer: str) -> None:
        self.unlinked.add(peer)
        self.last[peer] = float("-inf")

    def link_up(self, peer: str) -> None:
        self.unlinked.discard(peer)             # its ticks count again

    def known(self, peer: str) -> bool:
        return peer in self.last

    def up(self, peer: str, now: float) -> bool:
        if peer in self.unlinked:
            return False
        last = self.last.get(peer)
        if last is None:
            return now - self.started < self.grace
        return now - last < self.down_after
