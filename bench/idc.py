"""bin/bench idc: ack and delivery latency per placement, and WAN copies per message, on the WAN bed.

Builds two IDCs in network namespaces (bench/wanbed.py, ``--delay`` one
way; bench/idcbed.py: east one broker, west two, ``eroom`` homed in east),
then, with members online on every broker:

- same IDC: an east client sends ``--messages`` to ``eroom`` (sequentially,
  each waits for its ack): ack latency, and delivery latency to an east
  receiver (send start to push received; one clock for every namespace);
- cross IDC: a west client sends to ``eroom``: ack latency; and the
  delivery latency of the east client's sends to west receivers;
- ``wan_frames_per_message``: copies of the message texts that crossed the
  WAN per message, with online members in one remote IDC on two brokers
  (1.0 = once per remote IDC; CURVE is off so the forwarder can see them).

- ``reshard_s_per_1000_channels``: a local one-logic mesh (loopback, no
  WAN) gets ``--reshard-channels`` channels with one message each, is
  stopped, and ``bin/mesh reshard`` (nodes/ops/reshard.py) moves them to their
  owners under the same topology plus a second logic node and back; the
  seconds of the two moves (medians over the repeats), per 1000 channels.
- ``live_reshard_s_per_1000_channels``: on the bed, with the mesh running,
  east gets ``--reshard-channels`` more channels (homed in east, two
  messages each); a logic node is added in east by the live reshard
  (nodes/ops/livereshard.py: ``bin/mesh reshard`` exits 3, the node is started,
  the command is run again) and the seconds of the run that moves the
  channels (its JSON ``seconds``) are taken per 1000 of those channels; the
  node is removed again (live) before the next repeat.  Medians.
- ``live_reshard_unavailable_s``: meanwhile a user sends to one moving
  channel in a closed loop (retrying unknown outcomes, bench/failover.py
  Sender): the longest gap between its acks from the start of that run.

Needs root (network namespaces).
"""
from __future__ import annotations

import os
import statistics
import time
import uuid

import yaml

from bench import wanbed
from bench.failover import Sender
from bench.idcbed import IdcMesh, collect
from bench.report import machine, parser, scratch, table, write_json
from nodes.client.blocking import Client
from nodes.cluster.topology import load
from nodes.ops import reshard
from nodes.ops.localtopo import free_ports, write_topology
from nodes.ops.mesh import Mesh, wait_for
from nodes.protocol import auth
from nodes.runtime.curve import client_endpoint


