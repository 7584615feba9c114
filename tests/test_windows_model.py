"""The client's windows against a model server, under arbitrary interleavings (no sockets).

The model server stores ids in order (some never assigned), expires the
oldest, and answers sync pages and heartbeats; each answer is computed when
it is asked and may reach the client any time later, in any order, mixed
with pushes that are late, duplicated or lost.  Whatever happens, the
client never moves its window past an id it neither holds nor was told is
gone, hands every message over once in id order, and a fresh sync always
brings it level with the server.
"""
from __future__ import annotations

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from nodes.client.windows import Windows

CH = "a"


def m(i):
    return {"channel": CH, "id": i}


class ModelServer:
    def __init__(self):
        self.head = 0
        self.stored = set()                    # ids stored and not yet expired
        self.ever = set()                      # ids ever stored (pushes may arrive after expiry)
        self.own = set()                       # ids the client under test sent itself
        self.first = 1

    def gone(self, i: int) -> bool:
        return i <= self.head and i not in self.stored

    def page(self, after: int, budget: int):
        """(msgs, first, upto) as a sync reply or a heartbeat's pushes + ack would say."""
        ids = sorted(i for i in self.stored if i > after)
        more = len(ids) > budget
        ids = ids[:budget]
        upto = ids[-1] if more else self.head
        return [m(i) for i in ids], self.first, upto


class WindowMachine(RuleBasedStateMachine):
    @initialize()
    def start(self):
        self.server = ModelServer()
        self.w = Windows()
        self.w.watch(CH, 0)
        self.delivered = []
        self.inflight = []                     # replies made, not yet read by the client
        self.acks = []                         # own sends stored, ack not yet read

    def take(self, ready):
        self.delivered += [x["id"] for x in ready]

    # --- the server ----------------------------------------------------------
    @rule(assigned=st.booleans(), mine=st.booleans())
    def store(self, assigned, mine):
        s = self.server
        s.head += 1
        if assigned:                           # else: an id never assigned (a lost lease)
            s.stored.add(s.head)
            s.ever.add(s.head)
            if mine:
                s.own.add(s.head)
                self.acks.append(s.head)

    @precondition(lambda self: self.server.stored)
    @rule()
    def expire_oldest(self):
        s = self.server
        oldest = min(s.stored)
        s.stored.discard(oldest)
        s.first = oldest + 1

    # --- what reaches the client ---------------------------------------------
    @precondition(lambda self: self.server.ever - self.server.own)
    @rule(data=st.data())
    def push(self, data):
        """A push of any id ever stored by someone else: late, repeated, out of order."""
        i = data.draw(st.sampled_from(sorted(self.server.ever - self.server.own)))
        self.take(self.w.accept(m(i))[0])

    @rule(budget=st.integers(1, 4), behind=st.integers(0, 3))
    def ask(self, budget, behind):
        """A sync (or heartbeat) is answered now from the window as it was (maybe older)."""
        after = max(0, self.w.last[CH] - behind)
        self.inflight.append(self.server.page(after, budget))

    @precondition(lambda self: self.inflight)
    @rule(data=st.data())
    def reply_arrives(self, data):
        k = data.draw(st.integers(0, len(self.inflight) - 1))
        msgs, first, upto = self.inflight.pop(k)
        self.take(self.w.page(CH, msgs, first, upto))

    @precondition(lambda self: self.acks)
    @rule(data=st.data())
    def ack_arrives(self, data):
        k = data.draw(st.integers(0, len(self.acks) - 1))
        self.take(self.w.own(CH, self.acks.pop(k)))

    @rule()
    def converge(self):
        """A fresh sync after every late reply: the client ends level with the server."""
        for msgs, first, upto in self.inflight:
            self.take(self.w.page(CH, msgs, first, upto))
        self.inflight = []
        for i in self.acks:
            self.take(self.w.own(CH, i))
        self.acks = []
        while True:
            msgs, first, upto = self.server.page(self.w.last[CH], 3)
            self.take(self.w.page(CH, msgs, first, upto))
            if self.w.last[CH] >= self.server.head:
                break
        assert self.w.last[CH] == self.server.head and not self.w.gap(CH)

    # --- what must always hold -----------------------------------------------
    @invariant()
    def in_order_once(self):
        assert self.delivered == sorted(set(self.delivered))

    @invariant()
    def never_skips(self):
        """Every id the window passed was handed over, sent by us, or is gone."""
        s = self.server
        got = set(self.delivered)
        passed = range(1, self.w.last[CH] + 1)
        skipped = [i for i in passed if i not in got and i not in s.own and not s.gone(i)]
        assert skipped == [], f"window {self.w.last[CH]} passed {skipped}"


WindowMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
test_windows_against_the_model = WindowMachine.TestCase


def test_sync_reply_overtaken_by_a_newer_push_does_not_skip_the_id_between():
    """Observation 1: window at 2, a sync made when 2 was the newest id; 3 and 4 are
    stored, 4's push arrives first, then the (now old) reply with more=false."""
    w = Windows()
    w.watch(CH, 0)
    got = []
    for i in (1, 2):
        got += w.accept(m(i))[0]
    old_reply = ([], 1, 2)                     # msgs, first, upto: made when the head was 2
    ready, gap = w.accept(m(4))                # 3's push is late (or lost)
    assert ready == [] and gap
    got += w.page(CH, *old_reply)
    assert w.last[CH] == 2 and w.gap(CH)       # 3 is neither held nor said to be gone
    got += w.page(CH, [m(3), m(4)], 1, 4)      # the next sync fills it
    assert [x["id"] for x in got] == [1, 2, 3, 4]


def test_first_and_upto_move_the_window_only_over_what_is_gone():
    w = Windows()
    w.watch(CH, 0)
    w.accept(m(12))
    assert w.jump(CH, 10) == [] and w.last[CH] == 9            # 1..9 gone; 10, 11 may still come
    assert [x["id"] for x in w.page(CH, [m(11)], 10, 11)] == [11, 12]
    w.accept(m(20))
    assert [x["id"] for x in w.cover(CH, 25)] == [20] and w.last[CH] == 25   # held is never lost
    assert w.own(CH, 27) == []
    ready = w.accept(m(26))[0]
    assert [x["id"] for x in ready] == [26] and w.last[CH] == 27             # own 27 fills its place
