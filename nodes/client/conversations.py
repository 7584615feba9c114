"""The conversation calls of ``AsyncClient``: everything beside sending and receiving messages.

``channels()`` (mine, with unread counts), ``read``/``receipts``, ``history`` (paging
back), ``edit``/``delete`` (through the mailbox, like ``send``), ``typing``,
``watch_presence``, ``create_dm``/``create_group``, ``invite``/``remove``/``leave``/
``set_role``, and the events their pushes become (``events(kind, ...)``, ``next_event``):
read, receipt, typing, presence, edit, delete.  docs/client.md, "Conversations", says
what each one promises.

Why a mixin of ``AsyncClient`` and not an object of its own: these are methods of the
one client an application holds (``client.read(...)``), and they share its link,
clock, mailbox and login; a separate object would need a second copy of every
signature to delegate to it.  So this class owns only its state, set up by
``_init_conversations`` and listed there, and names what it uses of the client
(the annotations at the top of the class).  The timing rules are pure and tested
on their own: ``nodes.client.ephemeral`` (typing, watches), ``nodes.client.edits``
(edits applied to held messages), ``nodes.client.events`` (the event buffers).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from nodes.client.blocking import ClientClock, ClientError
from nodes.client.connection import Link
from nodes.client.edits import Held
from nodes.client.ephemeral import DEFAULT_TTL, TypingThrottle, Watches
from nodes.client.events import EventQueues
from nodes.client.mailbox import UNKNOWN, Entry, Mailbox
from nodes.protocol import wire

log = logging.getLogger(__name__)

PUSHED_EVENTS = {"read": ("uin", "id"), "receipt": ("uin", "id"), "typing": ("uin",),
                 "presence": ("uin", "online")}     # pushes besides msg, and their fields beside channel


class Conversations:
    """Conversation calls and events, mixed into ``AsyncClient``.

    Owns (set by ``_init_conversations``): ``held`` (newest messages per channel, edits
    applied), ``event_queues``, ``watches`` (presence), ``typing_throttle``,
    ``_rewatch_now`` / ``_rewatcher`` (the task renewing watches, started by ``connect``).
    """

    # what the client provides
    link: Link
    clock: ClientClock
    mailbox: Mailbox
    limits: dict
    uin: int | None
    device: int
    retries: int
    _closed: bool
    _settled: Callable[[Entry, float | None, int | None], Awaitable[int]]   # send a mailbox entry
    _before_retry: Callable[[int], Awaitable[None]]                        # back off (link-aware)

    def _init_conversations(self, on_event: Callable[[dict], None] | None) -> None:
        self.held = Held()
        self.event_queues = EventQueues(on_event=on_event)
        self.watches = Watches(DEFAULT_TTL)
        self.typing_throttle = TypingThrottle()
        self._rewatch_now = asyncio.Event()
        self._rewatcher: asyncio.Future | None = None

    def _conversations_logged_in(self, relogin: bool) -> None:
        """After a login: the limits of typing and watches; after a re-login, renew every watch now."""
        self.watches.ttl = float(self.limits.get("watch_ttl", self.watches.ttl))
        if self.limits.get("typing_rate"):
            self.typing_throttle.every = 1.0 / float(self.limits["typing_rate"])
        if relogin:
            self.watches.renew_all()
            self._rewatch_now.set()

    # --- events ----------------------------------------------------------------
    def _pushed_event(self, kind: str, msg: dict) -> None:
        """read / receipt / typing / presence: checked, then buffered for the application."""
        event = {"t": kind, "channel": msg.get("channel")}
        for name in PUSHED_EVENTS[kind]:
            event[name] = msg.get(name)
        if type(event["channel"]) is not str or type(event["uin"]) is not int:
            raise ValueError(f"a {kind} push without a channel and a uin")
        if kind == "presence":
            if type(event["online"]) is not bool:
                raise ValueError("a presence push without online")
            self.watches.pushed(event["channel"], event["uin"], event["online"])
        elif kind != "typing" and type(event["id"]) is not int:
            raise ValueError(f"a {kind} push without an id")
        self.event_queues.put(event)

    def events(self, *kinds: str):
        """Async iterator over conversation events of ``kinds`` (default: all) in the order
        they came: ``read`` (my cursor moved on another device), ``receipt``, ``typing``,
        ``presence`` (watched channels), ``edit`` / ``delete`` (with ``msg``: the changed
        message when held).  Each kind is buffered (bounded) until read."""
        return self.event_queues.stream(kinds)

    async def next_event(self, *kinds: str, timeout: float | None = None) -> dict | None:
        """The next event of ``kinds`` (default: all), or None after ``timeout`` seconds."""
        return await self.event_queues.get(kinds, timeout)

    # --- edits and deletes (through the mailbox) -------------------------------
    async def edit(self, channel: str, msg_id: int, text: str, timeout: float | None = None,
                   retries: int | None = None) -> int:
        """Replace the text of my message ``msg_id``; returns the edit event's id.  Through the
        mailbox like ``send`` (same client time on every try: stored once; BUSY keeps it going).
        Refused: FORBIDDEN (not the author), NO_MESSAGE, TOO_LATE (after the edit window), ..."""
        if len(text.encode("utf-8")) > self.limits["max_text"]:
            raise ClientError(wire.Err.TOO_LONG, f"an edit is at most {self.limits['max_text']} bytes")
        return await self._event_entry("edit", channel, msg_id, text, timeout, retries)

    async def delete(self, channel: str, msg_id: int, timeout: float | None = None,
                     retries: int | None = None) -> int:
        """Delete message ``msg_id`` (mine, or any as a group's owner/admin); returns the delete
        event's id.  Through the mailbox like ``send``."""
        return await self._event_entry("delete", channel, msg_id, "", timeout, retries)

    async def _event_entry(self, kind: str, channel: str, msg_id: int, text: str,
                           timeout: float | None, retries: int | None) -> int:
        if self.uin is None:
            raise ClientError("NOT_CONNECTED", "connect() first: the mailbox is per user")
        entry = self.mailbox.add(self.uin, self.device, channel, text, [self.clock.next()], kind=kind, ref=msg_id)
        return await self._settled(entry, timeout, retries)

    # --- conversations -----------------------------------------------------------
    async def channels(self, after: str | None = None, limit: int = 50) -> dict:
        """One page of my channels, most recently active first: ``{"items": [...], "next"?}``
        (pass ``next`` as ``after`` for the next page).  An item: channel, kind, title?, role,
        members, last, read, unread, unread_more?, active, preview?."""
        req: dict = {"t": "channels", "limit": limit}
        if after is not None:
            req["after"] = after
        return await self.link.request(req)

    async def read(self, channel: str, msg_id: int) -> int:
        """I have read up to ``msg_id``: my cursor moves (never back); returns the cursor now.
        My other devices get a ``read`` event, small chats' members a ``receipt``."""
        return (await self.link.request({"t": "read", "channel": channel, "id": msg_id}))["id"]

    async def receipts(self, channel: str, msg_id: int) -> list:
        """The other members who have read up to ``msg_id``."""
        return (await self.link.request({"t": "receipts", "channel": channel, "id": msg_id}))["read_by"]

    async def history(self, channel: str, before: int | None = None, limit: int = 50) -> dict:
        """Stored messages older than ``before`` (default: from the newest), oldest first, edits
        and deletes applied: ``{"msgs", "more", "first"}``; page back with ``before`` = the
        first id of the page.  The messages are held, so later edits apply to them."""
        req: dict = {"t": "history", "channel": channel, "limit": limit}
        if before is not None:
            req["before"] = before
        page = await self.link.request(req)
        for msg in page["msgs"]:
            self.held.hold(msg)
        return page

    async def typing(self, channel: str) -> bool:
        """Tell the channel's other online members that I am typing; at most one notice per
        channel per 2 s goes out (False: skipped, or RATE_LIMITED by the broker)."""
        if not self.typing_throttle.ready(channel, time.monotonic()):
            return False
        try:
            await self.link.request({"t": "typing", "channel": channel})
        except ClientError as exc:
            if exc.code != wire.Err.RATE_LIMITED:
                raise
            return False
        return True

    async def watch_presence(self, channel: str) -> list:
        """Who in ``channel`` is online now; then ``presence`` events while watched.  Renewed
        by the client before the server's TTL and after every re-login (changes missed
        meanwhile come as events).  (``watch(channel, since)`` is about messages.)"""
        reply = await self.link.request({"t": "watch", "channel": channel})
        for event in self.watches.started(channel, reply["online"], time.monotonic()):
            self.event_queues.put(event)
        self._rewatch_now.set()
        return sorted(reply["online"])

    async def unwatch_presence(self, channel: str) -> None:
        self.watches.stopped(channel)
        await self.link.request({"t": "unwatch", "channel": channel})

    def online(self, channel: str) -> set:
        """Who is online in a watched channel, as the client knows it now."""
        return set(self.watches.online.get(channel, ()))

    async def _rewatches(self) -> None:
        """Renew every watch before the server forgets it, and at once after a re-login."""
        while not self._closed:
            try:
                await asyncio.wait_for(self._rewatch_now.wait(), self.watches.wait(time.monotonic()))
            except asyncio.TimeoutError:
                pass
            self._rewatch_now.clear()
            for channel in self.watches.due(time.monotonic()):
                try:
                    await self.watch_presence(channel)
                except ClientError as exc:
                    log.warning("renewing the watch of %s failed: %s", channel, exc)
                    if exc.code in (wire.Err.NOT_MEMBER, wire.Err.NO_CHANNEL, wire.Err.TOO_MANY):
                        self.watches.stopped(channel)
                    if self.link.fatal is not None:
                        return
                    await asyncio.sleep(1.0)

    async def create_dm(self, uin: int) -> dict:
        """The one direct channel of me and ``uin`` (made on the first call, found after):
        ``{"channel", "kind": "dm", "created", "members"}``."""
        return await self._stored_request({"t": "create", "kind": "dm", "with": uin})

    async def create_group(self, members: list, name: str | None = None) -> dict:
        """A new group with me as its owner and ``members``; ``{"channel", "kind", "created",
        "title"?, "members"}``."""
        req: dict = {"t": "create", "kind": "group", "members": list(members)}
        if name is not None:
            req["name"] = name
        return await self._stored_request(req)

    async def invite(self, channel: str, uins: list) -> dict:
        """Add members (owner or admin): ``{"channel", "uins": added now, "members"}``."""
        return await self._stored_request({"t": "invite", "channel": channel, "uins": list(uins)})

    async def remove(self, channel: str, uins: list) -> dict:
        """Remove members (owner or admin): ``{"channel", "uins": removed now, "members"}``."""
        return await self._stored_request({"t": "remove", "channel": channel, "uins": list(uins)})

    async def leave(self, channel: str) -> dict:
        return await self._stored_request({"t": "leave", "channel": channel})

    async def set_role(self, channel: str, uin: int, role: str) -> dict:
        """owner, admin or member (the owner only; "owner" hands ownership over)."""
        return await self._stored_request({"t": "role", "channel": channel, "uin": uin, "role": role})

    async def _stored_request(self, req: dict, retries: int | None = None) -> dict:
        """A request the server stores (create, membership, role): one client time for every
        try, so a retry after an unknown outcome answers the original result (exactly once)."""
        req = dict(req, ctime=self.clock.next())
        tries = 1 + (self.retries if retries is None else retries)
        for attempt in range(1, tries + 1):
            try:
                return await self.link.request(req)
            except ClientError as exc:
                if exc.code not in UNKNOWN or self.link.fatal is not None or attempt == tries:
                    raise
                await self._before_retry(attempt)
        raise AssertionError("unreachable")
