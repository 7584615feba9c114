"""bin/chat errors end in one line and the right exit code; interactive commands; stdin from a file."""
from __future__ import annotations

import os
import subprocess

import pytest
from test_cli import BIN, run


@pytest.fixture(scope="module")
def cfg(shared_mesh):
    return shared_mesh.mesh.config


def one_line(r, code: int, *parts):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, (r.returncode, r.stderr)
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for part in parts:
        assert part in lines[0], lines[0]


def test_download_into_a_missing_directory(cfg, tmp_path):
    r = run("chat", "download", "-c", cfg, "--uin", 1, "imesh-media:m1:0123456789abcdef", tmp_path / "no" / "x")
    one_line(r, 2, "does not exist")
    r = run("chat", "download", "-c", cfg, "--uin", 1, "imesh-media:m1:0123456789abcdef", tmp_path)
    one_line(r, 2, "is a directory")
    assert os.listdir(tmp_path) == []


def test_upload_of_a_directory_or_missing_file(cfg, tmp_path):
    r = run("chat", "upload", "-c", cfg, "--uin", 1, "--channel", "lobby", tmp_path)
    one_line(r, 2, "is a directory")
    r = run("chat", "upload", "-c", cfg, "--uin", 1, "--channel", "lobby", tmp_path / "missing.bin")
    one_line(r, 2, "No such file")
    assert os.listdir(tmp_path) == []                      # no .part or anything else left


def test_uin_contradicting_the_token_is_refused(cfg, shared_mesh):
    token = shared_mesh.token(1)
    r = run("chat", "send", "-c", cfg, "--uin", 3, "--token", token, "--channel", "lobby", "as whom?")
    one_line(r, 2, "--uin 3 contradicts --token", "uin 1")
    assert r.stdout == ""


def test_tail_of_a_channel_one_cannot_read_says_why(cfg, shared_mesh):
    shared_mesh.admin.channel("create", "closed-room", [7])
    r = run("chat", "tail", "-c", cfg, "--uin", 1, "--channel", "closed-room", "--count", 1, "--timeout", 20)
    one_line(r, 1, "NOT_MEMBER")
    r = run("chat", "tail", "-c", cfg, "--uin", 1, "--channel", "no-such-room", "--count", 1, "--timeout", 20)
    one_line(r, 1, "NO_CHANNEL")


def chat(cfg, uin, stdin_text, *extra, stdin_file=None):
    """Interactive bin/chat fed from a regular file (the PermissionError case) or a pipe."""
    env = dict(os.environ, PYTHON=os.environ.get("PYTHON") or __import__("sys").executable)
    if stdin_file is not None:
        stdin_file.write_text(stdin_text)
        with open(stdin_file) as f:
            return subprocess.run([os.path.join(BIN, "chat"), "-c", cfg, "--uin", str(uin), *extra], stdin=f,
                                  capture_output=True, text=True, timeout=60, env=env)
    return subprocess.run([os.path.join(BIN, "chat"), "-c", cfg, "--uin", str(uin), *extra],
                          input=stdin_text, capture_output=True, text=True, timeout=60, env=env)


def test_interactive_commands_from_a_file_on_stdin(cfg, tmp_path):
    script = "\n".join(["/help", "/join lobby", "first line", "//slash line", "/who", "/history 2",
                        "/leave", "not sent", "/bogus", "/quit", ""])
    r = chat(cfg, 4, script, stdin_file=tmp_path / "in.txt")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "/history N" in out and "now in lobby" in out
    assert out.count("  sent #") == 2                       # "first line" and "/slash line"
    assert "members of lobby: 1, 2, 3" in out
    hist = [line for line in out.splitlines() if line.startswith("[lobby #")]
    assert any(line.endswith(": first line") for line in hist) and any(line.endswith(": /slash line")
                                                                        for line in hist)
    assert "left lobby" in out and "pick a channel first" in out and "unknown command /bogus" in out
    assert "Traceback" not in r.stderr


def test_interactive_from_a_pipe_and_ctrl_d(cfg):
    r = chat(cfg, 5, "/join lobby\npiped\n")                # EOF without /quit ends it too
    assert r.returncode == 0 and "  sent #" in r.stdout, r.stderr


def test_tools_do_not_kick_an_open_chat_of_the_same_user(cfg, shared_mesh):
    """An open chat (device 0) and a `send` of the same uin (device 9001) are two sessions."""
    c = shared_mesh.client(6, device=0)
    r = run("chat", "send", "-c", cfg, "--uin", 6, "--channel", "lobby", "from the cli")
    assert r.returncode == 0, r.stderr
    assert c.send("lobby", "the open session still works") > int(r.stdout)
