"""asyncio client library: the way an application talks to an imesh mesh.

    client = AsyncClient(topology_or_brokers, token, device=1,
                         mailbox="me.sqlite", state_file="me.brokers.json")
    await client.connect()                       # measure brokers, log in on the nearest
    client.watch("lobby", since=0)               # optional: fetch what is stored after an id
    msg_id = await client.send("lobby", "hi")    # blocks until acked; BUSY after 2 failed tries
    async for msg in client.messages():          # every message once, in id order per channel
        ...
    await client.close()

Conversations (docs/client.md, "Conversations"; the methods live in
``nodes.client.conversations``, mixed in): ``channels()`` (mine, with unread counts),
``read``/``receipts``, ``history`` (paging back), ``edit``/``delete`` (through the mailbox,
like ``send``), ``typing``, ``watch_presence``, ``create_dm``/``create_group``,
``invite``/``remove``/``leave``/``set_role``; their pushes come as events
(``events(kind, ...)``, ``next_event``): read, receipt, typing, presence, edit, delete.

What it guarantees (docs/client.md states it precisely):

- **No skipped message**: the window of a channel moves past an id only
  when the client holds it or the server said it is gone
  (``nodes.client.windows``); gaps are filled by sync, heartbeats bring the rest.
- **One reconnect at a time** (``nodes.client.connection.Link``): requests never
  reconnect by themselves; they wait for the link and are sent again.
- **Nearest broker** (``nodes.client.nearest``): measured with ``ping``,
  remembered across restarts, same IDC first on failover.
- **Mailbox** (``nodes.client.mailbox``): a message is on disk before it is sent
  and is sent again with the same client time until acked, refused or
  expired -- also after a restart; "busy" after two failed tries does not
  drop it.
- **A deaf reader never**: malformed frames and pushes are counted
  (``malformed``) and skipped.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time

import zmq
import zmq.asyncio

from nodes.client.blocking import ClientClock, ClientError, login_request
from nodes.client.connection import Link, backoff
from nodes.client.conversations import PUSHED_EVENTS, Conversations
from nodes.client.edits import EVENT_KINDS, event_of
from nodes.client.fragments import Assembler, BadFragment, new_group_id, split_utf8
from nodes.client.mailbox import UNKNOWN, Mailbox
from nodes.client.nearest import Brokers
from nodes.client.windows import Windows
from nodes.protocol import wire

log = logging.getLogger(__name__)

DEFAULT_LIFETIME = 86400.0          # until the login reply says the mesh's message lifetime
MAX_SYNC_PAGES = 100                # per catch-up; the next heartbeat goes on from there


def page_upto(page: dict) -> int:
    """The newest id a sync page speaks for: ``upto`` (protocol 2), else the channel's newest
    id when the page was complete, else the last id in it (older servers)."""
    if "upto" in page:
        return page["upto"]
    if not page["more"]:
        return page["last"]
    return max((m["id"] for m in page["msgs"]), default=0)


class AsyncClient(Conversations):
    """The chat client: a ``Link`` to the brokers, windows per channel, a mailbox of sends.

    ``brokers``: endpoints (str or list), ``(endpoint, idc)`` pairs, or a Topology.
    ``mailbox``: a path, a ``Mailbox``, or None (in memory: kept only while the process lives).
    ``state_file``: where the last good broker is remembered (None: not remembered).
    ``on_mail(event, entry, detail)``: told about mailbox outcomes -- "acked" (detail: id),
    "refused" (ClientError), "busy" (ClientError), "expired", "cancelled".
    ``on_event(event)``: told about every conversation event as it comes (they are also
    buffered for ``events()`` / ``next_event()``).
    """

    role = "broker"

    def __init__(self, brokers, token, device: int = 0, net: str = "wired",
                 timeout: float = 3.0, retries: int = 2, ctx: zmq.asyncio.Context | None = None,
                 mailbox=None, state_file: str | None = None, on_mail=None, on_event=None):
        self.token, self.device, self.net = token, device, net
        self.timeout = timeout
        self.retries = retries
        self.brokers = Brokers(brokers, state_file)
        self.link = Link(self.brokers, self._login_request, self._logged_in, self._on_push,
                         timeout=timeout, ctx=ctx)
        self._own_mailbox = not isinstance(mailbox, Mailbox)
        self.mailbox = Mailbox(mailbox or ":memory:") if self._own_mailbox else mailbox
        self.on_mail = on_mail
        self.mail: collections.Counter[str] = collections.Counter()   # mailbox outcomes: acked, refused, busy, ...
        self.windows = Windows()
        self.assembler = Assembler()
        self.limits: dict = {"max_text": wire.MAX_TEXT_BYTES, "max_fragments": 100,
                       "message_lifetime": DEFAULT_LIFETIME}
        self.clock = ClientClock()
        self.uin: int | None = None
        self.interval = None
        self.not_member: set = set()
        self.syncs = 0                         # sync requests sent (a figure for tests and stats)
        self.drop_push = None                  # test hook: callable(msg) -> True drops a push
        self._incoming: asyncio.Queue = asyncio.Queue()
        self._beater: asyncio.Future | None = None
        self._beat_now = asyncio.Event()
        self._syncing: dict = {}                     # channel -> Task
        self._posting: dict = {}                     # mailbox seq -> Task delivering it
        self._closed = False
        self._init_conversations(on_event)           # held, event_queues, watches, ...

    # --- connection ------------------------------------------------------------
    @property
    def endpoint(self) -> str | None:
        return self.link.endpoint

    @property
    def reconnects(self) -> int:
        return self.link.reconnects

    @property
    def malformed(self) -> int:
        return self.link.malformed

    async def connect(self) -> dict:
        """Measure the brokers, log in on the nearest that answers, heartbeat once, and start
        sending what the mailbox still holds from earlier runs."""
        reply = await self.link.start()
        self._beater = asyncio.ensure_future(self._heartbeats())
        self._rewatcher = asyncio.ensure_future(self._rewatches())
        await self.heartbeat()
        self._resume_mailbox()
        return reply

    def _login_request(self) -> dict:
        return login_request(self.token, self.device, self.net)

    def _logged_in(self, reply: dict) -> None:
        """After every login: take its limits; after a re-login, heartbeat (and so sync) at once."""
        self.uin = reply["uin"]
        self.interval = reply["hb"]
        self.limits.update(reply.get("limits", {}))
        self.assembler.lifetime = self.limits["message_lifetime"]
        self.clock.last = max(self.clock.last, self.mailbox.newest_ctime(reply["uin"], self.device))
        self._conversations_logged_in(relogin=self.link.generation > 1)
        if self.link.generation > 1:
            self._beat_now.set()

    def _on_push(self, msg: dict) -> None:
        """Whatever the broker sends that is not a reply.  Raises on a malformed push (the
        link counts it and goes on)."""
        kind = msg.get("t")
        if kind in PUSHED_EVENTS:
            self._pushed_event(kind, msg)
            return
        if kind != "msg":
            log.info("ignored a %r notice", kind)
            return
        channel, msg_id = msg.get("channel"), msg.get("id")
        if type(channel) is not str or type(msg_id) is not int or msg_id < 1:
            raise ValueError("a push without a channel name and a positive id")
        if self.drop_push is None or not self.drop_push(msg):
            self._accept(msg)

    # --- receiving -------------------------------------------------------------
    def _deliver(self, msgs) -> None:
        now = time.monotonic()
        for m in msgs:
            try:
                whole = self.assembler.add(m, now)
            except BadFragment as exc:
                self.link.dropped(f"fragment {m.get('channel')}#{m.get('id')}", exc)
                continue
            if whole is None:
                continue
            if whole.get("kind") in EVENT_KINDS:
                self.event_queues.put(event_of(whole, self.held.apply(whole)))
            elif "kind" in whole:
                log.info("skipped %s#%s of an unknown kind %r", whole["channel"], whole["id"], whole["kind"])
            else:
                self.held.hold(whole)
                self._incoming.put_nowait(whole)

    def _accept(self, msg: dict) -> None:
        ready, gap = self.windows.accept(msg)
        self._deliver(ready)
        if gap:
            self._sync_soon(msg["channel"])

    def watch(self, channel: str, since: int | None = None) -> None:
        """Follow a channel; with ``since``, first fetch what is stored after that id."""
        if since is not None:
            self.windows.watch(channel, since)
            self._sync_soon(channel)

    def _sync_soon(self, channel: str) -> None:
        task = self._syncing.get(channel)
        if (task is None or task.done()) and not self._closed:
            self._syncing[channel] = asyncio.ensure_future(self._catch_up(channel))

    async def _catch_up(self, channel: str) -> None:
        """Page through sync until the window has no gap and reaches the newest id."""
        try:
            for _page in range(MAX_SYNC_PAGES):
                self.syncs += 1
                page = await self.link.request({"t": "sync", "channel": channel,
                                                "after": self.windows.last.get(channel, 0)})
                self._deliver(self.windows.page(channel, page["msgs"], page["first"], page_upto(page)))
                if not page["more"] and not self.windows.gap(channel):
                    return
        except ClientError as exc:
            if exc.code in (wire.Err.NOT_MEMBER, wire.Err.NO_CHANNEL):
                self.not_member.add(channel)
            log.info("sync of %s deferred to the next heartbeat: %s", channel, exc)

    async def messages(self):
        """Async iterator over incoming messages, once each, in id order per channel."""
        while True:
            yield await self._incoming.get()

    async def recv(self, timeout: float | None = None) -> dict | None:
        """The next incoming message, or None after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self._incoming.get(), timeout)
        except asyncio.TimeoutError:
            return None

    # --- heartbeats ------------------------------------------------------------
    async def heartbeat(self) -> dict | None:
        """One heartbeat with our windows; None when it got no answer in time (the link
        decides whether that means another broker)."""
        try:
            ack = await self.link.request({"t": "hb", "net": self.net, "channels": self.windows.snapshot()})
        except ClientError as exc:
            if exc.code != "TIMEOUT":
                raise
            return None
        self.interval = ack["interval"]
        self.not_member.update(ack["not_member"])
        self.assembler.expire(time.monotonic())
        first, upto = ack["first"], hb_upto(ack)
        for channel in set(first) | set(upto):
            self._deliver(self.windows.page(channel, [], first.get(channel), upto.get(channel)))
        for channel, head in ack["heads"].items():
            if self.windows.behind(channel, head) or self.windows.gap(channel):
                self._sync_soon(channel)
        for channel in ack["more"]:
            self._sync_soon(channel)
        return ack

    async def _heartbeats(self) -> None:
        """Every interval (as the server asks), and at once after a re-login."""
        while not self._closed:
            try:
                await asyncio.wait_for(self._beat_now.wait(), self.interval or 10)
            except asyncio.TimeoutError:
                pass
            self._beat_now.clear()
            try:
                await self.heartbeat()
            except ClientError as exc:
                log.warning("heartbeat failed: %s", exc)
                if self.link.fatal is not None:
                    return
            self._resume_mailbox()

    # --- sending ---------------------------------------------------------------
    async def send(self, channel: str, text: str, timeout: float | None = None,
                   retries: int | None = None) -> int:
        """Put the message in the mailbox, send it, wait for the ack; returns the msg id.

        A text over the broker's limit goes as fragments (the id is the last one's).
        Refused: ClientError with the server's code (not stored, not kept).  After
        ``retries`` (default 2) failed tries: ClientError("BUSY") -- the message stays in
        the mailbox (``exc.reply["mailbox"]`` is its entry number) and is sent again
        whenever the link is back, until acked, refused, expired or ``cancel``-led."""
        if self.uin is None:
            raise ClientError("NOT_CONNECTED", "connect() first: the mailbox is per user")
        pieces = [text]
        if len(text.encode("utf-8")) > self.limits["max_text"]:
            pieces = split_utf8(text, self.limits["max_text"])
            if len(pieces) > self.limits["max_fragments"]:
                raise ClientError(wire.Err.TOO_LONG, f"text needs {len(pieces)} fragments; the limit is "
                                  f"{self.limits['max_fragments']}")
        group = new_group_id() if len(pieces) > 1 else None
        entry = self.mailbox.add(self.uin, self.device, channel, text,
                                 [self.clock.next() for _ in pieces], group)
        return await self._settled(entry, timeout, retries)

    async def _settled(self, entry, timeout: float | None, retries: int | None) -> int:
        fut = asyncio.get_running_loop().create_future()
        self._post(entry, fut, self.retries if retries is None else retries, timeout)
        return await asyncio.shield(fut)

    def pending(self) -> list:
        """Messages in the mailbox not yet settled (oldest first)."""
        return self.mailbox.pending(self.uin, self.device) if self.uin is not None else []

    async def cancel(self, seq: int) -> bool:
        """Stop sending mailbox entry ``seq``; True if it was still there.  (If the server
        stored it already, it stays stored: cancel only stops the retries.)"""
        task = self._posting.pop(seq, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        entry = self.mailbox.get(seq)
        gone = self.mailbox.remove(seq)
        if gone:
            self._mail("cancelled", entry, None)
        return gone

    def _resume_mailbox(self) -> None:
        """Start sending every entry of ours that no task is sending (earlier runs, busy ones)."""
        for entry in self.pending():
            if entry.seq not in self._posting and not self._closed:
                self._post(entry, None, self.retries, None)

    def _post(self, entry, fut, busy_after: int, timeout) -> None:
        self._posting[entry.seq] = asyncio.ensure_future(self._deliver_entry(entry, fut, busy_after, timeout))

    async def _deliver_entry(self, entry, fut, busy_after: int, timeout) -> None:
        """Send one mailbox entry until it is settled; tell ``fut`` (the waiting app) the outcome,
        or BUSY after ``busy_after`` failed tries while this goes on in the background."""
        outcome = None
        try:
            while outcome is None:
                outcome = await self._try_entry(entry, timeout)
                if outcome is None:
                    entry.tries = self.mailbox.tried(entry.seq, entry.error)
                    if entry.tries == max(1, busy_after):
                        busy = ClientError(wire.Err.BUSY, f"system busy: no ack after {entry.tries} tries "
                                           f"(last: {entry.error}); kept in the mailbox",
                                           {"mailbox": entry.seq, "last": entry.error})
                        self._mail("busy", entry, busy)
                        _settle(fut, exc=busy)
                    await self._before_retry(entry.tries)
        except asyncio.CancelledError:
            _settle(fut, exc=ClientError("CANCELLED", "stopped before it was settled (cancelled or "
                                         "the client closed); still in the mailbox unless cancelled"))
            raise
        finally:
            self._posting.pop(entry.seq, None)
        event, detail = outcome
        if event != "stopped":
            self.mailbox.remove(entry.seq)
            self._mail(event, entry, detail)
        if event == "acked":
            _settle(fut, result=detail)
        else:
            _settle(fut, exc=detail)

    async def _try_entry(self, entry, timeout) -> tuple | None:
        """One try: ("acked", id), ("refused", exc), ("expired", exc), ("stopped", exc) (the
        link ended: the entry stays), or None (unknown outcome; ``entry.error`` says why)."""
        if time.time() - entry.created > self.limits["message_lifetime"]:
            return "expired", ClientError("EXPIRED", "not acked within the message lifetime; dropped")
        try:
            ids = await self._send_pieces(entry, timeout)
        except ClientError as exc:
            if self.link.fatal is not None:
                return "stopped", exc
            if exc.code in UNKNOWN:
                entry.error = exc.code
                return None
            return "refused", exc
        for msg_id in ids:
            self._deliver(self.windows.own(entry.channel, msg_id))
        self._hold_own(entry, ids[-1])
        return "acked", ids[-1]

    def _hold_own(self, entry, msg_id: int) -> None:
        """What this client stored is held like a delivered message (so edits apply to it)."""
        own = {"channel": entry.channel, "id": msg_id, "uin": self.uin, "device": self.device,
               "ctime": entry.ctime, "stime": int(time.time() * 1000), "text": entry.text}
        if entry.kind is None:
            self.held.hold(own)
        else:
            self.held.apply(dict(own, kind=entry.kind, ref=entry.ref))

    async def _send_pieces(self, entry, timeout) -> list:
        """All pieces of an entry, in order, each with its own client time (reused on every
        try: the server acks a piece it stored with its original id); their ids."""
        if entry.kind is not None:                 # an edit or delete: one request, no fragments
            req = {"t": entry.kind, "channel": entry.channel, "id": entry.ref, "ctime": entry.ctime}
            if entry.kind == "edit":
                req["text"] = entry.text
            return [(await self.link.request(req, timeout))["id"]]
        count = len(entry.ctimes)
        ids = []
        texts = [entry.text] if count == 1 else split_utf8(entry.text, self.limits["max_text"])
        if len(texts) != count:
            raise ClientError(wire.Err.TOO_LONG, "the broker's max_text changed since this was written")
        for index, (ctime, text) in enumerate(zip(entry.ctimes, texts)):
            req = {"t": "send", "channel": entry.channel, "ctime": ctime, "text": text}
            if count > 1:
                req["frag"] = [entry.group, index, count]
            ids.append((await self.link.request(req, timeout))["id"])
        return ids

    async def _before_retry(self, tries: int) -> None:
        """Back off before trying again; a new login (the link came back) cuts the wait short."""
        generation = self.link.generation
        deadline = time.monotonic() + backoff(tries, base=0.1, cap=2.0)
        while time.monotonic() < deadline and self.link.generation == generation:
            await asyncio.sleep(0.05)

    def _mail(self, event: str, entry, detail) -> None:
        self.mail[event] += 1
        if self.on_mail is not None:
            try:
                self.on_mail(event, entry, detail)
            except Exception:                          # noqa: BLE001 -- the app's bug must not stop sending
                log.exception("on_mail callback failed")

    async def sync(self, channel: str, after: int) -> dict:
        return await self.link.request({"t": "sync", "channel": channel, "after": after})

    async def close(self, logout: bool = True) -> None:
        """Stop; what the mailbox holds stays there for the next run."""
        self._closed = True
        tasks = [t for t in [self._beater, self._rewatcher, *self._syncing.values(), *self._posting.values()]
                 if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if logout and self.link.fatal is None and self.link.connected.is_set():
            try:
                await self.link.request({"t": "logout"}, timeout=1.0)
            except ClientError:
                pass
        await self.link.close()
        if self._own_mailbox:
            self.mailbox.close()

    async def __aenter__(self):
        await self.connect()
        return self

    async def __aexit__(self, *exc):
        await self.close()


def hb_upto(ack: dict) -> dict:
    """Per channel, the newest id a heartbeat ack speaks for (its pushes came before it):
    ``upto`` (protocol 2), else (older servers) the head of each channel whose missing
    messages were all pushed (not in ``more``, owner available)."""
    if "upto" in ack:
        return ack["upto"]
    skip = set(ack["more"]) | set(ack.get("unavailable", ()))
    return {ch: head for ch, head in ack["heads"].items() if ch not in skip}


def _settle(fut, result=None, exc=None) -> None:
    if fut is None or fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
