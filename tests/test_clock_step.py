"""A logic node whose wall clock steps (issue 23): acked messages stay, lifetimes stay right.

Real processes: the logic node's wall clock is shifted through the test-only
hook of nodes/runtime/clock.py (``IMESH_TEST_CLOCK_DIR``: a file per node
holding its offset in seconds, read again while the node runs); the broker,
router and counter keep the true time.  The message lifetime is one day, so a
+2 day step makes every stored message look expired to a node that trusts
its wall clock, and a -2 day step makes new ones look expired at once.
"""
from __future__ import annotations

import asyncio
import time

import pytest
from rocksdict import AccessType, Options, Rdict

from nodes.runtime.clock import TEST_CLOCK_ENV
from nodes.storage import store as keys
from tests.conftest import served
from tests.test_heartbeat_sync import run
from tests.test_relay import media

pytestmark = pytest.mark.slow

DAY = 86400.0


def stored(m, channel) -> dict:
    """{id: expiry} of the channel's message rows in its logic node's store (read only)."""
    db = Rdict(m.topo.node_dir(m.owner_of(channel)), Options(raw_mode=True),
               access_type=AccessType.read_only())
    try:
        prefix = keys.channel_prefix(channel)
        return {keys.unpack_u64(k[-8:]): keys.decode(v)[4]
                for k, v in db.items(from_key=prefix) if k.startswith(prefix)}
    finally:
        db.close()


def synced_ids(client, channel) -> list:
    ids, after = [], 0
    while True:
        page = served(lambda after=after: client.sync(channel, after))
        ids += [msg["id"] for msg in page["msgs"]]
        if page["upto"] >= page["last"]:
            return ids
        after = page["upto"]


def test_a_wall_clock_step_either_way_deletes_nothing_and_keeps_lifetimes(make_mesh, tmp_path, monkeypatch):
    monkeypatch.setenv(TEST_CLOCK_ENV, str(tmp_path))
    m = make_mesh(brokers=1, logics=1, channels={"lobby": {"members": "1-10"}})
    logic = m.owner_of("lobby")
    offset_file = tmp_path / logic
    c = m.client(1)
    acked = [c.send("lobby", f"before {i}") for i in range(20)]

    def step(seconds: float, label: str) -> None:
        """Step the node's clock, let its sweeper run a while, store a few messages meanwhile,
        and check: every acked message is synced and stored; the new ones expire one true
        day after they were stored."""
        offset_file.write_text(str(seconds))
        begin = time.time()
        deadline = time.monotonic() + 1.5          # 30 sweeps (every 50 ms)
        during = []
        while time.monotonic() < deadline:
            during.append(c.send("lobby", f"{label} {len(during)}"))
            time.sleep(0.1)
        acked.extend(during)
        assert synced_ids(c, "lobby") == acked, label
        assert m.admin.status(logic)["expired"] == 0, label
        rows = stored(m, "lobby")
        assert sorted(rows) == acked, label
        for msg_id in during:
            assert begin + DAY - 5 < rows[msg_id] < time.time() + DAY + 5, (label, msg_id, rows[msg_id] - begin)

    step(2 * DAY, "forward")
    step(0, "back to true time")
    step(-2 * DAY, "backward")
    step(0, "true again")
    # a restart while the clock is stepped forward deletes nothing either
    offset_file.write_text(str(2 * DAY))
    m.mesh.restart(logic)
    step(2 * DAY, "after a restart with a stepped clock")


def test_a_relay_whose_clock_steps_forward_keeps_serving_its_files(make_mesh, tmp_path, monkeypatch):
    """The relay's files expire by its expiry clock too: a +2 day step neither sweeps nor
    refuses a file (lifetime one day) uploaded before it."""
    monkeypatch.setenv(TEST_CLOCK_ENV, str(tmp_path))
    m = make_mesh(brokers=1, logics=1, relays=1, channels={"lobby": {"members": "1-10"}})
    relay = m.topo.ids("relay")[0]

    async def main():
        c = media(m, 1)
        await c.connect()
        ref = await c.upload(b"kept across the step", "lobby")
        (tmp_path / relay).write_text(str(2 * DAY))
        await asyncio.sleep(1.0)                                   # 5 sweeps (every 0.2 s)
        assert await c.download(ref) == b"kept across the step"
        status = m.admin.status(relay)
        assert status["expired"] == 0 and status["clock"]["steps"] == 1   # it saw the step
        await c.close()
    run(main())
