"""The sampled event logger never shows an old state as the current one (issue 23 item 11):
a peer's "up" after its "down" was held back for a window (~20 s seen) because an "up" had been
logged in the same window, then printed with the "down" count in one millisecond.  Fake clock."""
from __future__ import annotations

import io
import json

import pytest

from nodes.runtime import logs


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def captured():
    stream = io.StringIO()
    logs.setup("INFO", "json", "b1", stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logs.setup("WARNING", "text")


def test_up_down_up_within_a_window_is_logged_as_it_happens(captured):
    clock = Clock()
    ev = logs.Events("events", window=10.0, clock=clock)
    for t, state in ((0.0, "up"), (1.0, "down"), (2.0, "up")):
        clock.now = t
        assert ev.peer("l2", state, node="b1") is True
    assert [(r["state"], r["level"]) for r in captured()] == [("up", "INFO"), ("down", "WARNING"), ("up", "INFO")]


def test_a_flapping_peer_is_counted_and_its_last_state_logged_when_the_window_ends(captured):
    clock = Clock()
    ev = logs.Events("events", window=10.0, clock=clock)
    states = ["down", "up"] * 50
    for i, state in enumerate(states):
        clock.now = i * 0.01
        ev.peer("l2", state, node="b1")
    shown = captured()
    assert len(shown) == logs.Events.MAX_CHANGES                  # a flapping link: a few lines, not 100
    clock.now = 10.5
    ev.flush()
    last = captured()[-1]
    assert last["state"] == "up" and last["changes"] == len(states) - logs.Events.MAX_CHANGES, last
    assert "up" in last["msg"] and "not logged one by one" in last["msg"]
    clock.now = 11.0
    assert ev.peer("l2", "down", node="b1") is True               # a new window: at once again


def test_the_same_state_again_is_sampled(captured):
    clock = Clock()
    ev = logs.Events("events", window=10.0, clock=clock)
    assert ev.peer("l2", "up") is True
    clock.now = 1.0
    assert ev.peer("l2", "up") is False
    assert len(captured()) == 1
