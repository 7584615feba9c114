"""The server HTTP API without sockets: route table, body validation, the OpenAPI document, API keys,
and the dispatcher's answers before anything reaches a logic node (nodes/broker/httpapi.py)."""
from __future__ import annotations

import json
import os
import stat
from types import SimpleNamespace

import pytest
from openapi_spec_validator import validate as validate_openapi
from test_idc_placement import topo as two_idc_topology

from nodes.broker import apispec, httpapi
from nodes.broker.apispec import PREFIX, ApiError
from nodes.broker.owners import Owners
from nodes.cluster import topology
from nodes.cluster.topology import DEFAULT_LIMITS
from nodes.ops.localtopo import write_topology
from nodes.protocol import apikeys, auth, wire

TABLE = apispec.routes(DEFAULT_LIMITS)


def route(handler):
    return next(r for r in TABLE if r.handler == handler)


# --- the table and the document ---------------------------------------------------------------
def test_openapi_document_validates_and_lists_every_route():
    doc = apispec.openapi(TABLE, "0.1.0")
    validate_openapi(doc)
    for r in TABLE:
        op = doc["paths"][PREFIX + r.path][r.method.lower()]
        assert op["operationId"] == r.handler
        assert str(r.status) in op["responses"]
        assert ("requestBody" in op) == (r.body is not None)
        if r.body is not None:       # the document's schema is the one the dispatcher validates with
            assert op["requestBody"]["content"]["application/json"]["schema"] is r.body
        assert ("security" in op) == r.auth
    assert sum(len(ops) for ops in doc["paths"].values()) == len(TABLE)


def test_every_route_has_a_handler():
    for r in TABLE:
        assert callable(getattr(httpapi.Api, r.handler)), r.handler


def test_paths_match_with_validated_parameters():
    assert route("channel_show").match(PREFIX + "/channels/room%231") == {"name": "room#1"}
    assert route("member_remove").match(PREFIX + "/channels/r/members/42") == {"name": "r", "uin": 42}
    assert route("channel_show").match(PREFIX + "/channels/r/members") is None
    with pytest.raises(ApiError) as e:
        route("member_remove").match(PREFIX + "/channels/r/members/x")
    assert e.value.status == 400
    with pytest.raises(ApiError):
        route("member_remove").match(PREFIX + "/channels/r/members/0")      # uin 0 is the system
    with pytest.raises(ApiError):
        route("channel_show").match(PREFIX + "/channels/bad%20name")


@pytest.mark.parametrize("name", ["a", "x" * 64, "x" * 65, "", "sp ace", "é", "ok_-.:@#9", "a/b"])
def test_channel_pattern_is_the_wire_rule(name):
    try:
        wire.check_channel_name(name)
        wire_ok = True
    except wire.ProtocolError:
        wire_ok = False
    try:
        apispec.validate(apispec.CHANNEL, name)
        api_ok = True
    except ApiError:
        api_ok = False
    assert api_ok == wire_ok


@pytest.mark.parametrize("body,needle", [
    ({}, "needs 'name'"),
    ({"name": "r", "extra": 1}, "unknown field 'extra'"),
    ({"name": 5}, "body.name must be string"),
    ({"name": "r", "members": [1, "2"]}, "body.members[1] must be integer"),
    ({"name": "r", "members": [True]}, "body.members[0] must be integer"),
    ({"name": "r", "members": [2**32]}, "within 1..4294967295"),
    ({"name": "r", "lifetime": 0}, "body.lifetime must be within 1"),
    ([], "body must be object"),
])
def test_bad_bodies_are_refused_with_what_is_wrong(body, needle):
    with pytest.raises(ApiError) as e:
        apispec.validate(route("channel_create").body, body)
    assert e.value.status == 400 and needle in e.value.message, e.value.message


def test_good_bodies_pass_and_limits_come_from_the_topology():
    apispec.validate(route("channel_create").body, {"name": "r", "members": [1, 2], "lifetime": 60.5})
    small = apispec.routes(dict(DEFAULT_LIMITS, max_text=5, max_members=2))
    send = next(r for r in small if r.handler == "system_message")
    apispec.validate(send.body, {"text": "12345"})
    with pytest.raises(ApiError) as e:
        apispec.validate(send.body, {"text": "123456"})
    assert e.value.code == "TOO_LONG"
    with pytest.raises(ApiError) as e:
        apispec.validate(next(r for r in small if r.handler == "members_add").body, {"members": [1, 2, 3]})
    assert e.value.code == "TOO_MANY"


