"""A retry over the rate limit gets its original id, on a real mesh (issue 23 item 7).

The rules, with a fake clock: tests/test_retry_tokens.py.  Here the refill is one
token per 1000 s, so the bucket stays empty however slowly this machine runs.
"""
from __future__ import annotations

import pytest

from nodes.client.blocking import ClientError
from nodes.protocol import wire


def send(client, ctime, text):
    return client.request({"t": "send", "channel": "lobby", "ctime": ctime, "text": text})


def test_a_retry_after_the_burst_gets_its_original_id_and_is_stored_once(make_mesh):
    m = make_mesh(brokers=1, logics=1, limits={"rate": 0.001, "burst": 5})
    c = m.client(1)
    base = 1_795_000_000_000_000
    ids = [send(c, base + i, f"burst {i}")["id"] for i in range(5)]
    again = send(c, base + 2, "burst 2")                          # the bucket is empty now
    assert again["id"] == ids[2] and again["ctime"] == base + 2 and set(again) == {
        "t", "rid", "channel", "device", "ctime", "id"}
    with pytest.raises(ClientError) as exc:                       # a new message: refused
        send(c, base + 5, "one too many")
    assert exc.value.code == wire.Err.RATE_LIMITED
    c.close()
    c = m.client(1)                                               # a new session, bucket still empty
    assert send(c, base + 4, "burst 4")["id"] == ids[4]
    msgs = c.sync("lobby", 0)["msgs"]
    assert [(m_["id"], m_["text"]) for m_ in msgs] == [(ids[i], f"burst {i}") for i in range(5)]
    broker = m.topo.ids("broker")[0]
    assert m.admin.status(broker)["refused"]["RATE_LIMITED"] == 1
