"""Offline pushes: tell the app's push service (a webhook) which members missed a message.

An app cannot wake a phone from imesh; it can when imesh tells its backend "uin 2 has a
new message in ``general`` and no live session anywhere" (docs/push.md).  The owning
logic node knows both -- the channel's members and, from its presence replica
(nodes/logic/presence.py), who is online -- so when a message is stored (``on_stored``,
called from the send path's commit) it works out the members to notify: not the sender,
not anyone online on any device, not anyone who muted the channel (``mute``).  If any are
left it stores a pending-push row (``p``, nodes/storage/store.py) with the channel's rows,
so replication, snapshots and hand-overs carry it like the message it announces: a push
survives a restart and a leader failover (the new leader finds the row, ``rescan``).

``Pushes`` is the part in the loop thread: it decides, stores, batches, and on an answer
deletes delivered rows or schedules a retry (exponential backoff from ``retry_min`` to
``retry_max``); it keeps at most ``max_pending`` pushes (the oldest are dropped, counted
and logged at ERROR, sampled) and logs at ERROR when the receiver has failed for
``alert_after`` seconds.  ``Sender`` is the one thread that does HTTP (urllib, a timeout
per POST): it never touches the store, its answers go back through a queue the loop
drains (``PUSH_TICK``).  Delivery is at least once: a POST whose answer is lost is sent
again with the same ``Idempotency-Key`` (``channel:id`` of each event).
"""
from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from nodes.cluster.topology import PushSettings
from nodes.logic.channels import ChannelState, Pending
from nodes.logic.presence import PresenceReplica
from nodes.logic.serving import Serving
from nodes.protocol import wire
from nodes.runtime.ports import Msg
from nodes.storage import store as keys
from nodes.storage.store import Store

log = logging.getLogger(__name__)

PUSH_TICK = 0.1            # seconds between looks at the sender's answers and at due pushes
RESCAN_EVERY = 2.0         # seconds between scans of the stored rows (a shard led anew, a restart)
JOBS_IN_FLIGHT = 2         # POSTs handed to the sender thread at once
SIGNATURE_HEADER = "X-Imesh-Signature"
# 4xx answers that mean "later", not "never": retried like a 5xx
RETRIED_4XX = frozenset((408, 425, 429))
OK, RETRY, REJECTED = "ok", "retry", "rejected"


def signature(secret: bytes, body: bytes) -> str:
    """The X-Imesh-Signature value: ``sha256=`` + hex HMAC-SHA256 of the body with the push secret."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def backoff(attempts: int, lo: float, hi: float) -> float:
    """Seconds to wait after the ``attempts``-th failure in a row: lo, 2 lo, 4 lo ... at most hi."""
    return float(min(hi, lo * 2 ** min(attempts - 1, 62)))


def event_key(channel: str, msg_id: int) -> str:
    """The idempotency key of one event (channel names hold no comma: nodes/protocol/wire.py)."""
    return f"{channel}:{msg_id}"


class _Entry:
    __slots__ = ("key", "channel", "id", "row", "due", "attempts", "inflight")

    def __init__(self, key: bytes, row: dict[str, Any], due: float) -> None:
        self.key = key
        self.channel, self.id = keys.push_of_key(key)
        self.row = row
        self.due = due
        self.attempts = 0
        self.inflight = False


class Job:
    """One POST: the events' row keys, the body and its headers (built in the loop thread)."""

    __slots__ = ("keys", "body", "headers")

    def __init__(self, row_keys: list[bytes], body: bytes, headers: dict[str, str]) -> None:
        self.keys, self.body, self.headers = row_keys, body, headers


