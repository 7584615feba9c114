"""Which shard a stored row belongs to, and a shard's rows as a snapshot (docs/ha.md).

The logic store keeps one key space; a shard is the set of rows of its
channels.  Replication needs two things from the key layout:

- ``split``: a loop turn's staged writes, grouped by shard, to ship as
  records.  ``m``/``c``/``i``/``l`` rows name their channel in the key, an
  ``e`` put names it in its value, and the ``x`` and ``d`` puts that
  ``Ids.assign`` (nodes/logic/ids.py) stages right after a message's ``m``/``e`` puts belong
  to that message's shard.  Deletes of ``e``/``x``/``d`` rows (pruning of
  rows past their lifetime) stay local: every replica prunes by time itself.
- ``snapshot`` / ``install``: every row of a shard, to bring a wiped or
  diverged replica to the leader's state in one step.  ``d`` rows (a
  device's newest client time) are per device, not per shard: a snapshot
  carries all of them and a replica keeps the newer of two (``newer_dedup``),
  which keeps the dedup fast path safe (it may only ever over-estimate).
"""
from __future__ import annotations

from nodes.storage import store as keys

_CHANNEL_KEYED = frozenset(b"mcil")
_FOLLOWS_MESSAGE = frozenset(b"xd")


def channel_of_key(key: bytes) -> str | None:
    """The channel named in an ``m``/``c``/``i``/``l`` key, else None."""
    kind = key[0]
    if kind not in _CHANNEL_KEYED:
        return None
    if kind == ord("m"):
        return key[2:2 + key[1]].decode()
    return key[1:].decode()


def split(ops, shard_of) -> dict:
    """{shard: [[key, value or None], ...]} of the replicated writes among ``ops``, in order."""
    out: dict[int, list] = {}
    current = None
    for key, value in ops:
        kind = key[0]
        if kind in _CHANNEL_KEYED:
            current = shard_of(channel_of_key(key))
        elif kind == ord("e") and value is not None:
            current = shard_of(keys.sent_of_value(value)[0])
        elif not (kind in _FOLLOWS_MESSAGE and value is not None and current is not None):
            continue
        out.setdefault(current, []).append([key, value])
    return out


def newer_dedup(store, key: bytes, value: bytes) -> bool:
    """Is a ``d`` row's value newer (client time) than the stored one?"""
    raw = store.get(key)
    return raw is None or keys.decode(value)[0] > keys.decode(raw)[0]


def get_position(store, shard: int) -> tuple[int, int]:
    raw = store.get(keys.position_key(shard))
    return tuple(keys.decode(raw)) if raw is not None else (0, 0)


def put_position(store, shard: int, position) -> None:
    store.put(keys.position_key(shard), keys.encode(list(position)))


def _shard_rows(store, shard: int, shard_of):
    """(key, value) of every row of the shard but ``d`` rows."""
    return channel_rows(store, lambda name: shard_of(name) == shard)


def channel_rows(store, wanted, sends: bool = True, pause_every: int = 0):
    """(key, value) of every row of the channels ``wanted(name)`` accepts but ``d`` rows:
    members, newest id, leases, messages, and (``sends``) the ``e``/``x`` rows of their sends.

    The send rows are found by scanning every ``e`` and ``x`` row of the store (they are keyed
    by device, not channel); ``pause_every``: yield None after that many rows scanned there, so
    a caller reading in slices can stop between them instead of blocking its loop."""
    channels = []
    for key, raw in store.scan(b"c"):
        name = key[1:].decode()
        if wanted(name):
            channels.append(name)
            yield key, raw
    for name in channels:
        for key in (keys.last_id_key(name), keys.lease_key(name)):
            raw = store.get(key)
            if raw is not None:
                yield key, raw
        yield from store.scan(keys.channel_prefix(name))
    if not sends:
        return
    sent = set()
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


def snapshot(store, shard: int, shard_of) -> list:
    """Every row of a shard, plus every ``d`` row: [[key, value], ...]."""
    rows = [[k, v] for k, v in _shard_rows(store, shard, shard_of)]
    return rows + dedup_rows(store)


def dedup_rows(store) -> list:
    """Every ``d`` row (per device, not per channel): [[key, value], ...]."""
    return [[k, v] for k, v in store.scan(b"d")]


def pages(rows, page_bytes: int) -> list:
    """A snapshot cut into pages of about ``page_bytes`` (at least one page, maybe empty)."""
    out, page, size = [], [], 0
    for row in rows:
        page.append(row)
        size += len(row[0]) + len(row[1])
        if size >= page_bytes:
            out.append(page)
            page, size = [], 0
    if page or not out:
        out.append(page)
    return out


def clear(store, shard: int, shard_of) -> None:
    """Stage the deletion of the shard's rows (not the ``d`` rows) before a snapshot's pages;
    the position goes to (0, 0) until the last page is in."""
    for key, _raw in list(_shard_rows(store, shard, shard_of)):
        store.delete(key)
    put_position(store, shard, (0, 0))


def put_rows(store, rows) -> int:
    """Stage a snapshot page's rows (a ``d`` row only when newer); rows written."""
    n = 0
    for key, value in rows:
        if key[:1] == b"d" and not newer_dedup(store, key, value):
            continue
        store.put(key, value)
        n += 1
    return n


def install(store, shard: int, shard_of, rows, position) -> int:
    """Replace the shard's rows with a whole snapshot's (staged in the store's batch)."""
    clear(store, shard, shard_of)
    n = put_rows(store, rows)
    put_position(store, shard, position)
    return n
