"""Which shard a stored row belongs to, and a shard's rows as a snapshot (docs/ha.md).

The logic store keeps one key space; a shard is the set of rows of its
channels.  Replication needs two things from the key layout:

- ``split``: a loop turn's staged writes, grouped by shard, to ship as
  records.  ``m``/``c``/``i``/``l``/``u``/``p``/``q`` rows name their channel in the key, an
  ``e`` put names it in its value, and the ``x`` and ``d`` puts that
  ``Ids.assign`` (nodes/logic/ids.py) stages right after a message's ``m``/``e`` puts belong
  to that message's shard.  Deletes of ``e``/``x``/``d`` rows (pruning of
  rows past their lifetime) stay local: every replica prunes by time itself.
- ``snapshot`` / ``install``: every row of a shard, to bring a wiped or
  diverged replica to the leader's state.  ``d`` rows (a device's newest
  client time) are per device, not per shard: a snapshot carries all of
  them and a replica keeps the newer of two (``newer_dedup``), which keeps
  the dedup fast path safe (it may only ever over-estimate).
- Reading and clearing a big shard a slice at a time (``Pinned``, ``Pager``,
  ``Clearing``), so neither the sender's nor the receiver's loop stalls
  (nodes/logic/snapshots.py streams a snapshot across loop turns; the live
  reshard's nodes/logic/handoff.py pages its channels the same way).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal, Protocol, cast, overload

from rocksdict import ReadOptions

from nodes.storage import store as keys

PAUSE_EVERY = 512              # rows scanned past (other shards' send rows) between looks at the clock

_CHANNEL_KEYED = frozenset(b"mcilupq")
_LENGTH_PREFIXED = frozenset(b"mupq")     # kind + len(channel):u8 + channel + a suffix (message id, uin)
_FOLLOWS_MESSAGE = frozenset(b"xd")

ShardOf = Callable[[str], int]          # a channel's shard (Topology.shard_of)
Row = tuple[bytes, bytes]               # (key, value) as read
Page = Iterable[Sequence[bytes]]        # [[key, value], ...] as shipped in a snapshot page


class Rows(Protocol):
    """What the readers need: a Store, or a ``Pinned`` view of one."""

    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[Row]: ...


def channel_of_key(key: bytes) -> str | None:
    """The channel named in an ``m``/``c``/``i``/``l``/``u``/``p``/``q`` key, else None."""
    kind = key[0]
    if kind not in _CHANNEL_KEYED:
        return None
    if kind in _LENGTH_PREFIXED:
        return key[2:2 + key[1]].decode()
    return key[1:].decode()


def split(ops: Iterable[tuple[bytes, bytes | None]], shard_of: ShardOf) -> dict[int, list[list[bytes | None]]]:
    """{shard: [[key, value or None], ...]} of the replicated writes among ``ops``, in order."""
    out: dict[int, list[list[bytes | None]]] = {}
    current = None
    for key, value in ops:
        kind = key[0]
        if kind in _CHANNEL_KEYED:
            current = shard_of(channel_of_key(key))   # type: ignore[arg-type]  # a channel-keyed row names one
        elif kind == ord("e") and value is not None:
            current = shard_of(keys.sent_of_value(value)[0])
        elif not (kind in _FOLLOWS_MESSAGE and value is not None and current is not None):
            continue
        out.setdefault(current, []).append([key, value])
    return out


def newer_dedup(store: Rows, key: bytes, value: bytes) -> bool:
    """Is a ``d`` row's value newer (client time) than the stored one?"""
    raw = store.get(key)
    return raw is None or keys.decode(value)[0] > keys.decode(raw)[0]


def get_position(store: Rows, shard: int) -> tuple[int, int]:
    raw = store.get(keys.position_key(shard))
    return cast("tuple[int, int]", tuple(keys.decode(raw))) if raw is not None else (0, 0)   # put_position's pair


def put_position(store: keys.Store, shard: int, position: Sequence[int]) -> None:
    store.put(keys.position_key(shard), keys.encode(list(position)))


@overload
def channel_rows(store: Rows, wanted: Callable[[str], bool], sends: bool = ...,
                 pause_every: Literal[0] = ...) -> Iterator[Row]: ...
