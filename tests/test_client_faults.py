"""The client library under faults, on real nodes: a killed and a stalled broker, an owner
outage, a restart with a full mailbox, a slow broker, a hostile peer."""
from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time

import pytest
import zmq
import zmq.asyncio
from conftest import served
from test_heartbeat_sync import collect, endpoints, run

from nodes.client.aclient import AsyncClient, page_upto
from nodes.client.blocking import ClientError
from nodes.client.mailbox import Mailbox
from nodes.client.nearest import Brokers
from nodes.ops.localtopo import free_ports
from nodes.protocol import wire

HB = {"wired": 2.0, "min": 1.0, "max": 4.0, "session_timeout_factor": 3}


@contextlib.contextmanager
def stopped(m, node_id: str, seconds: float | None = None):
    """SIGSTOP a node; SIGCONT it when the block ends (also on failure)."""
    proc = m.mesh.procs[node_id]
    proc.send_signal(signal.SIGSTOP)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGCONT)


async def send_loop(client, channel, stop, prefix):
    """Closed loop: one send at a time until ``stop``; "busy" ones stay in the mailbox and are
    acked later (the client's ``on_mail`` sees every ack)."""
    i = 0
    while not stop.is_set():
        try:
            await client.send(channel, f"{prefix}{i}")
        except ClientError as exc:
            assert exc.code == "BUSY", exc
        i += 1


def ack_log(acked: list):
    """An ``on_mail`` that records every acked id (from send() or later from the mailbox)."""
    return lambda event, entry, detail: acked.append(detail) if event == "acked" else None


async def drained(client, timeout=20.0):
    deadline = time.monotonic() + timeout
    while client.pending() or client._posting:
        assert time.monotonic() < deadline, f"mailbox still holds {client.pending()}"
        await asyncio.sleep(0.05)


def test_broker_killed_then_another_stalled_with_sends_in_flight(make_mesh):
    """SIGKILL of the clients' broker, then SIGSTOP 1.5 s of the one they moved to, while a
    closed-loop sender and heartbeats run: each client resumes within one heartbeat interval,
    reconnects at most 3 times, and every acked message reaches the reader once, in order."""
    m = make_mesh(brokers=3, logics=1, heartbeat=HB)
    b1 = m.topo.ids("broker")[0]

    async def main():
        acked, stop = [], asyncio.Event()
        sender = AsyncClient(endpoints(m), m.token(1), timeout=1.0, on_mail=ack_log(acked))
        reader = AsyncClient(endpoints(m), m.token(2), timeout=1.0)
        await sender.connect()
        await reader.connect()
        assert sender.endpoint == reader.endpoint == m.broker(0)   # equally near: list order
        m.wait_presence(2, 0, present=True)
        loop = asyncio.ensure_future(send_loop(sender, "lobby", stop, "m"))
        while len(acked) < 20:
            await asyncio.sleep(0.01)
        n, t_kill = len(acked), time.monotonic()
        m.mesh.signal(b1, signal.SIGKILL)
        while len(acked) < n + 5:
            await asyncio.sleep(0.01)
        resumed = time.monotonic() - t_kill
        assert resumed < HB["wired"], f"sends resumed {resumed:.2f} s after the kill"
        moved = sender.endpoint
        assert moved != m.broker(0) and sender.reconnects == 1
        stalled = next(b.id for b in m.topo.of_type("broker") if b.endpoint("client") == moved)
        n, before = len(acked), (sender.reconnects, reader.reconnects)
        with stopped(m, stalled):
            await asyncio.sleep(1.5)
        while len(acked) < n + 20:
            await asyncio.sleep(0.01)
        stop.set()
        await loop
        await drained(sender)
        got = await collect(reader, len(acked), timeout=20)
        assert [g["id"] for g in got] == sorted(acked)          # each acked id once, in order
        assert await reader.recv(timeout=0.5) is None          # nothing twice, nothing unacked
        assert sender.reconnects <= 3 and reader.reconnects <= 3, (sender.reconnects, reader.reconnects)
        stall = (sender.reconnects - before[0], reader.reconnects - before[1])
        assert max(stall) <= 1, stall                          # the stall: no storm, at most one move
        print(f"resumed {resumed * 1000:.0f} ms after the kill; reconnects from the stall {stall}; "
              f"sender {sender.reconnects} reader {reader.reconnects}; {len(acked)} acked, "
              f"{sender.mail['busy']} busy first")
        await reader.close()
        await sender.close()
    run(main())


