"""Logic node: the single writer of the channels it owns.

Send path per request: membership check -> dedup by (uin, device, client
time) -> queue on the channel.  Every send stored within its lifetime keeps
an index row (uin, device, ctime) -> (channel, id), so a retry learns its
original id whatever the device sent after it; the newest client time per
device (the Cython DedupTable) lets a send with a newer time skip that lookup.  At the end of each loop turn the queued
sends of every channel take ids from the channel's leased block, go into
one RocksDB batch, and only after that batch is written are they acked and
fanned out (one PUB frame per broker, topic = broker id).  Id blocks come
from the counter and are prefetched when half used, so sends do not wait on
the counter in steady state.  Leases and each channel's newest id are stored too, so a restarted logic
node continues the same block, ids stay contiguous and never go back, even
when every message has expired.
"""
from __future__ import annotations

import collections
import heapq
import itertools
import logging
import time
from array import array

import zmq

from fastpath import DedupTable, IdRing

from nodes.protocol import auth
from nodes.storage import store as keys
from nodes.protocol import wire
from nodes.runtime.node import INTERNAL_MAX_FRAME, Node
from nodes.runtime.logs import events
from nodes.cluster import idcfanout
from nodes.ops.admin import Admin
from nodes.logic.handoff import Handoff
from nodes.logic.presence import PresenceReplica
from nodes.logic.replication import Replication
from nodes.router import PRESENCE_TOPIC
from nodes.runtime.rpc import Requests

log = logging.getLogger(__name__)

TICK_INTERVAL = 0.5
SWEEP_INTERVAL = 0.05                 # expired messages are deleted in slices of at most 5 ms
DEDUP_PRUNE_INTERVAL = 1.0            # 500 dedup rows looked at per second
SENT_PRUNE_BUDGET = 2000              # expired send-index rows deleted per sweep call at most
REPLICATION_PROBE = 0.1               # followers left behind are caught up this often
JOIN_PROBE = 1.0                      # seconds a starting logic node asks the others their topology version
ALLOC_FAILOVER = 0.5                  # replicated: a counter silent this long, the next one is asked


class Pending:
    """A new message waiting for its id; ``waiters`` are requests to ack."""

    __slots__ = ("uin", "device", "ctime", "text", "frag", "channel", "waiters", "id", "stime", "expiry")

    def __init__(self, uin, device, ctime, text, frag, channel, waiter):
        self.uin, self.device, self.ctime, self.text, self.frag = uin, device, ctime, text, frag
        self.channel = channel
        self.waiters = [waiter]
        self.id = self.stime = self.expiry = None

    def record(self) -> list:
        """The stored form: [uin, device, ctime, stime ms, expiry s, text, frag or nil]."""
        return [self.uin, self.device, self.ctime, self.stime, self.expiry, self.text, self.frag]


def push_of(channel: str, msg_id: int, record: list) -> dict:
    """The pushed (and synced) form of a stored message."""
    uin, device, ctime, stime, _expiry, text = record[:6]
    push = {"t": "msg", "channel": channel, "id": msg_id, "uin": uin, "device": device,
            "ctime": ctime, "stime": stime, "text": text}
    if len(record) > 6 and record[6] is not None:
        push["frag"] = record[6]
    return push


class ChannelState:
    __slots__ = ("name", "members", "member_array", "ring", "leases", "next_id", "last_id", "visible",
                 "waiting", "alloc_inflight", "lifetime", "fanout", "fanout_version", "prefix")

    def __init__(self, name: str, members, queue: int, lifetime=None):
        self.name = name
        self.prefix = keys.channel_prefix(name)     # its message keys: prefix + id (built per message)
        self.lifetime = lifetime              # seconds; None: the topology's default
        self.set_members(members)
        self.ring = IdRing(queue)             # newest ids of the channel (its queue)
        self.leases = collections.deque()     # [start, end) blocks not yet used up
        self.next_id = 0                      # next id to assign (within leases[0])
        self.last_id = 0                      # newest stored id
        self.visible = 0                      # newest acked id: reads never show more (with replication
        #                                       a stored message waits for its majority before that)
        self.waiting = collections.deque()    # Pending, in arrival order
        self.alloc_inflight = False

    def set_members(self, members) -> None:
        self.members = set(members)
        self.member_array = array("I", sorted(self.members))   # for OnlineBitmap.filter_online
        self.fanout, self.fanout_version = None, -1            # {broker: [uin]}, per presence version

    def boundary(self) -> int:
        """The first id this channel does not hold (used or leased): what alloc's ``have`` says."""
        return max(self.next_id, self.last_id + 1, *(e for _s, e in self.leases))

    def available(self) -> int:
        if not self.leases:
            return 0
        return self.leases[0][1] - self.next_id + sum(
            end - start for start, end in itertools.islice(self.leases, 1, None))

    def take_id(self) -> int | None:
        while self.leases and self.next_id >= self.leases[0][1]:
            self.leases.popleft()
            if self.leases:
                self.next_id = self.leases[0][0]
        if not self.leases:
            return None
        msg_id = self.next_id
        self.next_id += 1
        return msg_id

    def add_lease(self, start: int, end: int) -> bool:
        """Accept a block from the counter if it lies beyond every id we know."""
        if start < self.boundary() or end <= start:
            return False
        if not self.leases:
            self.next_id = start
        self.leases.append((start, end))
        return True


