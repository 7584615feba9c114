"""nodes/runtime/outbox.py: a turn's messages to one peer joined into frames, each within the
internal frame limit (a receiver refuses a larger one), in order."""
from __future__ import annotations

import zmq

from nodes.protocol import wire
from nodes.runtime.outbox import MAX_BATCH, Outbox, batches


def test_runs_are_bounded_by_count_and_bytes_and_keep_the_order():
    items = [bytes(100)] * 300
    assert [len(r) for r in batches(items, None)] == [MAX_BATCH, MAX_BATCH, 300 - 2 * MAX_BATCH]
    runs = list(batches(items, 1000))
    assert all(sum(map(len, r)) <= 1000 for r in runs) and sum(runs, []) == items
    assert [len(r) for r in batches([bytes(5000), bytes(10), bytes(10)], 1000)] == [1, 2]   # too big: alone


def test_a_turn_of_big_replies_leaves_as_frames_the_receiver_accepts():
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.bind("inproc://outbox")
        b.connect("inproc://outbox")
        limit = 64 * 1024
        out = Outbox(max_frame=limit)
        sent = [{"t": "msgs", "i": i, "blob": bytes(20_000)} for i in range(10)]    # 200 KB in all
        for m in sent:
            out.put(a, None, wire.pack(m))
        frames = out.flush()
        got = []
        for _ in range(frames):
            got += wire.unpack_internal(b.recv(), limit, 1024)       # the receiver's limit holds
        assert frames > 1 and [m["i"] for m in got] == list(range(10))
    finally:
        ctx.destroy(linger=0)
