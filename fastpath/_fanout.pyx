# cython: boundscheck=False, wraparound=False
"""The broker's delivery fan-out on libzmq directly: one loop turn's client-socket batches.

Why: a G1k broker spent about a third of its main thread in the per-recipient fan-out --
a list of routing ids per message, a dict entry per (socket, ident), a joined ``bytes``
frame per session and two pyzmq sends per session (docs/benchmarks.md).  Here the session
lookup, the per-session batch and the frame building run in C, and the frames leave through
``zmq_send``/``zmq_msg_send`` on the socket's raw handle (``Socket.underlying``).  One packed
message sent alone to many sessions is copied into one ``zmq_msg_t`` and shared with
``zmq_msg_copy`` (libzmq's reference-counted buffer), not copied per recipient.

Which libzmq: THE one pyzmq loaded -- a second libzmq instance must never see pyzmq's
sockets.  At import the library is found in the process's own mappings and opened with
``RTLD_NOLOAD`` (which refuses to load anything new), then its functions are looked up with
``dlsym``: nothing is linked at build time, so the editable install and the wheel build the
same way without pyzmq's headers or library path (docs/design-notes.md).

The pure-Python twin is the current path -- nodes/runtime/outbox.py's ``Outbox`` (batches,
joined frames, ROUTER_MANDATORY failures) and nodes/broker/core.py's ``recipients`` -- and
tests/test_fanout.py runs both over real sockets and compares what every peer receives.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy

import os

import zmq

cdef extern from "<dlfcn.h>":
    void *dlopen(const char *filename, int flags)
    void *dlsym(void *handle, const char *symbol)
    char *dlerror()
    int RTLD_NOW
    int RTLD_NOLOAD

cdef extern from *:
    """
    /* libzmq's zmq_msg_t (zmq.h, stable across 4.x): 64 opaque bytes, pointer-aligned */
    typedef struct { unsigned char _[64] __attribute__((aligned(sizeof(void *)))); } imesh_zmq_msg_t;
    """
    ctypedef struct imesh_zmq_msg_t:
        pass

ctypedef int (*msg_init_t)(imesh_zmq_msg_t *) noexcept nogil
ctypedef int (*msg_init_size_t)(imesh_zmq_msg_t *, size_t) noexcept nogil
ctypedef void *(*msg_data_t)(imesh_zmq_msg_t *) noexcept nogil
ctypedef int (*msg_copy_t)(imesh_zmq_msg_t *, imesh_zmq_msg_t *) noexcept nogil
ctypedef int (*msg_close_t)(imesh_zmq_msg_t *) noexcept nogil
ctypedef int (*msg_send_t)(imesh_zmq_msg_t *, void *, int) noexcept nogil
ctypedef int (*send_t)(void *, const void *, size_t, int) noexcept nogil
ctypedef int (*errno_t)() noexcept nogil
ctypedef void (*version_t)(int *, int *, int *) noexcept nogil

cdef msg_init_t zmq_msg_init
cdef msg_init_size_t zmq_msg_init_size
cdef msg_data_t zmq_msg_data
cdef msg_copy_t zmq_msg_copy
cdef msg_close_t zmq_msg_close
cdef msg_send_t zmq_msg_send
cdef send_t zmq_send
cdef errno_t zmq_errno

cdef int DONTWAIT = 1           # ZMQ_DONTWAIT
cdef int SNDMORE = 2            # ZMQ_SNDMORE
cdef int EAGAIN_ = zmq.EAGAIN
cdef int ENOTSOCK_ = zmq.ENOTSOCK


def loaded_libzmq() -> str:
    """The file of the libzmq this process has loaded (pyzmq's, imported above)."""
    paths = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.rstrip("\n").partition("/")[2]
            if path and os.path.basename(path).startswith("libzmq"):
                paths.add("/" + path)
    if len(paths) != 1:
        raise ImportError(f"expected exactly one loaded libzmq (pyzmq's), found {sorted(paths) or 'none'}")
    return paths.pop()


cdef void *symbol(void *lib, const char *name) except NULL:
    cdef void *f = dlsym(lib, name)
    if f == NULL:
        raise ImportError(f"libzmq has no {name.decode()}")
    return f


cdef _bind_libzmq():
    global zmq_msg_init, zmq_msg_init_size, zmq_msg_data, zmq_msg_copy, zmq_msg_close
    global zmq_msg_send, zmq_send, zmq_errno
    path = loaded_libzmq()
    cdef void *lib = dlopen(os.fsencode(path), RTLD_NOW | RTLD_NOLOAD)   # never a second instance
    if lib == NULL:
        raise ImportError(f"cannot reach pyzmq's libzmq {path}: {dlerror().decode()}")
    cdef int major = 0, minor = 0, patch = 0
    (<version_t>symbol(lib, b"zmq_version"))(&major, &minor, &patch)
    if (major, minor, patch) != zmq.zmq_version_info():
        raise ImportError(f"{path} is libzmq {major}.{minor}.{patch}, pyzmq runs {zmq.zmq_version()}")
    zmq_msg_init = <msg_init_t>symbol(lib, b"zmq_msg_init")
    zmq_msg_init_size = <msg_init_size_t>symbol(lib, b"zmq_msg_init_size")
    zmq_msg_data = <msg_data_t>symbol(lib, b"zmq_msg_data")
    zmq_msg_copy = <msg_copy_t>symbol(lib, b"zmq_msg_copy")
    zmq_msg_close = <msg_close_t>symbol(lib, b"zmq_msg_close")
    zmq_msg_send = <msg_send_t>symbol(lib, b"zmq_msg_send")
    zmq_send = <send_t>symbol(lib, b"zmq_send")
    zmq_errno = <errno_t>symbol(lib, b"zmq_errno")


_bind_libzmq()
LIBZMQ = loaded_libzmq()


cdef class Fanout:
    """One ROUTER socket's per-session batches for a loop turn, sent by ``flush``.

    ``put``/``put_many`` queue packed messages for routing ids, in order; ``deliver`` finds a
    message's recipient sessions itself.  ``flush`` sends each session one frame per run of
    at most ``max_batch`` messages and ``max_frame`` bytes (a msgpack array of the packed
    messages; a run of one is the message itself) and reports a refused send (zmq.Again: the
    peer's queue is full; EHOSTUNREACH: no such peer) to ``on_failed(sock, ident, exc)``,
    skipping the rest of that session's runs -- exactly what nodes/runtime/outbox.py does.
    Routing ids starting with ``web_prefix`` are handed to ``web_put(ident, packed)``.
    """
    cdef readonly object sock
    cdef void *handle
    cdef dict queued                       # ident -> [packed, ...]
    cdef Py_ssize_t budget                 # bytes of a joined frame's items
    cdef Py_ssize_t max_batch
    cdef bytes web_prefix
    cdef object web_put
    cdef imesh_zmq_msg_t *shared           # one zmq_msg_t per message sent alone this flush
    cdef Py_ssize_t shared_cap

    def __init__(self, sock, Py_ssize_t max_frame, Py_ssize_t max_batch, Py_ssize_t header,
                 bytes web_prefix=None, web_put=None):
        self.sock = sock
        self.handle = <void *><size_t>sock.underlying
        self.queued = {}
        self.budget = max_frame - header
        self.max_batch = max_batch
        self.web_prefix = web_prefix
        self.web_put = web_put

    def __dealloc__(self):
        free(self.shared)

    def __len__(self):
        return len(self.queued)

    def put(self, bytes ident, bytes packed):
        cdef object batch = self.queued.get(ident)
        if batch is None:
            self.queued[ident] = [packed]
        else:
            (<list>batch).append(packed)

    def put_many(self, idents, bytes packed):
        cdef dict queued = self.queued
        cdef object batch
        for ident in idents:
            batch = queued.get(ident)
            if batch is None:
                queued[ident] = [packed]
            else:
                (<list>batch).append(packed)

    def deliver(self, dict by_uin, to, sender_uin, sender_device, bytes packed):
        """Queue ``packed`` for every session of the uins in ``to`` (``by_uin``: uin -> {ident:
        session}), except the sender's own device; return how many sessions."""
        cdef dict queued = self.queued
        cdef object sessions, batch, session
        cdef Py_ssize_t n = 0
        cdef bytes prefix = self.web_prefix
        cdef Py_ssize_t plen = 0 if prefix is None else len(prefix)
        for uin in to:
            sessions = by_uin.get(uin)
            if not sessions:
                continue
            own = uin == sender_uin
            for ident, session in (<dict>sessions).items():
                if own and session.device == sender_device:
                    continue
                n += 1
                if plen and (<bytes>ident)[:plen] == prefix:
                    self.web_put(ident, packed)
                    continue
                batch = queued.get(ident)
                if batch is None:
                    queued[ident] = [packed]
                else:
                    (<list>batch).append(packed)
        return n

    def flush(self, on_failed):
        """Send what is queued; return (frames sent, whether a send failed)."""
        cdef dict queued = self.queued
        self.queued = {}
        cdef dict slots = {}                  # id(packed) -> index in self.shared
        cdef Py_ssize_t frames = 0, i, start, size, n, count
        cdef int err
        cdef bint failed = False, closed = self.sock.closed
        cdef list items
        try:
            for ident, batch in queued.items():
                items = <list>batch
                count = len(items)
                start, size, i = 0, 0, 0
                err = 0
                while i <= count:
                    n = PyBytes_GET_SIZE(<bytes>items[i]) if i < count else 0
                    if i == count or (i > start and (i - start == self.max_batch or size + n > self.budget)):
                        err = ENOTSOCK_ if closed else self._send_run(<bytes>ident, items, start, i, slots)
                        if err:
                            break
                        frames += 1
                        start, size = i, 0
                    size += n
                    i += 1
                if err:
                    failed = True
                    exc = zmq.Again(err) if err == EAGAIN_ else zmq.ZMQError(err)
                    on_failed(self.sock, ident, exc)
        finally:
            for i in range(len(slots)):
                zmq_msg_close(&self.shared[i])
        return frames, failed

    cdef int _send_run(self, bytes ident, list items, Py_ssize_t start, Py_ssize_t end, dict slots) except -1:
        """Send items[start:end] to ``ident`` as one frame; 0, or libzmq's errno."""
        cdef imesh_zmq_msg_t msg
        cdef Py_ssize_t n = end - start, total = 0, k
        cdef bytes packed
        cdef char *out
        if n == 1:
            if self._shared_copy(<bytes>items[start], slots, &msg) < 0:
                return zmq_errno()
        else:
            for k in range(start, end):
                total += PyBytes_GET_SIZE(<bytes>items[k])
            head = 1 if n < 16 else 3
            if zmq_msg_init_size(&msg, total + head) != 0:
                return zmq_errno()
            out = <char *>zmq_msg_data(&msg)
            if n < 16:
                out[0] = <char>(0x90 | n)
            else:
                out[0] = <char>0xdc
                out[1] = <char>(n >> 8)
                out[2] = <char>(n & 0xff)
            out += head
            for k in range(start, end):
                packed = <bytes>items[k]
                memcpy(out, PyBytes_AS_STRING(packed), PyBytes_GET_SIZE(packed))
                out += PyBytes_GET_SIZE(packed)
        if zmq_send(self.handle, PyBytes_AS_STRING(ident), PyBytes_GET_SIZE(ident), DONTWAIT | SNDMORE) < 0:
            err = zmq_errno()
            zmq_msg_close(&msg)
            return err
        if zmq_msg_send(&msg, self.handle, DONTWAIT) < 0:
            err = zmq_errno()
            zmq_msg_close(&msg)
            return err
        return 0

    cdef int _shared_copy(self, bytes packed, dict slots, imesh_zmq_msg_t *msg) except -2:
        """``msg`` = a reference to this flush's one zmq_msg_t holding ``packed`` (made on first
        use); -1 if libzmq refused."""
        key = id(packed)
        cdef object slot = slots.get(key)
        cdef Py_ssize_t index
        cdef imesh_zmq_msg_t *grown
        if slot is None:
            index = len(slots)
            if index == self.shared_cap:
                grown = <imesh_zmq_msg_t *>realloc(self.shared, (2 * index + 16) * sizeof(imesh_zmq_msg_t))
                if grown == NULL:
                    raise MemoryError()
                self.shared, self.shared_cap = grown, 2 * index + 16
            if zmq_msg_init_size(&self.shared[index], PyBytes_GET_SIZE(packed)) != 0:
                return -1
            memcpy(zmq_msg_data(&self.shared[index]), PyBytes_AS_STRING(packed), PyBytes_GET_SIZE(packed))
            slots[key] = index
        else:
            index = slot
        zmq_msg_init(msg)
        if zmq_msg_copy(msg, &self.shared[index]) != 0:
            zmq_msg_close(msg)
            return -1
        return 0
