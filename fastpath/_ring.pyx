# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""IdRing: the bounded queue of recent msg ids of one channel.

Ids are strictly increasing uint64; when the ring is full a push drops the
oldest id (returned to the caller, who may then forget that message).
``since(id)`` finds the first id greater than ``id`` by binary search and
copies out only what it returns, so its cost grows with the answer, not
with the ring.  The buffer grows by doubling up to the capacity, so a
quiet channel does not pay for a full ring (8 bytes per id once full).
"""
from cpython.array cimport array, clone
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc

from fastpath._common cimport to_u64

cdef array U64_TEMPLATE = array("Q")


cdef class IdRing:
    cdef uint64_t* buf
    cdef size_t alloc      # slots allocated (<= cap)
    cdef size_t cap        # most ids kept
    cdef size_t head       # index of the oldest id
    cdef size_t n

    def __cinit__(self, capacity):
        cdef uint64_t c = to_u64(capacity, 1 << 40, "capacity")
        if c == 0:
            raise ValueError("capacity must be >= 1")
        self.cap = c
        self.alloc = c if c < 16 else 16
        self.buf = <uint64_t*>malloc(self.alloc * sizeof(uint64_t))
        if self.buf == NULL:
            raise MemoryError()
        self.head = 0
        self.n = 0

    def __dealloc__(self):
        free(self.buf)

    cdef inline uint64_t _at(self, size_t i) nogil:
        cdef size_t j = self.head + i
        if j >= self.alloc:
            j -= self.alloc
        return self.buf[j]

    cdef int _grow(self) except -1:
        cdef size_t new_alloc = self.alloc * 2, i
        if new_alloc > self.cap:
            new_alloc = self.cap
        cdef uint64_t* nb = <uint64_t*>malloc(new_alloc * sizeof(uint64_t))
        if nb == NULL:
            raise MemoryError()
        for i in range(self.n):
            nb[i] = self._at(i)
        free(self.buf)
        self.buf = nb
        self.alloc = new_alloc
        self.head = 0
        return 0

    cdef size_t _first_after(self, uint64_t msg_id) nogil:
        """Logical index of the first id > msg_id (n if none)."""
        cdef size_t lo = 0, hi = self.n, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self._at(mid) <= msg_id:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def push(self, msg_id):
        """Append an id greater than the last; return the id that fell off the head, or None."""
        cdef uint64_t v = to_u64(msg_id, 0xFFFFFFFFFFFFFFFF, "msg_id")
        cdef uint64_t fell
        cdef size_t j
        if self.n and v <= self._at(self.n - 1):
            raise ValueError(f"msg_id {v} is not greater than the last id {self._at(self.n - 1)}")
        if self.n == self.cap:
            fell = self.buf[self.head]
            self.buf[self.head] = v
            self.head += 1
            if self.head == self.alloc:
                self.head = 0
            return fell
        if self.n == self.alloc:
            self._grow()
        j = self.head + self.n
        if j >= self.alloc:
            j -= self.alloc
        self.buf[j] = v
        self.n += 1
        return None

    cdef array _copy_from(self, size_t start):
        cdef array out = clone(U64_TEMPLATE, self.n - start, False)
        cdef uint64_t* res = <uint64_t*>out.data.as_ulonglongs
        cdef size_t i
        for i in range(start, self.n):
            res[i - start] = self._at(i)
        return out

    def since(self, msg_id):
        """array('Q') of the ids greater than ``msg_id``, oldest first."""
        cdef uint64_t v = to_u64(msg_id, 0xFFFFFFFFFFFFFFFF, "msg_id")
        return self._copy_from(self._first_after(v))

    def to_array(self):
        """Every id in the ring, oldest first."""
        return self._copy_from(0)

    def drop_through(self, msg_id):
        """Drop every id <= ``msg_id`` from the head (expired messages); return how many."""
        cdef uint64_t v = to_u64(msg_id, 0xFFFFFFFFFFFFFFFF, "msg_id")
        cdef size_t k = self._first_after(v)
        self.head = (self.head + k) % self.alloc
        self.n -= k
        if self.n == 0:
            self.head = 0
        return k

    @property
    def first(self):
        return self._at(0) if self.n else None

    @property
    def last(self):
        return self._at(self.n - 1) if self.n else None

    @property
    def capacity(self):
        return self.cap

    @property
    def nbytes(self):
        return self.alloc * sizeof(uint64_t)

    def __len__(self):
        return self.n

    def __iter__(self):
        return iter(self._copy_from(0))
