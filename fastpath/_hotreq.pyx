# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The broker's hot client requests (``send``, ``hb``, ``sync``) decoded and validated in one pass.

``HotRequests(max_text, max_fragments, max_channels)(frame, max_len, max_items)`` reads a
client frame -- one request map or an array of them -- straight from its msgpack bytes and
returns the request maps, exactly as ``wire.unpack_many`` would decode them, when *every*
request is a ``send``, ``hb`` or ``sync`` of the common shape that passes
nodes/protocol/schema.py's ``CLIENT_REQUESTS`` validation with those limits (-1: a limit not
bound, not checked, as in ``wire.Validator``).  Anything else -- another kind, a field it
does not know, a duplicate key, a signed or float encoding, a value that would be refused,
trailing bytes, invalid UTF-8 -- returns None, and the caller (nodes/protocol/dispatch.py)
serves the frame through the Python path, which decodes, words every refusal and counts it.
So this path never refuses anything: it only takes the frames it is sure of, and the
Python path stays the oracle (tests/test_hotreq.py compares both on random frames).

Why: ``msgpack.unpackb`` with its hardening keywords plus ``wire.Validator`` cost ~1.4 µs
per ``send`` on the broker's main thread; one pass over ~80 bytes building the map costs
a fraction of that (docs/benchmarks.md, "Cython request decoding").
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint64_t
from libc.string cimport memcmp

cdef enum:
    MAX_MAP = 1024              # wire._decode's max_map_len: larger maps are the Python path's
    MAX_CHANNEL = 64            # wire.MAX_CHANNEL_BYTES
    U32_MAX = 0xFFFFFFFF

# one bit per known key; a key seen twice sends the frame to the Python path
cdef enum:
    K_T = 1
    K_RID = 2
    K_SID = 4
    K_CHANNEL = 8
    K_CTIME = 16
    K_TEXT = 32
    K_FRAG = 64
    K_AFTER = 128
    K_CHANNELS = 256
    K_NET = 512

cdef enum:
    SEND_REQUIRED = K_T | K_RID | K_SID | K_CHANNEL | K_CTIME | K_TEXT
    SEND_ALLOWED = SEND_REQUIRED | K_FRAG
    SYNC_REQUIRED = K_T | K_RID | K_SID | K_CHANNEL | K_AFTER
    HB_REQUIRED = K_T | K_RID | K_SID
    HB_ALLOWED = HB_REQUIRED | K_CHANNELS | K_NET

# the names of the fields and kinds this path knows: schema.CLIENT_REQUESTS's (tests/test_hotreq.py
# checks the table still says what this module assumes)
KNOWN = {"send": {"rid": "u64", "sid": "u64", "channel": "channel", "ctime": "u64", "text": "text",
                  "frag": "frag"},
         "sync": {"rid": "u64", "sid": "u64", "channel": "channel", "after": "u64"},
         "hb": {"rid": "u64", "sid": "u64", "channels": "windows", "net": "str"}}

cdef str S_T = "t", S_RID = "rid", S_SID = "sid", S_CHANNEL = "channel", S_CTIME = "ctime"
cdef str S_TEXT = "text", S_FRAG = "frag", S_AFTER = "after", S_CHANNELS = "channels", S_NET = "net"
cdef str S_SEND = "send", S_SYNC = "sync", S_HB = "hb"

# wire._CHANNEL_CHARS: letters, digits and _-.:@#
cdef bint CHANNEL_CHAR[256]
for _c in range(256):
    CHANNEL_CHAR[_c] = chr(_c) in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:@#"


cdef struct Reader:
    const unsigned char* p
    const unsigned char* end


cdef inline bint read_be(Reader* r, int size, uint64_t* out) noexcept:
    cdef uint64_t v = 0
    cdef int i
    if r.end - r.p < size:
        return False
    for i in range(size):
        v = (v << 8) | r.p[i]
    r.p += size
    out[0] = v
    return True


cdef inline bint read_uint(Reader* r, uint64_t* out) noexcept:
    """A non-negative fixint or uint 8..64; any other encoding is the Python path's."""
    cdef unsigned char b
    if r.p >= r.end:
        return False
    b = r.p[0]
    r.p += 1
    if b < 0x80:
        out[0] = b
        return True
    if 0xcc <= b <= 0xcf:
        return read_be(r, 1 << (b - 0xcc), out)
    return False