def test_send_during_an_owner_outage_stays_in_the_mailbox_and_arrives_once(make_mesh):
    m = make_mesh(brokers=1, logics=1, limits={"request_timeout": 0.5})
    logic = m.owner_of("lobby")

    async def main():
        events = []
        sender = AsyncClient(endpoints(m), m.token(1), timeout=2.0,
                             on_mail=lambda event, entry, detail: events.append((event, entry.seq, detail)))
        reader = AsyncClient(endpoints(m), m.token(2))
        await sender.connect()
        await reader.connect()
        m.wait_presence(2, 0, present=True)
        m.mesh.signal(logic, signal.SIGKILL)
        try:
            await sender.send("lobby", "through the outage")
            raise AssertionError("acked with the owner down")
        except ClientError as exc:
            assert exc.code == "BUSY"
            seq = exc.reply["mailbox"]
        assert [e.text for e in sender.pending()] == ["through the outage"]
        m.mesh.start([logic])
        m.mesh.wait_ready(15, [logic])
        await drained(sender)
        acked = [e for e in events if e[0] == "acked"]
        assert len(acked) == 1 and acked[0][1] == seq
        got = await collect(reader, 1)
        assert got[0]["id"] == acked[0][2] and got[0]["text"] == "through the outage"
        page = await reader.sync("lobby", 0)
        assert [x["text"] for x in page["msgs"]] == ["through the outage"]
        await reader.close()
        await sender.close()
    run(main())


def test_restarted_client_sends_its_mailbox_once(make_mesh, tmp_path):
    """The owner is stalled: the send times out into the mailbox, the app quits.  The stalled
    owner then stores it; the restarted client resends it with the same client time and the
    server acks it with the original id: stored once."""
    m = make_mesh(brokers=1, logics=1, limits={"request_timeout": 0.5})
    logic = m.owner_of("lobby")
    box = str(tmp_path / "mailbox.sqlite")

    async def main():
        first = AsyncClient(endpoints(m), m.token(1), timeout=1.0, mailbox=box)
        await first.connect()
        with stopped(m, logic):
            try:
                await first.send("lobby", "keep me")
                raise AssertionError("acked with the owner stopped")
            except ClientError as exc:
                assert exc.code == "BUSY"
            await first.close()
        assert [(e.text, e.tries >= 2) for e in Mailbox(box).pending()] == [("keep me", True)]
        outcomes = []
        again = AsyncClient(endpoints(m), m.token(1), mailbox=box,
                            on_mail=lambda event, entry, detail: outcomes.append((event, entry.text, detail)))
        await again.connect()                                  # resumes the mailbox by itself
        await drained(again)
        assert [o[:2] for o in outcomes] == [("acked", "keep me")]
        page = await again.sync("lobby", 0)
        assert [(x["id"], x["text"]) for x in page["msgs"]] == [(outcomes[0][2], "keep me")]
        assert Mailbox(box).pending() == []
        await again.close()
    run(main())


async def delay_proxy(target_port: int, delay: float):
    """A TCP forwarder on a free loopback port that holds every chunk ``delay`` seconds."""
    async def pipe(reader, writer):
        try:
            while chunk := await reader.read(65536):
                await asyncio.sleep(delay)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def handle(client_r, client_w):
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))
    port = free_ports(1)[0]
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    return server, f"tcp://127.0.0.1:{port}"


def test_nearest_broker_is_measured_and_remembered(make_mesh, tmp_path):
    m = make_mesh(brokers=2, logics=1)
    state = str(tmp_path / "brokers.json")

    async def main():
        b1_port = int(m.broker(0).rsplit(":", 1)[1])
        server, slow = await delay_proxy(b1_port, 0.04)
        try:
            c = AsyncClient([(slow, "far"), (m.broker(1), "near")], m.token(1), state_file=state)
            c.link.measure_timeout = 5.0         # a loaded machine must not make the slow one silent
            await c.connect()
            assert c.endpoint == m.broker(1)                   # first in the list, but slower
            assert c.brokers.rtt[slow] > 0.04 > c.brokers.rtt[m.broker(1)]
            assert c.brokers.pong == {slow, m.broker(1)}              # protocol 2: a real pong
            assert json.load(open(state))["last_good"] == m.broker(1)
            await c.close()
        finally:
            server.close()
        # restarted, both equally near now: the remembered broker, not list order
        again = AsyncClient([m.broker(0), m.broker(1)], m.token(1), state_file=state)
        await again.connect()
        assert again.endpoint == m.broker(1)
        await again.close()
    run(main())


