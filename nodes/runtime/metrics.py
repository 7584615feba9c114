"""Prometheus metrics of one node, read from its status() at scrape time.

A node whose topology entry has ``metrics: 9101`` (or
``metrics: "http://0.0.0.0:9101"``) serves ``/metrics`` over HTTP from a
thread (prometheus_client's WSGI app, our server: a listen backlog of BACKLOG
so a burst of connects is queued, not dropped).  Nothing is counted on the hot path for this: the
collector turns the node's own ``status()`` map (which bin/mesh status shows
too) into metric families when Prometheus asks, so a node type exports a new
figure by adding a key to its status():

- a number under a key of ``COUNTERS`` becomes ``imesh_<key>_total`` (a counter),
  any other number or bool becomes the gauge ``imesh_<key>``;
- a map of numbers becomes one family with a label (``LABELS``: refused by
  ``code``, requests by ``type``, otherwise ``key``);
- a list becomes a gauge of its length (e.g. logic_links).

A logic node whose disk refuses writes (nodes/logic/diskfull.py) shows it as
``imesh_disk_full`` 1 (``disk_full`` in its status) and counts what it refused in
``imesh_storage_refused_total``.

Two figures are measured rather than read: the loop-turn time histogram
(Loop.watch_turns, one observe per turn) and the RocksDB batch writes
(Store.writes/write_ops/write_seconds).  Every family carries the labels
``node`` and ``type``.
"""
from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator, Mapping
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Protocol, TypeGuard
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication
    from prometheus_client.metrics_core import Metric

    from nodes.cluster.topology import NodeSpec
    from nodes.runtime.loop import Loop
    from nodes.storage.store import Store

log = logging.getLogger(__name__)

# status keys that only grow (exported as counters, name + "_total")
COUNTERS = {"turns", "gathered", "stored", "expired", "trimmed", "refused", "requests", "acks", "deliveries",
            "pushed", "files", "relay_bytes_in", "relay_bytes_out", "id_blocks", "logins", "logouts",
            "kicked", "seq", "storage_refused", "push_events", "push_sent", "push_posts", "push_failures",
            "push_rejected", "push_dropped"}
LABELS = {"refused": "code", "requests": "request", "acks": "channel", "kicked": "reason"}
SKIP = {"id", "type", "pid", "rid", "t"}
TURN_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
# Connections the kernel holds for the scrape thread to accept.  prometheus_client's
# start_http_server listens with socketserver's default of 5: a burst of scrapers (or a port
# scan) beyond that lost ~13% of its connects.  The kernel caps it at net.core.somaxconn.
BACKLOG = 1024

Sample = tuple[dict[str, str], float]           # (labels, value)
Family = tuple[str, str, str, list[Sample]]     # (name, kind, doc, samples)


class MetricsNode(Protocol):
    """What the collector and ``serve`` read of a node (nodes/runtime/node.py)."""

    id: str
    type: str
    spec: NodeSpec
    loop: Loop

    def status(self) -> Mapping[str, object]: ...


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def families(status: Mapping[str, object], store: Store | None = None) -> list[Family]:
    """(name, kind, doc, [(labels dict, value)]) for every exportable figure of a status map."""
    out: list[Family] = []
    for key, value in status.items():
        if key in SKIP:
            continue
        counter = key in COUNTERS
        name = f"imesh_{key}"
        kind = "counter" if counter else "gauge"
        if isinstance(value, bool):
            out.append((name, "gauge", f"status {key} (1 = true)", [({}, float(value))]))
        elif _number(value):
            out.append((name, kind, f"status {key}", [({}, value)]))
        elif isinstance(value, dict) and all(_number(v) for v in value.values()):
            label = LABELS.get(key, "key")
            out.append((name, kind, f"status {key} by {label}",
                        [({label: str(k)}, v) for k, v in sorted(value.items(), key=str)]))
        elif isinstance(value, (list, tuple)):
            out.append((f"{name}_count", "gauge", f"entries in status {key}", [({}, len(value))]))
    if store is not None:
        out.append(("imesh_store_writes", "counter", "RocksDB batches written", [({}, store.writes)]))
        out.append(("imesh_store_write_ops", "counter", "puts and deletes in those batches",
                    [({}, store.write_ops)]))
        out.append(("imesh_store_write_seconds", "counter", "seconds spent writing batches",
                    [({}, store.write_seconds)]))
        out.append(("imesh_store_write_failures", "counter", "batches not written (a full disk: "
                    "see imesh_disk_full)", [({}, store.write_failures)]))
    return out


class StatusCollector:
    """A prometheus_client collector over a node's status() (read in the scrape thread)."""

    def __init__(self, node: MetricsNode) -> None:
        self.node = node

    def read_status(self) -> dict[str, object]:
        for _ in range(5):              # the loop thread may resize a map while we copy it
            try:
                return dict(self.node.status())
            except RuntimeError:
                continue
            except AttributeError:      # scraped while the node type's __init__ is still running
                return {}
        return {}

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        base = {"node": self.node.id, "type": self.node.type}
        for name, kind, doc, samples in families(self.read_status(), getattr(self.node, "store", None)):
            label_names = ["node", "type", *(samples[0][0] if samples else {})]
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = cls(name, doc, labels=label_names)
            for labels, value in samples:
                family.add_metric([base["node"], base["type"], *labels.values()], value)
            yield family


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:   # one stderr line per scrape is noise in a node's log
        pass


def http_server(host: str, port: int, app: WSGIApplication) -> WSGIServer:
    """prometheus_client's start_http_server with a listen backlog of BACKLOG: the WSGI ``app``
    served by a thread per request from a daemon thread.  The server (``shutdown()`` stops it)."""

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True              # a scrape in progress does not hold the node's exit
        request_queue_size = BACKLOG
        address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                            flags=socket.AI_PASSIVE)[0][0]

    httpd = make_server(host, port, app, Server, handler_class=_QuietHandler)
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
    return httpd


def serve(node: MetricsNode) -> WSGIServer | None:
    """Start the /metrics HTTP server of ``node`` if its topology entry asks for one; the server."""
    where = getattr(node.spec, "metrics", None)
    if where is None:
        return None
    try:
        from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
    except ImportError:
        raise RuntimeError(f"node {node.id} has a metrics endpoint but prometheus_client is not "
                           "installed: pip install prometheus_client") from None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(node))
    turns = Histogram("imesh_loop_turn_seconds", "length of one event-loop turn", ["node", "type"],
                      buckets=TURN_BUCKETS, registry=registry).labels(node.id, node.type)
    node.loop.watch_turns(turns.observe)
    host, port = where
    try:
        server = http_server(host, port, make_wsgi_app(registry))
    except OSError as exc:                 # name the endpoint: the node has several to check
        raise OSError(exc.errno, f"{exc.strerror} (metrics endpoint http://{host}:{port})") from None
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server
