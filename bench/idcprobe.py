"""A client probe run inside a WAN bed host (bench/wanbed.py): tests and ``bin/bench idc``.

Run as ``python -m bench.idcprobe MODE CONFIG BROKER UIN [options]`` in a
client namespace; it prints one JSON object per line (flushed), with
``time.monotonic()`` stamps -- the same clock in every namespace of the
machine, so the caller can line them up with its own cut and heal.

Modes:
- ``sends``: ``--count`` sends to each ``--channel`` in turn; one line per
  send: {channel, t, ms, id} or {channel, t, ms, code}.
- ``load``: sends to each channel in turn and a heartbeat each round until
  ``--seconds`` pass (each request waits at most ``--timeout``, no retry);
  one line per request, as in ``sends`` plus {"hb": true, unavailable}.
- ``recv``: logs in, says {"ready": true}, then one line per pushed
  message {t, id, channel, text} until ``--count`` came or ``--seconds``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from nodes.client.blocking import Client, ClientError
from nodes.cluster.topology import load
from nodes.protocol import auth
from nodes.runtime.curve import client_endpoint


def say(**fields) -> None:
    print(json.dumps(fields), flush=True)


def timed(fn):
    """(reply or error code, milliseconds, start stamp)."""
    t = time.monotonic()
    try:
        out = fn()
    except ClientError as exc:
        out = exc.code
    return out, (time.monotonic() - t) * 1000, t


def one_send(client, channel, text, timeout):
    """One attempt, no retry: the server's own answer (UNAVAILABLE, not the client's BUSY)."""
    req = {"t": "send", "channel": channel, "ctime": client.clock.next(), "text": text}
    out, ms, t = timed(lambda: client.request(req, timeout))
    if isinstance(out, dict):
        say(channel=channel, t=t, ms=ms, id=out["id"])
    else:
        say(channel=channel, t=t, ms=ms, code=out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.idcprobe")
    p.add_argument("mode", choices=["sends", "load", "recv"])
    p.add_argument("config")
    p.add_argument("broker")
    p.add_argument("uin", type=int)
    p.add_argument("--channel", action="append", default=[])
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("--text", default="probe")
    p.add_argument("--pace", type=float, default=0.01, help="load: seconds between rounds")
    args = p.parse_args(argv)
    topo = load(args.config)
    client = Client(client_endpoint(topo, args.broker), timeout=args.timeout, retries=0)
    try:
        client.login(auth.mint(topo.read_secret(), args.uin))
        if args.mode == "sends":
            for k in range(args.count):
                for channel in args.channel:
                    one_send(client, channel, f"{args.text} {k}", args.timeout)
        elif args.mode == "load":
            end, k = time.monotonic() + args.seconds, 0
            while time.monotonic() < end:
                for channel in args.channel:
                    one_send(client, channel, f"{args.text} {k}", args.timeout)
                out, ms, t = timed(client.heartbeat)
                say(hb=True, t=t, ms=ms, **({"unavailable": out.get("unavailable", [])}
                                           if isinstance(out, dict) else {"code": out}))
                k += 1
                time.sleep(args.pace)
        else:
            client.heartbeat()
            say(ready=True)
            end, got = time.monotonic() + args.seconds, 0
            while got < args.count and time.monotonic() < end:
                msg = client.recv(timeout=min(0.5, max(0.0, end - time.monotonic())))
                if msg is not None:
                    got += 1
                    say(t=time.monotonic(), id=msg.get("id"), channel=msg.get("channel"), text=msg.get("text"))
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