def pct(values, q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


def deliveries(sent: list, got: list) -> list:
    """Milliseconds from each send's start to its push at a receiver."""
    start = {s["id"]: s["t"] for s in sent if "id" in s}
    return [(g["t"] - start[g["id"]]) * 1000 for g in got if g["id"] in start]


def run_once(mesh: IdcMesh, n: int) -> dict:
    mark = uuid.uuid4().hex
    mesh.bed.link.watch(mark.encode())
    rxs = {"east": mesh.receiver("east-client", "east-b1", 2, n),
           "west1": mesh.receiver("west-client", "west-b1", 3, n),
           "west2": mesh.receiver("west-client", "west-b2", 4, n)}
    same = mesh.probe("east-client", "sends", "east-b1", 1, "--channel", "eroom", "--count", n, "--text", mark)
    got = {name: collect(rx) for name, rx in rxs.items()}
    crossed = mesh.bed.link.crossed(mark.encode())
    cross = mesh.probe("west-client", "sends", "west-b1", 5, "--channel", "eroom", "--count", n)
    errors = sum(1 for s in same + cross if "id" not in s)
    same_ms, cross_ms = [s["ms"] for s in same if "id" in s], [s["ms"] for s in cross if "id" in s]
    local = deliveries(same, got["east"])
    remote = deliveries(same, got["west1"]) + deliveries(same, got["west2"])
    return {"same_idc_ack_p50_ms": pct(same_ms, 0.5), "same_idc_ack_p99_ms": pct(same_ms, 0.99),
            "cross_idc_ack_p50_ms": pct(cross_ms, 0.5), "cross_idc_ack_p99_ms": pct(cross_ms, 0.99),
            "same_idc_delivery_p50_ms": pct(local, 0.5), "same_idc_delivery_p99_ms": pct(local, 0.99),
            "cross_idc_delivery_p50_ms": pct(remote, 0.5), "cross_idc_delivery_p99_ms": pct(remote, 0.99),
            "wan_frames_per_message": round(crossed / n, 3),
            "lost": 3 * n - sum(len(g) for g in got.values()), "errors": errors}


def reshard_times(n: int, repeats: int) -> dict:
    """Seconds to move ``n`` channels' state to a second logic node and back (one message each)."""
    with scratch("reshard") as directory:
        one = write_topology(directory, brokers=1, logics=1, channels={})
        raw = yaml.safe_load(open(one))
        rpc, pub = free_ports(2)
        raw["idcs"]["test"]["logics"].append({"id": "l2", "rpc": f"tcp://127.0.0.1:{rpc}",
                                              "pub": f"tcp://127.0.0.1:{pub}"})
        two = os.path.join(directory, "topology-2.yaml")
        with open(two, "w") as f:
            yaml.safe_dump(raw, f)
        mesh = Mesh(one)
        try:
            mesh.start()
            mesh.wait_ready(30)
            client = Client(client_endpoint(mesh.topo, "b1"), timeout=10)
            client.login(auth.mint(mesh.topo.read_secret(), 1))
            for i in range(n):
                mesh.admin.channel("create", f"ch{i}", [1, 2])
                client.send(f"ch{i}", f"message {i}")
            client.close()
        finally:
            mesh.close()
        t_one, t_two = load(one), load(two)
        out, moved = [], 0
        for _ in range(repeats):
            t = time.monotonic()
            moved = len(reshard.move(t_one, t_two))
            reshard.move(t_two, t_one)
            out.append(time.monotonic() - t)
    return {"reshard_s_per_1000_channels": round(statistics.median(out) / 2 * 1000 / n, 3),
            "reshard_channels": n, "reshard_moved": moved}


def fill(mesh: IdcMesh, names: list, messages: int) -> None:
    """Create ``names`` (members 1 and 2) and send ``messages`` to each as user 1 via east-b1."""
    for name in names:
        mesh.mesh.admin.channel("create", name, [1, 2])
    client = Client(client_endpoint(mesh.topo, "east-b1"), timeout=10)
    try:
        client.login(auth.mint(mesh.topo.read_secret(), 1))
        for k in range(messages):
            for name in names:
                client.send(name, f"message {k}")
    finally:
        client.close()


def timed_move(mesh: IdcMesh, new: str, old: str, channel: str) -> tuple[dict, float]:
    """Run the move while user 2 sends to ``channel`` in a closed loop: (the command's report,
    the longest gap between that user's acks from the start of the move on)."""
    sender = Sender(client_endpoint(mesh.topo, "east-b1"), auth.mint(mesh.topo.read_secret(), 2, 3600), 2,
                    channel)
    sender.start()
    try:
        wait_for(lambda: len(sender.acked) >= 20 or sender.errors, 60, "acks before the move")
        t0 = time.monotonic()
        report = mesh.move(new, old)
        wait_for(lambda: sender.acks_after(t0) >= 20 or sender.errors, 60, "acks after the move")
    finally:
        sender.close()
    if sender.errors:
        raise RuntimeError(f"the sender to {channel} failed: {sender.errors[0]}")
    return report, sender.longest_stall_after(t0)


def live_reshard(mesh: IdcMesh, n: int, repeats: int) -> dict:
    """Add a logic node in east live (then remove it), ``repeats`` times, with ``n`` east channels."""
    names = [f"live{i}@east" for i in range(n)]
    fill(mesh, names, 2)
    old, seconds, gaps, moved = mesh.cfg, [], [], 0
    for k in range(repeats):
        new = mesh.start_logic(old, "east-l2", "east", 2 + 2 * k)
        channel = next(name for name in names if load(new).logic_for(name) == "east-l2")
        report, gap = timed_move(mesh, new, old, channel)
        seconds.append(report["seconds"])
        gaps.append(gap)
        moved = len(report["moved"])
        old, _back = mesh.remove_logic(new, "east-l2", 3 + 2 * k)
    return {"live_reshard_s_per_1000_channels": round(statistics.median(seconds) * 1000 / n, 3),
            "live_reshard_unavailable_s": round(statistics.median(gaps), 3), "live_reshard_moved": moved}


def run(args) -> dict:
    reason = wanbed.available()
    if reason:
        raise SystemExit(f"bin/bench idc: {reason}")
    with IdcMesh(delay=args.delay_ms / 1000) as mesh:
        mesh.probe("east-client", "sends", "east-b1", 1, "--channel", "eroom", "--count", 5)   # warm up
        runs = [run_once(mesh, args.messages) for _ in range(args.repeats)]
        live = live_reshard(mesh, args.reshard_channels, args.repeats)
    out = {key: statistics.median(r[key] for r in runs) for key in runs[0] if key not in ("lost", "errors")}
    out.update(lost=sum(r["lost"] for r in runs), errors=sum(r["errors"] for r in runs),
               **reshard_times(args.reshard_channels, args.repeats), **live, delay_ms_one_way=args.delay_ms,
               messages=args.messages,
               repeats=args.repeats, machine=machine())
    return out


def render(r: dict) -> str:
    rows = [["same IDC", r["same_idc_ack_p50_ms"], r["same_idc_ack_p99_ms"], r["same_idc_delivery_p50_ms"],
             r["same_idc_delivery_p99_ms"]],
            ["cross IDC", r["cross_idc_ack_p50_ms"], r["cross_idc_ack_p99_ms"], r["cross_idc_delivery_p50_ms"],
             r["cross_idc_delivery_p99_ms"]]]
    return (table(["placement", "ack p50 ms", "ack p99 ms", "delivery p50 ms", "delivery p99 ms"], rows)
            + f"\n\nWAN copies per message (one remote IDC, members on 2 brokers there): "
              f"{r['wan_frames_per_message']}\nlost deliveries: {r['lost']}, failed sends: {r['errors']}\n"
              f"reshard: {r['reshard_s_per_1000_channels']} s per 1000 channels ({r['reshard_moved']} of "
              f"{r['reshard_channels']} channels moved to a new logic node, and back)\n"
              f"live reshard on the bed: {r['live_reshard_s_per_1000_channels']} s per 1000 channels "
              f"({r['live_reshard_moved']} of {r['reshard_channels']} east channels moved to a new east logic "
              f"node); a moving channel unavailable {r['live_reshard_unavailable_s']} s\n"
              f"{r['delay_ms_one_way']} ms one way, medians of {r['repeats']} runs of "
              f"{r['messages']} messages; {r['machine']}")


def main(argv=None) -> int:
    p = parser("idc", __doc__)
    p.add_argument("--messages", type=int, default=200, help="messages per placement per run")
    p.add_argument("--repeats", type=int, default=3, help="runs (figures are medians over them)")
    p.add_argument("--delay-ms", type=float, default=20.0, help="one-way WAN delay")
    p.add_argument("--reshard-channels", type=int, default=1000, help="channels of the reshard run")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    if args.messages < 1 or args.repeats < 1 or args.delay_ms < 0 or args.reshard_channels < 1:
        p.error("--messages and --repeats must be >= 1, --delay-ms >= 0")
    result = run(args)
    print(render(result))
    if args.json:
        write_json(args.json, result)
    return 0 if result["lost"] == 0 and result["errors"] == 0 else 1
