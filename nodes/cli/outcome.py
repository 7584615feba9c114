"""What became of the message a `bin/chat send` (or `upload`) sent, said once, with its own exit code.

A send that gets no ack after its tries raises BUSY while the message stays
in the mailbox and is tried again in the background; the tool then waits a
moment for the mailbox (nodes/client/aclient.py).  If the retry is acked in
that moment the message *was* sent: printing "error: BUSY" (exit 1) then made
a script resend it -- stored twice (issue 23 item 8).  So the tool waits for
its own entry to settle, closes the client (after which nothing can change),
and only then reports one of:

    SENT (0)      acked: its id on stdout
    REFUSED (1)   the server refused it, or it never reached the mailbox: not stored
    KEPT (3)      no ack yet: it stays in the mailbox and the next bin/chat of this
                  user and device sends it (stored once); do not send it again
"""
from __future__ import annotations

import asyncio
import sys

from nodes.cli.common import tool_name
from nodes.client.blocking import ClientError

SENT, REFUSED, KEPT = 0, 1, 3
FINAL = ("acked", "refused", "expired", "cancelled")     # mailbox events after which an entry is gone


class MailReport:
    """The client's ``on_mail``: remembers how each mailbox entry ended, and passes every event
    to ``show`` except those of entries this run wrote when ``own_quiet`` (the command reports
    its own message itself)."""

    def __init__(self, show, started: float, own_quiet: bool = False):
        self.show, self.started, self.own_quiet = show, started, own_quiet
        self.outcomes: dict = {}                 # mailbox seq -> (event, detail)
        self._waiting: dict = {}                 # mailbox seq -> Future

    def __call__(self, event: str, entry, detail) -> None:
        if event in FINAL:
            self.outcomes[entry.seq] = (event, detail)
            fut = self._waiting.pop(entry.seq, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        if not (self.own_quiet and entry.created >= self.started):
            self.show(event, entry, detail)

    async def settled(self, seq: int, timeout: float) -> None:
        """Until entry ``seq`` is settled, at most ``timeout`` s."""
        if seq in self.outcomes:
            return
        fut = self._waiting.setdefault(seq, asyncio.get_running_loop().create_future())
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            pass


async def send_once(client, channel: str, text: str, settle: float) -> tuple[int, int | None]:
    """Send and, after BUSY, wait up to ``settle`` s for the mailbox's retry; then flush the rest
    of the mailbox and close the client.  Returns (exit code, message id or None); prints the
    outcome unless it is SENT (the caller prints the id as its command does)."""
    report: MailReport = client.on_mail
    loop = asyncio.get_running_loop()
    busy = msg_id = None
    try:
        try:
            msg_id = await client.send(channel, text)
        except ClientError as exc:
            if "mailbox" not in exc.reply:
                print(f"error: {exc.code}: {exc.msg} (not stored)", file=sys.stderr)
                return REFUSED, None
            busy = exc
        deadline = loop.time() + settle
        if busy is not None:
            await report.settled(busy.reply["mailbox"], settle)
        while client.pending() and loop.time() < deadline:
            await asyncio.sleep(0.05)      # entries of earlier runs: the same moment to go out
    finally:
        await client.close()
    if busy is None:
        return SENT, msg_id
    seq = busy.reply["mailbox"]
    event, detail = report.outcomes.get(seq, (None, None))
    if event == "acked":
        return SENT, detail
    if event is not None:
        print(f"error: {getattr(detail, 'code', event)}: {getattr(detail, 'msg', event)} (not stored)",
              file=sys.stderr)
        return REFUSED, None
    chat = tool_name("chat")
    print(f"kept in the mailbox as #{seq}: not acked yet ({busy.code}: {busy.msg}); the next {chat} "
          f"of this user and device sends it, stored once (`{chat} pending` lists it): do not send it "
          "again", file=sys.stderr)
    return KEPT, None
