"""The interactive bin/chat: lines typed are sent to the current channel, pushes are shown
as they come (with typing, "seen by" and edits/deletes), and /commands change what the
session follows, start conversations, page back, or look into the mailbox.  One-shot
tools: nodes/cli/chat.py."""
from __future__ import annotations

import asyncio
import sys
import time

from nodes.cli.chatsession import channel_last, connect, message_line, pending_line
from nodes.cli.chatview import Seen, Typing, change_line, channel_line
from nodes.cli.common import load_topology, tool_name
from nodes.client.aclient import AsyncClient
from nodes.client.blocking import ClientError

HELP = """commands:
  /join CHANNEL   follow CHANNEL and send your lines there (who is online is watched live)
  /leave          stop following the current channel (membership is unchanged)
  /channels       my channels, most recently active first, with unread counts
  /dm UIN         open the direct chat with UIN (made on first use)
  /group UIN,UIN [NAME]  make a group with them (you are its owner) and open it
  /invite UIN[,UIN]      add members to the current group (owner or admin)
  /who            who is online in the current channel (live), and its members (local topologies)
  /history N      N older messages of the current channel (N optional: 20; at most 200); again: further back
  /edit ID TEXT   replace the text of your message ID
  /delete ID      delete message ID (yours; any as a group's owner or admin)
  /typing         tell the channel you are typing
  /help           this list
  /quit           leave the chat (also Ctrl-D)
  //text          send a line that starts with /"""
HISTORY_DEFAULT, HISTORY_MAX, PAGE = 20, 200, 100
CHANNELS_MAX = 1000                # /channels lists at most this many


class ChatState:
    """What the interactive chat's commands change: the channel lines go to, the channels shown,
    how far back /history has paged, who is typing and who has seen my messages."""

    def __init__(self, args, client: AsyncClient):
        self.args, self.client = args, client
        self.channel = args.channel
        self.hidden: set = set()                  # channels left with /leave: their pushes are not shown
        self.back: dict[str, int] = {}            # channel -> the oldest id /history has shown
        self.typing = Typing()
        self.seen = Seen()
        self.reads = ReadMarker(client)

    def shows(self, msg: dict) -> bool:
        return msg["channel"] not in self.hidden


class ReadMarker:
    """Messages shown are read: the cursor follows the newest shown id per channel, one
    ``read`` request at a time per channel (a burst of messages costs one or two)."""

    def __init__(self, client: AsyncClient):
        self.client = client
        self.want: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.tasks: dict[str, asyncio.Task] = {}

    def shown(self, channel: str, msg_id: int) -> None:
        self.want[channel] = max(self.want.get(channel, 0), msg_id)
        task = self.tasks.get(channel)
        if task is None or task.done():
            self.tasks[channel] = asyncio.ensure_future(self._mark(channel))

    async def _mark(self, channel: str) -> None:
        while self.want[channel] > self.done.get(channel, 0):
            target = self.want[channel]
            try:
                await self.client.read(channel, target)
            except ClientError:
                return                            # e.g. no longer a member: nothing to mark
            self.done[channel] = target

    def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()


async def chat_command(state: ChatState, line: str) -> str | None:
    """Run a /command; the text to send for a plain line (None when nothing is to be sent)."""
    if not line.startswith("/"):
        return line or None
    if line.startswith("//"):
        return line[1:]
    name, _, rest = line[1:].partition(" ")
    command = CHAT_COMMANDS.get(name)
    if command is None:
        print(f"unknown command /{name}; /help lists them", flush=True)
        return None
    try:
        await command(state, rest.strip())
    except ClientError as exc:
        print(f"  error: {exc.code}: {exc.msg}", flush=True)
    return None


async def chat_help(state: ChatState, _rest: str) -> None:
    print(HELP, flush=True)


async def chat_join(state: ChatState, rest: str) -> None:
    if not rest or " " in rest:
        print("usage: /join CHANNEL", flush=True)
        return
    await channel_last(state.client, rest)
    await open_channel(state, rest)


