"""Log shipping per shard: leader -> followers, majority before ack (docs/ha.md).

The leader of a shard turns each loop turn's writes of the shard into one
record ``{shard, epoch, seq, prev, ops}`` (``prev``: the (epoch, seq) the
record follows), writes it with its own batch and sends it to the other
replicas over the logic rpc sockets.  Sends stored in that turn are acked
-- and admin changes answered -- only when a majority of the replicas holds
the record, in seq order, and only while the node's etcd lease is valid.

A follower applies a record only if its position equals the record's
``prev`` (so its shard state is always exactly the leader's at some seq),
refuses records of an epoch older than the newest it knows (the fence), and
answers a gap or a divergence with ``rep_gap``; the leader then streams it a
snapshot of the shard (nodes/logic/snapshots.py), after which records apply again.

Promotion (the coordinator won the shard's etcd key at epoch E): ask every
replica for its position (which also raises their known epoch to E, so the
old leader can no longer reach a majority); with a majority of answers,
take a snapshot from the one furthest ahead if it is not us (it holds every
acked record: each is on a majority, and a majority answered); then load
the shard's channels and serve.  The core keeps no state of shards it does
not lead; the store holds every replica's rows.
"""
from __future__ import annotations

import logging
import time

from nodes.cluster.placement import ShardPlacement
from nodes.logic.snapshots import Snapshots, checked_ops
from nodes.protocol import wire
from nodes.storage import shards

log = logging.getLogger(__name__)

REP_TIMEOUT = 0.5            # a follower that does not answer a record in time gets it again
PROMOTE_TIMEOUT = 1.0        # position requests are asked again after this
CHECK_INTERVAL = 1.0         # an idle or silent follower is asked this often where it stands
SILENT = 1.5                 # a follower not heard from this long gets checks only, no records
CATCH_UP_CHUNK = 32          # records shipped per catch-up step (frames stay far below the size cap)
SNAP_TIMEOUT = 10.0          # a promoting node's snapshot request
RETAINED = 10000             # records kept for followers that fall behind (then: snapshot)


class Record:
    __slots__ = ("seq", "msg", "recs", "replies")

    def __init__(self, seq, msg, recs, replies):
        self.seq, self.msg, self.recs, self.replies = seq, msg, recs, replies


class Lead:
    """The leader side of one shard."""

    def __init__(self, shard, epoch, position, followers):
        self.shard, self.epoch = shard, epoch
        self.prev = tuple(position)           # the (epoch, seq) the next record follows
        self.followers = followers
        self.acked = dict.fromkeys(followers, position[1])   # follower -> newest seq it holds; a follower
        # not at ``position`` learns so from the epoch's first record (rep_gap) and gets a snapshot
        self.sent = dict(self.acked)          # follower -> last seq of the in-order stream sent to it
        self.heard = {f: time.monotonic() for f in followers}   # follower -> its last answer
        self.log = []                         # Records not yet released, then the newest retained
        self.released = position[1]           # newest seq whose sends were acked
        self.snapping = set()                 # followers being sent a snapshot
        self.checked = {}                     # follower -> when it was last asked for its position
        self.first = None                     # seq of the epoch's first record: serving starts once it
        #                                       is on a majority (then everything before it is too)

    @property
    def seq(self) -> int:
        return self.prev[1]

    def commit_index(self, majority: int) -> int:
        """The newest seq held by a majority (the leader holds everything it wrote)."""
        held = sorted(self.acked.values(), reverse=True)
        need = majority - 1
        return self.seq if need <= 0 else held[need - 1]