class StaticPlacement:
    """Who serves a channel without replication: its rendezvous owner, always."""

    def __init__(self, topo, node_id):
        self.topo, self.id = topo, node_id

    def owns(self, name: str) -> bool:
        return self.topo.logic_for(name) == self.id

    def leader(self, name: str):
        return self.topo.logic_for(name)


class LogicCore:
    """Channels, dedup and the send pipeline; ``out`` does the I/O.

    ``out`` provides ``reply(ident, msg)``, ``publish(broker_id, msg)`` and
    ``request_ids(channel, n)``.  ``placement`` says which channels this node
    serves (``owns``) and who does (``leader``): the rendezvous owner, or with
    replication the shard leader (nodes/logic/replication.py).
    """

    def __init__(self, node_id, topo, store, replica, out, secret: bytes):
        self.id = node_id
        self.placement = StaticPlacement(topo, node_id)
        self.topo = topo
        self.store = store
        self.replica = replica
        self.out = out
        self.secret = secret
        self.block = int(topo.limits["id_block"])
        self.lifetime = topo.limits["message_lifetime"]
        self.max_waiting = int(topo.limits["max_pending"])
        self.channels = {}                    # name -> ChannelState
        self.member_of = {}                   # uin -> {ChannelState}: whose fan-out plans a presence change patches
        self.queue = int(topo.limits["channel_queue"])
        self.dedup = DedupTable()             # (uin, device) -> (ctime, msg id)
        self.dedup_loaded = False
        self.inflight = {}                    # (uin, device) -> Pending
        self.dirty = set()                    # channels with waiting sends
        self.committed = []                   # Pending stored in this turn's batch
        self.outbox = {}                      # broker -> [[packed push, to, uin, device], ...]
        self.waiting_total = 0
        self.expiries = []                    # heap of (expiry of the channel's oldest message, name)
        self.sweep_seconds = self.sweep_max = 0.0
        self.dedup_cursor = None              # where prune_dedup goes on
        self.sent_cursor = None               # the last ``x`` row prune_sent deleted (rows before it are gone)
        self.incoming = set()                 # channels being taken in (nodes/logic/handoff.py): not served yet
        self.joining = False                  # added to a running mesh: channels come by hand-over (settle)
        self.stats = collections.Counter()
        replica.on_change = self._presence_changed

    # --- start ---------------------------------------------------------------
    def load(self, wanted=None) -> None:
        """Load the stored channels (those ``wanted(name)`` accepts, if given) and create the
        topology's channels this node serves that are not stored yet."""
        loaded = {}
        # a take cut short (nodes/logic/handoff.py): part of a channel only, neither served nor seeded
        # until a take ends
        self.incoming.update(n for n in (key[1:].decode() for key, _raw in self.store.scan(b"t"))
                             if wanted is None or wanted(n))
        for key, raw in self.store.scan(b"c"):
            name, row = key[1:].decode(), keys.decode(raw)
            if (wanted is None or wanted(name)) and name not in self.incoming:
                loaded[name] = ChannelState(name, row["members"], self.queue, row.get("lifetime"))
        self.channels.update(loaded)
        for name, ch in loaded.items():
            self._index_members(ch, ())
            for key in self.store.last_keys(keys.channel_prefix(name), self.queue):
                ch.ring.push(keys.unpack_u64(key[-8:]))
            raw = self.store.get(keys.last_id_key(name))
            ch.last_id = max(ch.ring.last or 0, keys.unpack_u64(raw) if raw else 0)
            ch.next_id = ch.last_id + 1
            ch.visible = ch.last_id
            raw = self.store.get(keys.lease_key(name))
            for start, end in (keys.decode(raw) if raw else []):
                if end > ch.next_id:
                    ch.leases.append((start, end))
            if ch.leases:
                ch.next_id = max(ch.next_id, ch.leases[0][0])
            self._watch_expiry(ch)
        for key, raw in (self.store.scan(b"d") if not self.dedup_loaded else ()):
            self.note_dedup_row(key, raw)
        self.dedup_loaded = True             # once: later d rows reach the table as they are written
        if not self.joining:
            self._seed(wanted)
        self.store.flush()

    def _seed(self, wanted=None) -> list:
        """Create the topology's channels this node serves that no node holds yet (a node
        joining a running mesh waits: they may hold them, and a hand-over brings them)."""
        made = []
        for name, spec in self.topo.channels.items():
            if name not in self.channels and name not in self.incoming and (
                    self.placement.owns(name) if wanted is None else wanted(name)):
                self._create(name, spec["members"], spec.get("lifetime"))
                made.append(name)
        return made

    def settle(self) -> list:
        """The live change that added this node is over: serve as any node, seed what is new."""
        self.joining = False
        made = self._seed()
        self.store.flush()
        return made

    def note_dedup_row(self, key: bytes, raw: bytes) -> None:
        """A device's newest send (a ``d`` row) into the dedup table, unless it knows a newer one."""
        uin, device = int.from_bytes(key[1:5], "big"), int.from_bytes(key[5:9], "big")
        ctime, _channel, msg_id = keys.decode(raw)[:3]
        recorded = self.dedup.get(uin, device)
        if recorded is None or recorded[0] < ctime:
            self.dedup.commit(uin, device, ctime, msg_id)

    # --- live topology changes (nodes/logic/handoff.py) ------------------------------
    def adopt(self, topo) -> dict:
        """Serve by a newer topology: channels it places elsewhere stop being served here
        (their waiting sends are answered UNAVAILABLE, never stored: the client retries with
        the same ctime at the new owner).  Returns {channel: new owner} of those held here."""
        self.topo = topo
        self.placement = StaticPlacement(topo, self.id)
        return self.leaving()

    def leaving(self) -> dict:
        """{channel: its owner} of the channels held here that this node does not serve."""
        out = {}
        for name, ch in self.channels.items():
            if not self.placement.owns(name):
                out[name] = self.placement.leader(name)
                if ch.waiting:
                    self.dirty.discard(ch)
                    self.waiting_total -= len(ch.waiting)
                    self.abandon(ch.waiting, f"channel {name!r} is moving to another logic node; retry")
                    ch.waiting.clear()
        return out

    def forget(self, names) -> None:
        """Drop these channels from memory (handed over, or about to be replaced by a copy)."""
        for name in names:
            ch = self.channels.get(name)
            if ch is not None:
                self.drop([name], f"channel {name!r} moved; retry")
                members, ch.members = ch.members, set()
                self._index_members(ch, members)

    def _create(self, name, members, lifetime=None):
        ch = self.channels[name] = ChannelState(name, members, self.queue, lifetime)
        self._index_members(ch, ())
        ch.next_id = 1
        self._save_members(ch)
        return ch

    def _save_members(self, ch):
        self.store.put(keys.channel_key(ch.name), keys.encode({"members": sorted(ch.members),
                                                               "lifetime": ch.lifetime}))

    def _save_leases(self, ch):
        self.store.put(keys.lease_key(ch.name), keys.encode([list(x) for x in ch.leases]))

    # --- requests ------------------------------------------------------------
    def _unserved(self, name: str) -> wire.ProtocolError | None:
        """Why this node does not serve the channel now, or None: WRONG_OWNER if another node
        serves it; UNAVAILABLE while it is moving here (one rule for requests and heartbeats)."""
        if not self.placement.owns(name):
            return self._wrong_owner(name)
        if name in self.incoming:
            return wire.ProtocolError(wire.Err.UNAVAILABLE, f"channel {name!r} is moving to this node; retry")
        if self.joining and name not in self.channels:
            return wire.ProtocolError(wire.Err.UNAVAILABLE, f"logic {self.id} joins a running mesh: channel "
                                      f"{name!r} may arrive by bin/mesh reshard; retry after it")
        return None

    def _check_served(self, name: str) -> None:
        why = self._unserved(name)
        if why is not None:
            raise why

    def _wrong_owner(self, name: str) -> wire.ProtocolError:
        return wire.ProtocolError(wire.Err.WRONG_OWNER, f"logic {self.id} does not serve channel {name!r}",
                                  leader=self.placement.leader(name))

    def _owned(self, name: str) -> ChannelState:
        self._check_served(name)
        ch = self.channels.get(name)
        if ch is None:
            raise wire.ProtocolError(wire.Err.NO_CHANNEL, f"no channel {name!r}")
        return ch

    def _member_channel(self, name: str, uin: int) -> ChannelState:
        ch = self._owned(name)
        if uin not in ch.members:
            raise wire.ProtocolError(wire.Err.NOT_MEMBER, f"uin {uin} is not a member of {name!r}")
        return ch

    def send(self, ident: bytes, msg: dict, _now=None):
        """Accept a send; return an immediate reply (retry, error) or None (acked later).

        A (uin, device, ctime) seen before is a retry: acked with the original
        id (or joined to the send still being stored); anything else is new,
        whatever its order -- so no client time can lock a device out.
        """
        uin, device, ctime, rid = msg["uin"], msg["device"], msg["ctime"], msg["rid"]
        ch = self._member_channel(msg["channel"], uin)
        key = (uin, device, ctime)
        waiter = (ident, rid)
        pending = self.inflight.get(key)
        if pending is not None:
            if pending.channel != ch.name or pending.text != msg["text"]:
                raise wire.ProtocolError(wire.Err.STALE, "client time reused for another message")
            pending.waiters.append(waiter)           # retry of a send still being stored
            self.stats["retries"] += 1
            return None
        stored = self._stored(uin, device, ctime)
        if stored is not None:
            channel, msg_id, digest = stored
            if channel != ch.name:
                raise wire.ProtocolError(wire.Err.STALE, f"client time {ctime} was used for a message "
                                         "to another channel")
            if digest != keys.text_digest(msg["text"]):
                raise wire.ProtocolError(wire.Err.STALE, f"client time {ctime} was used for another "
                                         "message (a different text): not a retry, nothing stored")
            self.stats["retries"] += 1
            return self._ack(rid, ch.name, device, ctime, msg_id)
        if self.waiting_total >= self.max_waiting:
            raise wire.ProtocolError(wire.Err.BUSY, "too many sends waiting for ids; retry later")
        rec = Pending(uin, device, ctime, msg["text"], msg.get("frag"), ch.name, waiter)
        self.inflight[key] = rec
        ch.waiting.append(rec)
        self.waiting_total += 1
        self.dirty.add(ch)
        return None

    def _stored(self, uin, device, ctime):
        """(channel, id, crc32 of the text) of the message stored for this (uin, device,
        ctime), or None."""
        newest = self.dedup.get(uin, device)
        if newest is not None and ctime > newest[0]:
            return None                                # newer than anything stored: no lookup
        raw = self.store.get(keys.sent_key(uin, device, ctime))
        return None if raw is None else (*keys.sent_of_value(raw), keys.sent_digest(raw))

    @staticmethod
    def _ack(rid, channel, device, ctime, msg_id):
        return wire.reply("ack", rid, channel=channel, device=device, ctime=ctime, id=msg_id)

    def _page(self, ch: ChannelState, after: int, budget: int, now: float):
        """Live stored messages of ``ch`` after ``after``, oldest first, at most ``budget``.

        Returns (messages, first, more, upto): ``first`` is the oldest id still
        in the channel's queue (a client behind it moves its window there);
        ``more`` says the page was cut short by the budget; ``upto`` is the
        newest id the page covers: ids in (after, upto] that are not in the
        page are gone for good (expired, trimmed, or never assigned), so a
        client may move its window to ``upto`` once it holds the page.
        """
        last = ch.visible
        first = min(ch.ring.first, last + 1) if len(ch.ring) else last + 1
        after = max(min(after, last), first - 1)      # nothing before the queue's head
        msgs = []
        if after >= last:
            return msgs, first, False, last
        if budget <= 0:
            return msgs, first, True, after
        end = keys.message_key(ch.name, last)
        for key, raw in self.store.scan(keys.channel_prefix(ch.name), keys.message_key(ch.name, after + 1)):
            if key > end:
                break
            rec = keys.decode(raw)
            if rec[4] < now:                                  # expired, not yet swept
                continue
            if len(msgs) >= budget:
                return msgs, first, True, msgs[-1]["id"]
            msgs.append(push_of(ch.name, keys.unpack_u64(key[-8:]), rec))
        return msgs, first, False, last

    def sync(self, msg: dict, now: float) -> dict:
        """One page of the stored messages of a channel after ``after``."""
        ch = self._member_channel(msg["channel"], msg["uin"])
        msgs, first, more, upto = self._page(ch, msg["after"], wire.SYNC_PAGE, now)
        return wire.reply("sync", msg["rid"], channel=ch.name, msgs=msgs, first=first,
                          last=ch.visible, more=more, upto=upto)

    def heads(self, msg: dict, now: float) -> dict:
        """For a heartbeat: the newest id of each listed channel, and one page of
        what the client is missing across them (SYNC_PAGE messages in all)."""
        uin, budget = msg["uin"], wire.SYNC_PAGE
        heads, firsts, uptos, msgs, more, not_member, unavailable = {}, {}, {}, [], [], [], []
        for name, have in msg["channels"].items():
            if self._unserved(name) is not None:
                unavailable.append(name)               # moving to (or served by) another node, or here
                continue
            ch = self.channels.get(name)
            if ch is None or uin not in ch.members:
                not_member.append(name)
                continue
            page, firsts[name], cut, uptos[name] = self._page(ch, have, budget, now)
            heads[name] = ch.visible
            budget -= len(page)
            msgs += page
            if cut:
                more.append(name)
        return wire.reply("heads", msg["rid"], heads=heads, first=firsts, upto=uptos, msgs=msgs,
                          more=more, not_member=not_member, unavailable=unavailable)

    # --- membership ----------------------------------------------------------
    def member(self, msg, _now=None) -> dict:
        """Is the uin a member of the channel?  (Asked by relays before serving media.)"""
        ch = self._owned(msg["channel"])
        return wire.reply("member", msg["rid"], channel=ch.name, uin=msg["uin"],
                          member=msg["uin"] in ch.members)

    def _admin(self, msg, must_exist=True):
        auth.verify(self.secret, msg["auth"], scope="admin")
        name = msg["channel"]
        if must_exist:
            return self._owned(name)
        self._check_served(name)
        return None

    def _check_members(self, members):
        if len(members) > self.topo.limits["max_members"]:
            raise wire.ProtocolError(wire.Err.BAD_FIELD, "too many members")

    def channel_create(self, msg, _now=None):
        self._admin(msg, must_exist=False)
        self._check_members(msg["members"])
        if msg["channel"] in self.channels:
            raise wire.ProtocolError(wire.Err.CHANNEL_EXISTS, f"channel {msg['channel']!r} exists")
        lifetime = msg.get("lifetime")
        if lifetime is not None and (type(lifetime) not in (int, float) or not 0 < lifetime < 10**9):
            raise wire.ProtocolError(wire.Err.BAD_FIELD, "lifetime must be a positive number of seconds")
        ch = self._create(msg["channel"], msg["members"], lifetime)
        events.admin("create", ch.name, members=len(ch.members))
        return self._members_reply(msg, ch)

    def channel_add(self, msg, _now=None):
        ch = self._admin(msg)
        members = set(msg["members"]) | ch.members
        self._check_members(members)
        self._set_members(ch, members)
        self._save_members(ch)
        events.admin("add", ch.name, members=len(msg["members"]))
        return self._members_reply(msg, ch)

    def channel_remove(self, msg, _now=None):
        ch = self._admin(msg)
        self._set_members(ch, ch.members - set(msg["members"]))
        self._save_members(ch)
        events.admin("remove", ch.name, members=len(msg["members"]))
        return self._members_reply(msg, ch)

    def channel_show(self, msg, _now=None):
        return self._members_reply(msg, self._admin(msg))

    @staticmethod
    def _members_reply(msg, ch):
        return wire.reply("channel", msg["rid"], channel=ch.name, members=sorted(ch.members),
                          last=ch.visible, lifetime=ch.lifetime)

    def _set_members(self, ch, members) -> None:
        old = ch.members
        ch.set_members(members)
        self._index_members(ch, old)

    def _index_members(self, ch, old) -> None:
        """Keep ``member_of`` in step with a channel's members (``old``: before the change)."""
        for uin in set(old) - ch.members:
            chans = self.member_of.get(uin)
            if chans is not None:
                chans.discard(ch)
                if not chans:
                    del self.member_of[uin]
        for uin in ch.members.difference(old):
            self.member_of.setdefault(uin, set()).add(ch)

    # --- fan-out plans ---------------------------------------------------------
    def _presence_changed(self, uin, before: set, after: set) -> None:
        """A uin's brokers changed: patch the plans of its channels (a plan is not
        recomputed over all members because one of them logged in or out).  Edited in
        place: fan-out items referring to a plan's lists are packed and published within
        ``commit``, which no presence change interrupts."""
        for ch in self.member_of.get(uin, ()):
            plan = ch.fanout
            if plan is None:
                continue
            for broker in before - after:
                uins = plan.get(broker)
                if uins is None:
                    continue
                try:
                    uins.remove(uin)
                except ValueError:
                    continue
                if not uins:
                    del plan[broker]
            for broker in after - before:
                plan.setdefault(broker, []).append(uin)

    # --- ids -----------------------------------------------------------------
    def on_ids(self, channel: str, start: int, end: int) -> None:
        ch = self.channels.get(channel)
        if ch is None:
            return
        ch.alloc_inflight = False
        if ch.add_lease(start, end):
            self.stats["id_blocks"] += 1
            self._save_leases(ch)
            if ch.waiting:
                self.dirty.add(ch)

    def on_ids_failed(self, channel: str) -> None:
        """The counter did not answer: ``retry_leases`` asks again on the next tick."""
        ch = self.channels.get(channel)
        if ch is not None:
            ch.alloc_inflight = False
            self.stats["alloc_failures"] += 1

    def retry_leases(self) -> None:
        for ch in self.channels.values():
            if ch.waiting:
                self._prefetch(ch)

    def _prefetch(self, ch: ChannelState) -> None:
        if not ch.alloc_inflight and ch.available() - len(ch.waiting) <= self.block // 2:
            ch.alloc_inflight = True
            self.out.request_ids(ch.name, self.block, ch.boundary())

    # --- turn end: assign ids and stage writes, then ack and fan out ---------
    def assign(self, now: float) -> None:
        """Give queued sends their ids and stage their writes (before the batch is written)."""
        staged = {}                                    # (uin, device) -> newest ctime this turn
        for ch in self.dirty:
            leases_before = len(ch.leases)           # within assign leases only get used up
            last_before = ch.last_id
            stime = int(now * 1000)
            expiry = now + (ch.lifetime or self.lifetime)
            expiry_ms = int(expiry * 1000)
            put = self.store.put
            while ch.waiting:
                msg_id = ch.take_id()
                if msg_id is None:
                    break
                rec = ch.waiting.popleft()
                self.waiting_total -= 1
                rec.id, rec.stime, rec.expiry = msg_id, stime, expiry
                put(ch.prefix + keys.pack_u64(msg_id), keys.encode(rec.record()))
                put(keys.sent_key(rec.uin, rec.device, rec.ctime),
                    keys.sent_value(ch.name, msg_id, keys.text_digest(rec.text)))
                put(keys.sent_expiry_key(expiry_ms, rec.uin, rec.device, rec.ctime), b"")
                self._queue(ch, msg_id)
                if self._newest_from_device(rec, staged):
                    self.store.put(keys.dedup_key(rec.uin, rec.device),
                                   keys.encode([rec.ctime, ch.name, msg_id, rec.stime]))
                ch.last_id = msg_id
                self.committed.append(rec)
            if len(ch.leases) != leases_before:
                self._save_leases(ch)
            if ch.last_id != last_before:
                self.store.put(keys.last_id_key(ch.name), keys.pack_u64(ch.last_id))
            self._prefetch(ch)
        self.dirty = {ch for ch in self.dirty if ch.waiting and ch.available()}

    def _queue(self, ch: ChannelState, msg_id: int) -> None:
        """Append to the channel's bounded queue; the id that falls off is deleted with this batch."""
        was_empty = not len(ch.ring)
        fell = ch.ring.push(msg_id)
        if fell is not None:
            self.store.delete(keys.message_key(ch.name, fell))
            self.stats["trimmed"] += 1
        if was_empty:
            self._watch_expiry(ch)

    def _watch_expiry(self, ch: ChannelState) -> None:
        """Schedule the sweeper for the channel's oldest message."""
        if len(ch.ring):
            raw = self.store.get(keys.message_key(ch.name, ch.ring.first))
            expiry = keys.decode(raw)[4] if raw is not None else 0.0
            heapq.heappush(self.expiries, (expiry, ch.name))

    def sweep(self, now: float, max_seconds: float = 0.005) -> int:
        """Delete expired messages, oldest first, for at most ``max_seconds`` of work.

        Within a channel expiry follows id order, so expired messages are a
        prefix of its queue: the sweeper deletes from the head until it meets
        a live message, then schedules the channel for that message's expiry.
        """
        deadline = time.monotonic() + max_seconds
        deleted = 0
        while self.expiries and self.expiries[0][0] <= now:
            _expiry, name = heapq.heappop(self.expiries)
            ch = self.channels.get(name)
            if ch is None or not len(ch.ring):
                continue
            last_gone, out_of_time = None, False
            # start at the queue's head, not the prefix: deleted rows before it are tombstones
            # that RocksDB would have to step over on every call
            head = keys.message_key(name, ch.ring.first)
            for n, (key, raw) in enumerate(self.store.scan(keys.channel_prefix(name), head)):
                expiry = keys.decode(raw)[4]
                if expiry > now:
                    break
                if n % 64 == 63 and time.monotonic() > deadline:
                    out_of_time = True
                    break
                self.store.delete(key)
                last_gone = keys.unpack_u64(key[-8:])
                deleted += 1
            if last_gone is not None:
                ch.ring.drop_through(last_gone)
            if out_of_time:
                heapq.heappush(self.expiries, (now, name))      # continue on the next call
                break
            self._watch_expiry(ch)
            if time.monotonic() > deadline:
                break
        self.stats["expired"] += deleted
        if deleted:
            spent = time.monotonic() - (deadline - max_seconds)
            self.sweep_seconds += spent
            self.sweep_max = max(self.sweep_max, spent)
        return deleted

    def prune_dedup(self, now: float, budget: int = 500) -> int:
        """Forget devices silent for longer than the message lifetime (a retry can no longer
        come): walks the dedup rows a slice per call, wrapping around.  Returns rows dropped."""
        cutoff_ms = (now - max(self.lifetime, 3600.0)) * 1000
        seen = dropped = 0
        start = self.dedup_cursor
        for key, raw in self.store.scan(b"d", start):
            if seen >= budget:
                self.dedup_cursor = key
                break
            seen += 1
            row = keys.decode(raw)
            if len(row) < 4 or row[3] < cutoff_ms:
                uin, device = int.from_bytes(key[1:5], "big"), int.from_bytes(key[5:9], "big")
                recorded = self.dedup.get(uin, device)
                if recorded is not None and recorded[0] == row[0]:
                    self.dedup.remove(uin, device)
                    self.store.delete(key)
                    dropped += 1
        else:
            self.dedup_cursor = None                   # reached the end: start over next time
        self.stats["dedup_pruned"] += dropped
        return dropped

    def prune_sent(self, now: float, budget: int = SENT_PRUNE_BUDGET) -> int:
        """Forget the send-index rows of messages past their lifetime (oldest first).

        Goes on from where the last call stopped: new rows always expire after now, so
        nothing is ever added before the cursor, and seeking there never steps over the
        tombstones of everything deleted before (which a scan from the prefix would).
        """
        now_ms = int(now * 1000)
        gone = 0
        for key, _raw in self.store.scan(b"x", self.sent_cursor):
            if key == self.sent_cursor:
                continue                               # deleted by the last call (maybe not written yet)
            expiry_ms, sent = keys.sent_of_expiry_key(key)
            if expiry_ms > now_ms or gone >= budget:
                break
            self.store.delete(key)
            self.store.delete(sent)
            self.sent_cursor = key
            gone += 1
        self.stats["sent_pruned"] += gone
        return gone

    def _newest_from_device(self, rec, staged) -> bool:
        """Pipelined sends of one device to two channels can be stored out of client-time
        order; the dedup row must keep the newest."""
        key = (rec.uin, rec.device)
        recorded = self.dedup.get(*key)
        newest = max(staged.get(key, -1), recorded[0] if recorded else -1)
        if rec.ctime <= newest:
            return False
        staged[key] = rec.ctime
        return True

    def commit(self, committed=None) -> None:
        """The batch is on disk (with replication: on a majority): record dedup, ack every
        waiter, fan out.  ``committed``: these sends instead of this turn's."""
        if committed is None:
            committed, self.committed = self.committed, []
        for rec in committed:
            key = (rec.uin, rec.device, rec.ctime)
            recorded = self.dedup.get(rec.uin, rec.device)
            if recorded is None or recorded[0] < rec.ctime:    # a newer send may have won the race
                self.dedup.commit(rec.uin, rec.device, rec.ctime, rec.id)
            if self.inflight.get(key) is rec:
                del self.inflight[key]
            self.stats["acks"] += len(rec.waiters)
            ch = self.channels.get(rec.channel)
            if ch is not None and rec.id > ch.visible:
                ch.visible = rec.id
            for ident, rid in rec.waiters:
                self.out.reply(ident, self._ack(rid, rec.channel, rec.device, rec.ctime, rec.id))
            self.fan_out(rec)
        self.stats["stored"] += len(committed)
        self.publish_turn()

    def abandon(self, recs, why: str) -> None:
        """Sends whose outcome this node can no longer promise (it stopped leading their shard):
        UNAVAILABLE, so the client retries with the same ctime wherever the shard went."""
        for rec in recs:
            self.inflight.pop((rec.uin, rec.device, rec.ctime), None)
            for ident, rid in rec.waiters:
                self.out.reply(ident, wire.error(rid, wire.Err.UNAVAILABLE, why))

    def drop(self, names, why: str) -> None:
        """Stop serving these channels (their shard moved): forget their state, fail their queues."""
        for name in names:
            ch = self.channels.pop(name, None)
            if ch is None:
                continue
            self.dirty.discard(ch)
            self.waiting_total -= len(ch.waiting)
            self.abandon(ch.waiting, why)
            ch.waiting.clear()

    def fan_out(self, rec: Pending) -> None:
        """Queue the message for every broker with an online member (sent once per turn)."""
        ch = self.channels[rec.channel]
        if ch.fanout_version != self.replica.version:
            ch.fanout = self.replica.brokers_for(ch.member_array)
            ch.fanout_version = self.replica.version
        if not ch.fanout:
            return
        packed = wire.pack(push_of(rec.channel, rec.id, rec.record()))
        self.stats["deliveries"] += len(ch.fanout)
        for broker, uins in ch.fanout.items():
            self.outbox.setdefault(broker, []).append([packed, uins, rec.uin, rec.device])

    def publish_turn(self) -> None:
        """One PUB frame per broker of this IDC for all the messages of this turn, in id order;
        one per remote IDC (nodes/cluster/idcfanout.py)."""
        outbox, self.outbox = self.outbox, {}
        if outbox:
            # "logic" in each frame: a broker counts it as a sign of life, like a tick
            # (deliveries queued behind each other must not make it think this node is down)
            spec = self.topo.nodes.get(self.id)
            for broker, msg in idcfanout.plan(outbox, self.topo, spec.idc if spec else None, self.id):
                self.out.publish(broker, msg)


