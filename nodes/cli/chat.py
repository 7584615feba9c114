"""bin/chat: the chat client on the command line.

    bin/chat [-c CONFIG] --uin U [--device D]                        interactive (/join CHANNEL)
    bin/chat send [-c CONFIG] --uin U [--device D] --channel C TEXT  prints the msg id
    bin/chat tail [-c CONFIG] --uin U [--device D] --channel C --count N
                  [--since ID] [--timeout S] [--json]                prints N messages, then exits
    bin/chat upload [-c CONFIG] --uin U --channel C FILE             prints the ref, sends a message with it
    bin/chat download [-c CONFIG] --uin U REF OUT                    writes the file (sha256 checked)
    bin/chat pending [-c CONFIG] --uin U [--device D] [--json]       lists unsent messages (no login)
    bin/chat channels [-c CONFIG] --uin U [--limit N] [--json]       my channels with unread counts
    bin/chat history [-c CONFIG] --uin U --channel C [--before ID] [--limit N] [--json]
                                                                     older messages, edits applied

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
9001, tail 9002, upload 9003, download 9004, channels 9005, history 9006), so a `tail` or `send` does not
replace the session of an open chat of the same user; --device overrides it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time

from nodes.cli import outcome
from nodes.cli.chatmedia import cmd_download, cmd_upload
from nodes.cli.chatroom import cmd_interactive, history_back, my_channels
from nodes.cli.chatsession import (
    add_session_args,
    channel_last,
    client_files,
    connect,
    mailbox_devices,
    message_json,
    message_line,
    pending_line,
    refused,
)
from nodes.cli.chatview import channel_line
from nodes.cli.common import fail, load_topology, msg_id_arg, prog_name, seconds_arg
from nodes.client.blocking import ClientError
from nodes.client.mailbox import Mailbox

PROG = prog_name("chat")
SUBCOMMANDS = ("send", "tail", "upload", "download", "pending", "channels", "history")


def count_arg(most: int):
    """An argparse type: an integer 1..most."""
    def parse(text: str) -> int:
        if not text.isdigit() or not 1 <= int(text) <= most:
            raise argparse.ArgumentTypeError(f"must be 1..{most}, not {text!r}")
        return int(text)
    return parse


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


async def cmd_channels(args) -> int:
    """My channels, most recently active first (all pages up to --limit)."""
    client = await connect(args)
    try:
        items, partial = await my_channels(client, args.limit)
        for item in items:
            print(json.dumps(item, ensure_ascii=False) if args.json else channel_line(item), flush=True)
        if partial:
            print("warning: a logic node did not answer: its channels are missing", file=sys.stderr)
        return 0
    finally:
        await client.close()


async def cmd_history(args) -> int:
    """--limit messages older than --before (default: the newest), oldest first."""
    client = await connect(args)
    show = message_json if args.json else message_line
    try:
        msgs, more = await history_back(client, args.channel, args.before, args.limit)
        for msg in msgs:
            print(show(msg), flush=True)
        if not more and not args.json:
            print(f"(the start of what {args.channel} keeps)", file=sys.stderr)
        return 0
    finally:
        await client.close()


JSON_LINES = "one JSON object per line"


def tool_parser(name: str, description: str, channel: str | None = None,
                json_help: str | None = None) -> argparse.ArgumentParser:
    """The parser of one subcommand, with the session arguments every tool takes, and the
    arguments most share: a required --channel (its help given) and --json (its help given)."""
    parser = argparse.ArgumentParser(prog=f"{PROG} {name}", description=description)
    add_session_args(parser, name)
    if channel is not None:
        parser.add_argument("--channel", required=True, help=channel)
    if json_help is not None:
        parser.add_argument("--json", action="store_true", help=json_help)
    return parser


def build_parser(sub_cmd: str | None) -> argparse.ArgumentParser:
    if sub_cmd == "send":
        p = tool_parser("send", "Send one message.", channel="channel to send to")
        p.add_argument("text", help="the message text")
        p.set_defaults(fn=cmd_send)
    elif sub_cmd == "tail":
        p = tool_parser("tail", "Print N messages of a channel.", channel="channel to follow", json_help=JSON_LINES)
        p.add_argument("--count", type=int, required=True, help="exit after printing this many messages")
        p.add_argument("--since", type=msg_id_arg, help="first fetch stored messages with id > SINCE")
        p.add_argument("--timeout", type=seconds_arg, default=30.0,
                       help="seconds to wait for them; exit 1 after (default: %(default)s)")
        p.set_defaults(fn=cmd_tail)
    elif sub_cmd == "pending":
        p = tool_parser("pending", "List messages waiting in the mailbox (no login).", json_help=JSON_LINES)
        p.set_defaults(fn=cmd_pending)
    elif sub_cmd == "channels":
        p = tool_parser("channels", "List my channels, most recently active first, with unread counts.",
                        json_help=JSON_LINES + " (the server's item)")
        p.add_argument("--limit", type=count_arg(1000), default=1000,
                       help="at most this many channels (default: %(default)s)")
        p.set_defaults(fn=cmd_channels)
    elif sub_cmd == "history":
        p = tool_parser("history", "Print stored messages of a channel, older than --before.",
                        channel="the channel", json_help=JSON_LINES)
        p.add_argument("--before", type=msg_id_arg, help="older than this id (default: from the newest)")
        p.add_argument("--limit", type=count_arg(10000), default=50,
                       help="at most this many messages (default: %(default)s)")
        p.set_defaults(fn=cmd_history)
    elif sub_cmd == "upload":
        p = tool_parser("upload", "Upload a file to a relay and send a message carrying its ref.",
                        channel="channel the file is for (and the message goes to)")
        p.add_argument("--mime", default="application/octet-stream", help="media type (default: %(default)s)")
        p.add_argument("file", help="the file to upload")
        p.set_defaults(fn=cmd_upload)
    elif sub_cmd == "download":
        p = tool_parser("download", "Download a file by its ref.")
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
    sub_cmd = argv[0] if argv and argv[0] in SUBCOMMANDS else None
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
