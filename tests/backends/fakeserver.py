"""A loopback HTTP server that plays scripted provider responses (no network, no mocks of our code).

The provider SDKs talk real HTTP to 127.0.0.1; each request is recorded and
answered by the next scripted :class:`Reply` (or the default one).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list -> JSON; str/bytes -> raw
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    content_type: str = "application/json"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    started: float

    @property
    def json(self) -> Any:
        return json.loads(self.body or b"null")


Script = Reply | Callable[[Recorded], Reply]


class FakeServer:
    """Scripted HTTP/1.1 server on a free loopback port, one thread per connection."""

    def __init__(self) -> None:
        self.replies: deque[Script] = deque()
        self.default: Script | None = None
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                rec = Recorded(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()
                )
                with server._lock:
                    server.requests.append(rec)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    script = server.replies.popleft() if server.replies else server.default
                try:
                    reply = script(rec) if callable(script) else script
                    if reply is None:
                        reply = Reply(500, {"error": {"message": "fake server: no reply scripted"}})
                    if reply.delay_s:
                        server._release.wait(reply.delay_s)
                    if isinstance(reply.body, bytes):
                        payload = reply.body
                    elif isinstance(reply.body, str):
                        payload = reply.body.encode()
                    else:
                        payload = json.dumps(reply.body).encode()
                    self.send_response(reply.status)
                    self.send_header("content-type", reply.content_type)
                    self.send_header("content-length", str(len(payload)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                finally:
                    with server._lock:
                        server.in_flight -= 1

            do_POST = _handle
            do_GET = _handle

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-provider", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def queue(self, *replies: Script) -> FakeServer:
        self.replies.extend(replies)
        return self

    @property
    def posts(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST"]

    def close(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