@overload
def channel_rows(store: Rows, wanted: Callable[[str], bool], sends: bool = ...,
                 pause_every: int = ...) -> Iterator[Row | None]: ...
def channel_rows(store: Rows, wanted: Callable[[str], bool], sends: bool = True,
                 pause_every: int = 0) -> Iterator[Row | None]:
    """(key, value) of every row of the channels ``wanted(name)`` accepts but ``d`` rows:
    members (and kinds, roles), newest id, leases, read cursors, messages, pending offline
    pushes and mutes (``p``/``q``: nodes/logic/pushes.py), and (``sends``) the ``e``/``x`` rows of their sends.

    The send rows are found by scanning every ``e`` and ``x`` row of the store (they are keyed
    by device, not channel); ``pause_every``: yield None after that many rows scanned there, so
    a caller reading in slices can stop between them instead of blocking its loop."""
    channels: list[str] = []
    for key, raw in store.scan(b"c"):
        name = key[1:].decode()
        if wanted(name):
            channels.append(name)
            yield key, raw
    for name in channels:
        for key in (keys.last_id_key(name), keys.lease_key(name)):
            found = store.get(key)
            if found is not None:
                yield key, found
        yield from store.scan(keys.cursor_prefix(name))
        yield from store.scan(keys.channel_prefix(name))
        yield from store.scan(keys.push_prefix(name))
        yield from store.scan(keys.mute_prefix(name))
    if not sends:
        return
    sent: set[bytes] = set()
    for n, (key, raw) in enumerate(store.scan(b"e"), 1):
        if wanted(keys.sent_of_value(raw)[0]):
            sent.add(key)
            yield key, raw
        elif pause_every and n % pause_every == 0:
            yield None
    for n, (key, raw) in enumerate(store.scan(b"x"), 1):
        if keys.sent_of_expiry_key(key)[1] in sent:
            yield key, raw
        elif pause_every and n % pause_every == 0:
            yield None


def dedup_rows(store: Rows) -> list[list[bytes]]:
    """Every ``d`` row (per device, not per channel): [[key, value], ...] (an offline reshard
    copies them all to a channel's new owner: nodes/ops/reshard.py)."""
    return [[k, v] for k, v in store.scan(b"d")]


@overload
def snapshot_rows(store: Rows, shard: int, shard_of: ShardOf, pause_every: Literal[0] = ...) -> Iterator[Row]: ...
@overload
def snapshot_rows(store: Rows, shard: int, shard_of: ShardOf, pause_every: int = ...) -> Iterator[Row | None]: ...
def snapshot_rows(store: Rows, shard: int, shard_of: ShardOf, pause_every: int = 0) -> Iterator[Row | None]:
    """(key, value) of every row of a shard, then every ``d`` row; None between rows where a
    reader may stop (``pause_every``, as in ``channel_rows``).  Give it a ``Pinned`` view to
    read a store that is written meanwhile."""
    yield from channel_rows(store, lambda name: shard_of(name) == shard, pause_every=pause_every)
    yield from store.scan(b"d")


def snapshot(store: Rows, shard: int, shard_of: ShardOf) -> list[list[bytes]]:
    """Every row of a shard, plus every ``d`` row: [[key, value], ...] (all at once)."""
    return [[k, v] for k, v in snapshot_rows(store, shard, shard_of)]


class Pinned:
    """The store's rows as they are at construction, read for as long as it takes (a snapshot
    streamed across loop turns while the node writes on).

    A RocksDB iterator reads the database as of its creation (an implicit snapshot: later
    writes, flushes and compactions do not show), and ``seek`` keeps that view; so one
    iterator serves every scan, another every get, both made at the same moment.  Not a
    rocksdict ``Snapshot``: in 0.3.29 its ``iter``/``items`` ignore the snapshot
    (docs/ha.md).  Scans must not overlap (``channel_rows`` runs them one after another)."""

    def __init__(self, store: keys.Store) -> None:
        self._scan_it = store.db.iter(ReadOptions())
        self._get_it = store.db.iter(ReadOptions())
        self._scanning = False

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[Row]:
        if self._scanning:
            raise RuntimeError("Pinned: a scan started while another is unfinished")
        self._scanning = True
        try:
            yield from keys.scan_iterator(self._scan_it, prefix, start)
        finally:
            self._scanning = False

    def get(self, key: bytes) -> bytes | None:
        it = self._get_it
        it.seek(key)
        return it.value() if it.valid() and it.key() == key else None


