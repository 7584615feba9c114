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
- ``c`` + channel                                -> msgpack {"members": [uin, ...]}    (logic)
- ``l`` + channel                                -> msgpack [[start, end], ...] (leased id blocks, logic)
- ``h`` + channel                                -> end:u64 (counter high-water mark)
- ``b`` + channel                                -> start:u64 of the last block issued (counter)
- ``t`` + channel                                -> empty: a live reshard is taking the channel in
                                                   (logic, nodes/logic/handoff.py): not loaded until its last page
- ``r`` + shard:u32                              -> msgpack [epoch, seq]: the replication log position
                                                   a replica's shard state reflects (docs/ha.md)
- ``T``                                          -> msgpack [time s, monotonic s, boot id]: the node's
                                                   expiry clock (nodes/runtime/clock.py; logic, relay;
                                                   never replicated)

The length prefix keeps a prefix scan of one channel from running into
another whose name starts the same.
"""
from __future__ import annotations

import contextlib
import os
import struct
import zlib
import time

import msgspec
from rocksdict import (BlockBasedOptions, Options, Rdict, ReadOptions, WriteBatch,
                       WriteOptions)

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_U32x2 = struct.Struct(">II")
_SENT = struct.Struct(">IIQ")
_SENT_EXPIRY = struct.Struct(">QIIQ")


def channel_prefix(channel: str) -> bytes:
    raw = channel.encode()
    return b"m" + bytes((len(raw),)) + raw


def message_key(channel: str, msg_id: int) -> bytes:
    return channel_prefix(channel) + _U64.pack(msg_id)


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
    return _U32.unpack_from(raw, 8)[0]


def sent_expiry_key(expiry_ms: int, uin: int, device: int, ctime: int) -> bytes:
    return b"x" + _SENT_EXPIRY.pack(expiry_ms, uin, device, ctime)


def sent_of_expiry_key(key: bytes) -> tuple[int, bytes]:
    """(expiry ms, the ``e`` key it retires) of an ``x`` key."""
    expiry_ms, uin, device, ctime = _SENT_EXPIRY.unpack(key[1:])
    return expiry_ms, sent_key(uin, device, ctime)


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


def unpack_u64(raw: bytes) -> int:
    return _U64.unpack(raw)[0]


CLOCK_KEY = b"T"                           # the expiry clock's saved state (nodes/runtime/clock.py)

_encoder = msgspec.msgpack.Encoder()       # the same msgpack bytes as msgpack.packb, reused
_decoder = msgspec.msgpack.Decoder()


def encode(value) -> bytes:
    return _encoder.encode(value)


def decode(raw: bytes):
    return _decoder.decode(raw)


class Store:
    """One RocksDB per node data directory; writes of a loop turn go in one batch."""

    def __init__(self, path: str, sync: bool = False):
        os.makedirs(path, exist_ok=True)
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_keep_log_file_num(3)
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)
        opts.set_block_based_table_factory(table)
        self.path = path
        self.db = Rdict(path, opts)
        self._wo = WriteOptions()
        self._wo.sync = sync
        self._batch = WriteBatch(raw_mode=True)
        self._pending = 0
        self.writes = 0                 # batches written, their ops and seconds: read by metrics
        self.write_ops = 0
        self.write_seconds = 0.0
        self.capture = None        # a list: every staged (key, value or None) is also appended (replication)

    # --- reads ---------------------------------------------------------------
    def get(self, key: bytes):
        return self.db.get(key)

    def scan(self, prefix: bytes, start: bytes | None = None):
        """Yield (key, value) with ``key`` starting with prefix, from ``start`` on."""
        it = self.db.iter(ReadOptions())
        it.seek(start if start is not None else prefix)
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            yield key, it.value()
            it.next()

    def last_keys(self, prefix: bytes, limit: int) -> list[bytes]:
        """Up to ``limit`` greatest keys starting with prefix, in ascending order."""
        it = self.db.iter(ReadOptions())
        it.seek_for_prev(prefix + b"\xff" * 16)
        out = []
        while it.valid() and len(out) < limit and it.key().startswith(prefix):
            out.append(it.key())
            it.prev()
        out.reverse()
        return out

    # --- capture (replication ships a turn's writes: nodes/logic/replication.py) --------
    def start_capture(self) -> None:
        """From now on every staged put and delete is also recorded, for ``take_captured``."""
        if self.capture is None:
            self.capture = []

    def take_captured(self) -> list:
        """The (key, value or None) staged since the last call, in order."""
        ops, self.capture = self.capture, []
        return ops

    @contextlib.contextmanager
    def uncaptured(self):
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
        """Write the staged batch (one WAL append); return how many ops it held."""
        n = self._pending
        if n:
            started = time.perf_counter()
            self.db.write(self._batch, self._wo)
            self.write_seconds += time.perf_counter() - started
            self.writes += 1
            self.write_ops += n
            self._batch = WriteBatch(raw_mode=True)
            self._pending = 0
        return n

    def close(self) -> None:
        self.flush()
        self.db.close()
