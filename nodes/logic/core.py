"""The logic core: the single writer of the channels this node serves, without sockets.

It composes the parts of the logic node, each with its own state and job:
``serving`` (which channels are held and served: nodes/logic/serving.py),
``dedup`` (retries: dedup.py), ``ids`` (the id queue, leases and assignment:
ids.py), ``sends`` (accept, ack, abandon: sends.py), ``reads`` (sync and heads:
reads.py), ``members`` (membership admin: members.py), ``fanout`` (who gets a
message: fanout.py), ``retention`` (expiry and pruning: retention.py),
``edits`` (edit/delete rules and rewrites: edits.py), ``history`` (pages
backwards: history.py) and ``ephemeral`` (typing, watched presence: ephemeral.py),
``readstate`` (read cursors, receipts, unread, my channels: readstate.py) and
``rooms`` (channels users create, roles: rooms.py).  The
node (node.py) routes requests to them; the core itself keeps the lifecycle of
the channels -- load, seed, settle, adopt a new topology, hand over, drop --
and the one commit path that the node, replication (replication.py) and a
hand-over (handoff.py) call instead of reaching into the parts.

``out`` provides ``reply(ident, msg)``, ``publish(broker_id, msg)`` and
``request_ids(channel, n, have)`` (``LogicOut``: nodes/runtime/ports.py).  ``placement`` says which channels this node
serves (``owns``) and who does (``leader``): the rendezvous owner
(StaticPlacement), or with replication the shard leadership (replication.py).
"""
from __future__ import annotations

import collections
from collections.abc import Callable, Collection, Iterable, Sequence

from nodes.cluster.placement import LogicPlacement, StaticPlacement
from nodes.cluster.topology import Topology
from nodes.logic.channels import ChannelState, Pending
from nodes.logic.dedup import Dedup
from nodes.logic.edits import Edits
from nodes.logic.ephemeral import Ephemeral
from nodes.logic.fanout import FanOut
from nodes.logic.history import History
from nodes.logic.ids import Ids
from nodes.logic.members import Membership
from nodes.logic.presence import PresenceReplica
from nodes.logic.reads import Reads
from nodes.logic.readstate import ReadState
from nodes.logic.retention import Retention
from nodes.logic.rooms import Rooms
from nodes.logic.sends import Sends
from nodes.logic.serving import Serving
from nodes.runtime.ports import LogicOut
from nodes.storage import store as keys
from nodes.storage.store import Store


