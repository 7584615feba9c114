"""Every bad input gets an error reply with a code (where a reply is possible),
and the node goes on serving everyone else (real nodes)."""
from __future__ import annotations

import msgpack
import pytest
import zmq

from nodes.protocol import auth, wire


class Raw:
    """A bare DEALER speaking frames, for inputs the client library would never send
    (to an internal endpoint: as the operator, with the admin CURVE key)."""

    def __init__(self, endpoint, identity=None, node=None):
        self.sid = None
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if identity is not None:
            identity.as_client(self.sock, node)
        self.sock.connect(endpoint)

    def ask(self, *frames, timeout=5.0) -> dict:
        self.sock.send_multipart(list(frames))
        assert self.sock.poll(int(timeout * 1000)), "no reply"
        replies = wire.unpack_many(self.sock.recv(), 2**30)
        assert len(replies) == 1, replies
        return replies[0]

    def ask_msg(self, msg: dict) -> dict:
        if self.sid is not None and msg.get("t") not in wire.SESSIONLESS:
            msg = dict(msg, sid=self.sid)
        return self.ask(wire.pack(msg))

    def login(self, token, device=0):
        reply = self.ask_msg({"t": "login", "rid": 1, "v": wire.PROTOCOL_VERSION, "token": token,
                              "device": device})
        assert reply["t"] == "login_ok", reply
        self.sid = reply["sid"]
        return reply

    def close(self):
        self.sock.close(0)


@pytest.fixture
def raw(shared_mesh):
    sockets = []

    def make(endpoint=None, node=None):
        """A raw socket to a broker's client endpoint, or to the rpc endpoint of ``node``."""
        if node is not None:
            endpoint = shared_mesh.topo.node(node).endpoint("rpc")
        r = Raw(endpoint or shared_mesh.broker(0), node and shared_mesh.admin.identity, node)
        sockets.append(r)
        return r
    yield make
    for r in sockets:
        r.close()


def assert_still_serving(mesh):
    """A fresh client can still send and a member on the other broker receives it."""
    a = mesh.client(91, broker=0)
    b = mesh.client(92, broker=1)
    msg_id = a.send("lobby", "still alive")
    got = b.recv(timeout=5)
    while got is not None and got["id"] != msg_id:
        got = b.recv(timeout=5)
    assert got is not None and got["text"] == "still alive"
    a.close()
    b.close()


GARBAGE_BEFORE_LOGIN = [
    (b"\xc1", wire.Err.BAD_FRAME),                                  # never-used msgpack byte
    (b"\x92\x01", wire.Err.BAD_FRAME),                              # truncated array
    (msgpack.packb([1, 2, 3]), wire.Err.BAD_FRAME),                 # not a map
    (msgpack.packb({"t": "login"}) + b"\x00", wire.Err.BAD_FRAME),  # trailing bytes
    (msgpack.packb({"rid": 3}), wire.Err.BAD_TYPE),                 # no type
    (msgpack.packb({"t": "shout", "rid": 3}), wire.Err.BAD_TYPE),   # unknown type
    (msgpack.packb({"t": "login", "rid": 3, "v": 1, "device": 0}), wire.Err.BAD_FIELD),
    (msgpack.packb({"t": "login", "rid": 3, "v": 1, "token": 5, "device": 0}), wire.Err.BAD_FIELD),
    (msgpack.packb({"t": "login", "rid": 3, "v": 1, "token": "x", "device": -1}), wire.Err.BAD_FIELD),
    (msgpack.packb({"t": "login", "rid": 3, "v": 1, "token": "x", "device": 2**32}), wire.Err.BAD_FIELD),
    (msgpack.packb({1: 2}), wire.Err.BAD_FRAME),                    # non-string key
    (msgpack.packb({"t": "send", "rid": 3, "channel": "lobby", "ctime": 1, "text": "x"}),
     wire.Err.NOT_LOGGED_IN),
    (msgpack.packb({"t": "hb", "rid": 3}), wire.Err.NOT_LOGGED_IN),
]


@pytest.mark.parametrize("frame,code", GARBAGE_BEFORE_LOGIN)
def test_garbage_and_requests_before_login_get_error_codes(shared_mesh, raw, frame, code):
    reply = raw().ask(frame)
    assert reply["t"] == "err" and reply["code"] == code and reply["msg"]


def test_error_reply_echoes_the_request_id(raw):
    reply = raw().ask_msg({"t": "send", "rid": 4242, "channel": "lobby", "ctime": 1, "text": "x"})
    assert reply["rid"] == 4242 and reply["code"] == wire.Err.NOT_LOGGED_IN


def test_multipart_message_is_refused(raw):
    reply = raw().ask(wire.pack({"t": "hb", "rid": 1}), b"extra")
    assert reply["code"] == wire.Err.BAD_FRAME


