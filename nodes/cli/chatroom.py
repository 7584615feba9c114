"""The interactive bin/chat: lines typed are sent to the current channel, pushes are shown
as they come, and /commands (/join, /leave, /who, /history, /pending, /cancel) change what
the session follows or look into the mailbox.  One-shot tools: nodes/cli/chat.py."""
from __future__ import annotations

import asyncio
import sys

from nodes.cli.chatsession import channel_last, connect, message_line, pending_line
from nodes.cli.common import load_topology, tool_name
from nodes.client.aclient import AsyncClient
from nodes.client.blocking import ClientError

HELP = """commands:
  /join CHANNEL   follow CHANNEL and send your lines there
  /leave          stop following the current channel (membership is unchanged)
  /who            members of the current channel (local topologies)
  /history N      the last N messages of the current channel (at most 200)
  /help           this list
  /quit           leave the chat (also Ctrl-D)
  //text          send a line that starts with /"""


class ChatState:
    """What the interactive chat's commands change: the channel lines go to, the channels shown."""

    def __init__(self, args, client: AsyncClient):
        self.args, self.client = args, client
        self.channel = args.channel
        self.hidden: set = set()                  # channels left with /leave: their pushes are not shown

    def shows(self, msg: dict) -> bool:
        return msg["channel"] not in self.hidden


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
    state.channel = rest
    state.hidden.discard(rest)
    state.client.watch(rest)
    print(f"now in {rest}", flush=True)


async def chat_leave(state: ChatState, _rest: str) -> None:
    if state.channel is None:
        print("not in a channel", flush=True)
        return
    state.hidden.add(state.channel)
    print(f"left {state.channel} (still a member; /join {state.channel} to come back)", flush=True)
    state.channel = None


async def chat_who(state: ChatState, _rest: str) -> None:
    if state.channel is None:
        print("pick a channel first: /join CHANNEL", flush=True)
        return
    from nodes.ops.admin import Admin, AdminError
    topo = load_topology(state.args.config)
    if not topo.local:
        print(f"/who needs the cluster secret: ask an operator (`{tool_name('mesh')} channel show`)", flush=True)
        return
    try:
        members = Admin(topo).channel("show", state.channel)["members"]
    except AdminError as exc:
        raise ClientError(exc.code, exc.msg) from None
    shown = ", ".join(map(str, members[:50])) + (f" ... ({len(members)} in all)" if len(members) > 50 else "")
    print(f"members of {state.channel}: {shown}", flush=True)


async def chat_history(state: ChatState, rest: str) -> None:
    if state.channel is None or not rest.isdigit() or not 1 <= int(rest) <= 200:
        print("usage: /history N (1..200), in a channel", flush=True)
        return
    last = await channel_last(state.client, state.channel)
    page = await state.client.sync(state.channel, max(0, last - int(rest)))
    for msg in page["msgs"]:
        print(message_line(msg), flush=True)
    if not page["msgs"]:
        print(f"no stored messages in {state.channel}", flush=True)


CHAT_COMMANDS = {"help": chat_help, "join": chat_join, "leave": chat_leave, "who": chat_who,
                 "history": chat_history}


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
        client.watch(state.channel)
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
    printer = asyncio.ensure_future(show_incoming())
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
                print(f"  sent #{await client.send(state.channel, text)}", flush=True)
            except ClientError as exc:
                print(f"  error: {exc.code}: {exc.msg}", flush=True)
                if "mailbox" in exc.reply:
                    print(f"  kept in the mailbox as #{exc.reply['mailbox']}: sent when the network "
                          "is back (/cancel to drop it)", flush=True)
    finally:
        if watching:
            loop.remove_reader(sys.stdin.fileno())
        printer.cancel()
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
