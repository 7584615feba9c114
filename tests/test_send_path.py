"""The send path on a real mesh: send -> ack -> deliver to every online member, once, in order."""
from __future__ import annotations

import pytest
import zmq
from conftest import free_ports

from nodes.client.blocking import Client, ClientError
from nodes.protocol import wire


def test_two_clients_on_different_brokers_exchange_messages(shared_mesh):
    alice = shared_mesh.client(11, broker=0)
    bob = shared_mesh.client(12, broker=1)
    first = alice.send("lobby", "hi bob")
    got = bob.recv(timeout=5)
    assert got["channel"] == "lobby" and got["id"] == first
    assert (got["uin"], got["device"], got["text"]) == (11, 0, "hi bob")
    second = bob.send("lobby", "hi alice ✓ 你好")
    assert second == first + 1
    got = alice.recv(timeout=5)
    assert (got["id"], got["uin"], got["text"]) == (second, 12, "hi alice ✓ 你好")


def test_ids_are_contiguous_and_each_member_gets_them_in_order(shared_mesh):
    shared_mesh.admin.channel("create", "order", [21, 22, 23])
    senders = [shared_mesh.client(21, broker=0), shared_mesh.client(22, broker=1)]
    reader = shared_mesh.client(23, broker=1)
    ids = [senders[i % 2].send("order", f"m{i}") for i in range(40)]
    assert ids == list(range(ids[0], ids[0] + 40))
    received = [reader.recv(timeout=5)["id"] for _ in range(40)]
    assert received == ids


def test_offline_member_gets_nothing_and_online_members_get_everything(shared_mesh):
    shared_mesh.admin.channel("create", "trio", [31, 32, 33])
    a = shared_mesh.client(31, broker=0)
    b = shared_mesh.client(32, broker=1)
    first = a.send("trio", "while 33 is away")
    assert b.recv(timeout=5)["id"] == first
    c = shared_mesh.client(33, broker=0)           # 33 comes online only now
    second = a.send("trio", "now 33 is here")
    got = c.recv(timeout=5)
    assert got["id"] == second                     # the first message was never pushed to 33
    assert b.recv(timeout=5)["id"] == second


def test_every_device_of_a_member_receives_but_not_the_sending_device(shared_mesh):
    shared_mesh.admin.channel("create", "devices", [41, 42])
    phone = shared_mesh.client(41, broker=0, device=1)
    laptop = shared_mesh.client(41, broker=1, device=2)
    other = shared_mesh.client(42, broker=0)
    msg_id = phone.send("devices", "from my phone")
    assert laptop.recv(timeout=5)["id"] == msg_id
    assert other.recv(timeout=5)["id"] == msg_id
    follow = other.send("devices", "reply")
    assert phone.recv(timeout=5)["id"] == follow      # the phone's first push is the reply, not its own
    assert laptop.recv(timeout=5)["id"] == follow


def test_retried_send_is_acked_with_the_original_id_and_delivered_once(shared_mesh):
    shared_mesh.admin.channel("create", "retry", [51, 52])
    sender = shared_mesh.client(51, broker=0)
    reader = shared_mesh.client(52, broker=1)
    req = {"t": "send", "channel": "retry", "ctime": 1_000_000, "text": "once"}
    first = sender.request(req)
    again = sender.request(req)                        # same (uin, device, client time)
    assert first["id"] == again["id"]
    assert (again["channel"], again["device"], again["ctime"]) == ("retry", 0, 1_000_000)
    assert reader.recv(timeout=5)["id"] == first["id"]
    nxt = sender.send("retry", "next")
    assert reader.recv(timeout=5)["id"] == nxt == first["id"] + 1   # no second copy in between
    older = {"t": "send", "channel": "retry", "ctime": 999_999, "text": "an older clock, a new message"}
    assert sender.request(older)["id"] == nxt + 1


def test_pipelined_retries_in_one_burst_store_one_message(shared_mesh):
    """Retries arriving while the first copy is still waiting for its id share its ack."""
    shared_mesh.admin.channel("create", "burst", [61, 62])
    sender = shared_mesh.client(61, broker=0)
    reader = shared_mesh.client(62, broker=1)
    frame = wire.pack({"t": "send", "rid": 900, "sid": sender.sid, "channel": "burst", "ctime": 5, "text": "x"})
    for _ in range(5):
        sender.sock.send(frame)
    acks = []
    while len(acks) < 5:
        assert sender.sock.poll(5000)
        for reply in wire.unpack_many(sender.sock.recv()):        # replies may come batched
            if reply.get("t") == "ack":
                acks.append(reply["id"])
    assert len(set(acks)) == 1
    assert reader.recv(timeout=5)["id"] == acks[0]
    follow = sender.send("burst", "follow")
    assert reader.recv(timeout=5)["id"] == follow == acks[0] + 1


def test_messages_survive_in_sync_after_delivery(shared_mesh):
    shared_mesh.admin.channel("create", "history", [71])
    c = shared_mesh.client(71)
    ids = [c.send("history", f"h{i}") for i in range(5)]
    page = c.sync("history", ids[1])
    assert [m["id"] for m in page["msgs"]] == ids[2:]
    assert [m["text"] for m in page["msgs"]] == ["h2", "h3", "h4"]
    assert page["last"] == ids[-1] and page["first"] == ids[0] and page["more"] is False


def test_two_raw_clients_can_speak_the_protocol_without_the_library(shared_mesh):
    """What docs/protocol.md promises, done with a bare DEALER and msgpack."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(shared_mesh.broker(1))
    try:
        s.send(wire.pack({"t": "login", "rid": 1, "v": wire.PROTOCOL_VERSION, "token": shared_mesh.token(81),
                          "device": 7}))
        assert s.poll(5000)
        ok = wire.unpack(s.recv())
        assert ok["t"] == "login_ok" and ok["rid"] == 1 and ok["uin"] == 81 and ok["device"] == 7
        s.send(wire.pack({"t": "send", "rid": 2, "sid": ok["sid"], "channel": "lobby", "ctime": 1, "text": "raw"}))
        assert s.poll(5000)
        ack = wire.unpack(s.recv())
        assert ack["t"] == "ack" and ack["rid"] == 2 and ack["channel"] == "lobby" and ack["id"] >= 1
    finally:
        s.close(0)


def test_client_library_reports_unknown_broker_as_busy_after_retries():
    """No broker listening: the blocking send gives up with BUSY after its retries."""
    c = Client(f"tcp://127.0.0.1:{free_ports(1)[0]}", timeout=0.2, retries=2)
    try:
        with pytest.raises(ClientError) as exc:
            c.send("lobby", "nobody home")
        assert exc.value.code == wire.Err.BUSY
    finally:
        c.close(logout=False)
