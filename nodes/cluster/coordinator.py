"""The etcd side of a logic node: lease, campaigns, the shard leader map (docs/ha.md).

A thread runs an asyncio loop with ``aetcd`` (the maintained asyncio etcd
client) so the node's poll loop never waits on etcd.  It talks to the node
through an ``inproc`` PAIR socket, msgpack maps both ways:

  -> node  {"t": "lease", "until": monotonic s}   acks are allowed until then
  -> node  {"t": "leaders", "map": {shard: [node, epoch]}}   when it changes
  <- node  {"t": "stop"}

The lease (TTL 2 s) is renewed every 0.25 s; ``until`` is the send time of
the last renewal that succeeded plus TTL - 0.5 s, so a node that cannot
reach etcd stops acking before etcd can have expired its lease and let
another replica win.  A shard's leader key ``/imesh/<cluster>/shard/<s>/leader``
holds the node id and is attached to its lease; the key's create revision
is the shard's epoch, assigned by etcd.  The map is polled (every 0.25 s,
with the renewal) rather than watched: one code path, nothing to resume
after a reconnect, 4 small reads a second per logic node.  When a shard of
this node has no leader it campaigns (transaction: create the key if
absent), the preferred replica at once and the others 0.3 s later per rank.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time

import zmq

from nodes.protocol import wire
from nodes.storage import store as keys

log = logging.getLogger(__name__)

LEASE_TTL = 2                  # seconds (etcd leases are whole seconds)
SAFETY = 0.5                   # stop acking this long before the lease could expire
ROUND = 0.25                   # renewal + leader poll period
RANK_DELAY = 0.3               # campaign delay per place in the shard's replica ranking
CALL_TIMEOUT = 1               # seconds per etcd call (a cut-off node must notice quickly)


def leader_key(prefix: bytes, shard: int) -> bytes:
    return prefix + b"shard/%d/leader" % shard


class Coordinator:
    """Owns the thread and the node's end of the pipe (``self.pipe``, to add to the node loop)."""

    def __init__(self, ctx: zmq.Context, endpoints: list, cluster: str, node_id: str, ranks: dict):
        self.endpoints = [e.split("//", 1)[1] for e in endpoints]
        self.prefix = f"/imesh/{cluster}/".encode()
        self.node_id = node_id
        self.ranks = ranks                          # shard -> this node's place among its replicas
        addr = f"inproc://coordinator-{id(self)}"
        self.pipe = ctx.socket(zmq.PAIR)
        self.pipe.setsockopt(zmq.LINGER, 0)
        self.pipe.bind(addr)
        self._peer = ctx.socket(zmq.PAIR)
        self._peer.setsockopt(zmq.LINGER, 0)
        self._peer.connect(addr)
        self._stop = threading.Event()
        self.lease_id = None
        self.renewed_at = 0.0                       # monotonic send time of the last good renewal
        self._lock = threading.Lock()               # the peer socket is used from one thread only
        self.thread = threading.Thread(target=self._main, name="coordinator", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Called after the node's loop stopped (it acks nothing any more): the lease is revoked,
        so the other replicas take the shards over without waiting for it to expire."""
        self._stop.set()
        self.thread.join(5)
        self._peer.close(0)
        self.pipe.close(0)

    # --- the thread ----------------------------------------------------------
    def _tell(self, msg: dict) -> None:
        try:
            self._peer.send(wire.pack(msg), zmq.NOBLOCK)
        except zmq.Again:
            log.warning("node loop not reading the coordinator pipe")

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        import aetcd
        turn = 0
        while not self._stop.is_set():
            host, port = self.endpoints[turn % len(self.endpoints)].rsplit(":", 1)
            turn += 1
            try:
                async with aetcd.Client(host=host, port=int(port), timeout=CALL_TIMEOUT,
                                        connect_wait_timeout=CALL_TIMEOUT) as client:
                    await self._serve(client)
            except Exception as exc:                   # etcd down or unreachable: try the next one
                log.warning("etcd %s:%s: %s", host, port, exc)
                await asyncio.sleep(ROUND)

    async def _serve(self, client) -> None:
        if time.monotonic() - self.renewed_at > LEASE_TTL:
            self.lease_id = None                # certainly expired
        if self.lease_id is None:               # after a reconnect the lease may still be alive: keep it
            self.lease_id = (await client.lease(LEASE_TTL)).id
            self.renewed_at = time.monotonic()
        known: dict | None = None
        absent_since: dict[int, float] = {}
        while not self._stop.is_set():
            started = time.monotonic()
            reply = await client.refresh_lease(self.lease_id)
            if reply is None or reply.TTL <= 0:
                log.warning("etcd lease lost; taking a new one")
                self.lease_id = None
                return
            self.renewed_at = started
            leaders = await self._leaders(client, self.lease_id)
            if leaders != known:            # the map first: a node back from a partition must not
                known = dict(leaders)       # act on the map it had before it with a fresh lease
                self._tell({"t": "leaders", "map": {s: list(v) for s, v in leaders.items()}})
            self._tell({"t": "lease", "until": started + LEASE_TTL - SAFETY})
            for shard, rank in self.ranks.items():
                if shard in leaders:
                    absent_since.pop(shard, None)
                    continue
                since = absent_since.setdefault(shard, started)
                if started - since >= rank * RANK_DELAY:
                    won = await self._campaign(client, shard, self.lease_id)
                    if won is not None:
                        leaders[shard] = won
            if leaders != known:
                known = dict(leaders)
                self._tell({"t": "leaders", "map": {s: list(v) for s, v in leaders.items()}})
            await asyncio.sleep(max(0.0, ROUND - (time.monotonic() - started)))
        try:                                    # a clean stop hands the shards over at once
            await client.revoke_lease(self.lease_id)
        except Exception as exc:
            log.warning("could not revoke the etcd lease: %s", exc)

    async def _leaders(self, client, lease_id) -> dict:
        """{shard: (node, epoch)}; a key of this node on an older lease is not ours any more."""
        out = {}
        for kv in await client.get_prefix(self.prefix + b"shard/"):
            parts = kv.key[len(self.prefix):].split(b"/")
            if len(parts) != 3 or parts[2] != b"leader":
                continue
            node = kv.value.decode()
            if node == self.node_id and kv.lease != lease_id:
                continue
            out[int(parts[1])] = (node, kv.create_revision)
        return out

    async def _campaign(self, client, shard: int, lease_id):
        key = leader_key(self.prefix, shard)
        ok, _ = await client.transaction(
            compare=[client.transactions.version(key) == 0],
            success=[client.transactions.put(key, self.node_id.encode(), lease=lease_id)],
            failure=[])
        if not ok:
            return None
        got = await client.get(key)
        if got is None or got.value.decode() != self.node_id:
            return None
        log.info("won shard %d at epoch %d", shard, got.create_revision)
        return self.node_id, got.create_revision


class EtcdHighWater:
    """Id high-water marks in etcd, for counters of a replicated topology (docs/ha.md).

    ``alloc`` is one compare-and-swap transaction per block on
    ``/imesh/<cluster>/counter/<channel>`` = msgpack [end, start of the last block], so any
    counter serves any channel and a killed counter loses nothing.  The counter's loop
    waits for the transaction (a few ms on a LAN, once per block of ids, at most
    CALL_TIMEOUT when etcd is away): blocking is simpler than a reply pipe here and a
    block of 1,000 ids makes it rare.  The asyncio client runs on its own thread.
    """

    def __init__(self, endpoints: list, cluster: str):
        self.endpoints = [e.split("//", 1)[1] for e in endpoints]
        self.prefix = f"/imesh/{cluster}/counter/".encode()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="etcd-counter", daemon=True)
        self.thread.start()
        self.client = None
        self.turn = 0
        self.resent = 0

    def alloc(self, channel: str, n: int, have: int | None) -> tuple[int, int]:
        """[start, end): a new block, or the last one again when the asker says it never got it."""
        future = asyncio.run_coroutine_threadsafe(self._alloc(channel.encode(), n, have), self.loop)
        try:
            return future.result(CALL_TIMEOUT * 3)
        except Exception as exc:
            future.cancel()
            self.loop.call_soon_threadsafe(self._drop_client)
            raise wire.ProtocolError(wire.Err.UNAVAILABLE, f"etcd: {type(exc).__name__}: {exc}") from None

    def _drop_client(self):
        self.client = None

    async def _connect(self):
        import aetcd
        if self.client is None:
            host, port = self.endpoints[self.turn % len(self.endpoints)].rsplit(":", 1)
            self.turn += 1
            self.client = aetcd.Client(host=host, port=int(port), timeout=CALL_TIMEOUT,
                                       connect_wait_timeout=CALL_TIMEOUT)
        return self.client

    async def _alloc(self, channel: bytes, n: int, have):
        client = await self._connect()
        key = self.prefix + channel
        while True:
            got = await client.get(key)
            high, last = keys.decode(got.value) if got is not None else (1, None)
            if have is not None and last is not None and have == last < high:
                self.resent += 1
                return last, high                   # the writer never got this block: answer it again
            end = high + n
            compare = (client.transactions.mod(key) == got.mod_revision if got is not None
                       else client.transactions.version(key) == 0)
            ok, _ = await client.transaction(compare=[compare],
                                             success=[client.transactions.put(key, keys.encode([end, high]))],
                                             failure=[])
            if ok:
                return high, end

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