def test_idempotency_key_maps_to_one_client_time_per_channel():
    a = httpapi.idempotent_ctime("room", "k1")
    assert a == httpapi.idempotent_ctime("room", "k1")
    assert a != httpapi.idempotent_ctime("room", "k2") and a != httpapi.idempotent_ctime("other", "k1")
    assert 0 <= a < 2**63


# --- API keys -----------------------------------------------------------------------------------
def test_api_keys_are_stored_as_digests_and_checked(tmp_path):
    path = apikeys.path_for(str(tmp_path / "secret"))
    assert path == str(tmp_path / "api_keys")
    keys = apikeys.ApiKeys(path)
    assert keys.check("anything") is None                     # no file: no key counts
    k1 = apikeys.create(path, "backend")
    assert k1.startswith(apikeys.PREFIX)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert k1 not in open(path).read()
    assert keys.check(k1) == "backend"                        # read again: the file changed
    assert keys.check(k1[:-1] + ("A" if k1[-1] != "A" else "B")) is None
    k2 = apikeys.create(path, "cron")
    assert keys.check(k2) == "cron" and keys.check(k1) == "backend"
    with pytest.raises(ValueError):
        apikeys.create(path, "cron")
    with pytest.raises(ValueError):
        apikeys.create(path, "bad name")
    with open(path) as f:                                     # revoke: delete its line
        lines = [line for line in f if not line.startswith("backend ")]
    with open(path, "w") as f:
        f.writelines(lines)
    assert keys.check(k1) is None and keys.check(k2) == "cron"


# --- the dispatcher, up to the logic node -------------------------------------------------------
class Gate:
    """Collects responses (status, headers, json) -- the socket side is tests/test_httpapi_mesh.py."""

    def __init__(self):
        self.sent = []

    def respond(self, conn, status, body, ctype="text/plain", headers=(), close=False):
        self.sent.append((status, dict(headers), json.loads(body)))

    def http_events(self, conn):
        pass


@pytest.fixture
def api(tmp_path):
    topo = topology.load(write_topology(str(tmp_path), routers=2))      # a uin's presence on both
    auth.ensure_secret(topo.secret_file)
    secret = topo.read_secret()
    asked = []
    node = SimpleNamespace(topo=topo, core=SimpleNamespace(secret=secret, owners=Owners(topo, 0.0)),
                           clock=lambda: 0.0, logics=dict.fromkeys(topo.ids("logic")),
                           to_logic=lambda owner, msg, cb, timeout: asked.append((owner, msg, cb)),
                           ask_router=lambda router, msg, cb, timeout: asked.append((router, msg, cb)))
    gate = Gate()
    a = httpapi.Api(gate, node)
    key = apikeys.create(apikeys.path_for(topo.secret_file), "test")
    return SimpleNamespace(api=a, gate=gate, asked=asked, key=key, topo=topo, secret=secret)


def call(t, method, path, body=None, key=None, ctype=b"application/json", headers=None):
    conn = SimpleNamespace(parked=None, closed=False, cors=())
    hdrs = {b"content-type": ctype, **(headers or {})}
    if key is not None:
        hdrs[b"authorization"] = b"Bearer " + key.encode()
    t.api.handle(conn, method, PREFIX + path, hdrs,
                 body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b"")
    return conn


def test_a_missing_or_wrong_key_gets_401_and_asks_nothing(api):
    call(api, "POST", "/channels", {"name": "r"})
    call(api, "POST", "/channels", {"name": "r"}, key="imk_wrong")
    call(api, "POST", "/channels", b"not json", key="imk_wrong")         # 401 before the body is read
    assert [s for s, _h, _b in api.gate.sent] == [401, 401, 401]
    assert all(b["error"] == "UNAUTHORIZED" and h["www-authenticate"].startswith("Bearer")
               for _s, h, b in api.gate.sent)
    assert api.asked == []


@pytest.mark.parametrize("method,path,body,ctype,status,code", [
    ("POST", "/channels", b"{nope", b"application/json", 400, "BAD_JSON"),
    ("POST", "/channels", {"name": "r"}, b"text/plain", 415, "UNSUPPORTED_MEDIA_TYPE"),
    ("POST", "/channels", {"name": "r r"}, b"application/json", 400, "BAD_REQUEST"),
    ("PUT", "/channels", {"name": "r"}, b"application/json", 405, "METHOD_NOT_ALLOWED"),
    ("GET", "/nothing", None, b"application/json", 404, "NO_ROUTE"),
    ("POST", "/tokens", {"uin": 0}, b"application/json", 400, "BAD_REQUEST"),
])
def test_bad_requests_get_clear_4xx_and_ask_nothing(api, method, path, body, ctype, status, code):
    call(api, method, path, body, key=api.key, ctype=ctype)
    (got, _h, reply), = api.gate.sent
    assert (got, reply["error"]) == (status, code), reply
    assert reply["message"] and api.asked == []


