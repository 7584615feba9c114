"""The expiry clock: wall-clock time that a step of one node's wall clock cannot move.

Why: messages, send-index rows, dedup rows and relay files expire at stored
Unix times, so expiry needs the wall clock -- but one node's wall clock can
step (NTP, a VM resumed, a bad RTC), and a sweep that trusted a clock stepped
+2 days deleted every acked message of its channels (issue 23).  So expiry,
stored times and the ``now`` of a logic node's requests read an ``ExpiryClock``:

- between checks it advances with ``time.monotonic()``, which no step moves;
- ``check()`` (every sweep, about 20 times a second) compares it with the wall
  clock.  Within ``STEP_TOLERANCE`` the wall clock is followed (the clock is
  set to it, so slewing and drift are followed as before).  A larger
  disagreement is a step: logged once, shown in status, and not followed --
  until the wall clock has kept the same offset (within the tolerance) for
  ``STEP_PERSIST`` seconds of monotonic time; then it is believed (an operator
  set the clock, a paused VM came back): that is the only way the expiry clock
  jumps, forward or back.
- Its state (time, monotonic reading, boot id) is saved in the node's store
  (``save``, every ``SAVE_INTERVAL``).  A restart on the same boot continues it
  exactly (the monotonic clock is system-wide); after a reboot it continues from
  the saved time.  Either way a wall clock that disagrees waits out the same
  rule, so a restart with a stepped clock deletes nothing either.  A node that
  never saved one starts at the wall clock (nothing to check it against).

What it costs: while a true jump of the wall clock is not yet believed
(``STEP_PERSIST``, and after a reboot the downtime), expiry runs that much
behind -- messages are deleted later, never earlier.

Test only: when the environment variable ``IMESH_TEST_CLOCK_DIR`` names a
directory, a node's wall clock is ``time.time()`` plus the seconds written in
the file ``$IMESH_TEST_CLOCK_DIR/<node id>`` (none, empty or unreadable: 0),
read again at every ``check()`` -- so a test steps the clock of a running node
by rewriting the file.  Deployments never set it: the wall clock is then
``time.time`` itself, with no file read.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from nodes.storage import store as keys

if TYPE_CHECKING:
    from nodes.runtime.loop import Loop

log = logging.getLogger(__name__)

TEST_CLOCK_ENV = "IMESH_TEST_CLOCK_DIR"
STEP_TOLERANCE = 60.0     # seconds the wall clock may differ and still be followed at once
STEP_PERSIST = 300.0      # seconds a larger, steady difference must last before it is believed
SAVE_INTERVAL = 5.0       # seconds between saves of the clock's state in the store
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


class ClockedNode(Protocol):
    """What ``attach`` needs of a node (the logic node, the relay)."""

    id: str
    store: keys.Store
    loop: Loop


def wall_clock(node_id: str) -> Callable[[], float]:
    """``time.time``, or with ``IMESH_TEST_CLOCK_DIR`` set (tests only): time.time() shifted
    by the offset in that directory's file named ``node_id``."""
    directory = os.environ.get(TEST_CLOCK_ENV)
    if not directory:
        return time.time
    path = os.path.join(directory, node_id)

    def shifted() -> float:
        try:
            with open(path) as f:
                offset = float(f.read().strip() or 0)
        except (OSError, ValueError):
            offset = 0.0
        return time.time() + offset
    return shifted


def boot_id() -> str | None:
    """This boot's id (Linux), or None: then every restart counts as after a reboot."""
    try:
        with open(BOOT_ID_FILE) as f:
            return f.read().strip() or None
    except OSError:
        return None


class ExpiryClock:
    """``now()``: wall-clock seconds advanced by the monotonic clock; ``check()`` follows the
    wall clock within ``tolerance``, or after a step has held ``persist`` seconds.

    ``saved``: the state ``state()`` returned before a restart ([time, monotonic, boot]);
    ``wall``, ``mono`` and ``boot`` are injectable for tests."""

    def __init__(self, wall: Callable[[], float] = time.time, mono: Callable[[], float] = time.monotonic,
                 saved: Sequence[Any] | None = None, boot: str | None = None,   # saved: as decoded (msgpack)
                 tolerance: float = STEP_TOLERANCE, persist: float = STEP_PERSIST, name: str = "") -> None:
        self.wall, self.mono = wall, mono
        self.boot = boot
        self.tolerance, self.persist = tolerance, persist
        self.name = name
        self.step: float | None = None        # the wall clock's offset while a step is not believed
        self.step_since = 0.0                 # monotonic time the step was first seen
        self.steps = self.believed = 0        # steps seen, and those believed after persisting
        m = mono()
        if saved is None:
            start = wall()
        elif saved[2] is not None and saved[2] == boot and m >= saved[1]:
            start = saved[0] + (m - saved[1])  # same boot: monotonic time went on meanwhile
        else:
            start = saved[0]                   # rebooted: the downtime is unknown
        self.shift = start - m                # now() = mono() + shift
        self.check()

    def now(self) -> float:
        """The expiry clock's time (cheap: one monotonic reading)."""
        return self.mono() + self.shift

    def check(self) -> float:
        """Compare with the wall clock and follow it if it agrees (or its step has held long
        enough); returns ``now()``."""
        m = self.mono()
        wall = self.wall()
        offset = wall - (m + self.shift)
        if abs(offset) <= self.tolerance:
            self.shift += offset
            self.step = None
        elif self.step is None or abs(offset - self.step) > self.tolerance:
            self.step, self.step_since = offset, m
            self.steps += 1
            log.warning("%s: the wall clock is %+.1f s off the expiry clock: not followed unless it "
                        "stays so for %.0f s (expiry goes on by the monotonic clock)",
                        self.name or "expiry clock", offset, self.persist)
        elif m - self.step_since >= self.persist:
            log.warning("%s: the wall clock has been %+.1f s off for %.0f s: believed; the expiry "
                        "clock jumps to it", self.name or "expiry clock", offset, m - self.step_since)
            self.shift += offset
            self.step = None
            self.believed += 1
        return m + self.shift

    def state(self) -> list[float | str | None]:
        """What ``saved`` takes after a restart: [time, monotonic reading, boot id]."""
        m = self.mono()
        return [m + self.shift, m, self.boot]

    def status(self) -> dict[str, float]:
        """For a node's status: the wall clock's offset not followed (0.0 when none), for
        how long, and the counts of steps seen and believed."""
        held = 0.0 if self.step is None else self.mono() - self.step_since
        return {"step_s": round(self.step or 0.0, 3), "step_held_s": round(held, 3),
                "steps": self.steps, "believed": self.believed}


def load(store: keys.Store, node_id: str) -> ExpiryClock:
    """The node's expiry clock, continued from the state saved in its store."""
    raw = store.get(keys.CLOCK_KEY)
    saved = keys.decode(raw) if raw is not None else None
    return ExpiryClock(wall_clock(node_id), saved=saved, boot=boot_id(), name=node_id)


def save(store: keys.Store, clock: ExpiryClock) -> None:
    """Stage the clock's state in the store's batch (local: never replicated); not while the
    store refuses writes (a full disk: nodes/logic/diskfull.py), it is saved again after."""
    if store.failed is not None:
        return
    with store.uncaptured():
        store.put(keys.CLOCK_KEY, keys.encode(clock.state()))


def attach(node: ClockedNode) -> ExpiryClock:
    """A node's expiry clock: loaded from its store, saved every SAVE_INTERVAL."""
    clock = load(node.store, node.id)
    save(node.store, clock)
    node.loop.every(SAVE_INTERVAL, lambda: save(node.store, clock))
    return clock
