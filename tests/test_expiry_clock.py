"""The expiry clock (nodes/runtime/clock.py) and the logic core's expiry across wall-clock steps.

Injected clocks: ``Clocks`` holds a true time that both the fake monotonic
clock and the fake wall clock follow, and a step that only the wall clock
has (issue 23: a logic node whose clock jumped +2 days deleted every acked
message).  The logic core is the real one on a real RocksDB (tests/test_cores.py);
the node's loop is played by hand: ``assign`` at a turn's end with ``now()``, the
sweep with ``check()``, as nodes/logic/node.py does.
"""
from __future__ import annotations

import pytest

from nodes.runtime.clock import ExpiryClock
from nodes.storage import store as keys
from tests.test_cores import leased_logic, send

DAY = 86400.0
LIFETIME = 3600.0
T0 = 1_800_000_000.0


class Clocks:
    """True time ``t``; ``mono()`` = t - T0 + 5 (any origin), ``wall()`` = t + ``step``."""

    def __init__(self):
        self.t, self.step = T0, 0.0

    def mono(self) -> float:
        return self.t - T0 + 5.0

    def wall(self) -> float:
        return self.t + self.step

    def clock(self, **kw) -> ExpiryClock:
        return ExpiryClock(self.wall, self.mono, tolerance=60.0, persist=300.0, **kw)


# --- the clock alone ---------------------------------------------------------------

def test_the_clock_follows_a_slewing_wall_clock():
    c = Clocks()
    clock = c.clock()
    c.t += 10
    c.step = 0.5                                  # NTP slewed it half a second
    assert clock.check() == pytest.approx(c.wall())
    c.t += 10
    assert clock.now() == pytest.approx(c.wall())
    assert clock.status()["steps"] == 0


@pytest.mark.parametrize("step", [2 * DAY, -2 * DAY])
def test_a_step_is_not_followed_until_it_has_held_steadily(step):
    c = Clocks()
    clock = c.clock()
    c.step = step
    assert clock.check() == pytest.approx(c.t)    # seen at once
    for _ in range(29):                           # 290 s < 300 s
        c.t += 10
        assert clock.check() == pytest.approx(c.t)          # the true time, not the stepped wall
    assert clock.status()["step_s"] == pytest.approx(step) and clock.status()["step_held_s"] == 290
    c.step = step + 200                           # it moved again: a new step, held from now
    c.t += 10
    assert clock.check() == pytest.approx(c.t)
    c.t += 299
    assert clock.check() == pytest.approx(c.t)
    c.t += 1                                      # held 300 s: believed
    assert clock.check() == pytest.approx(c.wall())
    assert clock.status() == {"step_s": 0.0, "step_held_s": 0.0, "steps": 2, "believed": 1}


def test_a_step_undone_before_it_persists_leaves_no_trace():
    c = Clocks()
    clock = c.clock()
    c.step = 2 * DAY
    c.t += 8
    assert clock.check() == pytest.approx(c.t)
    c.step = 0.0
    c.t += 400
    assert clock.check() == pytest.approx(c.t) and clock.status()["step_s"] == 0.0


def test_a_restart_continues_the_saved_clock_not_a_stepped_wall_clock():
    c = Clocks()
    first = c.clock(boot="b1")
    c.t += 100
    saved = first.state()
    c.t += 30                                     # down 30 s, restarted on the same boot
    c.step = 2 * DAY
    again = c.clock(saved=saved, boot="b1")
    assert again.now() == pytest.approx(c.t)      # exact: monotonic time went on meanwhile
    assert again.status()["step_s"] == pytest.approx(2 * DAY)
    # after a reboot the monotonic clock starts over: the saved time, then the same rule
    rebooted = ExpiryClock(c.wall, lambda: 1.0, saved=saved, boot="b2", tolerance=60.0, persist=300.0)
    assert rebooted.now() == pytest.approx(saved[0])
    # never saved (a new node): nothing to check the wall clock against
    c.step = 0.0
    assert c.clock(saved=None, boot="b1").now() == pytest.approx(c.wall())


# --- the logic core's expiry by the clock --------------------------------------------

class Node:
    """The logic node's use of the clock: sends get ids at the turn's end with ``now()``,
    sweeps and syncs read ``check()`` / ``now()``."""

    def __init__(self, tmp_path, clocks):
        self.core, self.out, self.store = leased_logic(tmp_path, message_lifetime=LIFETIME)
        self.clock = clocks.clock()
        self.ctime = 100

    def send(self, n) -> list:
        for _ in range(n):
            self.ctime += 1
            send(self.core, 1, self.ctime)
        self.core.assign(self.clock.now())
        self.store.flush()
        committed = self.core.take_committed()
        self.core.commit(committed)
        return [rec.id for rec in committed]

    def sweep(self) -> int:
        now = self.clock.check()
        gone = self.core.retention.sweep(now)
        self.core.retention.prune_sent(now)
        self.store.flush()
        return gone

    def synced(self) -> list:
        page = self.core.reads.sync({"rid": 1, "uin": 2, "channel": "room", "after": 0}, self.clock.now())
        return [m["id"] for m in page["msgs"]]

    def expiry(self, msg_id) -> float:
        return keys.decode(self.store.get(keys.message_key("room", msg_id)))[4]


@pytest.mark.parametrize("step", [2 * DAY, -2 * DAY])
def test_a_step_either_way_deletes_nothing_early_and_keeps_lifetimes(tmp_path, step):
    c = Clocks()
    node = Node(tmp_path, c)
    before = node.send(5)
    c.t += LIFETIME / 2
    c.step = step                                 # the wall clock steps for a while
    during = []
    for _ in range(8):
        c.t += 1
        assert node.sweep() == 0
        during += node.send(1)
    assert node.synced() == before + during       # nothing hidden, nothing deleted
    for msg_id in during:                         # one true lifetime after they were stored
        assert node.expiry(msg_id) == pytest.approx(T0 + LIFETIME / 2 + during.index(msg_id) + 1 + LIFETIME)
    c.step = 0.0                                  # the clock is set right again
    c.t += 1
    assert node.sweep() == 0
    c.t = T0 + LIFETIME + 1                       # expiry goes on as before: the first ones go
    assert node.sweep() == 5 and node.synced() == during
    assert node.store.get(keys.sent_key(1, 0, 101)) is None     # and their send-index rows
    c.t += LIFETIME / 2 + 10
    assert node.sweep() == 8 and node.synced() == []
    assert node.core.stats["expired"] == 13


def test_a_believed_backward_step_keeps_the_send_index_pruned(tmp_path):
    """After the clock is believed 2 days back, rows written since sort before where pruning
    stopped: pruning starts over, so they still go when they expire."""
    c = Clocks()
    node = Node(tmp_path, c)
    node.send(3)
    c.t += LIFETIME + 1
    node.sweep()
    assert list(node.store.scan(b"x")) == []
    c.step = -2 * DAY
    for _ in range(31):                           # held 310 s: believed
        c.t += 10
        node.sweep()
    assert node.clock.now() == pytest.approx(c.wall())
    node.send(2)
    assert len(list(node.store.scan(b"x"))) == 2
    c.t += LIFETIME + 1
    assert node.sweep() == 2 and list(node.store.scan(b"x")) == [] and list(node.store.scan(b"e")) == []