def test_a_call_parks_until_the_logic_node_answers(api):
    conn = call(api, "POST", "/channels", {"name": "room", "members": [2, 1, 2]}, key=api.key)
    assert api.gate.sent == [] and conn.parked is httpapi.PARKED
    (owner, msg, done), = api.asked
    assert owner == api.topo.logic_for("room")
    assert msg["t"] == "channel_create" and msg["members"] == [1, 2] and msg["channel"] == "room"
    assert auth.verify(api.secret, msg["auth"], scope="admin") == 0
    room = {"channel": "room", "members": [1, 2], "last": 0, "lifetime": None, "kind": "room",
            "roles": {"1": "member", "2": "member"}}
    done(dict(room, t="channel", rid=1))
    assert api.gate.sent == [(201, {}, room)]
    assert conn.parked is None and api.api.inflight == 0


@pytest.mark.parametrize("code,status", [("CHANNEL_EXISTS", 409), ("NO_CHANNEL", 404), ("UNAVAILABLE", 503)])
def test_logic_errors_become_http_statuses(api, code, status):
    call(api, "POST", "/channels", {"name": "room"}, key=api.key)
    api.asked[0][2](wire.error(1, code, "why"))
    assert api.gate.sent == [(status, {}, {"error": code, "message": "why"})]


def test_system_message_uses_the_idempotency_key_as_client_time(api):
    for _ in range(2):
        call(api, "POST", "/channels/room/messages", {"text": "hi"}, key=api.key,
             headers={b"idempotency-key": b"k-1"})
    (_, first, _), (_, second, _) = api.asked
    assert first["t"] == "system_send" and first["ctime"] == second["ctime"] == httpapi.idempotent_ctime("room", "k-1")


def test_channel_list_merges_every_logic_node_and_names_the_silent(api):
    call(api, "GET", "/channels", key=api.key)
    logics = sorted(api.topo.ids("logic"))
    assert sorted(owner for owner, _m, _cb in api.asked) == logics
    for i, (_owner, _msg, done) in enumerate(api.asked):
        done(wire.error(1, "UNAVAILABLE", "x") if i == 0 else {"t": "channels", "channels": ["b", "a"]})
    (status, _h, reply), = api.gate.sent
    assert status == 200 and reply == {"channels": ["a", "b"], "unavailable": [api.asked[0][0]]}


def test_token_mints_a_login_token(api):
    call(api, "POST", "/tokens", {"uin": 7, "lifetime": 60}, key=api.key)
    (status, _h, reply), = api.gate.sent
    assert status == 201 and reply["uin"] == 7
    assert auth.verify(api.secret, reply["token"]) == 7


def test_the_document_is_served_without_a_key(api):
    call(api, "GET", "/openapi.json")
    (status, _h, doc), = api.gate.sent
    assert status == 200 and doc["openapi"].startswith("3.")


# --- kicking a user's sessions: its routers of every IDC ------------------------------------------
def test_a_users_routers_are_asked_in_every_idc():
    t = two_idc_topology()
    for uin in range(1, 20):
        by_idc = httpapi.routers_by_idc(t, uin)
        assert by_idc == {"east": t.routers_for(uin, "east"), "west": t.routers_for(uin, "west")}
        assert len(by_idc["east"]) == 2 and all(r.startswith("east-") for r in by_idc["east"])


def test_kick_asks_the_routers_and_counts_each_session_once(api):
    conn = call(api, "POST", "/users/7/kick", {"reason": "account closed"}, key=api.key)
    routers = [r for rs in httpapi.routers_by_idc(api.topo, 7).values() for r in rs]
    assert sorted(r for r, _m, _cb in api.asked) == sorted(routers) and conn.parked is httpapi.PARKED
    for _router, msg, done in api.asked:
        assert (msg["t"], msg["uin"], msg["msg"]) == ("kick_user", 7, "account closed")
        assert auth.verify(api.secret, msg["auth"], scope="admin") == 0
        # replicated presence: both routers of an IDC hold (and kick) the same sessions
        done({"t": "kicks", "rid": 1, "sessions": [[0, "b1"], [3, "b2"]]})
    assert api.gate.sent == [(200, {}, {"uin": 7, "sessions": 2})] and api.api.inflight == 0


