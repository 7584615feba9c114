"""What every bin/chat tool shares: its session arguments, logging in, where the user's
mailbox and broker memory live, and how a message or a pending entry prints.

Each tool logs in as its own device by default (``DEVICES``), so a ``tail`` or ``send``
does not replace the session of an open chat of the same user.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import time

from nodes.cli import outcome
from nodes.cli.common import (
    add_config_arg,
    add_version_arg,
    broker_endpoint,
    client_endpoint,
    load_topology,
    token_for,
    uin_arg,
)
from nodes.client.aclient import AsyncClient
from nodes.client.blocking import ClientError
from nodes.protocol.heartbeat import NETWORKS

# the device each tool logs in as unless --device says otherwise (one session per uin and device)
DEVICES = {"chat": 0, "send": 9001, "tail": 9002, "upload": 9003, "download": 9004,
           "channels": 9005, "history": 9006,
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


def message_json(msg: dict) -> str:
    """One message as JSON; ``edited`` (ms) and ``deleted`` only when history says so."""
    out = {"channel": msg["channel"], "id": msg["id"], "uin": msg["uin"],
           "device": msg["device"], "client_time": msg["ctime"], "text": msg.get("text", "")}
    out.update({key: msg[key] for key in ("edited", "deleted") if key in msg})
    return json.dumps(out, ensure_ascii=False)


def message_line(msg: dict) -> str:
    when = datetime.datetime.fromtimestamp(msg.get("stime", 0) / 1000).strftime("%H:%M:%S")
    text = "(deleted)" if msg.get("deleted") else msg.get("text", "") + (" (edited)" if msg.get("edited") else "")
    return f"[{msg['channel']} #{msg['id']}] {msg['uin']}/{msg['device']} {when}: {text}"


async def channel_last(client: AsyncClient, channel: str) -> int:
    """The newest id of a channel; ClientError NO_CHANNEL / NOT_MEMBER if it can't be read."""
    return (await client.sync(channel, NO_ID))["last"]
