"""fastpath.HotRequests (the broker's send/hb/sync decoded in C) against its oracle, the Python path.

The fast path may only take a frame the Python path (wire.unpack_many + wire.Validator with
the same limits) decodes to the very same maps -- same keys, same values of the same types --
and validates; everything else must come back None so that the Python path refuses it.  And a
Dispatcher with it must answer every frame exactly as one without: same replies in the same
order (NOT_LOGGED_IN before the fields' codes), same counters, same handler calls.
"""
from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fastpath import HotRequests
from fastpath._hotreq import KNOWN
from nodes.protocol import schema, wire
from nodes.protocol.dispatch import Dispatcher, hot_requests

LIMITS = {"max_text": 10, "max_fragments": 4, "max_channels": 2}
BROKER_LIMITS = {"max_text": 1440, "max_fragments": 64, "max_channels": 1000}
SID = 2**62 + 17                         # the session the test guard knows
SEND = {"t": "send", "rid": 1, "sid": SID, "channel": "g1", "ctime": 1, "text": "hello"}
SYNC = {"t": "sync", "rid": 2, "sid": SID, "channel": "g1", "after": 5}
HB = {"t": "hb", "rid": 3, "sid": SID}


def typed(value: Any) -> Any:
    """A value with the type of every part spelled out: True == 1 and 1.0 == 1 must not pass."""
    if isinstance(value, dict):
        return ("map", [(typed(k), typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [typed(v) for v in value])
    return (type(value).__name__, value)


def python_path(frame: bytes, limits: dict[str, int], max_len: int = 65536, max_items: int = 8) -> list | None:
    """The oracle: the maps if the Python path decodes and validates every request, else None."""
    validator = wire.Validator(schema.CLIENT_REQUESTS, limits)
    try:
        msgs = wire.unpack_many(frame, max_len, max_items)
        for msg in msgs:
            validator.validate(msg)
    except wire.ProtocolError:
        return None
    return msgs


def check(frame: bytes, limits: dict[str, int] = LIMITS, max_len: int = 65536, max_items: int = 8) -> list | None:
    """The fast path's answer, after checking it against the oracle."""
    fast = HotRequests(limits.get("max_text", -1), limits.get("max_fragments", -1),
                       limits.get("max_channels", -1))(frame, max_len, max_items)
    if fast is not None:
        oracle = python_path(frame, limits, max_len, max_items)
        assert oracle is not None, (frame, fast)
        assert typed(fast) == typed(oracle), frame
        assert all(m["t"] in ("send", "hb", "sync") for m in fast)
    return fast


def test_the_schema_still_says_what_the_decoder_was_written_for():
    for t, fields in KNOWN.items():
        table = schema.CLIENT_REQUESTS[t]
        assert {name: schema.Field(f) if isinstance(f, str) else f for name, f in table.items()}.keys() \
            == fields.keys() | {"rid", "sid"} == table.keys()
        for name, kind in fields.items():
            field = table[name]
            assert field.kind == kind, (t, name)
    assert schema.CLIENT_REQUESTS["send"]["text"].limit == "max_text"
    assert schema.CLIENT_REQUESTS["send"]["frag"].limit == "max_fragments"
    assert schema.CLIENT_REQUESTS["hb"]["channels"].limit == "max_channels"
    assert not any(f.nil for t in KNOWN for f in schema.CLIENT_REQUESTS[t].values() if not isinstance(f, str))


@pytest.mark.parametrize("msg", [
    SEND, SYNC, HB, dict(SEND, frag=[2**64 - 1, 3, 4]), dict(SEND, text="é" * 5),
    dict(SEND, rid=0, sid=2**64 - 1, ctime=2**63), dict(HB, channels={"a": 1, "b": 2**64 - 1}, net="4g"),
    dict(HB, channels={}), dict(SYNC, channel="x" * 64), dict(SEND, channel="a_-.:@#Z9"),
])
def test_common_shapes_take_the_fast_path(msg):
    assert check(wire.pack(msg)) == [msg]
    assert check(msgpack.packb(msg)) == [msg]
    assert check(wire.pack([msg, SYNC, HB])) == [msg, SYNC, HB]


@pytest.mark.parametrize("frame", [
    # everything tests/test_bad_input.py and tests/test_wire.py throw at a broker
    b"", b"\xc1", b"\x92\x01", msgpack.packb([1, 2, 3]), msgpack.packb({"t": "login"}) + b"\x00",
    msgpack.packb({"rid": 3}), msgpack.packb({"t": "shout", "rid": 3}), msgpack.packb({1: 2}),
    msgpack.packb({"t": "send", "rid": 3, "channel": "lobby", "ctime": 1, "text": "x"}),   # no sid
    msgpack.packb({"t": "hb", "rid": 3}), msgpack.packb({"t": "ping", "rid": 1}),
    b"\x81\xa1t\xa2\xff\xfe", b"\x81\xa1t\xdb\xff\xff\xff\xff\x00\x00", b"\x80" + b"\x00" * 100,
    wire.pack(dict(SEND, channel="bad name!")), wire.pack(dict(SEND, channel="")),
    wire.pack(dict(SEND, channel="x" * 65)), wire.pack(dict(SEND, channel=12)), wire.pack(dict(SEND, text="")),
    wire.pack(dict(SEND, text="é" * 6)), msgpack.packb(dict(SEND, text=b"bytes"), use_bin_type=True),
    wire.pack(dict(SEND, ctime=-5)), wire.pack(SEND)[:-3] + b"\xcf" + b"\xff" * 7, wire.pack(dict(SEND, ctime="now")),
    wire.pack(dict(SEND, frag=[1, 2])), wire.pack(dict(SEND, frag=[1, 0, True])), wire.pack(dict(SEND, frag=[1, 0, 5])),
    wire.pack(dict(SEND, frag=[1, 0, 1])), wire.pack(dict(SEND, frag=[1, 2, 2])), wire.pack(dict(SEND, frag=None)),
    wire.pack(dict(HB, channels={"a": 1, "b": 2, "c": 3})), wire.pack(dict(HB, channels={"a": -1})),
    wire.pack(dict(HB, channels=None)), wire.pack(dict(HB, channels={"ä": 1})), wire.pack(dict(HB, net=4)),
    wire.pack(dict(SEND, rid=True)), wire.pack(dict(SEND, ctime=1.5)), wire.pack(dict(SEND, channel="ä")),
    msgpack.packb({"t": b"send", "rid": 1}, use_bin_type=True), wire.pack({"t": None}),
    wire.pack(dict(SEND, future_field=[1])), wire.pack([]), wire.pack([SEND] * 9), wire.pack([SEND, {"t": "ping"}]),
    wire.pack(SEND) + b"\x00", wire.pack([SEND]) + b"\x00",
    b"\x82\xa1t\xa4sync\xa1t\xa4send",                                        # a key twice
    wire.pack(dict(SEND, sid=None)), wire.pack(dict(HB, net=None)),
])
def test_what_the_python_path_refuses_or_might_word_differently_is_left_to_it(frame):
    assert check(frame) is None


def test_a_frame_over_max_len_or_items_or_not_bytes_is_left_to_the_python_path():
    frame = wire.pack([SEND, SYNC])
    assert HotRequests()(bytearray(frame), 65536, 8) is None and HotRequests()(memoryview(frame), 65536, 8) is None
    assert check(frame, max_len=len(frame)) is not None
    assert check(frame, max_len=len(frame) - 1) is None
    assert check(frame, max_items=1) is None


def test_unbound_limits_are_not_checked_and_a_table_without_the_hot_kinds_gets_none():
    assert check(wire.pack(dict(SEND, text="x" * 5000, frag=[1, 0, 100])), {}) is not None
    assert hot_requests(schema.RELAY_REQUESTS, None) is None
    assert hot_requests(dict(schema.CLIENT_REQUESTS, hb={"rid": schema.RID}), None) is None
    fast = hot_requests(schema.CLIENT_REQUESTS, BROKER_LIMITS)
    assert isinstance(fast, HotRequests) and (fast.max_text, fast.max_fragments, fast.max_channels) \
        == (1440, 64, 1000)


# --- random frames --------------------------------------------------------------------------

ints = st.one_of(st.integers(0, 127), st.integers(0, 2**64 - 1), st.integers(-2**63, -1), st.booleans(),
                 st.floats(allow_nan=False), st.none())
channels = st.one_of(st.text("ab_-.:@#Z9", min_size=1, max_size=66), st.text(max_size=4), st.binary(max_size=3),
                     st.integers(0, 3))
texts = st.one_of(st.text(max_size=12), st.text("aé", min_size=4, max_size=12), st.text("aé€😀", max_size=12),
                  st.binary(max_size=3), st.none())
frags = st.one_of(st.lists(st.integers(0, 2**33), min_size=2, max_size=4), st.lists(st.booleans(), max_size=3),
                  st.none(), st.integers(0, 3))
windows = st.one_of(st.dictionaries(channels.filter(lambda c: isinstance(c, str)), ints, max_size=4),
                    st.none(), st.lists(st.integers(0, 3), max_size=2))
FIELDS = {"t": st.sampled_from(["send", "sync", "hb", "ping", "login", "read", b"send", 1]),
          "rid": ints, "sid": ints, "ctime": ints, "after": ints, "channel": channels, "text": texts,
          "frag": frags, "channels": windows, "net": st.one_of(st.text(max_size=4), st.none(), st.integers(0, 3)),
          "other": ints}


@st.composite
def requests(draw: Any) -> dict[str, Any]:
    """A hot request, valid or not: a valid one with a few fields replaced, dropped or added."""
    msg = dict(draw(st.sampled_from([SEND, SYNC, HB, dict(SEND, frag=[7, 1, 3]), dict(HB, channels={"a": 9})])))
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=3)):
        if draw(st.booleans()) and name in msg:
            del msg[name]
        else:
            msg[name] = draw(FIELDS[name])
    return msg


