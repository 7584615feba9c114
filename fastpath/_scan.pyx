# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""A check of a msgpack frame's shape before it is decoded: nesting depth and container count.

msgspec's decoder (nodes/protocol/wire.py decodes frames between nodes with it) has no
limits of its own: it recurses once per nesting level (a frame nested ~1,000 deep raises
RecursionError) and builds whatever the frame describes (an 8 MiB frame of one-byte empty
arrays becomes 8 million lists, ~650 MB).  ``scan`` walks the frame's headers with an explicit
stack, allocating nothing, and refuses a frame that nests deeper than ``max_depth`` arrays and
maps, holds more than ``max_containers`` of them, is truncated, has trailing bytes, or uses the
never-used byte 0xc1.  Every element takes at least one byte, so a frame that passes decodes
to at most ``len(frame)`` elements.  Its cost is a few nanoseconds per msgpack object (string
and bin payloads are skipped, not read).
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t

cdef enum:
    STACK = 256                 # deepest max_depth accepted


cdef inline uint64_t _be(const unsigned char* p, int size) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(size):
        v = (v << 8) | p[i]
    return v


def scan(frame, int max_depth, Py_ssize_t max_containers):
    """The number of arrays and maps in ``frame`` (one msgpack object: bytes, or any contiguous
    buffer), or ValueError saying why it may not be decoded: nested deeper than ``max_depth``
    (a top-level map is depth 1), more than ``max_containers`` arrays and maps, truncated,
    trailing bytes, or byte 0xc1."""
    cdef const unsigned char[::1] view
    if type(frame) is bytes:                # what ZeroMQ hands us: no buffer to acquire
        return _scan(<const unsigned char*>PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame),
                     max_depth, max_containers)
    view = frame
    return _scan(&view[0] if view.shape[0] else NULL, view.shape[0], max_depth, max_containers)


cdef Py_ssize_t _scan(const unsigned char* p, Py_ssize_t n, int max_depth,
                      Py_ssize_t max_containers) except -1:
    cdef uint64_t left[STACK + 1]           # per open level, elements still to read
    cdef Py_ssize_t pos = 0, containers = 0
    cdef int depth = 0, head, size
    cdef unsigned char b
    cdef uint64_t skip, count
    if not 0 < max_depth <= STACK:
        raise ValueError(f"max_depth must be 1..{STACK}")
    left[0] = 1
    while True:
        while left[depth] == 0:
            if depth == 0:
                if pos != n:
                    raise ValueError(f"{n - pos} trailing bytes after the frame's object")
                return containers
            depth -= 1
        left[depth] -= 1
        if pos >= n:
            raise ValueError("truncated frame")
        b = p[pos]
        pos += 1
        skip = 0
        count = 0
        head = 0                            # 1: b opens a container of ``count`` elements
        if b <= 0x7f or b >= 0xe0 or b == 0xc0 or b == 0xc2 or b == 0xc3:
            continue                        # fixints, nil, bools
        elif b <= 0x8f:
            count, head = 2 * (b & 0x0f), 1
        elif b <= 0x9f:
            count, head = b & 0x0f, 1
        elif b <= 0xbf:
            skip = b & 0x1f
        elif b == 0xc1:
            raise ValueError("byte 0xc1 is never used in msgpack")
        else:
            # (length bytes, extra payload) per header: bin/str/ext carry a length, the rest fixed
            if b == 0xc4 or b == 0xd9:
                size = 1
            elif b == 0xc5 or b == 0xda:
                size = 2
            elif b == 0xc6 or b == 0xdb:
                size = 4
            elif b == 0xc7:
                size, skip = 1, 1
            elif b == 0xc8:
                size, skip = 2, 1
            elif b == 0xc9:
                size, skip = 4, 1
            elif b == 0xca:
                size, skip = 0, 4
            elif b == 0xcb:
                size, skip = 0, 8
            elif b == 0xcc or b == 0xd0:
                size, skip = 0, 1
            elif b == 0xcd or b == 0xd1:
                size, skip = 0, 2
            elif b == 0xce or b == 0xd2:
                size, skip = 0, 4
            elif b == 0xcf or b == 0xd3:
                size, skip = 0, 8
            elif b <= 0xd8:                 # fixext 1, 2, 4, 8, 16: type byte + data
                size, skip = 0, 1 + (1 << (b - 0xd4))
            elif b == 0xdc:
                size, head = 2, 1
            elif b == 0xdd:
                size, head = 4, 1
            elif b == 0xde:
                size, head = 2, 2
            else:                           # 0xdf
                size, head = 4, 2
            if size > n - pos:
                raise ValueError("truncated frame")
            if head:
                count = _be(p + pos, size) * head
                head = 1
            else:
                skip += _be(p + pos, size)
            pos += size
        if head:
            containers += 1
            if containers > max_containers:
                raise ValueError(f"more than {max_containers} arrays and maps in one frame")
            if depth + 1 > max_depth:
                raise ValueError(f"arrays and maps nested more than {max_depth} deep")
            if count > <uint64_t>(n - pos):     # every element takes a byte at least
                raise ValueError("truncated frame")
            depth += 1
            left[depth] = count
        elif skip:
            if skip > <uint64_t>(n - pos):
                raise ValueError("truncated frame")
            pos += skip
