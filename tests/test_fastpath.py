"""The compiled fast paths against their pure-Python twins: same operations, same answers.

Hypothesis drives both with the same random operation sequences (state
machines) and compares every answer, including which error is raised.
"""
from __future__ import annotations

import random
from array import array

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import fastpath
from fastpath import models

U32 = 2**32 - 1
EDGE_U32 = st.sampled_from([0, 1, 2, 63, 64, 65535, 65536, 2**24, U32 - 1, U32])
uins = st.one_of(EDGE_U32, st.integers(0, 300), st.integers(0, U32))
bad_ints = st.sampled_from([-1, 2**32, 2**64, 1.5, "7", None, True])


def same(call_fast, call_model):
    """Both return equal values, or both raise ValueError/TypeError (the same one)."""
    try:
        expected = call_model()
    except (ValueError, TypeError) as exc:
        with pytest.raises(type(exc)):
            call_fast()
        return None
    got = call_fast()
    if isinstance(expected, array):
        assert got.typecode == expected.typecode and list(got) == list(expected)
    else:
        assert got == expected
    return got


# --- DedupTable -------------------------------------------------------------------

class DedupMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.fast = fastpath.DedupTable(capacity=8)        # small: growth happens early
        self.model = models.DedupTable()
        self.next_id = 0

    keys = st.tuples(st.integers(0, 40), st.sampled_from([0, 1, U32]))

    @rule(key=keys, ctime=st.integers(0, 50))
    def check(self, key, ctime):
        same(lambda: self.fast.check(*key, ctime), lambda: self.model.check(*key, ctime))

    @rule(key=keys, ctime=st.integers(0, 50), reuse=st.booleans())
    def commit(self, key, ctime, reuse):
        old = self.model.get(*key)
        msg_id = old[1] if (reuse and old) else self.next_id
        self.next_id += 1
        same(lambda: self.fast.commit(*key, ctime, msg_id), lambda: self.model.commit(*key, ctime, msg_id))

    @rule(key=keys)
    def remove(self, key):
        same(lambda: self.fast.remove(*key), lambda: self.model.remove(*key))

    @rule(key=keys)
    def get(self, key):
        same(lambda: self.fast.get(*key), lambda: self.model.get(*key))

    @rule(n=st.integers(0, 20), data=st.data())
    def batch(self, n, data):
        us = array("I", data.draw(st.lists(st.integers(0, 40), min_size=n, max_size=n)))
        ds = array("I", data.draw(st.lists(st.sampled_from([0, 1, U32]), min_size=n, max_size=n)))
        cs = array("Q", data.draw(st.lists(st.integers(0, 50), min_size=n, max_size=n)))
        same(lambda: self.fast.check_batch(us, ds, cs), lambda: self.model.check_batch(us, ds, cs))

    @rule(bad=bad_ints, where=st.integers(0, 2))
    def bad_input(self, bad, where):
        args = [1, 1, 1]
        args[where] = bad
        same(lambda: self.fast.check(*args), lambda: self.model.check(*args))

    @invariant()
    def agree(self):
        assert len(self.fast) == len(self.model)

    def teardown(self):
        assert sorted(self.fast.items()) == sorted(self.model.items())


TestDedupAgainstModel = DedupMachine.TestCase
TestDedupAgainstModel.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


def test_dedup_growth_and_deletion_under_load():
    fast, model = fastpath.DedupTable(), models.DedupTable()
    rng = random.Random(7)
    keys = [(rng.getrandbits(32), rng.getrandbits(32)) for _ in range(30000)]
    for i, (u, d) in enumerate(keys):
        fast.commit(u, d, 10, i)
        model.commit(u, d, 10, i)
    for u, d in keys[::2]:
        assert fast.remove(u, d) == model.remove(u, d)
    for u, d in keys:
        assert fast.check(u, d, 10) == model.check(u, d, 10)
    assert len(fast) == len(model) == 15000
    assert fast.nbytes / len(keys) <= 32 and fast.max_probe() < 64
    # refill after deletions reuses the room: no tombstones pile up
    cap = fast.capacity
    for i, (u, d) in enumerate(keys[::2]):
        fast.commit(u, d, 11, i)
    assert fast.capacity == cap and len(fast) == 30000


def test_dedup_edge_values_and_errors():
    t = fastpath.DedupTable()
    t.commit(0, 0, 0, 0)
    t.commit(U32, U32, 2**64 - 1, fastpath.MAX_MSG_ID)
    assert t.check(0, 0, 0) == 0 and t.check(U32, U32, 2**64 - 1) == fastpath.MAX_MSG_ID
    assert t.check(0, 0, 1) == fastpath.NEW and t.check(U32, U32, 5) == fastpath.STALE
    with pytest.raises(ValueError):
        t.commit(1, 1, 1, fastpath.MAX_MSG_ID + 1)
    with pytest.raises(ValueError):
        t.commit(0, 0, 0, 99)                        # same client time, other id
    with pytest.raises(ValueError):
        t.check_batch(array("I", [1]), array("I", [1, 2]), array("Q", [1]))
    with pytest.raises(ValueError):
        t.check_batch(array("i", [1]), array("I", [1]), array("Q", [1]))     # signed items
    with pytest.raises(ValueError):
        t.check_batch(array("I", [1]), array("I", [1]), array("q", [1]))
    with pytest.raises(TypeError):
        t.check_batch([1], [1], [1])
    assert len(t) == 2


