"""Keep a WAN bed up by hand: named "machines" (network namespaces) in two IDCs, for following
docs/deploy.md as an operator would.

    python -m bench.wanhosts up --state bed.json --idc east:east-b1,east-l1 --idc west:west-b1 \
        [--delay-ms 20] [--private-etc imesh]
    python -m bench.wanhosts run --state bed.json HOST -- CMD ...   (= ip netns exec NS CMD ...)
    python -m bench.wanhosts cut|heal|counts --state bed.json

``up`` builds the bed (bench/wanbed.py: one namespace per host, a 20 ms
forwarder between the IDCs), writes every host's namespace and address to
the state file and stays in the foreground holding the forwarder until
SIGINT/SIGTERM, then removes everything it made.  ``cut``/``heal`` signal
it (SIGUSR1/SIGUSR2) and wait until the state file says the link changed;
``counts`` prints what crossed the link.

``--private-etc imesh`` gives every host its own ``/etc/imesh``: a
directory ``/etc/netns/<namespace>/imesh`` that ``ip netns exec`` binds over
``/etc/imesh`` for the commands it runs there (an empty ``/etc/imesh`` is
made as the mount point if there is none, and removed again), so a file
copied to one machine is on that machine only, as on real ones.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from bench import wanbed


class Machines:
    """A ``WanBed`` with named hosts and, optionally, a private /etc entry per host."""

    def __init__(self, layout: dict, delay: float, private_etc=()):
        self.layout, self.private_etc = layout, list(private_etc)
        self.bed = wanbed.WanBed(idcs=tuple(layout), delay=delay)
        self._made = []                    # paths to remove at close, deepest first

    def start(self) -> Machines:
        try:
            self.bed.start()
            for idc, hosts in self.layout.items():
                for host in hosts:
                    self.bed.host(host, idc)
            for entry in self.private_etc:
                self._mkdir(os.path.join("/etc", entry))           # the mount point in every namespace
                for ns, _address, _idc in self.bed.hosts.values():
                    self._mkdir(os.path.join("/etc/netns", ns, entry))
        except BaseException:
            self.close()
            raise
        return self

    def _mkdir(self, path: str) -> None:
        missing = []
        while path and not os.path.exists(path):
            missing.append(path)
            path = os.path.dirname(path)
        for p in reversed(missing):
            os.mkdir(p, 0o755)
        self._made = missing + self._made

    def close(self) -> None:
        self.bed.close()
        for path in self._made:            # the per-host copies with what was put in them
            if path.startswith("/etc/netns/"):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.rmdir(path)         # a mount point made here: empty unless someone wrote to it
                except OSError as exc:
                    print(f"left {path}: {exc.strerror}", file=sys.stderr)
        self._made = []

    def state(self) -> dict:
        link = self.bed.link
        return {"pid": os.getpid(), "delay_ms": self.bed.delay * 1000,
                "link": "cut" if link and link.cut else "up", "counts": dict(link.counts) if link else {},
                "hosts": {name: {"ns": ns, "address": address, "idc": idc}
                          for name, (ns, address, idc) in self.bed.hosts.items()}}


def write_state(path: str, state: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, path)


def read_state(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        sys.exit(f"{path}: no bed state ({exc}); start one with `python -m bench.wanhosts up`")


def parse_idc(text: str) -> tuple[str, list[str]]:
    idc, _, hosts = text.partition(":")
    names = [h for h in hosts.split(",") if h]
    if not idc or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected IDC:HOST,HOST,...")
    return idc, names


def cmd_up(args) -> int:
    layout = dict(args.idc)
    if len(layout) != 2:
        sys.exit("give exactly two --idc IDC:HOST,... (the bed joins two IDCs)")
    done = threading.Event()
    machines = Machines(layout, args.delay_ms / 1000, args.private_etc).start()
    try:
        def on_signal(signum, _frame):
            if signum == signal.SIGUSR1:
                machines.bed.cut()
            elif signum == signal.SIGUSR2:
                machines.bed.heal()
            else:
                done.set()
            write_state(args.state, machines.state())
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, on_signal)
        write_state(args.state, machines.state())
        for name, host in machines.state()["hosts"].items():
            print(f"{name:14} {host['idc']:6} {host['address']:15} ip netns exec {host['ns']}", flush=True)
        while not done.wait(1.0):
            write_state(args.state, machines.state())
    finally:
        machines.close()
        if os.path.exists(args.state):
            os.unlink(args.state)
        print("bed removed", flush=True)
    return 0


def cmd_link(args) -> int:
    state = read_state(args.state)
    want = {"cut": "cut", "heal": "up"}.get(args.cmd)
    if want:
        os.kill(state["pid"], signal.SIGUSR1 if want == "cut" else signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while read_state(args.state)["link"] != want:
            if time.monotonic() > deadline:
                sys.exit(f"the bed (pid {state['pid']}) did not report the link {want}")
            time.sleep(0.05)
        state = read_state(args.state)
    print(json.dumps({"link": state["link"], **state["counts"]}))
    return 0


def cmd_run(args) -> int:
    hosts = read_state(args.state)["hosts"]
    if args.host not in hosts:
        sys.exit(f"no host {args.host!r} in the bed (hosts: {', '.join(hosts)})")
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    return subprocess.call(["ip", "netns", "exec", hosts[args.host]["ns"], *argv])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wanhosts", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up", help="build the bed and hold it until SIGINT/SIGTERM")
    p.add_argument("--idc", type=parse_idc, action="append", required=True, metavar="IDC:HOST,...")
    p.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay between the IDCs (default: 20)")
    p.add_argument("--private-etc", action="append", default=[], metavar="NAME",
                   help="give every host its own /etc/NAME (repeatable)")
    p.set_defaults(fn=cmd_up)
    for name, text in (("cut", "cut the link between the IDCs"), ("heal", "heal it"),
                       ("counts", "print what crossed the link")):
        p = sub.add_parser(name, help=text)
        p.set_defaults(fn=cmd_link)
    p = sub.add_parser("run", help="run a command on a host (inside its namespace)")
    p.add_argument("host")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_run)
    for p in sub.choices.values():
        p.add_argument("--state", required=True, help="the bed's state file (JSON)")
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
