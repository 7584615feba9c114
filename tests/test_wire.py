"""The wire module on bytes alone: decode limits, schemas, error envelope."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from nodes.protocol import wire


def test_every_schema_field_kind_is_known():
    for table in (wire.CLIENT_REQUESTS, wire.LOGIC_REQUESTS, wire.ROUTER_REQUESTS,
                  wire.COUNTER_REQUESTS, wire.BROKER_REQUESTS):
        for schema in table.values():
            assert set(schema.values()) <= set(wire.KINDS)
            assert "rid" in schema


def test_valid_send_decodes():
    frame = wire.pack({"t": "send", "rid": 1, "sid": 5, "channel": "a:b", "ctime": 2**63, "text": "hi",
                       "future_field": [1]})
    t, msg = wire.decode_request(frame, wire.CLIENT_REQUESTS)
    assert t == "send" and msg["ctime"] == 2**63


@pytest.mark.parametrize("msg,code", [
    ({"t": "send", "rid": 1, "sid": 1, "channel": "a", "ctime": 1}, wire.Err.BAD_FIELD),
    ({"t": "send", "rid": True, "sid": 1, "channel": "a", "ctime": 1, "text": "x"}, wire.Err.BAD_FIELD),
    ({"t": "send", "rid": 1, "sid": 1, "channel": "a", "ctime": 1.5, "text": "x"}, wire.Err.BAD_FIELD),
    ({"t": "send", "rid": 1, "sid": 1, "channel": "ä", "ctime": 1, "text": "x"}, wire.Err.BAD_CHANNEL),
    ({"t": b"send", "rid": 1}, wire.Err.BAD_TYPE),
    ({"t": None}, wire.Err.BAD_TYPE),
])
def test_schema_violations(msg, code):
    with pytest.raises(wire.ProtocolError) as exc:
        wire.validate(msg, wire.CLIENT_REQUESTS)
    assert exc.value.code == code


def test_frame_over_limit_is_refused_before_decoding():
    with pytest.raises(wire.ProtocolError) as exc:
        wire.unpack(b"\x80" + b"\x00" * 100, max_len=50)
    assert exc.value.code == wire.Err.BAD_FRAME


def test_declared_lengths_beyond_the_frame_are_refused():
    # a str32 header claiming 4 GiB in a 10-byte frame must not allocate
    with pytest.raises(wire.ProtocolError):
        wire.unpack(b"\x81\xa1t\xdb\xff\xff\xff\xff\x00\x00")


def test_invalid_utf8_is_a_bad_frame():
    with pytest.raises(wire.ProtocolError) as exc:
        wire.unpack(b"\x81\xa1t\xa2\xff\xfe")
    assert exc.value.code == wire.Err.BAD_FRAME


def test_error_envelope():
    err = wire.error_from(7, wire.ProtocolError(wire.Err.TOO_LONG, "too long", limit=10))
    assert err == {"t": "err", "rid": 7, "code": "TOO_LONG", "msg": "too long", "limit": 10}
    assert wire.request_rid({"rid": -1}) is None and wire.request_rid({"rid": "1"}) is None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_protocol_error(data):
    try:
        msg = wire.unpack(data)
    except wire.ProtocolError as exc:
        assert exc.code == wire.Err.BAD_FRAME
        return
    assert isinstance(msg, dict)
    try:
        wire.validate(msg, wire.CLIENT_REQUESTS)
    except wire.ProtocolError as exc:
        assert exc.code in wire.Err.all()


values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=20)
                      | st.binary(max_size=20) | st.floats(allow_nan=False),
                      lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                      max_leaves=10)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["t", "rid", "v", "token", "device", "channel", "ctime", "text",
                                        "after"]), values, max_size=8),
       st.sampled_from(sorted(wire.CLIENT_REQUESTS)))
def test_structured_garbage_validates_or_raises_a_documented_code(fields, t):
    msg = dict(fields, t=t) if "t" not in fields else fields
    frame = msgpack.packb(msg, use_bin_type=True)
    try:
        wire.decode_request(frame, wire.CLIENT_REQUESTS)
    except wire.ProtocolError as exc:
        assert exc.code in wire.Err.all()
