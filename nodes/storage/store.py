"""RocksDB storage of one node (rocksdict in raw mode) and its key layout.

Keys are big-endian binary so that iteration order is id order:

- ``m`` + len(channel):u8 + channel + msgid:u64  -> msgpack [uin, device, ctime, stime ms,
                                                   expiry s, text, frag or nil]
- ``d`` + uin:u32 + device:u32                   -> msgpack [ctime, channel, msgid, stime ms]
                                                   (newest send of a device: the dedup fast path, logic)
- ``e`` + uin:u32 + device:u32 + ctime:u64       -> msgid:u64 + crc32(text):u32 + channel (every send
                                                   stored within its lifetime: a retry's original id;
                                                   the crc tells a retry from a reused client time)
- ``x`` + expiry ms:u64 + uin + device + ctime   -> empty (when the ``e`` row goes, logic)
- ``i`` + channel                                -> newest id assigned:u64 (never goes back, logic)
- ``c`` + channel                                -> msgpack {"members": [uin, ...], "lifetime": s or nil,
                                                   and for user-made channels "kind", "title", "roles",
                                                   "made", "done" (nodes/logic/members.py)}   (logic)
- ``u`` + len(channel):u8 + channel + uin:u32    -> msgpack id: the uin's read cursor in the channel
                                                   (logic, nodes/logic/readstate.py)
- ``l`` + channel                                -> msgpack [[start, end], ...] (leased id blocks, logic)
- ``h`` + channel                                -> end:u64 (counter high-water mark)
- ``b`` + channel                                -> start:u64 of the last block issued (counter)
- ``t`` + channel                                -> empty: a live reshard is taking the channel in
                                                   (logic, nodes/logic/handoff.py): not loaded until its last page
- ``r`` + shard:u32                              -> msgpack [epoch, seq]: the replication log position
                                                   a replica's shard state reflects (docs/ha.md)
- ``p`` + len(channel):u8 + channel + msgid:u64  -> msgpack {"sender", "device", "stime", "preview",
                                                   "uins"}: an offline push not yet accepted by the
                                                   webhook (logic, nodes/logic/pushes.py; replicated
                                                   with the channel, deleted once delivered)
- ``q`` + len(channel):u8 + channel + uin:u32    -> msgpack until (s): the uin muted the channel's
                                                   offline pushes until then (logic, nodes/logic/pushes.py)
- ``T``                                          -> msgpack [time s, monotonic s, boot id]: the node's
                                                   expiry clock (nodes/runtime/clock.py; logic, relay;
                                                   never replicated)

The length prefix keeps a prefix scan of one channel from running into
another whose name starts the same.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import time
import zlib
from collections.abc import Iterator
from typing import Any

import msgspec
from rocksdict import AccessType, BlockBasedOptions, Options, Rdict, ReadOptions, WriteBatch, WriteOptions

log = logging.getLogger(__name__)

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_U32x2 = struct.Struct(">II")
_SENT = struct.Struct(">IIQ")
_SENT_EXPIRY = struct.Struct(">QIIQ")


def _named(kind: bytes, channel: str) -> bytes:
    """``kind`` + len(channel):u8 + channel: a prefix no other channel's keys start with."""
    raw = channel.encode()
    return kind + bytes((len(raw),)) + raw


def channel_prefix(channel: str) -> bytes:
    return _named(b"m", channel)


def message_key(channel: str, msg_id: int) -> bytes:
    return channel_prefix(channel) + _U64.pack(msg_id)


def push_prefix(channel: str) -> bytes:
    """The keys of a channel's pending offline pushes (``p``), length-prefixed like ``m``."""
    return _named(b"p", channel)


def push_key(channel: str, msg_id: int) -> bytes:
    return push_prefix(channel) + _U64.pack(msg_id)


def push_of_key(key: bytes) -> tuple[str, int]:
    """(channel, msg id) of a ``p`` key."""
    n = key[1]
    return key[2:2 + n].decode(), _U64.unpack_from(key, 2 + n)[0]


def mute_prefix(channel: str) -> bytes:
    """The keys of a channel's mutes (``q``), length-prefixed like ``m``."""
    return _named(b"q", channel)


def mute_key(channel: str, uin: int) -> bytes:
    return mute_prefix(channel) + _U32.pack(uin)


def mute_uin(key: bytes) -> int:
    """The uin of a ``q`` key."""
    uin: int = _U32.unpack_from(key, len(key) - 4)[0]
    return uin


def dedup_key(uin: int, device: int) -> bytes:
    return b"d" + _U32x2.pack(uin, device)


def sent_key(uin: int, device: int, ctime: int) -> bytes:
    return b"e" + _SENT.pack(uin, device, ctime)


def text_digest(text: str) -> int:
    return zlib.crc32(text.encode())


def sent_value(channel: str, msg_id: int, digest: int) -> bytes:
    return _U64.pack(msg_id) + _U32.pack(digest) + channel.encode()


