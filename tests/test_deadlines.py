"""nodes/runtime/deadlines.py with a fake clock: one live entry per record, none lost."""
from __future__ import annotations

from nodes.runtime.deadlines import DeadlineHeap


class Rec:
    def __init__(self, deadline):
        self.deadline, self.due = deadline, None


def heap_of(records: dict) -> DeadlineHeap:
    return DeadlineHeap(records.get, lambda r: r.deadline)


def test_refreshes_later_add_no_entry_an_earlier_deadline_does():
    records = {"a": Rec(10.0)}
    h = heap_of(records)
    h.track("a", records["a"])
    for t in range(20):                         # a heartbeat each: the deadline moves later
        records["a"].deadline = 10.0 + t
        h.track("a", records["a"])
    assert len(h) == 1
    records["a"].deadline = 5.0                 # moved earlier: looked at in time
    h.track("a", records["a"])
    assert len(h) == 2
    assert h.expired(4.9, 100) == []
    assert h.expired(5.0, 100) == ["a"]
    assert h.expired(100.0, 100) == []          # the superseded entry is skipped


def test_an_entry_for_a_record_active_since_is_pushed_again_and_a_gone_one_dropped():
    records = {"a": Rec(1.0), "b": Rec(1.0)}
    h = heap_of(records)
    for k, r in records.items():
        h.track(k, r)
    records["a"].deadline = 3.0                 # active since its entry was pushed
    del records["b"]                            # ended
    assert h.expired(2.0, 100) == [] and len(h) == 1
    assert h.expired(3.0, 100) == ["a"] and len(h) == 0


def test_a_sweep_looks_at_no_more_than_its_budget():
    records = {i: Rec(1.0) for i in range(10)}
    h = heap_of(records)
    for k, r in records.items():
        h.track(k, r)
    assert len(h.expired(2.0, 4)) == 4 and len(h.expired(2.0, 100)) == 6