async def open_channel(state: ChatState, channel: str) -> None:
    """Make ``channel`` the current one: follow it, and watch who is online (only there)."""
    before, state.channel = state.channel, channel
    state.hidden.discard(channel)
    state.client.watch(channel)
    if before is not None and before != channel:
        await unwatch_quietly(state.client, before)
    try:
        online = await state.client.watch_presence(channel)
        print(f"now in {channel} ({len(online)} online)", flush=True)
    except ClientError as exc:                    # e.g. TOO_MANY: presence of big rooms is not offered
        print(f"now in {channel} (who is online is not shown: {exc.code})", flush=True)


async def unwatch_quietly(client: AsyncClient, channel: str) -> None:
    try:
        await client.unwatch_presence(channel)
    except ClientError:
        pass


async def chat_leave(state: ChatState, _rest: str) -> None:
    if state.channel is None:
        print("not in a channel", flush=True)
        return
    state.hidden.add(state.channel)
    await unwatch_quietly(state.client, state.channel)
    print(f"left {state.channel} (still a member; /join {state.channel} to come back)", flush=True)
    state.channel = None


async def chat_who(state: ChatState, _rest: str) -> None:
    if state.channel is None:
        print("pick a channel first: /join CHANNEL", flush=True)
        return
    watched = state.channel in state.client.watches.online
    if watched:
        online = sorted(state.client.online(state.channel))
        print(f"online in {state.channel}: {', '.join(map(str, online)) or 'nobody'} "
              "(changes are shown as they happen)", flush=True)
    from nodes.ops.admin import Admin, AdminError
    topo = load_topology(state.args.config)
    if not topo.local:
        if not watched:
            print(f"/who of this channel needs the cluster secret: ask an operator "
                  f"(`{tool_name('mesh')} channel show`)", flush=True)
        return
    try:
        members = Admin(topo).channel("show", state.channel)["members"]
    except AdminError as exc:
        raise ClientError(exc.code, exc.msg) from None
    shown = ", ".join(map(str, members[:50])) + (f" ... ({len(members)} in all)" if len(members) > 50 else "")
    print(f"members of {state.channel}: {shown}", flush=True)


async def chat_history(state: ChatState, rest: str) -> None:
    """N messages older than what /history showed last in this channel (the newest first time)."""
    count = int(rest) if rest.isdigit() else (HISTORY_DEFAULT if not rest else 0)
    if state.channel is None or not 1 <= count <= HISTORY_MAX:
        print(f"usage: /history [N] (1..{HISTORY_MAX}, default {HISTORY_DEFAULT}), in a channel", flush=True)
        return
    channel = state.channel
    msgs, more = await history_back(state.client, channel, state.back.get(channel), count)
    if msgs:
        state.back[channel] = msgs[0]["id"]
        state.reads.shown(channel, msgs[-1]["id"])
    for msg in msgs:
        print(message_line(msg), flush=True)
    if not more:
        print(f"(the start of what {channel} keeps)" if msgs else f"no older messages in {channel}", flush=True)


async def history_back(client: AsyncClient, channel: str, before: int | None, count: int) -> tuple[list, bool]:
    """Up to ``count`` messages before ``before`` (None: the newest), oldest first, and
    whether older ones are still stored; pages of at most 100."""
    msgs: list = []
    more = True
    while more and len(msgs) < count:
        page = await client.history(channel, before=before, limit=min(PAGE, count - len(msgs)))
        msgs = page["msgs"] + msgs
        more = page["more"] and bool(page["msgs"])
        if page["msgs"]:
            before = page["msgs"][0]["id"]
    return msgs, more