class Pushes:
    """State: ``pending`` (row key -> entry, in the order learned: the oldest first) of the
    channels served here, ``jobs`` (POSTs handed out and not answered), ``down_since`` (when
    the receiver started failing, None while it accepts) and the alert/drop log clocks.
    Every store write happens here, in the loop thread."""

    def __init__(self, settings: PushSettings, secret: bytes, serving: Serving, replica: PresenceReplica,
                 store: Store, stats: Any, clock: Callable[[], float]) -> None:
        self.settings, self.secret = settings, secret
        self.serving, self.replica, self.store = serving, replica, store
        self.stats, self.clock = stats, clock
        self.pending: dict[bytes, _Entry] = {}
        self.jobs = 0
        self.down_since: float | None = None
        self.last_error = ""
        self.alerted = 0.0
        self.dropped_unlogged = 0
        self.drop_logged = float("-inf")

    # --- deciding and storing (the send path) -----------------------------------------
    def to_notify(self, ch: ChannelState, sender: int, now: float) -> list[int]:
        """The members of ``ch`` to push to: offline on every device, not the sender, not muted."""
        devices = self.replica.devices
        offline = [u for u in ch.member_array if u != sender and not devices(u)]
        if not offline:
            return offline
        muted = self.muted(ch.name, now)
        return [u for u in offline if u not in muted] if muted else offline

    def muted(self, channel: str, now: float) -> set[int]:
        """The uins whose mute of ``channel`` runs past ``now`` (a mute that ran out is deleted)."""
        out: set[int] = set()
        for key, raw in self.store.scan(keys.mute_prefix(channel)):
            if keys.decode(raw) > now:
                out.add(keys.mute_uin(key))
            else:
                self.store.delete(key)
        return out

    def on_stored(self, committed: Sequence[Pending]) -> None:
        """These messages are stored and acked: stage a push row for each with members to notify."""
        now = self.clock()
        channels = self.serving.channels
        preview = self.settings.preview
        for rec in committed:
            ch = channels.get(rec.channel)
            if ch is None or rec.id is None:
                continue
            uins = self.to_notify(ch, rec.uin, now)
            if not uins:
                continue
            row = {"sender": rec.uin, "device": rec.device, "stime": rec.stime,
                   "preview": rec.text[:preview] if preview else None, "uins": uins}
            key = keys.push_key(rec.channel, rec.id)
            self.store.put(key, keys.encode(row))
            self.pending[key] = _Entry(key, row, now)
            self.stats["push_events"] += 1
        self._bound(now)

    # --- what is pending ---------------------------------------------------------------
    def rescan(self) -> None:
        """Learn the stored rows of the channels served here that are not pending yet (after a
        restart, a shard led anew, a channel handed over) and forget those of channels no
        longer served (their new owner sends them)."""
        now = self.clock()
        channels = self.serving.channels
        for key, raw in self.store.scan(b"p"):
            if key not in self.pending and keys.push_of_key(key)[0] in channels:
                self.pending[key] = _Entry(key, keys.decode(raw), now)
        for key in [k for k, e in self.pending.items() if e.channel not in channels]:
            del self.pending[key]
        self._bound(now)

    def _bound(self, now: float) -> None:
        """Keep at most ``max_pending``: drop the oldest (row deleted), count, log (sampled)."""
        over = len(self.pending) - int(self.settings.max_pending)
        if over <= 0:
            return
        for key in list(self.pending)[:over]:
            del self.pending[key]
            self.store.delete(key)
        self.stats["push_dropped"] += over
        self.dropped_unlogged += over
        if now - self.drop_logged >= self.settings.alert_after:
            log.error("push queue full (%d pending, receiver %s): dropped the %d oldest push(es) "
                      "(imesh_push_dropped_total counts them)", len(self.pending), self._state(now),
                      self.dropped_unlogged)
            self.drop_logged, self.dropped_unlogged = now, 0

    # --- sending -----------------------------------------------------------------------
    def take_jobs(self, room: int) -> list[Job]:
        """Up to ``room`` POSTs of due pushes (``batch`` events each), marked in flight."""
        now = self.clock()
        jobs: list[Job] = []
        batch: list[_Entry] = []
        size = int(self.settings.batch)
        for entry in self.pending.values():
            if len(jobs) >= room:
                break
            if entry.inflight or entry.due > now:
                continue
            batch.append(entry)
            if len(batch) == size:
                jobs.append(self._job(batch))
                batch = []
        if batch and len(jobs) < room:
            jobs.append(self._job(batch))
        self.jobs += len(jobs)
        return jobs

    def _job(self, batch: list[_Entry]) -> Job:
        events = []
        for e in batch:
            e.inflight = True
            events.append({"key": event_key(e.channel, e.id), "channel": e.channel, "id": e.id, **e.row})
        body = json.dumps({"events": events}, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "imesh-push",
                   "Idempotency-Key": ",".join(ev["key"] for ev in events),
                   SIGNATURE_HEADER: signature(self.secret, body)}
        return Job([e.key for e in batch], body, headers)

    def on_answer(self, row_keys: Sequence[bytes], outcome: str, detail: str) -> None:
        """The sender's answer to one POST: delivered or refused for good (rows deleted), or
        to retry (backoff).  Rows of a channel no longer served are left to its new owner."""
        now = self.clock()
        self.jobs -= 1
        channels = self.serving.channels
        if outcome == RETRY:
            self.stats["push_failures"] += 1
            self.last_error = detail
            if self.down_since is None:
                self.down_since = self.alerted = now
            for key in row_keys:
                entry = self.pending.get(key)
                if entry is not None:
                    entry.inflight = False
                    entry.attempts += 1
                    entry.due = now + backoff(entry.attempts, self.settings.retry_min, self.settings.retry_max)
            if now - self.alerted >= self.settings.alert_after:
                log.error("push webhook %s failing for %.0f s (%s): %d push(es) pending, retried with backoff",
                          self.settings.webhook, now - self.down_since, detail, len(self.pending))
                self.alerted = now
            return
        if self.down_since is not None:
            log.warning("push webhook %s accepts again after %.0f s", self.settings.webhook, now - self.down_since)
            self.down_since = None
        if outcome == REJECTED:
            self.stats["push_rejected"] += len(row_keys)
            log.error("push webhook %s refused %d event(s) for good (%s): dropped", self.settings.webhook,
                      len(row_keys), detail)
        else:
            self.stats["push_sent"] += len(row_keys)
            self.stats["push_posts"] += 1
        for key in row_keys:
            entry = self.pending.pop(key, None)
            if entry is not None and entry.channel in channels:
                self.store.delete(key)

    def _state(self, now: float) -> str:
        if self.down_since is None:
            return "accepting"
        return f"failing for {now - self.down_since:.0f} s: {self.last_error}"

    def status(self) -> dict[str, Any]:
        """For the node's status (and metrics: push_pending is a gauge, the rest counters)."""
        return {"push_pending": len(self.pending), "push_down": self.down_since is not None,
                **{k: self.stats[k] for k in ("push_events", "push_sent", "push_posts", "push_failures",
                                              "push_dropped", "push_rejected")}}