def test_broker_ranking_and_same_idc_failover_without_a_server():
    b = Brokers([("tcp://a1", "A"), ("tcp://a2", "A"), ("tcp://b1", "B"), ("tcp://b2", "B")])
    assert b.rank() == ["tcp://a1", "tcp://a2", "tcp://b1", "tcp://b2"]    # nothing measured: list order
    b.rtt = {"tcp://a1": 0.080, "tcp://a2": 0.081, "tcp://b1": 0.002, "tcp://b2": 0.0021}
    assert b.rank() == ["tcp://b1", "tcp://b2", "tcp://a1", "tcp://a2"]
    assert b.failover("tcp://b1") == ["tcp://b2", "tcp://a1", "tcp://a2", "tcp://b1"]
    del b.rtt["tcp://b2"]                                          # b2 silent: same IDC, but last
    assert b.failover("tcp://b1") == ["tcp://a1", "tcp://a2", "tcp://b2", "tcp://b1"]
    b.last_good = "tcp://a2"
    assert b.rank()[0] == "tcp://b1"                               # remembered, but far slower
    b.rtt["tcp://a2"] = 0.0025
    assert b.rank()[0] == "tcp://a2"                               # remembered and about as near


def test_reader_survives_malformed_frames_and_pushes():
    """A hostile peer in place of a broker: garbage, bad pushes, a bad fragment header, then a
    good push -- the client counts each bad one and still gets the good one."""
    async def main():
        ctx = zmq.asyncio.Context()
        peer = ctx.socket(zmq.ROUTER)
        peer.setsockopt(zmq.LINGER, 0)
        port = peer.bind_to_random_port("tcp://127.0.0.1")
        bad = [b"\xc1", wire.pack({"t": "msg", "channel": 5, "id": "x"}),
               wire.pack({"t": "msg", "channel": "c", "id": 1, "uin": 3, "device": 0, "text": "t",
                          "frag": [1, [0], 2]})]
        kicked = wire.pack({"t": "kicked", "reason": "too_slow"})
        good = wire.pack({"t": "msg", "channel": "c", "id": 2, "uin": 3, "device": 0, "text": "fine",
                          "ctime": 1, "stime": 1})

        async def serve():
            logins = 0
            while True:
                ident, frame = await peer.recv_multipart()
                req = wire.unpack(frame)
                if req["t"] == "ping":
                    await peer.send_multipart([ident, wire.pack({"t": "pong", "rid": req["rid"]})])
                elif req["t"] == "login":
                    logins += 1
                    await peer.send_multipart([ident, wire.pack({"t": "login_ok", "rid": req["rid"], "uin": 3,
                                                                 "device": 0, "hb": 30, "sid": 77})])
                    if logins == 1:
                        for frame_out in bad + [good, kicked]:
                            await peer.send_multipart([ident, frame_out])
                elif req["t"] == "hb":
                    assert req["sid"] == 77
                    await peer.send_multipart([ident, wire.pack({"t": "hb_ack", "rid": req["rid"], "interval": 30,
                                                                 "heads": {}, "first": {}, "more": [],
                                                                 "not_member": [], "unavailable": []})])
        server = asyncio.ensure_future(serve())
        c = AsyncClient(f"tcp://127.0.0.1:{port}", "token", ctx=ctx)
        try:
            c.watch("c", since=0)
            await c.link.start()
            msg = await c.recv(timeout=5)
            assert msg is not None and msg["text"] == "fine"
            assert c.malformed == 3                    # garbage, a push without channel/id, the bad header
            while c.reconnects < 1:                    # too_slow: the session is gone, log in again
                await asyncio.sleep(0.01)
            await c.link.connected.wait()
            assert c.link.sid == 77 and (await c.heartbeat())["t"] == "hb_ack"
            assert c.reconnects == 1
        finally:
            await c.close(logout=False)
            server.cancel()
            peer.close(0)
            ctx.term()
    run(main())