# --- OnlineBitmap -------------------------------------------------------------------

class BitmapMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.fast = fastpath.OnlineBitmap()
        self.model = models.OnlineBitmap()

    @rule(uin=uins)
    def set(self, uin):
        same(lambda: self.fast.set(uin), lambda: self.model.set(uin))

    @rule(uin=uins)
    def clear(self, uin):
        same(lambda: self.fast.clear(uin), lambda: self.model.clear(uin))

    @rule(uin=st.one_of(uins, bad_ints))
    def test(self, uin):
        same(lambda: self.fast.test(uin), lambda: self.model.test(uin))

    @rule(batch=st.lists(uins, max_size=30))
    def filter(self, batch):
        buf = array("I", batch)
        same(lambda: self.fast.filter_online(buf), lambda: self.model.filter_online(buf))

    @rule(batch=st.lists(uins, max_size=10))
    def set_batch(self, batch):
        buf = array("I", batch)
        same(lambda: self.fast.set_batch(buf), lambda: self.model.set_batch(buf))

    @invariant()
    def agree(self):
        assert self.fast.count() == self.model.count()
        assert list(self.fast) == list(self.model)


TestBitmapAgainstModel = BitmapMachine.TestCase
TestBitmapAgainstModel.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)


def test_bitmap_frees_pages_and_costs_little_for_a_high_uin():
    b = fastpath.OnlineBitmap()
    b.set(U32)
    assert b.nbytes <= 1 << 20 and list(b) == [U32]
    b.clear(U32)
    assert b.nbytes == 0 and b.count() == 0
    rng = random.Random(1)
    spread = rng.sample(range(10_000_000), 100_000)
    assert b.set_batch(array("I", spread)) == 100_000
    assert b.nbytes <= 2 << 20
    assert list(b) == sorted(spread)
    with pytest.raises(ValueError):
        b.filter_online(array("q", [1]))


# --- IdRing -------------------------------------------------------------------------

class RingMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.fast = fastpath.IdRing(37)            # odd size: wraparound at odd places
        self.model = models.IdRing(37)
        self.top = 0

    @rule(step=st.integers(1, 5))
    def push(self, step):
        self.top += step
        same(lambda: self.fast.push(self.top), lambda: self.model.push(self.top))

    @rule(back=st.integers(0, 3))
    def push_not_increasing(self, back):
        same(lambda: self.fast.push(self.top - back), lambda: self.model.push(self.top - back))

    @rule(at=st.integers(-1, 400))
    def since(self, at):
        same(lambda: self.fast.since(at), lambda: self.model.since(at))

    @rule(at=st.integers(0, 400))
    def drop_through(self, at):
        same(lambda: self.fast.drop_through(at), lambda: self.model.drop_through(at))

    @invariant()
    def agree(self):
        assert (self.fast.first, self.fast.last, len(self.fast)) == \
               (self.model.first, self.model.last, len(self.model))
        assert list(self.fast) == list(self.model)


TestRingAgainstModel = RingMachine.TestCase
TestRingAgainstModel.settings = settings(max_examples=150, stateful_step_count=80, deadline=None)


def test_ring_edges():
    r = fastpath.IdRing(4)
    assert r.first is None and r.last is None and list(r.since(0)) == []
    r.push(0)
    assert list(r.since(0)) == [] and list(r) == [0]
    for i in range(1, 10):
        r.push(i)
    assert list(r) == [6, 7, 8, 9] and list(r.since(2)) == [6, 7, 8, 9] and list(r.since(9)) == []
    r.push(2**64 - 1)
    with pytest.raises(ValueError):
        r.push(2**64 - 1)
    with pytest.raises(ValueError):
        fastpath.IdRing(0)
    with pytest.raises(TypeError):
        r.push("10")
    assert fastpath.IdRing(1000).nbytes < 1000 * 8          # grows only as ids arrive


def test_missing_extension_fails_loudly_with_how_to_build(tmp_path):
    """A source tree without the compiled modules must not fall back silently
    (-S: no site-packages, so the installed build cannot stand in)."""
    import os
    import shutil
    import subprocess
    import sys
    src = os.path.dirname(fastpath.__file__)
    shutil.copytree(src, tmp_path / "fastpath", ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"))
    proc = subprocess.run([sys.executable, "-S", "-c", "import fastpath"], cwd=tmp_path, capture_output=True,
                          text=True, env={"PATH": os.environ.get("PATH", "")})
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "pip install -e ." in proc.stderr
