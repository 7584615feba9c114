"""Counter node: the durable msg-id allocator.

``alloc(channel, n, have) -> [start, end)``.  The new high-water mark is
written with a synced write before the answer leaves (all allocs of one
loop turn share one synced batch: group commit), so a restarted counter
never reissues an id.

``have`` is where the asking logic node's ids end (the first id it does
not hold).  A channel has one writer, so when ``have`` is the start of the
last block issued for the channel, that block's answer was lost (the logic
node crashed before it stored the lease): the counter answers the same
block again instead of a new one, and no id is skipped.  A ``have`` beyond
the counter's own mark (a counter added to the topology, or a channel's
counter that became its home IDC's) starts the block there: ids never go
backwards when a channel changes counter.

Which counters serve a channel (``counters_for``): with ``replication`` > 1
the high-water marks live in etcd (nodes/cluster/coordinator.py
EtcdHighWater) and any counter serves any channel; without, any counter of
the channel's home IDC does, each with its own marks.  That is safe because
of ``have``: a block starts at the asker's ``have`` or beyond, and a logic
node takes only a block beyond every id it holds (ChannelState.add_lease),
so a second counter of the IDC answering while the first is dead (or slow,
and answers too) never gives an id twice.  A logic node moves to the next
counter when one did not answer within ALLOC_FAILOVER (``counter_to_ask``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import zmq

from nodes.cluster.topology import Topology
from nodes.protocol import schema, wire
from nodes.runtime.node import Node
from nodes.runtime.ports import Msg
from nodes.storage import store as keys
from nodes.storage.store import Store

if TYPE_CHECKING:
    from nodes.cluster.coordinator import EtcdHighWater

MAX_ALLOC = 1_000_000
ALLOC_FAILOVER = 0.5          # seconds: a counter silent this long, the logic node asks the next one


def counters_for(topo: Topology, channel: str) -> list[str]:
    """The counters that serve ``channel``'s id blocks, its own (``counter_for``) first: every
    counter with replication (marks in etcd), else those of its home IDC."""
    own = topo.counter_for(channel)
    ids = topo.ids("counter") if topo.replicated else topo.ids_in("counter", topo.home_of(channel))
    k = ids.index(own)
    return ids[k:] + ids[:k]


def counter_to_ask(topo: Topology, channel: str, failures: int) -> tuple[str, float | None]:
    """(counter, request timeout) for a logic node's next alloc, after ``failures`` allocs that
    got no answer: round the channel's counters, ALLOC_FAILOVER each when there is another to
    try (None: the usual request timeout, for a lone counter)."""
    ids = counters_for(topo, channel)
    if len(ids) == 1:
        return ids[0], None
    return ids[failures % len(ids)], ALLOC_FAILOVER


def check_block_size(n: int) -> None:
    """BAD_FIELD unless 1 <= n <= MAX_ALLOC: the same bound whichever keeps the marks."""
    if not 1 <= n <= MAX_ALLOC:
        raise wire.ProtocolError(wire.Err.BAD_FIELD, f"n must be 1..{MAX_ALLOC}")


def check_serves(topo: Topology, counter_id: str, channel: str) -> None:
    """WRONG_OWNER unless ``counter_id`` is one of the channel's counters (a logic node with a
    stale or wrong topology must not take ids from a counter of another IDC)."""
    if counter_id not in counters_for(topo, channel):
        raise wire.ProtocolError(wire.Err.WRONG_OWNER, f"counter {counter_id} does not serve this channel")


class CounterCore:
    """Id blocks per channel; writes staged in the store's batch."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.high: dict[str, int] = {}                     # channel -> next unissued id
        self.resent = 0                      # blocks answered again to a writer that lost them
        self.last: dict[str, int | None] = {}                     # channel -> start of the last block issued

    def next_id(self, channel: str) -> int:
        if channel not in self.high:
            raw = self.store.get(keys.highwater_key(channel))
            self.high[channel] = keys.unpack_u64(raw) if raw is not None else 1
        return self.high[channel]

    def last_start(self, channel: str) -> int | None:
        if channel not in self.last:
            raw = self.store.get(keys.last_block_key(channel))
            self.last[channel] = keys.unpack_u64(raw) if raw is not None else None
        return self.last[channel]

    def alloc(self, channel: str, n: int, have: int | None = None) -> tuple[int, int]:
        check_block_size(n)
        start = self.next_id(channel)
        last = self.last_start(channel)
        if have is not None and last is not None and have == last < start:
            self.resent += 1
            return last, start                     # the writer never got this block: answer it again
        if have is not None and have > start:
            start = have        # a counter new to the channel (one added, or its home IDC's): never reissue
        end = start + n
        if end > wire.U64_MAX:
            raise wire.ProtocolError(wire.Err.INTERNAL, "id space of the channel exhausted")
        self.high[channel] = end
        self.last[channel] = start
        self.store.put(keys.highwater_key(channel), keys.pack_u64(end))
        self.store.put(keys.last_block_key(channel), keys.pack_u64(start))
        return start, end


class CounterNode(Node):
    type = "counter"

    def __init__(self, topo: Topology, node_id: str) -> None:
        super().__init__(topo, node_id, store_sync=True)   # always synced: ids must never repeat
        self.core = CounterCore(self.store)   # type: ignore[arg-type]  # needs_store: Node opened it
        self.highwater: EtcdHighWater | None = None
        if topo.replicated:
            from nodes.cluster.coordinator import EtcdHighWater
            self.highwater = EtcdHighWater(topo.etcd_endpoints(), topo.cluster)
        rpc = self.bind(zmq.ROUTER, self.spec.endpoint("rpc"))
        self.serve(rpc, schema.COUNTER_REQUESTS, {"alloc": self.handle_alloc,
                                                "status": self.handle_status})

    def handle_alloc(self, _ident: bytes, msg: Msg, _now: float | None = None) -> Msg:
        if self.highwater is not None:          # replicated: high-water marks in etcd, any counter serves
            check_block_size(msg["n"])
            start, end = self.highwater.alloc(msg["channel"], msg["n"], msg["have"])
        else:
            check_serves(self.topo, self.id, msg["channel"])
            start, end = self.core.alloc(msg["channel"], msg["n"], msg["have"])
        return wire.reply("alloc", msg["rid"], channel=msg["channel"], start=start, end=end)

    def status(self) -> dict[str, Any]:
        resent = self.core.resent + (self.highwater.resent if self.highwater else 0)
        return dict(super().status(), channels=len(self.core.high), resent=resent)

    def close(self) -> None:
        if self.highwater is not None:
            self.highwater.close()            # type: ignore[no-untyped-call]  # coordinator.py is not annotated
        super().close()
