"""bin/chat: the chat client on the command line.

    bin/chat [-c CONFIG] --uin U [--device D]                        interactive (/join CHANNEL)
    bin/chat send [-c CONFIG] --uin U [--device D] --channel C TEXT  prints the msg id
    bin/chat tail [-c CONFIG] --uin U [--device D] --channel C --count N
                  [--since ID] [--timeout S] [--json]                prints N messages, then exits
    bin/chat upload [-c CONFIG] --uin U --channel C FILE             prints the ref, sends a message with it
    bin/chat download [-c CONFIG] --uin U REF OUT                    writes the file (sha256 checked)

Exit codes: 0 ok; 1 the server refused (code and message on stderr) or the
timeout passed; 2 bad arguments or configuration.
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

from ..aclient import AsyncClient
from ..client import ClientError
from ..media import MediaClient, save
from .common import (add_config_arg, broker_endpoint, client_endpoint, fail, load_topology, token_for,
                     uin_arg)


def add_session_args(parser) -> None:
    add_config_arg(parser)
    parser.add_argument("--uin", type=uin_arg, required=True)
    parser.add_argument("--device", type=uin_arg, default=0)
    parser.add_argument("--token", help="login token (minted locally on a local topology)")
    parser.add_argument("--broker", help="broker id to connect to first (default: by uin)")
    parser.add_argument("--net", default="wired", help="network type: wired, wifi, 4g, 3g, 2g")


def refused(exc: ClientError) -> int:
    print(f"error: {exc.code}: {exc.msg}", file=sys.stderr)
    return 1


async def connect(args) -> AsyncClient:
    topo = load_topology(args.config)
    first = broker_endpoint(topo, args.uin, args.broker)
    others = [client_endpoint(topo, b.id) for b in topo.of_type("broker") if b.endpoint("client") != first]
    client = AsyncClient([first] + others, token_for(topo, args.uin, args.token), device=args.device,
                         net=args.net)
    await client.connect()
    return client


def message_json(msg: dict) -> str:
    return json.dumps({"channel": msg["channel"], "id": msg["id"], "uin": msg["uin"],
                       "device": msg["device"], "client_time": msg["ctime"], "text": msg["text"]},
                      ensure_ascii=False)


def message_line(msg: dict) -> str:
    when = datetime.datetime.fromtimestamp(msg.get("stime", 0) / 1000).strftime("%H:%M:%S")
    return f"[{msg['channel']} #{msg['id']}] {msg['uin']}/{msg['device']} {when}: {msg['text']}"


async def cmd_send(args) -> int:
    client = await connect(args)
    try:
        print(await client.send(args.channel, args.text))
        return 0
    finally:
        await client.close()


async def cmd_tail(args) -> int:
    client = await connect(args)
    show = message_json if args.json else message_line
    printed = 0
    deadline = time.monotonic() + args.timeout
    try:
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


async def cmd_interactive(args) -> int:
    client = await connect(args)
    channel = args.channel
    if channel:
        client.watch(channel)
    print(f"logged in as {args.uin}/{args.device} via {client.endpoint}. "
          "Type /join CHANNEL, then lines to send; /quit to leave.", flush=True)
    loop = asyncio.get_running_loop()
    lines = asyncio.Queue()
    loop.add_reader(sys.stdin.fileno(), lambda: lines.put_nowait(sys.stdin.readline()))

    async def show_incoming():
        async for msg in client.messages():
            print(message_line(msg), flush=True)
    printer = asyncio.ensure_future(show_incoming())
    try:
        while True:
            line = await lines.get()
            if not line or line.strip() == "/quit":
                return 0
            line = line.rstrip("\n")
            if line.startswith("/join"):
                parts = line.split()
                if len(parts) != 2:
                    print("usage: /join CHANNEL", flush=True)
                else:
                    channel = parts[1]
                    client.watch(channel)
                    print(f"now in {channel}", flush=True)
            elif line:
                if channel is None:
                    print("pick a channel first: /join CHANNEL", flush=True)
                    continue
                try:
                    print(f"  sent #{await client.send(channel, line)}", flush=True)
                except ClientError as exc:
                    print(f"  error: {exc.code}: {exc.msg}", flush=True)
    finally:
        loop.remove_reader(sys.stdin.fileno())
        printer.cancel()
        await client.close()


def media_client(args) -> MediaClient:
    topo = load_topology(args.config)
    relays = {n.id: client_endpoint(topo, n.id) for n in topo.of_type("relay")}
    if not relays:
        fail(f"{topo.path} lists no relay")
    return MediaClient(relays, token_for(topo, args.uin, args.token), device=args.device)


async def cmd_upload(args) -> int:
    try:
        size = os.path.getsize(args.file)
    except OSError as exc:
        fail(f"{args.file}: {exc.strerror}")
    media = media_client(args)
    await media.connect()
    try:
        ref = await media.upload(args.file, args.channel, mime=args.mime)
    finally:
        await media.close()
    print(ref, flush=True)
    client = await connect(args)
    try:
        await client.send(args.channel, f"[file] {os.path.basename(args.file)} ({size} bytes) {ref}")
    finally:
        await client.close()
    return 0


async def cmd_download(args) -> int:
    media = media_client(args)
    await media.connect()
    try:
        data = await media.download(args.ref)
    finally:
        await media.close()
    save(data, args.out)
    print(f"{args.out}: {len(data)} bytes, sha256 verified")
    return 0


def build_parser(sub_cmd: str | None) -> argparse.ArgumentParser:
    if sub_cmd == "send":
        p = argparse.ArgumentParser(prog="bin/chat send", description="Send one message.")
        add_session_args(p)
        p.add_argument("--channel", required=True)
        p.add_argument("text")
        p.set_defaults(fn=cmd_send)
    elif sub_cmd == "tail":
        p = argparse.ArgumentParser(prog="bin/chat tail", description="Print N messages of a channel.")
        add_session_args(p)
        p.add_argument("--channel", required=True)
        p.add_argument("--count", type=int, required=True)
        p.add_argument("--since", type=int, help="first fetch stored messages with id > SINCE")
        p.add_argument("--timeout", type=float, default=30.0)
        p.add_argument("--json", action="store_true", help="one JSON object per line")
        p.set_defaults(fn=cmd_tail)
    elif sub_cmd == "upload":
        p = argparse.ArgumentParser(prog="bin/chat upload",
                                    description="Upload a file to a relay and send a message carrying its ref.")
        add_session_args(p)
        p.add_argument("--channel", required=True)
        p.add_argument("--mime", default="application/octet-stream")
        p.add_argument("file")
        p.set_defaults(fn=cmd_upload)
    elif sub_cmd == "download":
        p = argparse.ArgumentParser(prog="bin/chat download", description="Download a file by its ref.")
        add_session_args(p)
        p.add_argument("ref")
        p.add_argument("out")
        p.set_defaults(fn=cmd_download)
    else:
        p = argparse.ArgumentParser(prog="bin/chat", description=__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        add_session_args(p)
        p.add_argument("--channel", help="channel to start in (or /join later)")
        p.set_defaults(fn=cmd_interactive)
    return p


def main(argv=None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)        # `bin/... | head` ends quietly, like other tools
    argv = list(sys.argv[1:] if argv is None else argv)
    sub_cmd = argv[0] if argv and argv[0] in ("send", "tail", "upload", "download") else None
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
