"""The conversation layer through the Python client library, on a real mesh: two users on
two brokers (one of them on two devices): a DM made by both, unread counts that move on
both devices after a read, receipts, typing, watched presence, edit and delete seen by the
other side and in history, history paged back past 500 messages, a group with roles."""
from __future__ import annotations

import asyncio
import time

import pytest

from nodes.client.aclient import AsyncClient
from nodes.client.blocking import ClientError


def client(m, uin: int, broker: int, device: int = 0) -> AsyncClient:
    """A library client pinned to one broker (its device is its own session)."""
    return AsyncClient([m.broker(broker)], m.token(uin), device=device, timeout=5.0)


async def connected(*clients):
    for c in clients:
        await c.connect()
    return clients


async def closed(*clients):
    for c in clients:
        await c.close()


async def event(c: AsyncClient, kind: str, timeout: float = 10.0, **match) -> dict:
    """The next event of ``kind`` whose fields match (others of that kind are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        got = await c.next_event(kind, timeout=max(0.0, deadline - time.monotonic()))
        assert got is not None, f"no {kind} event {match} within {timeout} s"
        if all(got.get(k) == v for k, v in match.items()):
            return got


async def message(c: AsyncClient, channel: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        got = await c.recv(timeout=max(0.0, deadline - time.monotonic()))
        assert got is not None, f"no message of {channel} within {timeout} s"
        if got["channel"] == channel:
            return got


async def unread(c: AsyncClient, channel: str) -> int:
    items = {i["channel"]: i for i in (await c.channels())["items"]}
    return items[channel]["unread"]


async def until_unread(c: AsyncClient, channel: str, want: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := await unread(c, channel)) != want:
        assert time.monotonic() < deadline, f"unread of {channel} stays {got}, not {want}"
        await asyncio.sleep(0.05)


def test_dm_unread_on_both_devices_receipts_typing_presence_edit_delete(shared_mesh):
    """User 11 (broker 0) and user 12 on two devices (brokers 1 and 0)."""
    m = shared_mesh

    async def main():
        alice, bob, bob2 = await connected(client(m, 11, 0), client(m, 12, 1), client(m, 12, 0, device=1))
        try:
            made = await alice.create_dm(12)
            dm = made["channel"]
            assert made["created"] and made["kind"] == "dm" and dm == "dm:11:12"
            again = await bob.create_dm(11)                      # the same channel for the other side
            assert again["channel"] == dm and not again["created"]
            ids = [await alice.send(dm, f"m{i}") for i in range(3)]
            for c in (bob, bob2):
                assert [(await message(c, dm))["text"] for _ in ids] == ["m0", "m1", "m2"]
                await until_unread(c, dm, 3)
            assert await unread(alice, dm) == 0                  # one's own messages are not unread

            assert await bob.read(dm, ids[1]) == ids[1]
            assert (await event(bob2, "read", channel=dm))["id"] == ids[1]   # the other device at once
            await until_unread(bob2, dm, 1)
            await until_unread(bob, dm, 1)
            assert (await event(alice, "receipt", channel=dm))["uin"] == 12
            assert await alice.receipts(dm, ids[1]) == [12] and await alice.receipts(dm, ids[2]) == []
            assert await bob.read(dm, ids[0]) == ids[1]          # never backwards

            assert await bob.typing(dm)
            assert (await event(alice, "typing", channel=dm))["uin"] == 12
            assert not await bob.typing(dm)                      # throttled in the client, not sent

            online = await alice.watch_presence(dm)
            assert 12 in online and alice.online(dm) >= {12}
            await closed(bob, bob2)
            assert (await event(alice, "presence", channel=dm, uin=12))["online"] is False
            bob = client(m, 12, 1)
            await bob.connect()
            assert (await event(alice, "presence", channel=dm, uin=12))["online"] is True

            edit_id = await alice.edit(dm, ids[0], "m0, fixed")
            edited = await event(bob, "edit", channel=dm)
            assert (edited["id"], edited["ref"], edited["text"]) == (edit_id, ids[0], "m0, fixed")
            with pytest.raises(ClientError) as exc:
                await bob.edit(dm, ids[0], "not mine")
            assert exc.value.code == "FORBIDDEN"
            await alice.delete(dm, ids[1])
            assert (await event(bob, "delete", channel=dm))["ref"] == ids[1]
            page = await bob.history(dm)
            shown = {msg["id"]: msg for msg in page["msgs"]}
            assert shown[ids[0]]["text"] == "m0, fixed" and shown[ids[0]]["edited"]
            assert shown[ids[1]].get("deleted") and not shown[ids[1]].get("text")
            assert shown[ids[2]]["text"] == "m2" and not page["more"]
            assert edit_id not in shown                           # the events themselves are not listed
            assert alice.held.get(dm, ids[0])["text"] == "m0, fixed"   # own edit applied locally too
        finally:
            await closed(alice, bob, bob2)
    asyncio.run(main())


def test_history_pages_back_past_500_messages(shared_mesh):
    m = shared_mesh

    async def main():
        alice, bob = await connected(client(m, 13, 0), client(m, 14, 1))
        try:
            dm = (await alice.create_dm(14))["channel"]
            sent = [await alice.send(dm, f"n{i}") for i in range(520)]
            got, before = [], None
            while True:
                page = await bob.history(dm, before=before, limit=100)
                got = page["msgs"] + got
                if not page["more"]:
                    break
                before = page["msgs"][0]["id"]
            assert [msg["id"] for msg in got] == sent
            assert [msg["text"] for msg in got] == [f"n{i}" for i in range(520)]
            assert page["first"] <= sent[0]
        finally:
            await closed(alice, bob)
    asyncio.run(main())


def test_group_roles_invite_remove_and_edit_retries_are_stored_once(shared_mesh):
    m = shared_mesh

    async def main():
        owner, member, guest = await connected(client(m, 15, 0), client(m, 16, 1), client(m, 17, 0))
        try:
            made = await owner.create_group([16], name="team")
            grp = made["channel"]
            assert made["created"] and made["kind"] == "group" and grp.startswith("grp:15:")
            with pytest.raises(ClientError) as exc:
                await member.invite(grp, [17])
            assert exc.value.code == "FORBIDDEN"
            await owner.invite(grp, [17])
            assert (await owner.set_role(grp, 16, "admin"))["role"] == "admin"
            items = {i["channel"]: i for i in (await member.channels())["items"]}
            assert items[grp]["role"] == "admin" and items[grp]["kind"] == "group" and items[grp]["members"] == 3
            await member.remove(grp, [17])
            with pytest.raises(ClientError) as exc:
                await guest.send(grp, "still in?")
            assert exc.value.code == "NOT_MEMBER"
            msg_id = await owner.send(grp, "hello team")
            # an edit whose first try is lost in the link: sent again with the same client time
            edit_id = await owner.edit(grp, msg_id, "hello, team")
            entry = owner.mailbox.add(owner.uin, owner.device, grp, "hello, team", [owner.clock.last],
                                      kind="edit", ref=msg_id)             # the same edit once more
            assert await owner._settled(entry, None, None) == edit_id      # answered, not stored twice
            assert (await member.history(grp))["msgs"][-1]["text"] == "hello, team"
            assert (await member.leave(grp))["channel"] == grp
            assert grp not in {i["channel"] for i in (await member.channels())["items"]}
        finally:
            await closed(owner, member, guest)
    asyncio.run(main())


def test_membership_replies_have_the_client_shapes(shared_mesh):
    m = shared_mesh

    async def main():
        owner, = await connected(client(m, 18, 0))
        try:
            made = await owner.create_group([19], name="crew")
            grp = made["channel"]
            problems = []
            if made.get("members") != 2:
                problems.append(f"create members {made.get('members')!r}")
            if made.get("title") != "crew":
                problems.append(f"create title {made.get('title')!r}")
            invited = await owner.invite(grp, [20])
            if (invited.get("uins"), invited.get("members")) != ([20], 3):
                problems.append(f"invite {invited}")
            removed = await owner.remove(grp, [20])
            if (removed.get("uins"), removed.get("members")) != ([20], 2):
                problems.append(f"remove {removed}")
            role = await owner.set_role(grp, 19, "admin")
            if (role.get("uin"), role.get("role")) != (19, "admin"):
                problems.append(f"role {role}")
            assert not problems, problems
        finally:
            await closed(owner)
    asyncio.run(main())