cdef inline bint read_str(Reader* r, const unsigned char** s, Py_ssize_t* n) noexcept:
    """fixstr, str 8 or str 16: the payload's start and length (not yet checked as UTF-8)."""
    cdef unsigned char b
    cdef uint64_t size
    if r.p >= r.end:
        return False
    b = r.p[0]
    r.p += 1
    if 0xa0 <= b <= 0xbf:
        size = b & 0x1f
    elif b == 0xd9 or b == 0xda:
        if not read_be(r, 1 if b == 0xd9 else 2, &size):
            return False
    else:
        return False
    if <uint64_t>(r.end - r.p) < size:
        return False
    s[0] = r.p
    n[0] = <Py_ssize_t>size
    r.p += size
    return True


cdef inline bint read_count(Reader* r, unsigned char fix, unsigned char b16, Py_ssize_t* n) noexcept:
    """A fixmap/map 16 (fix 0x80, b16 0xde) or fixarray/array 16 (0x90, 0xdc) header's count."""
    cdef unsigned char b
    cdef uint64_t size
    if r.p >= r.end:
        return False
    b = r.p[0]
    r.p += 1
    if fix <= b <= fix + 0x0f:
        n[0] = b & 0x0f
        return True
    if b == b16 and read_be(r, 2, &size):
        n[0] = <Py_ssize_t>size
        return True
    return False


