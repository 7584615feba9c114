"""What a broker hears from its logic nodes besides replies: their PUB frames and their links.

PUB frames (topic = this broker's id): ``msgs`` (deliveries of a logic
node's turn, pushed to the sessions here, and proof of life of the logic
node), ``msgs_idc`` (this broker is its IDC's gateway for a remote logic
node's turn, nodes/cluster/idcfanout.py: it delivers its own part and passes
the rest on to the other brokers of its IDC as ``fwd``, so the WAN is crossed
once) and ``tick`` (liveness, the shards it leads; ``stopping``: what waits on
it is failed now).  Links: a broker watches its links to logic nodes of other
IDCs (nodes/runtime/links.py ``on_link_down``); a drop makes the logic node
down at once and fails what waits on it (UNAVAILABLE: the client retries with
the same ctime) instead of after the request timeout.
"""
from __future__ import annotations

import logging

from nodes.cluster import idcfanout
from nodes.protocol import wire
from nodes.runtime.links import on_link_down

log = logging.getLogger(__name__)


class LogicFeed:
    """The broker node's handlers for its logic nodes' frames and link events."""

    def __init__(self, node):
        self.node = node            # BrokerNode: core, logics, requests, idc_peers, clock

    # --- PUB frames (validated by their schema before they get here) --------------------
    @property
    def handlers(self) -> dict:
        """The logic nodes' PUB frames by kind (Node.subscribe)."""
        return {"msgs": self.on_msgs, "msgs_idc": self.on_idc_delivery, "tick": self.on_tick}

    def on_msgs(self, msg) -> None:
        node = self.node
        deliver = node.core.deliver
        for packed, to, uin, device in msg["items"]:
            deliver(packed, to, uin, device)
        self._alive(msg)

    def _alive(self, msg) -> None:
        if "logic" in msg:                 # proof of life: under a backlog ticks come late
            self.node.core.owners.alive(msg["logic"], self.node.clock())

    def on_tick(self, msg) -> None:
        node = self.node
        stopping = msg.get("stopping") is True
        node.core.owners.on_tick(msg["logic"], node.clock(), msg.get("leads") or (), stopping)
        if stopping and msg["logic"] in node.logics:      # its answers will not come
            node.requests.fail_peer(node.logics[msg["logic"]], f"logic {msg['logic']} is stopping; retry")

    def on_idc_delivery(self, msg) -> None:
        """This broker is its IDC's gateway for a remote logic node's turn: deliver its own part,
        pass the rest on to the other brokers of this IDC (the WAN was crossed once)."""
        try:
            parts = idcfanout.split(msg)
        except wire.ProtocolError as exc:
            log.warning("bad msgs_idc frame: %s", exc.msg)
            return
        node = self.node
        self._alive(msg)
        for broker, items in parts.items():
            if broker == node.id:
                self.on_msgs({"t": "msgs", "items": items})
            elif broker in node.idc_peers:
                node.requests.send(node.idc_peers[broker], {"t": "fwd", "items": items}, lambda _reply: None)

    def handle_fwd(self, _ident, msg, _now=None):
        """Deliveries another broker of this IDC passed on (it was the gateway)."""
        items = idcfanout.check_items(msg.get("items"))
        self.on_msgs({"t": "msgs", "items": items})
        return wire.reply("ok", msg["rid"], n=len(items))

    # --- links ------------------------------------------------------------------------
    def watch(self, socks: dict) -> None:
        """Fail requests at once when the link to one of these logic nodes drops (the WAN ones:
        see ``link_down``)."""
        node = self.node
        on_link_down(node, {n: sock for n, sock in socks.items()
                            if node.topo.node(n).idc != node.spec.idc}, self.link_down, self.link_up)

    def link_down(self, logic_id) -> None:
        """A heartbeat timed out on the link to a logic node of another IDC (cut WAN, frozen
        peer): it is down until the link is back and its next tick arrives (a tick read late
        from the SUB does not count); what waits on it is answered UNAVAILABLE now.  (Inside an
        IDC a link drops when the node dies: its ticks stop, or it said it stops; a reconnect
        flap there must not fail requests.)"""
        node = self.node
        if logic_id not in node.logics:
            return                             # left the topology (a live reshard)
        node.core.owners.links.link_down(logic_id)
        node.requests.fail_peer(node.logics[logic_id], f"lost the link to logic {logic_id}; retry")

    def link_up(self, logic_id) -> None:
        self.node.core.owners.links.link_up(logic_id)       # its ticks count again