async def my_channels(client: AsyncClient, most: int) -> tuple[list, bool]:
    """Up to ``most`` of my channels, most recently active first, in pages of 100; and
    whether a page was partial (a logic node did not answer: its channels are missing)."""
    items: list = []
    after, partial = None, False
    while len(items) < most:
        page = await client.channels(after=after, limit=min(PAGE, most - len(items)))
        items += page["items"]
        partial = partial or bool(page.get("partial"))
        after = page.get("next")
        if after is None:
            break
    return items, partial


async def chat_channels(state: ChatState, _rest: str) -> None:
    items, partial = await my_channels(state.client, CHANNELS_MAX)
    for item in items:
        print(channel_line(item), flush=True)
    unread = sum(item.get("unread", 0) for item in items)
    print(f"{len(items)} channel(s), {unread} unread" + (" (some logic node did not answer: not all are "
                                                          "listed)" if partial else ""), flush=True)


async def chat_dm(state: ChatState, rest: str) -> None:
    if not rest.isdigit():
        print("usage: /dm UIN", flush=True)
        return
    reply = await state.client.create_dm(int(rest))
    print(f"  {'started' if reply['created'] else 'found'} the direct chat {reply['channel']}", flush=True)
    await open_channel(state, reply["channel"])


def uin_list(text: str) -> list[int] | None:
    parts = [p for p in text.split(",") if p]
    return [int(p) for p in parts] if parts and all(p.isdigit() for p in parts) else None


async def chat_group(state: ChatState, rest: str) -> None:
    uins_text, _, name = rest.partition(" ")
    uins = uin_list(uins_text)
    if uins is None:
        print("usage: /group UIN,UIN [NAME]", flush=True)
        return
    reply = await state.client.create_group(uins, name=name.strip() or None)
    print(f"  made the group {reply['channel']}{members_note(reply)}", flush=True)
    await open_channel(state, reply["channel"])


async def chat_invite(state: ChatState, rest: str) -> None:
    uins = uin_list(rest)
    if state.channel is None or uins is None:
        print("usage: /invite UIN[,UIN], in a channel", flush=True)
        return
    reply = await state.client.invite(state.channel, uins)
    added = ", ".join(map(str, reply.get("uins", uins))) or "nobody new"
    print(f"  invited {added} to {state.channel}{members_note(reply)}", flush=True)


def members_note(reply: dict) -> str:
    """" (N members)" from a reply's member count (nothing when it carries none)."""
    count = reply.get("members")
    return f" ({count} members)" if type(count) is int else ""


async def chat_edit(state: ChatState, rest: str) -> None:
    msg_id, _, text = rest.partition(" ")
    if state.channel is None or not msg_id.isdigit() or not text.strip():
        print("usage: /edit ID TEXT, in a channel", flush=True)
        return
    event_id = await state.client.edit(state.channel, int(msg_id), text.strip())
    print(f"  edited #{msg_id} (event #{event_id})", flush=True)


async def chat_delete(state: ChatState, rest: str) -> None:
    if state.channel is None or not rest.isdigit():
        print("usage: /delete ID, in a channel", flush=True)
        return
    event_id = await state.client.delete(state.channel, int(rest))
    print(f"  deleted #{rest} (event #{event_id})", flush=True)


async def chat_typing(state: ChatState, _rest: str) -> None:
    if state.channel is None:
        print("pick a channel first: /join CHANNEL", flush=True)
        return
    await state.client.typing(state.channel)


CHAT_COMMANDS = {"help": chat_help, "join": chat_join, "leave": chat_leave, "who": chat_who,
                 "history": chat_history, "channels": chat_channels, "dm": chat_dm, "group": chat_group,
                 "invite": chat_invite, "edit": chat_edit, "delete": chat_delete, "typing": chat_typing}


def event_line(state: ChatState, event: dict) -> str:
    """What the chat prints for a conversation event ("" for nothing): typing and presence of
    the current channel, "seen by" of my messages, edits and deletes of channels shown."""
    kind, channel = event["t"], event["channel"]
    if kind in ("edit", "delete"):
        return change_line(event) if channel not in state.hidden else ""
    if kind == "receipt":
        return state.seen.receipt(channel, event["uin"], event["id"])
    if channel != state.channel:
        return ""
    if kind == "typing":
        return state.typing.typing(channel, event["uin"], time.monotonic())
    if kind == "presence":
        return f"  {event['uin']} is {'online' if event['online'] else 'offline'}"
    return ""                                      # read: my cursor moved on another device


