"""Arguments a new user gets wrong are refused at once, with one line and exit 2 (issue 23 item 11):
before, `tail --since -5` and `--timeout -1` waited and timed out silently, `token --lifetime 0`
minted expired tokens, `--net bogus` logged in, `status --timeout -1` called every node down,
and `stop nosuch` exited 1 where `restart nosuch` exits 2.  No mesh runs: each must fail before
it would need one."""
from __future__ import annotations

import pytest
from conftest import write_topology
from test_cli import run


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return write_topology(tmp_path_factory.mktemp("args"), brokers=1, logics=1)


SESSION = ("--uin", 1, "--channel", "lobby")
BAD = [
    (("chat", "tail", *SESSION, "--count", 1, "--since", -5), "--since"),
    (("chat", "tail", *SESSION, "--count", 1, "--since", "99999999999999999999999"), "--since"),
    (("chat", "tail", *SESSION, "--count", 1, "--timeout", -1), "--timeout"),
    (("chat", "tail", *SESSION, "--count", 1, "--timeout", "nan"), "--timeout"),
    (("chat", "send", *SESSION, "--net", "bogus", "hi"), "--net"),
    (("mesh", "token", "--uin", 1, "--lifetime", -5), "--lifetime"),
    (("mesh", "token", "--uin", 1, "--lifetime", 0), "--lifetime"),
    (("mesh", "status", "--timeout", -1), "--timeout"),
    (("mesh", "top", "--interval", 0), "--interval"),
    (("mesh", "up", "--timeout", 0), "--timeout"),
    (("mesh", "stop", "nosuch"), "nosuch"),
    (("mesh", "restart", "nosuch"), "nosuch"),
    (("mesh", "start", "nosuch"), "nosuch"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(map(str, a[:2] + a[-2:])) for a, _ in BAD])
def test_a_bad_argument_is_one_line_and_exit_2(cfg, args, needle):
    tool, sub, *rest = args
    r = run(tool, sub, "-c", cfg, *rest, timeout=20)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and needle in r.stderr, r.stderr


MESH_SUBCOMMANDS = ["up", "stop", "start", "restart", "status", "top", "check", "secret", "keys", "token",
                    "channel", "reshard"]
CHAT_SUBCOMMANDS = ["send", "tail", "upload", "download", "pending"]


@pytest.mark.parametrize("tool,sub", [("mesh", s) for s in MESH_SUBCOMMANDS] + [("chat", s) for s in CHAT_SUBCOMMANDS])
def test_every_subcommand_answers_version(tool, sub):
    r = run(tool, sub, "--version", timeout=20)
    assert r.returncode == 0 and "(imesh)" in r.stdout, (r.stdout, r.stderr)


def test_net_takes_the_documented_types(cfg):
    r = run("chat", "send", "--help")
    assert "wired" in r.stdout and "2g" in r.stdout


def as_console_script(tool, *args, cwd=None):
    """A tool started as its wheel's console script (imesh-TOOL), without installing a wheel."""
    import os
    import subprocess
    import sys

    from conftest import ROOT
    code = (f"import sys; sys.argv[0] = '/venv/bin/imesh-{tool}'; from nodes.cli.{tool} import main; "
            "sys.exit(main())")
    env = {k: v for k, v in os.environ.items() if k != "IMESH_PROG"}
    env["PYTHONPATH"] = ROOT
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=30, env=env, cwd=cwd)


def test_installed_tools_name_themselves_and_each_other_as_installed(tmp_path):
    import yaml
    r = as_console_script("chat", "--help")
    assert r.returncode == 0 and "imesh-chat" in r.stdout and "bin/" not in r.stdout, r.stdout
    r = as_console_script("chat", "pending", "--help")
    assert r.stdout.startswith("usage: imesh-chat pending"), r.stdout
    cfg = write_topology(tmp_path, brokers=1, logics=1)
    raw = yaml.safe_load(open(cfg))
    raw["local"] = False
    with open(cfg, "w") as f:
        yaml.safe_dump(raw, f)
    r = as_console_script("chat", "send", "-c", cfg, "--uin", 1, "--channel", "lobby", "hi")
    assert r.returncode == 2 and "imesh-mesh token" in r.stderr and "bin/" not in r.stderr, r.stderr
