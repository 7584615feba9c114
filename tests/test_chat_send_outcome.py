"""bin/chat send says what became of its message, with one exit code each (issue 23 item 8):
acked (its id, 0), refused (not stored, 1), kept in the mailbox and sent later (3).

The bug: a send that went BUSY (no ack after 2 tries) was acked by the mailbox a moment
later, while the tool still waited; it printed "kept in the mailbox", "mailbox: sent #2", then
"error: BUSY", exit 1 -- and a script that resends on failure stored it twice."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, served

from nodes.client.mailbox import Mailbox

BIN = os.path.join(ROOT, "bin")


def wait_for(what, predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)                          # polling a sqlite file another process writes


def tries_in(path: str) -> int:
    if not os.path.exists(path):
        return 0
    box = Mailbox(path)
    try:
        return max((e.tries for e in box.pending()), default=0)
    finally:
        box.close()


def test_a_busy_send_acked_while_the_tool_waits_prints_its_id_and_exits_0(make_mesh):
    m = make_mesh(brokers=1, logics=1, limits={"request_timeout": 0.5})
    cfg = m.mesh.config
    box = os.path.join(m.topo.data_dir, "clients", "1-9001.mailbox.sqlite")
    owner = m.mesh.procs[m.owner_of("lobby")]
    owner.send_signal(signal.SIGSTOP)
    proc = subprocess.Popen([os.path.join(BIN, "chat"), "send", "-c", cfg, "--uin", "1",
                             "--channel", "lobby", "during failover"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHON=sys.executable))
    try:
        try:
            wait_for("the send to go BUSY (2 unsettled tries)", lambda: tries_in(box) >= 2)
        finally:
            owner.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:         # the test failed with the tool still waiting
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, (out, err)
    msg_id = int(out.strip())
    assert "error" not in err and "mailbox: sent" not in err, err
    page = served(lambda: m.client(2).sync("lobby", 0))
    assert [(x["id"], x["text"]) for x in page["msgs"]] == [(msg_id, "during failover")]
    pending = subprocess.run([os.path.join(BIN, "chat"), "pending", "-c", cfg, "--uin", "1", "--json"],
                             capture_output=True, text=True, env=dict(os.environ, PYTHON=sys.executable))
    assert pending.stdout == "", pending.stdout


def test_a_refused_send_exits_1_and_says_not_stored(make_mesh):
    m = make_mesh(brokers=1, logics=1)
    m.admin.channel("create", "club", [1, 2])
    r = subprocess.run([os.path.join(BIN, "chat"), "send", "-c", m.mesh.config, "--uin", "77",
                        "--channel", "club", "not a member"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHON=sys.executable), timeout=60)
    assert r.returncode == 1 and "NOT_MEMBER" in r.stderr and "not stored" in r.stderr, r.stderr
    assert r.stdout == ""
