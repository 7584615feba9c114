"""React at once when a node-to-node connection drops (a ZMTP heartbeat timed out).

With heartbeats on (nodes/runtime/node.py ``node_heartbeats``) libzmq closes a
connection whose peer stays silent for HEARTBEAT_TIMEOUT: a cut WAN link or
a frozen peer.  ``on_link_down`` puts a monitor on each of a set of
outgoing sockets, in the node's poll loop (not on a timer), and calls
``down(peer_id)`` on every disconnect, so a broker fails the requests
waiting on that peer and answers new ones UNAVAILABLE without waiting for
its request timeout or for the peer's ticks to go stale.
"""
from __future__ import annotations

from nodes.runtime.links import endpoint_owners, on_event


def on_link_down(node, socks: dict, down, up=None) -> list:
    """Watch ``socks`` ({peer id: socket connected by the node's Relinker}); ``down(peer id)`` on
    each disconnect, ``up(peer id)`` when connected again.  These sockets' monitors are drained
    here, in the poll loop, and their changes logged and told to the Relinker
    (nodes/runtime/links.py skips them)."""
    owners = endpoint_owners(node.topo)
    monitors = []
    for peer, sock in socks.items():
        mon = node.relinker.monitors[sock]
        node.linked.add(sock)

        def on_frames(frames, peer=peer, sock=sock):
            state = on_event(node, sock, frames, owners)
            if state == "down":
                down(peer)
            elif state == "up" and up is not None:
                up(peer)
        node.loop.add(mon, on_frames)
        monitors.append(mon)
    return monitors
