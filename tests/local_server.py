"""The plumbing every stand-in server shares: a ThreadingHTTPServer on 127.0.0.1 (a free port)
served from its own daemon thread, as a context manager. The handler reaches the stand-in
through `self.server.standin`."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LocalServer:
    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._server.standin = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self):
        self._thread.start()
        return self

    def release_waiters(self) -> None:
        """Called before the server stops: wake whatever a handler is blocked on."""

    def __exit__(self, *exc) -> None:
        self.release_waiters()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