cdef inline bint is_channel(const unsigned char* s, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    if n == 0 or n > MAX_CHANNEL:
        return False
    for i in range(n):
        if not CHANNEL_CHAR[s[i]]:
            return False
    return True


cdef inline bint key_is(const unsigned char* s, Py_ssize_t n, const char* name, Py_ssize_t size) noexcept:
    return n == size and memcmp(s, name, size) == 0


cdef inline bint put(dict msg, str key, object value):
    """``msg[key] = value``, or False when value is None: a value this path does not take."""
    if value is None:
        return False
    msg[key] = value
    return True


cdef object text_of(const unsigned char* s, Py_ssize_t n):
    """The str of a UTF-8 payload, or None when it is not valid UTF-8 (msgpack's strict decode)."""
    try:
        return PyUnicode_DecodeUTF8(<const char*>s, n, NULL)
    except UnicodeDecodeError:
        return None


cdef class HotRequests:
    """A client frame of ``send``/``hb``/``sync`` requests to its maps, or None (module doc)."""

    cdef readonly long long max_text, max_fragments, max_channels

    def __init__(self, long long max_text=-1, long long max_fragments=-1, long long max_channels=-1):
        self.max_text = max_text
        self.max_fragments = max_fragments
        self.max_channels = max_channels

    def __call__(self, object frame, Py_ssize_t max_len, Py_ssize_t max_items=1024):
        cdef Reader r
        cdef Py_ssize_t size, count, i
        cdef list out
        if type(frame) is not bytes:            # a bytearray or view from a gateway: the Python path's
            return None
        size = PyBytes_GET_SIZE(frame)
        if size > max_len or size == 0:
            return None
        r.p = <const unsigned char*>PyBytes_AS_STRING(frame)
        r.end = r.p + size
        if 0x80 <= r.p[0] <= 0x8f or r.p[0] == 0xde:          # one map
            msg = self.request(&r)
            if msg is None or r.p != r.end:
                return None
            return [msg]
        if not read_count(&r, 0x90, 0xdc, &count) or count == 0 or count > max_items:
            return None
        out = []
        for i in range(count):
            msg = self.request(&r)
            if msg is None:
                return None
            out.append(msg)
        if r.p != r.end:
            return None
        return out

    cdef object request(self, Reader* r):
        """One request map, decoded and validated; None for anything this path does not take."""
        cdef Py_ssize_t n, i, klen, vlen, text_len = 0
        cdef const unsigned char* k
        cdef const unsigned char* v
        cdef unsigned int seen = 0, bit
        cdef uint64_t u
        cdef str t = None
        cdef dict msg = {}
        if not read_count(r, 0x80, 0xde, &n) or n > MAX_MAP:
            return None
        for i in range(n):
            if not read_str(r, &k, &klen):
                return None
            if key_is(k, klen, "t", 1):
                bit = K_T
                if not read_str(r, &v, &vlen):
                    return None
                if key_is(v, vlen, "send", 4):
                    t = S_SEND
                elif key_is(v, vlen, "sync", 4):
                    t = S_SYNC
                elif key_is(v, vlen, "hb", 2):
                    t = S_HB
                else:
                    return None
                msg[S_T] = t
            elif key_is(k, klen, "rid", 3) or key_is(k, klen, "sid", 3) or key_is(k, klen, "ctime", 5) \
                    or key_is(k, klen, "after", 5):
                if not read_uint(r, &u):                    # every uint64 is a valid u64
                    return None
                if klen == 5:
                    bit = K_CTIME if k[0] == b"c" else K_AFTER
                    msg[S_CTIME if bit == K_CTIME else S_AFTER] = u
                else:
                    bit = K_RID if k[0] == b"r" else K_SID
                    msg[S_RID if bit == K_RID else S_SID] = u
            elif key_is(k, klen, "channel", 7):
                bit = K_CHANNEL
                if not read_str(r, &v, &vlen) or not is_channel(v, vlen):
                    return None
                msg[S_CHANNEL] = PyUnicode_DecodeUTF8(<const char*>v, vlen, NULL)     # ASCII
            elif key_is(k, klen, "text", 4):
                bit = K_TEXT
                if not read_str(r, &v, &vlen) or vlen == 0:
                    return None
                text_len = vlen                 # valid UTF-8: its byte length is the payload's
                if not put(msg, S_TEXT, text_of(v, vlen)):
                    return None
            elif key_is(k, klen, "frag", 4):
                bit = K_FRAG
                if not put(msg, S_FRAG, self.frag(r)):
                    return None
            elif key_is(k, klen, "channels", 8):
                bit = K_CHANNELS
                if not put(msg, S_CHANNELS, self.windows(r)):
                    return None
            elif key_is(k, klen, "net", 3):
                bit = K_NET
                if not read_str(r, &v, &vlen) or not put(msg, S_NET, text_of(v, vlen)):
                    return None
            else:
                return None                     # a field this path does not know
            if seen & bit:
                return None                     # a key twice: the Python path keeps the last
            seen |= bit
        if t is S_SEND:
            if seen & ~<unsigned int>SEND_ALLOWED or seen & SEND_REQUIRED != SEND_REQUIRED:
                return None
            if self.max_text >= 0 and text_len > self.max_text:
                return None
        elif t is S_SYNC:
            if seen != SYNC_REQUIRED:
                return None
        elif t is S_HB:
            if seen & ~<unsigned int>HB_ALLOWED or seen & HB_REQUIRED != HB_REQUIRED:
                return None
        else:
            return None
        return msg

    cdef object frag(self, Reader* r):
        """[group, index, count]: uint64, uint32, uint32, index < count, 2 <= count <= limit."""
        cdef Py_ssize_t n
        cdef uint64_t group, index, count
        if not read_count(r, 0x90, 0xdc, &n) or n != 3:
            return None
        if not (read_uint(r, &group) and read_uint(r, &index) and read_uint(r, &count)):
            return None
        if count > U32_MAX or index >= count or count < 2:
            return None
        if self.max_fragments >= 0 and count > <uint64_t>self.max_fragments:
            return None
        return [group, index, count]

    cdef object windows(self, Reader* r):
        """{channel: uint64}, at most max_channels entries."""
        cdef Py_ssize_t n, i, klen
        cdef const unsigned char* k
        cdef uint64_t u
        cdef dict out = {}
        if not read_count(r, 0x80, 0xde, &n) or n > MAX_MAP:
            return None
        if self.max_channels >= 0 and n > self.max_channels:
            return None
        for i in range(n):
            if not read_str(r, &k, &klen) or not is_channel(k, klen) or not read_uint(r, &u):
                return None
            out[PyUnicode_DecodeUTF8(<const char*>k, klen, NULL)] = u
        return out