class LogicNode(Node):
    type = "logic"
    clock = staticmethod(time.time)            # expiries and stored times are wall-clock

    def __init__(self, topo, node_id):
        super().__init__(topo, node_id)
        self.requests = Requests(topo.limits["request_timeout"], INTERNAL_MAX_FRAME, self.outbox,
                                 on_late=self.on_late_reply)
        self.pub = self.bind(zmq.PUB, self.spec.endpoint("pub"))
        self.counters = self.peers("counter")
        self.routers = self.peers("router")
        self.presence_sub = self.subscribe("router", PRESENCE_TOPIC, lambda msg: self.replica.on_message(msg))
        self.replica = PresenceReplica(self.routers, self.request_snapshot)
        self.core = LogicCore(node_id, topo, self.store, self.replica, self, topo.read_secret())
        self.repl = self.coordinator = None
        self.alloc_failures = 0                # replicated: rotates id requests over the counters
        if topo.replicated:
            self._start_replication()          # channels load per shard, when this node leads it
        else:
            self.core.joining = self._joins_running_mesh()
            self.core.load()
        rpc = self.bind(zmq.ROUTER, self.spec.endpoint("rpc"))
        self.rpc = rpc
        c = self.core

        def by_msg(fn):
            return lambda _ident, msg, now: fn(msg, now)
        handlers = {
            "send": c.send,
            "sync": by_msg(c.sync),
            "heads": by_msg(c.heads),
            "channel_create": self._admin_change(c.channel_create),
            "channel_add": self._admin_change(c.channel_add),
            "channel_remove": self._admin_change(c.channel_remove),
            "channel_show": self.handle_channel_show,
            "presence": self.handle_presence,
            "member": by_msg(c.member),
            "status": self.handle_status}
        schemas = wire.LOGIC_REQUESTS
        if self.repl is not None:
            handlers.update(self.repl.handlers())
            schemas = dict(schemas, **wire.REPLICATION_REQUESTS)
        else:                                  # live reshard (replicated shards move by leadership)
            self.handoff = Handoff(self.core, self.store)
            handlers.update(self.handoff.handlers())
            schemas = dict(schemas, **wire.HANDOFF_REQUESTS)
        self.serve(rpc, schemas, handlers)
        self.broker_topics = [wire.topic(b.id) for b in topo.of_type("broker")]
        self.loop.every(TICK_INTERVAL, self.tick, first=0)
        self.loop.every(SWEEP_INTERVAL, self.sweep)
        self.loop.every(DEDUP_PRUNE_INTERVAL, lambda: self.core.prune_dedup(time.time()))
        self.replica.start()
        if self.coordinator is not None:
            self.coordinator.start()

    # --- replication hooks (nodes/logic/replication.py, nodes/cluster/coordinator.py) -------
    def _start_replication(self):
        from nodes.cluster.coordinator import Coordinator
        self.logic_peers = {n: sock for n, sock in self.peers("logic").items() if n != self.id}
        self.repl = Replication(self.id, self.topo, self)
        ranks = {s: self.topo.replicas_of(s).index(self.id) for s in self.repl.shards}
        self.coordinator = Coordinator(self.ctx, self.topo.etcd_endpoints(), self.topo.cluster, self.id, ranks)
        self.loop.add(self.coordinator.pipe, lambda frames: self.repl.on_coordinator(keys.decode(frames[-1])))
        self.loop.every(REPLICATION_PROBE, self.repl.probe)

    def to_logic(self, peer, msg, callback, timeout):
        self.requests.send(self.logic_peers[peer], msg, callback, timeout)

    def announce(self, stopping: bool = False):
        """Tell every broker now which shards this node leads (also said in every tick);
        ``stopping``: take this node for down at once."""
        tick = {"t": "tick", "logic": self.id,
                "leads": [[s, e] for s, e in self.repl.leading().items()] if self.repl else []}
        if stopping:
            tick["stopping"] = True
        frame = wire.pack(tick)
        for topic in self.broker_topics:
            self.queue_packed(self.pub, topic, frame)

    def _admin_change(self, fn):
        """A membership change is answered once the record carrying it is on a majority."""
        def handler(ident, msg, now):
            reply = fn(msg, now)
            if self.repl is None:
                return reply
            self.repl.hold_reply(msg["channel"], ident, reply)
            return None
        return handler

    def handle_channel_show(self, _ident, msg, now=None):
        reply = self.core.channel_show(msg, now)
        if self.repl is not None:
            reply.update(self.repl.describe(msg["channel"]))
        return reply

    def _joins_running_mesh(self, timeout: float = JOIN_PROBE) -> bool:
        """Does another logic node run an older topology version?  Then this node was added
        by a live change still under way (docs/deploy.md): the channels it will serve are held
        elsewhere and come by hand-over, so it seeds none and serves only what it holds until
        ``settle``.  Nobody answering (a mesh starting up) or all on this version: not joining."""
        others = [n for n in self.topo.ids("logic") if n != self.id]
        answers = Admin(self.topo, ctx=self.ctx, identity=self.security).status_all(others, timeout)   # own keys
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
    def reply(self, ident, msg):
        self.queue_reply(self.rpc, ident, msg)

    def publish(self, broker, msg):
        self.queue_packed(self.pub, wire.topic(broker), wire.pack(msg))

    def request_ids(self, channel, n, have):
        counter, timeout = self.topo.counter_for(channel), None
        if self.repl is not None:              # any counter serves: the next one after a failure
            ids = self.topo.ids("counter")
            counter = ids[(ids.index(counter) + self.alloc_failures) % len(ids)]
            timeout = ALLOC_FAILOVER

        def done(reply):
            if reply.get("t") == "alloc":
                self.on_late_reply(reply)
            else:
                log.warning("id alloc for %s at %s failed: %s", channel, counter, reply.get("msg"))
                self.alloc_failures += 1
                self.core.on_ids_failed(channel)
        self.requests.send(self.counters[counter], {"t": "alloc", "channel": channel, "n": n, "have": have},
                           done, timeout)

    def on_late_reply(self, reply):
        """Id blocks are persisted by the counter: use them even if they come late."""
        if reply.get("t") == "alloc":
            self.core.on_ids(reply["channel"], reply["start"], reply["end"])

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
        self.core.retry_leases()
        self.announce()
        self.replica.retry()
        if self.repl is not None:
            self.repl.reconcile()              # a lease that ran out ends leadership even when idle

    def sweep(self):
        now = time.time()
        self.core.sweep(now)
        self.core.prune_sent(now)

    def before_flush(self):
        self.core.assign(time.time())
        if self.repl is not None:
            self.repl.stage()

    def after_flush(self):
        if self.repl is not None:
            self.repl.release()
        self.core.commit()

    def handle_presence(self, _ident, msg, _now=None):
        return wire.reply("presence", msg["rid"], uin=msg["uin"],
                          devices={str(d): b for d, b in self.replica.devices(msg["uin"]).items()})

    def status(self):
        c = self.core
        return dict(super().status(), channels=len(c.channels), presence_synced=self.replica.synced(),
                    joining=c.joining,
                    online=len(self.replica.online), stored=c.stats["stored"],
                    expired=c.stats["expired"], trimmed=c.stats["trimmed"], waiting=c.waiting_total,
                    acks=c.stats["acks"], deliveries=c.stats["deliveries"], id_blocks=c.stats["id_blocks"],
                    requests=dict(self.dispatchers[0].requests),
                    sweep_s=round(c.sweep_seconds, 3), sweep_max_ms=round(c.sweep_max * 1000, 3),
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
        super().close()
