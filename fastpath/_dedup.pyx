# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""DedupTable: (uin, device) -> (last client time, last msg id), open addressing.

Robin Hood hashing with backward-shift deletion (no tombstones), a
capacity that need not be a power of two (slot = high half of hash * cap),
a maximum load of 0.92 and growth by 1.2, so the table stays between
about 26 and 32 bytes per entry at any size.  Each slot is 24 bytes: the
key (uin << 32 | device), the client time, and the msg id shifted left by
8 with the probe distance + 1 in the low byte (0 = empty); msg ids are
therefore limited to 2**56 - 1, which is checked.
"""
from cpython.array cimport array, clone
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free

from fastpath._common cimport to_u32, to_u64

cdef extern from *:
    ctypedef unsigned long long u128 "unsigned __int128"

NEW = -1
STALE = -2
MAX_MSG_ID = (1 << 56) - 1

cdef int64_t C_NEW = -1
cdef int64_t C_STALE = -2
cdef uint64_t C_MAX_ID = (1ULL << 56) - 1
cdef uint64_t MAX_DIST = 255
cdef array INT64_TEMPLATE = array("q")


cdef struct Slot:
    uint64_t key
    uint64_t ctime
    uint64_t iddist


cdef inline uint64_t mix(uint64_t x) nogil:
    x ^= x >> 30
    x *= 0xbf58476d1ce4e5b9ULL
    x ^= x >> 27
    x *= 0x94d049bb133111ebULL
    x ^= x >> 31
    return x


cdef class DedupTable:
    """Answers NEW, RETRY (the stored msg id) or STALE for (uin, device, client time).

    ``check`` returns the stored msg id (>= 0) for a retry, ``NEW`` (-1) for a
    later client time or an unknown key, ``STALE`` (-2) for an earlier one.
    """
    cdef Slot* slots
    cdef size_t cap
    cdef size_t count
    cdef size_t limit
    cdef double max_load

    def __cinit__(self, size_t capacity=64, double max_load=0.92):
        self.slots = NULL
        if not 0.5 <= max_load <= 0.95:
            raise ValueError("max_load must be within 0.5..0.95")
        if capacity < 8:
            capacity = 8
        self.max_load = max_load
        self._alloc(capacity)

    def __dealloc__(self):
        free(self.slots)

    cdef int _alloc(self, size_t capacity) except -1:
        """Switch to a new empty slot array; on MemoryError the table is unchanged."""
        cdef Slot* slots = <Slot*>calloc(capacity, sizeof(Slot))
        if slots == NULL:
            raise MemoryError()
        self.slots = slots
        self.cap = capacity
        self.count = 0
        self.limit = <size_t>(capacity * self.max_load)
        return 0

    cdef inline size_t _home(self, uint64_t key) nogil:
        return <size_t>((<u128>mix(key) * self.cap) >> 64)

    cdef Py_ssize_t _find(self, uint64_t key) nogil:
        cdef size_t pos = self._home(key)
        cdef uint64_t dist = 1
        cdef Slot* s
        while True:
            s = &self.slots[pos]
            if (s.iddist & 0xFF) < dist:
                return -1
            if s.key == key:
                return <Py_ssize_t>pos
            pos += 1
            if pos == self.cap:
                pos = 0
            dist += 1

    cdef int _insert_new(self, uint64_t key, uint64_t ctime, uint64_t msg_id) except -1:
        """Place a key known to be absent (grows first if the table is full)."""
        cdef Slot cur, tmp
        cdef size_t pos
        cdef uint64_t dist = 1
        if self.count + 1 > self.limit:
            self._grow()
        cur.key, cur.ctime, cur.iddist = key, ctime, msg_id << 8
        pos = self._home(key)
        while True:
            if (self.slots[pos].iddist & 0xFF) == 0:
                cur.iddist = (cur.iddist & ~<uint64_t>0xFF) | dist
                self.slots[pos] = cur
                self.count += 1
                return 0
            if (self.slots[pos].iddist & 0xFF) < dist:     # rob the richer slot
                cur.iddist = (cur.iddist & ~<uint64_t>0xFF) | dist
                tmp = self.slots[pos]
                self.slots[pos] = cur
                cur = tmp
                dist = cur.iddist & 0xFF
            pos += 1
            if pos == self.cap:
                pos = 0
            dist += 1
            if dist >= MAX_DIST:                        # pathological cluster: grow and re-place
                self._grow()
                return self._insert_new(cur.key, cur.ctime, cur.iddist >> 8)

    cdef int _grow(self) except -1:
        cdef Slot* old = self.slots
        cdef size_t old_cap = self.cap, i
        self._alloc(old_cap + old_cap // 5 + 8)
        for i in range(old_cap):
            if old[i].iddist & 0xFF:
                self._insert_new(old[i].key, old[i].ctime, old[i].iddist >> 8)
        free(old)
        return 0

    cdef void _delete_at(self, size_t pos) nogil:
        cdef size_t nxt
        while True:
            nxt = pos + 1
            if nxt == self.cap:
                nxt = 0
            if (self.slots[nxt].iddist & 0xFF) <= 1:
                self.slots[pos].iddist = 0
                self.slots[pos].key = 0
                self.slots[pos].ctime = 0
                break
            self.slots[pos] = self.slots[nxt]
            self.slots[pos].iddist -= 1
            pos = nxt
        self.count -= 1

    cdef inline int64_t _check(self, uint64_t key, uint64_t ctime) nogil:
        cdef Py_ssize_t pos = self._find(key)
        cdef Slot* s
        if pos < 0:
            return C_NEW
        s = &self.slots[pos]
        if ctime > s.ctime:
            return C_NEW
        if ctime == s.ctime:
            return <int64_t>(s.iddist >> 8)
        return C_STALE

    cdef int _commit(self, uint64_t key, uint64_t ctime, uint64_t msg_id) except -1:
        cdef Py_ssize_t pos
        cdef Slot* s
        if msg_id > C_MAX_ID:
            raise ValueError(f"msg_id must be <= {C_MAX_ID}, got {msg_id}")
        pos = self._find(key)
        if pos < 0:
            return self._insert_new(key, ctime, msg_id)
        s = &self.slots[pos]
        if ctime < s.ctime or (ctime == s.ctime and (s.iddist >> 8) != msg_id):
            raise ValueError(f"client time {ctime} is not after the recorded {s.ctime} "
                             f"(msg {s.iddist >> 8})")
        s.ctime = ctime
        s.iddist = (msg_id << 8) | (s.iddist & 0xFF)
        return 0

    # --- single calls ---------------------------------------------------------
    def check(self, uin, device, ctime):
        """Stored msg id if this is a retry, NEW (-1) or STALE (-2)."""
        cdef uint64_t key = (<uint64_t>to_u32(uin, "uin") << 32) | to_u32(device, "device")
        return self._check(key, to_u64(ctime, 0xFFFFFFFFFFFFFFFF, "client_time"))

    def commit(self, uin, device, ctime, msg_id):
        """Record that (uin, device) sent ``ctime`` and it was stored as ``msg_id``."""
        cdef uint64_t key = (<uint64_t>to_u32(uin, "uin") << 32) | to_u32(device, "device")
        self._commit(key, to_u64(ctime, 0xFFFFFFFFFFFFFFFF, "client_time"),
                     to_u64(msg_id, C_MAX_ID, "msg_id"))

    def get(self, uin, device):
        """(client time, msg id) recorded for the key, or None."""
        cdef uint64_t key = (<uint64_t>to_u32(uin, "uin") << 32) | to_u32(device, "device")
        cdef Py_ssize_t pos = self._find(key)
        if pos < 0:
            return None
        return (self.slots[pos].ctime, self.slots[pos].iddist >> 8)

    def remove(self, uin, device):
        """Forget the key; True if it was there."""
        cdef uint64_t key = (<uint64_t>to_u32(uin, "uin") << 32) | to_u32(device, "device")
        cdef Py_ssize_t pos = self._find(key)
        if pos < 0:
            return False
        self._delete_at(<size_t>pos)
        return True

    # --- batches ----------------------------------------------------------------
    def check_batch(self, const uint32_t[::1] uins, const uint32_t[::1] devices,
                    const uint64_t[::1] ctimes):
        """check() for many keys at once (array('I'), array('I'), array('Q')) -> array('q')."""
        cdef Py_ssize_t n = uins.shape[0], i
        if devices.shape[0] != n or ctimes.shape[0] != n:
            raise ValueError("uins, devices and ctimes must have the same length")
        cdef array out = clone(INT64_TEMPLATE, n, False)
        cdef int64_t* res = <int64_t*>out.data.as_longlongs
        for i in range(n):              # no `with nogil:` here: it made this loop many times slower
            res[i] = self._check((<uint64_t>uins[i] << 32) | devices[i], ctimes[i])
        return out

    def commit_batch(self, const uint32_t[::1] uins, const uint32_t[::1] devices,
                     const uint64_t[::1] ctimes, const uint64_t[::1] msg_ids):
        """commit() for many keys; stops at the first bad entry with ValueError."""
        cdef Py_ssize_t n = uins.shape[0], i
        if devices.shape[0] != n or ctimes.shape[0] != n or msg_ids.shape[0] != n:
            raise ValueError("uins, devices, ctimes and msg_ids must have the same length")
        for i in range(n):
            self._commit((<uint64_t>uins[i] << 32) | devices[i], ctimes[i], msg_ids[i])

    # --- introspection ----------------------------------------------------------
    def __len__(self):
        return self.count

    @property
    def capacity(self):
        return self.cap

    @property
    def nbytes(self):
        """Bytes held by the slot array."""
        return self.cap * sizeof(Slot)

    def items(self):
        """[(uin, device, client time, msg id), ...] in table order."""
        cdef size_t i
        out = []
        for i in range(self.cap):
            if self.slots[i].iddist & 0xFF:
                out.append((self.slots[i].key >> 32, self.slots[i].key & 0xFFFFFFFF,
                            self.slots[i].ctime, self.slots[i].iddist >> 8))
        return out

    def max_probe(self):
        """Longest probe distance in the table (a health figure for benchmarks)."""
        cdef size_t i
        cdef uint64_t m = 0
        for i in range(self.cap):
            if (self.slots[i].iddist & 0xFF) > m:
                m = self.slots[i].iddist & 0xFF
        return m