def read_stdin(loop, lines: asyncio.Queue) -> bool:
    """Feed stdin lines into ``lines``; True if a reader was added (remove it when done).

    A terminal or pipe is watched by the event loop; a regular file can't be
    (epoll refuses it with EPERM) and never blocks, so it is read at once,
    followed by the end-of-input marker "".
    """
    fd = sys.stdin.fileno()
    try:
        loop.add_reader(fd, lambda: lines.put_nowait(sys.stdin.readline()))
        return True
    except PermissionError:
        for line in sys.stdin:
            lines.put_nowait(line)
        lines.put_nowait("")
        return False


async def cmd_interactive(args) -> int:
    client = await connect(args)
    state = ChatState(args, client)
    if state.channel:
        await channel_last(client, state.channel)
        state.channel = None
        await open_channel(state, args.channel)
    print(f"logged in as {args.uin}/{args.device} via {client.endpoint}. "
          "Type /join CHANNEL, then lines to send; /help lists commands (/pending, /cancel N for "
          "the mailbox), /quit leaves.", flush=True)
    show_pending(client)
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue = asyncio.Queue()
    watching = read_stdin(loop, lines)

    async def show_incoming():
        async for msg in client.messages():
            if state.shows(msg):
                print(message_line(msg), flush=True)
                state.typing.stopped(msg["channel"], msg["uin"])
                if msg["uin"] != client.uin:
                    state.reads.shown(msg["channel"], msg["id"])

    async def show_events():
        async for event in client.events():
            line = event_line(state, event)
            if line:
                print(line, flush=True)
    printer = asyncio.ensure_future(show_incoming())
    noticer = asyncio.ensure_future(show_events())
    try:
        while True:
            line = await lines.get()
            if not line or line.strip() == "/quit":
                return 0
            line = line.rstrip("\n")
            if await mailbox_command(client, line):
                continue
            text = await chat_command(state, line)
            if text is None:
                continue
            if state.channel is None:
                print("pick a channel first: /join CHANNEL", flush=True)
                continue
            try:
                msg_id = await client.send(state.channel, text)
                state.seen.sent(state.channel, msg_id)
                print(f"  sent #{msg_id}", flush=True)
            except ClientError as exc:
                print(f"  error: {exc.code}: {exc.msg}", flush=True)
                if "mailbox" in exc.reply:
                    print(f"  kept in the mailbox as #{exc.reply['mailbox']}: sent when the network "
                          "is back (/cancel to drop it)", flush=True)
    finally:
        if watching:
            loop.remove_reader(sys.stdin.fileno())
        printer.cancel()
        noticer.cancel()
        state.reads.close()
        await client.close()


def show_pending(client: AsyncClient) -> None:
    entries = client.pending()
    if entries:
        print(f"{len(entries)} message(s) from before in the mailbox, sending now:", flush=True)
    for entry in entries:
        print(pending_line(entry), flush=True)


async def mailbox_command(client: AsyncClient, line: str) -> bool:
    """/pending and /cancel N; False if the line is neither."""
    parts = line.split()
    if not parts or parts[0] not in ("/pending", "/cancel"):
        return False
    if parts[0] == "/pending":
        if client.pending():
            show_pending(client)
        else:
            print("  mailbox empty", flush=True)
    elif len(parts) != 2 or not parts[1].isdigit():
        print("usage: /cancel N (the number /pending shows)", flush=True)
    else:
        gone = await client.cancel(int(parts[1]))
        print(f"  #{parts[1]} {'cancelled' if gone else 'is not pending'}", flush=True)
    return True
