"""What costs a rate token, and a retry over the rate (issue 23 item 7), with a fake clock.

A broker core and a logic core wired together without sockets: the broker's
``to_logic`` goes to the logic core's send handler, the turn's acks come back
through the broker's callbacks.  The rules: a token is spent only by a send
the owner stores as a new message (refusals and retries give it back); over
the rate, a send that may be a retry is looked up at the owner (original ack,
or RATE_LIMITED with nothing stored) and a newer client time is refused at the
broker without reaching the owner.
"""
from __future__ import annotations

from test_cores import make_logic, turn
from test_dispatch_sessions import broker_core, login

from nodes.broker.limits import RetryWindow, TokenBuckets
from nodes.protocol import auth, wire


class Mesh:
    """One broker core, one logic core (l1, channel "room" of uins 1, 2, 3)."""

    def __init__(self, tmp_path):
        self.broker, self.out, secret = broker_core(tmp_path / "b")
        self.logic, self.logic_out, self.store = make_logic(tmp_path)
        self.logic.ids.on_ids("room", 1, 1001)
        self.d, self.sid = login(self.broker, self.out, secret)
        self.reached = []                       # what the logic node was asked
        self.waiting = {}                       # logic rid -> broker callback
        self.rid = 0

    def pump(self):
        """Deliver what the broker sent to the logic node, run a turn, return the acks."""
        sent, self.out.logic[:] = list(self.out.logic), []
        for _owner, msg, callback, _timeout in sent:
            self.rid += 1
            self.reached.append(msg)
            try:
                reply = self.logic.sends.send(b"b1", dict(msg, rid=self.rid))
            except wire.ProtocolError as exc:
                reply = wire.error_from(self.rid, exc)
            if reply is None:
                self.waiting[self.rid] = callback
            else:
                callback(reply)
        turn(self.logic, self.store)
        for _ident, reply in self.logic_out.replies:
            self.waiting.pop(reply["rid"])(reply)
        self.logic_out.replies.clear()

    def send(self, ctime, now, text="x", channel="room", rid=None):
        """Send, deliver, and return the client's reply to it."""
        rid = rid or ctime
        before = len(self.out.replies)
        now_reply = self.d.one(b"c1", {"t": "send", "rid": rid, "sid": self.sid, "channel": channel,
                                       "ctime": ctime, "text": text}, now)
        if now_reply is not None:
            return now_reply
        self.pump()
        mine = [m for _i, m in self.out.replies[before:] if m.get("rid") == rid]
        assert len(mine) == 1
        return mine[0]

    def tokens(self, now):
        bucket = self.broker.buckets.buckets.get(1)
        return self.broker.buckets.burst if bucket is None else self.broker.buckets._level(bucket, now)

    def stored(self):
        return self.logic.stats["stored"]


def test_a_retry_after_the_burst_gets_its_original_ack(tmp_path):
    m = Mesh(tmp_path)
    acks = [m.send(ctime, 1.0, text=f"t{ctime}") for ctime in range(1, 6)]      # the burst of 5
    assert [a["id"] for a in acks] == [1, 2, 3, 4, 5] and m.tokens(1.0) == 0.0
    for ctime in (3, 1, 5):                                    # bucket empty: the retries still get acks
        again = m.send(ctime, 1.0, text=f"t{ctime}", rid=100 + ctime)
        assert again == {"t": "ack", "rid": 100 + ctime, "channel": "room", "device": 0, "ctime": ctime,
                         "id": ctime}                          # the client's ack: no broker-only keys
    assert m.reached[-1]["lookup"] is True and m.stored() == 5
    assert m.tokens(1.0) == 0.0                                # lookups cost nothing
    # a new message over the rate: refused at the broker, the owner never asked
    asked = len(m.reached)
    refused = m.send(6, 1.0)
    assert refused["code"] == wire.Err.RATE_LIMITED and refused["retry_after"] == 1.0
    assert len(m.reached) == asked
    # a reused client time with another text is not a retry: STALE from the lookup, nothing stored
    assert m.send(2, 1.0, text="other")["code"] == wire.Err.STALE and m.stored() == 5
    # the refill buys exactly one new message
    assert m.send(6, 2.0)["id"] == 6 and m.send(7, 2.0)["code"] == wire.Err.RATE_LIMITED


