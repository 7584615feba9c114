"""Pure-Python twins of the fast-path structures: same API, same answers, same errors.

They are the reference model of the property tests (every answer of the
compiled structure is compared with its twin's) and the baseline of the
benchmarks.  The nodes never use them.
"""
from __future__ import annotations

import bisect
from array import array

NEW = -1
STALE = -2
MAX_MSG_ID = (1 << 56) - 1
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1


def to_uint(value, maxv: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= maxv:
        raise ValueError(f"{name} must be in 0..{maxv}, got {value}")
    return value


def _check_buffer(buf, typecode: str, name: str):
    if not isinstance(buf, array) or buf.typecode != typecode:
        raise ValueError(f"{name} must be array('{typecode}')")
    return buf


class DedupTable:
    def __init__(self, capacity: int = 64, max_load: float = 0.92):
        if not 0.5 <= max_load <= 0.95:
            raise ValueError("max_load must be within 0.5..0.95")
        self._d: dict[int, tuple[int, int]] = {}

    def _key(self, uin, device):
        return (to_uint(uin, U32_MAX, "uin"), to_uint(device, U32_MAX, "device"))

    def check(self, uin, device, ctime) -> int:
        key = self._key(uin, device)
        ctime = to_uint(ctime, U64_MAX, "client_time")
        entry = self._d.get(key)
        if entry is None or ctime > entry[0]:
            return NEW
        return entry[1] if ctime == entry[0] else STALE

    def commit(self, uin, device, ctime, msg_id) -> None:
        key = self._key(uin, device)
        ctime = to_uint(ctime, U64_MAX, "client_time")
        msg_id = to_uint(msg_id, MAX_MSG_ID, "msg_id")
        entry = self._d.get(key)
        if entry is not None and (ctime < entry[0] or (ctime == entry[0] and msg_id != entry[1])):
            raise ValueError(f"client time {ctime} is not after the recorded {entry[0]}")
        self._d[key] = (ctime, msg_id)

    def get(self, uin, device):
        return self._d.get(self._key(uin, device))

    def remove(self, uin, device) -> bool:
        return self._d.pop(self._key(uin, device), None) is not None

    def check_batch(self, uins, devices, ctimes):
        for buf, code, name in ((uins, "I", "uins"), (devices, "I", "devices"), (ctimes, "Q", "ctimes")):
            _check_buffer(buf, code, name)
        if not len(uins) == len(devices) == len(ctimes):
            raise ValueError("uins, devices and ctimes must have the same length")
        return array("q", (self.check(u, d, c) for u, d, c in zip(uins, devices, ctimes)))

    def commit_batch(self, uins, devices, ctimes, msg_ids):
        for buf, code, name in ((uins, "I", "uins"), (devices, "I", "devices"), (ctimes, "Q", "ctimes"),
                                (msg_ids, "Q", "msg_ids")):
            _check_buffer(buf, code, name)
        if not len(uins) == len(devices) == len(ctimes) == len(msg_ids):
            raise ValueError("uins, devices, ctimes and msg_ids must have the same length")
        for u, d, c, m in zip(uins, devices, ctimes, msg_ids):
            self.commit(u, d, c, m)

    def __len__(self):
        return len(self._d)

    def items(self):
        return [(u, d, c, m) for (u, d), (c, m) in self._d.items()]


class OnlineBitmap:
    def __init__(self):
        self._s = set()

    def set(self, uin) -> bool:
        uin = to_uint(uin, U32_MAX, "uin")
        if uin in self._s:
            return False
        self._s.add(uin)
        return True

    def clear(self, uin) -> bool:
        uin = to_uint(uin, U32_MAX, "uin")
        if uin not in self._s:
            return False
        self._s.discard(uin)
        return True

    def test(self, uin) -> bool:
        return to_uint(uin, U32_MAX, "uin") in self._s

    __contains__ = test

    def count(self) -> int:
        return len(self._s)

    def __len__(self):
        return len(self._s)

    def set_batch(self, uins) -> int:
        return sum(self.set(u) for u in _check_buffer(uins, "I", "uins"))

    def filter_online(self, uins):
        s = self._s
        return array("I", [u for u in _check_buffer(uins, "I", "uins") if u in s])

    def to_array(self):
        return array("I", sorted(self._s))

    def __iter__(self):
        return iter(self.to_array())

    def clear_all(self):
        self._s.clear()


class IdRing:
    def __init__(self, capacity):
        capacity = to_uint(capacity, 1 << 40, "capacity")
        if capacity == 0:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._ids = []

    def push(self, msg_id):
        msg_id = to_uint(msg_id, U64_MAX, "msg_id")
        if self._ids and msg_id <= self._ids[-1]:
            raise ValueError(f"msg_id {msg_id} is not greater than the last id {self._ids[-1]}")
        self._ids.append(msg_id)
        if len(self._ids) > self.capacity:
            return self._ids.pop(0)
        return None

    def since(self, msg_id):
        msg_id = to_uint(msg_id, U64_MAX, "msg_id")
        return array("Q", self._ids[bisect.bisect_right(self._ids, msg_id):])

    def to_array(self):
        return array("Q", self._ids)

    def drop_through(self, msg_id) -> int:
        msg_id = to_uint(msg_id, U64_MAX, "msg_id")
        k = bisect.bisect_right(self._ids, msg_id)
        del self._ids[:k]
        return k

    @property
    def first(self):
        return self._ids[0] if self._ids else None

    @property
    def last(self):
        return self._ids[-1] if self._ids else None

    def __len__(self):
        return len(self._ids)

    def __iter__(self):
        return iter(list(self._ids))