def test_mailbox_keeps_entries_across_reopen_until_removed(tmp_path):
    path = str(tmp_path / "box.sqlite")
    box = Mailbox(path)
    a = box.add(1, 0, "lobby", "one", [100])
    b = box.add(1, 0, "lobby", "long", [101, 102, 103], group=9)
    box.add(2, 0, "lobby", "someone else's", [500])
    assert box.tried(a.seq, "TIMEOUT") == 1 and box.tried(a.seq, "UNAVAILABLE") == 2
    box.close()
    box = Mailbox(path)
    got = box.pending(1, 0)
    assert [(e.text, e.ctimes, e.group, e.tries, e.error) for e in got] == \
        [("one", [100], None, 2, "UNAVAILABLE"), ("long", [101, 102, 103], 9, 0, None)]
    assert got[1].ctime == 103 and box.newest_ctime(1, 0) == 103 and box.newest_ctime(3, 0) == 0
    assert box.remove(b.seq) and not box.remove(b.seq)
    assert [e.text for e in box.pending()] == ["one", "someone else's"]
    box.close()


@pytest.mark.slow          # over 5 s (the fast lane: pytest -m 'not slow')
def test_chat_keeps_a_busy_message_lists_it_and_sends_it_on_the_next_start(make_mesh):
    from test_cli import run as run_tool
    m = make_mesh(brokers=1, logics=1, limits={"request_timeout": 0.5})
    cfg = m.mesh.config
    with stopped(m, m.owner_of("lobby")):
        r = run_tool("chat", "send", "-c", cfg, "--uin", 1, "--channel", "lobby", "wait for me")
        assert r.returncode == 3 and "BUSY" in r.stderr and "kept in the mailbox" in r.stderr, r.stderr
        assert r.stdout == "" and "do not send it again" in r.stderr
    listed = run_tool("chat", "pending", "-c", cfg, "--uin", 1, "--json")
    assert [json.loads(line)["text"] for line in listed.stdout.splitlines()] == ["wait for me"]
    served(lambda: m.client(2).sync("lobby", 0))       # the owner serves again (it was stopped)
    r = run_tool("chat", "send", "-c", cfg, "--uin", 1, "--channel", "lobby", "next")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().isdigit() and "mailbox: sent #" in r.stderr, (r.stdout, r.stderr)
    assert run_tool("chat", "pending", "-c", cfg, "--uin", 1).stdout == ""
    page = m.client(2).sync("lobby", 0)
    assert sorted(x["text"] for x in page["msgs"]) == ["next", "wait for me"]     # each once


def test_a_real_sync_reply_overtaken_by_a_newer_push_skips_nothing(make_mesh):
    """Observation 1 on a real broker: a sync answered while 2 was the newest id is read
    after the push of 4 (3's push lost): the client holds 4 and asks again; it never jumps."""
    m = make_mesh(brokers=1, logics=1)

    async def main():
        sender = AsyncClient(endpoints(m), m.token(1))
        reader = AsyncClient(endpoints(m), m.token(2))
        await sender.connect()
        await reader.connect()
        m.wait_presence(2, 0, present=True)
        reader.watch("lobby", since=0)
        first = [await sender.send("lobby", t) for t in ("one", "two")]
        assert [g["id"] for g in await collect(reader, 2)] == first
        old = await reader.sync("lobby", first[-1])               # made now: nothing newer yet
        assert old["msgs"] == [] and not old["more"]
        later = reader._sync_soon
        reader._sync_soon = lambda channel: None                  # hold the catch-up back
        reader.drop_push = lambda msg: msg["text"] == "three"     # 3's push is lost
        ids = [await sender.send("lobby", t) for t in ("three", "four")]
        while not reader.windows.gap("lobby"):                    # 4 arrived and is held
            await asyncio.sleep(0.01)
        reader._deliver(reader.windows.page("lobby", old["msgs"], old["first"], page_upto(old)))
        assert await reader.recv(timeout=0.2) is None             # the old reply moved nothing
        assert reader.windows.last["lobby"] == first[-1]
        reader._sync_soon, reader.drop_push = later, None
        await reader.heartbeat()                                  # the gap is still open: sync
        assert [g["id"] for g in await collect(reader, 2)] == ids
        await reader.close()
        await sender.close()
    run(main())


