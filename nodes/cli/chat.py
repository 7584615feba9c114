"""bin/chat: the chat client on the command line.

    bin/chat [-c CONFIG] --uin U [--device D]                        interactive (/join CHANNEL)
    bin/chat send [-c CONFIG] --uin U [--device D] --channel C TEXT  prints the msg id
    bin/chat tail [-c CONFIG] --uin U [--device D] --channel C --count N
                  [--since ID] [--timeout S] [--json]                prints N messages, then exits
    bin/chat upload [-c CONFIG] --uin U --channel C FILE             prints the ref, sends a message with it
    bin/chat download [-c CONFIG] --uin U REF OUT                    writes the file (sha256 checked)
    bin/chat pending [-c CONFIG] --uin U [--device D] [--json]       lists unsent messages (no login)

Every message goes through the user's mailbox (a small sqlite file, see
--state-dir): one that could not be sent ("system busy") stays there, is
listed by `pending` and at the start of the interactive client, and is sent
by the next bin/chat that logs in as the same user and device.  The last
broker that worked is remembered beside it.

Exit codes: 0 ok (send: acked, its id printed); 1 the server refused (code
and message on stderr; a send: not stored) or the timeout passed; 2 bad
arguments or configuration; 3 (send, upload) no ack yet: the message is kept
in the mailbox and the next bin/chat of this user and device sends it, stored
once -- do not send it again (nodes/cli/outcome.py).

Each tool logs in as its own device by default (interactive chat 0, send
9001, tail 9002, upload 9003, download 9004), so a `tail` or `send` does not
replace the session of an open chat of the same user; --device overrides it.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import signal
import sys
import time

from nodes.cli import outcome
from nodes.cli.common import (
    add_config_arg,
    add_version_arg,
    broker_endpoint,
    client_endpoint,
    fail,
    load_topology,
    msg_id_arg,
    prog_name,
    seconds_arg,
    token_for,
    tool_name,
    uin_arg,
)
from nodes.client.aclient import AsyncClient
from nodes.client.blocking import ClientError
from nodes.client.mailbox import Mailbox
from nodes.client.media import MediaClient, save
from nodes.protocol.heartbeat import NETWORKS

PROG = prog_name("chat")


# the device each tool logs in as unless --device says otherwise (one session per uin and device)
DEVICES = {"chat": 0, "send": 9001, "tail": 9002, "upload": 9003, "download": 9004,
           "pending": None}     # pending: every device's mailbox of the user unless --device says
NO_ID = 2**63            # a sync "after" beyond any id: an empty page that still says NOT_MEMBER/NO_CHANNEL


def add_session_args(parser, tool: str = "chat") -> None:
    add_config_arg(parser)
    add_version_arg(parser)
    parser.add_argument("--uin", type=uin_arg, required=True, help="user number to log in as")
    parser.add_argument("--device", type=uin_arg, default=DEVICES[tool],
                        help="device number of this session (default: %(default)s for this tool; "
                        "pending: every device)")
    parser.add_argument("--token", help="login token (minted locally on a local topology)")
    parser.add_argument("--broker", help="broker id to connect to first (default: by uin)")
    parser.add_argument("--net", default="wired", choices=NETWORKS,
                        help="network type, sets the first heartbeat interval (default: %(default)s)")
    parser.add_argument("--state-dir", help="where the mailbox and the broker memory live (default: "
                        "DATA_DIR/clients for a local topology, else ~/.imesh/CLUSTER; env IMESH_CLIENT_DIR)")


def refused(exc: ClientError) -> int:
    print(f"error: {exc.code}: {exc.msg}", file=sys.stderr)
    return 1


async def connect(args, reports_own: bool = False) -> AsyncClient:
    """Log in; ``reports_own``: the command reports what became of the message it sends itself
    (send, upload), so the mailbox lines leave that one out."""
    topo = load_topology(args.config)
    mailbox, state = client_files(topo, args)
    client = AsyncClient(broker_list(topo, args.uin, args.broker), token_for(topo, args.uin, args.token),
                         device=args.device, net=args.net, mailbox=mailbox, state_file=state,
                         on_mail=outcome.MailReport(report_mail, STARTED, own_quiet=reports_own))
    await client.connect()
    return client


def broker_list(topo, uin: int, broker: str | None) -> list:
    """(endpoint, IDC) of every broker; the chosen one (default: by uin, to spread users over
    equally near brokers) first.  The client measures them and takes the nearest."""
    first = broker_endpoint(topo, uin, broker)
    pairs = [(client_endpoint(topo, b.id), b.idc) for b in topo.of_type("broker")]
    return sorted(pairs, key=lambda pair: pair[0] != first)


def state_dir(topo, args) -> str:
    base = args.state_dir or os.environ.get("IMESH_CLIENT_DIR") or (
        os.path.join(topo.data_dir, "clients") if topo.local
        else os.path.join(os.path.expanduser("~"), ".imesh", topo.cluster))
    os.makedirs(base, exist_ok=True)
    return base


def client_files(topo, args, device=None) -> tuple[str, str]:
    """The mailbox and broker-memory files of this (uin, device)."""
    stem = os.path.join(state_dir(topo, args), f"{args.uin}-{args.device if device is None else device}")
    return f"{stem}.mailbox.sqlite", f"{stem}.brokers.json"


def mailbox_devices(topo, args) -> list[int]:
    """The devices of the user that have a mailbox here (--device: that one)."""
    if args.device is not None:
        return [args.device]
    prefix, suffix = f"{args.uin}-", ".mailbox.sqlite"
    return sorted(int(name[len(prefix):-len(suffix)]) for name in os.listdir(state_dir(topo, args))
                  if name.startswith(prefix) and name.endswith(suffix) and name[len(prefix):-len(suffix)].isdigit())


STARTED = time.time()


def report_mail(event: str, entry, detail) -> None:
    """Tell the user what became of a message from the mailbox: one written by an earlier
    run, or one that was reported busy (a send that simply worked is not repeated here)."""
    if entry.tries == 0 and entry.created >= STARTED:
        return
    if event == "acked":
        print(f"  mailbox: sent #{detail} ({entry.channel}: {short(entry.text)})", file=sys.stderr, flush=True)
    elif event in ("refused", "expired"):
        print(f"  mailbox: {event} {getattr(detail, 'code', '')} ({entry.channel}: {short(entry.text)})",
              file=sys.stderr, flush=True)


def short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def pending_line(entry) -> str:
    when = datetime.datetime.fromtimestamp(entry.created).strftime("%Y-%m-%d %H:%M:%S")
    why = f", last: {entry.error}" if entry.error else ""
    return f"  pending #{entry.seq} [{entry.channel}] {when} ({entry.tries} tries{why}): {short(entry.text)}"


async def cmd_pending(args) -> int:
    """List the mailbox without logging in."""
    topo = load_topology(args.config)
    entries = []
    for device in mailbox_devices(topo, args):
        box = Mailbox(client_files(topo, args, device)[0])
        try:
            entries += box.pending(args.uin, device)
        finally:
            box.close()
    for entry in sorted(entries, key=lambda e: e.created):
        if args.json:
            print(json.dumps({"mailbox": entry.seq, "channel": entry.channel, "text": entry.text,
                              "client_time": entry.ctime, "created": entry.created, "tries": entry.tries,
                              "error": entry.error}, ensure_ascii=False))
        else:
            print(pending_line(entry))
    return 0


def message_json(msg: dict) -> str:
    return json.dumps({"channel": msg["channel"], "id": msg["id"], "uin": msg["uin"],
                       "device": msg["device"], "client_time": msg["ctime"], "text": msg["text"]},
                      ensure_ascii=False)


def message_line(msg: dict) -> str:
    when = datetime.datetime.fromtimestamp(msg.get("stime", 0) / 1000).strftime("%H:%M:%S")
    return f"[{msg['channel']} #{msg['id']}] {msg['uin']}/{msg['device']} {when}: {msg['text']}"


async def cmd_send(args) -> int:
    client = await connect(args, reports_own=True)
    code, msg_id = await outcome.send_once(client, args.channel, args.text, client.timeout)
    if code == outcome.SENT:
        print(msg_id)
    return code


async def cmd_tail(args) -> int:
    client = await connect(args)
    show = message_json if args.json else message_line
    printed = 0
    deadline = time.monotonic() + args.timeout
    try:
        await channel_last(client, args.channel)          # NOT_MEMBER / NO_CHANNEL now, not a timeout
        client.watch(args.channel, since=args.since)
        while printed < args.count:
            msg = await client.recv(timeout=max(0.0, deadline - time.monotonic()))
            if msg is None:
                print(f"error: TIMEOUT: got {printed} of {args.count} messages in {args.timeout}s",
                      file=sys.stderr)
                return 1
            if msg["channel"] == args.channel:
                print(show(msg), flush=True)
                printed += 1
        return 0
    finally:
        await client.close()


async def channel_last(client: AsyncClient, channel: str) -> int:
    """The newest id of a channel; ClientError NO_CHANNEL / NOT_MEMBER if it can't be read."""
    return (await client.sync(channel, NO_ID))["last"]


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


