"""Reads: a page of a channel's stored messages (``sync``), and a heartbeat's heads.

A read never shows more than a channel's ``visible`` id (the newest acked: with
replication a stored message waits for its majority before that) and never an
expired message the sweeper has not reached yet.  Pages are bounded
(wire.SYNC_PAGE) and say how far they cover, so a client moves its window past
gaps (expired, trimmed, never assigned ids) without asking again.  Kept apart:
reads only look at the channels and the store, they change nothing.
"""
from __future__ import annotations

from nodes.logic.channels import ChannelState, push_of
from nodes.logic.serving import Serving
from nodes.protocol import wire
from nodes.runtime.ports import Msg
from nodes.storage import store as keys
from nodes.storage.store import Store


class Reads:
    """No state of its own: the channels served (``serving``) and the store."""

    def __init__(self, serving: Serving, store: Store) -> None:
        self.serving, self.store = serving, store

    def _page(self, ch: ChannelState, after: int, budget: int, now: float) -> tuple[list[Msg], int, bool, int]:
        """Live stored messages of ``ch`` after ``after``, oldest first, at most ``budget``.

        Returns (messages, first, more, upto): ``first`` is the oldest id still
        in the channel's queue (a client behind it moves its window there);
        ``more`` says the page was cut short by the budget; ``upto`` is the
        newest id the page covers: ids in (after, upto] that are not in the
        page are gone for good (expired, trimmed, or never assigned), so a
        client may move its window to ``upto`` once it holds the page.
        """
        last = ch.visible
        first = ch.first_visible()
        after = max(min(after, last), first - 1)      # nothing before the queue's head
        msgs: list[Msg] = []
        if after >= last:
            return msgs, first, False, last
        if budget <= 0:
            return msgs, first, True, after
        end = keys.message_key(ch.name, last)
        for key, raw in self.store.scan(keys.channel_prefix(ch.name), keys.message_key(ch.name, after + 1)):
            if key > end:
                break
            rec = keys.decode(raw)
            if rec[4] < now:                                  # expired, not yet swept
                continue
            if len(msgs) >= budget:
                return msgs, first, True, msgs[-1]["id"]
            msgs.append(push_of(ch.name, keys.unpack_u64(key[-8:]), rec))
        return msgs, first, False, last

    def sync(self, msg: Msg, now: float) -> Msg:
        """One page of the stored messages of a channel after ``after``."""
        ch = self.serving.member_channel(msg["channel"], msg["uin"])
        msgs, first, more, upto = self._page(ch, msg["after"], wire.SYNC_PAGE, now)
        return wire.reply("sync", msg["rid"], channel=ch.name, msgs=msgs, first=first,
                          last=ch.visible, more=more, upto=upto)

    def heads(self, msg: Msg, now: float) -> Msg:
        """For a heartbeat: the newest id of each listed channel, and one page of
        what the client is missing across them (SYNC_PAGE messages in all)."""
        uin, budget = msg["uin"], wire.SYNC_PAGE
        heads: dict[str, int] = {}
        firsts: dict[str, int] = {}
        uptos: dict[str, int] = {}
        msgs: list[Msg] = []
        more: list[str] = []
        not_member: list[str] = []
        unavailable: list[str] = []
        for name, have in msg["channels"].items():
            if self.serving.unserved(name) is not None:
                unavailable.append(name)               # moving to (or served by) another node, or here
                continue
            ch = self.serving.channels.get(name)
            if ch is None or uin not in ch.members:
                not_member.append(name)
                continue
            page, firsts[name], cut, uptos[name] = self._page(ch, have, budget, now)
            heads[name] = ch.visible
            budget -= len(page)
            msgs += page
            if cut:
                more.append(name)
        return wire.reply("heads", msg["rid"], heads=heads, first=firsts, upto=uptos, msgs=msgs,
                          more=more, not_member=not_member, unavailable=unavailable)
