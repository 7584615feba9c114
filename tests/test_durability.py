"""Acked means stored, and a restarted counter never reissues an id (real nodes, SIGKILL)."""
from __future__ import annotations

import signal

import pytest
from conftest import served

from nodes.client.blocking import ClientError


def test_counter_restart_does_not_reissue_ids(make_mesh):
    m = make_mesh(brokers=1, logics=1, limits={"id_block": 4})
    counter = m.topo.ids("counter")[0]
    before = m.admin.call(counter, {"t": "alloc", "channel": "probe", "n": 10, "have": 1})
    assert (before["start"], before["end"]) == (1, 11)
    sender = m.client(1)
    ids = [sender.send("lobby", f"a{i}") for i in range(10)]     # crosses several 4-id leases
    m.mesh.signal(counter, signal.SIGKILL)
    m.mesh.start([counter])
    m.mesh.wait_ready(15, [counter])
    after = m.admin.call(counter, {"t": "alloc", "channel": "probe", "n": 10, "have": before["end"]})
    assert after["start"] >= before["end"]
    ids += [sender.send("lobby", f"b{i}") for i in range(10)]
    assert ids == sorted(set(ids))                                 # strictly increasing, no reuse
    assert ids[:10] == list(range(1, 11))


def test_sigkill_of_logic_after_ack_loses_nothing(make_mesh):
    m = make_mesh(brokers=1, logics=1)
    logic = m.owner_of("lobby")
    sender = m.client(1)
    acked = {}
    for i in range(50):
        req = {"t": "send", "channel": "lobby", "ctime": 10_000 + i, "text": f"durable {i}"}
        acked[req["ctime"]] = sender.request(req)["id"]
    m.mesh.signal(logic, signal.SIGKILL)
    m.mesh.start([logic])
    m.mesh.wait_ready(15)
    page = served(lambda: sender.sync("lobby", 0))
    assert [(msg["ctime"], msg["id"]) for msg in page["msgs"]] == sorted(acked.items())
    assert [msg["text"] for msg in page["msgs"]] == [f"durable {i}" for i in range(50)]
    # the dedup record survived too: the last send retried is acked with its original id
    retry = sender.request({"t": "send", "channel": "lobby", "ctime": 10_049, "text": "durable 49"})
    assert retry["id"] == acked[10_049]
    # and numbering continues from the same leased block: no gap after a restart
    assert sender.send("lobby", "after restart") == acked[10_049] + 1


def test_membership_changes_persist_across_logic_restart(make_mesh):
    m = make_mesh(brokers=1, logics=1)
    m.admin.channel("create", "club", [1, 2])
    m.admin.channel("add", "club", [3, 4])
    m.admin.channel("remove", "club", [2])
    logic = m.owner_of("club")
    m.mesh.signal(logic, signal.SIGKILL)
    m.mesh.start([logic])
    m.mesh.wait_ready(15)
    assert m.admin.channel("show", "club")["members"] == [1, 3, 4]


def test_a_send_waiting_for_the_counter_is_not_lost_and_its_retry_is_acked_once(make_mesh):
    """A new channel has no id block yet: with the counter down its first send waits.
    The client's retry (same client time) is acked once the counter is back, and
    exactly one message is stored."""
    m = make_mesh(brokers=1, logics=1, limits={"request_timeout": 1.0})
    counter = m.topo.ids("counter")[0]
    sender = m.client(1)
    m.mesh.signal(counter, signal.SIGKILL)
    m.admin.channel("create", "fresh", [1])
    req = {"t": "send", "channel": "fresh", "ctime": sender.clock.next(), "text": "patience"}
    with pytest.raises(ClientError) as exc:
        sender.request(req, timeout=3)
    assert exc.value.code == "UNAVAILABLE"          # the broker gave up waiting, not the client
    m.mesh.start([counter])
    m.mesh.wait_ready(15, [counter])
    reply = None
    for _attempt in range(5):                 # a client retries UNAVAILABLE with the same ctime
        try:
            reply = sender.request(req, timeout=10)
            break
        except ClientError as exc:
            assert exc.code == "UNAVAILABLE"
    assert reply is not None and reply["id"] == 1
    assert [msg["id"] for msg in sender.sync("fresh", 0)["msgs"]] == [1]
    assert sender.send("fresh", "next") == 2
