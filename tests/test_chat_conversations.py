"""bin/chat's conversation commands on a real mesh, two users on two brokers, each an
interactive chat driven through its stdin: /dm, messages both ways with "seen by",
typing, /edit and /delete shown on the other side, /history, /who live, /channels with
unread counts, /group and /invite; and the one-shot `channels` and `history` tools."""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from test_cli import BIN, run


class Chat:
    """An interactive bin/chat in its own process group; its stdout read by a thread."""

    def __init__(self, cfg: str, uin: int, broker: str):
        env = dict(os.environ, PYTHON=sys.executable)
        self.proc = subprocess.Popen([os.path.join(BIN, "chat"), "-c", cfg, "--uin", str(uin), "--broker", broker],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list = []
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.expect("logged in as")
        except BaseException:           # never handed to the fixture: stop it here
            self.close()
            raise

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def say(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, pattern: str, timeout: float = 15.0) -> re.Match:
        """The first line from now on that matches ``pattern`` (a regex)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in {timeout} s; got: {self.seen[-15:]}") from None
            self.seen.append(line)
            assert "Traceback" not in line, self.seen[-15:]
            found = re.search(pattern, line)
            if found:
                return found

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.say("/quit")
                self.proc.wait(10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def chats(shared_mesh):
    started = []
    b1, b2 = shared_mesh.topo.ids("broker")[:2]
    yield lambda uin, second=False: started.append(Chat(shared_mesh.mesh.config, uin, b2 if second else b1)) \
        or started[-1]
    for chat in started:
        chat.close()


def test_two_users_chat_in_a_dm_with_receipts_typing_edit_delete(chats, shared_mesh):
    cfg = shared_mesh.mesh.config
    ann, ben = chats(21), chats(22, second=True)
    ann.say("/dm 22")
    ann.expect(r"started the direct chat dm:21:22")
    ann.expect(r"now in dm:21:22 \(\d+ online\)")
    ben.say("/dm 21")
    ben.expect(r"found the direct chat dm:21:22")
    ben.expect(r"now in dm:21:22")
    ann.say("hello ben")
    first = ann.expect(r"  sent #(\d+)").group(1)
    ben.expect(rf"\[dm:21:22 #{first}\] 21/0 .*: hello ben")
    ann.expect(rf"#{first} seen by 22")                        # ben's chat showed it: read, receipt
    ben.say("/typing")
    ann.expect(r"22 is typing…")
    ben.say("hi ann")
    ann.expect(r"\[dm:21:22 #\d+\] 22/0 .*: hi ann")
    ann.say(f"/edit {first} hello, ben")
    ann.expect(rf"edited #{first}")
    ben.expect(rf"\[dm:21:22 #{first}\] edited by 21: hello, ben")
    ann.say("a slip")
    slip = ann.expect(r"  sent #(\d+)").group(1)
    ben.expect(r": a slip$")
    ann.say(f"/delete {slip}")
    ben.expect(rf"\[dm:21:22 #{slip}\] deleted by 21")
    ben.say("/history 10")
    ben.expect(rf"\[dm:21:22 #{first}\] 21/0 .*: hello, ben \(edited\)")
    ben.expect(rf"\[dm:21:22 #{slip}\] 21/0 .*: \(deleted\)")
    ben.expect(r"the start of what dm:21:22 keeps")
    ben.say("/who")
    ben.expect(r"online in dm:21:22: 21, 22")
    ann.say("/channels")
    ann.expect(r"  dm:21:22 \[dm, member, 2 members\] .*-- #\d+ 21: \(deleted\)")

    # one-shot tools: ben read everything his chat showed; a new message is unread
    r = run("chat", "send", "-c", cfg, "--uin", 21, "--channel", "dm:21:22", "unseen")
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 10
    while True:
        r = run("chat", "channels", "-c", cfg, "--uin", 22, "--json")
        assert r.returncode == 0, r.stderr
        items = {i["channel"]: i for i in map(json.loads, r.stdout.splitlines())}
        if items["dm:21:22"]["unread"] >= 1 or time.monotonic() > deadline:
            break
    assert items["dm:21:22"]["kind"] == "dm" and items["dm:21:22"]["members"] == 2
    r = run("chat", "history", "-c", cfg, "--uin", 22, "--channel", "dm:21:22", "--limit", 3, "--json")
    assert r.returncode == 0, r.stderr
    msgs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [m.get("text") for m in msgs][-1] == "unseen" and msgs[-2]["deleted"] is True
    r = run("chat", "history", "-c", cfg, "--uin", 23, "--channel", "dm:21:22")
    assert r.returncode == 1 and "NOT_MEMBER" in r.stderr and "Traceback" not in r.stderr

    ann.say("/group 22,23 team")
    group = ann.expect(r"made the group (grp:21:\d+)").group(1)
    ann.expect(rf"now in {group}")
    ann.say("/invite 24")
    ann.expect(rf"invited 24 to {group}")
    ben.say(f"/join {group}")
    ben.expect(rf"now in {group}")
    ben.say("/invite 25")
    ben.expect(r"error: FORBIDDEN")
