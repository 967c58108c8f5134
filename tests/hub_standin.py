"""A stand-in for the Hugging Face hub's file downloads and a plain HTTP file host, on 127.0.0.1.

The real huggingface_hub client talks to it through HF_ENDPOINT: `hf_hub_download` sends
HEAD then GET to /<repo id>/resolve/<revision>/<file> and needs X-Repo-Commit, an ETag and the
size in the HEAD answer. Plain files (pretrainedmodels' and torchvision's hosts, mirrored under
one URL base) are served at /files/<name>. Both honour `Range: bytes=N-` with a 206 answer.

`stall[path] = n`: the first GET of `path` sends n bytes and then hangs until the server stops
(`stalled` is set once it hangs), so a test can interrupt a client mid-file. Every request is
recorded in `requests` as (method, path, Range header or None).

    with HubStandin() as hub:
        hub.repos["timm/resnet18.a1_in1k"] = {"model.safetensors": data}
        hub.files["resnet18-f37072fd.pth"] = data
        env = {"HF_ENDPOINT": hub.url}; url_base = hub.url + "/files"
"""
from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler

from local_server import LocalServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _lookup(self):
        hub = self.server.standin
        match = _RESOLVE.match(self.path)
        if match:
            data = hub.repos.get(match["repo"], {}).get(match["file"])
            return data, {"X-Repo-Commit": COMMIT}
        if self.path.startswith("/files/"):
            return hub.files.get(self.path[len("/files/"):]), {}
        return None, {}

    def _answer(self, send_body: bool):
        hub = self.server.standin
        wanted = self.headers.get("Range")
        with hub.lock:
            hub.requests.append((self.command, self.path, wanted))
        data, extra = self._lookup()
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            return
        start = int(re.match(r"bytes=(\d+)-", wanted).group(1)) if wanted else 0
        if start >= len(data) and start:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        for key, value in extra.items():
            self.send_header(key, value)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not send_body:
            return
        body = data[start:]
        with hub.lock:
            cut = hub.stall.pop(self.path, None)
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            hub.stalled.set()
            hub.release.wait()
            return
        self.wfile.write(body)

    def do_HEAD(self):
        self._answer(send_body=False)

    def do_GET(self):
        self._answer(send_body=True)


class HubStandin(LocalServer):
    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.files: dict[str, bytes] = {}
        self.stall: dict[str, int] = {}
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.requests: list[tuple] = []
        self.lock = threading.Lock()
        super().__init__(_Handler)

    def gets(self, path: str) -> list:
        """The Range headers of every GET of `path` (None: from the start)."""
        return [r for m, p, r in self.requests if m == "GET" and p == path]

    def release_waiters(self) -> None:
        self.release.set()
