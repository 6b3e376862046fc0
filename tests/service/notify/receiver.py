"""A real HTTP server on a free local port that records what it receives (the webhook receiver
of the tests)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class Receiver:
    """The server's address, what it got, and the statuses it answers with, in order (the last
    one repeats)."""

    url: str
    requests: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=lambda: [200])
    delays: list[float] = field(default_factory=list)  # seconds before answering, in order
    lock: threading.Lock = field(default_factory=threading.Lock)
    got: threading.Event = field(default_factory=threading.Event)  # set on every request

    def next_status(self) -> int:
        with self.lock:
            return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def next_delay(self) -> float:
        with self.lock:
            return self.delays.pop(0) if self.delays else 0.0


def serve() -> tuple[Receiver, ThreadingHTTPServer]:
    """Start a receiver in a daemon thread; the caller shuts the server down."""
    holder: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            receiver = holder[0]
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            with receiver.lock:
                receiver.requests.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
            receiver.got.set()
            time.sleep(receiver.next_delay())
            status = receiver.next_status()
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:
            return  # quiet test output

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True  # a deliberately hanging answer must not block shutdown
    server.block_on_close = False
    holder.append(Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hook"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return holder[0], server