def sent_of_value(raw: bytes) -> tuple[str, int]:
    """(channel, msg id) of an ``e`` row."""
    return raw[12:].decode(), _U64.unpack_from(raw)[0]


def sent_digest(raw: bytes) -> int:
    """The crc32 of the text an ``e`` row was written for."""
    digest: int = _U32.unpack_from(raw, 8)[0]
    return digest


def sent_expiry_key(expiry_ms: int, uin: int, device: int, ctime: int) -> bytes:
    return b"x" + _SENT_EXPIRY.pack(expiry_ms, uin, device, ctime)


def sent_of_expiry_key(key: bytes) -> tuple[int, bytes]:
    """(expiry ms, the ``e`` key it retires) of an ``x`` key."""
    expiry_ms, uin, device, ctime = _SENT_EXPIRY.unpack(key[1:])
    return expiry_ms, sent_key(uin, device, ctime)


def cursor_prefix(channel: str) -> bytes:
    """The read cursors of one channel (``u`` rows): prefix + uin:u32."""
    raw = channel.encode()
    return b"u" + bytes((len(raw),)) + raw


def cursor_key(channel: str, uin: int) -> bytes:
    return cursor_prefix(channel) + _U32.pack(uin)


def last_id_key(channel: str) -> bytes:
    return b"i" + channel.encode()


def channel_key(channel: str) -> bytes:
    return b"c" + channel.encode()


def lease_key(channel: str) -> bytes:
    return b"l" + channel.encode()


def taking_key(channel: str) -> bytes:
    return b"t" + channel.encode()


def highwater_key(channel: str) -> bytes:
    return b"h" + channel.encode()


def last_block_key(channel: str) -> bytes:
    return b"b" + channel.encode()


def position_key(shard: int) -> bytes:
    return b"r" + shard.to_bytes(4, "big")


def pack_u64(value: int) -> bytes:
    return _U64.pack(value)


def unpack_u32(raw: bytes) -> int:
    value: int = _U32.unpack(raw)[0]
    return value


def unpack_u64(raw: bytes) -> int:
    value: int = _U64.unpack(raw)[0]
    return value


CLOCK_KEY = b"T"                           # the expiry clock's saved state (nodes/runtime/clock.py)

_encoder = msgspec.msgpack.Encoder()       # the same msgpack bytes as msgpack.packb, reused
_decoder = msgspec.msgpack.Decoder()


def encode(value: Any) -> bytes:                  # any msgpack value
    return _encoder.encode(value)


def decode(raw: bytes) -> Any:
    return _decoder.decode(raw)


