"""Heartbeats, presence and push-pull sync on real nodes, with the asyncio client library."""
from __future__ import annotations

import asyncio
import signal
import time

import pytest

from nodes.client.aclient import AsyncClient
from nodes.client.blocking import ClientError

FAST_HB = {"wired": 0.4, "min": 0.2, "max": 1.0, "session_timeout_factor": 3}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def collect(client, n, timeout=15.0):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        msg = await client.recv(timeout=max(0.01, deadline - time.monotonic()))
        assert msg is not None, f"got {len(out)} of {n}: {[m['id'] for m in out]}"
        out.append(msg)
    return out


async def sender_and_reader(m, reader_uin=2, **kw):
    """Users 1 and ``reader_uin`` logged in, the reader seen online by every logic node."""
    sender = AsyncClient(endpoints(m), m.token(1), **kw)
    reader = AsyncClient(endpoints(m), m.token(reader_uin), **kw)
    await sender.connect()
    await reader.connect()
    m.wait_presence(reader_uin, 0, present=True)
    return sender, reader


def endpoints(m, first=0):
    eps = [b.endpoint("client") for b in m.topo.of_type("broker")]
    return eps[first:] + eps[:first]


def test_client_offline_during_50_messages_catches_up_through_the_other_broker(make_mesh):
    m = make_mesh()

    async def main():
        sender = AsyncClient(endpoints(m, 0), m.token(1))
        reader = AsyncClient(endpoints(m, 0), m.token(2))
        await sender.connect()
        await reader.connect()
        m.wait_presence(2, 0, present=True)
        first = await sender.send("lobby", "before")
        assert (await collect(reader, 1))[0]["id"] == first
        window = reader.windows.snapshot()
        await reader.close()                                   # offline
        m.wait_presence(2, 0, present=False)
        sent = [await sender.send("lobby", f"missed {i}") for i in range(50)]
        back = AsyncClient(endpoints(m, 1), m.token(2))        # the other broker
        await back.connect()
        t0 = time.monotonic()
        back.watch("lobby", since=window["lobby"])             # the app kept its window
        got = await collect(back, 50)
        took = time.monotonic() - t0
        assert [g["id"] for g in got] == sent
        assert [g["text"] for g in got] == [f"missed {i}" for i in range(50)]
        m.wait_presence(2, 0, present=True)
        after = await sender.send("lobby", "after")
        assert (await collect(back, 1))[0]["id"] == after     # nothing repeated in between
        print(f"50-message catch-up took {took * 1000:.1f} ms")
        await back.close()
        await sender.close()
    run(main())


def test_a_push_lost_on_purpose_is_recovered_by_the_next_heartbeat(make_mesh):
    m = make_mesh(brokers=1, logics=1)

    async def main():
        sender, reader = await sender_and_reader(m)
        first = await sender.send("lobby", "one")
        assert (await collect(reader, 1))[0]["id"] == first
        lost = []
        reader.drop_push = lambda msg: lost.append(msg["id"]) or True
        dropped = await sender.send("lobby", "lost push")
        while not lost:                                        # the push reached the client ...
            await asyncio.sleep(0.01)
        reader.drop_push = None
        assert await reader.recv(timeout=0) is None             # ... and was thrown away
        await reader.heartbeat()                               # the next heartbeat syncs it
        got = await collect(reader, 1)
        assert got[0]["id"] == dropped and got[0]["text"] == "lost push"
        # a lost push in the middle is noticed by the gap at the next push
        reader.drop_push = lambda msg: msg["text"] == "middle"
        ids = [await sender.send("lobby", t) for t in ("middle", "next")]
        got = await collect(reader, 2)
        assert [g["id"] for g in got] == ids
        await reader.close()
        await sender.close()
    run(main())


def test_silent_session_goes_offline_after_three_intervals(make_mesh):
    m = make_mesh(brokers=1, logics=1, heartbeat=FAST_HB)
    router = m.topo.ids("router")[0]
    t0 = time.monotonic()                                      # before the login sets the deadline
    c = m.client(5)                                            # blocking client: never heartbeats
    assert c.interval == 0.4
    m.wait_presence(5, 0, present=False, timeout=10)
    assert time.monotonic() - t0 >= 3 * 0.4                    # not before its deadline
    assert m.admin.status("b1")["kicked"]["expired"] >= 1      # the broker (the authority) did it
    assert m.admin.status(router)["sessions"] == 0


def test_heartbeating_session_stays_online_and_intervals_adapt(make_mesh):
    m = make_mesh(brokers=1, logics=1, heartbeat=FAST_HB)

    async def main():
        c = AsyncClient(endpoints(m), m.token(6))
        await c.connect()                                      # login + one heartbeat: 2 beats so far
        assert c.interval == 0.4                               # fewer than 3 beats: the initial interval
        intervals = []
        for _ in range(8):                                     # beat much faster than asked
            await asyncio.sleep(0.02)
            intervals.append((await c.heartbeat())["interval"])
        assert all(0.2 <= i <= 1.0 for i in intervals)
        assert intervals.count(0.2) >= 4                       # k*(iv1+iv2)/2 << 0.2: clamped to min
        m.wait_presence(6, 0, present=True)
        await c.close()
    run(main())


