"""Log node-to-node connection changes: a ZeroMQ socket monitor on every outgoing socket.

A node's DEALER and SUB sockets connect to other nodes; libzmq reports on a
monitor socket when such a connection comes up or goes down.  The monitors
are drained by a loop timer (twice a second), not on the message path, and
every change is logged through the sampled ``events.peer`` with the peer's
node id from the topology.
"""
from __future__ import annotations

import zmq
from zmq.utils.monitor import parse_monitor_message

from .logs import events

EVENTS = {zmq.EVENT_CONNECTED: "up", zmq.EVENT_DISCONNECTED: "down"}
DRAIN_EVERY = 0.5          # seconds


def endpoint_owners(topo) -> dict:
    """{endpoint: node id} over every endpoint of the topology."""
    return {ep: spec.id for spec in topo.nodes.values() for ep in spec.endpoints.values()}


def watch_peers(node) -> list:
    """Attach monitors to the node's connecting sockets; the monitor sockets."""
    owners = endpoint_owners(node.topo)
    monitors = [sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
                for sock in list(node.loop.handlers) if sock.type in (zmq.DEALER, zmq.SUB)
                and sock not in node.linked]                # nodes/linkwatch.py has its own

    def drain():
        for mon in monitors:
            while True:
                try:
                    frames = mon.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                event = parse_monitor_message(frames)
                state = EVENTS.get(event["event"])
                if state is None:
                    continue
                endpoint = event["endpoint"].decode(errors="replace")
                peer = owners.get(endpoint, endpoint)
                events.peer(peer, state, node=node.id, endpoint=endpoint)
    if monitors:
        node.loop.every(DRAIN_EVERY, drain)
    return monitors