def encode(msgs: list[dict[str, Any]], as_array: bool, packer: str) -> bytes:
    body = msgs if as_array or len(msgs) != 1 else msgs[0]
    if packer == "msgspec":
        return wire.pack(body)                                  # type: ignore[arg-type]
    return msgpack.packb(body, use_bin_type=packer == "bin")     # "str": old raw encoding of bytes


def mutate(frame: bytes, data: Any) -> bytes:
    """A few bytes flipped, cut or appended: truncations, wrong headers, bad UTF-8, trailing data."""
    buf = bytearray(frame)
    for _ in range(data.draw(st.integers(0, 3))):
        op = data.draw(st.sampled_from(["flip", "cut", "add"]))
        if op == "flip" and buf:
            buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
        elif op == "cut" and buf:
            del buf[data.draw(st.integers(0, len(buf) - 1)):]
        else:
            buf += bytes(data.draw(st.lists(st.integers(0, 255), max_size=3)))
    return bytes(buf)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests(), min_size=1, max_size=4), st.booleans(), st.sampled_from(["msgspec", "bin", "str"]),
       st.sampled_from([LIMITS, BROKER_LIMITS, {}]), st.data())
def test_random_frames_fast_path_agrees_with_the_python_path(msgs, as_array, packer, limits, data):
    try:
        frame = encode(msgs, as_array, packer)
    except (OverflowError, TypeError):
        return
    oracle = python_path(frame, limits)
    fast = check(frame, limits)
    if oracle is not None and packer == "msgspec" and limits and all(
            m["t"] in KNOWN and m.keys() <= schema.CLIENT_REQUESTS[m["t"]].keys() | {"t"} for m in msgs):
        # a valid frame of our own encoder, only its kinds' fields, bound limits: the fast path takes it
        assert fast is not None, msgs
    check(mutate(frame, data), limits)