class Replication:
    """Every shard this logic node replicates; plugs into the node loop through small hooks.

    ``node`` provides ``to_logic(peer, msg, callback, timeout)``, ``reply(ident, msg)``,
    ``announce()`` (tell brokers who leads what, now) and ``store``/``core``; ``placement``
    is the ShardPlacement the core was built with (this class keeps it up to date).
    """

    def __init__(self, node_id, topo, node, placement: ShardPlacement):
        self.id = node_id
        self.topo = topo
        self.node = node
        self.store = node.store
        self.core = node.core
        self.placement = placement
        self.shards = set(topo.shards_of(node_id))
        self.majority = topo.replication // 2 + 1
        self.pos = {s: shards.get_position(self.store, s) for s in self.shards}
        self.known = {s: self.pos[s][0] for s in self.shards}    # newest epoch heard per shard: the fence
        self.lease_until = 0.0                # monotonic: acks only before this
        self.lead: dict[int, Lead] = {}       # shard -> Lead, shards this node serves
        self.promoting: dict[int, dict] = {}  # shard -> {"epoch", "answers", "asked"}
        self.held: dict[int, list] = {}       # shard -> [(ident, reply)] admin replies of this turn
        self.stats = {"records": 0, "applied": 0, "snapshots_sent": 0, "snapshots_installed": 0,
                      "refused": 0}
        self.snaps = Snapshots(node, self.store, topo.shard_of, self.pos.__getitem__, self._set_position,
                               self._write, self._installed, self.stats)
        self.store.start_capture()            # each turn's writes become records (stage)

    # --- from the coordinator -------------------------------------------------
    def on_coordinator(self, msg: dict) -> None:
        if msg.get("t") == "lease":
            self.lease_until = msg["until"]
        elif msg.get("t") == "leaders":
            self.placement.leaders = {int(s): (v[0], v[1]) for s, v in msg["map"].items()}
            for s, (_node, epoch) in self.placement.leaders.items():
                if s in self.known:
                    self.known[s] = max(self.known[s], epoch)
        self.reconcile()

    def lease_valid(self) -> bool:
        return time.monotonic() < self.lease_until

    def reconcile(self) -> None:
        """Lead exactly the shards etcd says are ours, while the lease holds."""
        valid = self.lease_valid()
        for s in self.shards:
            node, epoch = self.placement.leaders.get(s, (None, 0))
            mine = valid and node == self.id
            lead = self.lead.get(s)
            if lead is not None and (not mine or lead.epoch != epoch):
                self.step_down(s, "lease lost" if not valid else f"shard {s} has a new leader")
            promo = self.promoting.get(s)
            if promo is not None and (not mine or promo["epoch"] != epoch):
                del self.promoting[s]
            if mine and s not in self.lead and s not in self.promoting:
                self.promote(s, epoch)

    # --- leader: records -------------------------------------------------------
    def hold_reply(self, name: str, ident, reply: dict) -> None:
        """An admin change's reply leaves with the record that carries the change."""
        self.held.setdefault(self.topo.shard_of(name), []).append((ident, reply))

    def stage(self) -> None:
        """Turn end, before the batch is written: this turn's writes become records."""
        self.snaps.before_flush()
        ops = self.store.take_captured()
        committed = self.core.take_committed()
        by_shard = shards.split(ops, self.topo.shard_of)
        recs: dict[int, list] = {}
        for rec in committed:
            recs.setdefault(self.topo.shard_of(rec.channel), []).append(rec)
        for s in set(by_shard) | set(recs) | set(self.held):
            lead = self.lead.get(s)
            if lead is None:                 # not ours (any more): nothing may be acked or written
                self._unstage(by_shard.get(s, ()))
                self.core.abandon(recs.get(s, ()), f"logic {self.id} stopped leading shard {s}")
                self._fail_replies(self.held.pop(s, ()))
                continue
            self._append(lead, by_shard.get(s, []), recs.get(s, []), self.held.pop(s, []))

    def _unstage(self, ops) -> None:
        """Writes of a shard this node stopped leading during the turn (a membership change, a
        lease block, then a newer leader or a lost lease): no record carries them, so the batch
        puts every key back as stored.  Written, they would be rows its position does not
        account for -- never on the other replicas, yet served when this node leads again."""
        with self.store.uncaptured():
            for key in dict.fromkeys(key for key, _value in ops):
                old = self.store.get(key)
                if old is None:
                    self.store.delete(key)
                else:
                    self.store.put(key, old)

    def _append(self, lead: Lead, ops, recs, replies) -> None:
        seq = lead.seq + 1
        msg = {"t": "rep", "shard": lead.shard, "epoch": lead.epoch, "seq": seq,
               "prev": list(lead.prev), "ops": ops}
        lead.prev = (lead.epoch, seq)
        self.pos[lead.shard] = lead.prev
        shards.put_position(self.store, lead.shard, lead.prev)
        lead.log.append(Record(seq, msg, recs, replies))
        if len(lead.log) > RETAINED and lead.log[0].seq <= lead.released:
            del lead.log[0]
        self.stats["records"] += 1
        now = time.monotonic()
        for f in lead.followers:              # live records go only to followers in step and alive
            if lead.sent[f] == seq - 1 and f not in lead.snapping and now - lead.heard[f] < SILENT:
                self._ship(lead, f, msg)

    def _ship(self, lead: Lead, follower: str, msg: dict) -> None:
        if "check" not in msg:
            lead.sent[follower] = msg["seq"]
        self.node.to_logic(follower, dict(msg), self._on_rep_reply(lead, follower), REP_TIMEOUT)

    def _on_rep_reply(self, lead: Lead, follower: str):
        def done(reply):
            if self.lead.get(lead.shard) is not lead:
                return
            t = reply.get("t")
            if t in ("rep_ok", "rep_gap", "rep_no"):
                lead.heard[follower] = time.monotonic()
            if t == "rep_ok":
                lead.acked[follower] = max(lead.acked[follower], reply["seq"])
                self._catch_up(lead, follower)
            elif t == "rep_gap":
                self._resume(lead, follower, reply.get("pos"))
            elif t == "rep_no":
                self.step_down(lead.shard, f"a replica knows a newer epoch {reply.get('epoch')}")
            else:                              # no answer: the stream to it may have a hole
                lead.sent[follower] = min(lead.sent[follower], lead.acked[follower])
        return done

    def _resume(self, lead: Lead, f: str, pos) -> None:
        """A follower is not where its stream assumed: go on from its position when that is the
        ``prev`` of a record still in the log (it holds a prefix of ours), else send a snapshot."""
        if f in lead.snapping:
            return
        first = lead.log[0].seq if lead.log else lead.seq + 1
        if isinstance(pos, list) and len(pos) == 2:
            if tuple(pos) == lead.prev:
                lead.acked[f] = lead.sent[f] = lead.seq
                return
            at = pos[1] + 1 - first
            if 0 <= at < len(lead.log) and lead.log[at].msg["prev"] == pos:
                lead.acked[f] = max(lead.acked[f], pos[1])
                lead.sent[f] = pos[1]
                self._catch_up(lead, f)
                return
        self._send_snapshot(lead, f)

    def release(self) -> list:
        """After the batch is written: the sends a majority holds now, in seq order, while the
        lease holds (the node passes them to the core's commit); admin replies leave here."""
        self.snaps.after_flush()
        if not self.lease_valid():
            if self.lead:
                self.reconcile()
            return []
        released = []                          # sends of every record released now: one commit, so
        for lead in list(self.lead.values()):  # their deliveries leave in one PUB frame per broker
            upto = lead.commit_index(self.majority)
            # seqs in the log are contiguous: start at the first unreleased record instead of
            # walking past the (up to RETAINED) released ones kept for followers, every turn
            records = lead.log
            at = max(0, lead.released + 1 - records[0].seq) if records else 0
            while at < len(records) and records[at].seq <= upto:
                record = records[at]
                at += 1
                lead.released = record.seq
                if record.recs:
                    released.extend(record.recs)
                for ident, reply in record.replies:
                    self.node.reply(ident, reply)
                record.recs = record.replies = None
            if lead.shard not in self.placement.serving and lead.released >= lead.first:
                self.placement.serving[lead.shard] = lead.epoch
                log.info("shard %d: serving at epoch %d", lead.shard, lead.epoch)
                self.node.announce()
            while len(lead.log) > RETAINED and lead.log[0].seq <= lead.released:
                del lead.log[0]
        return released

    def _catch_up(self, lead: Lead, f: str) -> None:
        """A live follower behind gets the next records it lacks, in order and in chunks, as
        its answers come (live records wait until it is in step); a snapshot when the log
        no longer reaches back far enough."""
        if f in lead.snapping or time.monotonic() - lead.heard[f] >= SILENT:
            return
        if lead.sent[f] >= lead.seq or lead.sent[f] - lead.acked[f] >= CATCH_UP_CHUNK:
            return
        first = lead.log[0].seq if lead.log else lead.seq + 1
        want = lead.sent[f] + 1
        if want < first:
            self._send_snapshot(lead, f)
            return
        for record in lead.log[want - first:want - first + CATCH_UP_CHUNK]:
            self._ship(lead, f, record.msg)

    def probe(self) -> None:
        """Timer: followers left behind (lost records, timeouts) are caught up; stalled
        promotions ask again."""
        now = time.monotonic()
        for lead in self.lead.values():
            for f in lead.followers:
                self._catch_up(lead, f)
                idle = lead.sent[f] == lead.acked[f] or now - lead.heard[f] >= SILENT
                if idle and now - lead.checked.get(f, 0.0) > CHECK_INTERVAL:
                    self._check_follower(lead, f, now)
        for s, promo in list(self.promoting.items()):
            if time.monotonic() - promo["asked"] > PROMOTE_TIMEOUT:
                self._ask_positions(s, promo)

    def _check_follower(self, lead: Lead, f: str, now: float) -> None:
        """An idle shard sends no records, and a silent follower gets none: ask (``check``), so a
        restarted follower says where it stands (rep_gap: catch-up or, wiped, a snapshot)."""
        lead.checked[f] = now
        self._ship(lead, f, {"t": "rep", "shard": lead.shard, "epoch": lead.epoch, "seq": lead.seq,
                             "check": True})

    def _send_snapshot(self, lead: Lead, follower: str) -> None:
        if follower in lead.snapping:
            return
        lead.snapping.add(follower)

        def done(reply):
            lead.snapping.discard(follower)
            if reply.get("t") == "rep_ok" and self.lead.get(lead.shard) is lead:
                lead.heard[follower] = time.monotonic()
                lead.acked[follower] = max(lead.acked[follower], reply["seq"])
                lead.sent[follower] = reply["seq"]
                self._catch_up(lead, follower)
        self.snaps.send(follower, lead.shard, lead.epoch, lambda: self.lead.get(lead.shard) is lead, done)

    # --- leader: start and stop -----------------------------------------------
    def promote(self, s: int, epoch: int) -> None:
        promo = self.promoting[s] = {"epoch": epoch, "answers": {self.id: self.pos[s]}, "asked": 0.0}
        log.info("shard %d: won epoch %d; collecting positions", s, epoch)
        self._ask_positions(s, promo)

    def _ask_positions(self, s: int, promo: dict) -> None:
        promo["asked"] = time.monotonic()
        if len(promo["answers"]) >= self.majority:
            return self._take_over(s, promo)
        for f in self._others(s):
            if f not in promo["answers"]:
                self.node.to_logic(f, {"t": "rep_pos", "shard": s, "epoch": promo["epoch"]},
                                   self._on_position(s, promo, f), PROMOTE_TIMEOUT)

    def _on_position(self, s, promo, f):
        def done(reply):
            if self.promoting.get(s) is not promo or "fetching" in promo:
                return
            if reply.get("t") == "rep_no":
                del self.promoting[s]               # a newer leader exists; the map will say so
                return
            if reply.get("t") != "pos":
                return
            promo["answers"][f] = tuple(reply["pos"])
            if len(promo["answers"]) >= self.majority:
                self._take_over(s, promo)
        return done

    def _take_over(self, s: int, promo: dict) -> None:
        best = max(promo["answers"].items(), key=lambda kv: kv[1])
        if best[1] <= self.pos[s]:
            return self._activate(s, promo["epoch"])
        promo["fetching"] = best[0]
        log.info("shard %d: %s is ahead (%s > %s); fetching its snapshot", s, best[0], best[1], self.pos[s])

        def done(reply):                           # the pages follow as ``snap`` requests (on_snap)
            if self.promoting.get(s) is promo and reply.get("t") != "snap_info":
                del promo["fetching"]                 # ask again on the next probe
                promo["answers"] = {self.id: self.pos[s]}
        self.node.to_logic(best[0], {"t": "snap_req", "shard": s, "epoch": promo["epoch"], "from": self.id}, done,
                           SNAP_TIMEOUT)

    def _activate(self, s: int, epoch: int) -> None:
        self.promoting.pop(s, None)
        self.placement.serving.pop(s, None)        # served once the epoch's first record is on a majority
        lead = self.lead[s] = Lead(s, epoch, self.pos[s], self._others(s))
        self.core.load(lambda name: self.topo.shard_of(name) == s)
        self._append(lead, [], [], [])             # the first record of the epoch: followers adopt it
        lead.first = lead.seq
        log.info("shard %d: leading at epoch %d from seq %d", s, epoch, lead.seq)
        self.node.announce()

    def step_down(self, s: int, why: str) -> None:
        lead = self.lead.pop(s, None)
        if lead is None:
            return
        self.placement.serving.pop(s, None)
        log.warning("shard %d: no longer leading (%s)", s, why)
        for record in lead.log:
            if record.seq > lead.released and record.recs is not None:
                self.core.abandon(record.recs, f"logic {self.id} stopped leading: {why}")
                self._fail_replies(record.replies)
        self.core.drop([n for n in list(self.core.channels) if self.topo.shard_of(n) == s], why)
        self.node.announce()

    def resign(self, why: str) -> None:
        """Stop leading every shard (the node is stopping)."""
        self.promoting.clear()
        for s in list(self.lead):
            self.step_down(s, why)

    def _fail_replies(self, replies) -> None:
        for ident, reply in replies:
            self.node.reply(ident, wire.error(reply.get("rid"), wire.Err.UNAVAILABLE,
                                              "the channel's leader changed; check and retry"))

    def _others(self, s: int) -> list:
        return [n for n in self.topo.replicas_of(s) if n != self.id]

    # --- follower (and any replica) handlers -----------------------------------
    def _check(self, msg) -> int:
        s = msg["shard"]
        if s not in self.shards:
            raise wire.ProtocolError(wire.Err.WRONG_OWNER, f"logic {self.id} does not replicate shard {s}")
        return s

    def _fence(self, s: int, epoch: int):
        """None if a request of ``epoch`` may proceed, else the refusal.  A newer epoch than ours
        ends our own leadership of the shard at once."""
        if epoch < self.known[s]:
            self.stats["refused"] += 1
            return {"t": "rep_no", "shard": s, "epoch": self.known[s]}
        self.known[s] = epoch
        lead = self.lead.get(s)
        if lead is not None and lead.epoch < epoch:
            self.step_down(s, f"a newer epoch {epoch} exists")
        return None

    def on_rep(self, _ident, msg, _now=None) -> dict:
        s = self._check(msg)
        refused = self._fence(s, msg["epoch"])
        if refused is not None:
            return wire.reply(refused.pop("t"), msg["rid"], **refused)
        pos, seq = self.pos[s], msg["seq"]
        prev = msg.get("prev")
        if msg.get("check") is True:              # no record: does the follower hold (epoch, seq)?
            if pos == (msg["epoch"], seq):
                return wire.reply("rep_ok", msg["rid"], shard=s, seq=seq)
            return wire.reply("rep_gap", msg["rid"], shard=s, pos=list(pos))
        if isinstance(prev, list) and tuple(prev) == pos and s not in self.lead:
            self._apply(s, checked_ops(msg.get("ops")), (msg["epoch"], seq))
            return wire.reply("rep_ok", msg["rid"], shard=s, seq=seq)
        if pos[0] == msg["epoch"] and pos[1] >= seq:
            return wire.reply("rep_ok", msg["rid"], shard=s, seq=pos[1])     # already held
        return wire.reply("rep_gap", msg["rid"], shard=s, pos=list(pos))

    def _apply(self, s: int, ops, position) -> None:
        with self.store.uncaptured():             # applied rows are not re-shipped
            self._write(ops)
            shards.put_position(self.store, s, position)
        self.pos[s] = position
        self.stats["applied"] += 1

    def _write(self, ops) -> None:
        """Stage a record's ops or a snapshot page's rows (``d`` rows: only a newer client time)."""
        for key, value in ops:
            if value is None:
                self.store.delete(key)
            elif key[:1] != b"d" or self._newer_dedup(key, value):
                self.store.put(key, value)

    def _newer_dedup(self, key: bytes, value: bytes) -> bool:
        """A device's newest client time over every shard held here; the core's table follows."""
        if not shards.newer_dedup(self.store, key, value):
            return False
        self.core.note_dedup_row(key, value)
        return True

    def _set_position(self, s: int, position) -> None:
        shards.put_position(self.store, s, position)
        self.pos[s] = tuple(position)

    def _installed(self, s: int) -> None:
        """A snapshot is in: a promotion that fetched it goes on."""
        promo = self.promoting.get(s)
        if promo is not None and promo.get("fetching"):
            self._activate(s, promo["epoch"])

    def on_snap(self, ident, msg, _now=None):
        """A snapshot page (nodes/logic/snapshots.py installs it)."""
        s = self._check(msg)
        refused = self._fence(s, msg["epoch"])
        if refused is not None:
            return wire.reply(refused.pop("t"), msg["rid"], **refused)
        return self.snaps.receive(ident, msg, s)

    def on_rep_pos(self, _ident, msg, _now=None) -> dict:
        s = self._check(msg)
        refused = self._fence(s, msg["epoch"])
        if refused is not None:
            return wire.reply(refused.pop("t"), msg["rid"], **refused)
        return wire.reply("pos", msg["rid"], shard=s, pos=list(self.pos[s]))

    def on_snap_req(self, _ident, msg, _now=None) -> dict:
        s = self._check(msg)
        refused = self._fence(s, msg["epoch"])
        if refused is not None:
            return wire.reply(refused.pop("t"), msg["rid"], **refused)
        requester = msg.get("from")
        if requester not in self._others(s):
            raise wire.ProtocolError(wire.Err.BAD_FIELD, "snap_req needs 'from': another replica of the shard")
        epoch = msg["epoch"]
        self.snaps.send(requester, s, epoch, lambda: self.known[s] == epoch, _ignore)
        return wire.reply("snap_info", msg["rid"], shard=s, pos=list(self.pos[s]))

    def handlers(self) -> dict:
        return {"rep": self.on_rep, "rep_pos": self.on_rep_pos, "snap": self.on_snap,
                "snap_req": self.on_snap_req}

    # --- status ------------------------------------------------------------------
    def status(self) -> dict:
        """Per shard served here: epoch, seq, and each follower's lag in records."""
        return {str(s): {"leader": self.id, "epoch": lead.epoch, "seq": lead.seq,
                         "lag": {f: lead.seq - a for f, a in lead.acked.items()}}
                for s, lead in sorted(self.lead.items())}

    def describe(self, name: str) -> dict:
        """What ``bin/mesh channel show`` adds: shard, replicas, leader, epoch."""
        s = self.topo.shard_of(name)
        leader, epoch = self.placement.leaders.get(s, (None, 0))
        return {"shard": s, "replicas": self.topo.replicas_of(s), "leader": leader, "epoch": epoch}


def _ignore(_reply) -> None:
    """An answer nobody waits for (the end of a snapshot a promoting node asked for)."""
