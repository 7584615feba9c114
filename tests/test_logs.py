"""Structured logs: the JSON formatter and the sampled event logger (no sockets, injected clock)."""
from __future__ import annotations

import io
import json
import logging

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


def test_json_lines_carry_node_level_and_extra_fields(captured):
    logging.getLogger("x").warning("hello %s", "you", extra={"uin": 5})
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("failed")
    logging.getLogger("x").debug("below the level")
    first, second = captured()
    assert first["node"] == "b1" and first["level"] == "WARNING" and first["msg"] == "hello you"
    assert first["uin"] == 5 and isinstance(first["ts"], float)
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"]


def test_repeated_refusals_are_counted_not_flooded(captured):
    clock = Clock()
    ev = logs.Events("events", window=10.0, clock=clock)
    assert ev.refused("RATE_LIMITED", uin=7) is True
    for _ in range(999):
        clock.now += 0.001
        assert ev.refused("RATE_LIMITED", uin=7) is False
    assert ev.refused("NOT_MEMBER", uin=7) is True           # another code has its own window
    clock.now = 10.5
    ev.flush()
    assert ev.refused("RATE_LIMITED", uin=7) is True          # a new window logs again
    lines = captured()
    assert [(r["ev"], r["key"]) for r in lines] == [("refused", "RATE_LIMITED"), ("refused", "NOT_MEMBER"),
                                                     ("refused", "RATE_LIMITED"), ("refused", "RATE_LIMITED")]
    assert lines[2]["repeats"] == 999 and "repeated 999 more times" in lines[2]["msg"]
    assert lines[0]["uin"] == 7 and lines[3].get("repeats") is None


def test_a_repeat_count_is_reported_when_the_next_window_starts_without_flush(captured):
    clock = Clock()
    ev = logs.Events("events", window=1.0, clock=clock)
    ev.login(1, 0, broker="b1")
    ev.login(1, 0, broker="b1")
    clock.now = 2.0
    ev.login(1, 0, broker="b2")
    msgs = [r["msg"] for r in captured()]
    assert len(msgs) == 3 and "repeated 1 more times" in msgs[1] and "broker=b2" in msgs[2]


def test_setup_refuses_an_unknown_format():
    with pytest.raises(ValueError):
        logs.setup("INFO", "xml")


def test_a_node_logs_when_a_peer_goes_down_and_comes_back(make_mesh):
    import time
    m = make_mesh(brokers=1, logics=2)
    log_path = m.mesh.log_path("b1")

    def wait_for(text):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with open(log_path, encoding="utf-8") as f:
                if text in f.read():
                    return
            time.sleep(0.1)                      # polling a log file for one line
        raise AssertionError(f"{text!r} not in {log_path}:\n" + open(log_path).read())
    m.mesh.kill("l2")
    wait_for("peer l2 down")
    m.mesh.start(["l2"])
    wait_for("peer l2 up")


# --- peer state changes (Events.change): logged as they happen, a flapping link counted ---

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