def test_kick_without_a_body_gives_the_client_a_default_reason(api):
    call(api, "POST", "/users/7/kick", b"", key=api.key, ctype=b"")
    assert api.asked and all(m["msg"] == httpapi.KICK_TEXT for _r, m, _cb in api.asked)
    for _r, _m, done in api.asked:
        done({"t": "kicks", "rid": 1, "sessions": []})
    assert api.gate.sent == [(200, {}, {"uin": 7, "sessions": 0})]


def test_kick_is_unavailable_when_no_router_of_an_idc_answered(api):
    call(api, "POST", "/users/7/kick", {}, key=api.key)
    for _r, _m, done in api.asked:
        done(wire.error(1, wire.Err.UNAVAILABLE, "timeout"))
    (status, _h, reply), = api.gate.sent
    assert status == 503 and reply["error"] == "UNAVAILABLE" and "retry" in reply["message"]


@pytest.mark.parametrize("path,body,code", [
    ("/users/0/kick", {}, "BAD_REQUEST"),
    ("/users/7/kick", {"reason": 5}, "BAD_REQUEST"),
    ("/users/7/kick", {"reason": "x" * 201}, "TOO_LONG"),
    ("/users/7/kick", {"why": "x"}, "BAD_REQUEST"),
])
def test_bad_kicks_ask_no_router(api, path, body, code):
    call(api, "POST", path, body, key=api.key)
    (status, _h, reply), = api.gate.sent
    assert (status, reply["error"]) == (400, code) and api.asked == []


# --- roles ------------------------------------------------------------------------------------
def test_the_role_route_is_in_the_document_with_its_body():
    doc = apispec.openapi(TABLE, "0.1.0")
    op = doc["paths"][PREFIX + "/channels/{name}/members/{uin}/role"]["put"]
    assert op["operationId"] == "member_role"
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["role"] and body["properties"]["role"]["enum"] == ["owner", "admin", "member"]
    shown = doc["paths"][PREFIX + "/channels/{name}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert {"kind", "roles"} <= set(shown["schema"]["required"])
    assert route("member_role").match(PREFIX + "/channels/g/members/7/role") == {"name": "g", "uin": 7}


@pytest.mark.parametrize("path,body,code", [
    ("/channels/g/members/7/role", {"role": "king"}, "BAD_REQUEST"),
    ("/channels/g/members/7/role", {}, "BAD_REQUEST"),
    ("/channels/g/members/7/role", {"role": "admin", "uin": 8}, "BAD_REQUEST"),
    ("/channels/g/members/0/role", {"role": "admin"}, "BAD_REQUEST"),
])
def test_bad_role_calls_get_400_and_ask_nothing(api, path, body, code):
    call(api, "PUT", path, body, key=api.key)
    (status, _h, reply), = api.gate.sent
    assert (status, reply["error"]) == (400, code) and api.asked == [], reply


def test_a_role_call_asks_the_owner_and_answers_the_member(api):
    call(api, "PUT", "/channels/grp:1:5/members/7/role", {"role": "owner"}, key=api.key)
    (owner, msg, done), = api.asked
    assert owner == api.topo.logic_for("grp:1:5")
    assert (msg["t"], msg["channel"], msg["uin"], msg["role"]) == ("channel_role", "grp:1:5", 7, "owner")
    done({"t": "channel_role", "rid": 1, "channel": "grp:1:5", "uin": 7, "role": "owner"})
    assert api.gate.sent == [(200, {}, {"channel": "grp:1:5", "uin": 7, "role": "owner"})]


@pytest.mark.parametrize("code,status", [("FORBIDDEN", 409), ("NOT_MEMBER", 404), ("NO_CHANNEL", 404),
                                         ("BAD_FIELD", 400)])
def test_role_refusals_become_http_statuses(api, code, status):
    call(api, "PUT", "/channels/room/members/7/role", {"role": "admin"}, key=api.key)
    api.asked[0][2](wire.error(1, code, "why"))
    assert api.gate.sent == [(status, {}, {"error": code, "message": "why"})]


def test_show_answers_kind_and_roles(api):
    call(api, "GET", "/channels/grp:1:5", key=api.key)
    api.asked[0][2]({"t": "channel", "rid": 1, "channel": "grp:1:5", "members": [1, 2], "last": 3,
                     "lifetime": None, "kind": "group", "roles": {"1": "owner", "2": "member"}})
    assert api.gate.sent == [(200, {}, {"channel": "grp:1:5", "members": [1, 2], "last": 3, "lifetime": None,
                                        "kind": "group", "roles": {"1": "owner", "2": "member"}})]
