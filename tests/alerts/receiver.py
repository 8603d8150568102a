"""A real HTTP receiver on loopback, the apprise target of the alert tests (`json://127.0.0.1:PORT/`).

It records each request it answered 2xx as delivered; `status` makes it answer an error instead, and `hold()`
makes it keep requests waiting (no answer) until `release()`, to catch a sender between send and ack.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


@dataclass(frozen=True)
class Received:
    path: str
    body: bytes
    status: int

    @property
    def message(self) -> dict[str, Any]:
        return dict(json.loads(self.body))

    @property
    def title(self) -> str:
        return str(self.message.get("title", ""))


class Receiver:
    def __init__(self) -> None:
        self.status = 200
        self.requests: list[Received] = []
        self.held = 0
        self._release = threading.Event()
        self._release.set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not receiver._release.is_set():
                    with receiver._lock:
                        receiver.held += 1
                    receiver._release.wait(60)
                    self.close_connection = True
                    return  # the sender never gets an answer
                status = receiver.status
                with receiver._lock:
                    receiver.requests.append(Received(self.path, body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The apprise URL of this receiver (2 s timeouts, so a test does not wait on apprise's defaults)."""
        return f"json://127.0.0.1:{self.port}/?cto=2&rto=2"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def delivered(self) -> list[Received]:
        """Requests answered 2xx, in arrival order."""
        with self._lock:
            return [r for r in self.requests if r.status < 300]

    def titles(self) -> list[str]:
        return [r.title for r in self.delivered()]

    def hold(self) -> None:
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