def scan_iterator(it: Any, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of a RocksDB iterator (the store's, or a pinned view's: nodes/storage/shards.py)
    from ``start`` (default: ``prefix``) while keys start with ``prefix``."""
    it.seek(start if start is not None else prefix)
    while it.valid():
        key: bytes = it.key()
        if not key.startswith(prefix):
            break
        yield key, it.value()
        it.next()


class StoreError(Exception):
    """A batch write failed: nothing of it is stored (RocksDB drops a WAL record it could not
    append).  ``StorageFull`` when the cause is a full disk (ENOSPC)."""


class StorageFull(StoreError):
    """The disk is full: the batch was not written; ``Store.reopen`` writes again once there is room."""


# free bytes a full store waits for before it opens read-write again: RocksDB writes a new
# MANIFEST, WAL, OPTIONS and info LOG when it opens, and a reopen that fills the disk again at
# once would only flap
RESUME_FREE = 4 * 1024 * 1024


def _failure(exc: Exception, what: str) -> StoreError:
    """The StoreError for a RocksDB exception (rocksdict raises a plain Exception with
    RocksDB's status text, e.g. "IO error: No space left on device: While appending ...")."""
    text = str(exc)
    full = "No space left on device" in text or getattr(exc, "errno", None) == errno.ENOSPC
    return (StorageFull if full else StoreError)(f"{what}: {text}")


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Store:
    """One RocksDB per node data directory; writes of a loop turn go in one batch.

    A write that fails (a full disk) raises StoreError and discards the batch: RocksDB
    then refuses every write until the DB is opened again (it keeps the error; there is no
    resume in rocksdict), so the store is ``failed`` (the reason) and every later ``flush``
    with something staged raises at once, until ``reopen`` succeeds.  Reads go on.  A store
    opened on a full disk (RocksDB cannot write its MANIFEST) is opened read-only and failed.
    """

    def __init__(self, path: str, sync: bool = False):
        os.makedirs(path, exist_ok=True)
        self.path = path
        self.failed: StoreError | None = None   # why writes fail now (None: they don't)
        self.write_failures = 0             # batches refused or failed: read by metrics
        self.db = self._open()
        self._wo = WriteOptions()
        self._wo.sync = sync
        self._batch = WriteBatch(raw_mode=True)
        self._pending = 0
        self.writes = 0                 # batches written, their ops and seconds: read by metrics
        self.write_ops = 0
        self.write_seconds = 0.0
        # a list: every staged (key, value or None) is also appended (replication)
        self.capture: list[tuple[bytes, bytes | None]] | None = None

    @staticmethod
    def _options() -> Options:
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_keep_log_file_num(3)
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)
        opts.set_block_based_table_factory(table)
        return opts

    def _open(self) -> Rdict:
        """Open read-write; on a full disk read-only (``failed`` says why), so reads are served."""
        try:
            db = Rdict(self.path, self._options())
        except Exception as exc:
            error = _failure(exc, f"cannot open {self.path} for writing")
            if not isinstance(error, StorageFull):
                raise error from exc
            try:
                db = Rdict(self.path, self._options(), access_type=AccessType.read_only())
            except Exception:              # nothing stored yet: nothing to serve either
                raise error from exc
            self.failed = error
            log.error("%s; opened read-only until there is room", error)
            return db
        self.failed = None
        return db

    @property
    def full(self) -> bool:
        """Writes fail because the disk is full."""
        return isinstance(self.failed, StorageFull)

    def reopen(self, free: int = RESUME_FREE) -> bool:
        """A failed store: open it again once ``free`` bytes are free; True when writable."""
        if self.failed is None:
            return True
        if free_bytes(self.path) < free:
            return False
        self._close_db()
        self.db = self._open()
        return self.failed is None

    # --- reads ---------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self.db.get(key)    # Rdict stores any value; this store only bytes
        return value

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Yield (key, value) with ``key`` starting with prefix, from ``start`` on."""
        yield from scan_iterator(self.db.iter(ReadOptions()), prefix, start)

    def last_keys(self, prefix: bytes, limit: int) -> list[bytes]:
        """Up to ``limit`` greatest keys starting with prefix, in ascending order."""
        it = self.db.iter(ReadOptions())
        it.seek_for_prev(prefix + b"\xff" * 16)
        out: list[bytes] = []
        while it.valid() and len(out) < limit and it.key().startswith(prefix):
            out.append(it.key())
            it.prev()
        out.reverse()
        return out

    def scan_back(self, prefix: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Yield (key, value) with ``key`` starting with prefix and below ``end``, greatest first
        (a page of history read backwards by key range: nodes/logic/history.py)."""
        it = self.db.iter(ReadOptions())
        it.seek_for_prev(end)
        if it.valid() and it.key() == end:
            it.prev()
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            yield key, it.value()
            it.prev()

    # --- capture (replication ships a turn's writes: nodes/logic/replication.py) --------
    def start_capture(self) -> None:
        """From now on every staged put and delete is also recorded, for ``take_captured``."""
        if self.capture is None:
            self.capture = []

    def take_captured(self) -> list[tuple[bytes, bytes | None]] | None:
        """The (key, value or None) staged since the last call, in order (None: no capture was on)."""
        ops, self.capture = self.capture, []
        return ops

    @contextlib.contextmanager
    def uncaptured(self) -> Iterator[None]:
        """Writes staged within are not recorded (rows applied from a leader are not re-shipped)."""
        capture, self.capture = self.capture, None
        try:
            yield
        finally:
            self.capture = capture

    # --- writes --------------------------------------------------------------
    def put(self, key: bytes, value: bytes) -> None:
        """Stage a write in the current batch (written by ``flush``)."""
        self._batch.put(key, value)
        self._pending += 1
        if self.capture is not None:
            self.capture.append((key, value))

    def delete(self, key: bytes) -> None:
        self._batch.delete(key)
        self._pending += 1
        if self.capture is not None:
            self.capture.append((key, None))

    def flush(self) -> int:
        """Write the staged batch (one WAL append); return how many ops it held.  Raises
        StoreError (StorageFull for a full disk) when it is not written: the batch is gone
        then (rocksdict consumes it even when the write fails), staged ops with it."""
        n = self._pending
        if not n:
            return 0
        batch, self._batch, self._pending = self._batch, WriteBatch(raw_mode=True), 0
        if self.failed is not None:
            self.write_failures += 1
            raise type(self.failed)(str(self.failed))
        started = time.perf_counter()
        try:
            self.db.write(batch, self._wo)
        except Exception as exc:
            error = _failure(exc, f"write of {n} ops to {self.path} failed")
            self.failed = error
            self.write_failures += 1
            raise error from exc
        self.write_seconds += time.perf_counter() - started
        self.writes += 1
        self.write_ops += n
        return n

    def _close_db(self) -> None:
        try:
            self.db.close()
        except Exception as exc:           # RocksDB flushes on close: a full disk refuses that;
            log.warning("closing %s: %s", self.path, exc)   # the WAL holds every write anyway

    def close(self) -> None:
        """Write what is staged and close; an error of that write is raised (after the DB is
        closed), never hidden behind a second one."""
        try:
            self.flush()
        finally:
            self._close_db()
