"""bin/bench failover: the send stall when a channel's leader is SIGKILLed, over repeated kills.

A replicated mesh (3 logic nodes, ``replication: 3``, a local etcd) and
``--senders`` users sending to one channel in a closed loop.  A sender acts
like the client's mailbox: a send whose outcome is unknown (UNAVAILABLE,
BUSY, INTERNAL, timeout) is retried with the same ctime until it is acked,
so the stall is what a user would see.  Each round SIGKILLs the channel's
current leader (``--wipe``: and deletes its data directory), measures for
every sender the longest gap between acks from the kill until it has been
acked 20 times again, restarts the node and waits until it has caught up
(or leads again: a wiped node may win the next campaign, and then takes
the shard from the replica furthest ahead), then goes on.  The stall of a
round is its slowest sender's.

``--victim counter-router``: each round SIGKILLs instead the channel's first
counter and the first router of uin 1 (2 of each, ``id_block: 40`` so the
channel asks for ids every few dozen sends), measures the stall the same
way and ``login_s``: a user whose first router is the dead one logging in,
then restarts both.  (tests/test_ha.py asserts only the outcomes of these
kills; the figures are measured here.)
"""
from __future__ import annotations

import shutil
import signal
import threading
import time

from nodes.client.blocking import Client, ClientError
from nodes.ops.localtopo import write_topology
from nodes.ops.mesh import Mesh, wait_for

from .report import kept_on_failure, machine, parser as bench_parser, percentile, table, write_json

UNKNOWN = ("UNAVAILABLE", "BUSY", "INTERNAL", "TIMEOUT")


class Sender(threading.Thread):
    """One user sending to a channel in a closed loop, retrying unknown outcomes with the same ctime."""

    def __init__(self, endpoint, token, uin, channel):
        super().__init__(daemon=True)
        self.client = Client(endpoint, timeout=3.0)
        self.client.login(token)
        self.token = token
        self.uin, self.channel = uin, channel
        self.acked = {}                        # ctime -> id
        self.ack_times = []                    # monotonic time of every ack
        self.stop = threading.Event()
        self.errors = []

    def run(self):
        n = 0
        while not self.stop.is_set():
            n += 1
            ctime = self.client.clock.next()
            req = {"t": "send", "channel": self.channel, "ctime": ctime, "text": f"{self.uin}:{n}"}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    self.acked[ctime] = self.client.request(req)["id"]
                    self.ack_times.append(time.monotonic())
                    break
                except ClientError as exc:
                    if exc.code == "NOT_LOGGED_IN":
                        self._relogin()
                    elif exc.code not in UNKNOWN:
                        self.errors.append(exc)
                        return
                    time.sleep(0.02)           # an outcome is unknown: retry soon, same ctime
            else:
                self.errors.append(AssertionError(f"send {ctime} never acked"))
                return

    def _relogin(self):
        try:
            self.client.login(self.token)
        except ClientError:
            time.sleep(0.05)

    def acks_after(self, t0: float) -> int:
        return sum(1 for t in self.ack_times if t > t0)

    def longest_stall_after(self, t0: float) -> float:
        """The longest gap between acks from ``t0`` on (t0 itself counts as an ack)."""
        times = [t0] + [t for t in self.ack_times if t > t0]
        return max(b - a for a, b in zip(times, times[1:])) if len(times) > 1 else float("inf")

    def close(self):
        self.stop.set()
        self.join(40)
        self.client.close(logout=False)


def channel_leader(admin, channel):
    try:
        reply = admin.channel("show", channel)
    except Exception:
        return None
    return reply if reply.get("leader") else None


def caught_up(admin, topo, shard, node) -> bool:
    """Does ``node`` hold the shard's newest record (as its follower, or as its leader)?"""
    for node_id in topo.ids("logic"):
        info = ((admin.status(node_id) or {}).get("shards") or {}).get(str(shard))
        if info is not None:
            return info["leader"] == node or info["lag"].get(node) == 0
    return False


def run(args) -> dict:
    with kept_on_failure("failover") as directory:
        return measure(args, directory)


