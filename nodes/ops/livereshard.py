"""The operator's side of a live reshard: move channels between running logic nodes.

``bin/mesh reshard -c NEW.yaml --from OLD.yaml`` while the mesh runs
(nodes/cli/reshard_cli.py).  The steps, each safe to repeat, so running the
command again after an interruption finishes the job:

1. every node of OLD admits NEW's keys (nodes/cluster/topochange.py);
2. every logic node NEW adds must be running with NEW (if one is not, the
   command says how to start it and exits with 3: run it again then);
3. every logic node adopts NEW: a channel it places elsewhere stops being
   served there (requests get UNAVAILABLE, an outcome clients retry);
4. each such channel's rows go from its old owner to its new one in pages
   (nodes/logic/handoff.py), are loaded there, then deleted from the old owner;
5. brokers, routers, counters and relays adopt NEW: requests reach the new
   owners, and the command waits until every broker hears every logic node;
6. the logic nodes settle: an added one, which found the others on an older
   version when it started and so seeded and served no channel it did not
   hold (nodes/logic/node.py ``_joins_running_mesh``), seeds the topology's new
   channels and serves as any node.

A logic node NEW removes holds nothing after step 4: stop it then.
"""
from __future__ import annotations

import time

from nodes.cluster import topochange
from nodes.cluster.topology import TopologyError
from nodes.ops.admin import Admin
from nodes.protocol import auth

PENDING = 3            # exit code: start the new logic nodes, then run the command again


class LiveError(Exception):
    """The change cannot go on; ``code`` is the command's exit code."""

    def __init__(self, msg: str, code: int = 1):
        super().__init__(msg)
        self.code = code