def test_failover_prefers_a_broker_of_the_same_idc(make_mesh):
    """Brokers b1, b2 in IDC 'east', b3 in 'west' (listed before b2, and as near): a client
    on b1 whose broker dies goes to b2."""
    m = make_mesh(brokers=3, logics=1, heartbeat=HB)
    b1, b2, b3 = (m.broker(i) for i in range(3))

    async def main():
        c = AsyncClient([(b1, "east"), (b3, "west"), (b2, "east")], m.token(1), timeout=1.0)
        await c.connect()
        assert c.endpoint == b1
        m.mesh.signal(m.topo.ids("broker")[0], signal.SIGKILL)
        msg_id = await c.send("lobby", "after the failover")
        assert c.endpoint == b2 and c.reconnects == 1 and msg_id >= 1
        await c.close()
    run(main())


def test_mailbox_entries_past_the_lifetime_expire_and_the_app_can_cancel(make_mesh, tmp_path):
    m = make_mesh(brokers=1, logics=1, limits={"request_timeout": 0.5})
    box = str(tmp_path / "box.sqlite")
    old = Mailbox(box)
    old.add(1, 0, "lobby", "from last week", [1], created=time.time() - 8 * 86400)
    old.close()

    async def main():
        events = []
        c = AsyncClient(endpoints(m), m.token(1), timeout=1.0, mailbox=box,
                        on_mail=lambda event, entry, detail: events.append((event, entry.text)))
        await c.connect()
        await drained(c)
        assert events == [("expired", "from last week")]            # reported, never sent
        with stopped(m, m.owner_of("lobby")):
            try:
                await c.send("lobby", "never mind")
                raise AssertionError("acked with the owner stopped")
            except ClientError as exc:
                seq = exc.reply["mailbox"]
            assert await c.cancel(seq) and not await c.cancel(seq)
            assert c.pending() == [] and events[-1] == ("cancelled", "never mind")
        assert c.mail["cancelled"] == 1 and not c._posting          # no task sends it any more
        await c.close()
    run(main())


def test_brokers_come_with_their_idc_from_a_topology(tmp_path):
    from nodes.cluster import topology
    from nodes.ops.localtopo import write_topology
    topo = topology.load(write_topology(tmp_path, brokers=2))
    b = Brokers(topo)
    assert b.endpoints == [s.endpoint("client") for s in topo.of_type("broker")]
    assert set(b.idc.values()) == {"test"}


def test_a_second_login_of_the_same_device_replaces_the_first_without_a_fight(make_mesh):
    m = make_mesh(brokers=2, logics=1)

    async def main():
        first = AsyncClient([m.broker(0)], m.token(1))
        await first.connect()
        second = AsyncClient([m.broker(1)], m.token(1))           # same uin and device, other broker
        await second.connect()
        deadline = time.monotonic() + 10
        while first.link.fatal is None:                           # the router's kick reaches b1
            assert time.monotonic() < deadline, "the first session was never told"
            await asyncio.sleep(0.02)
        assert first.link.fatal.code == "KICKED" and first.reconnects == 0
        try:
            await first.send("lobby", "from the replaced one")
            raise AssertionError("a replaced client sent")
        except ClientError as exc:
            assert exc.code == "KICKED"
        assert await second.send("lobby", "from the new one") >= 1
        assert second.reconnects == 0 and second.link.fatal is None
        await first.close()
        await second.close()
    run(main())


@pytest.mark.slow          # over 5 s (the fast lane: pytest -m 'not slow')
def test_bench_chaos_small_run_reports_every_figure(tmp_path):
    """bin/bench chaos end to end, small: a broker killed under 20 users; exit 0 and the JSON keys."""
    import os
    import subprocess
    import sys

    from conftest import ROOT
    out = tmp_path / "chaos.json"
    r = subprocess.run([sys.executable, "-m", "bench", "chaos", "--users", "20", "--seconds", "4",
                        "--kill", "broker", "--processes", "1", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=180,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(out.read_text())
    assert result["members_checked"] == result["exactly_once_in_order"] == 20
    assert result["acked"] > 0 and result["skipped"] == result["duplicates"] == result["lost_unacked"] == 0
    assert {"total", "max_per_user", "max_per_user_per_kill"} <= set(result["reconnects"])
    assert [k["node"] for k in result["kills"]] == ["b1"]