def test_trimmed_queue_moves_the_window_without_endless_resync(make_mesh):
    m = make_mesh(brokers=1, logics=1, limits={"channel_queue": 10})

    async def main():
        sender = AsyncClient(endpoints(m), m.token(1))
        await sender.connect()
        ids = [await sender.send("lobby", f"m{i}") for i in range(30)]
        late = AsyncClient(endpoints(m), m.token(3))
        await late.connect()
        late.watch("lobby", since=0)                           # far behind the queue's head
        got = await collect(late, 10)
        assert [g["id"] for g in got] == ids[-10:]
        assert late.windows.last["lobby"] == ids[-1]
        syncs = late.syncs
        for _ in range(3):
            ack = await late.heartbeat()
            assert ack["first"]["lobby"] == ids[-10] and ack["heads"]["lobby"] == ids[-1]
        assert late.syncs == syncs                             # caught up: no more syncs
        assert await late.recv(timeout=0.2) is None
        await late.close()
        await sender.close()
    run(main())


def test_heartbeat_bad_input(make_mesh):
    m = make_mesh(brokers=1, logics=1, heartbeat={"max_channels": 3},
                  channels={"lobby": {"members": "1-100"}, "private": {"members": [50]}})
    c = m.client(7)
    ack = c.request({"t": "hb", "net": "carrier-pigeon",
                     "channels": {"lobby": 10**12, "private": 0, "nowhere": 0}})
    assert ack["t"] == "hb_ack" and ack["interval"] == 30.0              # unknown net: default
    assert sorted(ack["not_member"]) == ["nowhere", "private"]
    assert ack["heads"]["lobby"] == 0 and ack["more"] == []               # id beyond newest: no sync
    too_many = {f"c{i}": 0 for i in range(4)}
    with pytest.raises(ClientError) as err:
        c.request({"t": "hb", "channels": too_many})
    assert err.value.code == "TOO_MANY" and err.value.reply["limit"] == 3
    for bad in ({"lobby": -1}, {"bad name": 1}, [1, 2]):
        with pytest.raises(ClientError) as err:
            c.request({"t": "hb", "channels": bad})
        assert err.value.code in ("BAD_FIELD", "BAD_CHANNEL"), bad
    assert c.heartbeat()["t"] == "hb_ack"                                  # session kept


def test_client_whose_broker_is_killed_fails_over_and_misses_nothing(make_mesh):
    m = make_mesh(heartbeat=FAST_HB)

    async def main():
        sender = AsyncClient(endpoints(m, 1), m.token(1), timeout=1.0)
        reader = AsyncClient(endpoints(m, 0), m.token(2), timeout=1.0)
        await sender.connect()
        await reader.connect()
        assert reader.endpoint == endpoints(m, 0)[0]
        m.wait_presence(2, 0, present=True)
        ids = [await sender.send("lobby", f"a{i}") for i in range(5)]
        assert [g["id"] for g in await collect(reader, 5)] == ids
        m.mesh.signal(m.topo.ids("broker")[0], signal.SIGKILL)
        ids = [await sender.send("lobby", f"b{i}") for i in range(20)]
        got = await collect(reader, 20, timeout=20)
        assert [g["id"] for g in got] == ids
        assert reader.reconnects >= 1 and reader.endpoint == endpoints(m, 1)[0]
        await reader.close()
        await sender.close()
    run(main())


def test_router_restart_is_healed_by_heartbeats_and_replica_resnapshot(make_mesh):
    """Router state is in memory: after a restart the clients' heartbeats rebuild it, the
    logic replicas re-snapshot on the new epoch, and pushes flow again."""
    m = make_mesh(brokers=1, logics=1, heartbeat=FAST_HB)
    router = m.topo.ids("router")[0]

    async def main():
        sender, reader = await sender_and_reader(m)
        m.mesh.signal(router, signal.SIGKILL)
        m.mesh.start([router])
        m.mesh.wait_ready(15, [router])
        deadline = time.monotonic() + 15
        while (m.admin.status(router) or {}).get("sessions", 0) < 2:   # rebuilt by heartbeats alone
            assert time.monotonic() < deadline, "router never relearned the sessions"
            await asyncio.sleep(0.05)
        m.wait_presence(2, 0, present=True, timeout=15)
        msg_id = await sender.send("lobby", "after the router came back")
        got = await collect(reader, 1)
        assert got[0]["id"] == msg_id
        await reader.close()
        await sender.close()
    run(main())