class LiveReshard:
    def __init__(self, old, new, say=print, timeout: float = 10.0):
        self.old, self.new, self.say = old, new, say
        self.admins = {"old": Admin(old, timeout=timeout), "new": Admin(new, timeout=timeout)}
        self.token = auth.mint(new.read_secret(), 0, lifetime=3600, scope="admin")
        self.moves: list = []                        # (channel, from, to)
        self.rows = 0

    # --- requests ------------------------------------------------------------
    def ask(self, node_id: str, msg: dict) -> dict | None:
        """The node's answer, or None when it did not answer; a refusal raises LiveError."""
        admin = self.admins["new" if node_id in self.new.nodes else "old"]
        reply = admin.call(node_id, dict(msg, auth=self.token))
        if reply is not None and reply.get("t") == "err":
            raise LiveError(f"{node_id} refused {msg['t']!r}: {reply.get('code')}: {reply.get('msg')}")
        return reply

    def call(self, node_id: str, msg: dict) -> dict:
        """The node's answer; a node that does not answer stops the change (LiveError)."""
        reply = self.ask(node_id, msg)
        if reply is None:
            raise LiveError(f"{node_id} did not answer {msg['t']!r}; run the command again when it is up")
        return reply

    def _topology_msg(self, phase: str) -> dict:
        return {"t": "topology", "phase": phase, "yaml": self.new.text, "path": self.new.path}

    def topology(self, node_id: str, phase: str) -> dict:
        return self.call(node_id, self._topology_msg(phase))

    def topology_if_up(self, node_id: str, phase: str) -> dict | None:
        return self.ask(node_id, self._topology_msg(phase))

    # --- the steps -------------------------------------------------------------
    def run(self, dry_run: bool = False) -> list:
        try:
            topochange.check_change(self.old, self.new)
        except TopologyError as exc:
            raise LiveError(str(exc)) from None
        old_logic = self.old.ids("logic")
        for node_id in self.old.nodes:                                   # 1. admit
            msg = self._topology_msg("admit")
            reply = self.call(node_id, msg) if node_id in old_logic else self.ask(node_id, msg)
            if reply is None:
                self.say(f"warning: {node_id} is down: start it with {self.new.path}")
            elif reply.get("version", 0) > self.old.version and reply.get("version") != self.new.version:
                # the node adopted a topology newer than OLD: OLD may lack logic nodes that hold
                # channels, and they would be left out (nodes behind OLD: a run cut short, fine)
                raise LiveError(f"{node_id} runs topology version {reply.get('version')}, not "
                                f"{self.old.path}'s ({self.old.version}): give --from the file of "
                                f"version {reply.get('version')} (each node keeps it in its data directory, "
                                f"{topochange.KEPT_NAME})")
        if dry_run:                            # what would move: the new nodes need not run yet
            return self._plan()
        added = [n for n in self.new.ids("logic") if n not in self.old.nodes]
        self._check_started(added)                                       # 2.
        leaving = {}
        for node_id in dict.fromkeys(old_logic + self.new.ids("logic")):   # 3. adopt
            leaving[node_id] = self.topology(node_id, "adopt")["leaving"]
        for src, channels in leaving.items():                             # 4. hand over
            for dst in sorted(set(channels.values())):
                self._hand_over(src, dst)
        for node_id in self.new.nodes:                                   # 5. route by NEW
            if self.new.nodes[node_id].type != "logic" and self.topology_if_up(node_id, "adopt") is None:
                self.say(f"warning: {node_id} is down: start it with {self.new.path}")
        self._wait_linked()
        for node_id in self.new.ids("logic"):                            # 6. settled
            self.topology(node_id, "settle")
        return self.moves

    def _check_started(self, added) -> None:
        hint = "; ".join(f"bin/logic -c {self.new.path} --id {n}" for n in added)
        deadline = time.monotonic() + 15.0
        for node_id in added:
            while True:
                status = self.admins["new"].status(node_id, timeout=2.0)
                if status is None:
                    raise LiveError(f"logic node {node_id} (new in {self.new.path}) is not running; start "
                                    f"it ({hint}), then run this command again", PENDING)
                if status.get("topology_version") != self.new.version:
                    raise LiveError(f"{node_id} runs topology version {status.get('topology_version')}, "
                                    f"not {self.new.version}: restart it with -c {self.new.path}")
                if status.get("presence_synced"):
                    break
                if time.monotonic() > deadline:
                    raise LiveError(f"{node_id} has no presence from the routers yet: it was started before "
                                    "the other nodes admitted its key; restart it, then run this command again")
                time.sleep(0.2)

    def _plan(self) -> list:
        """What would move (dry run): each logic node's answer to ``admit``."""
        for node_id in self.old.ids("logic"):
            reply = self.topology(node_id, "admit")
            for name, dst in sorted(reply.get("would_leave", {}).items()):
                self.moves.append((name, node_id, dst))
        return self.moves

    def _hand_over(self, src: str, dst: str) -> None:
        after, first, names = 0, True, []
        while True:
            page = self.call(src, {"t": "handoff", "to": dst, "after": after})
            names = page["channels"]
            if not names:
                return
            last = page["next"] == 0
            took = self.call(dst, {"t": "take", "channels": names, "rows": page["rows"], "first": first,
                                   "last": last, "boundaries": page.get("boundaries", {}) if first else None})
            self.rows += len(page["rows"])
            first, after = False, page["next"]
            if last:
                break
        self.call(src, {"t": "handoff_done", "to": dst, "channels": names})
        kept = set(took.get("kept", ()))
        for name in names:
            if name in kept:
                self.say(f"kept {name} at {dst}: its ids go beyond {src}'s copy, which is deleted")
                continue
            self.moves.append((name, src, dst))
            self.say(f"moved {name}: {src} -> {dst}")

    def _wait_linked(self, timeout: float = 10.0) -> None:
        """Until every broker hears every logic node of NEW (their ticks come over new links)."""
        wanted = set(self.new.ids("logic"))
        deadline = time.monotonic() + timeout
        for broker in self.new.ids("broker"):
            while True:
                status = self.admins["new"].status(broker, timeout=2.0)
                if status is None or wanted <= set(status.get("logic_links", ())):
                    break
                if time.monotonic() > deadline:
                    raise LiveError(f"broker {broker} does not hear logic nodes "
                                    f"{sorted(wanted - set(status.get('logic_links', ())))} yet")
                time.sleep(0.1)


def logic_running(topo) -> dict:
    """{logic id: True if it answers status} for the topology's logic nodes."""
    answers = Admin(topo, timeout=2.0).status_all(topo.ids("logic"), timeout=2.0)
    return {n: s is not None for n, s in answers.items()}