def measure(args, directory: str) -> dict:
    leader = args.victim == "leader"
    limits = {"channel_queue": 100000, "rate": 1e9, "burst": 1e9}
    mesh = Mesh(write_topology(directory, logics=3, replication=3, shards=args.shards,
                               routers=1 if leader else 2, counters=1 if leader else 2,
                               limits=limits if leader else dict(limits, id_block=40)))
    senders, stalls, logins = [], [], []
    try:
        mesh.start()
        mesh.wait_ready(60)
        topo, admin = mesh.topo, mesh.admin
        from nodes.protocol import auth
        secret = topo.read_secret()
        brokers = [b.endpoint("client") for b in topo.of_type("broker")]
        senders = [Sender(brokers[u % len(brokers)], auth.mint(secret, u, 3600), u, "lobby")
                   for u in range(1, args.senders + 1)]
        for s in senders:
            s.start()
        for _round in range(args.kills):
            since = time.monotonic()
            wait_for(lambda since=since: all(s.acks_after(since) >= 20 for s in senders), 60, "acks before a kill")
            shown = wait_for(lambda: channel_leader(admin, "lobby"), 30, "a leader")
            if not leader:
                stalls.append(kill_counter_and_router(mesh, senders, logins))
                continue
            killed_at = time.monotonic()
            mesh.signal(shown["leader"], signal.SIGTERM if args.stop else signal.SIGKILL)
            if args.wipe:
                shutil.rmtree(topo.node_dir(shown["leader"]), ignore_errors=True)
            # acks in flight at the kill arrive just after it: the stall is the longest gap between
            # acks from the kill until every sender has been acked 20 times again
            wait_for(lambda killed_at=killed_at: all(s.acks_after(killed_at) >= 20 for s in senders), 60,
                     "acks after the kill")
            stalls.append(max(s.longest_stall_after(killed_at) for s in senders))
            mesh.start([shown["leader"]])
            mesh.wait_ready(60, [shown["leader"]])
            wait_for(lambda shown=shown: caught_up(admin, topo, shown["shard"], shown["leader"]), 60, "catch-up")
        errors = [e for s in senders for e in s.errors]
        ids = [i for s in senders for i in s.acked.values()]
    finally:
        for s in senders:
            s.close()
        mesh.close()
    return {"kills": args.kills, "victim": args.victim, "wipe": args.wipe,
            "signal": "SIGTERM" if args.stop else "SIGKILL", "senders": args.senders,
            **({"login_max_s": round(max(logins), 3)} if logins else {}),
            "stall_p50_s": round(percentile(stalls, 50), 3), "stall_p99_s": round(percentile(stalls, 99), 3),
            "stall_max_s": round(max(stalls), 3), "stalls_s": [round(x, 3) for x in stalls],
            "acked": len(ids), "ids_reused": len(ids) - len(set(ids)), "errors": len(errors),
            "machine": machine()}


def kill_counter_and_router(mesh, senders, logins) -> float:
    """SIGKILL the channel's first counter and uin 1's first router; the round's stall; a login
    through the dead router's users timed into ``logins``; both restarted."""
    from nodes.protocol import auth
    topo = mesh.topo
    victims = [topo.counter_for("lobby"), topo.router_for(1)]
    killed_at = time.monotonic()
    for node_id in victims:
        mesh.kill(node_id)
    wait_for(lambda: all(s.acks_after(killed_at) >= 100 for s in senders), 60, "acks after the kills")
    stall = max(s.longest_stall_after(killed_at) for s in senders)
    uin = next(u for u in range(1000, 2000) if topo.router_for(u) == victims[1])
    client = Client(topo.of_type("broker")[0].endpoint("client"), timeout=5.0)
    started = time.monotonic()
    try:
        client.login(auth.mint(topo.read_secret(), uin, 600))
        logins.append(time.monotonic() - started)
    finally:
        client.close(logout=False)
    mesh.start(victims)
    mesh.wait_ready(60, victims)
    return stall


def render(r: dict) -> str:
    rows = [["victims", r["victim"]], ["kills", f"{r['kills']} ({r['signal']})"], ["data dir wiped", r["wipe"]],
            ["senders", r["senders"]],
            ["stall p50 / p99 / max s", f"{r['stall_p50_s']} / {r['stall_p99_s']} / {r['stall_max_s']}"],
            ["acked sends", r["acked"]], ["ids reused / errors", f"{r['ids_reused']} / {r['errors']}"]]
    if "login_max_s" in r:
        rows.append(["login with the first router dead, max s", r["login_max_s"]])
    return f"{r['machine']}\nstalls: {r['stalls_s']}\n\n" + table(["figure", "value"], rows)


def main(argv=None) -> int:
    parser = bench_parser("failover", __doc__)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--wipe", action="store_true", help="also delete the killed leader's data directory")
    parser.add_argument("--stop", action="store_true",
                        help="SIGTERM instead of SIGKILL: a clean stop hands the shards over at once")
    parser.add_argument("--victim", choices=("leader", "counter-router"), default="leader",
                        help="what each round kills: the channel's leader, or its first counter and a router")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    if args.victim != "leader" and (args.wipe or args.stop):
        parser.error("--wipe and --stop are about the leader (--victim leader)")
    if min(args.kills, args.senders, args.shards) < 1:
        parser.error("counts must be >= 1")
    result = run(args)
    print(render(result))
    if args.json:
        write_json(args.json, result)
    return 0 if result["errors"] == 0 and result["ids_reused"] == 0 and result["stall_max_s"] <= 5.0 else 1