def media_client(args) -> MediaClient:
    topo = load_topology(args.config)
    relays = {n.id: client_endpoint(topo, n.id) for n in topo.of_type("relay")}
    if not relays:
        fail(f"{topo.path} lists no relay")
    return MediaClient(relays, token_for(topo, args.uin, args.token), device=args.device)


def readable_file(path: str) -> int:
    """The size of a regular file we can read; else exit 2 with one line (nothing is sent)."""
    if os.path.isdir(path):
        fail(f"{path}: is a directory (upload one file)")
    try:
        with open(path, "rb"):
            return os.path.getsize(path)
    except OSError as exc:
        fail(f"{path}: {exc.strerror}")


def writable_target(path: str) -> None:
    """Exit 2 with one line unless ``path`` can be created: its directory exists, it is no directory."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        fail(f"{path}: is a directory (give the file name to write)")
    if not os.path.isdir(parent):
        fail(f"{path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        fail(f"{path}: directory {parent} is not writable")


def save_download(data: bytes, path: str) -> None:
    """Write the file (atomically, via PATH.part); one line and exit 1 if the disk refuses."""
    try:
        save(data, path)
    except OSError as exc:
        try:
            os.unlink(f"{path}.part")
        except OSError:
            pass
        fail(f"{path}: {exc.strerror}", 1)


async def cmd_upload(args) -> int:
    size = readable_file(args.file)
    media = media_client(args)
    await media.connect()
    try:
        ref = await media.upload(args.file, args.channel, mime=args.mime)
    finally:
        await media.close()
    print(ref, flush=True)
    client = await connect(args, reports_own=True)
    code, _msg_id = await outcome.send_once(
        client, args.channel, f"[file] {shown_name(args.file)} ({size} bytes) {ref}", client.timeout)
    return code


def shown_name(path: str) -> str:
    """The file's name as message text: a name that is not UTF-8 (Python keeps its bytes as
    surrogates, which no message may carry) shows those bytes as \\xNN escapes."""
    return os.path.basename(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


async def cmd_download(args) -> int:
    writable_target(args.out)
    media = media_client(args)
    await media.connect()
    try:
        data = await media.download(args.ref)
    finally:
        await media.close()
    save_download(data, args.out)
    print(f"{args.out}: {len(data)} bytes, sha256 verified")
    return 0


def build_parser(sub_cmd: str | None) -> argparse.ArgumentParser:
    if sub_cmd == "send":
        p = argparse.ArgumentParser(prog=f"{PROG} send", description="Send one message.")
        add_session_args(p, "send")
        p.add_argument("--channel", required=True, help="channel to send to")
        p.add_argument("text", help="the message text")
        p.set_defaults(fn=cmd_send)
    elif sub_cmd == "tail":
        p = argparse.ArgumentParser(prog=f"{PROG} tail", description="Print N messages of a channel.")
        add_session_args(p, "tail")
        p.add_argument("--channel", required=True, help="channel to follow")
        p.add_argument("--count", type=int, required=True, help="exit after printing this many messages")
        p.add_argument("--since", type=msg_id_arg, help="first fetch stored messages with id > SINCE")
        p.add_argument("--timeout", type=seconds_arg, default=30.0,
                       help="seconds to wait for them; exit 1 after (default: %(default)s)")
        p.add_argument("--json", action="store_true", help="one JSON object per line")
        p.set_defaults(fn=cmd_tail)
    elif sub_cmd == "pending":
        p = argparse.ArgumentParser(prog=f"{PROG} pending",
                                    description="List messages waiting in the mailbox (no login).")
        add_session_args(p, "pending")
        p.add_argument("--json", action="store_true", help="one JSON object per line")
        p.set_defaults(fn=cmd_pending)
    elif sub_cmd == "upload":
        p = argparse.ArgumentParser(prog=f"{PROG} upload",
                                    description="Upload a file to a relay and send a message carrying its ref.")
        add_session_args(p, "upload")
        p.add_argument("--channel", required=True, help="channel the file is for (and the message goes to)")
        p.add_argument("--mime", default="application/octet-stream", help="media type (default: %(default)s)")
        p.add_argument("file", help="the file to upload")
        p.set_defaults(fn=cmd_upload)
    elif sub_cmd == "download":
        p = argparse.ArgumentParser(prog=f"{PROG} download", description="Download a file by its ref.")
        add_session_args(p, "download")
        p.add_argument("ref", help="the imesh-media:... reference from a message")
        p.add_argument("out", help="file to write (its directory must exist)")
        p.set_defaults(fn=cmd_download)
    else:
        p = argparse.ArgumentParser(prog=PROG, description=__doc__.replace("bin/chat", PROG),
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        add_session_args(p)
        p.add_argument("--channel", help="channel to start in (or /join later)")
        p.set_defaults(fn=cmd_interactive)
    return p


def main(argv=None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)        # `bin/... | head` ends quietly, like other tools
    argv = list(sys.argv[1:] if argv is None else argv)
    sub_cmd = argv[0] if argv and argv[0] in ("send", "tail", "upload", "download", "pending") else None
    args = build_parser(sub_cmd).parse_args(argv[1:] if sub_cmd else argv)
    if getattr(args, "count", 1) < 0:
        fail("--count must be >= 0")
    try:
        return asyncio.run(args.fn(args))
    except ClientError as exc:
        return refused(exc)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
