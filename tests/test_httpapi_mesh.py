"""The server HTTP API against a real mesh: docs/api.md's curl examples, run in order.

A channel is created, members added, a member of a group (made by a user with the client
library: the API makes rooms) made its owner, a system message posted that `bin/chat tail`
prints and a logged-in member gets pushed; a retry with the same Idempotency-Key
stores it once; a wrong key gets 401 and changes nothing; the minted token logs in;
a kick ends the user's sessions on both brokers and the client library stops for good;
the deleted channel is gone.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import shutil
import subprocess
import time

import msgpack
import pytest
from conftest import ROOT, running_mesh
from test_cli import run
from websockets.sync.client import connect

from nodes.client.aclient import AsyncClient
from nodes.client.blocking import ClientError
from nodes.protocol import wire

DOC = os.path.join(ROOT, "docs", "api.md")
pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="docs/api.md's examples need curl")


@pytest.fixture(scope="module")
def api_mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory, "api", ws=True) as harness:
        yield harness


def curl_blocks() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", open(DOC).read(), re.S)
    return [b for b in blocks if b.lstrip().startswith("curl ")]


def http_call(mesh, method, path, key, body=None):
    host, port = mesh.topo.of_type("broker")[0].endpoints["ws"][5:].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        conn.request(method, "/api/v1" + path, body=None if body is None else json.dumps(body), headers=headers)
        res = conn.getresponse()
        return res.status, json.loads(res.read())
    finally:
        conn.close()


def ws_login(ws, token, device=0):
    ws.send(msgpack.packb({"t": "login", "rid": 1, "v": wire.PROTOCOL_VERSION, "token": token, "device": device}))
    return msgpack.unpackb(ws.recv(timeout=5))


def test_the_curl_examples_of_docs_api_md(api_mesh):
    mesh = api_mesh
    made = run("mesh", "apikey", "-c", mesh.topo.path, "--name", "docs-test")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    ws_url = mesh.topo.of_type("broker")[1].endpoints["ws"]          # the member is on the other broker
    env = dict(os.environ, API=f"http://{mesh.topo.of_type('broker')[0].endpoints['ws'][5:]}/api/v1", KEY=key)

    def curl(block):
        r = subprocess.run(["bash", "-c", block], capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == 0, (block, r.stdout, r.stderr)
        return json.loads(r.stdout)

    blocks = curl_blocks()
    assert len(blocks) == 11, "docs/api.md's examples changed: update this test"
    create, add, remove, show, role, message, online, listing, token, kick, delete = blocks

    async def make_group():                                          # what docs/api.md's $GROUP is
        lib = AsyncClient([mesh.broker(0)], mesh.token(1), device=3)
        await lib.connect()
        made = await lib.create_group([2, 3])
        await lib.close()
        return made["channel"]
    group = env["GROUP"] = asyncio.run(asyncio.wait_for(make_group(), 30))

    # a wrong key: 401, and nothing is created
    wrong = subprocess.run(["bash", "-c", create], capture_output=True, text=True,
                           env=dict(env, KEY="imk_not-a-key"), timeout=30)
    assert wrong.returncode != 0 and json.loads(wrong.stdout)["error"] == "UNAUTHORIZED"
    assert http_call(mesh, "GET", "/channels/support-42", key) == (404, {"error": "NO_CHANNEL",
                                                                        "message": "no channel 'support-42'"})

    assert curl(create)["members"] == [1]
    assert curl(add)["members"] == [1, 2, 3]
    assert curl(remove)["members"] == [1, 2]
    assert curl(show) == {"channel": "support-42", "members": [1, 2], "last": 0, "lifetime": None,
                          "kind": "room", "roles": {"1": "member", "2": "member"}}

    # roles: user 2 becomes the group's owner, user 1 (its creator) admin
    assert curl(role) == {"channel": group, "uin": 2, "role": "owner"}
    shown = http_call(mesh, "GET", f"/channels/{group}", key)
    assert shown[0] == 200 and (shown[1]["kind"], shown[1]["roles"]) == (
        "group", {"1": "admin", "2": "owner", "3": "member"})
    stranger = http_call(mesh, "PUT", f"/channels/{group}/members/9/role", key, {"role": "admin"})
    assert (stranger[0], stranger[1]["error"]) == (404, "NOT_MEMBER")
    demoted = http_call(mesh, "PUT", f"/channels/{group}/members/2/role", key, {"role": "member"})
    assert (demoted[0], demoted[1]["error"]) == (409, "FORBIDDEN")  # the owner's role: only by a new owner
    refused = http_call(mesh, "PUT", "/channels/support-42/members/1/role", key, {"role": "admin"})
    assert refused[0] == 409 and refused[1]["error"] == "FORBIDDEN" and "room" in refused[1]["message"]
    assert http_call(mesh, "PUT", f"/channels/{group}/members/3/role", key, {"role": "king"})[0] == 400
    assert http_call(mesh, "GET", f"/channels/{group}", key)[1]["roles"] == {"1": "admin", "2": "owner", "3": "member"}

    with connect(ws_url + "/ws") as ws:                              # member 2 online: pushed and listed
        assert ws_login(ws, mesh.token(2), device=5)["t"] == "login_ok"
        mesh.wait_presence(2, 5, present=True)
        sent = curl(message)
        assert sent["channel"] == "support-42" and sent["id"] >= 1 and sent["duplicate"] is False
        pushed = msgpack.unpackb(ws.recv(timeout=5))
        assert (pushed["t"], pushed["uin"], pushed["device"], pushed["id"]) == ("msg", 0, 0, sent["id"])
        assert pushed["text"] == "Ticket #42 opened: an agent will answer soon"
        deadline = time.monotonic() + 5
        while True:                                                  # the logic node's presence replica
            seen = curl(online)
            if seen["online"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert seen == {"channel": "support-42", "online": {"2": {"5": mesh.topo.of_type("broker")[1].id}}}

    again = curl(message)                                            # a retry, same Idempotency-Key
    assert (again["id"], again["duplicate"]) == (sent["id"], True)
    tail = run("chat", "tail", "-c", mesh.topo.path, "--uin", 1, "--channel", "support-42", "--count", 1,
               "--since", 0, "--timeout", 20)
    assert tail.returncode == 0, tail.stderr
    assert f"[support-42 #{sent['id']}] 0/0" in tail.stdout and "Ticket #42 opened" in tail.stdout, tail.stdout
    assert http_call(mesh, "GET", "/channels/support-42", key)[1]["last"] == sent["id"]   # stored once

    assert "support-42" in curl(listing)["channels"] and curl(listing)["unavailable"] == []

    minted = curl(token)
    with connect(ws_url + "/ws") as ws:
        assert ws_login(ws, minted["token"])["uin"] == 2
    for device in (0, 5):                                            # the web sessions above are over
        mesh.wait_presence(2, device, present=False)

    # kick: user 2's sessions on both brokers end; the library client stops for good
    async def kicked_everywhere():
        lib = AsyncClient([mesh.broker(1)], mesh.token(2), device=7)     # not the API's broker
        await lib.connect()
        plain = mesh.client(2, broker=0, device=9)
        mesh.wait_presence(2, 7, present=True)
        done = await asyncio.to_thread(curl, kick)
        assert done == {"uin": 2, "sessions": 2}
        deadline = time.monotonic() + 10
        while lib.link.fatal is None:
            assert time.monotonic() < deadline, "the kicked client was never told"
            await asyncio.sleep(0.02)
        assert lib.link.fatal.code == "KICKED" and lib.link.fatal.reply["reason"] == "kicked"
        assert lib.link.fatal.reply["msg"] == "account suspended"
        with pytest.raises(ClientError) as stopped:                  # no silent login with the same token
            await lib.sync("lobby", 0)
        assert stopped.value.code == "KICKED" and lib.reconnects == 0
        with pytest.raises(ClientError) as gone:                     # the session on the API's broker too
            plain.request({"t": "hb", "channels": {}})
        assert (gone.value.code, gone.value.reply.get("reason")) == ("NOT_LOGGED_IN", "kicked")
        assert any(e.get("t") == "kicked" and e["reason"] == "kicked" for e in plain.events)
        for device in (7, 9):
            mesh.wait_presence(2, device, present=False)
        assert await asyncio.to_thread(curl, kick) == {"uin": 2, "sessions": 0}
        await lib.close(logout=False)
    asyncio.run(asyncio.wait_for(kicked_everywhere(), 60))

    assert curl(delete) == {"deleted": "support-42"}
    assert http_call(mesh, "GET", "/channels/support-42", key)[0] == 404
    assert "support-42" not in curl(listing)["channels"]
    gone = run("chat", "tail", "-c", mesh.topo.path, "--uin", 1, "--channel", "support-42", "--count", 1,
               "--timeout", 10)
    assert gone.returncode != 0 and "NO_CHANNEL" in gone.stderr, gone.stderr


def test_openapi_document_is_served_and_valid(api_mesh):
    from openapi_spec_validator import validate
    host, port = api_mesh.topo.of_type("broker")[0].endpoints["ws"][5:].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/api/v1/openapi.json")
    res = conn.getresponse()
    assert res.status == 200 and res.getheader("content-type") == "application/json"
    validate(json.loads(res.read()))