def test_signed_and_wider_encodings_of_valid_values_are_left_to_the_python_path():
    head = wire.pack({"t": "sync", "rid": 2, "sid": SID, "channel": "g1"})
    head = bytes([head[0] + 1]) + head[1:] + b"\xa5after"
    for value in (b"\xd0\x05", b"\xd3" + struct.pack(">q", 5), b"\xcb" + struct.pack(">d", 5.0)):
        assert python_path(head + value, LIMITS) is not None or value[0] == 0xcb
        assert check(head + value) is None
    assert check(head + b"\xcc\x05") == [dict(SYNC, after=5)]
    assert check(head + b"\xcf" + struct.pack(">Q", 5)) == [dict(SYNC, after=5)]


# --- a Dispatcher with and without the fast path ----------------------------------------------

class Recorder:
    """Handlers and a guard that record what they were given, like the broker's: the guard
    refuses every sid but SID (NOT_LOGGED_IN), a send of text "boom" fails in its handler."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def guard(self, ident: bytes, t: str, msg: dict[str, Any], now: float) -> Any:
        self.calls.append(("guard", t, typed(msg)))
        if t not in wire.SESSIONLESS and msg.get("sid") != SID:
            raise wire.ProtocolError(wire.Err.NOT_LOGGED_IN, "log in first")
        return ident

    def handler(self, t: str) -> Any:
        def handle(ctx: Any, msg: dict[str, Any], now: float) -> dict[str, Any]:
            self.calls.append((t, typed(msg)))
            if msg.get("text") == "boom":
                raise RuntimeError("a bug")
            return wire.reply("ok", msg.get("rid"), kind=t)
        return handle


def serve(frame: bytes, fast: bool) -> tuple[list[dict[str, Any]], Any, Any, Any]:
    rec = Recorder()
    handlers = {t: rec.handler(t) for t in schema.CLIENT_REQUESTS}
    d = Dispatcher(schema.CLIENT_REQUESTS, handlers, rec.guard, limits=LIMITS,
                   fast=hot_requests(schema.CLIENT_REQUESTS, LIMITS) if fast else None)
    replies: list[Any] = []
    d.frame(b"id", frame, 1.0, lambda ident, msg: replies.append(msg), 65536, 8)
    return replies, rec.calls, dict(d.requests), dict(d.invalid)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(requests(), st.sampled_from([
    dict(SEND, text="boom"), dict(SEND, sid=5), dict(SEND, sid=5, text=""), dict(SEND, text="x" * 10),
    dict(SEND, text="é" * 6), dict(SEND, frag=[1, 0, 5]), dict(HB, channels={"a": 1, "b": 2, "c": 3})])),
    min_size=1, max_size=4),
       st.booleans(), st.data())
def test_a_dispatcher_answers_the_same_with_and_without_the_fast_path(msgs, as_array, data):
    try:
        frame = encode(msgs, as_array, "msgspec")
    except (OverflowError, TypeError):
        return
    for f in (frame, mutate(frame, data)):
        assert typed(serve(f, True)) == typed(serve(f, False))


def test_the_guard_still_runs_first_on_the_fast_path():
    replies, calls, requests_, _ = serve(wire.pack([dict(SEND, sid=5), SEND, dict(SEND, text="boom")]), True)
    assert [r.get("code", r["t"]) for r in replies] == ["NOT_LOGGED_IN", "ok", "INTERNAL"]
    assert calls[0][0] == "guard" and requests_ == {"send": 2}
