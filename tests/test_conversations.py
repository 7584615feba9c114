"""The conversation layer's logic side on a real mesh (2 brokers, 2 logic nodes): a DM created at
its owner, a read cursor pushed to the user's other device and as a receipt to the other user
through the brokers' delivery, my_channels asked of every logic node, and a removed group member
getting no push any more.  The broker does not forward these requests yet (helper C's part):
the test asks the logic nodes directly, as a broker will, with the admin keys."""
from __future__ import annotations

import time

from conftest import assert_no_tracebacks

from nodes.protocol.names import dm as dm_name, group as group_name


def ask(mesh, node, **msg):
    reply = mesh.admin.call(node, msg, timeout=5)
    assert reply is not None, f"no answer from {node} to {msg}"
    return reply


def event(client, kind, timeout=5.0):
    """The next notice/push of this kind the client gets (not ``msg``), within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        for m in list(client.events):
            if m.get("t") == kind:
                client.events.remove(m)
                return m
        if not client._pump(deadline - time.monotonic()):
            return None


def test_dm_read_state_receipts_and_my_channels_across_brokers(shared_mesh):
    name = dm_name(61, 62)
    owner = shared_mesh.owner_of(name)
    made = ask(shared_mesh, owner, t="create", uin=61, device=1, ctime=1000, kind="dm", **{"with": 62})
    assert (made["t"], made["channel"], made["created"], made["members"]) == ("create", name, True, [61, 62])
    again = ask(shared_mesh, owner, t="create", uin=62, device=0, ctime=5, kind="dm", **{"with": 61})
    assert (again["channel"], again["created"]) == (name, False)

    phone = shared_mesh.client(61, broker=0, device=1)
    laptop = shared_mesh.client(61, broker=1, device=2)
    bob = shared_mesh.client(62, broker=1)
    first = bob.send(name, "hello alice")
    second = bob.send(name, "are you there?")
    assert phone.recv(timeout=5)["id"] == first and laptop.recv(timeout=5)["id"] == first

    others = [n for n in shared_mesh.topo.ids("logic") if n != owner]
    items = ask(shared_mesh, owner, t="my_channels", uin=61)["items"]
    dm = next(i for i in items if i["channel"] == name)
    assert (dm["kind"], dm["unread"], dm["last"], dm["preview"]["text"]) == ("dm", 2, second, "are you there?")
    assert all(i["channel"] != name for n in others for i in ask(shared_mesh, n, t="my_channels", uin=61)["items"])

    read = ask(shared_mesh, owner, t="read", uin=61, device=1, channel=name, id=first)
    assert (read["t"], read["id"]) == ("read", first)
    assert event(laptop, "read") == {"t": "read", "channel": name, "uin": 61, "id": first}
    assert event(bob, "receipt") == {"t": "receipt", "channel": name, "uin": 61, "id": first}
    assert event(phone, "read", timeout=0.5) is None                # not to the device that read
    assert ask(shared_mesh, owner, t="receipts", uin=62, channel=name, id=first)["read_by"] == [61]
    dm = next(i for i in ask(shared_mesh, owner, t="my_channels", uin=61)["items"] if i["channel"] == name)
    assert (dm["read"], dm["unread"]) == (first, 1)
    assert_no_tracebacks(shared_mesh.mesh)


def test_a_removed_group_member_gets_no_push_and_cannot_sync(shared_mesh):
    name = group_name(71, 42)
    owner = shared_mesh.owner_of(name)
    made = ask(shared_mesh, owner, t="create", uin=71, device=0, ctime=42, kind="group", members=[72, 73],
               title="team")
    assert (made["channel"], made["role"], made["title"]) == (name, "owner", "team")
    keeps, goes = shared_mesh.client(72, broker=0), shared_mesh.client(73, broker=1)
    sender = shared_mesh.client(71, broker=1)
    before = sender.send(name, "all of us")
    assert goes.recv(timeout=5)["id"] == before and keeps.recv(timeout=5)["id"] == before
    refused = ask(shared_mesh, owner, t="remove", uin=72, device=0, ctime=1, channel=name, uins=[73])
    assert refused["code"] == "FORBIDDEN"
    removed = ask(shared_mesh, owner, t="remove", uin=71, device=0, ctime=43, channel=name, uins=[73])
    assert removed["removed"] == [73]
    after = sender.send(name, "without 73")
    assert keeps.recv(timeout=5)["id"] == after
    assert goes.recv(timeout=1) is None
    sync = ask(shared_mesh, owner, t="sync", uin=73, channel=name, after=0)
    assert sync["code"] == "NOT_MEMBER"
    assert_no_tracebacks(shared_mesh.mesh)
