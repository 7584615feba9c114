"""The command-line contracts: bin/mesh and bin/chat as a user runs them (real processes)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import ROOT, write_topology

BIN = os.path.join(ROOT, "bin")


def run(tool, *args, timeout=30, **kw):
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run([os.path.join(BIN, tool), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def start(tool, *args):
    """A tool in its own process group, so a failed test can kill it with its children."""
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.Popen([os.path.join(BIN, tool), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture
def cli_mesh(make_mesh):
    m = make_mesh()
    return m, m.mesh.config


def test_chat_send_and_tail_json_across_brokers(cli_mesh):
    m, cfg = cli_mesh
    tail = start("chat", "tail", "-c", cfg, "--uin", 2, "--broker", "b2", "--channel", "lobby",
                 "--count", 2, "--json", "--timeout", 20)
    try:
        m.wait_presence(2, 9002, present=True)       # bin/chat tail logs in as device 9002
        ids = []
        for text in ("héllo", "wörld 🌍"):
            sent = run("chat", "send", "-c", cfg, "--uin", 1, "--broker", "b1", "--channel", "lobby", text)
            assert sent.returncode == 0, sent.stderr
            ids.append(int(sent.stdout.strip()))
        out, err = tail.communicate(timeout=20)
    finally:
        kill_group(tail)
    assert tail.returncode == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in rows] == ids and ids[1] == ids[0] + 1
    assert rows[1] == {"channel": "lobby", "id": ids[1], "uin": 1, "device": 9001,
                       "client_time": rows[1]["client_time"], "text": "wörld 🌍"}
    # --since fetches what is stored after an id, then exits once it has --count
    since = run("chat", "tail", "-c", cfg, "--uin", 3, "--channel", "lobby", "--count", 1,
                "--since", ids[0], "--json", "--timeout", 5)
    assert since.returncode == 0, since.stderr
    assert json.loads(since.stdout)["id"] == ids[1]


def test_chat_errors_exit_nonzero_with_the_code_on_stderr(cli_mesh):
    _m, cfg = cli_mesh
    r = run("chat", "send", "-c", cfg, "--uin", 500, "--channel", "lobby", "hi")
    assert r.returncode == 1 and "NOT_MEMBER" in r.stderr and r.stdout == ""
    r = run("chat", "send", "-c", cfg, "--uin", 1, "--channel", "nowhere", "hi")
    assert r.returncode == 1 and "NO_CHANNEL" in r.stderr
    r = run("chat", "send", "-c", cfg, "--uin", 1, "--token", "forged", "--channel", "lobby", "hi")
    assert r.returncode == 1 and "AUTH_FAILED" in r.stderr
    r = run("chat", "tail", "-c", cfg, "--uin", 1, "--channel", "lobby", "--count", 1, "--timeout", 0.5)
    assert r.returncode == 1 and "TIMEOUT" in r.stderr
    r = run("chat", "send", "-c", "/nonexistent.yaml", "--uin", 1, "--channel", "lobby", "hi")
    assert r.returncode == 2 and "nonexistent.yaml" in r.stderr


def test_mesh_token_and_channel_commands(cli_mesh):
    m, cfg = cli_mesh
    token = run("mesh", "token", "-c", cfg, "--uin", 77).stdout.strip()
    assert token.startswith("v1.user.77.")
    r = run("mesh", "channel", "create", "-c", cfg, "team", "--members", "1,2,3")
    assert r.returncode == 0 and json.loads(r.stdout)["members"] == [1, 2, 3]
    assert run("mesh", "channel", "add", "-c", cfg, "team", 4, 5).returncode == 0
    assert run("mesh", "channel", "remove", "-c", cfg, "team", 2).returncode == 0
    shown = json.loads(run("mesh", "channel", "show", "-c", cfg, "team", "--json").stdout)
    assert shown["members"] == [1, 3, 4, 5]
    text = run("mesh", "channel", "show", "-c", cfg, "team").stdout          # for a person: no JSON
    assert text.startswith("channel team") and "members (4): 1, 3, 4, 5" in text and "{" not in text, text
    brief = run("mesh", "channel", "create", "-c", cfg, "brief", "--members", "1", "--lifetime", 60)
    assert brief.returncode == 0 and json.loads(brief.stdout)["lifetime"] == 60
    bad = run("mesh", "channel", "create", "-c", cfg, "brief2", "--members", "1", "--lifetime", -1)
    assert bad.returncode == 1 and "BAD_FIELD" in bad.stderr
    dup = run("mesh", "channel", "create", "-c", cfg, "team", "--members", "1")
    assert dup.returncode == 1 and "CHANNEL_EXISTS" in dup.stderr
    missing = run("mesh", "channel", "show", "-c", cfg, "ghost")
    assert missing.returncode == 1 and "NO_CHANNEL" in missing.stderr
    # the member added on the command line can send with a token from `bin/mesh token`
    tok5 = run("mesh", "token", "-c", cfg, "--uin", 5).stdout.strip()
    sent = run("chat", "send", "-c", cfg, "--uin", 5, "--token", tok5, "--channel", "team", "hey")
    assert sent.returncode == 0 and int(sent.stdout) == 1


def test_mesh_up_runs_in_the_foreground_and_stops_everything_on_ctrl_c(tmp_path):
    cfg = write_topology(tmp_path, ws=True)
    up = start("mesh", "up", "-c", cfg)
    try:
        lines = []
        for line in up.stdout:
            lines.append(line)
            if "web chat: open http://127.0.0.1:" in line:        # printed right after "mesh is up"
                break
        assert any("mesh is up" in line for line in lines), "".join(lines) + up.stderr.read()
        hint = next(line for line in lines if "mesh is up" in line)
        assert f"bin/chat -c {cfg} --uin 1 --channel lobby" in hint, hint      # a hint that works as given
        assert sum(" up " in f" {line}" for line in lines) >= 6
        status = run("mesh", "status", "-c", cfg, "--json")
        assert status.returncode == 0
        rows = json.loads(status.stdout)
        assert len(rows) == 6 and all(r["up"] for r in rows)
        pids = [r["pid"] for r in rows]
        up.send_signal(signal.SIGINT)
        up.wait(30)
        assert up.returncode == 0
        down = run("mesh", "status", "-c", cfg)
        assert down.returncode == 1 and down.stdout.count("down") == 6
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    finally:
        kill_group(up)                      # also any node left behind if the test failed


def test_chat_upload_sends_a_ref_and_download_writes_the_same_file(make_mesh, tmp_path):
    m = make_mesh(brokers=1, logics=1, relays=1)
    cfg = m.mesh.config
    src = tmp_path / "photo.bin"
    src.write_bytes(os.urandom(700_000))
    tail = start("chat", "tail", "-c", cfg, "--uin", 2, "--channel", "lobby", "--count", 1, "--json",
                 "--timeout", 30)
    try:
        m.wait_presence(2, 9002, present=True)       # bin/chat tail logs in as device 9002
        up = run("chat", "upload", "-c", cfg, "--uin", 1, "--channel", "lobby", src)
        assert up.returncode == 0, up.stderr
        ref = up.stdout.strip()
        assert ref.startswith("imesh-media:")
        out, err = tail.communicate(timeout=30)
    finally:
        kill_group(tail)
    assert ref in json.loads(out)["text"] and "photo.bin" in json.loads(out)["text"]
    dst = tmp_path / "copy.bin"
    down = run("chat", "download", "-c", cfg, "--uin", 2, ref, dst)
    assert down.returncode == 0, down.stderr
    assert dst.read_bytes() == src.read_bytes()
    bad = run("chat", "download", "-c", cfg, "--uin", 500, ref, tmp_path / "no.bin")
    assert bad.returncode == 1 and "NOT_MEMBER" in bad.stderr and not (tmp_path / "no.bin").exists()


def test_chat_upload_of_a_file_whose_name_is_not_utf8_sends_its_message(make_mesh, tmp_path):
    """Issue 23 item 9: the upload went through, then building the message's text from a
    Latin-1 file name raised UnicodeEncodeError: the file was on the relay, no message said so."""
    m = make_mesh(brokers=1, logics=1, relays=1)
    src = os.path.join(os.fsencode(tmp_path), b"caf\xe9.bin")
    with open(src, "wb") as f:
        f.write(b"x" * 1000)
    up = subprocess.run([os.path.join(BIN, "chat").encode(), b"upload", b"-c", m.mesh.config.encode(),
                         b"--uin", b"1", b"--channel", b"lobby", src], capture_output=True, text=True,
                        timeout=60, env=dict(os.environ, PYTHON=sys.executable))
    assert up.returncode == 0 and "Traceback" not in up.stderr, up.stderr
    ref = up.stdout.strip()
    texts = [x["text"] for x in m.client(2).sync("lobby", 0)["msgs"]]
    assert texts == [f"[file] caf\\xe9.bin (1000 bytes) {ref}"], texts


@pytest.mark.parametrize("sig,after", [(signal.SIGINT, "starting "), (signal.SIGTERM, "mesh is up")],
                         ids=["ctrl-c-during-start", "sigterm-to-the-group-when-up"])
def test_a_signal_to_the_whole_group_stops_the_mesh_without_calling_it_a_crash(tmp_path, sig, after):
    """Issue 23 item 11: Ctrl-C while nodes were starting printed "node counter-1 exited with
    code -2" (as if it had crashed), and SIGTERM to the group (what a terminal, systemd or a
    container runtime send) printed "restarting" for nodes the signal had just stopped."""
    cfg = write_topology(tmp_path)
    up = start("mesh", "up", "-c", cfg)
    try:
        lines = []
        for line in up.stdout:
            lines.append(line)
            if line.startswith(after):
                break
        assert lines and lines[-1].startswith(after), "".join(lines) + up.stderr.read()
        os.killpg(up.pid, sig)                          # the terminal's Ctrl-C: every process of the group
        out, err = up.communicate(timeout=60)
    finally:
        kill_group(up)
    text = "".join(lines) + out + err
    assert "exited with code" not in text and "restart" not in text, text
    assert "all nodes stopped" in out and "Traceback" not in err, text