def mute(serving: Serving, store: Store, msg: Msg, now: float) -> Msg:
    """``mute {uin, channel, until}``: no pushes of ``channel`` to ``uin`` until then (seconds
    since the epoch; 0 or past: unmute).  Members only; stored with the channel (a ``q`` row)
    whether or not this mesh has a push section, so turning pushes on later keeps them."""
    ch = serving.member_channel(msg["channel"], msg["uin"])
    until = float(msg["until"])
    key = keys.mute_key(ch.name, msg["uin"])
    if until > now:
        store.put(key, keys.encode(until))
    else:
        store.delete(key)
    return wire.reply("mute", msg["rid"], channel=ch.name, until=until if until > now else 0)


# --- HTTP, in the sender thread ---------------------------------------------------------------
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer (3xx, refused for good), not a place to POST the pushes again."""

    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[str, str]:
    """POST once: (OK | RETRY | REJECTED, what happened).  2xx: OK; 5xx, 408/425/429, a refused
    or reset connection, a timeout: RETRY; any other answer: REJECTED."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _opener.open(request, timeout=timeout) as answer:
            answer.read()
            return OK, f"HTTP {answer.status}"
    except urllib.error.HTTPError as exc:
        exc.close()
        code = exc.code
        return (RETRY if code >= 500 or code in RETRIED_4XX else REJECTED), f"HTTP {code}"
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        return RETRY, f"{type(exc).__name__}: {reason}"


class Sender:
    """The thread that POSTs: jobs in (at most ``JOBS_IN_FLIGHT`` waiting), answers out
    (``answers``, drained by the loop).  It holds no state of the pushes and writes nothing."""

    def __init__(self, url: str, timeout: float,
                 post_fn: Callable[[str, bytes, dict[str, str], float], tuple[str, str]] = post) -> None:
        self.url, self.timeout, self.post_fn = url, timeout, post_fn
        self.jobs: queue.Queue[Job | None] = queue.Queue(JOBS_IN_FLIGHT + 1)
        self.answers: queue.Queue[tuple[list[bytes], str, str]] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="push-sender", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        self.jobs.put_nowait(job)          # the core hands out at most JOBS_IN_FLIGHT

    def take_answers(self) -> list[tuple[list[bytes], str, str]]:
        out = []
        while True:
            try:
                out.append(self.answers.get_nowait())
            except queue.Empty:
                return out

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                outcome, detail = self.post_fn(self.url, job.body, job.headers, self.timeout)
            except Exception as exc:       # a bug must not end the thread: the pushes are retried
                log.exception("push POST failed")
                outcome, detail = RETRY, repr(exc)
            self.answers.put((job.keys, outcome, detail))

    def stop(self, wait: float = 1.0) -> None:
        """Ask the thread to end after its POST; unanswered pushes stay stored (sent again later)."""
        try:
            self.jobs.put(None, timeout=wait)
        except queue.Full:
            pass
        self.thread.join(wait)


def pump(pushes: Pushes, sender: Sender) -> None:
    """One look (a loop timer, every PUSH_TICK): take the sender's answers, hand it due POSTs."""
    for row_keys, outcome, detail in sender.take_answers():
        pushes.on_answer(row_keys, outcome, detail)
    room = JOBS_IN_FLIGHT - pushes.jobs
    if room > 0 and pushes.pending:
        for job in pushes.take_jobs(room):
            sender.submit(job)