class Pager:
    """Rows (and None: a place to stop, see ``channel_rows``) read page by page, each page
    bounded in bytes and in reading time, so a big store never blocks a loop turn for long.
    ``position``: rows handed out so far; ``done``: no row left."""

    def __init__(self, rows: Iterable[Row | None], clock: Callable[[], float] = time.monotonic) -> None:
        self._rows = iter(rows)
        self.clock = clock
        self.position, self.done = 0, False
        self._next: Row | None = None         # the row the next page starts with, once read

    def _advance(self, deadline: float = float("inf")) -> bool:
        """The next row into ``_next``; False if the time ran out first (scanning rows that are
        not wanted), to go on at the next page."""
        while True:
            row = next(self._rows, StopIteration)
            if row is StopIteration:
                self._next, self.done = None, True
                return True
            if row is not None:
                self._next = row                # type: ignore[assignment]  # not the StopIteration sentinel
                return True
            if self.clock() > deadline:
                self._next = None
                return False

    def skip(self, n: int) -> None:
        if self._next is None and not self.done:
            self._advance()
        while n > self.position and not self.done:
            self.position += 1
            self._advance()

    def page(self, page_bytes: int, seconds: float) -> list[list[bytes]]:
        """Rows up to ``page_bytes``, read for about ``seconds`` at most (a page may be short,
        or empty and not the last)."""
        deadline = self.clock() + seconds
        if self._next is None and not self.done and not self._advance(deadline):
            return []
        rows: list[list[bytes]] = []
        size = 0
        while not self.done and size < page_bytes:
            key, value = self._next                 # type: ignore[misc]  # not done: _advance set a row
            rows.append([key, value])
            size += len(key) + len(value)
            self.position += 1
            if not self._advance(deadline) or self.clock() > deadline:
                break
        return rows


class Clearing:
    """The deletion of a shard's rows (not the ``d`` rows) on a replica installing a snapshot,
    staged a slice at a time while the snapshot's pages come in.

    A row a page wrote meanwhile (``keep``) is never deleted: the page's value is the
    snapshot's.  Rows are found in the live store (each scan sees what was flushed before it
    started), so a kept row may show up; anything else of the shard that was there goes."""

    def __init__(self, store: keys.Store, shard: int, shard_of: ShardOf,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.clock = store, clock
        self.kept: set[bytes] = set()
        self.done = False
        self.deleted = 0
        self._rows = channel_rows(store, lambda name: shard_of(name) == shard, pause_every=PAUSE_EVERY)

    def keep(self, rows: Page) -> None:
        if not self.done:
            self.kept.update(key for key, _value in rows)

    def run(self, seconds: float) -> bool:
        """Stage deletions for about ``seconds``; True once every old row is deleted."""
        deadline = self.clock() + seconds
        while not self.done:
            try:
                row = next(self._rows)
            except StopIteration:
                self.done, self.kept = True, set()
                break
            if row is not None and row[0] not in self.kept:
                self.store.delete(row[0])
                self.deleted += 1
            if self.clock() > deadline:
                break
        return self.done


def clear(store: keys.Store, shard: int, shard_of: ShardOf) -> None:
    """Stage the deletion of the shard's rows (not the ``d`` rows) before a snapshot's pages;
    the position goes to (0, 0) until the last page is in."""
    Clearing(store, shard, shard_of).run(float("inf"))
    put_position(store, shard, (0, 0))


def put_rows(store: keys.Store, rows: Page) -> int:
    """Stage a snapshot page's rows (a ``d`` row only when newer); rows written."""
    n = 0
    for key, value in rows:
        if key[:1] == b"d" and not newer_dedup(store, key, value):
            continue
        store.put(key, value)
        n += 1
    return n


def install(store: keys.Store, shard: int, shard_of: ShardOf, rows: Page, position: Sequence[int]) -> int:
    """Replace the shard's rows with a whole snapshot's (staged in the store's batch)."""
    clear(store, shard, shard_of)
    n = put_rows(store, rows)
    put_position(store, shard, position)
    return n