def test_an_unseen_older_client_time_over_the_rate_is_looked_up_and_refused_unstored(tmp_path):
    m = Mesh(tmp_path)
    for ctime in (10, 20, 30, 40, 50):
        m.send(ctime, 1.0)
    asked = len(m.reached)
    reply = m.send(25, 1.0)                                   # older than the newest: may be a retry
    assert reply["code"] == wire.Err.RATE_LIMITED and reply["retry_after"] == 1.0
    assert len(m.reached) == asked + 1 and m.reached[-1]["lookup"] is True
    assert m.stored() == 5 and m.logic.stats["lookups_refused"] == 1
    assert m.send(25, 2.0)["id"] == 6                          # after the wait: a new message


def test_a_fresh_session_looks_up_until_the_owner_has_said_the_device_newest(tmp_path):
    """Before the owner answered, any client time may be a retry of a send stored through
    another broker; after its first answer, only the old ones."""
    w = RetryWindow()
    assert w.may_be_retry("l1", 10**15)
    w.forwarded("l1", 7)
    assert w.may_be_retry("l1", 8)                            # the owner has not said yet
    w.learn("l1", 5)                                          # it said 5 (7 was still on its way)
    assert w.may_be_retry("l1", 7) and not w.may_be_retry("l1", 8)
    w.learn("l1", None)                                       # an answer that did not say: no change
    assert not w.may_be_retry("l1", 8) and w.may_be_retry("l2", 8)    # per owner


def test_refusals_and_retries_leave_the_bucket_full(tmp_path):
    m = Mesh(tmp_path)
    for i in range(20):                                        # no such channel: refused by the owner
        assert m.send(1000 + i, 1.0, channel="nope")["code"] == wire.Err.NO_CHANNEL
    assert m.tokens(1.0) == 5.0
    admin = auth.mint(m.logic.secret, 0, scope="admin")
    m.logic.members.channel_remove({"rid": 1, "channel": "room", "members": [1], "auth": admin})
    for i in range(20):
        assert m.send(2000 + i, 1.0)["code"] == wire.Err.NOT_MEMBER
    assert m.tokens(1.0) == 5.0
    m.logic.members.channel_add({"rid": 2, "channel": "room", "members": [1], "auth": admin})
    assert m.send(1, 1.0)["id"] == 1 and m.tokens(1.0) == 4.0  # stored: one token
    for _ in range(10):                                        # retries with tokens left: free
        assert m.send(1, 1.0)["id"] == 1
    assert m.tokens(1.0) == 4.0


def test_a_retry_joining_a_send_still_being_stored_is_free(tmp_path):
    m = Mesh(tmp_path)
    for rid in (1, 2):
        assert m.d.one(b"c1", {"t": "send", "rid": rid, "sid": m.sid, "channel": "room", "ctime": 5,
                               "text": "x"}, 1.0) is None
    m.pump()
    assert [(r["rid"], r["id"]) for _i, r in m.out.replies[-2:]] == [(1, 1), (2, 1)]
    assert m.tokens(1.0) == 4.0 and m.stored() == 1


def test_busy_at_the_broker_gives_the_token_back(tmp_path):
    m = Mesh(tmp_path)
    m.broker.max_pending = 0
    assert m.send(1, 1.0)["code"] == wire.Err.BUSY
    assert m.tokens(1.0) == 5.0


def test_unknown_outcomes_keep_the_token(tmp_path):
    """UNAVAILABLE may have been stored: the token stays spent."""
    broker, out, secret = broker_core(tmp_path)
    d, sid = login(broker, out, secret)
    assert d.one(b"c1", {"t": "send", "rid": 9, "sid": sid, "channel": "room", "ctime": 1, "text": "x"},
                 1.0) is None
    out.logic[-1][2](wire.error(1, wire.Err.UNAVAILABLE, "owning node did not answer in time"))
    assert broker.buckets._level(broker.buckets.buckets[1], 1.0) == 4.0


def test_token_buckets_refund_up_to_the_burst():
    b = TokenBuckets(1.0, 2.0)
    assert b.take(1, 0.0) == 0.0 and b.take(1, 0.0) == 0.0 and b.take(1, 0.0) == 1.0
    b.refund(1)
    assert b.take(1, 0.0) == 0.0
    b.refund(1)
    b.refund(1)
    b.refund(1)
    assert b._level(b.buckets[1], 0.0) == 2.0
    b.refund(7)                                                # no bucket: full already
    assert 7 not in b.buckets

