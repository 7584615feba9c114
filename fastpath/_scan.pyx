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


# What follows each header byte 0xc0..0xdf: (bytes of its big-endian length or count,
# payload bytes that follow anyway, 0 for a leaf / 1 an array / 2 a map).  nil and the bools
# are (0, 0, 0); 0xc1, never used, is not listed.  Fixints, fixmaps, fixarrays and fixstrs
# carry their size in the byte itself and are read before this table.
_HEADERS = {
    0xc0: (0, 0, 0), 0xc2: (0, 0, 0), 0xc3: (0, 0, 0),
    0xc4: (1, 0, 0), 0xc5: (2, 0, 0), 0xc6: (4, 0, 0),              # bin 8/16/32
    0xc7: (1, 1, 0), 0xc8: (2, 1, 0), 0xc9: (4, 1, 0),              # ext 8/16/32: + type byte
    0xca: (0, 4, 0), 0xcb: (0, 8, 0),                                # float 32/64
    0xcc: (0, 1, 0), 0xcd: (0, 2, 0), 0xce: (0, 4, 0), 0xcf: (0, 8, 0),   # uint 8..64
    0xd0: (0, 1, 0), 0xd1: (0, 2, 0), 0xd2: (0, 4, 0), 0xd3: (0, 8, 0),   # int 8..64
    0xd4: (0, 2, 0), 0xd5: (0, 3, 0), 0xd6: (0, 5, 0), 0xd7: (0, 9, 0), 0xd8: (0, 17, 0),  # fixext
    0xd9: (1, 0, 0), 0xda: (2, 0, 0), 0xdb: (4, 0, 0),              # str 8/16/32
    0xdc: (2, 0, 1), 0xdd: (4, 0, 1),                                # array 16/32
    0xde: (2, 0, 2), 0xdf: (4, 0, 2),                                # map 16/32
}
cdef unsigned char LENGTH[32]
cdef unsigned char FIXED[32]
cdef unsigned char OPENS[32]
cdef bint KNOWN[32]
for _b, (_length, _fixed, _opens) in _HEADERS.items():
    LENGTH[_b - 0xc0], FIXED[_b - 0xc0], OPENS[_b - 0xc0], KNOWN[_b - 0xc0] = _length, _fixed, _opens, True
del _b, _length, _fixed, _opens


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
    cdef int depth = 0, opens, length, i
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
        if b <= 0x7f or b >= 0xe0:          # fixints
            continue
        if b <= 0x9f:                       # fixmap, fixarray
            opens, count, skip = 2 if b <= 0x8f else 1, b & 0x0f, 0
        elif b <= 0xbf:                     # fixstr
            opens, skip = 0, b & 0x1f
        else:
            if not KNOWN[b - 0xc0]:
                raise ValueError("byte 0xc1 is never used in msgpack")
            length, skip, opens = LENGTH[b - 0xc0], FIXED[b - 0xc0], OPENS[b - 0xc0]
            if length > n - pos:
                raise ValueError("truncated frame")
            count = 0
            for i in range(length):
                count = (count << 8) | p[pos + i]
            pos += length
            if not opens:
                skip += count
        if opens:
            count *= opens
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
