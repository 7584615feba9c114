"""bin/chat upload and download: a file to or from a relay (nodes/relay.py) by its
``imesh-media:`` ref.  Paths are checked before anything is sent (exit 2 with one line), and a
download is written atomically only after its sha256 matched."""
from __future__ import annotations

import os

from nodes.cli import outcome
from nodes.cli.chatsession import connect
from nodes.cli.common import client_endpoint, fail, load_topology, token_for
from nodes.client.media import MediaClient, save


def media_client(args) -> MediaClient:
    topo = load_topology(args.config)
    relays = {n.id: client_endpoint(topo, n.id) for n in topo.of_type("relay")}
    if not relays:
        fail(f"{topo.path} lists no relay")
    return MediaClient(relays, token_for(topo, args.uin, args.token), device=args.device)


def readable_file(path: str) -> int:
    """The size of a regular file we can read; else exit 2 with one line (nothing is sent)."""
    if os.path.isdir(path):
        fail(f"{path}: is a directory (upload one file)")
    try:
        with open(path, "rb"):
            return os.path.getsize(path)
    except OSError as exc:
        fail(f"{path}: {exc.strerror}")


def writable_target(path: str) -> None:
    """Exit 2 with one line unless ``path`` can be created: its directory exists, it is no directory."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        fail(f"{path}: is a directory (give the file name to write)")
    if not os.path.isdir(parent):
        fail(f"{path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        fail(f"{path}: directory {parent} is not writable")


def save_download(data: bytes, path: str) -> None:
    """Write the file (atomically, via PATH.part); one line and exit 1 if the disk refuses."""
    try:
        save(data, path)
    except OSError as exc:
        try:
            os.unlink(f"{path}.part")
        except OSError:
            pass
        fail(f"{path}: {exc.strerror}", 1)


async def cmd_upload(args) -> int:
    size = readable_file(args.file)
    media = media_client(args)
    await media.connect()
    try:
        ref = await media.upload(args.file, args.channel, mime=args.mime)
    finally:
        await media.close()
    print(ref, flush=True)
    client = await connect(args, reports_own=True)
    code, _msg_id = await outcome.send_once(
        client, args.channel, f"[file] {shown_name(args.file)} ({size} bytes) {ref}", client.timeout)
    return code


def shown_name(path: str) -> str:
    """The file's name as message text: a name that is not UTF-8 (Python keeps its bytes as
    surrogates, which no message may carry) shows those bytes as \\xNN escapes."""
    return os.path.basename(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


async def cmd_download(args) -> int:
    writable_target(args.out)
    media = media_client(args)
    await media.connect()
    try:
        data = await media.download(args.ref)
    finally:
        await media.close()
    save_download(data, args.out)
    print(f"{args.out}: {len(data)} bytes, sha256 verified")
    return 0
