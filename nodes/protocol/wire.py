"""The wire protocol: one msgpack map per ZeroMQ frame, shared by every node and client.

Every message is a msgpack map with string keys.  Key ``t`` (str) names the
message type; requests carry ``rid`` (uint, chosen by the sender and echoed in
the reply) so replies can be matched on an asynchronous DEALER.  Deliveries on
PUB sockets are two frames: ``[topic, map]``.  docs/protocol.md is the
reference for client authors; this module is its executable form: the
message schemas, the error codes, the decode limits.

Nothing here touches a socket, so every rule can be tested on bytes alone.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgpack
import msgspec

from fastpath._scan import scan
from nodes.protocol import schema

Msg = dict[str, Any]                    # a decoded frame: {"t": kind, ...} (nodes/protocol/schema.py)

PROTOCOL_VERSION = 2

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1

# Decode limits: enforced by msgpack before anything is allocated.
MAX_FRAME = 64 * 1024          # client-facing ZMQ_MAXMSGSIZE default
MAX_CHANNEL_BYTES = 64
MAX_TEXT_BYTES = 1440          # default; the topology may lower or raise it

# Internal frames are decoded by msgspec, which has no limits of its own (it recurses per level
# and builds whatever the frame describes), so fastpath._scan checks their shape first:
MAX_DEPTH = 64                 # arrays and maps nested deeper: BAD_FRAME (ours nest a few levels)
BYTES_PER_CONTAINER = 3        # at most one array or map per 3 bytes (+ CONTAINER_FLOOR): the
#                                densest frame we send, a router's touch of [uin, device] pairs
#                                of small ints, decodes to ~30 B per byte; one-byte empty arrays
#                                would cost ~80 B per byte (8 MiB of them: 635 MB peak)
CONTAINER_FLOOR = 1024


class Err:
    """Error codes carried in ``{"t": "err", "code": ..., "msg": ...}`` replies."""

    BAD_FRAME = "BAD_FRAME"            # not msgpack, or not a map, or trailing bytes
    BAD_TYPE = "BAD_TYPE"              # unknown or missing "t"
    BAD_FIELD = "BAD_FIELD"            # missing field or wrong msgpack type / range
    BAD_VERSION = "BAD_VERSION"        # login with a protocol version we do not speak
    NOT_LOGGED_IN = "NOT_LOGGED_IN"    # anything but login before login
    AUTH_FAILED = "AUTH_FAILED"        # forged or malformed token
    TOKEN_EXPIRED = "TOKEN_EXPIRED"    # token past its expiry
    BAD_CHANNEL = "BAD_CHANNEL"        # channel name empty, too long or bad characters
    NO_CHANNEL = "NO_CHANNEL"          # channel does not exist
    CHANNEL_EXISTS = "CHANNEL_EXISTS"  # create of an existing channel
    NOT_MEMBER = "NOT_MEMBER"          # sender is not a member of the channel
    STALE = "STALE"                    # client time older than the last one seen
    TOO_LONG = "TOO_LONG"              # text over the length limit ("limit" in reply)
    TOO_MANY = "TOO_MANY"              # a list over its limit (e.g. heartbeat channels; "limit")
    EMPTY_TEXT = "EMPTY_TEXT"          # text of zero bytes
    BAD_FRAGMENT = "BAD_FRAGMENT"      # fragment header contradicts itself or its group
    RATE_LIMITED = "RATE_LIMITED"      # over the per-user send rate ("retry_after" seconds)
    WRONG_OWNER = "WRONG_OWNER"        # request reached a node that does not own the key
    UNAVAILABLE = "UNAVAILABLE"        # owning node did not answer in time
    BUSY = "BUSY"                      # too many requests in flight: retry later
    TOO_BIG = "TOO_BIG"                # media file or chunk over its limit ("limit")
    BAD_CHUNK = "BAD_CHUNK"            # chunk index out of range or chunk of the wrong size
    SHA_MISMATCH = "SHA_MISMATCH"      # assembled file does not match its sha256; upload discarded
    NO_MEDIA = "NO_MEDIA"              # unknown, expired or unfinished media id
    INTERNAL = "INTERNAL"              # bug or storage failure; nothing was stored
    STORAGE_FULL = "STORAGE_FULL"      # the owning node's disk is full: not stored; retry later, same ctime
    FORBIDDEN = "FORBIDDEN"            # a member without the role (or not the author): nothing changed
    NO_MESSAGE = "NO_MESSAGE"          # edit/delete of an id that is no stored message of the channel
    TOO_LATE = "TOO_LATE"              # edit after the channel's edit window ("limit" seconds)

    @classmethod
    def all(cls) -> list[str]:
        return [v for k, v in vars(cls).items() if k.isupper()]


# What a send's error reply tells the client about the message (docs/protocol.md, "Send outcomes").
# Refused: guaranteed not stored; the client must not retry as is.
REFUSED_OUTCOME = (Err.BAD_FRAME, Err.BAD_TYPE, Err.BAD_FIELD, Err.BAD_CHANNEL, Err.NO_CHANNEL,
                   Err.NOT_MEMBER, Err.TOO_LONG, Err.EMPTY_TEXT, Err.BAD_FRAGMENT, Err.RATE_LIMITED,
                   Err.STALE, Err.NOT_LOGGED_IN, Err.AUTH_FAILED, Err.TOKEN_EXPIRED, Err.TOO_MANY,
                   Err.BAD_VERSION, Err.FORBIDDEN, Err.NO_MESSAGE, Err.TOO_LATE)
# Unknown: it may have been stored; only a retry with the same ctime learns the outcome.
UNKNOWN_OUTCOME = (Err.UNAVAILABLE, Err.BUSY, Err.INTERNAL, Err.STORAGE_FULL)

# Why a broker ends a session by itself: the "reason" of a {"t": "kicked"} notice.
KICK_REASONS = ("replaced", "too_slow", "expired", "kicked")


class ProtocolError(Exception):
    """A request that gets an error reply instead of being served."""

    def __init__(self, code: str, msg: str, **extra: Any) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg
        self.extra = extra


# --- field kinds -----------------------------------------------------------
# A check gets a field's value as decoded (any msgpack value: checking it is its job) and its name.
FieldCheck = Callable[[Any, str], None]

def _check_uint(value: Any, bits: int, name: str) -> None:
    if type(value) is not int or isinstance(value, bool):
        raise ProtocolError(Err.BAD_FIELD, f"field '{name}' must be an unsigned integer")
    if value < 0 or value >= 1 << bits:
        raise ProtocolError(Err.BAD_FIELD, f"field '{name}' out of range for uint{bits}")


def _kind_u32(v: Any, name: str) -> None:
    _check_uint(v, 32, name)


def _kind_u64(v: Any, name: str) -> None:
    _check_uint(v, 64, name)


def _kind_str(v: Any, name: str) -> None:
    if type(v) is not str:
        raise ProtocolError(Err.BAD_FIELD, f"field '{name}' must be a string")


def _kind_channel(v: Any, name: str) -> None:
    _kind_str(v, name)
    check_channel_name(v)


def _kind_u32_list(v: Any, name: str) -> None:
    if type(v) is not list:
        raise ProtocolError(Err.BAD_FIELD, f"field '{name}' must be an array of uint32")
    for item in v:
        _check_uint(item, 32, name + "[]")


def _kind_u32_list_limited(v: Any, name: str, limit: int | None = None) -> None:
    """[uint32]; with a bound limit at most that many (TOO_MANY, e.g. a group's members)."""
    _kind_u32_list(v, name)
    if limit is not None and len(v) > limit:
        raise ProtocolError(Err.TOO_MANY, f"'{name}' may list at most {limit} users", limit=limit)


def _kind_page(v: Any, name: str, limit: int | None = None) -> None:
    """A page size: an unsigned integer 1..limit (BAD_FIELD with "limit")."""
    _check_uint(v, 32, name)
    if v == 0 or (limit is not None and v > limit):
        raise ProtocolError(Err.BAD_FIELD, f"'{name}' must be 1..{limit or 'uint32'}",
                            **({} if limit is None else {"limit": limit}))


def _kind_windows(v: Any, name: str) -> None:
    """{channel: uint64} -- the newest id a client holds per channel."""
    if type(v) is not dict:
        raise ProtocolError(Err.BAD_FIELD, f"field '{name}' must be a map of channel -> uint64")
    for channel, last in v.items():
        _kind_channel(channel, name + " key")
        _check_uint(last, 64, f"{name}[{channel}]")


def _kind_bin(v: Any, name: str) -> None:
    if type(v) is not bytes:
        raise ProtocolError(Err.BAD_FIELD, f"field '{name}' must be msgpack bin")


def _kind_sha(v: Any, name: str) -> None:
    if type(v) is not str or len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise ProtocolError(Err.BAD_FIELD, f"field '{name}' must be a sha256 as 64 lowercase hex digits")


def _kind_pairs(v: Any, name: str) -> None:
    """[[uint32, uint32], ...] -- (uin, device) sessions."""
    if type(v) is not list or any(type(p) is not list or len(p) != 2 for p in v):
        raise ProtocolError(Err.BAD_FIELD, f"field '{name}' must be an array of [uint32, uint32]")
    for uin, device in v:
        _check_uint(uin, 32, name + "[][0]")
        _check_uint(device, 32, name + "[][1]")


def _kind_text(v: Any, name: str, limit: int | None = None) -> None:
    """str; with a bound limit also 1..limit bytes of UTF-8 (EMPTY_TEXT, TOO_LONG)."""
    _kind_str(v, name)
    if limit is not None:
        size = len(v) if v.isascii() else len(v.encode("utf-8"))     # isascii: O(1) in CPython
        if size == 0:
            raise ProtocolError(Err.EMPTY_TEXT, "text is empty")
        if size > limit:
            raise ProtocolError(Err.TOO_LONG, f"text of {size} bytes exceeds the limit of {limit}; "
                                "split it into fragments", limit=limit)


def _kind_windows_limited(v: Any, name: str, limit: int | None = None) -> None:
    _kind_windows(v, name)
    if limit is not None and len(v) > limit:
        raise ProtocolError(Err.TOO_MANY, f"'{name}' may list at most {limit} channels", limit=limit)


def _kind_frag(v: Any, name: str, limit: int | None = None) -> None:
    """[group uint64, index uint32, count uint32], index < count, count 2..limit: BAD_FRAGMENT."""
    if (type(v) is not list or len(v) != 3 or any(type(x) is not int or x < 0 for x in v)
            or v[0] > U64_MAX or v[1] > U32_MAX or v[2] > U32_MAX):
        raise ProtocolError(Err.BAD_FRAGMENT, "frag must be [group id, index, count] of unsigned integers")
    if limit is not None and not 2 <= v[2] <= limit:
        raise ProtocolError(Err.BAD_FRAGMENT, f"fragment count must be 2..{limit}", limit=limit)
    if v[1] >= v[2]:
        raise ProtocolError(Err.BAD_FRAGMENT, f"fragment index {v[1]} >= count {v[2]}")


def _kind_seconds(v: Any, name: str) -> None:
    if type(v) not in (int, float) or not 0 < v < 10**9:
        raise ProtocolError(Err.BAD_FIELD, f"{name} must be a positive number of seconds")


def _of_type(*types: type, what: str) -> FieldCheck:
    def check(v: Any, name: str) -> None:
        if type(v) not in types:
            raise ProtocolError(Err.BAD_FIELD, f"field '{name}' must be {what}")
    return check


def _kind_channels(v: Any, name: str) -> None:
    if type(v) is not list:
        raise ProtocolError(Err.BAD_FIELD, f"field '{name}' must be an array of channels")
    for item in v:
        _kind_channel(item, name + "[]")


def _kind_u64_or_nil(v: Any, name: str) -> None:
    if v is not None:
        _kind_u64(v, name)


def _kind_any(v: Any, name: str) -> None:
    """Documented, checked by the handler that uses it."""


# kind -> check(value, name); a check with a ``limit`` keyword takes a bound limit too (hence ``...``)
KINDS: dict[str, Callable[..., None]] = {
         "pairs": _kind_pairs, "bin": _kind_bin, "sha256": _kind_sha, "windows": _kind_windows_limited,
         "u32": _kind_u32, "u64": _kind_u64, "str": _kind_str, "channel": _kind_channel,
         "u32list": _kind_u32_list_limited, "page": _kind_page, "text": _kind_text, "frag": _kind_frag,
         "seconds": _kind_seconds,
         "channels": _kind_channels, "u64nil": _kind_u64_or_nil, "any": _kind_any,
         "bool": _of_type(bool, what="a bool"), "number": _of_type(int, float, what="a number"),
         "list": _of_type(list, what="an array"), "map": _of_type(dict, what="a map"),
         "strnil": _of_type(str, type(None), what="a string or nil")}
LIMITED = frozenset(("text", "windows", "frag", "u32list", "page"))     # kinds that take a limit

_CHANNEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:@#")


def check_channel_name(name: str) -> None:
    """Channel names: 1..64 ASCII letters, digits and ``_-.:@#``."""
    if not name or len(name) > MAX_CHANNEL_BYTES or not _CHANNEL_CHARS.issuperset(name):
        raise ProtocolError(Err.BAD_CHANNEL,
                            f"channel name must be 1..{MAX_CHANNEL_BYTES} characters of "
                            "letters, digits and _-.:@#")


# --- schemas: nodes/protocol/schema.py holds every frame kind; nodes serve its tables -------
SESSIONLESS = schema.SESSIONLESS
SYNC_PAGE = schema.SYNC_PAGE
# a schema table: message type -> field name -> Field, or a bare kind for a required field
Schemas = Mapping[str, Mapping[str, "schema.Field | str"]]
PUB_FRAMES = schema.PUB_FRAMES      # validated in full as they are read (nodes/runtime/node.py)


# --- encode / decode ---------------------------------------------------------

_encoder = msgspec.msgpack.Encoder()        # same msgpack bytes as msgpack's Packer, ~2x faster
_internal = msgspec.msgpack.Decoder()        # ~4x faster than msgpack.unpackb on our frames


def pack(msg: dict[str, Any]) -> bytes:
    """Encode one message (a dict) to a frame."""
    return _encoder.encode(msg)


def _decode(frame: bytes, max_len: int) -> Any:
    if len(frame) > max_len:
        raise ProtocolError(Err.BAD_FRAME, f"frame of {len(frame)} bytes exceeds {max_len}")
    try:
        return msgpack.unpackb(frame, raw=False, strict_map_key=True, max_str_len=max_len,
                               max_bin_len=max_len, max_array_len=max_len, max_map_len=1024,
                               max_ext_len=0)
    except UnicodeDecodeError:
        raise ProtocolError(Err.BAD_FRAME, "a string is not valid UTF-8") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ProtocolError(Err.BAD_FRAME, f"not a msgpack frame: {type(exc).__name__}") from None


def unpack(frame: bytes, max_len: int = MAX_FRAME) -> dict[str, Any]:
    """Decode a frame that holds exactly one map; ProtocolError(BAD_FRAME) otherwise."""
    msg = _decode(frame, max_len)
    if type(msg) is not dict:
        raise ProtocolError(Err.BAD_FRAME, "frame must be a msgpack map")
    return msg


def unpack_many(frame: bytes, max_len: int = MAX_FRAME, max_items: int = 1024) -> list[dict[str, Any]]:
    """A frame holds one map, or an array of maps (several messages, in order): the maps."""
    return _maps(_decode(frame, max_len), max_items)


def unpack_internal(frame: bytes, max_len: int = MAX_FRAME, max_items: int = 1024) -> list[dict[str, Any]]:
    """``unpack_many`` for frames between our own nodes (replies, PUB frames, node rpc
    requests), decoded by msgspec: the same shape rules and BAD_FRAME on anything
    undecodable, but none of the client-facing hardening limits (per-string lengths,
    string-only map keys, no ext types) -- the schemas still validate every field.
    Nesting and the number of arrays and maps are bounded before anything is built
    (MAX_DEPTH, BYTES_PER_CONTAINER): a hostile frame costs a scan, not memory."""
    size = len(frame)
    if size > max_len:
        raise ProtocolError(Err.BAD_FRAME, f"frame of {size} bytes exceeds {max_len}")
    try:
        scan(frame, MAX_DEPTH, size // BYTES_PER_CONTAINER + CONTAINER_FLOOR)
    except ValueError as exc:
        raise ProtocolError(Err.BAD_FRAME, f"not a msgpack frame we decode: {exc}") from None
    try:
        value = _internal.decode(frame)
    except (msgspec.DecodeError, ValueError, TypeError, RecursionError) as exc:
        raise ProtocolError(Err.BAD_FRAME, f"not a msgpack frame: {type(exc).__name__}") from None
    return _maps(value, max_items)


def _maps(value: Any, max_items: int) -> list[dict[str, Any]]:
    if type(value) is dict:
        return [value]
    if type(value) is not list or not value or len(value) > max_items \
            or not all(type(m) is dict for m in value):
        raise ProtocolError(Err.BAD_FRAME, f"frame must be a msgpack map or an array of 1..{max_items} maps")
    return value


def array_of_packed(packed: list[bytes]) -> bytes:
    """A msgpack array frame made of already packed items (no repacking)."""
    n = len(packed)
    if n < 16:
        head = bytes((0x90 | n,))
    elif n < 65536:
        head = b"\xdc" + n.to_bytes(2, "big")
    else:
        head = b"\xdd" + n.to_bytes(4, "big")
    return head + b"".join(packed)


def topic(node_id: str) -> bytes:
    """The PUB topic addressing one node.  Subscriptions match prefixes, so the id is
    terminated: "b1" must not receive what is published for "b10"."""
    return node_id.encode() + b"\x00"


# The routers' PUB topic of presence deltas, which every logic node subscribes to
# (a broker's own topic is ``topic(broker id)``; this one has no terminator).
PRESENCE_TOPIC = b"presence"


def request_rid(msg: dict[str, Any]) -> int | None:
    """The request id to echo, if the message carries a usable one."""
    rid = msg.get("rid")
    return rid if type(rid) is int and 0 <= rid <= U64_MAX else None


def _bound(check: Callable[[Any, str, int], None], limit: int) -> FieldCheck:
    def bound(value: Any, name: str) -> None:
        check(value, name, limit)
    return bound


_INT_LIMITS = {"u32": 1 << 32, "u64": 1 << 64}      # kinds with a fast path: a valid value in one test
_MISSING = object()


def _field(name: str, field: schema.Field | str, limits: Mapping[str, int]) -> tuple[str, int | None, FieldCheck]:
    """(name, fast-path limit, check) of one field: the fast limit is an int bound for the int
    kinds, None for a string that needs no more than its type, 0 for neither."""
    if isinstance(field, str):                           # a bare kind: required, no limit
        field = schema.Field(field)
    limit = field.limit
    if type(limit) is str:
        limit = limits.get(limit)                        # a named limit nobody bound: not checked here
    check = KINDS[field.kind]
    if limit is not None:
        if field.kind not in LIMITED:
            raise ValueError(f"kind {field.kind!r} of field {name!r} takes no limit")
        check = _bound(check, int(limit))
        fast: int | None = 0
    else:
        fast = _INT_LIMITS.get(field.kind, None if field.kind in ("str", "text") else 0)
    return name, fast, check


class Validator:
    """A schema table compiled once: ``validate(msg)`` checks a decoded message, returns its type.

    Extra fields are ignored (forward compatibility); missing or mistyped
    required fields raise ProtocolError(BAD_FIELD) (or their kind's code);
    an unknown type BAD_TYPE; optional fields are checked when present.
    Valid integers and strings pass in one inline test (this runs for every
    request on every node); anything else goes through the kind's full check,
    which also words the error.
    """

    def __init__(self, schemas: Schemas, limits: Mapping[str, int] | None = None) -> None:
        self.schemas = schemas
        self.entries: dict[str, tuple[tuple[tuple[str, int | None, FieldCheck], ...],
                                      tuple[tuple[str, bool, FieldCheck], ...]]] = {}
        for t, fields in schemas.items():
            required: list[tuple[str, int | None, FieldCheck]] = []
            optional: list[tuple[str, bool, FieldCheck]] = []
            for name, field in fields.items():
                if not isinstance(field, str) and field.optional:
                    optional.append((name, field.nil) + _field(name, field, limits or {})[2:])
                else:
                    required.append(_field(name, field, limits or {}))
            self.entries[t] = (tuple(required), tuple(optional))

    def validate(self, msg: dict[str, Any]) -> str:
        t: object = msg.get("t")
        if type(t) is not str or (entry := self.entries.get(t)) is None:
            raise ProtocolError(Err.BAD_TYPE, f"unknown message type {t!r}")
        required, optional = entry
        for name, limit, check in required:
            try:
                value = msg[name]
            except KeyError:
                raise ProtocolError(Err.BAD_FIELD, f"missing field '{name}' in '{t}'") from None
            if limit is None:
                if type(value) is str:
                    continue
            elif limit and type(value) is int and 0 <= value < limit:
                continue
            check(value, name)
        for name, nil, check in optional:
            value = msg.get(name, _MISSING)
            if value is not _MISSING and not (nil and value is None):
                check(value, name)
        return t


_compiled: dict[int, tuple[Schemas, Validator]] = {}   # id(table) -> (table, Validator)


def validate(msg: dict[str, Any], schemas: Schemas) -> str:
    """Check a decoded request against a schema table (no limits bound); return its type."""
    entry = _compiled.get(id(schemas))
    if entry is None or entry[0] is not schemas:
        entry = _compiled[id(schemas)] = (schemas, Validator(schemas))
    return entry[1].validate(msg)


def decode_request(frame: bytes, schemas: Schemas, max_len: int = MAX_FRAME) -> tuple[str, dict[str, Any]]:
    """unpack + validate: (type, message) or ProtocolError."""
    msg = unpack(frame, max_len)
    return validate(msg, schemas), msg


def error(rid: int | None, code: str, text: str, **extra: Any) -> dict[str, Any]:
    """The one error reply envelope."""
    reply: dict[str, Any] = {"t": "err", "rid": rid, "code": code, "msg": text}
    reply.update(extra)
    return reply


def error_from(rid: int | None, exc: ProtocolError) -> dict[str, Any]:
    return error(rid, exc.code, exc.msg, **exc.extra)


def reply(t: str, rid: int | None, **fields: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"t": t, "rid": rid}
    msg.update(fields)
    return msg