class LogicCore:
    """Channels, dedup and the send pipeline; ``out`` does the I/O.  State of its own: the
    ``stats`` counters every part adds to (shown by ``status``); the rest is the parts'."""

    def __init__(self, node_id: str, topo: Topology, store: Store, replica: PresenceReplica, out: LogicOut,
                 secret: bytes, placement: LogicPlacement | None = None, joining: bool = False) -> None:
        self.id = node_id
        self.store = store
        self.secret = secret
        self.queue = int(topo.limits["channel_queue"])
        self.stats: collections.Counter[str] = collections.Counter()
        self.serving = s = Serving(node_id, topo, placement or StaticPlacement(topo, node_id), joining)
        self.dedup = Dedup(store)
        self.retention = Retention(s, store, self.dedup, self.stats, topo.limits["message_lifetime"])
        self.fanout = FanOut(s, replica, out, self.stats)
        self.edits = Edits(store, topo.limits)
        self.ids = Ids(s, store, self.dedup, self.retention, self.edits, out, self.stats, topo.limits)
        self.sends = Sends(s, self.dedup, self.ids, self.edits, self.fanout, out, self.stats)
        self.reads = Reads(s, store)
        self.members = Membership(s, store, self.fanout, secret, self.queue)
        self.history = History(s, store)
        self.ephemeral = Ephemeral(s, replica, self.fanout, topo.limits)
        self.readstate = ReadState(s, store, self.members, self.fanout, replica, topo.limits)
        self.rooms = Rooms(s, self.members, topo.limits)

    @property
    def channels(self) -> dict[str, ChannelState]:
        """name -> ChannelState of the channels held here."""
        return self.serving.channels

    @property
    def topo(self) -> Topology:
        return self.serving.topo

    @property
    def placement(self) -> LogicPlacement:
        return self.serving.placement

    @property
    def joining(self) -> bool:
        return self.serving.joining

    # --- start ---------------------------------------------------------------
    def load(self, wanted: Callable[[str], bool] | None = None) -> None:
        """Load the stored channels (those ``wanted(name)`` accepts, if given) and create the
        topology's channels this node serves that are not stored yet."""
        loaded: dict[str, ChannelState] = {}
        incoming = self.serving.incoming
        # a take cut short (nodes/logic/handoff.py): part of a channel only, neither served nor seeded
        # until a take ends
        incoming.update(n for n in (key[1:].decode() for key, _raw in self.store.scan(b"t"))
                        if wanted is None or wanted(n))
        for key, raw in self.store.scan(b"c"):
            name, row = key[1:].decode(), keys.decode(raw)
            if (wanted is None or wanted(name)) and name not in incoming:
                loaded[name] = ChannelState(name, row["members"], self.queue, row.get("lifetime"))
                self.members.restore(name, row)
        self.channels.update(loaded)
        for ch in loaded.values():
            self.fanout.index(ch, ())
            self.ids.restore(ch, self.queue)
            self.retention.watch(ch)
            self.readstate.restore(ch)
        self.dedup.load()                    # once: later d rows reach the table as they are written
        if not self.serving.joining:
            self._seed(wanted)
        self.store.flush()

    def _seed(self, wanted: Callable[[str], bool] | None = None) -> list[str]:
        """Create the topology's channels this node serves that no node holds yet (a node
        joining a running mesh waits: they may hold them, and a hand-over brings them)."""
        made: list[str] = []
        for name, spec in self.topo.channels.items():
            if name not in self.channels and name not in self.serving.incoming and (
                    self.placement.owns(name) if wanted is None else wanted(name)):
                self.members.create(name, spec["members"], spec.get("lifetime"))
                made.append(name)
        return made

    def settle(self) -> list[str]:
        """The live change that added this node is over: serve as any node, seed what is new."""
        self.serving.joining = False
        made = self._seed()
        self.store.flush()
        return made

    # --- the turn's end: one commit path ---------------------------------------
    def assign(self, now: float) -> None:
        """Before the batch is written: queued sends get their ids, their rows are staged."""
        before = len(self.ids.committed)
        self.ids.assign(now)
        self.readstate.staged(self.ids.committed[before:])   # senders' cursors, in the same batch

    def take_committed(self) -> list[Pending]:
        """The sends staged in this turn's batch; whoever takes them passes them to ``commit``
        once they are stored (at once after the write, or with replication on a majority)."""
        return self.ids.take_committed()

    def commit(self, committed: Sequence[Pending]) -> None:
        """These sends are stored: ack, record dedup, fan out (one PUB frame per broker)."""
        self.sends.commit(committed)
        self.readstate.stored(committed)

    def abandon(self, recs: Iterable[Pending], why: str) -> None:
        """Sends taken for a commit that will not come (the node stopped leading their shard)."""
        self.sends.abandon(recs, why)

    def note_dedup_row(self, key: bytes, raw: bytes) -> None:
        """A ``d`` row written here by someone else (a hand-over, a replication record)."""
        self.dedup.note_row(key, raw)

    # --- live topology changes (nodes/logic/handoff.py) ------------------------------
    def adopt(self, topo: Topology) -> dict[str, str | None]:
        """Serve by a newer topology: channels it places elsewhere stop being served here
        (their waiting sends are answered UNAVAILABLE, never stored: the client retries with
        the same ctime at the new owner).  Returns {channel: new owner} of those held here."""
        self.serving.topo = topo
        self.serving.placement = StaticPlacement(topo, self.id)
        return self.leaving()

    def leaving(self) -> dict[str, str | None]:
        """{channel: its owner} of the channels held here that this node does not serve."""
        out: dict[str, str | None] = {}
        for name, ch in self.channels.items():
            if not self.placement.owns(name):
                out[name] = self.placement.leader(name)
                if ch.waiting:
                    self.abandon(self.ids.withdraw(ch), f"channel {name!r} is moving to another logic node; retry")
        return out

    def begin_take(self, names: Collection[str]) -> None:
        """A hand-over brings these channels: forget what is held of them, serve none of them
        (requests: UNAVAILABLE), and let no restart load them, until ``end_take``."""
        self.serving.incoming.update(names)
        for name in names:
            self.store.put(keys.taking_key(name), b"")
        self.forget(names)

    def end_take(self, names: Collection[str]) -> None:
        """The hand-over of these channels is complete: load them and serve them."""
        for name in names:
            self.store.delete(keys.taking_key(name))
        self.store.flush()                 # load reads the store, not the staged batch
        self.forget(names)
        self.serving.incoming.difference_update(names)
        self.load(set(names).__contains__)
        self.retention.rewind_sent()       # moved ``x`` rows may sort before where pruning was

    def forget(self, names: Iterable[str]) -> None:
        """Drop these channels from memory (handed over, or about to be replaced by a copy)."""
        for name in names:
            ch = self.channels.get(name)
            if ch is not None:
                self.drop([name], f"channel {name!r} moved; retry")
                members, ch.members = ch.members, set()
                self.fanout.index(ch, members)

    def drop(self, names: Iterable[str], why: str) -> None:
        """Stop serving these channels (their shard moved): forget their state, fail their queues."""
        for name in names:
            ch = self.channels.pop(name, None)
            self.readstate.forget(name)
            self.members.meta.pop(name, None)
            if ch is not None:
                self.abandon(self.ids.withdraw(ch), why)
