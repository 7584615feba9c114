"""A push receiver on 127.0.0.1 for the offline-push tests (tests/test_push_core.py,
tests/test_push.py): a real HTTP server in a thread, on a free port, that answers as told."""
from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator


class Receiver(http.server.BaseHTTPRequestHandler):
    """Answers each POST with the next code of ``codes`` (the last one again once they run
    out; 0: 200 after half a second, too late for a short timeout) and records it in ``posts``."""
    codes: list[int] = [200]
    posts: list[tuple[int, dict, bytes]] = []        # (code answered, headers, body)
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            code = self.codes.pop(0) if len(self.codes) > 1 else self.codes[0]
            self.posts.append((code, dict(self.headers), body))
        if code == 0:
            time.sleep(0.5)
            code = 200
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@contextlib.contextmanager
def serving() -> Iterator[str]:
    """The webhook URL of a fresh receiver (``posts`` cleared), shut down on the way out."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Receiver.posts.clear()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/imesh/push"
    finally:
        server.shutdown()
        server.server_close()
