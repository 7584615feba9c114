"""React at once when a node-to-node connection drops (a ZMTP heartbeat timed out).

With heartbeats on (nodes/node.py ``node_heartbeats``) libzmq closes a
connection whose peer stays silent for HEARTBEAT_TIMEOUT: a cut WAN link or
a frozen peer.  ``on_link_down`` puts a monitor on each of a set of
outgoing sockets, in the node's poll loop (not on a timer), and calls
``down(peer_id)`` on every disconnect, so a broker fails the requests
waiting on that peer and answers new ones UNAVAILABLE without waiting for
its request timeout or for the peer's ticks to go stale.
"""
from __future__ import annotations

import zmq
from zmq.utils.monitor import parse_monitor_message

from .logs import events
from .peerwatch import EVENTS


def on_link_down(node, socks: dict, down) -> list:
    """Watch ``socks`` ({peer id: connected socket}); ``down(peer id)`` on each disconnect.
    These sockets' changes are logged here (nodes/peerwatch.py skips them: one monitor each)."""
    monitors = []
    for peer, sock in socks.items():
        mon = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        node.linked.add(sock)

        def on_event(frames, peer=peer):
            event = parse_monitor_message(frames)
            state = EVENTS.get(event["event"])
            if state is None:
                return
            events.peer(peer, state, node=node.id, endpoint=event["endpoint"].decode(errors="replace"))
            if state == "down":
                down(peer)
        node.loop.add(mon, on_event)
        monitors.append(mon)
    return monitors
