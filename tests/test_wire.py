"""The wire module on bytes alone: decode limits, schemas, error envelope."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from nodes.protocol import schema, wire

REQUEST_TABLES = ("CLIENT_REQUESTS", "LOGIC_REQUESTS", "ROUTER_REQUESTS", "COUNTER_REQUESTS",
                  "REPLICATION_REQUESTS", "TOPOLOGY_REQUESTS", "HANDOFF_REQUESTS", "BROKER_RPC",
                  "RELAY_REQUESTS")
ALL_TABLES = [getattr(schema, n) for n in REQUEST_TABLES + ("CLIENT_REPLIES", "PUSHES")] \
    + list(schema.PUB_FRAMES.values())


def test_every_schema_field_kind_is_known_and_limits_fit_their_kind():
    for table in ALL_TABLES:
        for fields in table.values():
            for name, field in fields.items():
                assert field.kind in wire.KINDS, name
                assert field.limit is None or field.kind in wire.LIMITED, name
                assert type(field.limit) is not str or field.limit in schema.LIMIT_SOURCES, name
                assert not field.nil or field.optional, name
            wire.Validator(table, dict.fromkeys(schema.LIMIT_SOURCES, 1))       # compiles
    for name in REQUEST_TABLES:
        assert all("rid" in fields for fields in getattr(schema, name).values()), name


def test_a_relay_login_takes_no_net():
    assert "net" in schema.CLIENT_REQUESTS["login"] and "net" not in schema.RELAY_REQUESTS["login"]


LIMITS = {"max_text": 10, "max_fragments": 4, "max_channels": 2}
FULL = wire.Validator(schema.CLIENT_REQUESTS, LIMITS)
SEND = {"t": "send", "rid": 1, "sid": 1, "channel": "a", "ctime": 1, "text": "x"}


@pytest.mark.parametrize("extra,code,limit", [
    ({"text": ""}, wire.Err.EMPTY_TEXT, None),
    ({"text": "é" * 6}, wire.Err.TOO_LONG, 10),
    ({"frag": [1, 2]}, wire.Err.BAD_FRAGMENT, None),
    ({"frag": [1, 0, True]}, wire.Err.BAD_FRAGMENT, None),
    ({"frag": [1, 0, 5]}, wire.Err.BAD_FRAGMENT, 4),
    ({"frag": [1, 0, 1]}, wire.Err.BAD_FRAGMENT, 4),
    ({"frag": [1, 2, 2]}, wire.Err.BAD_FRAGMENT, None),
    ({"frag": None}, wire.Err.BAD_FRAGMENT, None),
    ({"t": "hb", "channels": {"a": 1, "b": 2, "c": 3}}, wire.Err.TOO_MANY, 2),
    ({"t": "hb", "channels": {"a": -1}}, wire.Err.BAD_FIELD, None),
    ({"t": "hb", "channels": None}, wire.Err.BAD_FIELD, None),
    ({"t": "hb", "channels": {"ä": 1}}, wire.Err.BAD_CHANNEL, None),
    ({"t": "hb", "net": 4}, wire.Err.BAD_FIELD, None),
    ({"t": "login", "v": 2, "token": "x", "device": 1, "net": None}, wire.Err.BAD_FIELD, None),
])
def test_the_full_schema_refuses_with_the_handlers_codes(extra, code, limit):
    with pytest.raises(wire.ProtocolError) as exc:
        FULL.validate(dict(SEND, **extra))
    assert exc.value.code == code and exc.value.extra.get("limit") == limit


@pytest.mark.parametrize("extra", [{}, {"text": "é" * 5}, {"frag": [2**64 - 1, 3, 4]},
                                   {"t": "hb", "channels": {"a": 1, "b": 2}, "net": "4g"},
                                   {"t": "login", "v": 2, "token": "x", "device": 1, "net": "2g"}])
def test_the_full_schema_passes_what_the_handlers_take(extra):
    FULL.validate(dict(SEND, **extra))


def test_unbound_named_limits_are_left_to_the_handler_and_nil_may_mean_absent():
    unbound = wire.Validator(schema.CLIENT_REQUESTS)
    unbound.validate(dict(SEND, text="", frag=[1, 0, 1000]))
    unbound.validate({"t": "hb", "rid": 1, "sid": 1, "channels": {str(i): 1 for i in range(5000)}})
    logic = wire.Validator(schema.LOGIC_REQUESTS)
    create = {"t": "channel_create", "rid": 1, "auth": "x", "channel": "a", "members": [1]}
    for lifetime in (None, 1, 0.5, 10**9 - 1):
        logic.validate(dict(create, lifetime=lifetime))
    for lifetime in (0, -1, 10**9, True, "1"):
        with pytest.raises(wire.ProtocolError) as exc:
            logic.validate(dict(create, lifetime=lifetime))
        assert exc.value.code == wire.Err.BAD_FIELD


def test_valid_send_decodes():
    frame = wire.pack({"t": "send", "rid": 1, "sid": 5, "channel": "a:b", "ctime": 2**63, "text": "hi",
                       "future_field": [1]})
    t, msg = wire.decode_request(frame, schema.CLIENT_REQUESTS)
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
        wire.validate(msg, schema.CLIENT_REQUESTS)
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
        wire.validate(msg, schema.CLIENT_REQUESTS)
    except wire.ProtocolError as exc:
        assert exc.code in wire.Err.all()


values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=20)
                      | st.binary(max_size=20) | st.floats(allow_nan=False),
                      lambda inner: (st.lists(inner, max_size=4)
                                     | st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=10)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["t", "rid", "v", "token", "device", "channel", "ctime", "text",
                                        "after"]), values, max_size=8),
       st.sampled_from(sorted(schema.CLIENT_REQUESTS)))
def test_structured_garbage_validates_or_raises_a_documented_code(fields, t):
    msg = dict(fields, t=t) if "t" not in fields else fields
    frame = msgpack.packb(msg, use_bin_type=True)
    try:
        wire.decode_request(frame, schema.CLIENT_REQUESTS)
    except wire.ProtocolError as exc:
        assert exc.code in wire.Err.all()
