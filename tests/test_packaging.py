"""A wheel installed into a fresh venv outside the checkout runs a mesh and a chat.

Builds the wheel from a copy of this tree (so the checkout gets no build/
droppings), installs it with --no-deps into a new venv whose third-party
packages come from the running interpreter's site-packages through a .pth
file (no network), and runs the console scripts from another directory with
no PYTHONPATH.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import urllib.request

import pytest
from conftest import ROOT, write_topology

from nodes.ops.supervisor import read_pid

IGNORE = shutil.ignore_patterns(".git", "build", "dist", "var", "*.egg-info", "__pycache__", "*.so",
                                "fastpath/*.c", ".venv", ".hypothesis", "*.prof")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    base = tmp_path_factory.mktemp("pkg")
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "IMESH_CONFIG", "IMESH_HOME")}
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(base / "wheels")], check=True, capture_output=True, cwd=base, timeout=600,
                   env=clean)
    wheel = next((base / "wheels").glob("imesh-*.whl"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
                    str(wheel)], check=True, capture_output=True, timeout=300, env=clean, cwd=base)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "zz_shared_deps.pth"), "w") as f:    # pyzmq, msgpack ... without network
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    work = base / "elsewhere"
    work.mkdir()
    env = dict(clean)
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", XDG_DATA_HOME=str(base / "xdg"))
    return {"venv": venv, "work": work, "env": env, "base": base}


def cmd(installed, *args, timeout=60):
    return subprocess.run([str(installed["venv"] / "bin" / args[0]), *map(str, args[1:])],
                          capture_output=True, text=True, cwd=installed["work"], env=installed["env"],
                          timeout=timeout)


@pytest.mark.slow
def test_installed_package_imports_from_the_venv(installed):
    r = subprocess.run([str(installed["venv"] / "bin" / "python"), "-c",
                        "import glob, os, nodes, fastpath; print(nodes.__file__); "
                        "import importlib; names = sorted(os.path.basename(p).split('.')[0] for p in "
                        "glob.glob(os.path.join(os.path.dirname(fastpath.__file__), '_*.so'))); "
                        "print(*(importlib.import_module('fastpath.' + n).__file__ for n in names))"],
                       capture_output=True, text=True, cwd=installed["work"], env=installed["env"])
    assert r.returncode == 0, r.stderr
    assert all(line.startswith(str(installed["venv"])) for line in r.stdout.split()), r.stdout
    # every Cython extension of the checkout is in the wheel, the fan-out and request decoder too
    built = {os.path.basename(p).split(".")[0] for p in r.stdout.split()[1:]}
    sources = {os.path.basename(p)[:-4] for p in glob.glob(os.path.join(ROOT, "fastpath", "*.pyx"))}
    assert built == sources and {"_fanout", "_hotreq"} <= built, (built, sources)


@pytest.mark.slow
def test_console_scripts_have_their_names_and_versions(installed):
    for script in ("imesh-mesh", "imesh-chat", "imesh-bench", "imesh-node", "imesh-broker", "imesh-logic",
                   "imesh-router", "imesh-counter", "imesh-relay"):
        r = cmd(installed, script, "--version")
        assert r.returncode == 0 and r.stdout.startswith(f"{script} (imesh) 0."), (script, r.stdout, r.stderr)
    r = cmd(installed, "imesh-broker", "--help")
    assert r.stdout.startswith("usage: imesh-broker") and "(default: INFO)" in r.stdout
    r = cmd(installed, "imesh-chat", "send", "--help")
    assert r.stdout.startswith("usage: imesh-chat send")


@pytest.mark.slow
def test_default_topology_is_created_in_the_data_home_not_site_packages(installed):
    r = cmd(installed, "imesh-mesh", "check")
    home = installed["base"] / "xdg" / "imesh"
    assert r.returncode == 0, r.stderr
    assert f"created the default topology {home / 'local.yaml'}" in r.stderr
    assert f"data under {home / 'var'}" in r.stdout
    assert "site-packages" not in r.stdout


@pytest.mark.slow
def test_installed_mesh_up_chat_send_and_stop(installed, tmp_path):
    cfg = write_topology(tmp_path, brokers=1, logics=1, ws=True)
    up = cmd(installed, "imesh-mesh", "up", "-c", cfg, "--detach")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        page = re.search(r"web chat: open (http://\S+)", up.stdout)          # served from the wheel's files
        assert page, up.stdout
        for path in ("", "js/src/client.js", "js/vendor/msgpack/index.mjs"):
            with urllib.request.urlopen(page.group(1) + path, timeout=10) as res:
                assert res.status == 200 and len(res.read()) > 100
        sent = cmd(installed, "imesh-chat", "send", "-c", cfg, "--uin", 1, "--channel", "lobby", "from a wheel")
        assert sent.returncode == 0 and int(sent.stdout) >= 1, sent.stderr
        tail = cmd(installed, "imesh-chat", "tail", "-c", cfg, "--uin", 2, "--channel", "lobby", "--since", 0,
                   "--count", 1, "--json", "--timeout", 10)
        assert tail.returncode == 0 and json.loads(tail.stdout)["text"] == "from a wheel", tail.stderr
        status = cmd(installed, "imesh-mesh", "status", "-c", cfg, "--json")
        assert status.returncode == 0
        assert all(row["up"] and row["supervised"] for row in json.loads(status.stdout))
        assert cmd(installed, "imesh-mesh", "stop", "-c", cfg).returncode == 0
    finally:
        pid = read_pid(os.path.join(tmp_path, "data"))
        if pid:
            os.killpg(pid, signal.SIGKILL)