def test_forged_expired_and_wrong_scope_tokens_are_refused(shared_mesh, raw):
    secret = shared_mesh.topo.read_secret()
    good = auth.mint(secret, 7, 60)
    forged = good[:-1] + ("0" if good[-1] != "0" else "1")
    cases = [
        (auth.mint(b"not the cluster secret!", 7, 60), wire.Err.AUTH_FAILED),
        (forged, wire.Err.AUTH_FAILED),
        ("v1.user.7.99999999999", wire.Err.AUTH_FAILED),
        ("garbage", wire.Err.AUTH_FAILED),
        (auth.mint(secret, 7, -10), wire.Err.TOKEN_EXPIRED),
        (auth.mint(secret, 7, 60, scope="admin"), wire.Err.AUTH_FAILED),
    ]
    r = raw()
    for token, code in cases:
        reply = r.ask_msg({"t": "login", "rid": 1, "v": wire.PROTOCOL_VERSION, "token": token, "device": 0})
        assert reply["code"] == code, (token, reply)
    # still not logged in after the failures
    reply = r.ask_msg({"t": "hb", "rid": 2})
    assert reply["code"] == wire.Err.NOT_LOGGED_IN


def test_wrong_protocol_version_is_refused_with_the_server_version(shared_mesh, raw):
    reply = raw().ask_msg({"t": "login", "rid": 1, "v": 99, "token": shared_mesh.token(7), "device": 0})
    assert reply["code"] == wire.Err.BAD_VERSION and reply["version"] == wire.PROTOCOL_VERSION


SEND_ERRORS = [
    ({"channel": "no-such-room"}, wire.Err.NO_CHANNEL),
    ({"channel": "bad name!"}, wire.Err.BAD_CHANNEL),
    ({"channel": ""}, wire.Err.BAD_CHANNEL),
    ({"channel": "x" * 65}, wire.Err.BAD_CHANNEL),
    ({"channel": 12}, wire.Err.BAD_FIELD),
    ({"text": ""}, wire.Err.EMPTY_TEXT),
    ({"text": "é" * 721}, wire.Err.TOO_LONG),                      # 1442 bytes of UTF-8
    ({"text": b"bytes"}, wire.Err.BAD_FIELD),
    ({"ctime": -5}, wire.Err.BAD_FIELD),
    ({"ctime": 2**64}, wire.Err.BAD_FRAME),                         # not representable in msgpack ints
    ({"ctime": "now"}, wire.Err.BAD_FIELD),
]


@pytest.mark.parametrize("change,code", SEND_ERRORS)
def test_bad_sends_get_error_codes(shared_mesh, raw, change, code):
    r = raw()
    r.login(shared_mesh.token(8))
    msg = {"t": "send", "rid": 5, "sid": r.sid, "channel": "lobby", "ctime": 1, "text": "ok"}
    msg.update(change)
    try:
        frame = wire.pack(msg)
    except OverflowError:
        frame = b"\xcf" + b"\xff" * 7                                 # an int cut short
    reply = r.ask(frame)
    assert reply["t"] == "err" and reply["code"] == code, reply
    if code == wire.Err.TOO_LONG:
        assert reply["limit"] == 1440


def test_send_by_a_non_member_is_refused(shared_mesh, raw):
    r = raw()
    r.login(shared_mesh.token(555))                  # lobby is 1..100
    reply = r.ask_msg({"t": "send", "rid": 5, "channel": "lobby", "ctime": 1, "text": "hi"})
    assert reply["code"] == wire.Err.NOT_MEMBER


def test_oversized_frame_drops_that_connection_only(shared_mesh, raw):
    """ZMQ_MAXMSGSIZE closes the offender's TCP connection (no reply is possible);
    the broker serves everyone else, and the offender can reconnect and log in."""
    r = raw()
    r.login(shared_mesh.token(9))
    r.sock.send(wire.pack({"t": "send", "rid": 6, "channel": "lobby", "ctime": 1,
                           "text": "x" * 70_000}))
    assert_still_serving(shared_mesh)
    again = r.ask_msg({"t": "login", "rid": 7, "v": wire.PROTOCOL_VERSION, "token": shared_mesh.token(9),
                       "device": 0})
    assert again["t"] == "login_ok" and again["rid"] == 7     # nothing ever answered rid 6


def test_internal_endpoints_answer_garbage_with_errors_and_keep_serving(shared_mesh, raw):
    topo = shared_mesh.topo
    for node in topo.nodes.values():
        r = raw(node=node.id)
        assert r.ask(b"\xc1")["code"] == wire.Err.BAD_FRAME
        assert r.ask_msg({"t": "nope", "rid": 1})["code"] == wire.Err.BAD_TYPE
        assert r.ask_msg({"t": "status", "rid": 2})["t"] == "status"
    counter = raw(node=topo.ids("counter")[0])
    assert counter.ask_msg({"t": "alloc", "rid": 1, "channel": "x", "n": 0})["code"] == wire.Err.BAD_FIELD
    logic = raw(node=topo.logic_for("lobby"))
    forged = {"t": "channel_add", "rid": 1, "auth": auth.mint(b"wrong secret....", 0, 60, scope="admin"),
              "channel": "lobby", "members": [999]}
    assert logic.ask_msg(forged)["code"] == wire.Err.AUTH_FAILED
    user_token = {"t": "channel_add", "rid": 2, "auth": shared_mesh.token(1), "channel": "lobby",
                  "members": [999]}
    assert logic.ask_msg(user_token)["code"] == wire.Err.AUTH_FAILED
    other = [n for n in topo.ids("logic") if n != topo.logic_for("lobby")][0]
    wrong = raw(node=other)
    assert wrong.ask_msg({"t": "sync", "rid": 3, "uin": 1, "channel": "lobby",
                          "after": 0})["code"] == wire.Err.WRONG_OWNER
    assert_still_serving(shared_mesh)
