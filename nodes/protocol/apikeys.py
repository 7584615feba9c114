"""API keys of the server HTTP API (nodes/broker/httpapi.py): named bearer keys beside the cluster secret.

The file ``api_keys`` lives in the directory of the topology's ``secret_file``
(mode 0600, like the secret) and holds one key a line: ``NAME SHA256-HEX``.
Only the digest of a key is stored: whoever reads the file cannot call the API
with it, and a key is shown once, when ``bin/mesh apikey --name NAME`` creates
it.  A broker reads the file again when it changes, so a key added (or a line
deleted to revoke one) counts without a restart.  Checking compares the digest
of the presented key with every stored one in constant time
(``hmac.compare_digest``), so the time taken says nothing of how close a guess was.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets

FILE_NAME = "api_keys"
PREFIX = "imk_"                    # tells an API key from a login token at a glance
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def path_for(secret_file: str) -> str:
    """The API key file of a topology: beside its secret file."""
    return os.path.join(os.path.dirname(os.path.abspath(secret_file)), FILE_NAME)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def read(path: str) -> dict[str, str]:
    """{name: digest} of the file; {} when it does not exist."""
    try:
        with open(path, encoding="ascii") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}
    out = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and _NAME.fullmatch(parts[0]) and re.fullmatch(r"[0-9a-f]{64}", parts[1]):
            out[parts[0]] = parts[1]
    return out


def create(path: str, name: str) -> str:
    """Add a key named ``name`` (letters, digits, ``_.-``; not used yet) and return it: the only
    time it is shown.  ValueError says why not."""
    if not _NAME.fullmatch(name):
        raise ValueError("a key name is 1..64 letters, digits and _.-")
    if name in read(path):
        raise ValueError(f"{path} already holds a key named {name!r} (delete its line to revoke it)")
    key = PREFIX + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="ascii") as f:
        f.write(f"{name} {digest(key)}\n")
    return key


class ApiKeys:
    """The keys of one file, read again when its modification time or size changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._keys: dict[str, str] = {}

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
            seen: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            seen = None
        if seen != self._seen:
            self._keys, self._seen = read(self.path), seen

    def check(self, key: str) -> str | None:
        """The name of the key, or None if it is no key of the file."""
        self._refresh()
        presented = digest(key)
        found = None
        for name, stored in self._keys.items():       # every one compared: no early exit
            if hmac.compare_digest(presented, stored):
                found = name
        return found
